//! The cluster test network (issue 11: several gateway hosts on one PostgreSQL database): who
//! reaches whom, and a node serving from the shared database.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use cvpn_tests::{
    cluster::{ClusterNet, DATABASE_HOST, PRIVATE_HOSTS},
    is_root, sh, Netns,
};

fn require_root() {
    assert!(
        is_root(),
        "the cluster tests need root: run `cargo xtask test` as root"
    );
}

/// One ping from `ns` to `addr`, waiting at most a second for the answer.
fn pings(ns: &Netns, addr: &str) -> bool {
    sh(ns.command("ping").args(["-c1", "-W1", "-n", addr])).is_ok()
}

/// A TCP connection from inside `ns` to `addr` (or why not).
fn tcp_connect(ns: &Netns, addr: SocketAddr) -> anyhow::Result<()> {
    ns.run(move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        Ok(())
    })
}

#[test]
fn cluster_network_connects_clients_nodes_database_and_private_hosts() {
    require_root();
    let started = Instant::now();
    let net = ClusterNet::new(3, 2).unwrap();
    let db = net.database_addr();
    let private = PRIVATE_HOSTS[0].to_string();

    // Every client reaches every node's public address.
    for (i, c) in net.clients.iter().enumerate() {
        for n in 0..net.gateways.len() {
            let wan = ClusterNet::node_wan(n);
            assert!(pings(c, &wan), "client {i} cannot ping node {n} at {wan}");
        }
    }
    // Every node reaches the private hosts and PostgreSQL.
    for (n, g) in net.gateways.iter().enumerate() {
        for host in PRIVATE_HOSTS {
            assert!(pings(g, &host.to_string()), "node {n} cannot ping {host}");
        }
        tcp_connect(g, db).unwrap_or_else(|e| panic!("node {n} cannot reach PostgreSQL: {e:#}"));
    }
    // The nodes reach each other over the database network, and do not forward in the kernel.
    assert!(pings(&net.gateways[0], &ClusterNet::node_database(2)));
    for (n, g) in net.gateways.iter().enumerate() {
        let out = sh(g.command("sysctl").args(["-n", "net.ipv4.ip_forward"])).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "node {n}");
    }

    // The clients reach neither the private hosts nor the database: no route there...
    for (i, c) in net.clients.iter().enumerate() {
        assert!(!pings(c, &private), "client {i} reaches {private}");
        assert!(
            tcp_connect(c, db).is_err(),
            "client {i} reaches PostgreSQL at {db}"
        );
    }
    // ...nor through a node, given a route: the nodes do not forward in the kernel, and the
    // private hosts have no route back to the clients.
    let c = &net.clients[0];
    c.ip(&format!(
        "route add 10.88.0.0/24 via {}",
        ClusterNet::node_wan(0)
    ))
    .unwrap();
    assert!(
        !pings(c, &private),
        "client 0 reaches {private} through node 0"
    );
    c.ip("route del 10.88.0.0/24").unwrap();
    let back = sh(net
        .private
        .command("ip")
        .args(["route", "get", &ClusterNet::client_addr(0)]));
    assert!(
        back.is_err(),
        "the private hosts route to the clients: {back:?}"
    );

    // A node cut off the database network no longer reaches PostgreSQL; plugged back, it does.
    net.set_database_link(1, false).unwrap();
    assert!(
        tcp_connect(&net.gateways[1], db).is_err(),
        "node 1 still reaches {db}"
    );
    net.set_database_link(1, true).unwrap();
    tcp_connect(&net.gateways[1], db).unwrap();

    // A node serves from the shared database, reached over the database network.
    assert!(net.database_url().contains(&format!("@{DATABASE_HOST}:")));
    let node = net.start_node(0).unwrap();
    let eps = node.json(&["endpoint", "describe"]).unwrap();
    assert_eq!(
        eps["client-vpn-endpoints"],
        serde_json::json!([]),
        "{eps}\nlog:\n{}",
        node.daemon.log().join("\n")
    );
    assert!(
        node.daemon
            .log()
            .iter()
            .any(|l| l.contains("node registered") && l.contains("node=g0")),
        "node g0 registered in the database"
    );
    assert!(
        !node.data_dir.join("cvpn.db").exists(),
        "the node's state is in PostgreSQL, not in a SQLite file"
    );
    eprintln!("cluster smoke test: {:?}", started.elapsed());
}

/// Issue 11: a node cut off the database (its link down, so nothing answers: no refusal, just
/// silence) keeps moving its sessions' traffic with the policy it has, refuses changes saying
/// why, and takes changes again once the link is back — without a restart.
#[test]
fn a_node_cut_off_the_database_keeps_its_sessions_and_catches_up() {
    require_root();
    let mut net = ClusterNet::new(1, 1).unwrap();
    let node = net.start_node(0).unwrap();
    let (cert, key, ca) = net.write_server_files().unwrap();
    let created = node
        .json(&[
            "endpoint",
            "create",
            "--client-cidr",
            "10.66.0.0/22",
            "--server-cert",
            cert.to_str().unwrap(),
            "--server-key",
            key.to_str().unwrap(),
            "--client-ca",
            ca.to_str().unwrap(),
            "--split-tunnel",
        ])
        .unwrap();
    let endpoint = created["client-vpn-endpoint-id"]
        .as_str()
        .unwrap()
        .to_string();
    node.json(&[
        "network",
        "associate",
        &endpoint,
        "--interface",
        "tgt0",
        "--subnet",
        "10.88.0.0/24",
    ])
    .unwrap();
    let authorize = |dest: &str| {
        node.cli(&[
            "rule",
            "authorize",
            &endpoint,
            "--destination",
            dest,
            "--all-groups",
        ])
        .unwrap()
    };
    assert_eq!(authorize("10.88.0.10/32").code, 0);

    // A stock client on the exported profile, and a flow through the node.
    let pem = net.ca.client("alice", &["engineering"]).unwrap();
    let d = net.dir.0.clone();
    let cert = cvpn_tests::pki::write(&d, "alice.crt", &pem.cert).unwrap();
    let key = cvpn_tests::pki::write(&d, "alice.key", &pem.key).unwrap();
    let out = node
        .cli(&[
            "config",
            "export",
            &endpoint,
            "--remote-host",
            &ClusterNet::node_wan(0),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let profile = format!(
        "{}\nconnect-retry 1\nconnect-retry-max 3\nserver-poll-timeout 5\n",
        out.stdout
    );
    let mut client =
        cvpn_tests::openvpn::OpenVpnClient::start_with_text(&net.clients[0], &profile, &d, "alice")
            .unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    let echo = cvpn_tests::echo::UdpEcho::start(&net.private, PRIVATE_HOSTS[0], 7007).unwrap();
    let target = (PRIVATE_HOSTS[0], 7007);
    let probes =
        net.clients[0].spawn(move || cvpn_tests::echo::probe_loop(target, Duration::from_secs(16)));
    std::thread::sleep(Duration::from_secs(1));

    // Cut off: a change waits for the database's deadline, then is refused, saying why.
    net.set_database_link(0, false).unwrap();
    let cut = Instant::now();
    let refused = authorize("10.88.0.20/32");
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("ServiceUnavailable"), "{refused:?}");
    let waited = cut.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "the refusal took {waited:?}"
    );
    std::thread::sleep(Duration::from_secs(12).saturating_sub(cut.elapsed()));
    net.set_database_link(0, true).unwrap();
    let back = Instant::now();

    // Back: the same daemon takes the change (the pool reconnects).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut accepted = false;
    while Instant::now() < deadline {
        if authorize("10.88.0.20/32").code == 0 {
            accepted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        accepted,
        "no change accepted within 30 s of the link coming back\n{}",
        node.daemon.log().join("\n")
    );
    println!(
        "cut off {:?}; first change accepted {:?} after the link came back",
        back - cut,
        back.elapsed()
    );

    // The flow never stopped while the node was cut off.
    let probes = probes.join().unwrap().unwrap();
    drop(echo);
    let during: Vec<bool> = probes
        .iter()
        .filter(|(t, _)| *t > cut + Duration::from_millis(200) && *t < back)
        .map(|(_, ok)| *ok)
        .collect();
    let answered = during.iter().filter(|ok| **ok).count();
    assert!(
        during.len() > 100 && answered * 100 >= during.len() * 95,
        "the session's traffic kept flowing while the database was away: {answered} of {} probes answered",
        during.len()
    );
    assert!(client.exited().is_none(), "the client was never reset");
}
