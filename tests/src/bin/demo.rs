//! `cargo xtask demo`: cvpn end to end, in namespaces it makes and removes.
//!
//! 1. An endpoint: `cvpn serve` with certificates the demo generates, two stock `openvpn`
//!    clients (groups `engineering` and `finance`) connecting, allowed and denied HTTP
//!    requests to a private network whose server sees the gateway's address.
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
            })
            .collect(),
        routes: vec![Route { destination: "10.88.0.0/24".parse().expect("demo CIDR"), target: TARGET_ID }],
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

/// Part 1: `cvpn serve` and stock OpenVPN clients.
fn endpoint_demo() -> Result<()> {
    use cvpn_tests::{
        gateway::{Daemon, EndpointNet},
        openvpn::{OpenVpnClient, Profile},
    };
    println!("== part 1: a cvpn endpoint and stock OpenVPN 2.6 clients ==");
    let mut net = EndpointNet::new(2)?;
    let config = net.write_config(
        "client_cidr = \"10.77.0.0/22\"\ntransport = \"udp\"\nport = 443\nlisten = \"0.0.0.0\"\nsplit_tunnel = true\n",
        "[[target_network]]\ninterface = \"tgt0\"\n\n\
         [[authorization_rule]]\ndestination = \"10.88.0.0/24\"\ngroup = \"engineering\"\n\n\
         [[authorization_rule]]\ndestination = \"10.88.0.10/32\"\ngroup = \"finance\"\n",
    )?;
    println!("endpoint config ({}):", config.display());
    for line in std::fs::read_to_string(&config)?.lines().filter(|l| !l.contains("server_") && !l.contains("client_ca") && !l.contains("crl")) {
        println!("  {line}");
    }
    let mut daemon = Daemon::start(&net.gateway, &config)?;
    println!("cvpn serve is up in namespace {}", net.gateway.name());
    for host in [PRIVATE_HOST, PRIVATE_HOST_2] {
        cvpn_tests::http::spawn_server(&net.private, host, 80)?;
    }
    let mut clients = Vec::new();
    for (i, (user, group)) in [("alice", "engineering"), ("bob", "finance")].into_iter().enumerate() {
        let pem = net.ca.client(user, &[group])?;
        let profile = Profile {
            remote: EndpointNet::server_addr(i),
            port: 443,
            proto: "udp".into(),
            ca_pem: net.ca.cert_pem(),
            client: pem,
            data_ciphers: "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305".into(),
            tls_version_max: None,
            extra: vec!["explicit-exit-notify 1".into()],
        };
        let mut c = OpenVpnClient::start(&net.clients[i], &profile, &net.dir.0, user)?;
        let took = c.wait_connected(Duration::from_secs(20))?;
        println!("{user} ({group}) connected in {took:?}: {}", c.log().iter().find(|l| l.contains("ifconfig")).map(String::as_str).unwrap_or(""));
        clients.push(c);
    }
    println!("\n-- requests through the tunnel --");
    for (i, user) in ["alice", "bob"].into_iter().enumerate() {
        for host in [PRIVATE_HOST, PRIVATE_HOST_2] {
            let r = match net.clients[i].run(move || get(host)) {
                Ok(body) => format!("ALLOWED  (the web server saw {body})"),
                Err(e) => format!("BLOCKED  ({e:#})"),
            };
            println!("{user:<6} -> {host}: {r}");
        }
    }
    for mut c in clients {
        c.stop();
    }
    daemon.wait_for("session ended", Duration::from_secs(5)).ok();
    println!("\n-- cvpn log (connections) --");
    for l in daemon.log().iter().filter(|l| l.contains("client authenticated") || l.contains("session ended") || l.contains("disconnect")) {
        println!("  {}", l.split_once("gateway::server: ").map_or(l.as_str(), |(_, r)| r));
    }
    daemon.stop();
    println!();
    Ok(())
}

/// Part 2: the kernel data plane alone, driven through its API.
fn dataplane_demo() -> Result<()> {
    println!("== part 2: the kernel data plane, driven directly ==");
    let mut t = Topology::new(TopologyOptions { clients: 2, ..TopologyOptions::default() })?;
    let (eng, fin) = (t.clients[0].addr, t.clients[1].addr);
    println!("namespaces: gateway {}, private {}, clients {} / {}", t.gateway.name(), t.private.name(), t.clients[0].ns.name(), t.clients[1].ns.name());
    println!("client_ingress attached to the gateway's TUN, target_ingress to its target interface (SNAT address {GATEWAY_TARGET_ADDR})");

    t.dataplane.add_session(eng, 101, &["engineering".to_string()])?;
    t.dataplane.add_session(fin, 102, &["finance".to_string()])?;
    let policy = rules(&[("10.88.0.0/24", Some("engineering")), ("10.88.0.10/32", Some("finance"))]);
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
    println!("engineering -> {PRIVATE_HOST}: {}", ask(&t, 0, PRIVATE_HOST));
    println!("engineering -> {PRIVATE_HOST_2}: {}", ask(&t, 0, PRIVATE_HOST_2));
    println!("finance     -> {PRIVATE_HOST}: {}", ask(&t, 1, PRIVATE_HOST));
    println!("finance     -> {PRIVATE_HOST_2}: {}", ask(&t, 1, PRIVATE_HOST_2));
    show_events(&mut events);

    println!("\n-- live policy change: finance gets 10.88.0.20/32, engineering loses it --");
    let started = Instant::now();
    t.dataplane.replace_policy(rules(&[
        ("10.88.0.0/24", Some("engineering")),
        ("10.88.0.10/32", Some("finance")),
        ("10.88.0.20/32", Some("finance")),
    ]))?;
    println!("applied in {:?}, no session reset", started.elapsed());
    println!("engineering -> {PRIVATE_HOST_2}: {}", ask(&t, 0, PRIVATE_HOST_2));
    println!("finance     -> {PRIVATE_HOST_2}: {}", ask(&t, 1, PRIVATE_HOST_2));
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
            e.protocol, e.client.0, e.client.1, e.remote.0, e.remote.1, e.snat.0, e.snat.1, e.idle,
            if e.closing { ", closing" } else { "" }
        );
    }
    drop(t);
    println!("\ntorn down: programs detached, namespaces removed");
    Ok(())
}
