//! The data path under load (issue 13): large transfers both ways with the TUN offloads on and
//! off, several clients at once, TCP and UDP mixed, packets at and around the MTU, a path-MTU
//! change under traffic, and reordering and loss in the tunnel (netem) — every byte checked,
//! with the kernel programs enforcing the policy throughout.
//!
//! ```text
//!  client ns ec0..ecN ──veth── wanN [gateway ns: cvpn serve, TUN] tgt0 ──veth── eth0 10.88.0.10 (allowed), .20 (denied)
//! ```

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use cvpn_tests::{
    gateway::{Daemon, EndpointNet},
    impair::{Impairment, UdpRelay},
    is_root,
    openvpn::{OpenVpnClient, Profile},
    Netns,
};

const ALLOWED: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const DENIED: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 20);
const BULK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9001;
const RELAY_PORT: u16 = 11940;

fn require_root() {
    if !is_root() {
        panic!("these tests need root (network namespaces); run them with `cargo xtask test`");
    }
}

// ---------------------------------------------------------------------------------------------
// A bulk server whose every byte is checked

/// The byte at `offset` of stream `seed`: any lost, doubled, reordered or corrupted byte shows.
fn pattern(seed: u8, offset: u64) -> u8 {
    ((offset.wrapping_mul(2_654_435_761) >> 13) as u8) ^ seed ^ (offset >> 20) as u8
}

fn fill(seed: u8, from: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern(seed, from + i as u64);
    }
}

/// Reads `len` bytes and checks each; returns where the first wrong byte was.
fn check_stream(r: &mut impl Read, seed: u8, len: u64) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < len {
        let want = buf.len().min((len - at) as usize);
        let n = r
            .read(&mut buf[..want])
            .with_context(|| format!("after {at} of {len} bytes"))?;
        if n == 0 {
            bail!("stream ended after {at} of {len} bytes");
        }
        if let Some(i) = (0..n).find(|&i| buf[i] != pattern(seed, at + i as u64)) {
            bail!("byte {} of {len} is wrong", at + i as u64);
        }
        at += n as u64;
    }
    Ok(())
}

fn send_stream(w: &mut impl Write, seed: u8, len: u64) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        fill(seed, at, &mut buf[..n]);
        w.write_all(&buf[..n])
            .with_context(|| format!("after {at} of {len} bytes"))?;
        at += n as u64;
    }
    Ok(())
}

/// `DOWN <len> <seed>`: the server sends the stream. `UP <len> <seed>`: it reads and checks it,
/// then answers `ok` or what was wrong.
fn spawn_bulk_server(ns: &Netns, addr: Ipv4Addr) -> Result<()> {
    let listener = ns.run(move || Ok(TcpListener::bind((addr, BULK_PORT))?))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = serve_bulk(conn);
            });
        }
    });
    Ok(())
}

fn serve_bulk(mut conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while conn.read(&mut b)? == 1 && b[0] != b'\n' && line.len() < 100 {
        line.push(b[0]);
    }
    let line = String::from_utf8(line)?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [verb, len, seed] = parts[..] else {
        bail!("bad request {line:?}");
    };
    let (len, seed): (u64, u8) = (len.parse()?, seed.parse()?);
    match verb {
        "DOWN" => send_stream(&mut conn, seed, len),
        "UP" => {
            let answer = match check_stream(&mut conn, seed, len) {
                Ok(()) => "ok\n".to_string(),
                Err(e) => format!("{e:#}\n"),
            };
            conn.write_all(answer.as_bytes())?;
            Ok(())
        }
        _ => bail!("bad verb {verb:?}"),
    }
}

fn download(host: Ipv4Addr, len: u64, seed: u8) -> Result<()> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((host, BULK_PORT)), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("DOWN {len} {seed}\n").as_bytes())?;
    check_stream(&mut s, seed, len).context("download")
}

fn upload(host: Ipv4Addr, len: u64, seed: u8) -> Result<()> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((host, BULK_PORT)), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("UP {len} {seed}\n").as_bytes())?;
    send_stream(&mut s, seed, len).context("upload")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if answer.trim() != "ok" {
        bail!("upload: the server found {}", answer.trim());
    }
    Ok(())
}

/// A UDP echo for datagrams of any size (up to 64 KiB).
fn spawn_udp_echo(ns: &Netns, addr: Ipv4Addr) -> Result<()> {
    let sock = ns.run(move || Ok(UdpSocket::bind((addr, ECHO_PORT))?))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], peer);
        }
    });
    Ok(())
}

/// Sends `count` datagrams of `size` bytes, one at a time, and returns how many came back
/// intact.
fn udp_round_trips(host: Ipv4Addr, size: usize, count: usize) -> Result<usize> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut back = 0;
    let mut buf = vec![0u8; 65536];
    for i in 0..count {
        let mut msg = vec![0u8; size];
        fill(i as u8, i as u64 * 7, &mut msg);
        sock.send_to(&msg, (host, ECHO_PORT))?;
        while let Ok(n) = sock.recv(&mut buf) {
            if buf[..n] == msg[..] {
                back += 1;
                break;
            }
        }
    }
    Ok(back)
}

// ---------------------------------------------------------------------------------------------
// The network

fn rules() -> &'static str {
    "[[target_network]]\ninterface = \"tgt0\"\n\n\
     [[authorization_rule]]\ndestination = \"10.88.0.10/32\"\nall_groups = true\n"
}

fn profile(net: &mut EndpointNet, i: usize, name: &str) -> Profile {
    Profile {
        remote: EndpointNet::server_addr(i),
        port: 1194,
        proto: "udp".into(),
        ca_pem: net.ca.cert_pem(),
        client: net.ca.client(name, &["engineering"]).unwrap(),
        data_ciphers: "AES-256-GCM".into(),
        tls_version_max: None,
        extra: vec![],
    }
}

/// An endpoint with `clients` connected stock clients; with `relay`, the first client reaches
/// the server through an impairing relay in its namespace.
fn serve(clients: usize, offloads: bool) -> (EndpointNet, Daemon, Vec<OpenVpnClient>) {
    let (net, daemon, clients, _) = serve_with(clients, offloads, false);
    (net, daemon, clients)
}

fn serve_with(
    clients: usize,
    offloads: bool,
    relay: bool,
) -> (EndpointNet, Daemon, Vec<OpenVpnClient>, Option<UdpRelay>) {
    let mut net = EndpointNet::new(clients).unwrap();
    let endpoint = format!(
        "client_cidr = \"10.77.0.0/22\"\ntransport = \"udp\"\nport = 1194\nlisten = \"0.0.0.0\"\n\
         split_tunnel = true\noffloads = {offloads}\n"
    );
    let cfg = net.write_config(&endpoint, rules()).unwrap();
    let daemon = Daemon::start(&net.gateway, &cfg).unwrap();
    spawn_bulk_server(&net.private, ALLOWED).unwrap();
    spawn_bulk_server(&net.private, DENIED).unwrap();
    spawn_udp_echo(&net.private, ALLOWED).unwrap();
    let relay = relay.then(|| {
        let listen = SocketAddr::from(([10, 99, 0, 2], RELAY_PORT));
        let upstream: SocketAddr = format!("{}:1194", EndpointNet::server_addr(0))
            .parse()
            .unwrap();
        UdpRelay::start(&net.clients[0], listen, upstream).unwrap()
    });
    let mut started = Vec::new();
    for i in 0..clients {
        let name = format!("user{i}");
        let mut p = profile(&mut net, i, &name);
        if i == 0 && relay.is_some() {
            p.remote = "10.99.0.2".into();
            p.port = RELAY_PORT;
        }
        started.push(OpenVpnClient::start(&net.clients[i], &p, &net.dir.0, &name).unwrap());
    }
    for c in &mut started {
        c.wait_connected(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}\ncvpn log:\n{}", daemon.log().join("\n")));
    }
    (net, daemon, started, relay)
}

/// The gateway TUN's counters: (bytes, packets) the daemon wrote (the kernel's rx) and read
/// (the kernel's tx).
fn tun_counters(gateway: &Netns) -> Result<((u64, u64), (u64, u64))> {
    let out = gateway
        .command("ip")
        .args(["-j", "-s", "link", "show", "type", "tun"])
        .output()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let s = &links[0]["stats64"];
    let n = |v: &serde_json::Value| v.as_u64().context("no TUN statistics");
    Ok((
        (n(&s["rx"]["bytes"])?, n(&s["rx"]["packets"])?),
        (n(&s["tx"]["bytes"])?, n(&s["tx"]["packets"])?),
    ))
}

fn average(before: (u64, u64), after: (u64, u64)) -> u64 {
    (after.0 - before.0) / (after.1 - before.1).max(1)
}

/// Runs `f` in every client namespace at once and returns the first error.
fn in_every_client<F>(net: &EndpointNet, f: F) -> Result<()>
where
    F: Fn(usize) -> Result<()> + Send + Sync + Clone + 'static,
{
    let handles: Vec<_> = net
        .clients
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let f = f.clone();
            ns.spawn(move || f(i))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        h.join()
            .map_err(|_| anyhow::anyhow!("client {i} panicked"))?
            .with_context(|| format!("client {i}"))?;
    }
    Ok(())
}

/// Every client at once: a download and an upload in parallel, a UDP flow beside them, and a
/// connection to a host no rule allows.
fn mixed_load(net: &EndpointNet, down: u64, up: u64) -> Result<()> {
    in_every_client(net, move |i| {
        let seed = i as u8;
        let d = std::thread::spawn(move || download(ALLOWED, down, seed));
        let u = std::thread::spawn(move || upload(ALLOWED, up, seed.wrapping_add(100)));
        let udp = udp_round_trips(ALLOWED, 1200, 50)?;
        if udp < 40 {
            bail!("only {udp} of 50 UDP datagrams came back beside the TCP flows");
        }
        if TcpStream::connect_timeout(
            &SocketAddr::from((DENIED, BULK_PORT)),
            Duration::from_millis(500),
        )
        .is_ok()
        {
            bail!("{DENIED} has no rule and must stay unreachable");
        }
        d.join()
            .map_err(|_| anyhow::anyhow!("download panicked"))??;
        u.join().map_err(|_| anyhow::anyhow!("upload panicked"))??;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn large_transfers_both_ways_with_offloads_on_and_off() {
    require_root();
    for offloads in [true, false] {
        let clients = if offloads { 3 } else { 1 };
        let (net, daemon, _clients) = serve(clients, offloads);
        let (w0, r0) = tun_counters(&net.gateway).unwrap();
        let started = Instant::now();
        mixed_load(&net, 24 << 20, 12 << 20).unwrap_or_else(|e| {
            panic!(
                "offloads {offloads}: {e:#}\ncvpn log:\n{}",
                daemon.log().join("\n")
            )
        });
        let took = started.elapsed();
        let (w1, r1) = tun_counters(&net.gateway).unwrap();
        let (written, read) = (average(w0, w1), average(r0, r1));
        println!(
            "offloads {offloads}, {clients} clients: {} MB each way-ish in {took:?}; TUN writes average {written} B, reads {read} B",
            (36 * clients)
        );
        if offloads {
            // Super-packets both ways: the coalescer joined segments before writing, and the
            // kernel handed TCP super-packets to cut.
            // (No single packet exceeds the tunnel's 1500-byte MTU; pure ACKs keep the writes'
            // average down.)
            assert!(
                written > 1500,
                "writes into the TUN average {written} B: nothing coalesced"
            );
            assert!(
                read > 3000,
                "reads from the TUN average {read} B: no super-packets"
            );
        } else {
            assert!(
                written <= 1500 && read <= 1500,
                "without offloads no packet exceeds the MTU: {written} / {read}"
            );
        }
    }
}

#[test]
fn reordering_loss_mtu_edges_and_a_path_mtu_change() {
    require_root();
    let (net, daemon, _clients, relay) = serve_with(1, true, true);
    let relay = relay.unwrap();
    let fail = |e: anyhow::Error| -> ! { panic!("{e:#}\ncvpn log:\n{}", daemon.log().join("\n")) };
    let client = &net.clients[0];
    // Packets at and around the tunnel's MTU (1500): ICMP with DF, and UDP, both ways.
    for size in [1372usize, 1471, 1472] {
        let out = client
            .command("ping")
            .args([
                "-c",
                "2",
                "-W",
                "2",
                "-i",
                "0.2",
                "-M",
                "do",
                "-s",
                &size.to_string(),
                "10.88.0.10",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ping -s {size} -M do: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let too_big = client
        .command("ping")
        .args(["-c", "1", "-W", "1", "-M", "do", "-s", "1473", "10.88.0.10"])
        .output()
        .unwrap();
    assert!(
        !too_big.status.success(),
        "a 1501-byte packet with DF cannot enter a 1500-byte tunnel"
    );
    for size in [1, 1400, 1471, 1472] {
        let back = client
            .run(move || udp_round_trips(ALLOWED, size, 5))
            .unwrap_or_else(|e| fail(e));
        assert!(back >= 4, "UDP {size} B: {back} of 5 came back");
    }

    // Reordering and loss on the outer path, both directions (the kernel here has no netem:
    // the relay does it).
    relay.set(Impairment {
        loss_per_mille: 5,
        reorder_per_mille: 100,
    });
    let before = relay.stats();
    mixed_load(&net, 8 << 20, 4 << 20).unwrap_or_else(|e| fail(e));
    let after = relay.stats();
    println!("relay: {before:?} -> {after:?}");
    assert!(
        after.dropped - before.dropped > 20 && after.reordered - before.reordered > 400,
        "the relay must have lost and reordered datagrams: {after:?}"
    );
    relay.set(Impairment::default());

    // The outer path's MTU drops under traffic: full-size tunnel packets no longer fit a
    // datagram the path takes, and must be fragmented rather than lost.
    let load = {
        let ns_load = client.spawn(|| {
            download(ALLOWED, 16 << 20, 7)?;
            upload(ALLOWED, 8 << 20, 8)
        });
        std::thread::sleep(Duration::from_millis(300));
        for (ns, dev) in [(client, "c0"), (&net.gateway, "wan0")] {
            ns.ip(&format!("link set dev {dev} mtu 1280")).unwrap();
        }
        ns_load
    };
    load.join()
        .unwrap()
        .unwrap_or_else(|e| fail(e.context("after the path MTU dropped to 1280")));
    let back = client
        .run(|| udp_round_trips(ALLOWED, 1472, 5))
        .unwrap_or_else(|e| fail(e));
    assert!(
        back >= 4,
        "UDP 1472 B over a 1280-byte path: {back} of 5 came back"
    );
}
