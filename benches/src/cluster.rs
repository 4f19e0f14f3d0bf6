//! `cargo xtask bench cluster [--changes N] [--clients N]`
//!
//! Issue 11's benchmark: three `cvpn serve` nodes (release build) serving one endpoint from one
//! PostgreSQL database, on the cluster test network (`cvpn_tests::cluster`: every node has a
//! public address, a leg on the private network and one on the database network; PostgreSQL
//! runs in a namespace of its own). Each node associates its own `tgt0`; two rules: 10.88.0.10
//! for all groups, 10.88.0.20 for group `engineering`. The nodes' keepalive is `ping 1`,
//! `ping_restart 5`.
//!
//! 1. **Change propagation.** Three stock OpenVPN 2.6 clients (group `engineering`), one on each
//!    node: each uses the profile the endpoint exports, which lists the three nodes, with its
//!    own node first and `remote-random` dropped, so that every node holds one. Each sends a
//!    UDP datagram every ~3 ms through the tunnel to an echo server on 10.88.0.20. Then
//!    `--changes` times (default 20), through node 0, 1, 2 in turn: the `engineering` rule is
//!    revoked, then authorized again 400 ms later. A change's latency on a node is measured
//!    from just before the `cvpn rule` command starts (so it includes the CLI's own start and
//!    the API call) to the last echoed datagram sent before the cut (revoke), or the first one
//!    echoed after it (authorize): when the node's kernel map changed, to the probe interval.
//!    Reported: p50, p99 and max over all nodes and changes, and per node.
//! 2. **Failover.** Each node in turn is SIGKILLed; for each client it held: the time from the
//!    kill until the client passes traffic again (short probe runs from new sockets, as a
//!    reconnected client has a new address), through another node. The killed node is then
//!    restarted and must serve again before the next one dies. The clients notice a dead node
//!    by the pushed `ping-restart 5` and move to their next `remote`.
//! 3. **Connects per second.** `--clients` (default 90) logins at once by the sans-IO test
//!    client (`cvpn_tests::login_client`, as in the login benchmark), certificate
//!    authentication, from 30 source addresses: first all to node 0 (one node), then spread
//!    over the three nodes
//!    (round robin). Reported: the time until the last is in, connects/s, and the ratio. All
//!    nodes share this machine's cores, so the ratio shows what the database and the claims
//!    of address blocks cost, not what three hosts would give.
//!
//! A benchmark, not a test: it fails only when it cannot measure, with the nodes' logs.
//! Everything runs inside namespaces it creates and deletes; every process it starts is
//! stopped by PID, also on failure.

#[allow(dead_code)]
mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use cvpn_tests::login_client::Session;
use cvpn_tests::{
    cluster::{ClusterNet, PRIVATE_HOSTS},
    echo::{probe_loop, UdpEcho},
    gateway::StoreDaemon,
    is_root,
    openvpn::OpenVpnClient,
    pki::Pem,
    Netns,
};
use gateway::endpoint::test_client::tls_config;

const NODES: usize = 3;
const KEEPALIVE: &str = "[tunnel]\nping = 1\nping_restart = 5\n";
const ALLOWED_PORT: u16 = 7007;
const GROUP_PORT: u16 = 7008;
/// Extra source addresses of the connect burst, on client 0: 10.99.0.200 and up.
const BURST_SOURCES: u8 = 30;

struct Args {
    changes: usize,
    clients: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        changes: 20,
        clients: 90,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<usize> {
            it.next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{name} takes a number"))
        };
        match flag.as_str() {
            "--changes" => a.changes = value("--changes")?.clamp(1, 1000),
            "--clients" => a.clients = value("--clients")?.clamp(3, 600),
            other => bail!(
                "unknown argument {other:?}; usage: bench cluster [--changes N] [--clients N]"
            ),
        }
    }
    Ok(a)
}

/// Sends a numbered datagram every ~3 ms until `stop`; (sent, echoed) per datagram.
fn probe_until(target: (Ipv4Addr, u16), stop: Arc<AtomicBool>) -> Result<Vec<(Instant, bool)>> {
    let mut all = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Runs of 1 s, each from a new socket (cheap, and a client's address never changes here).
        all.extend(probe_loop(target, Duration::from_secs(1))?);
    }
    Ok(all)
}

/// A short probe run from a new socket in `ns`: whether anything was echoed.
fn passes(ns: &Netns, target: (Ipv4Addr, u16)) -> bool {
    ns.spawn(move || probe_loop(target, Duration::from_millis(300)))
        .join()
        .ok()
        .and_then(|r| r.ok())
        .is_some_and(|p| p.iter().any(|(_, ok)| *ok))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The node index of `user`'s active connection, as `node` lists it.
fn node_of(node: &StoreDaemon, endpoint: &str, user: &str) -> Option<usize> {
    let v = node
        .json(&["connection", "list", endpoint, "--status", "active"])
        .ok()?;
    v["connections"]
        .as_array()?
        .iter()
        .find(|c| c["common-name"] == user)?["node"]
        .as_str()?
        .strip_prefix('g')?
        .parse()
        .ok()
}

fn wait_serving(node: &StoreDaemon, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !node
        .daemon
        .log()
        .iter()
        .any(|l| l.contains("endpoint started"))
    {
        if Instant::now() > deadline {
            bail!(
                "node {n} does not serve the endpoint within 15 s:\n{}",
                node.daemon.log().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

struct Cluster {
    net: ClusterNet,
    nodes: Vec<Option<StoreDaemon>>,
    endpoint: String,
}

impl Cluster {
    fn node(&self, n: usize) -> Result<&StoreDaemon> {
        self.nodes[n]
            .as_ref()
            .with_context(|| format!("node {n} is not running"))
    }

    fn rule(&self, through: usize, verb: &str) -> Result<()> {
        let out = self.node(through)?.cli(&[
            "rule",
            verb,
            &self.endpoint,
            "--destination",
            "10.88.0.20/32",
            "--group",
            "engineering",
        ])?;
        if out.code != 0 {
            bail!("rule {verb} through node {through}: {out:?}");
        }
        Ok(())
    }
}

/// Part 1: (revoke latencies, authorize latencies) per node.
fn propagation(c: &Cluster, changes: usize) -> Result<Vec<(Vec<Duration>, Vec<Duration>)>> {
    let stop = Arc::new(AtomicBool::new(false));
    let probes: Vec<_> = (0..NODES)
        .map(|i| {
            let stop = stop.clone();
            c.net.clients[i].spawn(move || probe_until((PRIVATE_HOSTS[1], GROUP_PORT), stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut events = Vec::with_capacity(changes * 2);
    for r in 0..changes {
        let through = r % NODES;
        let t = Instant::now();
        c.rule(through, "revoke")?;
        events.push((t, true));
        std::thread::sleep(Duration::from_millis(400));
        let t = Instant::now();
        c.rule(through, "authorize")?;
        events.push((t, false));
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut out = Vec::new();
    for (i, p) in probes.into_iter().enumerate() {
        let samples = p
            .join()
            .map_err(|_| anyhow!("client {i}'s probe panicked"))??;
        let (mut cut, mut restored) = (Vec::new(), Vec::new());
        for (k, (t, revoke)) in events.iter().enumerate() {
            let until = events.get(k + 1).map(|e| e.0).unwrap_or_else(Instant::now);
            let window = samples.iter().filter(|(s, _)| s >= t && *s < until);
            let at = if *revoke {
                window.filter(|(_, ok)| *ok).map(|(s, _)| *s).max()
            } else {
                window.filter(|(_, ok)| *ok).map(|(s, _)| *s).min()
            };
            match at {
                Some(s) if *revoke => cut.push(s.duration_since(*t)),
                Some(s) => restored.push(s.duration_since(*t)),
                // Cut before the first probe after the command started: within an interval.
                None if *revoke => cut.push(Duration::ZERO),
                None => bail!("client {i}: no echo within 400 ms of authorize #{k}"),
            }
        }
        out.push((cut, restored));
    }
    Ok(out)
}

/// Part 2's result: per killed node, (client, time until it passed traffic again).
type Failovers = Vec<(usize, Vec<(usize, Duration)>)>;

/// Part 2: per killed node, the failover time of each client it held.
fn failover(c: &mut Cluster) -> Result<Failovers> {
    let mut out = Vec::new();
    for k in 0..NODES {
        let witness = (k + 1) % NODES;
        let mut held = Vec::new();
        for i in 0..NODES {
            if node_of(c.node(witness)?, &c.endpoint, &format!("user{i}")) == Some(k) {
                held.push(i);
            }
        }
        let node = c.nodes[k].as_mut().context("node not running")?;
        node.daemon.kill();
        let died = Instant::now();
        let mut times = Vec::new();
        for i in held {
            let deadline = died + Duration::from_secs(60);
            loop {
                if passes(&c.net.clients[i], (PRIVATE_HOSTS[0], ALLOWED_PORT)) {
                    times.push((i, died.elapsed()));
                    break;
                }
                if Instant::now() > deadline {
                    bail!("client {i} passes no traffic 60 s after node {k} died");
                }
            }
        }
        drop(c.nodes[k].take());
        let again = c.net.start_node(k)?;
        wait_serving(&again, k)?;
        c.nodes[k] = Some(again);
        out.push((k, times));
    }
    Ok(out)
}

/// Part 3: a login at once by each of `certs` to `targets` (round robin); (time to all in,
/// failures).
fn burst(c: &Cluster, certs: &[Pem], targets: &[usize]) -> Result<(Duration, usize)> {
    let ca = c.net.ca.cert_pem();
    let clients = certs.len();
    let mut sessions = Vec::with_capacity(clients);
    for (i, pem) in certs.iter().enumerate() {
        let src = Ipv4Addr::new(10, 99, 0, 200 + (i % usize::from(BURST_SOURCES)) as u8);
        let sock = c.net.clients[0].run(move || Ok(UdpSocket::bind((src, 0))?))?;
        let n = targets[i % targets.len()];
        let server = SocketAddr::from((ClusterNet::node_wan(n).parse::<Ipv4Addr>()?, 443));
        sessions.push(Session::new(
            sock,
            server,
            tls_config(&ca, &pem.cert, &pem.key)?,
            None,
        )?);
    }
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = sessions
        .into_iter()
        .map(|mut s| {
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(512 << 10)
                .spawn(move || {
                    barrier.wait();
                    s.login(Instant::now() + Duration::from_secs(40))
                        .map(|_| Instant::now())
                })
        })
        .collect::<std::io::Result<_>>()?;
    let start = Instant::now();
    barrier.wait();
    let mut last = start;
    let mut failed = 0;
    for t in threads {
        match t.join().map_err(|_| anyhow!("a client thread panicked"))? {
            Ok(done) => last = last.max(done),
            Err(why) => {
                failed += 1;
                eprintln!("a login failed: {why}");
            }
        }
    }
    Ok((last - start, failed))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !is_root() {
        bail!("bench cluster needs root (network namespaces): run it as root");
    }
    common::require_tools(&["openvpn", "ip"])?;
    eprintln!("[cluster] network, PostgreSQL, three nodes");
    let mut net = ClusterNet::new(NODES, NODES)?;
    for s in 0..BURST_SOURCES {
        net.clients[0].ip(&format!("addr add 10.99.0.{}/24 dev c0", 200 + s))?;
    }
    for n in 0..NODES {
        net.write_node_config(n, KEEPALIVE)?;
    }
    let mut nodes = Vec::new();
    for n in 0..NODES {
        nodes.push(Some(net.start_node(n)?));
    }
    let first = nodes[0].as_ref().context("node 0")?;
    let endpoint = net.create_endpoint(first)?;
    for n in 0..NODES {
        net.associate(first, &endpoint, n)?;
    }
    for (dest, group) in [
        ("10.88.0.10/32", None),
        ("10.88.0.20/32", Some("engineering")),
    ] {
        let mut a = vec!["rule", "authorize", &endpoint, "--destination", dest];
        match group {
            Some(g) => a.extend(["--group", g]),
            None => a.push("--all-groups"),
        }
        first.json(&a)?;
    }
    for (n, node) in nodes.iter().enumerate() {
        wait_serving(node.as_ref().context("node")?, n)?;
    }
    let _echo = [
        UdpEcho::start(&net.private, PRIVATE_HOSTS[0], ALLOWED_PORT)?,
        UdpEcho::start(&net.private, PRIVATE_HOSTS[1], GROUP_PORT)?,
    ];
    // One stock client per node: the exported profile, its own node's remote first.
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let user = format!("user{i}");
        let node = node.as_ref().context("node")?;
        let exported = net.client_profile(node, &endpoint, None, &user, &["engineering"])?;
        let own = format!("remote {} 443", ClusterNet::node_wan(i));
        let mut lines: Vec<&str> = exported
            .lines()
            .filter(|l| *l != "remote-random" && *l != own)
            .collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("remote "))
            .unwrap_or(0);
        lines.insert(at, &own);
        let profile = lines.join("\n") + "\n";
        let dir = net.dir.0.clone();
        let mut c = OpenVpnClient::start_with_text(&net.clients[i], &profile, &dir, &user)?;
        c.wait_connected(Duration::from_secs(30))?;
        clients.push(c);
    }
    let mut c = Cluster {
        net,
        nodes,
        endpoint,
    };
    for i in 0..NODES {
        let on = node_of(c.node(0)?, &c.endpoint, &format!("user{i}"));
        if on != Some(i) {
            bail!("client {i} is on node {on:?}, not on its own node {i}");
        }
    }

    eprintln!("[cluster] change propagation: {} changes", args.changes * 2);
    let per_node = propagation(&c, args.changes)?;
    eprintln!("[cluster] failover: each node killed in turn");
    let failovers = failover(&mut c)?;
    drop(clients);
    eprintln!(
        "[cluster] connects: {} logins at once to one node, then to three",
        args.clients
    );
    let certs = (0..args.clients)
        .map(|i| c.net.ca.client(&format!("burst{i}"), &["engineering"]))
        .collect::<Result<Vec<_>>>()?;
    let one = burst(&c, &certs, &[0])?;
    // The first burst's sessions time out (ping-restart 5 s) before the second.
    std::thread::sleep(Duration::from_secs(8));
    let three = burst(&c, &certs, &[0, 1, 2])?;

    // ---- results ----
    println!(
        "\ncvpn cluster benchmark: {NODES} nodes, one PostgreSQL ({})",
        c.net.database_url().split('@').nth(1).unwrap_or("?")
    );
    println!("\n1. change propagation (cvpn rule revoke/authorize through node r mod 3 -> each node's kernel map, seen by a flow through it)");
    let mut all: Vec<Duration> = Vec::new();
    for (n, (cut, restored)) in per_node.iter().enumerate() {
        let mut mine: Vec<Duration> = cut.iter().chain(restored).copied().collect();
        mine.sort();
        println!(
            "   node {n}: {} changes  p50 {}  p99 {}  max {}",
            mine.len(),
            ms(percentile(&mine, 0.5)),
            ms(percentile(&mine, 0.99)),
            ms(mine.last().copied().unwrap_or_default())
        );
        all.extend(mine);
    }
    all.sort();
    println!(
        "   all nodes: p50 {}  p99 {}  max {}   (goal: within 1 s; aim well under 100 ms)",
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default())
    );
    println!("\n2. failover (SIGKILL of a node -> its clients pass traffic again through another node; ping-restart 5 s)");
    let mut times = Vec::new();
    for (k, held) in &failovers {
        for (i, t) in held {
            println!(
                "   node {k} killed: client {i} back after {:.1} s",
                t.as_secs_f64()
            );
            times.push(*t);
        }
    }
    times.sort();
    println!(
        "   p50 {:.1} s  max {:.1} s over {} failovers",
        percentile(&times, 0.5).as_secs_f64(),
        times.last().copied().unwrap_or_default().as_secs_f64(),
        times.len()
    );
    let rate =
        |(t, failed): (Duration, usize)| (args.clients - failed) as f64 / t.as_secs_f64().max(1e-9);
    println!(
        "\n3. connects ({} test clients at once, certificates, {} source addresses)",
        args.clients, BURST_SOURCES
    );
    println!(
        "   one node:    all in after {:.2} s, {:.0} connects/s, {} failed",
        one.0.as_secs_f64(),
        rate(one),
        one.1
    );
    println!(
        "   three nodes: all in after {:.2} s, {:.0} connects/s, {} failed",
        three.0.as_secs_f64(),
        rate(three),
        three.1
    );
    println!(
        "   three vs one: {:.2}x  (all nodes share this machine's {} cores)",
        rate(three) / rate(one).max(1e-9),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    Ok(())
}
