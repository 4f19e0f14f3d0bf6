//! Drives the sans-IO endpoint core (`gateway::endpoint::Endpoint`) and its data path with a
//! fuzzer-chosen sequence of datagrams from a few peers, clock steps, commands and connect-handler
//! answers, applying every output as a driver would. Checks that nothing panics, that every
//! transmit goes to a peer that sent something, that draining ends, that the connection count
//! never exceeds the handshake bounds, and that the data path forwards only packets whose source
//! is the address the endpoint admitted for that peer id.
//!
//! The stateless reset cookie is keyed with a fixed key and the wall clock is fixed, so the
//! fuzzer can replay a cookie answer it saw (its bytes come back in the transmits, which are
//! fed to the next step's "echo" op).
//!
//! Input layout: repeated `op · peer · len · len bytes`. `op % 6`: 0 a control datagram from
//! peer `peer % 4`; 1 the same bytes as a data datagram (first byte forced to P_DATA_V2); 2 the
//! clock moves by the bytes (big-endian milliseconds, at most ~18 h); 3 a command (terminate by
//! the bytes as a name, replace TLS revoking nothing, new routes, the next address block,
//! no block or half the blocks taken away); 4 a connect-handler answer
//! for connection `peer` (allow when bit 0 of the first byte is set), or on a directory
//! endpoint (the input's first byte has bit 7 set; bit 5 alone: a single sign-on endpoint)
//! with bit 1 set a directory or identity-provider answer (a user
//! with the bytes as groups, or a failure the byte picks); 5 the last transmit to
//! that peer is echoed back with its session ids swapped (gets past the cookie and the session
//! checks more often than random bytes do).
//!
//! With bit 4 of the input's first byte set, the endpoint hands out addresses from claimed
//! blocks only (a node sharing the endpoint), starting with none: clients wait for blocks the
//! commands give, and every admitted address must lie in a block given and not taken away.
#![no_main]

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use gateway::endpoint::datapath::{DataPath, Opened};
use gateway::endpoint::{Clock, Command, Endpoint, EndpointConfig, LiveSettings, Output, Peer};
use gateway::protocol::cookie::CookieJar;
use libfuzzer_sys::fuzz_target;

fn peer_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 1 + (i % 4)], 40000 + u16::from(i % 2)))
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut clock = Clock {
        now: start,
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    };
    let config = EndpointConfig {
        endpoint_id: "cvpn-endpoint-0123456789abcdef0".into(),
        transport: gateway::model::TransportProtocol::Udp,
        client_cidr: "10.77.0.0/22".parse().expect("cidr"),
        split_tunnel: true,
        dns_servers: vec![Ipv4Addr::new(10, 88, 0, 2)],
        ciphers: vec!["AES-256-GCM".into(), "CHACHA20-POLY1305".into()],
        ping: 10,
        ping_restart: 60,
        reneg_after: Some(Duration::from_secs(60)),
        live: LiveSettings {
            directory: data.first().is_some_and(|b| b & 0x80 != 0).then(|| {
                gateway::endpoint::DirectoryPolicy {
                    directory_id: "cvpn-directory-0123456789abcdef0".into(),
                    mfa: if data.first().is_some_and(|b| b & 0x40 != 0) {
                        gateway::model::MfaMode::Totp
                    } else {
                        gateway::model::MfaMode::None
                    },
                    recheck: Duration::from_secs(30),
                }
            }),
            // Bit 5 without bit 7: a single sign-on endpoint (web sign-in; answers as above).
            sso: data.first().is_some_and(|b| b & 0xa0 == 0x20).then(|| {
                gateway::endpoint::SsoPolicy {
                    idp_id: "idp-0123456789abcdef0".into(),
                    sign_in_base: "https://vpn.example.test".into(),
                    sign_in_timeout: Duration::from_secs(60),
                    recheck: Duration::from_secs(30),
                }
            }),
            ..LiveSettings::default()
        },
    };
    let Ok(mut endpoint) = Endpoint::new(
        config,
        common::session_config(),
        CookieJar::with_key(b"fuzz cookie key"),
        start,
    ) else {
        return;
    };
    let blocks_mode = data.first().is_some_and(|b| b & 0x10 != 0);
    let all_blocks = gateway::pool::address_blocks("10.77.0.0/22".parse().expect("cidr"));
    let mut given: Vec<ipnet::Ipv4Net> = Vec::new();
    if blocks_mode {
        endpoint.use_address_blocks(&[]).expect("no blocks");
    }
    let mut datapath = DataPath::new();
    let mut admitted: HashMap<u32, Ipv4Addr> = HashMap::new();
    let mut last_to: HashMap<Peer, Vec<u8>> = HashMap::new();
    let mut conns: Vec<u64> = Vec::new();
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 3 && steps < 64 {
        steps += 1;
        let (op, who, len) = (rest[0], rest[1], usize::from(rest[2]));
        rest = &rest[3..];
        let take = len.min(rest.len());
        let mut bytes = rest[..take].to_vec();
        rest = &rest[take..];
        let addr = peer_addr(who);
        let peer = Peer::Udp(addr);
        match op % 6 {
            0 => endpoint.handle_packet(clock, peer, addr, &bytes),
            1 => {
                if let Some(b) = bytes.first_mut() {
                    *b = (9 << 3) | (*b & 7);
                }
                let peer_id = match bytes[..] {
                    [_, a, b, c, ..] => u32::from_be_bytes([0, a, b, c]),
                    _ => u32::MAX,
                };
                if let Opened::Accepted {
                    conn,
                    moved,
                    forward,
                } = datapath.open(clock.now, peer, &mut bytes)
                {
                    if let Some(p) = forward {
                        let own = admitted
                            .get(&peer_id)
                            .expect("forwarded for a peer id never admitted");
                        assert_eq!(&p[12..16], &own.octets()[..], "forwarded a forged source");
                    }
                    if moved {
                        let _ = endpoint.handle_float(conn, peer);
                    }
                }
            }
            2 => {
                let mut ms = [0u8; 8];
                let n = bytes.len().min(4);
                ms[8 - n..].copy_from_slice(&bytes[..n]);
                let step = Duration::from_millis(u64::from_be_bytes(ms) % 65_000_000);
                clock.now += step;
                clock.wall += step;
                endpoint.handle_timeout(clock);
            }
            3 => {
                let name = String::from_utf8_lossy(&bytes).into_owned();
                if blocks_mode && who % 5 == 3 {
                    if let Some(b) = all_blocks.get(given.len() + usize::from(who / 5 % 2)) {
                        if endpoint.add_address_block(clock, *b).is_ok() {
                            given.push(*b);
                        }
                    }
                } else if blocks_mode && who % 5 == 4 {
                    if bytes.first().is_some_and(|b| b & 1 == 1) {
                        endpoint.no_address_block(clock);
                    } else {
                        given.truncate(given.len() / 2);
                        endpoint.keep_address_blocks(clock, &given);
                    }
                }
                let command = match who % 3 {
                    0 => Command::Terminate {
                        connection_ids: vec![name.clone()],
                        usernames: vec![name],
                    },
                    1 => Command::ReplaceTls {
                        config: common::session_config(),
                        revoked_serials: vec![name],
                    },
                    _ => Command::SetRoutes(vec!["10.88.0.0/24".parse().expect("route")]),
                };
                endpoint.handle_command(clock, command);
            }
            4 if bytes.first().is_some_and(|b| b & 2 != 0) => {
                if let Some(&conn) = conns.get(usize::from(who) % conns.len().max(1)) {
                    use gateway::auth::{AuthFailure, DirectoryUser};
                    let answer = match bytes.get(1).copied().unwrap_or(0) % 4 {
                        0 => Err(AuthFailure::BadPassword),
                        1 => Err(AuthFailure::UnknownUser),
                        2 => Err(AuthFailure::DirectoryUnreachable("fuzz".into())),
                        _ => Ok(DirectoryUser {
                            username: "fuzz".into(),
                            dn: "uid=fuzz,dc=example".into(),
                            groups: bytes
                                .split(|b| *b == b',')
                                .map(|g| String::from_utf8_lossy(g).into_owned())
                                .collect(),
                        }),
                    };
                    endpoint.handle_auth_answer(clock, conn, answer);
                }
            }
            4 => {
                if let Some(&conn) = conns.get(usize::from(who) % conns.len().max(1)) {
                    let answer = Ok(gateway::connect_handler::ConnectResponse {
                        allow: bytes.first().is_some_and(|b| b & 1 == 1),
                        error_msg_on_denied_connection: Some(
                            String::from_utf8_lossy(&bytes).into_owned(),
                        ),
                        posture_compliance_statuses: vec![],
                        schema_version: None,
                    });
                    endpoint.handle_connect_answer(clock, conn, answer);
                }
            }
            _ => {
                if let Some(mut echo) = last_to.get(&peer).cloned() {
                    // Swap the session id (bytes 1..9) with the acked remote id at the end of
                    // an ack block, when there is one: a cheap way past the cookie check.
                    if echo.len() > 18 && echo[9] > 0 {
                        let acks = usize::from(echo[9]).min(8);
                        let at = 10 + 4 * acks;
                        if echo.len() >= at + 8 {
                            let (a, b) = (echo[1..9].to_vec(), echo[at..at + 8].to_vec());
                            echo[1..9].copy_from_slice(&b);
                            echo[at..at + 8].copy_from_slice(&a);
                        }
                    }
                    echo[0] = (echo[0] & 7) | (bytes.first().map_or(4, |b| b % 12) << 3);
                    endpoint.handle_packet(clock, peer, addr, &echo);
                }
            }
        }
        // Apply the outputs as a driver would; draining must end.
        let mut drained = 0;
        while let Some(out) = endpoint.poll_output() {
            drained += 1;
            assert!(drained < 100_000, "draining does not end");
            match out {
                Output::Transmit { peer, packet } => {
                    assert!(
                        matches!(peer, Peer::Udp(a) if (0..4).any(|i| peer_addr(i) == a || peer_addr(i + 1) == a)),
                        "a transmit to a peer that never sent anything: {peer:?}"
                    );
                    last_to.insert(peer, packet);
                }
                Output::Keys {
                    conn,
                    peer_id,
                    peer,
                    opener,
                    activity,
                    ..
                } => {
                    if !conns.contains(&conn) {
                        conns.push(conn);
                    }
                    datapath.install_keys(conn, peer_id, peer, *opener, activity);
                }
                Output::Admitted {
                    peer_id, client_ip, ..
                } => {
                    assert!(
                        !admitted.values().any(|ip| *ip == client_ip),
                        "{client_ip} handed out twice"
                    );
                    assert!(
                        !blocks_mode || given.iter().any(|b| b.contains(&client_ip)),
                        "{client_ip} lies in no block given ({given:?})"
                    );
                    admitted.insert(peer_id, client_ip);
                    datapath.admit(peer_id, client_ip);
                }
                Output::Ended { peer_id, .. } => {
                    admitted.remove(&peer_id);
                    datapath.remove(peer_id);
                }
                Output::GroupsChanged {
                    conn, client_ip, ..
                } => {
                    assert!(
                        admitted.values().any(|ip| *ip == client_ip),
                        "groups changed for {client_ip} (conn {conn}), which is not admitted"
                    );
                }
                Output::AskConnectHandler { .. }
                | Output::Authenticate { .. }
                | Output::Log(_)
                | Output::NotRunning { .. }
                | Output::NeedAddressBlock => {}
            }
        }
        assert!(
            endpoint.connection_count()
                <= gateway::endpoint::MAX_PENDING_HANDSHAKES + admitted.len(),
            "more connections than the handshake bounds allow"
        );
    }
});
