//! Attacks on the endpoint from inside and around the tunnel (SECURITY.md lists each with the
//! test here that covers it). Stock `openvpn` 2.6 clients where a stock client can do it; the
//! raw client (`cvpn_tests::raw_client`, built on the gateway's own protocol types) where the
//! attacker must misbehave on purpose. Every test makes its own namespaces and daemon.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use cvpn_tests::{
    echo::UdpSink,
    gateway::{Daemon, EndpointNet},
    is_root,
    openvpn::{OpenVpnClient, Profile},
    pki::Pem,
    raw_client::{tls_config, udp_packet, RawClient},
    Netns,
};
use serde_json::Value;

const ENG_HOST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const OPS_HOST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 20);

fn require_root() {
    assert!(
        is_root(),
        "the endpoint attack tests need root: run `cargo xtask test` as root"
    );
}

/// Engineering reaches 10.88.0.10 only, operations 10.88.0.20 only.
fn rules() -> &'static str {
    "[[target_network]]\ninterface = \"tgt0\"\n\n\
     [[authorization_rule]]\ndestination = \"10.88.0.10/32\"\ngroup = \"eng\"\n\n\
     [[authorization_rule]]\ndestination = \"10.88.0.20/32\"\ngroup = \"ops\"\n"
}

fn endpoint(extra: &str) -> String {
    format!("client_cidr = \"10.77.0.0/22\"\ntransport = \"udp\"\nport = 443\nlisten = \"0.0.0.0\"\nsplit_tunnel = true\n{extra}")
}

fn profile(net: &EndpointNet, i: usize, client: Pem, extra: Vec<String>) -> Profile {
    Profile {
        remote: EndpointNet::server_addr(i),
        port: 443,
        proto: "udp".into(),
        ca_pem: net.ca.cert_pem(),
        client,
        data_ciphers: "AES-256-GCM".into(),
        tls_version_max: None,
        extra,
    }
}

/// The tunnel address a stock client got.
fn tunnel_addr(ns: &Netns) -> Ipv4Addr {
    let out = ns.ip("-4 -o addr show dev tun0").unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let addr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok());
    addr.unwrap_or_else(|| panic!("no tunnel address in {text:?}"))
}

/// Sends a hand-made IPv4 packet through the calling thread's namespace's routing, whatever
/// its source (a raw socket: the kernel takes the header as given).
fn send_raw_ipv4(packet: &[u8], dst: Ipv4Addr) -> Result<()> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes; the address
    // structure is fully initialised and its size passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        let n = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        anyhow::ensure!(n == packet.len() as isize, "raw send: {err}");
    }
    Ok(())
}

fn read_json_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {timeout:?}");
}

/// Attack 1 (forged inner source) and 6 (identity claims), with stock clients: alice (eng)
/// writes UDP datagrams into her own tunnel with bob's (ops) tunnel address as the source, to
/// bob's private host. None arrives; bob's own do. Alice's profile also claims the user name
/// "bob" (auth-user-pass): with certificate authentication that claim is not the user.
#[test]
fn a_forged_inner_source_never_reaches_another_clients_network() {
    require_root();
    let mut net = EndpointNet::new(2).unwrap();
    let cfg = net.write_config(&endpoint(""), rules()).unwrap();
    let daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    let sink = UdpSink::start(&net.private, OPS_HOST, 7000).unwrap();

    let creds = cvpn_tests::pki::write(&net.dir.0, "alice.pass", "bob\nanything\n").unwrap();
    let alice_pem = net.ca.client("alice", &["eng"]).unwrap();
    let bob_pem = net.ca.client("bob", &["ops"]).unwrap();
    let pa = profile(
        &net,
        0,
        alice_pem,
        vec![
            format!("auth-user-pass {}", creds.display()),
            "explicit-exit-notify 1".into(),
        ],
    );
    let pb = profile(&net, 1, bob_pem, vec![]);
    let mut alice = OpenVpnClient::start(&net.clients[0], &pa, &net.dir.0, "alice").unwrap();
    let mut bob = OpenVpnClient::start(&net.clients[1], &pb, &net.dir.0, "bob").unwrap();
    for c in [&mut alice, &mut bob] {
        c.wait_connected(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e:#}\ncvpn log:\n{}", daemon.log().join("\n")));
    }
    let alice_ip = tunnel_addr(&net.clients[0]);
    let bob_ip = tunnel_addr(&net.clients[1]);

    // Bob's own datagram arrives (so a missing forged one means it was stopped).
    net.clients[1]
        .run(move || {
            let s = UdpSocket::bind((bob_ip, 0))?;
            for _ in 0..3 {
                s.send_to(b"from bob", (OPS_HOST, 7000))?;
            }
            Ok(())
        })
        .unwrap();
    wait_until(
        "bob's datagram at the ops host",
        Duration::from_secs(5),
        || sink.count(b"from bob") > 0,
    );

    // Alice forges bob's source, and (for good measure) an address nobody has.
    let forged = udp_packet(bob_ip, 40000, OPS_HOST, 7000, b"forged by alice");
    let nobody = udp_packet(
        Ipv4Addr::new(10, 77, 3, 200),
        40000,
        OPS_HOST,
        7000,
        b"from nobody",
    );
    net.clients[0]
        .run(move || {
            for _ in 0..20 {
                send_raw_ipv4(&forged, OPS_HOST)?;
                send_raw_ipv4(&nobody, OPS_HOST)?;
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        sink.count(b"forged by alice"),
        0,
        "a packet alice forged with bob's address {bob_ip} reached bob's private host"
    );
    assert_eq!(sink.count(b"from nobody"), 0);
    let log = daemon.log().join("\n");
    assert!(
        log.contains("not the client's") && log.contains(&bob_ip.to_string()),
        "the forged packets are not reported:\n{log}"
    );
    // Alice's own traffic still works after her forgeries.
    net.clients[0]
        .run(move || {
            let s = UdpSocket::bind((alice_ip, 0))?;
            s.send_to(b"alice to ops", (OPS_HOST, 7000))?;
            Ok(())
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink.count(b"alice to ops"),
        0,
        "alice (eng) is not authorized for the ops host"
    );

    // Attack 6: the connection log names alice by her certificate, not by the user name her
    // client claimed.
    alice.stop();
    let path = net.dir.0.join("connection.log");
    wait_until(
        "alice's end in the connection log",
        Duration::from_secs(10),
        || {
            read_json_lines(&path).iter().any(|e| {
                e["common-name"] == "alice" && e["connection-log-type"] == "connection-reset"
            })
        },
    );
    for e in read_json_lines(&path)
        .iter()
        .filter(|e| e["common-name"] == "alice")
    {
        assert_eq!(e["username"], "NA", "a claimed user name was recorded: {e}");
    }
}

/// A raw client of client namespace `i`, through the key exchange.
fn raw_client(net: &EndpointNet, i: usize, pem: &Pem) -> Result<RawClient> {
    let tls = tls_config(&net.ca.cert_pem(), pem)?;
    let local: Ipv4Addr = format!("10.99.{i}.2").parse()?;
    let server: SocketAddr = format!("{}:443", EndpointNet::server_addr(i)).parse()?;
    let sock = net.clients[i].run(move || Ok(UdpSocket::bind((local, 0))?))?;
    RawClient::connect(sock, server, tls, Duration::from_secs(10)).context("raw client")
}

/// Attack 8: text without its NUL, and PUSH_REQUESTs the client never acknowledges the answers
/// to, each end the flooding session only; a stock client connected meanwhile keeps working.
#[test]
fn control_channel_floods_end_only_the_flooding_session() {
    require_root();
    let mut net = EndpointNet::new(3).unwrap();
    let cfg = net.write_config(&endpoint(""), rules()).unwrap();
    let daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    let sink = UdpSink::start(&net.private, ENG_HOST, 7000).unwrap();
    let alice_pem = net.ca.client("alice", &["eng"]).unwrap();
    let pa = profile(&net, 0, alice_pem, vec![]);
    let mut alice = OpenVpnClient::start(&net.clients[0], &pa, &net.dir.0, "alice").unwrap();
    alice.wait_connected(Duration::from_secs(20)).unwrap();
    let alice_ip = tunnel_addr(&net.clients[0]);

    // Mallory: 8 KiB of text with no NUL.
    let m1 = net.ca.client("mallory1", &["eng"]).unwrap();
    let mut mallory = raw_client(&net, 1, &m1).unwrap();
    mallory
        .wait_message("PUSH_REPLY", Duration::from_secs(10))
        .unwrap();
    mallory.send_control_text(&[b'A'; 8192]).unwrap();
    // Mallory 2: 500 PUSH_REQUESTs, never acknowledging an answer.
    let m2 = net.ca.client("mallory2", &["eng"]).unwrap();
    let mut mallory2 = raw_client(&net, 2, &m2).unwrap();
    mallory2
        .wait_message("PUSH_REPLY", Duration::from_secs(10))
        .unwrap();
    let flood: Vec<u8> = b"PUSH_REQUEST\0".repeat(500);
    mallory2.send_control_text(&flood).unwrap();

    let mut d = daemon;
    d.wait_for("control channel flood", Duration::from_secs(5))
        .unwrap();
    wait_until("both floods ended", Duration::from_secs(5), || {
        d.log()
            .iter()
            .filter(|l| l.contains("control channel flood"))
            .count()
            >= 2
    });
    // Alice never noticed.
    net.clients[0]
        .run(move || {
            let s = UdpSocket::bind((alice_ip, 0))?;
            s.send_to(b"alice still here", (ENG_HOST, 7000))?;
            Ok(())
        })
        .unwrap();
    wait_until("alice's datagram", Duration::from_secs(5), || {
        sink.count(b"alice still here") == 1
    });
    assert!(alice.exited().is_none(), "alice's client exited");
    let log = d.log().join("\n");
    assert!(
        log.contains("control message longer than") && log.contains("unacknowledged"),
        "{log}"
    );
}

/// Attack 8: handshakes cost a TLS state each, so one address may hold at most 32 unfinished
/// ones; the 33rd from there is not started, while a client from another address connects.
#[test]
fn pending_handshakes_are_capped_per_source_and_others_still_connect() {
    require_root();
    let mut net = EndpointNet::new(2).unwrap();
    let cfg = net.write_config(&endpoint(""), rules()).unwrap();
    let mut daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    let m = net.ca.client("mallory", &["eng"]).unwrap();
    let tls = tls_config(&net.ca.cert_pem(), &m).unwrap();
    let server: SocketAddr = format!("{}:443", EndpointNet::server_addr(0))
        .parse()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..32 {
        let sock = net.clients[0]
            .run(|| Ok(UdpSocket::bind("10.99.0.2:0")?))
            .unwrap();
        held.push(
            RawClient::start_handshake(sock, server, tls.clone(), Duration::from_secs(5)).unwrap(),
        );
    }
    daemon
        .wait_for("control channel opened", Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The 33rd from the same address gets nowhere...
    let sock = net.clients[0]
        .run(|| Ok(UdpSocket::bind("10.99.0.2:0")?))
        .unwrap();
    let refused = RawClient::connect(sock, server, tls.clone(), Duration::from_secs(3));
    assert!(
        refused.is_err(),
        "a 33rd handshake from one address was served"
    );
    assert!(daemon.log().iter().any(|l| l.contains("too many pending")));
    // ... while a stock client from another address connects.
    let bob = net.ca.client("bob", &["ops"]).unwrap();
    let pb = profile(&net, 1, bob, vec![]);
    let mut bob = OpenVpnClient::start(&net.clients[1], &pb, &net.dir.0, "bob").unwrap();
    bob.wait_connected(Duration::from_secs(20)).unwrap();
    // Finishing the held handshakes frees their places: the same address gets in again.
    for c in held.iter_mut().take(2) {
        c.finish_handshake(Duration::from_secs(10)).unwrap();
    }
    let sock = net.clients[0]
        .run(|| Ok(UdpSocket::bind("10.99.0.2:0")?))
        .unwrap();
    RawClient::connect(sock, server, tls, Duration::from_secs(10))
        .expect("a handshake after others finished");
}

/// Attack 7: a certificate that expires mid-session ends the session at its next
/// renegotiation (the failed renegotiation gets a short grace), not at the keepalive timeout.
#[test]
fn a_certificate_expiring_mid_session_ends_it_at_the_next_renegotiation() {
    require_root();
    let mut net = EndpointNet::new(1).unwrap();
    // The server renegotiates every 2 s; the keepalive would take 2 minutes.
    let cfg = net
        .write_config(
            &endpoint("reneg_sec = 2\nping = 10\nping_restart = 60\n"),
            rules(),
        )
        .unwrap();
    let daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    let valid_for = 8;
    let alice = net
        .ca
        .short_lived_client("alice", &["eng"], valid_for)
        .unwrap();
    let issued = Instant::now();
    let pa = profile(&net, 0, alice, vec![]);
    let mut client = OpenVpnClient::start(&net.clients[0], &pa, &net.dir.0, "alice").unwrap();
    client.wait_connected(Duration::from_secs(10)).unwrap();
    let path = net.dir.0.join("connection.log");
    // Renegotiations before the expiry succeed; after it, the session ends.
    let ended =
        |e: &Value| e["common-name"] == "alice" && e["connection-log-type"] == "connection-reset";
    wait_until("alice's session ended", Duration::from_secs(40), || {
        read_json_lines(&path).iter().any(ended)
    });
    let after_expiry = issued
        .elapsed()
        .saturating_sub(Duration::from_secs(valid_for as u64));
    println!("the session ended {after_expiry:?} after the certificate expired");
    assert!(
        issued.elapsed() >= Duration::from_secs(valid_for as u64),
        "the session ended before the certificate expired"
    );
    assert!(
        after_expiry < Duration::from_secs(20),
        "the session outlived its certificate by {after_expiry:?}"
    );
    let log = daemon.log().join("\n");
    assert!(log.contains("renegotiation failed"), "{log}");
}

/// Attack 7: in file mode, a changed CRL file and SIGHUP end the revoked client's running
/// session (and its renegotiations are checked against the new CRL); the other client stays.
#[test]
fn sighup_with_a_new_crl_file_ends_the_revoked_session_only() {
    require_root();
    let mut net = EndpointNet::new(2).unwrap();
    let cfg = net.write_config(&endpoint(""), rules()).unwrap();
    let mut daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    let alice = net.ca.client("alice", &["eng"]).unwrap();
    let alice_serial = net.ca.last_issued_serial();
    let bob = net.ca.client("bob", &["ops"]).unwrap();
    let mut a = OpenVpnClient::start(
        &net.clients[0],
        &profile(&net, 0, alice, vec![]),
        &net.dir.0,
        "alice",
    )
    .unwrap();
    let mut b = OpenVpnClient::start(
        &net.clients[1],
        &profile(&net, 1, bob, vec![]),
        &net.dir.0,
        "bob",
    )
    .unwrap();
    a.wait_connected(Duration::from_secs(20)).unwrap();
    b.wait_connected(Duration::from_secs(20)).unwrap();
    net.ca.revoke(alice_serial);
    cvpn_tests::pki::write(&net.dir.0, "crl.pem", &net.ca.crl_pem().unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    daemon
        .wait_for("certificate-revoked", Duration::from_secs(5))
        .unwrap();
    a.wait_for("Halt command was pushed", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", a.log().join("\n")));
    std::thread::sleep(Duration::from_millis(500));
    assert!(b.exited().is_none(), "bob's session must stay");
    let ping = net.clients[1]
        .command("ping")
        .args(["-c", "1", "-W", "2", "10.88.0.20"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "bob lost his tunnel");
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Attack 2: under the file limit a service gets by default (1024), one address opens 1100
/// idle TCP connections and four more that send hard resets without ever reading. The daemon's
/// memory stays bounded and a stock client from another address connects meanwhile.
#[test]
fn tcp_connection_floods_stay_bounded_and_others_connect() {
    require_root();
    // The attacker (this process) needs more descriptors than the daemon gets.
    // SAFETY: setrlimit with a valid struct.
    unsafe {
        let lim = libc::rlimit {
            rlim_cur: 8192,
            rlim_max: 8192,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let mut net = EndpointNet::new(2).unwrap();
    let cfg = net
        .write_config(
            "client_cidr = \"10.77.0.0/22\"\ntransport = \"tcp\"\nport = 443\nlisten = \"0.0.0.0\"\nsplit_tunnel = true\n",
            rules(),
        )
        .unwrap();
    let daemon = Daemon::start_with_file_limit(&net.gateway, &cfg, 1024).unwrap();
    let before = rss(daemon.pid());
    let server: SocketAddr = "10.99.0.1:443".parse().unwrap();

    let reset = {
        use gateway::protocol::packet::{ControlOpcode, ControlPacket, KeyId, SessionId};
        let p = gateway::protocol::packet::Packet::Control(ControlPacket {
            opcode: ControlOpcode::HardResetClientV2,
            key_id: KeyId::default(),
            session_id: SessionId([9; 8]),
            acks: None,
            packet_id: 0,
            payload: vec![],
        })
        .to_vec();
        let mut framed = Vec::new();
        gateway::protocol::packet::frame_into(&p, &mut framed).unwrap();
        framed.repeat(2000)
    };
    let flood_for = Duration::from_secs(12);
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let burst = reset.clone();
            net.clients[0].spawn(move || {
                let start = Instant::now();
                let (mut sent, mut connects) = (0usize, 0usize);
                while start.elapsed() < flood_for {
                    let Ok(mut s) =
                        std::net::TcpStream::connect_timeout(&server, Duration::from_millis(500))
                    else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    connects += 1;
                    s.set_write_timeout(Some(Duration::from_millis(200)))?;
                    while start.elapsed() < flood_for {
                        use std::io::Write;
                        match s.write(&burst) {
                            Ok(n) => sent += n,
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                }
                Ok((sent, connects))
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    // Then 1100 idle connections (the daemon closes what is over its bounds).
    let idle = net.clients[0]
        .run(move || {
            let mut held = Vec::new();
            for _ in 0..1100 {
                if let Ok(s) =
                    std::net::TcpStream::connect_timeout(&server, Duration::from_millis(500))
                {
                    held.push(s);
                }
            }
            Ok(held)
        })
        .unwrap();
    // Meanwhile a stock client from another address connects and works.
    let bob = net.ca.client("bob", &["ops"]).unwrap();
    let mut p = profile(&net, 1, bob, vec![]);
    p.proto = "tcp".into();
    let started = Instant::now();
    let mut client = OpenVpnClient::start(&net.clients[1], &p, &net.dir.0, "bob").unwrap();
    client
        .wait_connected(Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\ncvpn log tail:\n{}",
                daemon
                    .log()
                    .iter()
                    .rev()
                    .take(30)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    println!(
        "bob connected over TCP in {:?} during the flood",
        started.elapsed()
    );
    let mut peak = 0;
    let mut sent = 0;
    for f in flooders {
        while !f.is_finished() {
            peak = peak.max(rss(daemon.pid()));
            std::thread::sleep(Duration::from_millis(200));
        }
        let (bytes, connects) = f
            .join()
            .map_err(|_| anyhow::anyhow!("flooder panicked"))
            .and_then(|r| r)
            .unwrap();
        println!("flooder: {} kB in {connects} connection(s)", bytes >> 10);
        sent += bytes;
    }
    peak = peak.max(rss(daemon.pid()));
    let grew = peak.saturating_sub(before);
    println!(
        "{} idle connections opened, {} MB of hard resets sent; daemon RSS {} MB -> peak {} MB",
        idle.len(),
        sent >> 20,
        before >> 20,
        peak >> 20
    );
    assert!(sent > 1 << 20, "the flood did not get going ({sent} bytes)");
    let log = daemon.log();
    let dropped = log
        .iter()
        .filter(|l| l.contains("TCP packet dropped"))
        .count();
    println!("{dropped} answers dropped at full queues");
    assert!(grew < 64 << 20, "the daemon grew by {} MB", grew >> 20);
    let ping = net.clients[1]
        .command("ping")
        .args(["-c", "1", "-W", "2", "10.88.0.20"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "bob's tunnel does not carry traffic");
    assert!(daemon.log().iter().any(|l| l.contains("closed at once")));
    drop(idle);
}
