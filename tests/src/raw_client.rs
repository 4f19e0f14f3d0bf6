//! The endpoint's test client (`gateway::endpoint::test_client`, built on the gateway's own
//! protocol core) over a real UDP socket: what the attack tests use where a stock client cannot
//! misbehave on purpose — data before admission, forged inner packets, unterminated control
//! text, floods. Every wait is bounded.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use gateway::{datachannel::DataChannel, endpoint::test_client::TestClient};
use rustls::ClientConfig;

use crate::pki::Pem;

/// A rustls client configuration trusting `ca_pem` and presenting `client`.
pub fn tls_config(ca_pem: &str, client: &Pem) -> Result<Arc<ClientConfig>> {
    Ok(gateway::endpoint::test_client::tls_config(
        ca_pem,
        &client.cert,
        &client.key,
    )?)
}

/// A client session over UDP.
pub struct RawClient {
    sock: UdpSocket,
    server: SocketAddr,
    client: TestClient,
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
            client: TestClient::new(tls, "vpn.example.test", sid)?,
        };
        c.send_pending()?;
        let start = Instant::now();
        // The server's reset answer makes the client send its first TLS flight.
        while !c.client.has_server_session() {
            if start.elapsed() > timeout {
                bail!("no answer to the hard reset from {server}");
            }
            c.receive_once()?;
        }
        Ok(c)
    }

    /// TLS to its end, then the key-method record; returns once data keys exist.
    pub fn finish_handshake(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while !self.client.is_keyed() {
            if start.elapsed() > timeout {
                bail!(
                    "key exchange with {} not done within {timeout:?}",
                    self.server
                );
            }
            self.receive_once()?;
        }
        Ok(())
    }

    fn send_pending(&mut self) -> Result<()> {
        while let Some(p) = self.client.poll_transmit() {
            self.sock.send_to(&p, self.server)?;
        }
        Ok(())
    }

    /// Waits up to one read timeout for a packet, handles it and sends what follows.
    fn receive_once(&mut self) -> Result<()> {
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            self.client
                .handle_packet(&buf[..n])
                .context("server packet")?;
        }
        self.send_pending()
    }

    /// Server control messages so far (`PUSH_REPLY,…`, `HALT`, …).
    pub fn messages(&self) -> &[String] {
        &self.client.messages
    }

    /// Waits (bounded) until a server message starting with `prefix` arrived.
    pub fn wait_message(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(m) = self.client.message(prefix) {
                return Ok(m.to_string());
            }
            if start.elapsed() > timeout {
                bail!(
                    "no {prefix} from the server within {timeout:?}; got {:?}",
                    self.client.messages
                );
            }
            self.receive_once()?;
        }
    }

    /// Sends control-channel text as is (a message is NUL-terminated by the caller).
    pub fn send_control_text(&mut self, text: &[u8]) -> Result<()> {
        self.client.send_control_text(text)?;
        self.send_pending()
    }

    /// The client's data channel (AES-256-GCM) with the given peer id.
    pub fn data_channel(&self, peer_id: u32) -> Result<DataChannel> {
        Ok(self.client.data_channel(peer_id)?)
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
