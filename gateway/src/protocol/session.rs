//! One client's control channel on the server, sans-IO: reliability layer, rustls server,
//! key-method 2, TLS-EKM key export and control messages. Bytes and time in
//! ([`ServerSession::handle`]); packets to send ([`ServerSession::poll_transmit`]), events
//! ([`ServerSession::poll_event`]) and a deadline ([`ServerSession::next_deadline`]) out.
//!
//! A session starts after the stateless reset exchange (see [`super::cookie`]): the client's
//! reset (packet 0) and ours are behind us.

use std::{
    collections::VecDeque,
    io::{Read, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{ServerConfig, ServerConnection};

use super::{
    keymethod::{ClientKeyRecord, PeerInfo, ServerKeyRecord},
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
/// Transmissions of one control packet before the peer is declared gone.
const MAX_TRANSMISSIONS: u32 = 12;

/// Settings shared by all sessions of an endpoint.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub tls: Arc<ServerConfig>,
    pub reliable: ReliableConfig,
    /// The handshake (TLS and key exchange) must finish within this time.
    pub handshake_timeout: Duration,
    /// The options string of our key-method record (informational for the client).
    pub options: String,
}

impl SessionConfig {
    pub fn new(tls: Arc<ServerConfig>) -> Self {
        SessionConfig {
            tls,
            reliable: ReliableConfig::default(),
            handshake_timeout: Duration::from_secs(60),
            options: "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-server".to_string(),
        }
    }
}

/// What the session tells the daemon.
#[derive(Debug)]
pub enum Event {
    /// TLS is done, the client certificate verified and the client's key-method record read.
    Authenticated {
        key_id: KeyId,
        identity: ClientIdentity,
        username: Option<String>,
        peer_info: PeerInfo,
        tls_version: String,
    },
    /// Data-channel key material for `key_id` (TLS-EKM, 256 bytes).
    KeysReady { key_id: KeyId, material: Box<[u8; EKM_LEN]> },
    /// A control-channel text message from the client (e.g. `PUSH_REQUEST`, `EXIT`).
    Control(String),
    /// The handshake was refused; the reason is in the connection log's vocabulary.
    Refused { reason: String },
    /// The peer stopped answering.
    Gone,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Tls,
    KeyExchange,
    Active,
    Failed,
}

/// A client's control channel.
pub struct ServerSession {
    config: Arc<SessionConfig>,
    local: SessionId,
    remote: SessionId,
    key_id: KeyId,
    reliable: Reliable,
    tls: ServerConnection,
    phase: Phase,
    plaintext: Vec<u8>,
    events: VecDeque<Event>,
    started: Instant,
    identity: Option<ClientIdentity>,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("phase", &self.phase)
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
    #[error("{0} is not handled on an established control channel")]
    Unexpected(&'static str),
}

impl ServerSession {
    /// A session whose reset exchange is done: `local` is our (cookie) session id, `remote`
    /// the client's.
    pub fn after_reset(config: Arc<SessionConfig>, local: SessionId, remote: SessionId, now: Instant) -> Result<Self, rustls::Error> {
        let tls = ServerConnection::new(config.tls.clone())?;
        Ok(ServerSession {
            reliable: Reliable::after_reset_exchange(config.reliable),
            config,
            local,
            remote,
            key_id: KeyId::default(),
            tls,
            phase: Phase::Tls,
            plaintext: Vec::new(),
            events: VecDeque::new(),
            started: now,
            identity: None,
        })
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

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Active
    }

    pub fn is_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    /// Takes in one decoded control-channel packet (data packets belong to the data channel).
    pub fn handle(&mut self, now: Instant, packet: &Packet<'_>) -> Result<(), SessionError> {
        match packet {
            Packet::Ack(ack) => {
                self.check_session(ack.session_id)?;
                self.take_acks(Some(&ack.acks))?;
            }
            Packet::Control(c) => {
                self.check_session(c.session_id)?;
                self.take_acks(c.acks.as_ref())?;
                match c.opcode {
                    ControlOpcode::ControlV1 if c.key_id == self.key_id => {
                        let (_, ready) = self.reliable.on_received(c.packet_id, c.payload.clone());
                        for payload in ready {
                            self.tls_input(&payload);
                        }
                        self.after_tls_input(now);
                    }
                    // A retransmitted client reset: acknowledge it again.
                    ControlOpcode::HardResetClientV2 => {
                        self.reliable.on_received(c.packet_id, Vec::new());
                    }
                    ControlOpcode::SoftResetV1 => return Err(SessionError::Unexpected("renegotiation (soft reset)")),
                    _ => return Err(SessionError::Unexpected("this control opcode")),
                }
            }
            Packet::Data(_) => return Err(SessionError::Unexpected("a data packet")),
        }
        Ok(())
    }

    fn check_session(&self, got: SessionId) -> Result<(), SessionError> {
        if got != self.remote {
            return Err(SessionError::WrongSession { got, want: self.remote });
        }
        Ok(())
    }

    fn take_acks(&mut self, acks: Option<&AckBlock>) -> Result<(), SessionError> {
        if let Some(a) = acks {
            if a.remote_session_id() != self.local {
                return Err(SessionError::WrongAckSession { got: a.remote_session_id(), want: self.local });
            }
            self.reliable.on_acks(a.ids());
        }
        Ok(())
    }

    fn tls_input(&mut self, mut data: &[u8]) {
        if self.phase == Phase::Failed {
            return;
        }
        while !data.is_empty() {
            match self.tls.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.fail(format!("tls-error ({e})"));
                    return;
                }
            }
            if let Err(e) = self.tls.process_new_packets() {
                let reason = refusal_reason(&e);
                self.flush_tls();
                self.fail(reason);
                return;
            }
        }
    }

    fn fail(&mut self, reason: String) {
        if self.phase != Phase::Failed {
            self.phase = Phase::Failed;
            self.events.push_back(Event::Refused { reason });
        }
    }

    fn after_tls_input(&mut self, _now: Instant) {
        if self.phase == Phase::Failed {
            return;
        }
        if self.phase == Phase::Tls && !self.tls.is_handshaking() {
            match self.tls.peer_certificates().and_then(|c| c.first()).map(client_identity) {
                Some(Ok(id)) => {
                    self.identity = Some(id);
                    self.phase = Phase::KeyExchange;
                }
                Some(Err(e)) => return self.fail(format!("certificate-invalid ({e})")),
                None => return self.fail("no-client-certificate".into()),
            }
        }
        // Plaintext from the client.
        let mut buf = [0u8; 4096];
        loop {
            match self.tls.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.plaintext.extend_from_slice(&buf[..n]),
                Err(_) => break, // WouldBlock: nothing more now
            }
        }
        if self.phase == Phase::KeyExchange && !self.plaintext.is_empty() {
            match ClientKeyRecord::parse(&self.plaintext) {
                Ok(record) => {
                    // The client sends nothing else until it has our record.
                    self.plaintext.clear();
                    self.key_exchange(record);
                }
                Err(e) if self.plaintext.len() > MAX_PENDING_PLAINTEXT => {
                    return self.fail(format!("bad-key-method-record ({e})"));
                }
                Err(_) => {} // wait for the rest
            }
        }
        if self.phase == Phase::Active {
            while let Some(end) = self.plaintext.iter().position(|&b| b == 0) {
                let msg: Vec<u8> = self.plaintext.drain(..=end).collect();
                let text = String::from_utf8_lossy(&msg[..msg.len() - 1]).into_owned();
                if !text.is_empty() {
                    self.events.push_back(Event::Control(text));
                }
            }
        }
        self.flush_tls();
    }

    fn key_exchange(&mut self, record: ClientKeyRecord) {
        let peer_info = record.peer_info();
        if !peer_info.proto.tls_key_export() {
            return self.fail(
                "client-lacks-tls-ekm (the client must support key-derivation tls-ekm: OpenVPN 2.5.4 or later)".into(),
            );
        }
        let rng = ring::rand::SystemRandom::new();
        let (mut random1, mut random2) = ([0u8; 32], [0u8; 32]);
        if ring::rand::SecureRandom::fill(&rng, &mut random1).is_err()
            || ring::rand::SecureRandom::fill(&rng, &mut random2).is_err()
        {
            return self.fail("internal-error (no randomness)".into());
        }
        let ours = ServerKeyRecord { random1, random2, options: self.config.options.clone(), peer_info: None };
        let Ok(out) = ours.to_bytes() else {
            return self.fail("internal-error (key-method record)".into());
        };
        if self.tls.writer().write_all(&out).is_err() {
            return self.fail("tls-error (cannot write key-method record)".into());
        }
        let material = match self.tls.export_keying_material([0u8; EKM_LEN], EKM_LABEL, None) {
            Ok(m) => Box::new(m),
            Err(e) => return self.fail(format!("tls-error (key export: {e})")),
        };
        let identity = match self.identity.clone() {
            Some(i) => i,
            None => return self.fail("no-client-certificate".into()),
        };
        let tls_version = format!("{:?}", self.tls.protocol_version());
        self.phase = Phase::Active;
        self.events.push_back(Event::Authenticated {
            key_id: self.key_id,
            identity,
            username: record.credentials.as_ref().map(|c| c.username.clone()),
            peer_info,
            tls_version,
        });
        self.events.push_back(Event::KeysReady { key_id: self.key_id, material });
    }

    /// Sends a control-channel text message (e.g. a `PUSH_REPLY`, `RESTART`), NUL-terminated
    /// as OpenVPN expects.
    pub fn send_control(&mut self, text: &str) {
        if self.phase != Phase::Active {
            return;
        }
        let mut msg = text.as_bytes().to_vec();
        msg.push(0);
        if self.tls.writer().write_all(&msg).is_ok() {
            self.flush_tls();
        }
    }

    /// Moves TLS output into control packets.
    fn flush_tls(&mut self) {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut out).is_err() {
                break;
            }
        }
        for chunk in out.chunks(MAX_CONTROL_PAYLOAD) {
            self.reliable.send(ControlOpcode::ControlV1, chunk.to_vec());
        }
    }

    /// The next packet to send, encoded; call until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.reliable.max_transmissions() > MAX_TRANSMISSIONS && self.phase != Phase::Failed {
            self.phase = Phase::Failed;
            self.events.push_back(Event::Gone);
        }
        if self.phase != Phase::Active && self.phase != Phase::Failed && now.duration_since(self.started) > self.config.handshake_timeout {
            self.fail("handshake-timeout".into());
        }
        if let Some(t) = self.reliable.poll_transmit(now) {
            let packet = Packet::Control(ControlPacket {
                opcode: t.opcode,
                key_id: self.key_id,
                session_id: self.local,
                acks: AckBlock::new(t.acks, self.remote).ok(),
                packet_id: t.packet_id,
                payload: t.payload,
            });
            return Some(packet.to_vec());
        }
        let acks = self.reliable.poll_ack()?;
        let block = AckBlock::new(acks, self.remote).ok()?;
        Some(Packet::Ack(AckPacket { key_id: self.key_id, session_id: self.local, acks: block }).to_vec())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`ServerSession::poll_transmit`] again at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        let handshake = (self.phase != Phase::Active && self.phase != Phase::Failed)
            .then(|| self.started + self.config.handshake_timeout);
        match (self.reliable.next_deadline(), handshake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
