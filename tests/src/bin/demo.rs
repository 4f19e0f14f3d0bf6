//! `cargo xtask demo`: cvpn end to end, in namespaces it makes and removes.
//!
//! 1. A gateway: `cvpn serve` on an embedded database; an endpoint created, associated and
//!    authorized with the `cvpn` CLI using certificates the demo generates; two stock `openvpn`
//!    clients (groups `engineering` and `finance`) connecting with the exported profile; allowed
//!    and denied HTTP requests to a private network whose server sees the gateway's address; a
//!    live rule revoke; the connection list, a terminate, the connection and flow logs.
//! 2. The kernel data plane on its own: the same rules, a live policy change applied in
//!    microseconds without resetting anyone, flow events, counters and the NAT table.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use cvpn_tests::{
    is_root,
    topology::{GATEWAY_TARGET_ADDR, PRIVATE_HOST, PRIVATE_HOST_2, TARGET_ID},
    Topology, TopologyOptions,
};
use gateway::dataplane::{
    policy::{Access, AuthorizationRule, Policy, Route},
    FlowEvents,
};

fn rules(list: &[(&str, Option<&str>)]) -> Policy {
    Policy {
        rules: list
            .iter()
            .map(|(cidr, g)| AuthorizationRule {
                destination: cidr.parse().expect("demo CIDR"),
                access: g.map_or(Access::AllGroups, |g| Access::Group(g.to_string())),
                ports: None,
            })
            .collect(),
        routes: vec![Route {
            destination: "10.88.0.0/24".parse().expect("demo CIDR"),
            target: TARGET_ID,
        }],
    }
}

fn get(host: Ipv4Addr) -> Result<String> {
    let resp = cvpn_tests::http::request(host, 80, "GET /", 0, Duration::from_millis(1500))?;
    Ok(cvpn_tests::http::body(&resp).trim().to_string())
}

fn show_events(events: &mut FlowEvents) {
    for e in events.wait(Duration::from_millis(300)) {
        println!(
            "    flow event: {:<14} session {} {}:{} -> {}:{} (proto {})",
            e.kind.as_str(),
            e.session_id,
            e.src,
            e.src_port,
            e.dst,
            e.dst_port,
            e.protocol
        );
    }
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    endpoint_demo()?;
    dataplane_demo()
}

/// Shows `cvpn ARGS` as an administrator would type it (file paths shortened to their names),
/// runs it against the daemon and prints what it printed.
fn admin(daemon: &cvpn_tests::gateway::StoreDaemon, args: &[&str]) -> Result<String> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with('/') {
                a.rsplit('/').next().unwrap_or(a).to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    println!("$ cvpn {}", shown.join(" "));
    let out = daemon.cli(args)?;
    for l in out.stdout.lines().chain(out.stderr.lines()) {
        if l == "<ca>" {
            println!("  <ca>…</ca> <cert>…</cert> <key>…</key> (PEM blocks)");
            break;
        }
        println!("  {l}");
    }
    if out.code != 0 {
        bail!("cvpn {} exited {}", args.join(" "), out.code);
    }
    Ok(out.stdout)
}

/// Part 1: `cvpn serve` on its database, an endpoint made with the CLI, stock OpenVPN clients.
fn endpoint_demo() -> Result<()> {
    use cvpn_tests::{
        gateway::{EndpointNet, StoreDaemon, TempDir},
        openvpn::OpenVpnClient,
    };
    println!("== part 1: a cvpn gateway, administered with the cvpn CLI, and stock OpenVPN 2.6 clients ==");
    let mut net = EndpointNet::new(2)?;
    let data = TempDir::new("demo-data")?;
    let mut daemon = StoreDaemon::start(&net.gateway, &data.0)?;
    println!(
        "cvpn serve is up in namespace {}: database {}/cvpn.db, API socket {}\n",
        net.gateway.name(),
        data.0.display(),
        daemon.socket.display()
    );
    let (cert, key, ca) = net.write_server_files()?;
    let p = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (cert, key, ca) = (p(&cert), p(&key), p(&ca));
    let created = daemon.json(&[
        "endpoint",
        "create",
        "--client-cidr",
        "10.77.0.0/22",
        "--server-cert",
        &cert,
        "--server-key",
        &key,
        "--client-ca",
        &ca,
        "--split-tunnel",
        "--description",
        "demo",
    ])?;
    let ep = created["client-vpn-endpoint-id"]
        .as_str()
        .context("endpoint id")?
        .to_string();
    admin(&daemon, &["endpoint", "describe", &ep])?;
    admin(
        &daemon,
        &[
            "network",
            "associate",
            &ep,
            "--interface",
            "tgt0",
            "--subnet",
            "10.88.0.0/24",
        ],
    )?;
    admin(
        &daemon,
        &[
            "rule",
            "authorize",
            &ep,
            "--destination",
            "10.88.0.0/24",
            "--group",
            "engineering",
        ],
    )?;
    admin(
        &daemon,
        &[
            "rule",
            "authorize",
            &ep,
            "--destination",
            "10.88.0.10/32",
            "--group",
            "finance",
        ],
    )?;
    println!("(AWS semantics: the longest matching prefix decides, so finance's /32 takes 10.88.0.10 away from engineering)\n");
    for host in [PRIVATE_HOST, PRIVATE_HOST_2] {
        cvpn_tests::http::spawn_server(&net.private, host, 80)?;
    }
    let mut clients = Vec::new();
    for (i, (user, group)) in [("alice", "engineering"), ("bob", "finance")]
        .into_iter()
        .enumerate()
    {
        let pem = net.ca.client(user, &[group])?;
        let d = net.dir.0.clone();
        let cert = p(&cvpn_tests::pki::write(
            &d,
            &format!("{user}.crt"),
            &pem.cert,
        )?);
        let key = p(&cvpn_tests::pki::write(
            &d,
            &format!("{user}.key"),
            &pem.key,
        )?);
        let remote = EndpointNet::server_addr(i);
        let profile = if i == 0 {
            admin(
                &daemon,
                &[
                    "config",
                    "export",
                    &ep,
                    "--remote-host",
                    &remote,
                    "--cert",
                    &cert,
                    "--key",
                    &key,
                ],
            )?
        } else {
            daemon
                .cli(&[
                    "config",
                    "export",
                    &ep,
                    "--remote-host",
                    &remote,
                    "--cert",
                    &cert,
                    "--key",
                    &key,
                ])?
                .stdout
        };
        let mut c = OpenVpnClient::start_with_text(&net.clients[i], &profile, &d, user)?;
        let took = c.wait_connected(Duration::from_secs(20))?;
        println!("{user} ({group}) connected with the exported profile in {took:?}");
        clients.push(c);
    }
    let ask = |i: usize, host: Ipv4Addr| match net.clients[i].run(move || get(host)) {
        Ok(body) => format!("ALLOWED  (the web server saw {body})"),
        Err(e) => format!("BLOCKED  ({e:#})"),
    };
    println!("\n-- requests through the tunnel --");
    for (i, user) in ["alice", "bob"].into_iter().enumerate() {
        for host in [PRIVATE_HOST, PRIVATE_HOST_2] {
            println!("{user:<6} -> {host}: {}", ask(i, host));
        }
    }
    println!("\n-- live change: engineering loses 10.88.0.0/24; nobody is reset --");
    let started = Instant::now();
    admin(
        &daemon,
        &[
            "rule",
            "revoke",
            &ep,
            "--destination",
            "10.88.0.0/24",
            "--group",
            "engineering",
        ],
    )?;
    println!(
        "(the CLI call, API and data-plane swap took {:?})",
        started.elapsed()
    );
    println!("alice  -> {PRIVATE_HOST_2}: {}", ask(0, PRIVATE_HOST_2));
    println!("bob    -> {PRIVATE_HOST}: {}", ask(1, PRIVATE_HOST));
    // Counters reach the database every few seconds.
    std::thread::sleep(Duration::from_secs(5));
    println!("\n-- connections --");
    admin(&daemon, &["connection", "list", &ep])?;
    admin(
        &daemon,
        &["connection", "terminate", &ep, "--username", "bob"],
    )?;
    let mut bob = clients.pop().context("bob")?;
    let start = Instant::now();
    while bob.exited().is_none() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "bob's openvpn: {}",
        bob.log()
            .iter()
            .rev()
            .find(|l| l.contains("Halt"))
            .map(String::as_str)
            .unwrap_or("(still running)")
    );
    for mut c in clients {
        c.stop();
    }
    std::thread::sleep(Duration::from_millis(500));
    admin(&daemon, &["connection", "list", &ep])?;
    println!(
        "\n-- connection log ({}/connection.log, AWS field names) --",
        data.0.display()
    );
    for l in std::fs::read_to_string(data.0.join("connection.log"))
        .unwrap_or_default()
        .lines()
    {
        println!("  {l}");
    }
    println!("\n-- flow log (denied destinations) --");
    for l in std::fs::read_to_string(data.0.join("flow.log"))
        .unwrap_or_default()
        .lines()
        .take(4)
    {
        println!("  {l}");
    }
    daemon.daemon.stop();
    println!(
        "\ncvpn serve stopped (SIGTERM): programs detached, TUN removed; namespaces removed next\n"
    );
    Ok(())
}

/// Part 2: the kernel data plane alone, driven through its API.
fn dataplane_demo() -> Result<()> {
    println!("== part 2: the kernel data plane, driven directly ==");
    let mut t = Topology::new(TopologyOptions {
        clients: 2,
        ..TopologyOptions::default()
    })?;
    let (eng, fin) = (t.clients[0].addr, t.clients[1].addr);
    println!(
        "namespaces: gateway {}, private {}, clients {} / {}",
        t.gateway.name(),
        t.private.name(),
        t.clients[0].ns.name(),
        t.clients[1].ns.name()
    );
    println!("client_ingress attached to the gateway's TUN, target_ingress to its target interface (SNAT address {GATEWAY_TARGET_ADDR})");

    t.dataplane
        .add_session(eng, 101, &["engineering".to_string()])?;
    t.dataplane
        .add_session(fin, 102, &["finance".to_string()])?;
    let policy = rules(&[
        ("10.88.0.0/24", Some("engineering")),
        ("10.88.0.10/32", Some("finance")),
    ]);
    t.dataplane.replace_policy(policy)?;
    println!("sessions: {eng} (engineering), {fin} (finance)");
    println!("rules: 10.88.0.0/24 -> engineering; 10.88.0.10/32 -> finance");
    println!("(AWS semantics: the longest matching prefix decides, so finance's /32 takes 10.88.0.10 away from engineering)");
    let mut events = t.dataplane.take_flow_events().context("flow events")?;

    for host in [PRIVATE_HOST, PRIVATE_HOST_2] {
        cvpn_tests::http::spawn_server(&t.private, host, 80)?;
    }

    let ask = |t: &Topology, who: usize, host: Ipv4Addr| -> String {
        let r = t.clients[who].ns.run(move || get(host));
        match r {
            Ok(body) => format!("ALLOWED  (the web server saw {body})"),
            Err(e) => format!("BLOCKED  ({e:#})"),
        }
    };
    println!("\n-- requests --");
    println!(
        "engineering -> {PRIVATE_HOST}: {}",
        ask(&t, 0, PRIVATE_HOST)
    );
    println!(
        "engineering -> {PRIVATE_HOST_2}: {}",
        ask(&t, 0, PRIVATE_HOST_2)
    );
    println!(
        "finance     -> {PRIVATE_HOST}: {}",
        ask(&t, 1, PRIVATE_HOST)
    );
    println!(
        "finance     -> {PRIVATE_HOST_2}: {}",
        ask(&t, 1, PRIVATE_HOST_2)
    );
    show_events(&mut events);

    println!("\n-- live policy change: finance gets 10.88.0.20/32, engineering loses it --");
    let started = Instant::now();
    t.dataplane.replace_policy(rules(&[
        ("10.88.0.0/24", Some("engineering")),
        ("10.88.0.10/32", Some("finance")),
        ("10.88.0.20/32", Some("finance")),
    ]))?;
    println!("applied in {:?}, no session reset", started.elapsed());
    println!(
        "engineering -> {PRIVATE_HOST_2}: {}",
        ask(&t, 0, PRIVATE_HOST_2)
    );
    println!(
        "finance     -> {PRIVATE_HOST_2}: {}",
        ask(&t, 1, PRIVATE_HOST_2)
    );
    show_events(&mut events);

    println!("\n-- counters --");
    for (who, addr) in [("engineering", eng), ("finance", fin)] {
        if let Some(c) = t.dataplane.session_counters(addr)? {
            println!(
                "{who:<12} from client {:>4} pkts {:>6} B | to client {:>4} pkts {:>6} B | dropped {}",
                c.from_client_packets, c.from_client_bytes, c.to_client_packets, c.to_client_bytes, c.dropped_packets
            );
        }
    }
    for (name, value) in t.dataplane.global_counters()?.0 {
        if value > 0 {
            println!("  {name:<24} {value}");
        }
    }
    println!("\n-- NAT table --");
    for e in t.dataplane.nat_entries() {
        println!(
            "  proto {:<2} {}:{} -> {}:{} as {}:{} (idle {:?}{})",
            e.protocol,
            e.client.0,
            e.client.1,
            e.remote.0,
            e.remote.1,
            e.snat.0,
            e.snat.1,
            e.idle,
            if e.closing { ", closing" } else { "" }
        );
    }
    drop(t);
    println!("\ntorn down: programs detached, namespaces removed");
    Ok(())
}
