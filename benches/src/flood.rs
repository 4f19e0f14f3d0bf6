//! `cargo xtask bench flood [--seconds N] [--sources N] [--rate N]`
//!
//! Floods `cvpn serve` and then the stock OpenVPN 2.6 server (same namespaces, same PKI and
//! port, UDP) while real clients connect and another moves data, and measures what the
//! legitimate users see:
//!
//! ```text
//!  client ns ec0: the flooder, --sources addresses (10.100.x.y) ──veth── wan0 ┐
//!  client ns ec1: stock openvpn clients (one moving data, fresh ones connecting) ──── wan1 ┤ [gateway ns: the server] tgt0 ── private host
//! ```
//!
//! Two floods, `--rate` packets per second (default 20 000) for `--seconds` (default 10):
//! * **reset flood**: `P_CONTROL_HARD_RESET_CLIENT_V2` packets with fresh session ids from the
//!   flood addresses in turn (what a spoofing flooder sends: nothing after the reset);
//! * **ClientHello flood**: from each flood address in turn, a real reset exchange (the
//!   server's answer read, its cookie echoed) and the first TLS flight, a ClientHello, then
//!   silence — the handshake state a server keeps for each until it gives up (at most
//!   `--rate`/10 a second: each costs the flooder a rustls ClientHello).
//!
//! During each flood: a stock client connected before it pushes iperf3 at a fixed 200 Mbit/s
//! through its tunnel (what fraction arrives), and fresh stock clients connect one after the
//! other (how many succeed, and how long each takes, against the same measured without a
//! flood); the server's CPU time and its resident memory before, at the end of the flood and
//! 10 s later. A benchmark, not a test: it fails only when it cannot measure.
//!
//! Everything runs inside namespaces this process creates and deletes; every process it starts
//! is stopped by PID.

#[allow(dead_code)]
mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use common::{clock_ticks, cpu_seconds, rss_kb, Forwarding, Logged};
use cvpn_tests::{
    gateway::{Daemon, EndpointNet},
    is_root,
    openvpn::{OpenVpnClient, Profile},
    pki::write,
};
use gateway::endpoint::test_client::TestClient;

const PORT: u16 = 1194;
const PRIVATE: &str = "10.88.0.10";
const CIPHERS: &str = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305";
const TUNNEL_MBIT: u32 = 200;
/// How long a fresh client may take to connect before it counts as failed.
const CONNECT_BOUND: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Cvpn,
    OpenVpn,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cvpn => "cvpn",
            Kind::OpenVpn => "openvpn",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flood {
    None,
    Resets,
    ClientHellos,
}

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Flood::None => "no flood",
            Flood::Resets => "reset flood",
            Flood::ClientHellos => "ClientHello flood",
        }
    }
}

enum Server {
    Cvpn(Daemon),
    OpenVpn {
        server: Logged,
        _forwarding: Forwarding,
    },
}

impl Server {
    fn pid(&self) -> u32 {
        match self {
            Server::Cvpn(d) => d.pid(),
            Server::OpenVpn { server, .. } => server.pid(),
        }
    }
}

fn start_server(net: &mut EndpointNet, kind: Kind) -> Result<Server> {
    let cfg = net.write_config(
        &format!("client_cidr = \"10.77.0.0/22\"\ntransport = \"udp\"\nport = {PORT}\nlisten = \"0.0.0.0\"\nsplit_tunnel = true\n"),
        "[[target_network]]\ninterface = \"tgt0\"\n\n[[authorization_rule]]\ndestination = \"10.88.0.0/24\"\nall_groups = true\n",
    )?;
    Ok(match kind {
        Kind::Cvpn => Server::Cvpn(Daemon::start_with_log_level(&net.gateway, &cfg, "info")?),
        Kind::OpenVpn => {
            let p = |f: &str| net.dir.0.join(f).display().to_string();
            let conf = format!(
                "server 10.77.0.0 255.255.252.0\ntopology subnet\ndev tun\nproto udp4\nport {PORT}\n\
                 ca {}\ncert {}\nkey {}\ncrl-verify {}\ndh none\nverify-client-cert require\n\
                 data-ciphers {CIPHERS}\npush \"route 10.88.0.0 255.255.255.0\"\nkeepalive 10 60\n\
                 disable-dco\nverb 1\n",
                p("ca.crt"),
                p("server.crt"),
                p("server.key"),
                p("crl.pem"),
            );
            let conf = write(&net.dir.0, "openvpn-flood.conf", &conf)?;
            let fwd = Forwarding::enable(&net.gateway)?;
            let mut cmd = net.gateway.command("openvpn");
            cmd.arg("--config").arg(&conf);
            let mut s = Logged::spawn("openvpn server", cmd)?;
            s.wait_for("Initialization Sequence Completed", Duration::from_secs(15))?;
            Server::OpenVpn {
                server: s,
                _forwarding: fwd,
            }
        }
    })
}

/// The flood addresses (10.100.0.0/16, one per source).
fn flood_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, (i / 250) as u8, (i % 250) as u8 + 2)
}

/// The flooder: sockets bound to the flood addresses, run on a thread until `stop`.
struct Flooder {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Flooder {
    fn start(
        net: &EndpointNet,
        kind: Flood,
        sources: usize,
        rate: u64,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Flooder> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), sent.clone());
        let server = SocketAddr::from(([10, 99, 0, 1], PORT));
        let thread = net.clients[0].spawn(move || {
            let socks: Vec<UdpSocket> = (0..sources)
                .map(|i| {
                    let s = UdpSocket::bind((flood_addr(i), 0))?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .collect::<Result<_>>()?;
            let start = Instant::now();
            let mut n: u64 = 0;
            // ClientHello flood: the clients waiting for the server's answer, by socket.
            let mut waiting: Vec<Option<TestClient>> = (0..sources).map(|_| None).collect();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                // Pace: n packets by now.
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while n < due {
                    let i = (n as usize) % sources;
                    match kind {
                        Flood::Resets => {
                            let mut p = [0u8; 14];
                            p[0] = 7 << 3;
                            p[1..9].copy_from_slice(
                                &(n ^ 0x5bd1_e995_u64.wrapping_mul(n + 1)).to_be_bytes(),
                            );
                            let _ = socks[i].send_to(&p, server);
                        }
                        Flood::ClientHellos => {
                            let mut sid = [0u8; 8];
                            sid.copy_from_slice(
                                &(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).to_be_bytes(),
                            );
                            if let Ok(mut c) = TestClient::new(tls.clone(), "vpn.example.test", sid)
                            {
                                while let Some(p) = c.poll_transmit() {
                                    let _ = socks[i].send_to(&p, server);
                                }
                                waiting[i] = Some(c);
                            }
                        }
                        Flood::None => {}
                    }
                    n += 1;
                }
                count.store(n, Ordering::Relaxed);
                // Answers: for the ClientHello flood, the reset answer brings out the first TLS
                // flight, sent once; then the client is forgotten. Other answers are drained.
                let mut any = false;
                for (i, s) in socks.iter().enumerate() {
                    while let Ok(len) = s.recv(&mut buf) {
                        any = true;
                        if let Some(mut c) = waiting[i].take() {
                            if c.handle_packet(&buf[..len]).is_ok() {
                                while let Some(p) = c.poll_transmit() {
                                    let _ = s.send_to(&p, server);
                                }
                            }
                        }
                    }
                }
                if !any {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            Ok(())
        });
        Ok(Flooder {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the flooder panicked"))??;
        }
        Ok(self.sent.load(Ordering::Relaxed))
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[derive(Debug, Default, Clone)]
struct Row {
    sent: u64,
    connects: Vec<Option<f64>>,
    tunnel_mbit: f64,
    server_cpu: f64,
    seconds: f64,
    rss_before: u64,
    rss_flood: u64,
    rss_after: u64,
}

fn profile(net: &mut EndpointNet, name: &str) -> Result<Profile> {
    Ok(Profile {
        remote: EndpointNet::server_addr(1),
        port: PORT,
        proto: "udp".into(),
        ca_pem: net.ca.cert_pem(),
        client: net.ca.client(name, &["engineering"])?,
        data_ciphers: CIPHERS.into(),
        tls_version_max: None,
        extra: vec!["disable-dco".into()],
    })
}

fn measure(
    net: &mut EndpointNet,
    kind: Kind,
    flood: Flood,
    seconds: u64,
    sources: usize,
    rate: u64,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Row> {
    eprintln!("[{} {}] starting", kind.name(), flood.name());
    let server = start_server(net, kind)?;
    let runner_profile = profile(net, &format!("runner-{}-{:?}", kind.name(), flood))?;
    let mut runner = OpenVpnClient::start(&net.clients[1], &runner_profile, &net.dir.0, "runner")?;
    runner.wait_connected(Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_secs(1));
    let ticks = clock_ticks();
    let rss_before = rss_kb(server.pid()).unwrap_or(0);
    let cpu0 = cpu_seconds(server.pid(), ticks)?;
    let t0 = Instant::now();
    let mut flooder = match flood {
        Flood::None => None,
        f => Some(Flooder::start(net, f, sources, rate, tls.clone())?),
    };
    std::thread::sleep(Duration::from_secs(1));
    // The tunnel's load, through the runner.
    let mut srv = net.private.command("iperf3");
    srv.args(["-s", "-1", "--forceflush", "-B", PRIVATE, "-p", "5201"]);
    let mut srv = Logged::spawn("iperf3 server", srv)?;
    srv.wait_for("listening", Duration::from_secs(5))?;
    let mut cli = net.clients[1].command("iperf3");
    cli.args([
        "-c",
        PRIVATE,
        "-p",
        "5201",
        "-J",
        "-u",
        "-b",
        &format!("{TUNNEL_MBIT}M"),
        "-l",
        "1200",
    ])
    .args(["-t", &seconds.saturating_sub(2).max(2).to_string()]);
    let mut iperf = Logged::spawn("iperf3 client", cli)?;
    // Fresh clients, one after the other, while the flood runs.
    let mut connects = Vec::new();
    let until = t0 + Duration::from_secs(seconds);
    let mut i = 0;
    while Instant::now() + Duration::from_secs(1) < until && i < 5 {
        let p = profile(net, &format!("fresh{i}-{}-{:?}", kind.name(), flood))?;
        let mut c = OpenVpnClient::start(&net.clients[1], &p, &net.dir.0, &format!("fresh{i}"))?;
        connects.push(
            c.wait_connected(CONNECT_BOUND)
                .ok()
                .map(|d| d.as_secs_f64() * 1e3),
        );
        c.stop();
        i += 1;
    }
    iperf.wait_exit(Duration::from_secs(seconds + 30))?;
    let out = iperf.stdout();
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("iperf3 printed no JSON:\n{}", iperf.log()))?;
    // UDP: what the receiver got.
    let tunnel_mbit = v["end"]["sum"]["bits_per_second"].as_f64().unwrap_or(0.0)
        * (1.0 - v["end"]["sum"]["lost_percent"].as_f64().unwrap_or(100.0) / 100.0)
        / 1e6;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss_flood = rss_kb(server.pid()).unwrap_or(0);
    let sent = match &mut flooder {
        Some(f) => f.stop()?,
        None => 0,
    };
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(server.pid(), ticks)?;
    drop(srv);
    runner.stop();
    std::thread::sleep(Duration::from_secs(10));
    let rss_after = rss_kb(server.pid()).unwrap_or(0);
    let row = Row {
        sent,
        connects,
        tunnel_mbit,
        server_cpu: cpu1 - cpu0,
        seconds: elapsed,
        rss_before,
        rss_flood,
        rss_after,
    };
    eprintln!("[{} {}] {row:?}", kind.name(), flood.name());
    drop(server);
    Ok(row)
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("the benchmark creates namespaces and runs VPN servers in them: run it as root");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut seconds, mut sources, mut rate) = (10u64, 2000usize, 20_000u64);
    let usage = "use --seconds N (default 10), --sources N (default 2000, at most 60000), --rate N packets/s (default 20000)";
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = || -> Result<u64> { it.clone().next().context(usage)?.parse().context(usage) };
        match a.as_str() {
            "--seconds" => seconds = v()?,
            "--sources" => sources = v()? as usize,
            "--rate" => rate = v()?,
            other => bail!("unknown argument {other:?}; {usage}"),
        }
        it.next();
    }
    if !(5..=600).contains(&seconds)
        || !(1..=60_000).contains(&sources)
        || !(1..=1_000_000).contains(&rate)
    {
        bail!("{usage}");
    }
    common::require_tools(&["openvpn", "iperf3"])?;
    let openvpn_version = common::openvpn_version();
    cvpn_tests::gateway::cvpn_binary()?;
    // A socket per flood address.
    gateway::io::tcp::raise_file_limit();

    let mut net = EndpointNet::new(2)?;
    let addrs: Vec<Ipv4Addr> = (0..sources).map(flood_addr).collect();
    common::add_sources(&net, &addrs)?;
    // The flooder speaks TLS as a client would (any certificate: it never gets that far).
    let flood_client = net.ca.client("flooder", &[])?;
    let tls = cvpn_tests::raw_client::tls_config(&net.ca.cert_pem(), &flood_client)?;

    let mut rows = Vec::new();
    for kind in [Kind::Cvpn, Kind::OpenVpn] {
        for flood in [Flood::None, Flood::Resets, Flood::ClientHellos] {
            let r = if flood == Flood::ClientHellos {
                rate / 10
            } else {
                rate
            };
            rows.push((
                kind,
                flood,
                measure(&mut net, kind, flood, seconds, sources, r, &tls)?,
            ));
        }
    }

    println!();
    println!(
        "=== floods against cvpn serve and stock {openvpn_version}: `cargo xtask bench flood` ==="
    );
    println!(
        "{sources} flood source addresses; resets at {rate}/s, ClientHellos at {}/s, {seconds} s each; a tunnel offered {TUNNEL_MBIT} Mbit/s of UDP; fresh stock clients connecting one after the other (bound {} s)",
        rate / 10,
        CONNECT_BOUND.as_secs()
    );
    println!();
    println!(
        "{:<8} {:<18} | {:>9} | {:>9} | {:>24} | {:>9} | {:>22}",
        "server",
        "flood",
        "sent",
        "connected",
        "connect ms (median, max)",
        "tunnel",
        "RSS MB: before/flood/+10s"
    );
    println!("{}", "-".repeat(116));
    for (kind, flood, r) in &rows {
        let ok: Vec<f64> = r.connects.iter().flatten().copied().collect();
        let mut sorted = ok.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        let max = sorted.last().copied().unwrap_or(f64::NAN);
        println!(
            "{:<8} {:<18} | {:>9} | {:>4}/{:<4} | {:>11.0} {:>12.0} | {:>5.0} Mb/s | {:>6.1} {:>6.1} {:>6.1}   CPU {:.0} %",
            kind.name(),
            flood.name(),
            r.sent,
            ok.len(),
            r.connects.len(),
            median,
            max,
            r.tunnel_mbit,
            r.rss_before as f64 / 1024.0,
            r.rss_flood as f64 / 1024.0,
            r.rss_after as f64 / 1024.0,
            100.0 * r.server_cpu / r.seconds,
        );
    }
    println!("(a benchmark: misses are reported, not failed)");
    Ok(())
}
