//! One client for the login benchmarks and the cluster tests: the project's sans-IO test client
//! (`gateway::endpoint::test_client`, which speaks as a stock 2.6 client) on a UDP socket, with
//! a stock client's retransmissions: unacknowledged control packets are sent again after 2 s,
//! then 4, 8… (`tls-timeout`), and `PUSH_REQUEST` goes out as soon as the keys exist and every
//! 5 s until `PUSH_REPLY` or `AUTH_FAILED`.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use gateway::{
    endpoint::test_client::TestClient,
    protocol::{
        keymethod::Credentials,
        packet::{ControlOpcode, Header, Opcode, Packet},
    },
};

/// The test client's TLS configuration.
pub type ClientConfig = Arc<rustls::ClientConfig>;

/// The name in the test servers' certificates.
pub const SERVER_NAME: &str = "vpn.example.test";
/// A stock client's first retransmission timeout (`tls-timeout`), doubled on each retry.
const TLS_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RTO: Duration = Duration::from_secs(16);
/// A stock 2.6 client sends PUSH_REQUEST again this often until it gets an answer.
const PUSH_REQUEST_INTERVAL: Duration = Duration::from_secs(5);

struct Unacked {
    bytes: Vec<u8>,
    reset: bool,
    due: Instant,
    rto: Duration,
}

pub struct Session {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub client: TestClient,
    /// Our control packets the server has not acknowledged: (key id, packet id).
    unacked: BTreeMap<(u8, u32), Unacked>,
    pub retransmits: u32,
}

/// Eight random bytes (std's hasher keys are random per process and instance).
fn random_session_id() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish().to_be_bytes()
}

pub fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

impl Session {
    pub fn new(
        sock: UdpSocket,
        server: SocketAddr,
        tls: ClientConfig,
        credentials: Option<Credentials>,
    ) -> Result<Self> {
        let mut client = TestClient::new(tls, SERVER_NAME, random_session_id())?;
        client.credentials = credentials;
        Ok(Session {
            sock,
            server,
            client,
            unacked: BTreeMap::new(),
            retransmits: 0,
        })
    }

    /// Sends what the client has queued; keeps its control packets until acknowledged.
    pub fn flush(&mut self) -> Result<()> {
        let now = Instant::now();
        while let Some(p) = self.client.poll_transmit() {
            if let Ok(Packet::Control(c)) = Packet::decode(&p) {
                self.unacked.insert(
                    (c.key_id.get(), c.packet_id),
                    Unacked {
                        bytes: p.clone(),
                        reset: c.opcode == ControlOpcode::HardResetClientV2,
                        due: now + TLS_TIMEOUT,
                        rto: TLS_TIMEOUT,
                    },
                );
            }
            self.sock.send_to(&p, self.server)?;
        }
        Ok(())
    }

    /// A control packet from the server: its acknowledgements clear ours, the client takes it.
    pub fn control(&mut self, buf: &[u8]) -> Result<()> {
        let acked: Option<(u8, Vec<u32>)> = match Packet::decode(buf) {
            Ok(Packet::Control(c)) => c.acks.as_ref().map(|a| (c.key_id.get(), a.ids().to_vec())),
            Ok(Packet::Ack(a)) => Some((a.key_id.get(), a.acks.ids().to_vec())),
            _ => None,
        };
        if let Some((key, ids)) = acked {
            for id in ids {
                self.unacked.remove(&(key, id));
            }
        }
        self.client.handle_packet(buf)?;
        if self.client.has_server_session() {
            // The server's reset answered ours.
            self.unacked.retain(|_, u| !u.reset);
        }
        self.flush()
    }

    /// Sends again what is due, doubling each packet's timeout.
    pub fn resend_due(&mut self) -> Result<()> {
        let now = Instant::now();
        for u in self.unacked.values_mut() {
            if u.due <= now {
                self.sock.send_to(&u.bytes, self.server)?;
                self.retransmits += 1;
                u.rto = (u.rto * 2).min(MAX_RTO);
                u.due = now + u.rto;
            }
        }
        Ok(())
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.unacked.values().map(|u| u.due).min()
    }

    /// What the client knows so far, for a timeout's reason.
    pub fn stage(&self) -> &'static str {
        if !self.client.has_server_session() {
            "no answer to the reset"
        } else if !self.client.is_keyed() {
            "TLS and key exchange not done"
        } else {
            "keys exchanged, no PUSH_REPLY"
        }
    }

    /// Signs in: from the first packet to the server's PUSH_REPLY (returned, its messages
    /// joined), or why not.
    pub fn login(&mut self, deadline: Instant) -> std::result::Result<String, String> {
        self.flush().map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; 4096];
        let mut push_due: Option<Instant> = None;
        loop {
            let replies: Vec<&str> = self
                .client
                .messages
                .iter()
                .filter(|m| m.starts_with("PUSH_REPLY"))
                .map(String::as_str)
                .collect();
            if !replies.is_empty() {
                return Ok(replies.join(","));
            }
            if let Some(m) = self
                .client
                .messages
                .iter()
                .find(|m| m.starts_with("AUTH_FAILED") || m.starts_with("HALT"))
            {
                return Err(m.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("timed out: {}", self.stage()));
            }
            if self.client.is_keyed() && push_due.is_none_or(|t| now >= t) {
                self.client
                    .send_control_text(b"PUSH_REQUEST\0")
                    .map_err(|e| format!("PUSH_REQUEST: {e}"))?;
                self.flush().map_err(|e| format!("send: {e}"))?;
                push_due = Some(now + PUSH_REQUEST_INTERVAL);
            }
            self.resend_due().map_err(|e| format!("send: {e}"))?;
            let wake = [Some(deadline), self.next_due(), push_due]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(deadline);
            let wait = wake
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            self.sock
                .set_read_timeout(Some(wait))
                .map_err(|e| e.to_string())?;
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from == self.server => {
                    let data = Header::peek(&buf[..n])
                        .map(|h| matches!(h.opcode, Opcode::DataV1 | Opcode::DataV2))
                        .unwrap_or(true);
                    if !data {
                        self.control(&buf[..n]).map_err(|e| format!("{e:#}"))?;
                    }
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    }
}
