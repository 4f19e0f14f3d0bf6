//! A minimal OpenVPN client, sans-IO, on the same protocol core as the endpoint: for tests only
//! (the endpoint's unit tests drive it against an [`super::Endpoint`] in virtual time; the
//! integration tests wrap it in a UDP socket to misbehave on purpose against `cvpn serve`).
//!
//! It does the reset exchange, TLS over control packets, the key-method 2 exchange and TLS-EKM
//! keys, server-initiated renegotiations, and then lets a test send what it likes. Lossless
//! links only: it acknowledges every control packet at once and never retransmits.

use std::{
    collections::{BTreeMap, VecDeque},
    io::{Read, Write},
    sync::Arc,
};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, ClientConnection, RootCertStore,
};

use crate::{
    datachannel::{Cipher, DataChannel, Role},
    protocol::{
        keymethod::{ClientKeyRecord, Credentials, Password, ServerKeyRecord},
        packet::{AckBlock, AckPacket, ControlOpcode, ControlPacket, KeyId, Packet, SessionId},
        session::{EKM_LABEL, EKM_LEN},
    },
};

/// What a stock 2.6 client announces (TLS-EKM, request-push, AES-256-GCM first).
pub const PEER_INFO: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n";

/// Errors of the test client (bad certificates given to it, TLS failures).
#[derive(Debug, thiserror::Error)]
pub enum TestClientError {
    #[error("test client TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("test client certificate or key: {0}")]
    Pem(String),
    #[error("test client: {0}")]
    Other(String),
}

/// A rustls client configuration trusting `ca_pem` and presenting `cert_pem`/`key_pem`.
pub fn tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, TestClientError> {
    let pem = |e: rustls::pki_types::pem::Error| TestClientError::Pem(e.to_string());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(pem)?)?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?,
    ))
}

/// A rustls client configuration trusting `ca_pem` and presenting no certificate (user name
/// and password sign-in).
pub fn tls_config_without_certificate(ca_pem: &str) -> Result<Arc<ClientConfig>, TestClientError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| TestClientError::Pem(e.to_string()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// One key state's TLS and counters.
struct KeyState {
    key_id: KeyId,
    tls: ClientConnection,
    next_packet_id: u32,
    next_expected: u32,
    reorder: BTreeMap<u32, Vec<u8>>,
    plaintext: Vec<u8>,
    sent_record: bool,
    keys: Option<Box<[u8; EKM_LEN]>>,
}

/// A client session.
pub struct TestClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    local: SessionId,
    /// The server's session id, once its reset answer came.
    remote: Option<SessionId>,
    keys: Vec<KeyState>,
    out: VecDeque<Vec<u8>>,
    /// Control-channel text messages from the server, in order (`PUSH_REPLY,…`, `HALT`, …).
    pub messages: Vec<String>,
    /// Acknowledge the server's control packets (a flooding test turns this off).
    pub acknowledge: bool,
    /// The peer-info text of the key-method record (a stock 2.6 client's by default).
    pub peer_info: String,
    /// `auth-user-pass`: sent in every key-method record. After a push with `auth-token`, the
    /// token replaces the password (as OpenVPN clients do).
    pub credentials: Option<Credentials>,
}

impl TestClient {
    /// A client of the server named `server_name` (its certificate's DNS name) whose first
    /// packet (the hard reset) is ready to send.
    pub fn new(
        config: Arc<ClientConfig>,
        server_name: &str,
        session_id: [u8; 8],
    ) -> Result<Self, TestClientError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| TestClientError::Other(e.to_string()))?;
        let mut c = TestClient {
            config: config.clone(),
            server_name: server_name.clone(),
            local: SessionId(session_id),
            remote: None,
            keys: vec![Self::key_state(config, server_name, KeyId::default())?],
            out: VecDeque::new(),
            messages: Vec::new(),
            acknowledge: true,
            peer_info: PEER_INFO.to_string(),
            credentials: None,
        };
        c.send_control_packet(0, ControlOpcode::HardResetClientV2, Vec::new(), None);
        Ok(c)
    }

    fn key_state(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        key_id: KeyId,
    ) -> Result<KeyState, TestClientError> {
        Ok(KeyState {
            key_id,
            tls: ClientConnection::new(config, name)?,
            next_packet_id: 0,
            next_expected: 0,
            reorder: BTreeMap::new(),
            plaintext: Vec::new(),
            sent_record: false,
            keys: None,
        })
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// True once the server answered the hard reset (its session id is known).
    pub fn has_server_session(&self) -> bool {
        self.remote.is_some()
    }

    /// True once the first key exchange is done (data keys exist).
    pub fn is_keyed(&self) -> bool {
        self.keys.iter().any(|k| k.keys.is_some())
    }

    /// Data keys of the newest finished key state.
    fn newest_keys(&self) -> Option<(&KeyState, &[u8; EKM_LEN])> {
        self.keys
            .iter()
            .rev()
            .find_map(|k| k.keys.as_deref().map(|m| (k, m)))
    }

    /// The client's data channel (AES-256-GCM) on the newest key, with `peer_id`.
    pub fn data_channel(&self, peer_id: u32) -> Result<DataChannel, TestClientError> {
        let (k, material) = self
            .newest_keys()
            .ok_or_else(|| TestClientError::Other("no data keys yet".into()))?;
        DataChannel::from_ekm(
            material,
            Cipher::Aes256Gcm,
            Role::Client,
            k.key_id.get(),
            peer_id,
        )
        .map_err(|e| TestClientError::Other(e.to_string()))
    }

    /// Key id of the newest finished key state.
    pub fn key_id(&self) -> Option<u8> {
        self.newest_keys().map(|(k, _)| k.key_id.get())
    }

    fn send_control_packet(
        &mut self,
        index: usize,
        opcode: ControlOpcode,
        payload: Vec<u8>,
        acks: Option<Vec<u32>>,
    ) {
        let Some(ks) = self.keys.get_mut(index) else {
            return;
        };
        let packet_id = ks.next_packet_id;
        ks.next_packet_id += 1;
        let acks = match (acks, self.remote) {
            (Some(a), Some(remote)) if !a.is_empty() => AckBlock::new(a, remote).ok(),
            _ => None,
        };
        self.out.push_back(
            Packet::Control(ControlPacket {
                opcode,
                key_id: ks.key_id,
                session_id: self.local,
                acks,
                packet_id,
                payload,
            })
            .to_vec(),
        );
    }

    /// Moves TLS output of key state `index` into control packets.
    fn flush_tls(&mut self, index: usize, mut acks: Vec<u32>) -> Result<(), TestClientError> {
        let mut bytes = Vec::new();
        if let Some(ks) = self.keys.get_mut(index) {
            while ks.tls.wants_write() {
                ks.tls
                    .write_tls(&mut bytes)
                    .map_err(|e| TestClientError::Other(e.to_string()))?;
            }
        }
        for chunk in bytes.chunks(1100) {
            let a = std::mem::take(&mut acks);
            self.send_control_packet(index, ControlOpcode::ControlV1, chunk.to_vec(), Some(a));
        }
        Ok(())
    }

    /// Takes one packet from the server.
    pub fn handle_packet(&mut self, bytes: &[u8]) -> Result<(), TestClientError> {
        let packet = match Packet::decode(bytes) {
            Ok(p) => p,
            Err(_) => return Ok(()),
        };
        let Packet::Control(p) = packet else {
            return Ok(());
        };
        if self.remote.is_none() {
            if p.opcode != ControlOpcode::HardResetServerV2 {
                return Ok(());
            }
            self.remote = Some(p.session_id);
            self.keys[0].next_expected = p.packet_id + 1;
            // The first TLS flight acknowledges the reset: that proves the cookie.
            return self.flush_tls(0, vec![p.packet_id]);
        }
        if Some(p.session_id) != self.remote {
            return Ok(());
        }
        // A server-initiated renegotiation opens a new key state.
        if p.opcode == ControlOpcode::SoftResetV1 && !self.keys.iter().any(|k| k.key_id == p.key_id)
        {
            let mut ks = Self::key_state(self.config.clone(), self.server_name.clone(), p.key_id)?;
            ks.next_expected = 0;
            self.keys.push(ks);
            if self.keys.len() > 2 {
                self.keys.remove(0);
            }
            let index = self.keys.len() - 1;
            self.send_control_packet(
                index,
                ControlOpcode::SoftResetV1,
                Vec::new(),
                Some(vec![p.packet_id]),
            );
            self.keys[index].next_expected = p.packet_id + 1;
            return self.flush_tls(index, Vec::new());
        }
        let Some(index) = self.keys.iter().position(|k| k.key_id == p.key_id) else {
            return Ok(());
        };
        if self.acknowledge {
            let remote = self.remote.unwrap_or(SessionId([0; 8]));
            if let Ok(acks) = AckBlock::new(vec![p.packet_id], remote) {
                self.out.push_back(
                    Packet::Ack(AckPacket {
                        key_id: p.key_id,
                        session_id: self.local,
                        acks,
                    })
                    .to_vec(),
                );
            }
        }
        let peer_info = self.peer_info.clone();
        let credentials = self.credentials.clone();
        let mut token = None;
        let ks = &mut self.keys[index];
        if p.packet_id >= ks.next_expected && p.opcode == ControlOpcode::ControlV1 {
            ks.reorder.insert(p.packet_id, p.payload.to_vec());
        } else if p.packet_id == ks.next_expected {
            ks.next_expected += 1;
        }
        while let Some(payload) = ks.reorder.remove(&ks.next_expected) {
            ks.next_expected += 1;
            let mut data = &payload[..];
            while !data.is_empty() {
                ks.tls
                    .read_tls(&mut data)
                    .map_err(|e| TestClientError::Other(e.to_string()))?;
            }
            ks.tls.process_new_packets()?;
        }
        let mut plain = [0u8; 4096];
        while let Ok(n) = ks.tls.reader().read(&mut plain) {
            if n == 0 {
                break;
            }
            ks.plaintext.extend_from_slice(&plain[..n]);
        }
        if !ks.tls.is_handshaking() && !ks.sent_record {
            let record = ClientKeyRecord {
                pre_master: [1; 48],
                random1: [2; 32],
                random2: [3; 32],
                options: "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client".into(),
                credentials,
                peer_info: Some(peer_info),
            };
            let bytes = record
                .to_bytes()
                .map_err(|e| TestClientError::Other(e.to_string()))?;
            ks.tls
                .writer()
                .write_all(&bytes)
                .map_err(|e| TestClientError::Other(e.to_string()))?;
            ks.sent_record = true;
        }
        if ks.sent_record && ks.keys.is_none() && ServerKeyRecord::parse(&ks.plaintext).is_ok() {
            ks.plaintext.clear();
            let material = ks
                .tls
                .export_keying_material([0u8; EKM_LEN], EKM_LABEL, None)?;
            ks.keys = Some(Box::new(material));
        }
        if ks.keys.is_some() {
            while let Some(end) = ks.plaintext.iter().position(|&b| b == 0) {
                let msg: Vec<u8> = ks.plaintext.drain(..=end).collect();
                let text = String::from_utf8_lossy(&msg[..msg.len() - 1]).into_owned();
                if let Some(c) = auth_token(&text) {
                    token = Some(c);
                }
                self.messages.push(text);
            }
        }
        if token.is_some() {
            self.credentials = token;
        }
        self.flush_tls(index, Vec::new())
    }

    /// Sends control-channel text as is (a message is NUL-terminated by the caller) on the
    /// newest finished key state.
    pub fn send_control_text(&mut self, text: &[u8]) -> Result<(), TestClientError> {
        let index = self
            .keys
            .iter()
            .rposition(|k| k.keys.is_some())
            .ok_or_else(|| TestClientError::Other("not keyed yet".into()))?;
        self.keys[index]
            .tls
            .writer()
            .write_all(text)
            .map_err(|e| TestClientError::Other(e.to_string()))?;
        self.flush_tls(index, Vec::new())
    }

    /// Presents `config` (another certificate) in the handshakes of renegotiations from now on.
    pub fn set_tls_config(&mut self, config: Arc<ClientConfig>) {
        self.config = config;
    }

    /// The first server message starting with `prefix`.
    pub fn message(&self, prefix: &str) -> Option<&str> {
        self.messages
            .iter()
            .find(|m| m.starts_with(prefix))
            .map(String::as_str)
    }
}

/// The credentials a push with `auth-token-user` and `auth-token` gives.
fn auth_token(push: &str) -> Option<Credentials> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let rest = push.strip_prefix("PUSH_REPLY,")?;
    let mut user = None;
    let mut token = None;
    for o in rest.split(',') {
        if let Some(u) = o.strip_prefix("auth-token-user ") {
            user = STANDARD
                .decode(u)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
        } else if let Some(t) = o.strip_prefix("auth-token ") {
            token = Some(t.to_string());
        }
    }
    Some(Credentials {
        username: user?,
        password: Password::new(token?),
    })
}
