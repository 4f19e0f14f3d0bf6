//! The cluster test network (issue 11: several gateway hosts on one PostgreSQL database): who
//! reaches whom, and a node serving from the shared database.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use cvpn_tests::{
    cluster::{ClusterNet, DATABASE_HOST, PRIVATE_HOSTS},
    echo::{probe_loop, UdpEcho},
    gateway::StoreDaemon,
    is_root,
    openvpn::OpenVpnClient,
    sh, Netns,
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
/// silence) keeps moving its sessions' traffic with the policy it has — also while a
/// resynchronisation waits for the database — refuses changes saying why, and takes changes
/// again once the link is back, without a restart.
#[test]
fn a_node_cut_off_the_database_keeps_its_sessions_and_catches_up() {
    require_root();
    let mut net = ClusterNet::new(1, 1).unwrap();
    let node = net.start_node(0).unwrap();
    let endpoint = net.create_endpoint(&node).unwrap();
    net.associate(&node, &endpoint, 0).unwrap();
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
    let profile = net
        .client_profile(
            &node,
            &endpoint,
            Some(&ClusterNet::node_wan(0)),
            "alice",
            &["engineering"],
        )
        .unwrap();
    let profile =
        format!("{profile}\nconnect-retry 1\nconnect-retry-max 3\nserver-poll-timeout 5\n");
    let d = net.dir.0.clone();
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
    // A resynchronisation asked for now (SIGHUP) meets the silent database: its reads wait
    // off the event loop, so the session's traffic (checked below) does not stall.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
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

/// The active connections of `endpoint` as `node` lists them (every node's).
fn active_connections(node: &StoreDaemon, endpoint: &str) -> Vec<serde_json::Value> {
    node.json(&["connection", "list", endpoint, "--status", "active"])
        .map(|v| v["connections"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// The active connection of `user` (common name), if any: (node index, connection id, address).
fn connection_of(
    node: &StoreDaemon,
    endpoint: &str,
    user: &str,
) -> Option<(usize, String, String)> {
    active_connections(node, endpoint)
        .into_iter()
        .find(|c| c["common-name"] == user)
        .map(|c| {
            let n = c["node"].as_str().unwrap_or("g?")[1..]
                .parse()
                .unwrap_or(usize::MAX);
            (
                n,
                c["connection-id"].as_str().unwrap_or_default().to_string(),
                c["client-ip"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// Waits (at most 10 s) until `node` serves the endpoint.
fn wait_serving(node: &StoreDaemon) {
    wait_for(
        "the node serves the endpoint",
        Duration::from_secs(10),
        || {
            node.daemon
                .log()
                .iter()
                .any(|l| l.contains("endpoint started"))
                .then_some(())
        },
    );
}

/// Running node `n` of `nodes`.
fn node(nodes: &[Option<StoreDaemon>], n: usize) -> &StoreDaemon {
    nodes[n].as_ref().expect("node running")
}

/// Waits up to `timeout` for `what`, polling every 200 ms; panics with `what` after.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 11: three nodes serve one endpoint from one PostgreSQL database, each with its own
/// target network association, address blocks and SNAT address; stock clients use the
/// exported profile, which lists all three. A rule revoked through one node cuts a flow another
/// node serves; connections are listed and terminated across nodes; a node SIGKILLed under
/// traffic loses its clients to the others, which find it dead and end its connections; it
/// rejoins on restart; the database stopped and started under running sessions costs them
/// nothing.
#[test]
fn three_nodes_serve_one_endpoint_and_survive_a_node_and_the_database_going_away() {
    require_root();
    let started = Instant::now();
    let mut net = ClusterNet::new(3, 3).unwrap();
    // Fast keepalive: a client notices a dead node within 5 s.
    for n in 0..3 {
        net.write_node_config(n, "[tunnel]\nping = 1\nping_restart = 5\n")
            .unwrap();
    }
    let mut nodes: Vec<Option<StoreDaemon>> =
        (0..3).map(|n| Some(net.start_node(n).unwrap())).collect();
    let endpoint = net.create_endpoint(node(&nodes, 0)).unwrap();
    // Every node's tgt0, associated through node 0's API.
    for n in 0..3 {
        net.associate(node(&nodes, 0), &endpoint, n).unwrap();
    }
    let rule = |through: &StoreDaemon, verb: &str, dest: &str, group: Option<&str>| {
        let mut args = vec!["rule", verb, &endpoint, "--destination", dest];
        match group {
            Some(g) => args.extend(["--group", g]),
            None => args.push("--all-groups"),
        }
        through.cli(&args).unwrap()
    };
    assert_eq!(
        rule(node(&nodes, 1), "authorize", "10.88.0.10/32", None).code,
        0
    );
    assert_eq!(
        rule(
            node(&nodes, 2),
            "authorize",
            "10.88.0.20/32",
            Some("engineering")
        )
        .code,
        0
    );
    for n in 0..3 {
        wait_serving(node(&nodes, n));
    }

    // The profile exported through node 1 names all three nodes.
    let users = [
        ("alice", "engineering"),
        ("bob", "engineering"),
        ("carol", "sales"),
    ];
    let mut clients = Vec::new();
    for (i, (user, group)) in users.iter().enumerate() {
        let profile = net
            .client_profile(node(&nodes, 1), &endpoint, None, user, &[group])
            .unwrap();
        let remotes: Vec<&str> = profile
            .lines()
            .filter(|l| l.starts_with("remote "))
            .collect();
        assert_eq!(
            remotes,
            [
                "remote 10.99.0.1 443",
                "remote 10.99.0.2 443",
                "remote 10.99.0.3 443"
            ],
            "{profile}"
        );
        assert!(
            profile.contains("\nremote-random\n") && profile.contains("\nserver-poll-timeout 5\n")
        );
        let d = net.dir.0.clone();
        let mut c = OpenVpnClient::start_with_text(&net.clients[i], &profile, &d, user).unwrap();
        c.wait_connected(Duration::from_secs(30)).unwrap();
        clients.push(c);
    }
    let list = active_connections(node(&nodes, 0), &endpoint);
    assert_eq!(
        list.len(),
        3,
        "node 0 lists every node's connections: {list:#?}"
    );
    let placed: Vec<(usize, String, String)> = users
        .iter()
        .map(|(u, _)| connection_of(node(&nodes, 2), &endpoint, u).unwrap())
        .collect();
    println!("placement: {placed:?}");
    let mut addresses: Vec<&String> = placed.iter().map(|(_, _, ip)| ip).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(
        addresses.len(),
        3,
        "no two clients share an address: {placed:?}"
    );
    let echo10 = UdpEcho::start(&net.private, PRIVATE_HOSTS[0], 7007).unwrap();
    let echo20 = UdpEcho::start(&net.private, PRIVATE_HOSTS[1], 7008).unwrap();

    // A rule revoked through a node other than alice's cuts alice's flow at once; carol's
    // flow (all groups) is spared.
    let alice_node = placed[0].0;
    let other = (alice_node + 1) % 3;
    let alice =
        net.clients[0].spawn(move || probe_loop((PRIVATE_HOSTS[1], 7008), Duration::from_secs(3)));
    let carol =
        net.clients[2].spawn(move || probe_loop((PRIVATE_HOSTS[0], 7007), Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(1000));
    let out = rule(
        node(&nodes, other),
        "revoke",
        "10.88.0.20/32",
        Some("engineering"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let revoked = Instant::now();
    let (alice, carol) = (
        alice.join().unwrap().unwrap(),
        carol.join().unwrap().unwrap(),
    );
    cvpn_tests::echo::assert_cut_within_and_spared(
        &alice,
        &carol,
        revoked,
        &format!("the revoke through node {other} (alice on node {alice_node})"),
        Duration::from_secs(1),
    );

    // Terminate through a node other than carol's: her node ends the session (HALT: the
    // stock client exits), and every node lists it ended.
    let (carol_node, carol_conn, _) = placed[2].clone();
    let through = (carol_node + 2) % 3;
    let out = node(&nodes, through)
        .cli(&[
            "connection",
            "terminate",
            &endpoint,
            "--connection-id",
            &carol_conn,
        ])
        .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let t = Instant::now();
    wait_for("carol's client exits", Duration::from_secs(10), || {
        clients[2].exited()
    });
    println!(
        "terminate through node {through} ended carol's session on node {carol_node} in {:?}",
        t.elapsed()
    );
    wait_for("carol's connection ends", Duration::from_secs(10), || {
        connection_of(node(&nodes, through), &endpoint, "carol")
            .is_none()
            .then_some(())
    });

    // Bob's node dies (SIGKILL) while bob's flow runs: bob is back through another node, and
    // reaches what he may (10.88.0.10); the others find the node dead and end its connections.
    let (bob_node, bob_conn, _) = placed[1].clone();
    let survivor = (bob_node + 1) % 3;
    // Bob's traffic: short probe runs, each from a new socket (a reconnected client has a new
    // address, which sockets opened before do not follow), until one is answered.
    let passes = |ns: &Netns| {
        ns.spawn(|| probe_loop((PRIVATE_HOSTS[0], 7007), Duration::from_millis(300)))
            .join()
            .ok()
            .and_then(|r| r.ok())
            .is_some_and(|p| p.iter().any(|(_, ok)| *ok))
    };
    assert!(passes(&net.clients[1]), "bob's flow runs before");
    nodes[bob_node].as_mut().unwrap().daemon.kill();
    let died = Instant::now();
    let back = wait_for("bob passes traffic again", Duration::from_secs(40), || {
        passes(&net.clients[1]).then(|| died.elapsed())
    });
    let (new_node, _, _) = wait_for(
        "bob reconnects to another node",
        Duration::from_secs(40),
        || {
            connection_of(node(&nodes, survivor), &endpoint, "bob")
                .filter(|(n, _, _)| *n != bob_node)
        },
    );
    let ended = wait_for(
        "the dead node's connection is recorded as ended",
        Duration::from_secs(40),
        || {
            node(&nodes, survivor)
                .json(&["connection", "list", &endpoint])
                .ok()?["connections"]
                .as_array()?
                .iter()
                .any(|c| c["connection-id"] == bob_conn.as_str() && c["status"] == "terminated")
                .then(|| died.elapsed())
        },
    );
    println!(
        "node {bob_node} killed: bob passes traffic again through node {new_node} after {back:?}; \
         its connection recorded ended after {ended:?}"
    );
    assert!(back < Duration::from_secs(30), "failover took {back:?}");

    // The dead node restarts and rejoins without anyone's help: it serves the endpoint again
    // from a fresh address block.
    drop(nodes[bob_node].take());
    let again = net.start_node(bob_node).unwrap();
    wait_serving(&again);
    nodes[bob_node] = Some(again);
    // Alice may have been on the killed node too: her client is back before going on.
    wait_for("alice passes traffic", Duration::from_secs(40), || {
        passes(&net.clients[0]).then_some(())
    });

    // PostgreSQL stops under the running sessions: they keep passing traffic; a change is
    // refused, saying why; once it is back, changes are taken again.
    let alive = clients.iter().take(2).count();
    assert_eq!(alive, 2);
    let alice_flow =
        net.clients[0].spawn(move || probe_loop((PRIVATE_HOSTS[0], 7007), Duration::from_secs(4)));
    std::thread::sleep(Duration::from_millis(500));
    net.pg.pause().unwrap();
    let refused = rule(node(&nodes, 0), "authorize", "10.88.0.30/32", None);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("ServiceUnavailable"), "{refused:?}");
    let alice_flow = alice_flow.join().unwrap().unwrap();
    let answered = alice_flow.iter().filter(|(_, ok)| *ok).count();
    assert!(
        answered * 100 >= alice_flow.len() * 95,
        "alice's traffic while the database was away: {answered} of {} answered",
        alice_flow.len()
    );
    net.pg.restart().unwrap();
    wait_for("a change is taken again", Duration::from_secs(30), || {
        (rule(node(&nodes, 2), "authorize", "10.88.0.30/32", None).code == 0).then_some(())
    });
    for c in clients.iter_mut().take(2) {
        assert!(c.exited().is_none(), "a client was reset");
    }

    // A node cut off the database misses a change's notification, and past the stale bound
    // the others find it dead and record its connections as ended. Back on the database it
    // applies the change it missed, and its running session is recorded as active again;
    // its client was never reset.
    let (alice_node, alice_conn, _) =
        wait_for("alice's connection", Duration::from_secs(10), || {
            connection_of(node(&nodes, 0), &endpoint, "alice")
        });
    let other = (alice_node + 1) % 3;
    net.set_database_link(alice_node, false).unwrap();
    let cut = Instant::now();
    let out = rule(node(&nodes, other), "revoke", "10.88.0.10/32", None);
    assert_eq!(out.code, 0, "{out:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        passes(&net.clients[0]),
        "alice's node has not heard of the revoke while cut off"
    );
    let status_of_alice = |nodes: &[Option<StoreDaemon>]| {
        node(nodes, other)
            .json(&["connection", "list", &endpoint])
            .ok()
            .and_then(|v| {
                v["connections"]
                    .as_array()?
                    .iter()
                    .find(|c| c["connection-id"] == alice_conn.as_str())
                    .map(|c| c["status"].as_str().unwrap_or_default().to_string())
            })
    };
    wait_for(
        "the others record alice's connection as ended",
        Duration::from_secs(40),
        || (status_of_alice(&nodes).as_deref() == Some("terminated")).then_some(()),
    );
    println!(
        "node {alice_node} found dead {:?} after it was cut off",
        cut.elapsed()
    );
    net.set_database_link(alice_node, true).unwrap();
    let back = Instant::now();
    let caught_up = wait_for("alice's node catches up", Duration::from_secs(15), || {
        (!passes(&net.clients[0])).then(|| back.elapsed())
    });
    let active = wait_for(
        "alice's connection is active again",
        Duration::from_secs(20),
        || (status_of_alice(&nodes).as_deref() == Some("active")).then(|| back.elapsed()),
    );
    println!(
        "node {alice_node} back: applied the revoke it missed after {caught_up:?}, its \
         connection active again after {active:?}"
    );
    assert!(clients[0].exited().is_none(), "alice's client was reset");
    drop((echo10, echo20));
    println!("three-node test: {:?}", started.elapsed());
}

/// Issue 11: two nodes never hand out one client address, under concurrent logins to every
/// node and a node killed and restarted in the middle of them. Every active connection the
/// database lists has an address of its own, inside a block the database gives its node.
#[test]
fn concurrent_logins_and_a_node_restart_never_give_two_connections_one_address() {
    require_root();
    let mut net = ClusterNet::new(3, 1).unwrap();
    for s in 0..10 {
        net.clients[0]
            .ip(&format!("addr add 10.99.0.{}/24 dev c0", 200 + s))
            .unwrap();
    }
    let mut nodes: Vec<Option<StoreDaemon>> = Vec::new();
    for n in 0..3 {
        // Test clients send no keepalive: the sessions must outlive the check.
        net.write_node_config(n, "[tunnel]\nping = 10\nping_restart = 60\n")
            .unwrap();
        nodes.push(Some(net.start_node(n).unwrap()));
    }
    let endpoint = net.create_endpoint(node(&nodes, 0)).unwrap();
    for n in 0..3 {
        net.associate(node(&nodes, 0), &endpoint, n).unwrap();
    }
    for n in 0..3 {
        wait_serving(node(&nodes, n));
    }
    let ca = net.ca.cert_pem();
    let certs: Vec<_> = (0..150)
        .map(|i| net.ca.client(&format!("u{i}"), &["engineering"]).unwrap())
        .collect();
    // A burst of logins, `n` of them from certificate `first` on, to the three nodes in
    // turn; returns how many got in.
    let burst = |net: &ClusterNet, first: usize, n: usize, during: &dyn Fn()| -> usize {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
        let threads: Vec<_> = (first..first + n)
            .map(|i| {
                let src = std::net::Ipv4Addr::new(10, 99, 0, 200 + (i % 10) as u8);
                let sock = net.clients[0]
                    .run(move || Ok(std::net::UdpSocket::bind((src, 0))?))
                    .unwrap();
                let server: SocketAddr = format!("{}:443", ClusterNet::node_wan(i % 3))
                    .parse()
                    .unwrap();
                let tls =
                    gateway::endpoint::test_client::tls_config(&ca, &certs[i].cert, &certs[i].key)
                        .unwrap();
                let mut s =
                    cvpn_tests::login_client::Session::new(sock, server, tls, None).unwrap();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    s.login(Instant::now() + Duration::from_secs(20)).is_ok()
                })
            })
            .collect();
        barrier.wait();
        during();
        // A session outlives its socket here: UDP tells the node nothing, and the node keeps
        // it until its keepalive runs out (120 s).
        threads
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum::<usize>()
    };
    let first = burst(&net, 0, 60, &|| {});
    assert_eq!(first, 60, "every login of the first burst gets in");
    // The second burst while node 1 is killed and restarted: its own logins may fail, the
    // others' may not.
    let dying = std::cell::RefCell::new(nodes[1].take());
    let restarted = std::cell::RefCell::new(None);
    let second = burst(&net, 60, 90, &|| {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mut dead) = dying.borrow_mut().take() {
            dead.daemon.kill();
        }
        *restarted.borrow_mut() = Some(net.start_node(1).unwrap());
    });
    nodes[1] = restarted.into_inner();
    assert!(
        second >= 60,
        "the live nodes' logins got in: {second} of 90"
    );

    // The database's view: active connections, and which node holds which block.
    let active = active_connections(node(&nodes, 2), &endpoint);
    assert!(active.len() >= 100, "{} active", active.len());
    let url = net.database_url();
    let blocks: Vec<(String, ipnet::Ipv4Net, String)> = net
        .database_host()
        .run(move || {
            let cfg = gateway::control::DaemonConfig::parse(
                &format!("database = {url:?}\nnode_name = \"checker\"\n"),
                "test",
            )?;
            let store = gateway::storage::Store::open(
                cfg.store_options().map_err(|e| anyhow::anyhow!("{e}"))?,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            store
                .describe_address_blocks()
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .unwrap();
    let mut seen = std::collections::HashMap::new();
    for c in &active {
        let ip: std::net::Ipv4Addr = c["client-ip"].as_str().unwrap().parse().unwrap();
        let holder = c["node"].as_str().unwrap();
        if let Some(other) = seen.insert(ip, c["connection-id"].clone()) {
            panic!("{ip} is held by {other} and {}", c["connection-id"]);
        }
        assert!(
            blocks
                .iter()
                .any(|(e, b, n)| *e == endpoint && b.contains(&ip) && n == holder),
            "{ip} of a connection on {holder} lies in no block of {holder}: {blocks:?}"
        );
    }
    println!(
        "{} active connections, {} addresses, {} blocks: {:?}",
        active.len(),
        seen.len(),
        blocks.len(),
        blocks
            .iter()
            .map(|(_, b, n)| format!("{b}@{n}"))
            .collect::<Vec<_>>()
    );
}
