//! Network-namespace traffic tests of the kernel data plane, with real kernel TCP and UDP on
//! both ends: client namespaces whose traffic enters a TUN, a plain relay into the gateway's
//! TUN, the gateway's programs, and a private-network namespace running real servers.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use cvpn_tests::{
    is_root,
    topology::{GATEWAY_TARGET_ADDR, PRIVATE_HOST, PRIVATE_HOST_2, TARGET_ID, TARGET_IF},
    Topology, TopologyOptions,
};
use gateway::dataplane::{
    policy::{Access, AuthorizationRule, Policy, Route},
    ClientLink, FlowEventKind, NatTimeouts, ReturnHook, ReturnPath,
};
use gateway_common::Counter;

fn require_root() {
    assert!(
        is_root(),
        "the network-namespace tests need root: run `cargo xtask test` as root"
    );
}

fn policy(rules: &[(&str, &str)]) -> Policy {
    Policy {
        rules: rules
            .iter()
            .map(|(cidr, g)| AuthorizationRule {
                destination: cidr.parse().unwrap(),
                access: if *g == "*" {
                    Access::AllGroups
                } else {
                    Access::Group(g.to_string())
                },
                ports: None,
            })
            .collect(),
        routes: vec![Route {
            destination: "10.88.0.0/24".parse().unwrap(),
            target: TARGET_ID,
        }],
    }
}

/// An HTTP server that answers each request with the peer address it saw, then `extra` bytes.
fn http_server(listener: TcpListener, requests: usize, extra: usize) -> Result<Vec<SocketAddr>> {
    let mut peers = Vec::new();
    for _ in 0..requests {
        let (mut s, peer) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("client closed before the request ended");
            }
            req.extend_from_slice(&buf[..n]);
        }
        // A body of `Content-Length` bytes may follow the headers (upload test).
        let head = String::from_utf8_lossy(&req).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("Content-Length: ")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        let body_start = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut got = req.len() - body_start;
        while got < len {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("upload cut short at {got} of {len} bytes");
            }
            got += n;
        }
        let text = format!("peer={peer} uploaded={got}\n");
        let body_len = text.len() + extra;
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n{text}"
        )?;
        s.write_all(&vec![b'x'; extra])?;
        peers.push(peer);
    }
    Ok(peers)
}

fn http_get(host: Ipv4Addr, port: u16, upload: usize) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((host, port)), Duration::from_secs(3))
        .with_context(|| format!("connect to {host}:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {upload}\r\n\r\n"
    )?;
    s.write_all(&vec![b'u'; upload])?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    Ok(String::from_utf8_lossy(&resp).to_string())
}

/// An HTTP exchange (300 kB up, 2 MB down) and ping through the data plane; returns nothing,
/// asserts everything: the server sees the gateway's address, every byte arrives, counters
/// move.
fn http_exchange(opts: TopologyOptions, expect_hook: ReturnHook, wire_checksums: bool) {
    require_root();
    let mut t = Topology::new(opts).unwrap();
    assert_eq!(t.dataplane.return_hook(TARGET_IF), Some(expect_hook));
    if wire_checksums {
        // Make the private host's veth send complete checksums, as packets from a wire have.
        t.private
            .command("ethtool")
            .args(["-K", "eth0", "tx", "off"])
            .output()
            .unwrap();
    }
    let client = t.clients[0].addr;
    t.dataplane
        .add_session(client, 7, &["eng".to_string()])
        .unwrap();
    t.dataplane
        .replace_policy(policy(&[("10.88.0.10/32", "eng")]))
        .unwrap();

    let listener = t
        .private
        .run(move || Ok(TcpListener::bind((PRIVATE_HOST, 8080))?))
        .unwrap();
    let server = std::thread::spawn(move || http_server(listener, 1, 2_000_000));
    // Both directions carry full-size (and, on the return path, GSO) segments.
    let resp = t.clients[0]
        .ns
        .run(move || http_get(PRIVATE_HOST, 8080, 300_000))
        .unwrap();
    let peers = server.join().unwrap().unwrap();

    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp:.200}");
    assert!(
        resp.contains(&format!("peer={GATEWAY_TARGET_ADDR}:")),
        "server saw {peers:?}"
    );
    assert!(resp.contains("uploaded=300000"), "{:.200}", resp);
    assert_eq!(peers[0].ip(), std::net::IpAddr::V4(GATEWAY_TARGET_ADDR));
    let body_len = resp.len() - resp.find("\r\n\r\n").unwrap() - 4;
    assert!(body_len > 2_000_000, "download cut short: {body_len} bytes");

    let c = t.dataplane.session_counters(client).unwrap().unwrap();
    assert!(c.from_client_bytes > 300_000, "{c:?}");
    assert!(c.to_client_bytes > 2_000_000, "{c:?}");
    let g = t.dataplane.global_counters().unwrap();
    assert!(
        g.get(Counter::Forwarded) > 100 && g.get(Counter::ReturnDelivered) > 100,
        "{g:?}"
    );

    // ICMP echo with the real ping.
    let out = t.clients[0]
        .ns
        .command("ping")
        .args(["-c", "2", "-W", "2", "-i", "0.2", &PRIVATE_HOST.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping through the data plane failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn http_exchange_through_the_data_plane_is_snatted() {
    http_exchange(TopologyOptions::default(), ReturnHook::Tc, false);
}

#[test]
fn http_exchange_with_a_tap_client_device_and_tc_return_path() {
    // Auto: the target is a veth, whose XDP sees partial checksums of local senders: TC.
    let opts = TopologyOptions {
        client_link: ClientLink::Tap,
        ..TopologyOptions::default()
    };
    http_exchange(opts, ReturnHook::Tc, false);
}

#[test]
fn http_exchange_with_the_xdp_return_path() {
    let opts = TopologyOptions {
        client_link: ClientLink::Tap,
        return_path: ReturnPath::Xdp,
        ..TopologyOptions::default()
    };
    http_exchange(opts, ReturnHook::XdpDriver, true);
}

#[test]
fn xdp_return_path_is_refused_for_a_tun() {
    require_root();
    let opts = TopologyOptions {
        return_path: ReturnPath::Xdp,
        ..TopologyOptions::default()
    };
    let err = Topology::new(opts)
        .err()
        .expect("XDP into a TUN must be refused");
    assert!(
        format!("{err:#}").contains("needs a TAP client device"),
        "{err:#}"
    );
}

#[test]
fn denied_destination_never_reaches_the_private_side() {
    require_root();
    let mut t = Topology::new(TopologyOptions::default()).unwrap();
    let client = t.clients[0].addr;
    t.dataplane
        .add_session(client, 8, &["eng".to_string()])
        .unwrap();
    t.dataplane
        .replace_policy(policy(&[("10.88.0.10/32", "eng")]))
        .unwrap();
    let mut events = t.dataplane.take_flow_events().unwrap();

    let (allowed, denied) = t
        .private
        .run(|| {
            let a = UdpSocket::bind((PRIVATE_HOST, 9999))?;
            let d = UdpSocket::bind((PRIVATE_HOST_2, 9999))?;
            a.set_read_timeout(Some(Duration::from_millis(300)))?;
            d.set_read_timeout(Some(Duration::from_millis(300)))?;
            Ok((a, d))
        })
        .unwrap();
    t.clients[0]
        .ns
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            for i in 0..20u8 {
                s.send_to(&[i], (PRIVATE_HOST_2, 9999))?;
                s.send_to(&[i], (PRIVATE_HOST, 9999))?;
            }
            Ok(())
        })
        .unwrap();
    let count = |s: &UdpSocket| {
        let mut n = 0;
        let mut buf = [0u8; 64];
        while s.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    };
    assert_eq!(
        count(&allowed),
        20,
        "the allowed destination must get every datagram"
    );
    assert_eq!(count(&denied), 0, "the denied destination must get nothing");
    let ev = events.wait(Duration::from_millis(300));
    let denied_events: Vec<_> = ev
        .iter()
        .filter(|e| e.kind == FlowEventKind::Denied)
        .collect();
    assert_eq!(denied_events.len(), 20, "{ev:?}");
    assert!(denied_events.iter().all(|e| e.session_id == 8
        && e.src == client
        && e.dst == PRIVATE_HOST_2
        && e.dst_port == 9999));
    assert_eq!(
        t.dataplane.global_counters().unwrap().get(Counter::Denied),
        20
    );
}

/// Runs a UDP request/response loop for `run_for`; returns send and answer times by sequence.
fn echo_loop(
    target: (Ipv4Addr, u16),
    run_for: Duration,
) -> Result<(HashMap<u64, Instant>, HashMap<u64, Instant>)> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(target)?;
    s.set_nonblocking(true)?;
    let (mut sent, mut answered) = (HashMap::new(), HashMap::new());
    let start = Instant::now();
    let mut seq = 0u64;
    let mut buf = [0u8; 64];
    while start.elapsed() < run_for {
        let _ = s.send(&seq.to_be_bytes());
        sent.insert(seq, Instant::now());
        seq += 1;
        let until = Instant::now() + Duration::from_millis(2);
        while Instant::now() < until {
            match s.recv(&mut buf) {
                Ok(8) => {
                    answered.insert(
                        u64::from_be_bytes(buf[..8].try_into().unwrap()),
                        Instant::now(),
                    );
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }
    Ok((sent, answered))
}

#[test]
fn revoking_a_rule_stops_a_running_flow_within_100ms_and_spares_others() {
    require_root();
    let mut t = Topology::new(TopologyOptions {
        clients: 2,
        ..TopologyOptions::default()
    })
    .unwrap();
    let (c1, c2) = (t.clients[0].addr, t.clients[1].addr);
    t.dataplane.add_session(c1, 1, &["a".to_string()]).unwrap();
    t.dataplane.add_session(c2, 2, &["b".to_string()]).unwrap();
    t.dataplane
        .replace_policy(policy(&[("10.88.0.0/24", "a"), ("10.88.0.0/24", "b")]))
        .unwrap();

    let echo = cvpn_tests::echo::UdpEcho::start(&t.private, PRIVATE_HOST, 7007).unwrap();
    let run_for = Duration::from_millis(1500);
    let f1 = t.clients[0]
        .ns
        .spawn(move || echo_loop((PRIVATE_HOST, 7007), run_for));
    let f2 = t.clients[1]
        .ns
        .spawn(move || echo_loop((PRIVATE_HOST, 7007), run_for));
    std::thread::sleep(Duration::from_millis(600));
    let before = Instant::now();
    t.dataplane
        .replace_policy(policy(&[("10.88.0.0/24", "b")]))
        .unwrap();
    let revoked = Instant::now();
    let (sent1, ans1) = f1.join().unwrap().unwrap();
    let (sent2, ans2) = f2.join().unwrap().unwrap();
    drop(echo);

    let answered_before = ans1.keys().filter(|s| sent1[s] < before).count();
    assert!(
        answered_before > 50,
        "client 1's flow was not running before the revoke ({answered_before} answers)"
    );
    let late: Vec<_> = ans1
        .keys()
        .filter(|s| sent1[s] > revoked + Duration::from_millis(100))
        .collect();
    assert!(
        late.is_empty(),
        "client 1 still got answers to {} requests sent more than 100 ms after the revoke",
        late.len()
    );
    let last_ok = ans1.keys().map(|s| sent1[s]).max().unwrap();
    println!(
        "revoke took {:?} to apply; client 1's last answered request was sent {:?} after the call returned",
        revoked - before,
        last_ok.saturating_duration_since(revoked)
    );
    let after2: Vec<_> = sent2
        .iter()
        .filter(|(_, t)| **t > revoked + Duration::from_millis(50))
        .map(|(s, _)| *s)
        .collect();
    let ok2 = after2.iter().filter(|s| ans2.contains_key(s)).count();
    assert!(
        after2.len() > 50 && ok2 * 10 >= after2.len() * 9,
        "client 2's flow must continue: {ok2} of {} answered",
        after2.len()
    );
}

#[test]
fn nat_entries_expire_and_tcp_close_shortens_them() {
    require_root();
    let timeouts = NatTimeouts {
        tcp: Duration::from_secs(3600),
        tcp_closing: Duration::from_millis(800),
        udp: Duration::from_millis(800),
        icmp: Duration::from_millis(800),
    };
    let mut t = Topology::new(TopologyOptions {
        nat_timeouts: timeouts,
        ..TopologyOptions::default()
    })
    .unwrap();
    let client = t.clients[0].addr;
    t.dataplane.add_session(client, 1, &[]).unwrap();
    t.dataplane
        .replace_policy(policy(&[("10.88.0.0/24", "*")]))
        .unwrap();

    // One UDP exchange and one complete TCP connection.
    let (udp, listener) = t
        .private
        .run(|| {
            Ok((
                UdpSocket::bind((PRIVATE_HOST, 5353))?,
                TcpListener::bind((PRIVATE_HOST, 8081))?,
            ))
        })
        .unwrap();
    let tcp_server = std::thread::spawn(move || http_server(listener, 1, 0));
    let (udp_port, _) = t.clients[0]
        .ns
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.send_to(b"q", (PRIVATE_HOST, 5353))?;
            let port = s.local_addr()?.port();
            let resp = http_get(PRIVATE_HOST, 8081, 0)?;
            Ok((port, resp))
        })
        .unwrap();
    tcp_server.join().unwrap().unwrap();
    let mut buf = [0u8; 8];
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (_, from) = udp.recv_from(&mut buf).unwrap();
    // The client's ephemeral port lies in its kernel's local port range, outside the SNAT range:
    // the SNAT port is one of the range (ports are kept only inside it).
    let (lo, hi) = t.dataplane.config().nat_port_range;
    assert!(
        (lo..=hi).contains(&from.port()) && from.port() != udp_port,
        "SNAT port {} (client port {udp_port}) outside {lo}-{hi}",
        from.port()
    );

    let entries = t.dataplane.nat_entries();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let tcp_entry = entries
        .iter()
        .find(|e| e.protocol == 6)
        .expect("a TCP entry");
    assert!(
        tcp_entry.closing,
        "FIN was seen: the entry must be marked closing"
    );
    assert!(entries
        .iter()
        .all(|e| e.snat.0 == GATEWAY_TARGET_ADDR && e.client.0 == client));

    assert_eq!(t.dataplane.expire_nat().expired, 0, "nothing is idle yet");
    std::thread::sleep(Duration::from_millis(1000));
    let report = t.dataplane.expire_nat();
    assert_eq!(report.expired, 2, "{report:?}");
    assert!(t.dataplane.nat_entries().is_empty());
}

/// Receives one datagram within `ms`, if any.
fn recv_within(s: &UdpSocket, ms: u64) -> Option<(Vec<u8>, SocketAddr)> {
    s.set_read_timeout(Some(Duration::from_millis(ms))).ok()?;
    let mut buf = [0u8; 256];
    s.recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (buf[..n].to_vec(), from))
}

/// Attack 3: a client whose source port equals the local port of one of the gateway host's own
/// sockets must not take over that socket's replies. The SNAT port comes from the SNAT range
/// (disjoint from the kernel's local port range), so the client is remapped and the host's
/// socket keeps its traffic.
#[test]
fn snat_never_takes_the_port_of_a_gateway_hosts_own_socket() {
    require_root();
    let mut t = Topology::new(TopologyOptions::default()).unwrap();
    let client = t.clients[0].addr;
    t.dataplane.add_session(client, 1, &[]).unwrap();
    t.dataplane
        .replace_policy(policy(&[("10.88.0.0/24", "*")]))
        .unwrap();
    let _echo = cvpn_tests::echo::UdpEcho::start(&t.private, PRIVATE_HOST, 7007).unwrap();

    // The gateway host's own UDP socket to the private host, on a kernel-chosen local port P.
    let host_sock = t
        .gateway
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect((PRIVATE_HOST, 7007))?;
            Ok(s)
        })
        .unwrap();
    let p = host_sock.local_addr().unwrap().port();
    host_sock.send(b"host-1").unwrap();
    assert_eq!(
        recv_within(&host_sock, 1000).map(|r| r.0),
        Some(b"host-1".to_vec()),
        "the host's socket works before any client flow"
    );

    // A client flow from the same port P to the same private host and port.
    let client_sock = t.clients[0]
        .ns
        .run(move || {
            let s = UdpSocket::bind(("0.0.0.0", p))?;
            s.connect((PRIVATE_HOST, 7007))?;
            Ok(s)
        })
        .unwrap();
    client_sock.send(b"client-1").unwrap();
    assert_eq!(
        recv_within(&client_sock, 1000).map(|r| r.0),
        Some(b"client-1".to_vec()),
        "the client flow works"
    );

    // The host's socket still gets its replies; the client never sees them.
    host_sock.send(b"host-2").unwrap();
    assert_eq!(
        recv_within(&host_sock, 1000).map(|r| r.0),
        Some(b"host-2".to_vec()),
        "the host's own socket lost its reply to the client flow"
    );
    while let Some((got, _)) = recv_within(&client_sock, 300) {
        assert_ne!(got, b"host-2", "the client received the host's reply");
    }
    let nat = t.dataplane.nat_entries();
    assert!(
        nat.iter().all(|e| e.snat.1 != p),
        "the SNAT port must not be the host's local port {p}: {nat:?}"
    );
}

/// Attack 3: a private host talking to a service of the gateway host must reach the service,
/// even when a client flow to that private host used the service's port as its source port.
#[test]
fn a_private_hosts_traffic_to_a_gateway_service_is_not_diverted_to_a_client() {
    require_root();
    const SERVICE: u16 = 4000;
    const PEER: u16 = 5000;
    let mut t = Topology::new(TopologyOptions::default()).unwrap();
    let client = t.clients[0].addr;
    t.dataplane.add_session(client, 1, &[]).unwrap();
    t.dataplane
        .replace_policy(policy(&[("10.88.0.0/24", "*")]))
        .unwrap();
    let service = t
        .gateway
        .run(|| Ok(UdpSocket::bind((GATEWAY_TARGET_ADDR, SERVICE))?))
        .unwrap();
    let peer = t
        .private
        .run(|| Ok(UdpSocket::bind((PRIVATE_HOST, PEER))?))
        .unwrap();
    // The client uses the service's port as its source port.
    let client_sock = t.clients[0]
        .ns
        .run(|| Ok(UdpSocket::bind(("0.0.0.0", SERVICE))?))
        .unwrap();
    client_sock.send_to(b"hello", (PRIVATE_HOST, PEER)).unwrap();
    let (_, from) = recv_within(&peer, 1000).expect("the client's datagram arrives");
    assert_eq!(from.ip(), std::net::IpAddr::V4(GATEWAY_TARGET_ADDR));

    // The private host now talks to the gateway's service from the same socket.
    peer.send_to(b"to-service", (GATEWAY_TARGET_ADDR, SERVICE))
        .unwrap();
    assert_eq!(
        recv_within(&service, 1000).map(|r| r.0),
        Some(b"to-service".to_vec()),
        "the gateway's service did not get the private host's datagram"
    );
    while let Some((got, _)) = recv_within(&client_sock, 300) {
        assert_ne!(
            got, b"to-service",
            "the datagram was diverted to the client"
        );
    }
}

/// Attack 3: the loader refuses an SNAT range that overlaps the kernel's local port range.
#[test]
fn snat_range_overlapping_the_local_port_range_is_refused() {
    require_root();
    let ns = cvpn_tests::Netns::new("lpr").unwrap();
    ns.command("sysctl")
        .args(["-qw", "net.ipv4.ip_local_port_range=1024 65000"])
        .output()
        .unwrap();
    let err = ns
        .run(|| {
            Ok(
                gateway::dataplane::DataPlane::load(gateway::dataplane::DataPlaneConfig::default())
                    .err()
                    .map(|e| e.to_string()),
            )
        })
        .unwrap()
        .expect("an SNAT range inside the local port range must be refused");
    assert!(err.contains("ip_local_port_range"), "{err}");
}

/// Attack 5: two endpoints (two data planes, two TUNs) share one target interface; return
/// traffic one endpoint does not know is passed on to the other's program, so both endpoints'
/// clients reach the private host at the same time.
#[test]
fn two_endpoints_on_one_target_interface_both_work() {
    require_root();
    let mut t = Topology::new(TopologyOptions {
        nat_port_range: (61000, 62999),
        ..TopologyOptions::default()
    })
    .unwrap();
    let mut second = t.second_endpoint("cvpn1", (63000, 65535)).unwrap();
    let c1 = t.clients[0].addr;
    let c2 = second.client.addr;
    t.dataplane.add_session(c1, 1, &[]).unwrap();
    second.dataplane.add_session(c2, 2, &[]).unwrap();
    let allow = policy(&[("10.88.0.0/24", "*")]);
    t.dataplane.replace_policy(allow.clone()).unwrap();
    second.dataplane.replace_policy(allow).unwrap();
    let _echo = cvpn_tests::echo::UdpEcho::start(&t.private, PRIVATE_HOST, 7007).unwrap();

    let run_for = Duration::from_millis(800);
    let f1 = t.clients[0]
        .ns
        .spawn(move || echo_loop((PRIVATE_HOST, 7007), run_for));
    let f2 = second
        .client
        .ns
        .spawn(move || echo_loop((PRIVATE_HOST, 7007), run_for));
    let (sent1, ans1) = f1.join().unwrap().unwrap();
    let (sent2, ans2) = f2.join().unwrap().unwrap();
    assert!(
        ans1.len() * 10 >= sent1.len() * 9,
        "endpoint 1: {} of {} answered",
        ans1.len(),
        sent1.len()
    );
    assert!(
        ans2.len() * 10 >= sent2.len() * 9,
        "endpoint 2: {} of {} answered",
        ans2.len(),
        sent2.len()
    );
    // A TCP exchange through the second endpoint as well.
    let listener = t
        .private
        .run(move || Ok(TcpListener::bind((PRIVATE_HOST, 8082))?))
        .unwrap();
    let server = std::thread::spawn(move || http_server(listener, 1, 100_000));
    let resp = second
        .client
        .ns
        .run(move || http_get(PRIVATE_HOST, 8082, 1000))
        .unwrap();
    server.join().unwrap().unwrap();
    assert!(resp.contains("uploaded=1000"), "{resp:.200}");
}
