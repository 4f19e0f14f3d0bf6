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
