//! A minimal OpenVPN client over UDP built on the gateway's own protocol types (packet codec,
//! key-method records, data channel) and rustls: what the attack tests use where a stock client
//! cannot misbehave on purpose. It does the reset exchange, TLS over control packets, the
//! key-method 2 exchange and TLS-EKM keys, and then lets a test send whatever it likes: data
//! packets before it is admitted, forged inner packets, unterminated control text, floods.
//!
//! Lossless links only (a test's veths): it acknowledges every control packet at once and never
//! retransmits its own. Every wait is bounded.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use gateway::{
    datachannel::{Cipher, DataChannel, Role},
    protocol::{
        keymethod::{ClientKeyRecord, ServerKeyRecord},
        packet::{AckBlock, AckPacket, ControlOpcode, ControlPacket, KeyId, Packet, SessionId},
        session::{EKM_LABEL, EKM_LEN},
    },
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, ClientConnection, RootCertStore,
};

use crate::pki::Pem;

/// What a stock 2.6 client announces (TLS-EKM, request-push, AES-256-GCM first).
pub const PEER_INFO: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n";

/// A client session in progress.
pub struct RawClient {
    sock: UdpSocket,
    server: SocketAddr,
    tls: ClientConnection,
    local: SessionId,
    remote: SessionId,
    next_packet_id: u32,
    next_expected: u32,
    reorder: BTreeMap<u32, Vec<u8>>,
    plaintext: Vec<u8>,
    /// Control-channel text messages from the server, in order (`PUSH_REPLY,…`, `HALT`, …).
    pub messages: Vec<String>,
    /// Data-channel keys once the key exchange is done.
    keys: Option<Box<[u8; EKM_LEN]>>,
    /// Packets received that were not control packets of this session (data, others).
    pub data_packets: Vec<Vec<u8>>,
}

/// A rustls client configuration trusting `ca_pem` and presenting `client`.
pub fn tls_config(ca_pem: &str, client: &Pem) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(client.cert.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(client.key.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?,
    ))
}

impl RawClient {
    /// Runs the reset exchange, TLS and the key-method exchange with `server` over `sock`
    /// (bound where the test wants it, e.g. inside a client namespace). Returns once data keys
    /// exist, or fails after `timeout`.
    pub fn connect(
        sock: UdpSocket,
        server: SocketAddr,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<RawClient> {
        let mut c = Self::start_handshake(sock, server, tls, timeout)?;
        c.finish_handshake(timeout)?;
        Ok(c)
    }

    /// The reset exchange and the first TLS packet (which makes the server keep state for
    /// this session); [`RawClient::finish_handshake`] goes on from there.
    pub fn start_handshake(
        sock: UdpSocket,
        server: SocketAddr,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<RawClient> {
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        // A random session id (std's hasher keys are random per process and instance).
        let sid = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0);
            h.finish().to_be_bytes()
        };
        let mut c = RawClient {
            sock,
            server,
            tls: ClientConnection::new(tls, ServerName::try_from("vpn.example.test")?)?,
            local: SessionId(sid),
            remote: SessionId([0; 8]),
            next_packet_id: 0,
            next_expected: 0,
            reorder: BTreeMap::new(),
            plaintext: Vec::new(),
            messages: Vec::new(),
            keys: None,
            data_packets: Vec::new(),
        };
        // 1. Hard reset; the server answers statelessly with its (cookie) session id.
        let reset = c.control_packet(ControlOpcode::HardResetClientV2, Vec::new(), None);
        c.sock.send_to(&reset, server)?;
        let start = Instant::now();
        while c.remote == SessionId([0; 8]) {
            if start.elapsed() > timeout {
                bail!("no answer to the hard reset from {server}");
            }
            let mut buf = [0u8; 2048];
            if let Ok((n, _)) = c.sock.recv_from(&mut buf) {
                if let Ok(Packet::Control(p)) = Packet::decode(&buf[..n]) {
                    if p.opcode == ControlOpcode::HardResetServerV2 {
                        c.remote = p.session_id;
                        c.next_expected = p.packet_id + 1;
                    }
                }
            }
        }
        // 2. TLS, acknowledging the server's reset with the first packet (that proves the
        // cookie).
        let mut acks = vec![0u32];
        c.flush_tls(&mut acks)?;
        Ok(c)
    }

    /// TLS to its end, then the key-method record; returns once data keys exist.
    pub fn finish_handshake(&mut self, timeout: Duration) -> Result<()> {
        let c = self;
        let server = c.server;
        let start = Instant::now();
        let mut acks = Vec::new();
        let mut sent_record = false;
        loop {
            if start.elapsed() > timeout {
                bail!("key exchange with {server} not done within {timeout:?}");
            }
            c.flush_tls(&mut acks)?;
            if !c.tls.is_handshaking() && !sent_record {
                let record = ClientKeyRecord {
                    pre_master: [1; 48],
                    random1: [2; 32],
                    random2: [3; 32],
                    options: "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client".into(),
                    credentials: None,
                    peer_info: Some(PEER_INFO.into()),
                };
                c.tls.writer().write_all(&record.to_bytes()?)?;
                sent_record = true;
                continue;
            }
            if sent_record && c.keys.is_none() && ServerKeyRecord::parse(&c.plaintext).is_ok() {
                c.plaintext.clear();
                let material = c
                    .tls
                    .export_keying_material([0u8; EKM_LEN], EKM_LABEL, None)
                    .context("exporting the data keys")?;
                c.keys = Some(Box::new(material));
                return Ok(());
            }
            c.receive_once()?;
        }
    }

    fn control_packet(
        &mut self,
        opcode: ControlOpcode,
        payload: Vec<u8>,
        acks: Option<Vec<u32>>,
    ) -> Vec<u8> {
        let packet_id = self.next_packet_id;
        self.next_packet_id += 1;
        Packet::Control(ControlPacket {
            opcode,
            key_id: KeyId::default(),
            session_id: self.local,
            acks: acks.and_then(|a| AckBlock::new(a, self.remote).ok()),
            packet_id,
            payload,
        })
        .to_vec()
    }

    /// Sends what TLS has to send, `acks` riding on the first packet.
    fn flush_tls(&mut self, acks: &mut Vec<u32>) -> Result<()> {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out)?;
        }
        for chunk in out.chunks(1100) {
            let a = (!acks.is_empty()).then(|| std::mem::take(acks));
            let p = self.control_packet(ControlOpcode::ControlV1, chunk.to_vec(), a);
            self.sock.send_to(&p, self.server)?;
        }
        Ok(())
    }

    /// Waits up to one read timeout for a packet and handles it: control packets are
    /// acknowledged and fed to TLS in order; text messages are collected.
    fn receive_once(&mut self) -> Result<bool> {
        let mut buf = [0u8; 4096];
        let n = match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(_) => return Ok(false),
        };
        match Packet::decode(&buf[..n]) {
            Ok(Packet::Control(p)) if p.session_id == self.remote => {
                let ack = Packet::Ack(AckPacket {
                    key_id: p.key_id,
                    session_id: self.local,
                    acks: AckBlock::new(vec![p.packet_id], self.remote)?,
                })
                .to_vec();
                self.sock.send_to(&ack, self.server)?;
                if p.packet_id >= self.next_expected {
                    self.reorder.insert(p.packet_id, p.payload.to_vec());
                }
                while let Some(payload) = self.reorder.remove(&self.next_expected) {
                    self.next_expected += 1;
                    let mut data = &payload[..];
                    while !data.is_empty() {
                        self.tls.read_tls(&mut data)?;
                    }
                    self.tls.process_new_packets()?;
                }
                let mut plain = [0u8; 4096];
                while let Ok(n) = self.tls.reader().read(&mut plain) {
                    if n == 0 {
                        break;
                    }
                    self.plaintext.extend_from_slice(&plain[..n]);
                }
                if self.keys.is_some() {
                    while let Some(end) = self.plaintext.iter().position(|&b| b == 0) {
                        let msg: Vec<u8> = self.plaintext.drain(..=end).collect();
                        self.messages
                            .push(String::from_utf8_lossy(&msg[..msg.len() - 1]).into_owned());
                    }
                }
            }
            Ok(Packet::Ack(_)) => {}
            _ => self.data_packets.push(buf[..n].to_vec()),
        }
        Ok(true)
    }

    /// Handles everything that arrives for `for_how_long`.
    pub fn pump(&mut self, for_how_long: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < for_how_long {
            self.receive_once()?;
        }
        Ok(())
    }

    /// Waits (bounded) until a server message starting with `prefix` arrived.
    pub fn wait_message(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(m) = self.messages.iter().find(|m| m.starts_with(prefix)) {
                return Ok(m.clone());
            }
            if start.elapsed() > timeout {
                bail!(
                    "no {prefix} from the server within {timeout:?}; got {:?}",
                    self.messages
                );
            }
            self.receive_once()?;
        }
    }

    /// Sends control-channel text as is (a message is NUL-terminated by the caller).
    pub fn send_control_text(&mut self, text: &[u8]) -> Result<()> {
        self.tls.writer().write_all(text)?;
        self.flush_tls(&mut Vec::new())
    }

    /// The client's data channel (AES-256-GCM, key id 0) with the given peer id.
    pub fn data_channel(&self, peer_id: u32) -> Result<DataChannel> {
        let keys = self.keys.as_ref().context("no data keys yet")?;
        Ok(DataChannel::from_ekm(
            keys,
            Cipher::Aes256Gcm,
            Role::Client,
            0,
            peer_id,
        )?)
    }

    /// Seals `inner` (an IP packet) with `dc` and sends it.
    pub fn send_data(&mut self, dc: &mut DataChannel, inner: &[u8]) -> Result<()> {
        let mut out = Vec::new();
        dc.seal(inner, &mut out)?;
        self.sock.send_to(&out, self.server)?;
        Ok(())
    }
}

/// An IPv4/UDP packet (checksums included) from `src:sport` to `dst:dport`.
pub fn udp_packet(
    src: std::net::Ipv4Addr,
    sport: u16,
    dst: std::net::Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("building a UDP packet");
    out
}
