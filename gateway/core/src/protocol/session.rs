//! One client's control channel on the server, sans-IO: reliability layer, rustls server,
//! key-method 2, TLS-EKM key export, control messages and renegotiation. Bytes and time in
//! ([`ServerSession::handle`]); packets to send ([`ServerSession::poll_transmit`]), events
//! ([`ServerSession::poll_event`]) and a deadline ([`ServerSession::next_deadline`]) out.
//!
//! A session starts after the stateless reset exchange (see [`super::cookie`]): the client's
//! reset (packet 0) and ours are behind us. Each key id has a key state of its own — its own
//! reliability sequence, TLS handshake and key-method exchange. A renegotiation (soft reset,
//! started by either side) opens the next key id; the previous one keeps working for the data
//! channel until the daemon retires it.

use std::{
    collections::VecDeque,
    io::{Read, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{ServerConfig, ServerConnection};

use super::{
    keymethod::{ClientKeyRecord, Credentials, PeerInfo, ServerKeyRecord},
    packet::{AckBlock, AckPacket, ControlOpcode, ControlPacket, KeyId, Packet, SessionId},
    reliable::{Reliable, ReliableConfig},
    tls::{client_identity, refusal_reason, ClientIdentity},
};

/// Label under which OpenVPN exports its data-channel keys (RFC 5705).
pub const EKM_LABEL: &[u8] = b"EXPORTER-OpenVPN-datakeys";
/// Bytes of key material exported: two directions of (cipher key 64, HMAC key 64).
pub const EKM_LEN: usize = 256;
/// Largest TLS payload per control packet; with headers this stays under a 1250-byte packet.
pub const MAX_CONTROL_PAYLOAD: usize = 1150;
/// Plaintext the client may send before its key-method record parses.
const MAX_PENDING_PLAINTEXT: usize = 16 * 1024;
/// Longest control-channel text message (`PUSH_REQUEST`, `EXIT`, challenge answers) the
/// client may send; more text without its terminating NUL ends the session.
pub const MAX_CONTROL_MESSAGE: usize = 4096;
/// Control packets of one key state waiting for the client's acknowledgement (sent and
/// queued). A client that makes us queue more — it does not acknowledge, or asks for more
/// than it reads — ends its session; the TLS flight and a push take far fewer.
pub const MAX_UNACKNOWLEDGED: usize = 64;
/// Transmissions of one control packet before the peer is declared gone.
const MAX_TRANSMISSIONS: u32 = 12;
/// Key states kept at once: the active one and the one being negotiated (or retiring).
const MAX_KEY_STATES: usize = 2;

/// Settings shared by all sessions of an endpoint.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub tls: Arc<ServerConfig>,
    pub reliable: ReliableConfig,
    /// The handshake (TLS and key exchange) of a key state must finish within this time.
    pub handshake_timeout: Duration,
    /// The options string of our key-method record (informational for the client).
    pub options: String,
    /// Derive data keys with the legacy TLS-PRF even when the client supports TLS-EKM.
    pub force_tls_prf: bool,
    /// False when clients sign in with a user name and password alone (a directory endpoint
    /// without certificate authentication; `tls` then asks for no certificate): a session
    /// without one gets an identity with no common name, and the endpoint must check its
    /// credentials before admitting it.
    pub require_client_certificate: bool,
}

impl SessionConfig {
    pub fn new(tls: Arc<ServerConfig>) -> Self {
        SessionConfig {
            tls,
            reliable: ReliableConfig::default(),
            handshake_timeout: Duration::from_secs(60),
            options: "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-server".to_string(),
            force_tls_prf: false,
            require_client_certificate: true,
        }
    }
}

/// What the session tells the daemon.
// Events are few (a handful per handshake) and moved once: boxing the large one buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// The first key state is done: TLS, the client certificate verified, the client's
    /// key-method record read.
    Authenticated {
        key_id: KeyId,
        identity: ClientIdentity,
        /// The user name and password of the client's key-method record (`auth-user-pass`),
        /// unchecked: a claim until the endpoint verified it.
        credentials: Option<Credentials>,
        peer_info: PeerInfo,
        tls_version: String,
        /// True: keys by TLS-EKM (push `key-derivation tls-ekm` / `protocol-flags tls-ekm`);
        /// false: by the legacy TLS-PRF (push neither).
        tls_ekm: bool,
    },
    /// Data-channel key material for `key_id` (256 bytes, TLS-EKM or TLS-PRF): after the first
    /// handshake and after every renegotiation.
    KeysReady {
        key_id: KeyId,
        material: Box<[u8; EKM_LEN]>,
        /// A renegotiation's credentials (the client re-sends its user name and, after an
        /// `auth-token` push, the token as password); `None` on the first key, whose
        /// credentials came with [`Event::Authenticated`].
        credentials: Option<Credentials>,
    },
    /// A control-channel text message from the client (e.g. `PUSH_REQUEST`, `EXIT`).
    Control(String),
    /// The first handshake was refused; the reason is in the connection log's vocabulary.
    Refused { reason: String },
    /// A renegotiation failed (the previous keys stay in use until the daemon decides).
    RenegotiationFailed { key_id: KeyId, reason: String },
    /// The peer stopped answering.
    Gone,
    /// The peer broke a bound of the control channel ([`MAX_CONTROL_MESSAGE`],
    /// [`MAX_UNACKNOWLEDGED`]): the session must end. Nothing more is sent or accepted.
    Flood { reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Tls,
    KeyExchange,
    Active,
    Failed,
}

/// One key id's control state.
struct KeyState {
    key_id: KeyId,
    reliable: Reliable,
    tls: ServerConnection,
    phase: Phase,
    plaintext: Vec<u8>,
    started: Instant,
}

/// A client's control channel.
pub struct ServerSession {
    config: Arc<SessionConfig>,
    local: SessionId,
    remote: SessionId,
    keys: Vec<KeyState>,
    events: VecDeque<Event>,
    identity: Option<ClientIdentity>,
    /// The client certificate of the first handshake (DER): a renegotiation must present the
    /// same one.
    certificate: Option<Vec<u8>>,
    gone: bool,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| (k.key_id, k.phase))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Errors a packet can cause; the session stays usable (the packet is dropped).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("packet for session {got}, this session's peer is {want}")]
    WrongSession { got: SessionId, want: SessionId },
    #[error("acknowledgement names session {got}, ours is {want}")]
    WrongAckSession { got: SessionId, want: SessionId },
    #[error("packet for key id {0}, which has no key state (a soft reset must open it)")]
    UnknownKey(KeyId),
    #[error("{0} is not handled on an established control channel")]
    Unexpected(&'static str),
    #[error("cannot start a TLS session: {0}")]
    Tls(String),
}

impl ServerSession {
    /// A session whose reset exchange is done: `local` is our (cookie) session id, `remote`
    /// the client's.
    pub fn after_reset(
        config: Arc<SessionConfig>,
        local: SessionId,
        remote: SessionId,
        now: Instant,
    ) -> Result<Self, rustls::Error> {
        let first = KeyState {
            key_id: KeyId::default(),
            reliable: Reliable::after_reset_exchange(config.reliable),
            tls: ServerConnection::new(config.tls.clone())?,
            phase: Phase::Tls,
            plaintext: Vec::new(),
            started: now,
        };
        Ok(ServerSession {
            config,
            local,
            remote,
            keys: vec![first],
            events: VecDeque::new(),
            identity: None,
            certificate: None,
            gone: false,
        })
    }

    /// New settings for key states opened from now on (renegotiations): a CRL import or a
    /// changed CRL file applies to running sessions' next handshakes too.
    pub fn set_config(&mut self, config: Arc<SessionConfig>) {
        self.config = config;
    }

    pub fn local_session_id(&self) -> SessionId {
        self.local
    }

    pub fn remote_session_id(&self) -> SessionId {
        self.remote
    }

    pub fn identity(&self) -> Option<&ClientIdentity> {
        self.identity.as_ref()
    }

    /// True once some key state completed its handshake.
    pub fn is_established(&self) -> bool {
        self.identity.is_some() && self.keys.iter().any(|k| k.phase == Phase::Active)
    }

    /// True when the first handshake failed or the peer is gone: the session is over.
    pub fn is_failed(&self) -> bool {
        self.gone || (self.identity.is_none() && self.keys.iter().all(|k| k.phase == Phase::Failed))
    }

    /// The newest key id whose handshake completed.
    pub fn active_key(&self) -> Option<KeyId> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.phase == Phase::Active)
            .map(|k| k.key_id)
    }

    fn key_mut(&mut self, key_id: KeyId) -> Option<&mut KeyState> {
        self.keys.iter_mut().find(|k| k.key_id == key_id)
    }

    /// Takes in one decoded control-channel packet (data packets belong to the data channel).
    pub fn handle(&mut self, now: Instant, packet: &Packet<'_>) -> Result<(), SessionError> {
        if self.gone {
            return Err(SessionError::Unexpected("a packet after the session ended"));
        }
        match packet {
            Packet::Ack(ack) => {
                self.check_session(ack.session_id)?;
                self.take_acks(ack.key_id, Some(&ack.acks))?;
            }
            Packet::Control(c) => {
                self.check_session(c.session_id)?;
                if c.opcode == ControlOpcode::SoftResetV1 && self.key_mut(c.key_id).is_none() {
                    self.open_key(c.key_id, now, false)?;
                }
                self.take_acks(c.key_id, c.acks.as_ref())?;
                let ks = self
                    .key_mut(c.key_id)
                    .ok_or(SessionError::UnknownKey(c.key_id))?;
                match c.opcode {
                    ControlOpcode::ControlV1 => {
                        let (_, ready) = ks.reliable.on_received(c.packet_id, c.payload.clone());
                        for payload in ready {
                            self.tls_input(c.key_id, &payload);
                        }
                        self.after_tls_input(c.key_id);
                    }
                    // A soft reset (its first packet, or a retransmission): acknowledge it.
                    ControlOpcode::SoftResetV1 => {
                        ks.reliable.on_received(c.packet_id, Vec::new());
                    }
                    // A retransmitted client hard reset: acknowledge it again.
                    ControlOpcode::HardResetClientV2 => {
                        ks.reliable.on_received(c.packet_id, Vec::new());
                    }
                    _ => return Err(SessionError::Unexpected("this control opcode")),
                }
            }
            Packet::Data(_) => return Err(SessionError::Unexpected("a data packet")),
        }
        Ok(())
    }

    /// Opens a key state for `key_id` (renegotiation). `ours`: we start it, so our soft reset
    /// goes first; otherwise the client's soft reset (packet 0) is on its way in.
    fn open_key(&mut self, key_id: KeyId, now: Instant, ours: bool) -> Result<(), SessionError> {
        let tls = ServerConnection::new(self.config.tls.clone())
            .map_err(|e| SessionError::Tls(e.to_string()))?;
        let mut reliable = Reliable::new(self.config.reliable);
        // Our soft reset (theirs answered, or ours to start) is packet 0 of our sequence.
        reliable.send(ControlOpcode::SoftResetV1, Vec::new());
        let _ = ours;
        // Keep the newest key states only: the active one and this new one.
        while self.keys.len() >= MAX_KEY_STATES {
            let oldest = self
                .keys
                .iter()
                .position(|k| {
                    Some(k.key_id)
                        != self
                            .keys
                            .iter()
                            .rev()
                            .find(|k| k.phase == Phase::Active)
                            .map(|k| k.key_id)
                })
                .unwrap_or(0);
            self.keys.remove(oldest);
        }
        self.keys.push(KeyState {
            key_id,
            reliable,
            tls,
            phase: Phase::Tls,
            plaintext: Vec::new(),
            started: now,
        });
        Ok(())
    }

    /// Starts a renegotiation from our side (e.g. before packet ids run out): the next key id.
    pub fn start_renegotiation(&mut self, now: Instant) -> Result<KeyId, SessionError> {
        let current = self.keys.last().map_or(0, |k| k.key_id.get());
        // Key ids cycle through 1..=7; 0 is only for the first handshake.
        let next = if current >= KeyId::MAX {
            1
        } else {
            current + 1
        };
        let key_id = KeyId::new(next).ok_or(SessionError::Unexpected("key id"))?;
        self.open_key(key_id, now, true)?;
        Ok(key_id)
    }

    fn check_session(&self, got: SessionId) -> Result<(), SessionError> {
        if got != self.remote {
            return Err(SessionError::WrongSession {
                got,
                want: self.remote,
            });
        }
        Ok(())
    }

    fn take_acks(&mut self, key_id: KeyId, acks: Option<&AckBlock>) -> Result<(), SessionError> {
        if let Some(a) = acks {
            if a.remote_session_id() != self.local {
                return Err(SessionError::WrongAckSession {
                    got: a.remote_session_id(),
                    want: self.local,
                });
            }
            if let Some(ks) = self.key_mut(key_id) {
                ks.reliable.on_acks(a.ids());
            }
        }
        Ok(())
    }

    fn tls_input(&mut self, key_id: KeyId, mut data: &[u8]) {
        let Some(ks) = self.key_mut(key_id) else {
            return;
        };
        if ks.phase == Phase::Failed {
            return;
        }
        while !data.is_empty() {
            match ks.tls.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return self.fail(key_id, format!("tls-error ({e})")),
            }
            if let Err(e) = ks.tls.process_new_packets() {
                let reason = refusal_reason(&e);
                self.flush_tls(key_id);
                return self.fail(key_id, reason);
            }
        }
    }

    fn fail(&mut self, key_id: KeyId, reason: String) {
        let first = self.identity.is_none();
        let Some(ks) = self.key_mut(key_id) else {
            return;
        };
        if ks.phase == Phase::Failed {
            return;
        }
        ks.phase = Phase::Failed;
        self.events.push_back(if first {
            Event::Refused { reason }
        } else {
            Event::RenegotiationFailed { key_id, reason }
        });
    }

    fn after_tls_input(&mut self, key_id: KeyId) {
        let Some(ks) = self.key_mut(key_id) else {
            return;
        };
        if ks.phase == Phase::Failed {
            return;
        }
        if ks.phase == Phase::Tls && !ks.tls.is_handshaking() {
            let cert = ks.tls.peer_certificates().and_then(|c| c.first());
            let der = cert.map(|c| c.as_ref().to_vec());
            let id = cert.map(client_identity);
            match id {
                Some(Ok(id)) => {
                    if let Some(first) = &self.identity {
                        // The same certificate, byte for byte: another one (even with the same
                        // name, e.g. a reissued or a colleague's) would change who this is.
                        if self.certificate != der {
                            let reason = format!(
                                "renegotiation-identity-changed ({} -> {})",
                                first.common_name, id.common_name
                            );
                            return self.fail(key_id, reason);
                        }
                    } else {
                        self.identity = Some(id);
                        self.certificate = der;
                    }
                    if let Some(ks) = self.key_mut(key_id) {
                        ks.phase = Phase::KeyExchange;
                    }
                }
                Some(Err(e)) => return self.fail(key_id, format!("certificate-invalid ({e})")),
                None if !self.config.require_client_certificate => {
                    // Credentials alone (checked by the endpoint before it admits anyone).
                    if self.identity.is_none() {
                        self.identity = Some(ClientIdentity {
                            common_name: String::new(),
                            groups: Vec::new(),
                            serial: String::new(),
                        });
                    } else if self.certificate.is_some() {
                        return self.fail(
                            key_id,
                            "renegotiation-identity-changed (certificate dropped)".into(),
                        );
                    }
                    if let Some(ks) = self.key_mut(key_id) {
                        ks.phase = Phase::KeyExchange;
                    }
                }
                None => return self.fail(key_id, "no-client-certificate".into()),
            }
        }
        let Some(ks) = self.key_mut(key_id) else {
            return;
        };
        // Plaintext from the client.
        let mut buf = [0u8; 4096];
        loop {
            match ks.tls.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => ks.plaintext.extend_from_slice(&buf[..n]),
                Err(_) => break, // WouldBlock: nothing more now
            }
        }
        if ks.phase == Phase::KeyExchange && !ks.plaintext.is_empty() {
            match ClientKeyRecord::parse(&ks.plaintext) {
                Ok(record) => {
                    // The client sends nothing else until it has our record.
                    ks.plaintext.clear();
                    self.key_exchange(key_id, record);
                }
                Err(e) if ks.plaintext.len() > MAX_PENDING_PLAINTEXT => {
                    return self.fail(key_id, format!("bad-key-method-record ({e})"));
                }
                Err(_) => {} // wait for the rest
            }
        }
        let Some(ks) = self.key_mut(key_id) else {
            return;
        };
        if ks.phase == Phase::Active {
            let mut messages = Vec::new();
            while let Some(end) = ks.plaintext.iter().position(|&b| b == 0) {
                let msg: Vec<u8> = ks.plaintext.drain(..=end).collect();
                let text = String::from_utf8_lossy(&msg[..msg.len() - 1]).into_owned();
                if !text.is_empty() {
                    messages.push(Event::Control(text));
                }
            }
            let overlong = ks.plaintext.len() > MAX_CONTROL_MESSAGE;
            self.events.extend(messages);
            if overlong {
                return self.flood(format!(
                    "control message longer than {MAX_CONTROL_MESSAGE} bytes"
                ));
            }
        }
        self.flush_tls(key_id);
    }

    /// The peer broke a bound: the session is over (the daemon ends it on the event).
    fn flood(&mut self, reason: String) {
        if self.gone {
            return;
        }
        self.gone = true;
        for ks in &mut self.keys {
            ks.phase = Phase::Failed;
            ks.plaintext = Vec::new();
        }
        self.events.push_back(Event::Flood { reason });
    }

    fn key_exchange(&mut self, key_id: KeyId, record: ClientKeyRecord) {
        let first = self.identity.is_some() && !self.keys.iter().any(|k| k.phase == Phase::Active);
        let peer_info = record.peer_info();
        // TLS-EKM where the client supports it (OpenVPN 2.5.4+), else the legacy TLS-PRF.
        let tls_ekm = peer_info.proto.tls_key_export() && !self.config.force_tls_prf;
        let rng = ring::rand::SystemRandom::new();
        let (mut random1, mut random2) = ([0u8; 32], [0u8; 32]);
        if ring::rand::SecureRandom::fill(&rng, &mut random1).is_err()
            || ring::rand::SecureRandom::fill(&rng, &mut random2).is_err()
        {
            return self.fail(key_id, "internal-error (no randomness)".into());
        }
        let ours = ServerKeyRecord {
            random1,
            random2,
            options: self.config.options.clone(),
            peer_info: None,
        };
        let Ok(out) = ours.to_bytes() else {
            return self.fail(key_id, "internal-error (key-method record)".into());
        };
        let sessions = (self.remote, self.local);
        let Some(ks) = self.key_mut(key_id) else {
            return;
        };
        if ks.tls.writer().write_all(&out).is_err() {
            return self.fail(key_id, "tls-error (cannot write key-method record)".into());
        }
        let material = if tls_ekm {
            match ks
                .tls
                .export_keying_material([0u8; EKM_LEN], EKM_LABEL, None)
            {
                Ok(m) => Box::new(m),
                Err(e) => return self.fail(key_id, format!("tls-error (key export: {e})")),
            }
        } else {
            Box::new(super::prf::openvpn_key_material(&super::prf::KeySources {
                pre_master: &record.pre_master,
                client_random1: &record.random1,
                client_random2: &record.random2,
                server_random1: &random1,
                server_random2: &random2,
                client_session: sessions.0,
                server_session: sessions.1,
            }))
        };
        let tls_version = match ks.tls.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        ks.phase = Phase::Active;
        let Some(identity) = self.identity.clone() else {
            return self.fail(key_id, "no-client-certificate".into());
        };
        let credentials = record.credentials;
        if first {
            self.events.push_back(Event::Authenticated {
                key_id,
                identity,
                credentials,
                peer_info,
                tls_version,
                tls_ekm,
            });
            self.events.push_back(Event::KeysReady {
                key_id,
                material,
                credentials: None,
            });
        } else {
            self.events.push_back(Event::KeysReady {
                key_id,
                material,
                credentials,
            });
        }
    }

    /// Sends a control-channel text message (e.g. a `PUSH_REPLY`, `RESTART`) on the newest
    /// established key state, NUL-terminated as OpenVPN expects.
    pub fn send_control(&mut self, text: &str) {
        let Some(key_id) = self.active_key() else {
            return;
        };
        let mut msg = text.as_bytes().to_vec();
        msg.push(0);
        if let Some(ks) = self.key_mut(key_id) {
            if ks.tls.writer().write_all(&msg).is_ok() {
                self.flush_tls(key_id);
            }
        }
    }

    /// Moves TLS output of a key state into control packets.
    fn flush_tls(&mut self, key_id: KeyId) {
        let Some(ks) = self.key_mut(key_id) else {
            return;
        };
        let mut out = Vec::new();
        while ks.tls.wants_write() {
            if ks.tls.write_tls(&mut out).is_err() {
                break;
            }
        }
        for chunk in out.chunks(MAX_CONTROL_PAYLOAD) {
            ks.reliable.send(ControlOpcode::ControlV1, chunk.to_vec());
        }
        if ks.reliable.unacknowledged() > MAX_UNACKNOWLEDGED {
            self.flood(format!(
                "more than {MAX_UNACKNOWLEDGED} control packets unacknowledged"
            ));
        }
    }

    /// The next packet to send, encoded; call until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let timeout = self.config.handshake_timeout;
        let mut expired = Vec::new();
        for ks in &self.keys {
            if ks.reliable.max_transmissions() > MAX_TRANSMISSIONS && !self.gone {
                self.gone = true;
                self.events.push_back(Event::Gone);
            }
            if matches!(ks.phase, Phase::Tls | Phase::KeyExchange)
                && now.saturating_duration_since(ks.started) >= timeout
            {
                expired.push(ks.key_id);
            }
        }
        for k in expired {
            self.fail(k, "handshake-timeout".into());
        }
        let (local, remote) = (self.local, self.remote);
        for ks in &mut self.keys {
            if let Some(t) = ks.reliable.poll_transmit(now) {
                let packet = Packet::Control(ControlPacket {
                    opcode: t.opcode,
                    key_id: ks.key_id,
                    session_id: local,
                    acks: AckBlock::new(t.acks, remote).ok(),
                    packet_id: t.packet_id,
                    payload: t.payload,
                });
                return Some(packet.to_vec());
            }
            if let Some(acks) = ks.reliable.poll_ack() {
                if let Ok(block) = AckBlock::new(acks, remote) {
                    return Some(
                        Packet::Ack(AckPacket {
                            key_id: ks.key_id,
                            session_id: local,
                            acks: block,
                        })
                        .to_vec(),
                    );
                }
            }
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_some() && self.events.is_empty() {
            // The handshake's events are large and few: an idle session keeps no room for
            // them (about 1.4 KB).
            self.events = VecDeque::new();
        }
        event
    }

    /// When to call [`ServerSession::poll_transmit`] again at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.keys
            .iter()
            .flat_map(|ks| {
                let handshake = matches!(ks.phase, Phase::Tls | Phase::KeyExchange)
                    .then(|| ks.started + self.config.handshake_timeout);
                [ks.reliable.next_deadline(), handshake]
            })
            .flatten()
            .min()
    }
}
