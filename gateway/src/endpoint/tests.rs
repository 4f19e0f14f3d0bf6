//! The endpoint driven in virtual time against the test client on the same core: no sockets,
//! no sleeping, every deadline reached by moving the clock.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{
    datapath::{DataPath, Opened},
    test_client::{tls_config, TestClient},
    Clock, Command, ConnId, Endpoint, EndpointConfig, LiveSettings, Output, Peer,
};
use crate::{
    protocol::{cookie::CookieJar, session::SessionConfig, tls::TlsMaterial},
    test_support::{client_cert, ServerPki},
};

const CLIENT: &str = "198.51.100.7:40000";

/// An endpoint, its data path, a client and a virtual clock.
struct World {
    pki: ServerPki,
    endpoint: Endpoint,
    datapath: DataPath,
    client: TestClient,
    client_tls: Arc<rustls::ClientConfig>,
    peer: Peer,
    addr: SocketAddr,
    clock: Clock,
    /// Every output of the endpoint so far (transmits and keys excepted).
    seen: Vec<Output>,
    /// The connections that got data keys, once per key.
    keyed: Vec<ConnId>,
    /// The client's sending channel: (peer id, key id) and the channel.
    sending: Option<((u32, Option<u8>), super::DataChannel)>,
}

fn config(live: LiveSettings) -> EndpointConfig {
    EndpointConfig {
        endpoint_id: "cvpn-endpoint-0123456789abcdef0".into(),
        transport: crate::model::TransportProtocol::Udp,
        client_cidr: "10.77.0.0/22".parse().unwrap(),
        split_tunnel: true,
        dns_servers: vec![],
        ciphers: vec!["AES-256-GCM".into()],
        ping: 10,
        ping_restart: 60,
        reneg_after: Some(Duration::from_secs(3600)),
        live,
    }
}

impl World {
    fn new(live: LiveSettings) -> World {
        World::build(live, true)
    }

    /// `certificates`: the endpoint requires client certificates (and the client has one);
    /// false: user name and password only.
    fn build(live: LiveSettings, certificates: bool) -> World {
        let pki = ServerPki::new("endpoint test CA");
        let client_ca = if certificates {
            pki.ca_pem.as_str()
        } else {
            ""
        };
        let material =
            TlsMaterial::from_pem(&pki.server_cert, &pki.server_key, client_ca, None).unwrap();
        let tls = material.server_config().unwrap();
        let start = Instant::now();
        let endpoint = Endpoint::new(
            config(live),
            Arc::new(SessionConfig {
                require_client_certificate: material.requires_client_certificate(),
                ..SessionConfig::new(tls)
            }),
            CookieJar::with_key(b"virtual time cookie key"),
            start,
        )
        .unwrap();
        let client_tls = if certificates {
            let (cert, key) = client_cert(&pki.issuer, "alice", "engineering", 10);
            tls_config(&pki.ca_pem, &cert, &key).unwrap()
        } else {
            super::test_client::tls_config_without_certificate(&pki.ca_pem).unwrap()
        };
        let client = TestClient::new(client_tls.clone(), "vpn.example.com", [7; 8]).unwrap();
        let addr: SocketAddr = CLIENT.parse().unwrap();
        World {
            pki,
            endpoint,
            datapath: DataPath::new(),
            client,
            client_tls,
            peer: Peer::Udp(addr),
            addr,
            clock: Clock {
                now: start,
                wall: SystemTime::now(),
            },
            seen: Vec::new(),
            keyed: Vec::new(),
            sending: None,
        }
    }

    /// Moves packets both ways until neither side has anything to send; applies the
    /// endpoint's data-path outputs as a driver would.
    fn exchange(&mut self) {
        for _ in 0..200 {
            let mut moved = false;
            while let Some(p) = self.client.poll_transmit() {
                moved = true;
                self.endpoint
                    .handle_packet(self.clock, self.peer, self.addr, &p);
            }
            while let Some(out) = self.endpoint.poll_output() {
                match out {
                    Output::Transmit { peer, packet } => {
                        assert_eq!(peer, self.peer);
                        moved = true;
                        self.client.handle_packet(&packet).unwrap();
                    }
                    Output::Keys {
                        conn,
                        peer_id,
                        peer,
                        opener,
                        activity,
                        ..
                    } => {
                        self.datapath
                            .install_keys(conn, peer_id, peer, *opener, activity);
                        self.keyed.push(conn);
                    }
                    Output::Admitted {
                        peer_id, client_ip, ..
                    } => {
                        self.datapath.admit(peer_id, client_ip);
                        self.seen.push(out);
                    }
                    Output::Ended { peer_id, .. } => {
                        self.datapath.remove(peer_id);
                        self.seen.push(out);
                    }
                    other => self.seen.push(other),
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange does not settle");
    }

    /// A world whose endpoint asks a connect handler (the test answers for it).
    fn with_connect_handler() -> World {
        let handler = crate::connect_handler::ConnectHandler::new(
            "https://handler.example.test/",
            &Default::default(),
        )
        .unwrap();
        World::new(LiveSettings {
            connect_handler: Some(Arc::new(handler)),
            ..LiveSettings::default()
        })
    }

    fn advance(&mut self, by: Duration) {
        self.clock.now += by;
        self.clock.wall += by;
        self.endpoint.handle_timeout(self.clock);
        self.exchange();
    }

    fn connect(&mut self) {
        self.exchange();
        assert!(self.client.is_keyed(), "no keys; outputs: {:?}", self.seen);
    }

    fn conn(&self) -> ConnId {
        *self.keyed.first().expect("keys")
    }

    fn ended(&self) -> Option<&str> {
        self.seen.iter().find_map(|o| match o {
            Output::Ended { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
    }

    fn admitted(&self) -> Option<std::net::Ipv4Addr> {
        self.seen.iter().find_map(|o| match o {
            Output::Admitted { client_ip, .. } => Some(*client_ip),
            _ => None,
        })
    }

    fn peer_id(&self) -> u32 {
        let reply = self.client.message("PUSH_REPLY").expect("PUSH_REPLY");
        reply
            .split(',')
            .find_map(|o| o.strip_prefix("peer-id "))
            .and_then(|p| p.parse().ok())
            .expect("peer-id in the push")
    }

    /// Seals `inner` as the client (on its newest key) and opens it in the data path.
    fn data(&mut self, peer_id: u32, inner: &[u8]) -> (bool, usize) {
        let key = (peer_id, self.client.key_id());
        if self.sending.as_ref().is_none_or(|(k, _)| *k != key) {
            self.sending = Some((key, self.client.data_channel(peer_id).unwrap()));
        }
        let Some((_, dc)) = self.sending.as_mut() else {
            unreachable!()
        };
        let mut out = Vec::new();
        dc.seal(inner, &mut out).unwrap();
        match self.datapath.open(self.clock.now, self.peer, &mut out) {
            Opened::Accepted { forward, .. } => (true, forward.map_or(0, <[u8]>::len)),
            Opened::Rejected => (false, 0),
        }
    }
}

fn ipv4_udp(src: std::net::Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[3] = 28;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&[10, 88, 0, 10]);
    p
}

#[path = "directory_tests.rs"]
mod directory;

#[path = "sso_tests.rs"]
mod sso;

#[test]
fn a_handshake_admits_the_client_and_pushes_its_configuration() {
    let mut w = World::new(LiveSettings::default());
    w.connect();
    let ip = w.admitted().expect("admitted");
    let reply = w.client.message("PUSH_REPLY").expect("PUSH_REPLY");
    assert!(reply.contains(&format!("ifconfig {ip} ")), "{reply}");
    assert!(reply.contains("peer-id 0"), "{reply}");
    let logs: Vec<_> = w
        .seen
        .iter()
        .filter_map(|o| match o {
            Output::Log(e) => Some(e.to_json_line()),
            _ => None,
        })
        .collect();
    assert!(
        logs.iter().any(|l| l.contains("\"successful\"")),
        "{logs:?}"
    );
    // The client's own address goes through; another's does not.
    let peer_id = w.peer_id();
    assert_eq!(w.data(peer_id, &ipv4_udp(ip)), (true, 28));
    assert_eq!(
        w.data(peer_id, &ipv4_udp("10.77.0.99".parse().unwrap())),
        (true, 0)
    );
    // Nothing is due before the keepalive or renegotiation deadlines.
    let next = w.endpoint.poll_timeout().expect("a deadline");
    assert!(next > w.clock.now, "a deadline in the past spins the loop");
}

#[test]
fn a_silent_client_is_dropped_at_twice_ping_restart_and_not_before() {
    let mut w = World::new(LiveSettings::default());
    w.connect();
    w.advance(Duration::from_secs(119));
    assert_eq!(w.ended(), None);
    // A data packet keeps it alive: the deadline moves.
    let ip = w.admitted().unwrap();
    let peer_id = w.peer_id();
    w.data(peer_id, &ipv4_udp(ip));
    w.advance(Duration::from_secs(119));
    assert_eq!(w.ended(), None);
    let deadline = w.endpoint.poll_timeout().unwrap();
    assert!(
        deadline <= w.clock.now + Duration::from_secs(2),
        "keepalive deadline not in the schedule"
    );
    w.advance(Duration::from_secs(2));
    assert_eq!(w.ended(), Some("keepalive-timeout"));
    assert_eq!(w.endpoint.connection_count(), 0);
}

#[test]
fn the_session_timeout_restarts_or_halts_the_client() {
    for (halt, message) in [(false, "RESTART"), (true, "HALT")] {
        let mut w = World::new(LiveSettings {
            session_timeout: Some(Duration::from_secs(8 * 3600)),
            disconnect_on_session_timeout: halt,
            ..LiveSettings::default()
        });
        w.connect();
        // Keep the client alive with a packet every minute until the timeout.
        let ip = w.admitted().unwrap();
        let peer_id = w.peer_id();
        for _ in 0..(8 * 60 - 1) {
            assert_eq!(w.data(peer_id, &ipv4_udp(ip)), (true, 28));
            w.clock.now += Duration::from_secs(60);
            w.clock.wall += Duration::from_secs(60);
            w.endpoint.handle_timeout(w.clock);
            // Renegotiations (hourly) run in between.
            w.exchange();
            if w.ended().is_some() {
                break;
            }
        }
        assert_eq!(w.ended(), None, "ended before the session timeout");
        w.data(peer_id, &ipv4_udp(ip));
        w.advance(Duration::from_secs(61));
        assert_eq!(w.ended(), Some("session-timeout"));
        assert!(
            w.client.messages.iter().any(|m| m == message),
            "{:?}",
            w.client.messages
        );
    }
}

#[test]
fn terminate_halts_by_common_name_and_reports_unknown_ids() {
    let mut w = World::new(LiveSettings::default());
    w.connect();
    w.endpoint.handle_command(
        w.clock,
        Command::Terminate {
            connection_ids: vec!["cvpn-connection-00000000000000000".into()],
            usernames: vec!["alice".into()],
        },
    );
    w.exchange();
    assert!(w.client.messages.iter().any(|m| m == "HALT"));
    assert_eq!(w.ended(), Some("terminated"));
    assert!(w.seen.iter().any(|o| matches!(o,
        Output::NotRunning { connection_id } if connection_id == "cvpn-connection-00000000000000000")));
}

#[test]
fn the_server_renegotiates_when_keys_age_and_data_goes_on() {
    let mut w = World::new(LiveSettings::default());
    w.connect();
    let ip = w.admitted().unwrap();
    let peer_id = w.peer_id();
    assert_eq!(w.client.key_id(), Some(0));
    // Stay alive, then pass the hour.
    for _ in 0..61 {
        w.data(peer_id, &ipv4_udp(ip));
        w.advance(Duration::from_secs(60));
    }
    assert_eq!(w.ended(), None, "{:?}", w.seen);
    assert_eq!(w.client.key_id(), Some(1), "no renegotiation");
    assert_eq!(
        w.keyed.len(),
        2,
        "the renegotiated keys reach the data path"
    );
    // Data with the new key opens.
    assert_eq!(w.data(peer_id, &ipv4_udp(ip)), (true, 28));
}

#[test]
fn with_a_slow_connect_handler_no_data_gets_through_until_it_allows() {
    let mut w = World::with_connect_handler();
    w.connect();
    let conn = w.conn();
    assert!(w
        .seen
        .iter()
        .any(|o| matches!(o, Output::AskConnectHandler { .. })));
    assert_eq!(w.admitted(), None);
    // The handler takes 20 s: meanwhile data with any source is dropped and counted.
    for _ in 0..3 {
        let (authenticated, forwarded) = w.data(0, &ipv4_udp("10.77.0.2".parse().unwrap()));
        assert!(authenticated);
        assert_eq!(forwarded, 0, "data before admission was forwarded");
    }
    w.advance(Duration::from_secs(20));
    assert_eq!(w.ended(), None);
    w.endpoint.handle_connect_answer(
        w.clock,
        conn,
        Ok(crate::connect_handler::ConnectResponse {
            allow: true,
            error_msg_on_denied_connection: None,
            posture_compliance_statuses: vec![],
            schema_version: Some("v2".into()),
        }),
    );
    w.exchange();
    let ip = w.admitted().expect("admitted after the answer");
    assert!(w.client.message("PUSH_REPLY").is_some());
    assert_eq!(w.data(w.peer_id(), &ipv4_udp(ip)), (true, 28));
}

#[test]
fn a_denying_connect_handler_sends_auth_failed_with_its_message() {
    let mut w = World::with_connect_handler();
    w.connect();
    let conn = w.conn();
    w.endpoint.handle_connect_answer(
        w.clock,
        conn,
        Ok(crate::connect_handler::ConnectResponse {
            allow: false,
            error_msg_on_denied_connection: Some("not from there".into()),
            posture_compliance_statuses: vec![],
            schema_version: Some("v2".into()),
        }),
    );
    w.exchange();
    assert!(w
        .client
        .messages
        .iter()
        .any(|m| m == "AUTH_FAILED,not from there"));
    assert_eq!(w.ended(), Some("client-connect-failed"));
    assert_eq!(w.admitted(), None);
}

/// The failed-attempt entries of the connection log so far, as JSON lines.
fn failed_attempts(w: &World) -> Vec<String> {
    w.seen
        .iter()
        .filter_map(|o| match o {
            Output::Log(e) => Some(e.to_json_line()),
            _ => None,
        })
        .filter(|l| l.contains("\"failed\""))
        .collect()
}

#[test]
fn a_renegotiation_with_another_certificate_of_the_same_name_ends_the_session() {
    let mut w = World::new(LiveSettings::default());
    w.connect();
    // Another certificate for "alice" (another key, another serial) from the same CA: the
    // common name matches, the certificate does not.
    let (cert, key) = client_cert(&w.pki.issuer, "alice", "engineering", 11);
    w.client
        .set_tls_config(tls_config(&w.pki.ca_pem, &cert, &key).unwrap());
    let ip = w.admitted().unwrap();
    let peer_id = w.peer_id();
    for _ in 0..61 {
        w.data(peer_id, &ipv4_udp(ip));
        w.advance(Duration::from_secs(60));
    }
    // The renegotiation failed; the session ends after the grace.
    w.data(peer_id, &ipv4_udp(ip));
    w.advance(super::RENEGOTIATION_GRACE);
    assert_eq!(w.ended(), Some("renegotiation-failed"), "{:?}", w.seen);
    assert!(w.client.messages.iter().any(|m| m == "HALT"));
}

#[test]
fn a_client_without_a_common_cipher_is_refused_and_logged() {
    let mut w = World::new(LiveSettings::default());
    w.client.peer_info = super::test_client::PEER_INFO.replace(
        "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
        "IV_CIPHERS=BF-CBC",
    );
    w.exchange();
    assert_eq!(w.admitted(), None);
    assert_eq!(w.ended(), Some("no-common-cipher"));
    let failed = failed_attempts(&w);
    assert!(
        failed.iter().any(|l| l.contains("no-common-cipher")),
        "{failed:?}"
    );
}

#[test]
fn a_peer_silent_mid_handshake_is_reaped_and_logged() {
    let mut w = World::new(LiveSettings::default());
    // The reset exchange and the client's first TLS flight; the server's answer never
    // reaches the client, which goes silent.
    for round in 0..2 {
        while let Some(p) = w.client.poll_transmit() {
            w.endpoint.handle_packet(w.clock, w.peer, w.addr, &p);
        }
        while let Some(out) = w.endpoint.poll_output() {
            if let (0, Output::Transmit { packet, .. }) = (round, out) {
                w.client.handle_packet(&packet).unwrap();
            }
        }
    }
    assert_eq!(w.endpoint.connection_count(), 1, "the handshake started");
    // Retransmissions back off and give up; nothing from the client. Every deadline, once
    // handled, moves time forward (a driver sleeping until it would otherwise spin).
    let mut handled_at: Option<Instant> = None;
    for _ in 0..200 {
        let Some(next) = w.endpoint.poll_timeout() else {
            break;
        };
        if let Some(at) = handled_at {
            assert!(next > at, "a deadline that handling does not move");
        }
        w.clock.now = next.max(w.clock.now);
        w.endpoint.handle_timeout(w.clock);
        handled_at = Some(w.clock.now);
        while let Some(out) = w.endpoint.poll_output() {
            if !matches!(out, Output::Transmit { .. }) {
                w.seen.push(out);
            }
        }
        if w.endpoint.connection_count() == 0 {
            break;
        }
    }
    assert_eq!(
        w.endpoint.connection_count(),
        0,
        "a silent handshake was kept"
    );
    let reason = w.ended().expect("ended").to_string();
    assert!(
        reason == "peer-gone" || reason == "handshake-timeout",
        "{reason}"
    );
    let failed = failed_attempts(&w);
    assert!(failed.iter().any(|l| l.contains(&reason)), "{failed:?}");
    assert_eq!(w.admitted(), None);
}

#[test]
fn a_client_waits_for_an_address_block_and_is_refused_without_one() {
    let block: ipnet::Ipv4Net = "10.77.1.0/26".parse().unwrap();
    // A node with no block yet: it asks for one at once; the client waits for it.
    let mut w = World::new(LiveSettings::default());
    w.endpoint.use_address_blocks(&[]).unwrap();
    w.connect();
    let asked = |w: &World| {
        w.seen
            .iter()
            .filter(|o| matches!(o, Output::NeedAddressBlock))
            .count()
    };
    assert_eq!(asked(&w), 1, "{:?}", w.seen);
    assert_eq!((w.admitted(), w.ended()), (None, None), "the client waits");
    w.advance(Duration::from_secs(5));
    assert_eq!(w.ended(), None, "still within the wait");
    w.endpoint.add_address_block(w.clock, block).unwrap();
    w.exchange();
    let ip = w.admitted().expect("admitted once the block came");
    assert!(block.contains(&ip), "{ip} from the block");
    assert!(w.client.message("PUSH_REPLY").is_some());
    // 62 addresses in the block, fewer than 16 left only later: no second request yet.
    assert_eq!(asked(&w), 1);

    // The node rejoins the database and learns that another node holds that block now: the
    // client is told to reconnect, and the block's addresses are not handed out again.
    w.endpoint.keep_address_blocks(w.clock, &[]);
    w.exchange();
    assert_eq!(w.ended(), Some("address-block-lost"));
    assert!(w.client.messages.iter().any(|m| m == "RESTART"));
    assert_eq!(w.endpoint.addresses_available(), 0);

    // No block to claim: the waiting client is refused, saying why.
    let mut w = World::new(LiveSettings::default());
    w.endpoint.use_address_blocks(&[]).unwrap();
    w.connect();
    w.endpoint.no_address_block(w.clock);
    w.exchange();
    assert_eq!(w.ended(), Some("address-pool-exhausted"));
    assert!(w
        .client
        .messages
        .iter()
        .any(|m| m.starts_with("AUTH_FAILED")));

    // No answer at all: refused when the wait is over.
    let mut w = World::new(LiveSettings::default());
    w.endpoint.use_address_blocks(&[]).unwrap();
    w.connect();
    let deadline = w.endpoint.poll_timeout().unwrap();
    assert!(deadline <= w.clock.now + super::ADDRESS_BLOCK_WAIT);
    w.advance(super::ADDRESS_BLOCK_WAIT);
    assert_eq!(w.ended(), Some("address-pool-exhausted"));
}

/// A flood of abandoned handshakes (a reset exchange and a ClientHello from each of many
/// addresses, then silence) fills the pending-handshake table; a real client arriving once
/// they have been quiet for `SILENT_AFTER_HELLO` takes a stalled one's place instead of being
/// dropped for the whole handshake window.
#[test]
fn a_flood_of_abandoned_handshakes_does_not_keep_real_clients_out() {
    let mut w = World::new(LiveSettings::default());
    for i in 0..super::MAX_PENDING_HANDSHAKES {
        let addr: SocketAddr = format!("203.0.{}.{}:5000", i / 250, i % 250 + 1)
            .parse()
            .unwrap();
        let mut sid = [0u8; 8];
        sid[..4].copy_from_slice(&(i as u32 + 1000).to_be_bytes());
        let mut f = TestClient::new(w.client_tls.clone(), "vpn.example.com", sid).unwrap();
        // Reset, cookie answer, ClientHello; the server's flight is never answered.
        for _ in 0..2 {
            while let Some(p) = f.poll_transmit() {
                w.endpoint.handle_packet(w.clock, Peer::Udp(addr), addr, &p);
            }
            while let Some(out) = w.endpoint.poll_output() {
                if let Output::Transmit { peer, packet } = out {
                    if peer == Peer::Udp(addr) && !f.has_server_session() {
                        f.handle_packet(&packet).unwrap();
                    }
                }
            }
        }
    }
    // At once, a real client finds no room (its packets are dropped; it would resend).
    w.exchange();
    assert!(
        !w.client.is_keyed(),
        "the table was not full: the flood did not take"
    );
    // Half a second later (the flood's handshakes never said more than their ClientHello),
    // a real client gets in.
    w.clock.now += super::SILENT_AFTER_HELLO;
    w.clock.wall += super::SILENT_AFTER_HELLO;
    w.client = TestClient::new(w.client_tls.clone(), "vpn.example.com", [9; 8]).unwrap();
    w.connect();
    let ended: Vec<&str> = w
        .seen
        .iter()
        .filter_map(|o| match o {
            Output::Ended { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        !ended.is_empty() && ended.iter().all(|r| *r == "handshake-stalled"),
        "stalled handshakes must have made room: {ended:?}"
    );
}
