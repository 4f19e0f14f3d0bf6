//! Debian's stock `openvpn` 2.6 client against `cvpn serve`, each test in its own namespaces:
//! connect with a plain client profile, reach the private host through the kernel data plane
//! (which SNATs), be refused where no rule allows, and be refused with bad certificates.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;
use cvpn_tests::{
    gateway::{Daemon, EndpointNet},
    http, is_root,
    openvpn::{OpenVpnClient, Profile},
    pki::Pem,
};

const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const DENIED: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 20);
const ALL_CIPHERS: &str = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305";

fn require_root() {
    assert!(
        is_root(),
        "the interop tests need root: run `cargo xtask test` as root"
    );
}

fn rules() -> &'static str {
    "[[target_network]]\ninterface = \"tgt0\"\n\n\
     [[authorization_rule]]\ndestination = \"10.88.0.10/32\"\ngroup = \"engineering\"\n"
}

fn endpoint(transport: &str, port: u16) -> String {
    format!("client_cidr = \"10.77.0.0/22\"\ntransport = \"{transport}\"\nport = {port}\nlisten = \"0.0.0.0\"\nsplit_tunnel = true\n")
}

fn profile(net: &EndpointNet, client: Pem, proto: &str, port: u16, ciphers: &str) -> Profile {
    Profile {
        remote: EndpointNet::server_addr(0),
        port,
        proto: proto.into(),
        ca_pem: net.ca.cert_pem(),
        client,
        data_ciphers: ciphers.into(),
        tls_version_max: None,
        extra: vec![],
    }
}

fn http_request(host: Ipv4Addr, line: &str, upload: usize) -> Result<String> {
    http::request(host, 8080, line, upload, Duration::from_secs(5))
}

fn http_get(host: Ipv4Addr, timeout: Duration) -> Result<String> {
    http::request(host, 8080, "GET /", 0, timeout)
}

/// Connects one client and checks everything a connected client should see.
fn connect_and_use(transport: &str, port: u16, ciphers: &str, tls_max: Option<&str>) {
    require_root();
    let mut net = EndpointNet::new(1).unwrap();
    let cfg = net
        .write_config(&endpoint(transport, port), rules())
        .unwrap();
    let _daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    http::spawn_server(&net.private, PRIVATE, 8080).unwrap();
    http::spawn_server(&net.private, DENIED, 8080).unwrap();

    let alice = net.ca.client("alice", &["engineering"]).unwrap();
    let mut p = profile(&net, alice, transport, port, ciphers);
    p.tls_version_max = tls_max.map(str::to_string);
    let mut client = OpenVpnClient::start(&net.clients[0], &p, &net.dir.0, "alice").unwrap();
    let took = client
        .wait_connected(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\ncvpn log:\n{}", _daemon.log().join("\n")));
    println!("connected in {took:?} ({transport}/{port}, {ciphers}, tls max {tls_max:?})");
    let log = client.log().join("\n");
    let first_cipher = ciphers.split(':').next().unwrap();
    assert!(
        log.contains(first_cipher),
        "data channel cipher {first_cipher} not in the client log:\n{log}"
    );
    if let Some(v) = tls_max {
        assert!(
            log.contains(&format!("TLSv{v}")),
            "TLS version not {v}:\n{log}"
        );
    }

    let resp = net.clients[0]
        .run(|| http_get(PRIVATE, Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("{e:#}\ncvpn log:\n{}", _daemon.log().join("\n")));
    assert!(
        resp.contains("peer=10.88.0.1:"),
        "the private host must see the SNAT address: {resp}"
    );
    // Bulk both ways: 4 MB down, 2 MB up.
    let (down, up) = net.clients[0]
        .run(|| {
            let down = http_request(PRIVATE, "GET /big", 0)?;
            let up = http_request(PRIVATE, "POST /", 2 << 20)?;
            Ok((down, up))
        })
        .unwrap_or_else(|e| panic!("{e:#}\ncvpn log:\n{}", _daemon.log().join("\n")));
    let body = down.len() - down.find("\r\n\r\n").unwrap() - 4;
    assert!(body > 4 << 20, "download cut short: {body} bytes");
    assert!(
        up.contains(&format!("uploaded={}", 2 << 20)),
        "upload: {up:.200}"
    );
    let ping = net.clients[0]
        .command("ping")
        .args(["-c", "2", "-W", "2", "-i", "0.2", "10.88.0.10"])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping through the tunnel: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let denied = net.clients[0].run(|| http_get(DENIED, Duration::from_millis(1500)));
    assert!(
        denied.is_err(),
        "10.88.0.20 has no authorization rule and must be unreachable"
    );
    // The denied attempt is in the flow log, with the connection id and the destination.
    std::thread::sleep(Duration::from_millis(200));
    let flows = std::fs::read_to_string(net.dir.0.join("flow.log")).unwrap_or_default();
    let denied: Vec<serde_json::Value> = flows
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["flow-log-type"] == "denied" && e["destination-ip"] == "10.88.0.20")
        .collect();
    assert!(!denied.is_empty(), "no denied flow in:\n{flows}");
    assert!(
        denied[0]["connection-id"]
            .as_str()
            .unwrap_or("")
            .starts_with("cvpn-connection-"),
        "{}",
        denied[0]
    );
}

#[test]
fn udp_443_aes256gcm_tls13() {
    connect_and_use("udp", 443, ALL_CIPHERS, None);
}

#[test]
fn udp_1194_chacha20_tls12() {
    connect_and_use("udp", 1194, "CHACHA20-POLY1305", Some("1.2"));
}

#[test]
fn udp_443_aes128gcm() {
    connect_and_use("udp", 443, "AES-128-GCM", None);
}

#[test]
fn bad_certificates_are_refused() {
    require_root();
    let mut net = EndpointNet::new(1).unwrap();
    let _revoked = net.ca.revoked_client("mallory").unwrap();
    let cfg = net.write_config(&endpoint("udp", 443), rules()).unwrap();
    let mut daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    let revoked = _revoked;
    let expired = net.ca.expired_client("old").unwrap();
    let mut other = cvpn_tests::pki::Ca::new("another CA").unwrap();
    let foreign = other.client("stranger", &[]).unwrap();
    for (name, pem, reason) in [
        ("revoked", revoked, "certificate-revoked"),
        ("expired", expired, "certificate-expired"),
        ("foreign", foreign, "certificate-unknown-ca"),
    ] {
        let mut p = profile(&net, pem, "udp", 443, ALL_CIPHERS);
        p.extra.push("connect-retry-max 1".into());
        let mut c = OpenVpnClient::start(&net.clients[0], &p, &net.dir.0, name).unwrap();
        daemon.wait_for(reason, Duration::from_secs(15)).unwrap();
        assert!(
            c.wait_connected(Duration::from_secs(2)).is_err(),
            "{name} certificate must not connect"
        );
        c.stop();
    }
    // Failed certificate handshakes are in the connection log too (unlike AWS), with a reason.
    let lines = std::fs::read_to_string(net.dir.0.join("connection.log")).unwrap();
    for reason in [
        "certificate-revoked",
        "certificate-expired",
        "certificate-unknown-ca",
    ] {
        let entry: serde_json::Value = lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["connection-attempt-failure-reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} entry in:\n{lines}"));
        assert_eq!(entry["connection-attempt-status"], "failed");
        assert_eq!(entry["connection-log-type"], "connection-attempt");
    }
}

#[test]
fn tcp_443_and_tcp_1194() {
    connect_and_use("tcp", 443, ALL_CIPHERS, None);
    connect_and_use("tcp", 1194, "AES-128-GCM", Some("1.2"));
}

/// Connects `alice` to an endpoint with the [endpoint] keys `endpoint_keys` (see `endpoint`),
/// with `client_extra` lines in her profile; returns the net, daemon and client, with the
/// HTTP server running on the private host.
fn connected_with(
    endpoint_keys: &str,
    rsa_server: bool,
    client_extra: &[&str],
) -> (EndpointNet, Daemon, OpenVpnClient) {
    require_root();
    let mut net = EndpointNet::new(1).unwrap();
    net.use_rsa_server_key = rsa_server;
    let cfg = net.write_config(endpoint_keys, rules()).unwrap();
    let daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    http::spawn_server(&net.private, PRIVATE, 8080).unwrap();
    let alice = net.ca.client("alice", &["engineering"]).unwrap();
    let mut p = profile(&net, alice, "udp", 443, ALL_CIPHERS);
    p.extra.extend(client_extra.iter().map(|s| s.to_string()));
    let mut client = OpenVpnClient::start(&net.clients[0], &p, &net.dir.0, "alice").unwrap();
    client
        .wait_connected(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\ncvpn log:\n{}", daemon.log().join("\n")));
    (net, daemon, client)
}

fn connected(client_extra: &[&str]) -> (EndpointNet, Daemon, OpenVpnClient) {
    connected_with(&endpoint("udp", 443), false, client_extra)
}

#[test]
fn renegotiation_every_few_seconds_does_not_stall_traffic() {
    let (net, daemon, client) = connected(&["reneg-sec 2"]);
    // 9 s of traffic: pings every 50 ms and an HTTP request every 100 ms.
    let pinger = http::spawn_ping(&net.clients[0], PRIVATE, 180).unwrap();
    let requests = net.clients[0].run(|| {
        let mut failures = 0;
        for _ in 0..40 {
            let ok = http_get(PRIVATE, Duration::from_secs(2))
                .map(|r| r.contains("peer="))
                .unwrap_or(false);
            if !ok {
                failures += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(failures)
    });
    let summary = pinger.join().unwrap();
    let renegs = daemon
        .log()
        .iter()
        .filter(|l| l.contains("renegotiated"))
        .count();
    assert!(
        renegs >= 2,
        "expected renegotiations every 2 s, saw {renegs}; client log:\n{}\ncvpn log:\n{}",
        client.log().join("\n"),
        daemon.log().join("\n")
    );
    let received = http::ping_received(&summary);
    assert!(
        received >= 175,
        "pings lost during renegotiation: {summary}"
    );
    assert_eq!(
        requests.unwrap(),
        0,
        "HTTP requests failed during renegotiation"
    );
}

#[test]
fn disconnect_frees_the_address_and_the_data_plane_session() {
    let (net, mut daemon, mut client) = connected(&["explicit-exit-notify 1"]);
    daemon
        .wait_for("client_ip=10.77.0.2", Duration::from_secs(5))
        .unwrap();
    let ping = net.clients[0]
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", "10.88.0.10"])
        .output()
        .unwrap();
    assert!(ping.status.success());
    client.stop();
    daemon
        .wait_for("session ended", Duration::from_secs(5))
        .unwrap();
    let log = daemon.log().join("\n");
    assert!(
        log.contains("client-exit"),
        "the client's exit notification must end the session:\n{log}"
    );
    let ended = daemon
        .log()
        .into_iter()
        .find(|l| l.contains("session ended"))
        .unwrap();
    assert!(ended.contains("client_ip=10.77.0.2"), "{ended}");
    // The final counters were read from the data plane as the session was removed from it.
    assert!(
        ended.contains("from_client_packets"),
        "final counters must be logged: {ended}"
    );

    // The connection log: the attempt, then the reset with the session's counters, with AWS's
    // field names.
    let lines = std::fs::read_to_string(net.dir.0.join("connection.log")).unwrap();
    let entries: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "{lines}");
    let (attempt, reset) = (&entries[0], &entries[1]);
    assert_eq!(attempt["connection-log-type"], "connection-attempt");
    assert_eq!(attempt["connection-attempt-status"], "successful");
    assert_eq!(attempt["common-name"], "alice");
    assert_eq!(attempt["client-ip"], "10.77.0.2");
    assert_eq!(attempt["device-ip"], "10.99.0.2");
    assert_eq!(attempt["transport-protocol"], "udp");
    assert!(attempt["client-vpn-endpoint-id"]
        .as_str()
        .unwrap()
        .starts_with("cvpn-endpoint-"));
    assert!(attempt["connection-id"]
        .as_str()
        .unwrap()
        .starts_with("cvpn-connection-"));
    assert_eq!(reset["connection-log-type"], "connection-reset");
    assert_eq!(reset["connection-id"], attempt["connection-id"]);
    assert_ne!(reset["connection-end-time"], "NA");
    let packets: u64 = reset["ingress-packets"].as_str().unwrap().parse().unwrap();
    let egress: u64 = reset["egress-packets"].as_str().unwrap().parse().unwrap();
    assert!(
        packets >= 3 && egress >= 3,
        "three pings each way must be counted: {reset}"
    );
    drop(net);
}

#[test]
fn fifty_clients_at_once_each_reach_the_private_host() {
    require_root();
    const N: usize = 50;
    let mut net = EndpointNet::new(N).unwrap();
    let cfg = net.write_config(&endpoint("udp", 443), rules()).unwrap();
    let daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    http::spawn_server(&net.private, PRIVATE, 8080).unwrap();
    let mut clients = Vec::new();
    for i in 0..N {
        let pem = net
            .ca
            .client(&format!("user{i}"), &["engineering"])
            .unwrap();
        let mut p = profile(&net, pem, "udp", 443, ALL_CIPHERS);
        p.remote = EndpointNet::server_addr(i);
        clients.push(
            OpenVpnClient::start(&net.clients[i], &p, &net.dir.0, &format!("user{i}")).unwrap(),
        );
    }
    let started = std::time::Instant::now();
    for c in clients.iter_mut() {
        c.wait_connected(Duration::from_secs(60))
            .unwrap_or_else(|e| {
                let tail: Vec<String> = daemon.log().iter().rev().take(40).cloned().collect();
                panic!("{e:#}\ncvpn log tail:\n{}", tail.join("\n"))
            });
    }
    println!("{N} clients connected within {:?}", started.elapsed());
    let mut addresses = std::collections::HashSet::new();
    for (i, ns) in net.clients.iter().enumerate() {
        let resp = ns
            .run(|| http_get(PRIVATE, Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("client {i}: {e:#}"));
        assert!(resp.contains("peer=10.88.0.1:"), "client {i}: {resp}");
        let out = ns.ip("-4 -o addr show dev tun0").unwrap();
        addresses.insert(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(3)
                .unwrap_or("")
                .to_string(),
        );
    }
    assert_eq!(
        addresses.len(),
        N,
        "every client must get its own address: {addresses:?}"
    );
}

#[test]
fn garbage_truncated_and_replayed_packets_disturb_nobody() {
    let (net, mut daemon, _client) = connected(&[]);
    let pinger = http::spawn_ping(&net.clients[0], PRIVATE, 60).unwrap();
    // From the client's namespace, other sockets: random bytes, every opcode with truncated
    // bodies, data packets for the live peer id 0 with random ciphertext, and control packets
    // for sessions that do not exist.
    let sent = net.clients[0]
        .run(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            let server = (EndpointNet::server_addr(0).parse::<Ipv4Addr>()?, 443);
            let mut x: u64 = 0x9e3779b97f4a7c15;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut sent = 0;
            for i in 0..3000u32 {
                let len = (next() % 1500) as usize;
                let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                match i % 4 {
                    0 => {}
                    1 if !buf.is_empty() => buf[0] = ((i as u8 % 12) << 3) | (i as u8 & 7),
                    2 if buf.len() >= 4 => buf[..4].copy_from_slice(&[9 << 3, 0, 0, 0]), // DATA_V2, peer 0
                    3 if !buf.is_empty() => {
                        buf[0] = 4 << 3; // P_CONTROL_V1 for an unknown session
                        buf.truncate(14);
                    }
                    _ => {}
                }
                if s.send_to(&buf, server).is_ok() {
                    sent += 1;
                }
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Ok(sent)
        })
        .unwrap();
    let summary = pinger.join().unwrap();
    let received = http::ping_received(&summary);
    assert!(sent > 2900, "sent {sent}");
    assert!(
        received >= 58,
        "the tunnel was disturbed by garbage: {summary}"
    );
    let resp = net.clients[0]
        .run(|| http_get(PRIVATE, Duration::from_secs(5)))
        .unwrap();
    assert!(resp.contains("peer=10.88.0.1:"));
    assert!(
        daemon.stop().is_some_and(|s| s.success()),
        "the daemon must survive and exit cleanly on SIGTERM:\n{}",
        daemon.log().join("\n")
    );
}

#[test]
fn client_changing_address_keeps_its_session() {
    let (net, mut daemon, _client) = connected(&[]);
    let pinger = http::spawn_ping(&net.clients[0], PRIVATE, 60).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // The client's NAT rebinds: from now on its packets leave from another address (a SNAT
    // rule in the client's namespace, applied once the old mapping is flushed).
    net.clients[0].ip("addr add 10.99.0.3/24 dev c0").unwrap();
    let sh = |args: &[&str]| {
        let out = net.clients[0]
            .command(args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "c0",
        "-p",
        "udp",
        "--dport",
        "443",
        "-j",
        "SNAT",
        "--to-source",
        "10.99.0.3",
    ]);
    sh(&["conntrack", "-F"]);
    let summary = pinger.join().unwrap();
    daemon
        .wait_for("client address changed", Duration::from_secs(5))
        .unwrap();
    let received = http::ping_received(&summary);
    assert!(
        received >= 55,
        "the session must survive the address change: {summary}"
    );
    assert!(!daemon.log().iter().any(|l| l.contains("session ended")));
}

#[test]
fn full_tunnel_and_rsa_server_certificate() {
    let full = endpoint("udp", 443).replace("split_tunnel = true", "split_tunnel = false");
    let (net, _daemon, client) = connected_with(&full, true, &[]);
    let log = client.log().join("\n");
    assert!(
        log.contains("redirect-gateway"),
        "full tunnel pushes redirect-gateway:\n{log}"
    );
    assert!(
        log.contains("RSA") || log.contains("rsaEncryption") || log.contains("2048 bit"),
        "server key must be RSA:\n{log}"
    );
    let resp = net.clients[0]
        .run(|| http_get(PRIVATE, Duration::from_secs(5)))
        .unwrap();
    assert!(resp.contains("peer=10.88.0.1:"), "{resp}");
}

#[test]
fn legacy_tls_prf_key_derivation() {
    let keys = format!("{}key_derivation = \"tls-prf\"\n", endpoint("udp", 443));
    let (net, _daemon, client) = connected_with(&keys, false, &[]);
    let log = client.log().join("\n");
    assert!(
        !log.contains("tls-ekm"),
        "the push reply must not announce TLS-EKM:\n{log}"
    );
    // Traffic flows only if both ends derived the same keys.
    let resp = net.clients[0]
        .run(|| http_request(PRIVATE, "GET /big", 0))
        .unwrap();
    assert!(
        resp.contains("peer=10.88.0.1:") && resp.len() > http::BIG,
        "{:.200}",
        resp
    );
}

#[test]
fn a_silent_client_is_dropped_after_the_keepalive_timeout() {
    let keys = format!("{}ping = 1\nping_restart = 2\n", endpoint("udp", 443));
    let (_net, mut daemon, client) = connected_with(&keys, false, &[]);
    daemon
        .wait_for("client_ip=10.77.0.2", Duration::from_secs(5))
        .unwrap();
    // The client vanishes without a word (power loss): SIGKILL, no exit notification.
    let pid = nix::unistd::Pid::from_raw(client.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let started = std::time::Instant::now();
    daemon
        .wait_for("keepalive-timeout", Duration::from_secs(10))
        .unwrap();
    daemon
        .wait_for("session ended", Duration::from_secs(2))
        .unwrap();
    println!("dead peer dropped after {:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "dropped before 2 x ping_restart"
    );
}

/// UDP request/response loop from a namespace: send times of every request and the
/// requests answered.

#[test]
fn sighup_revokes_a_rule_live_within_100ms_and_spares_other_sessions() {
    require_root();
    let mut net = EndpointNet::new(2).unwrap();
    let both = "[[target_network]]\ninterface = \"tgt0\"\n\n\
                [[authorization_rule]]\ndestination = \"10.88.0.0/24\"\ngroup = \"engineering\"\n\n\
                [[authorization_rule]]\ndestination = \"10.88.0.0/24\"\ngroup = \"finance\"\n";
    let cfg = net.write_config(&endpoint("udp", 443), both).unwrap();
    let mut daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    let mut clients = Vec::new();
    for (i, (user, group)) in [("alice", "engineering"), ("bob", "finance")]
        .into_iter()
        .enumerate()
    {
        let pem = net.ca.client(user, &[group]).unwrap();
        let mut p = profile(&net, pem, "udp", 443, ALL_CIPHERS);
        p.remote = EndpointNet::server_addr(i);
        let mut c = OpenVpnClient::start(&net.clients[i], &p, &net.dir.0, user).unwrap();
        c.wait_connected(Duration::from_secs(20)).unwrap();
        clients.push(c);
    }
    // A UDP echo server on the private host.
    let echo = cvpn_tests::echo::UdpEcho::start(&net.private, PRIVATE, 7007).unwrap();
    let run_for = Duration::from_millis(2500);
    let alice =
        net.clients[0].spawn(move || cvpn_tests::echo::probe_loop((PRIVATE, 7007), run_for));
    let bob = net.clients[1].spawn(move || cvpn_tests::echo::probe_loop((PRIVATE, 7007), run_for));
    std::thread::sleep(Duration::from_millis(800));
    // Engineering loses its rule: rewrite the file, SIGHUP.
    let only_finance = both.replace(
        "[[authorization_rule]]\ndestination = \"10.88.0.0/24\"\ngroup = \"engineering\"\n\n",
        "",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(both, &only_finance);
    std::fs::write(&cfg, text).unwrap();
    let hup = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let alice = alice.join().unwrap().unwrap();
    let bob = bob.join().unwrap().unwrap();
    drop(echo);
    daemon
        .wait_for("policy replaced", Duration::from_secs(2))
        .unwrap();

    cvpn_tests::echo::assert_cut_and_spared(&alice, &bob, hup, "SIGHUP");
    assert!(
        !daemon.log().iter().any(|l| l.contains("session ended")),
        "no session may be reset"
    );
}

#[test]
fn server_initiated_renegotiation_keeps_traffic_flowing() {
    let keys = format!("{}reneg_sec = 2\n", endpoint("udp", 443));
    let (net, daemon, _client) = connected_with(&keys, false, &[]);
    let out = net.clients[0]
        .command("ping")
        .args(["-q", "-c", "140", "-i", "0.05", "-W", "1", "10.88.0.10"])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    let log = daemon.log();
    let started = log
        .iter()
        .filter(|l| l.contains("key lifetime reached"))
        .count();
    let done = log.iter().filter(|l| l.contains("renegotiated")).count();
    assert!(
        started >= 2 && done >= 2,
        "the server must renegotiate every 2 s: started {started}, finished {done}\n{}",
        log.join("\n")
    );
    assert!(
        http::ping_received(&summary) >= 136,
        "traffic stalled during renegotiation: {summary}"
    );
}

/// `gateway::server::Server` run in-process in the gateway namespace with a session timeout of
/// a few seconds (the daemon sets it from the endpoint's `session-timeout-hours`).
fn serve_with_session_timeout(
    net: &mut EndpointNet,
    timeout: Duration,
    disconnect: bool,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<()>>,
) {
    use gateway::dataplane::policy::{Access, AuthorizationRule, Policy};
    let server = net.ca.server("vpn.example.test").unwrap();
    let tls = gateway::protocol::tls::TlsMaterial::from_pem(
        &server.cert,
        &server.key,
        &net.ca.cert_pem(),
        None,
    )
    .unwrap();
    let settings = gateway::server::ServerSettings {
        listen: "0.0.0.0:443".parse().unwrap(),
        transport: gateway::server::Transport::Udp,
        client_cidr: "10.77.0.0/22".parse().unwrap(),
        tls,
        split_tunnel: true,
        dns_servers: vec![],
        targets: vec![gateway::dataplane::TargetSpec {
            id: 1,
            interface: "tgt0".into(),
            snat_addr: None,
            egress: None,
        }],
        policy: Policy {
            rules: vec![AuthorizationRule {
                destination: "10.88.0.0/24".parse().unwrap(),
                access: Access::AllGroups,
                ports: None,
            }],
            routes: vec![],
        },
        tun_name: "cvpn0".into(),
        ciphers: gateway::server::ServerSettings::default_ciphers(),
        force_tls_prf: false,
        endpoint_id: "cvpn-endpoint-0123456789abcdef0".into(),
        log_dir: None,
        log_options: Default::default(),
        ping: 10,
        ping_restart: 60,
        reneg_after: None,
        shared_logs: None,
        recorder: None,
        counters_every: Duration::from_secs(5),
        print_log_lines: false,
        live: gateway::server::LiveSettings {
            session_timeout: Some(timeout),
            disconnect_on_session_timeout: disconnect,
            ..Default::default()
        },
        authenticator: None,
        sso: None,
        nat_port_range: None,
        address_blocks: None,
        metrics: None,
        offloads: true,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = net.gateway.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let server = gateway::server::Server::new(settings)?;
            server
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        })
    });
    (stop, thread)
}

#[test]
fn the_session_timeout_restarts_or_halts_the_client() {
    require_root();
    for disconnect in [false, true] {
        let mut net = EndpointNet::new(1).unwrap();
        let (stop, server) =
            serve_with_session_timeout(&mut net, Duration::from_secs(3), disconnect);
        let pem = net.ca.client("alice", &["engineering"]).unwrap();
        let p = profile(&net, pem, "udp", 443, ALL_CIPHERS);
        let mut c = OpenVpnClient::start(&net.clients[0], &p, &net.dir.0, "alice").unwrap();
        let started = std::time::Instant::now();
        c.wait_connected(Duration::from_secs(20)).unwrap();
        if disconnect {
            // Told to exit: the user reconnects when they choose.
            c.wait_for("Halt command was pushed by server", Duration::from_secs(6))
                .unwrap();
        } else {
            // Told to reconnect: it does at once and authenticates again.
            c.wait_for("server-pushed-connection-reset", Duration::from_secs(6))
                .unwrap();
            let start = std::time::Instant::now();
            while c
                .log()
                .iter()
                .filter(|l| l.contains("Initialization Sequence Completed"))
                .count()
                < 2
            {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no reconnect: {:?}",
                    c.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(3),
            "not before the timeout ({took:?})"
        );
        c.stop();
        let _ = stop.send(());
        server.join().unwrap().unwrap();
    }
}
