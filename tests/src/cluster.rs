//! A cluster test network (issue 11): several gateway hosts serving from one PostgreSQL
//! database, each reachable by every client, each with its own leg on the private network and
//! on the database network. Three bridges, each `br0` in a namespace of its own, stand in for
//! the switches (shown for 3 nodes and 2 clients):
//!
//! ```text
//!  client ns c0 c0 10.99.0.100 ──┐                 ┌── wan0 10.99.0.1 [gateway ns g0]
//!  client ns c1 c0 10.99.0.101 ──┼─ br0 [wan ns] ──┼── wan0 10.99.0.2 [gateway ns g1]
//!                                │                 └── wan0 10.99.0.3 [gateway ns g2]
//!
//!  [g0] tgt0 10.88.0.1 ──┐
//!  [g1] tgt0 10.88.0.2 ──┼─ br0 [lan ns] ── eth0 10.88.0.10, 10.88.0.20 [private ns]
//!  [g2] tgt0 10.88.0.3 ──┘
//!
//!  [g0] db0 10.55.0.1 ──┐
//!  [g1] db0 10.55.0.2 ──┼─ br0 [db ns] ── eth0 10.55.0.100 [db_host ns: PostgreSQL, db "cvpn"]
//!  [g2] db0 10.55.0.3 ──┘
//! ```
//!
//! Node `N` is gateway namespace `gateways[N]`, named `gN` among the database's nodes, with
//! its configuration in `cvpn-gN.toml` and its data directory `gN` in [`ClusterNet::dir`].
//! Clients reach the nodes' public addresses only: they have no route to the private or the
//! database network. The private hosts have no route back to the clients (the gateways SNAT to
//! their own `tgt0` address). The gateways do not forward in the kernel (`ip_forward` stays 0,
//! as on [`EndpointNet`](crate::gateway::EndpointNet)'s gateway): the data plane does.
//!
//! The database network 10.55.0.0/24 is apart from the client CIDRs the suites use
//! (10.77.0.0/22 and the like), so a node's routes never mix the two.
//!
//! All addresses live inside the namespaces; everything is removed on drop.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    gateway::{StoreDaemon, TempDir},
    pki::{write, Ca},
    postgres::PostgresServer,
    sh, veth, Netns,
};

/// The database network (`db0` on the nodes).
pub const DATABASE_NETWORK: &str = "10.55.0.0/24";
/// The database host's address, where PostgreSQL listens.
pub const DATABASE_HOST: Ipv4Addr = Ipv4Addr::new(10, 55, 0, 100);
/// The client CIDR of the endpoints [`ClusterNet::create_endpoint`] makes.
pub const CLIENT_CIDR: &str = "10.66.0.0/22";
/// The private hosts (on `eth0` of [`ClusterNet::private`]).
pub const PRIVATE_HOSTS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(10, 88, 0, 10), Ipv4Addr::new(10, 88, 0, 20)];

/// The cluster network. See the [module documentation](self).
pub struct ClusterNet {
    /// The nodes' namespaces: `wan0` (public), `tgt0` (private network), `db0` (database).
    pub gateways: Vec<Netns>,
    /// The clients' namespaces: `c0` on the public network.
    pub clients: Vec<Netns>,
    /// The private hosts' namespace: `eth0` with 10.88.0.10 and 10.88.0.20.
    pub private: Netns,
    /// The database server, in the database host's namespace, with database `cvpn` made.
    /// Declared before that namespace: it is stopped from inside it on drop.
    pub pg: PostgresServer,
    /// Configuration files and the nodes' data directories (`gN`).
    pub dir: TempDir,
    /// The CA of server and client certificates.
    pub ca: Ca,
    db_host: Netns,
    // The switches: kept for their bridges (and `db` for cutting a node off).
    _wan: Netns,
    _lan: Netns,
    db: Netns,
}

/// `br0` in `ns`, up, forwarding at once (no STP).
fn bridge(ns: &Netns) -> Result<()> {
    ns.ip("link add br0 type bridge forward_delay 0 stp_state 0")?;
    ns.ip("link set br0 up")?;
    Ok(())
}

/// Waits (at most 5 s) until `ready` holds, which says why not.
fn wait_until(mut ready: impl FnMut() -> Result<(), String>) -> Result<()> {
    let start = Instant::now();
    loop {
        match ready() {
            Ok(()) => return Ok(()),
            Err(why) if start.elapsed() > Duration::from_secs(5) => bail!("{why} after 5 s"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The `bridge link` lines of `switch`'s ports, or of port `port` only.
fn bridge_ports(switch: &Netns, port: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("bridge");
    cmd.args(["-n", switch.name(), "link", "show"]);
    if let Some(p) = port {
        cmd.args(["dev", p]);
    }
    let out = sh(&mut cmd).map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `ip -o link` line of `host`'s `dev`.
fn link_line(host: &Netns, dev: &str) -> Result<String, String> {
    let out = host
        .ip(&format!("-o link show dev {dev}"))
        .map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `host`'s `dev` has its carrier (the peer on the switch is up).
fn has_carrier(host: &Netns, dev: &str) -> Result<bool, String> {
    Ok(link_line(host, dev)?.contains("LOWER_UP"))
}

/// A veth from `host` (`host_if`, with `addr`) to a port `port` of the bridge in `switch`.
fn plug(switch: &Netns, port: &str, host: &Netns, host_if: &str, addr: &str) -> Result<()> {
    veth(switch, port, host, host_if)?;
    switch.ip(&format!("link set {port} master br0"))?;
    host.ip(&format!("addr add {addr}/24 dev {host_if}"))?;
    Ok(())
}

impl ClusterNet {
    /// `nodes` gateway namespaces and `clients` client namespaces, wired as in the [module
    /// documentation](self), with PostgreSQL running and database `cvpn` created. No daemon
    /// runs yet: see [`ClusterNet::start_node`].
    pub fn new(nodes: usize, clients: usize) -> Result<ClusterNet> {
        ensure!(
            (1..=99).contains(&nodes),
            "1 to 99 nodes (10.99.0.1 to 10.99.0.99), not {nodes}"
        );
        ensure!(
            clients <= 100,
            "at most 100 clients (10.99.0.100 to 10.99.0.199), not {clients}"
        );
        let wan = Netns::new("wan")?;
        let lan = Netns::new("lan")?;
        let db = Netns::new("db")?;
        for switch in [&wan, &lan, &db] {
            bridge(switch)?;
        }
        let mut gateways = Vec::new();
        for n in 0..nodes {
            let g = Netns::new(&format!("g{n}"))?;
            let port = format!("g{n}");
            plug(&wan, &port, &g, "wan0", &Self::node_wan(n))?;
            plug(&lan, &port, &g, "tgt0", &Self::node_target(n))?;
            plug(&db, &port, &g, "db0", &Self::node_database(n))?;
            gateways.push(g);
        }
        let mut cs = Vec::new();
        for i in 0..clients {
            let c = Netns::new(&format!("c{i}"))?;
            plug(&wan, &format!("c{i}"), &c, "c0", &Self::client_addr(i))?;
            cs.push(c);
        }
        let private = Netns::new("priv")?;
        plug(&lan, "p0", &private, "eth0", &PRIVATE_HOSTS[0].to_string())?;
        for host in &PRIVATE_HOSTS[1..] {
            private.ip(&format!("addr add {host}/24 dev eth0"))?;
        }
        let db_host = Netns::new("dbh")?;
        plug(&db, "h0", &db_host, "eth0", &DATABASE_HOST.to_string())?;
        let pg = PostgresServer::start_in_for_network(
            &db_host,
            &DATABASE_HOST.to_string(),
            DATABASE_NETWORK,
        )
        .context("starting PostgreSQL on the database network")?;
        pg.create_database("cvpn")?;
        // Ports come up asynchronously (the kernel's link watch): wait until the switches
        // forward on every port and every host has its carrier, so that first packets are not
        // lost.
        for switch in [&wan, &lan, &db] {
            wait_until(|| {
                let ports = bridge_ports(switch, None)?;
                match ports.lines().find(|l| !l.contains("state forwarding")) {
                    Some(l) => Err(format!("port not forwarding in {}: {l}", switch.name())),
                    None => Ok(()),
                }
            })?;
        }
        let hosts = gateways
            .iter()
            .flat_map(|g| [(g, "wan0"), (g, "tgt0"), (g, "db0")])
            .chain(cs.iter().map(|c| (c, "c0")))
            .chain([(&private, "eth0"), (&db_host, "eth0")]);
        for (host, dev) in hosts {
            wait_until(|| {
                if has_carrier(host, dev)? {
                    Ok(())
                } else {
                    Err(format!("no carrier on {dev} in {}", host.name()))
                }
            })?;
        }
        Ok(ClusterNet {
            gateways,
            clients: cs,
            private,
            pg,
            dir: TempDir::new("cl")?,
            ca: Ca::new("cvpn test CA")?,
            db_host,
            _wan: wan,
            _lan: lan,
            db,
        })
    }

    /// Node `n`'s public address (`wan0`): where clients connect, its `public_host` and
    /// `listen_address`.
    pub fn node_wan(n: usize) -> String {
        format!("10.99.0.{}", n + 1)
    }

    /// Node `n`'s address on the private network (`tgt0`), which it SNATs clients' packets to.
    pub fn node_target(n: usize) -> String {
        format!("10.88.0.{}", n + 1)
    }

    /// Node `n`'s address on the database network (`db0`).
    pub fn node_database(n: usize) -> String {
        format!("10.55.0.{}", n + 1)
    }

    /// Client `i`'s address (`c0` in `clients[i]`).
    pub fn client_addr(i: usize) -> String {
        format!("10.99.0.{}", 100 + i)
    }

    /// PostgreSQL's address and port, as the nodes reach it.
    pub fn database_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(DATABASE_HOST, self.pg.port()))
    }

    /// The URL of the cluster's database (`database = …` of every node).
    pub fn database_url(&self) -> String {
        self.pg.url("cvpn")
    }

    /// Node `n`'s data directory (made by [`ClusterNet::start_node`]).
    pub fn node_data_dir(&self, n: usize) -> PathBuf {
        self.dir.0.join(format!("g{n}"))
    }

    /// Writes `cvpn-gN.toml`: the cluster's database, node name `gN`, `public_host` and
    /// `listen_address` its public address, then `extra` (more keys of the daemon's
    /// configuration, not these; tables such as `[tunnel]` go here too). Returns its path.
    pub fn write_node_config(&self, n: usize, extra: &str) -> Result<PathBuf> {
        let wan = Self::node_wan(n);
        let text = format!(
            "database = {:?}\nnode_name = \"g{n}\"\npublic_host = \"{wan}\"\n\
             listen_address = \"{wan}\"\n{extra}\n",
            self.database_url()
        );
        write(&self.dir.0, &format!("cvpn-g{n}.toml"), &text)
    }

    /// Starts `cvpn serve` as node `n` in its namespace, with the configuration
    /// [`ClusterNet::write_node_config`] wrote (written now, with no extra keys, if there is
    /// none yet) and its data directory `gN` (made if missing). Returns once its API listens.
    pub fn start_node(&self, n: usize) -> Result<StoreDaemon> {
        let gateway = self
            .gateways
            .get(n)
            .with_context(|| format!("no node {n}: {} nodes", self.gateways.len()))?;
        let config = self.dir.0.join(format!("cvpn-g{n}.toml"));
        let config = if config.exists() {
            config
        } else {
            self.write_node_config(n, "")?
        };
        let data = self.node_data_dir(n);
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        StoreDaemon::start_with_config(gateway, &data, Some(&config))
            .with_context(|| format!("starting node g{n}"))
    }

    /// Cuts node `n` off the database network (`up = false`: its port on the database switch
    /// goes down; its own `db0` keeps its address and routes, and loses its carrier) or plugs
    /// it back (`up = true`). Returns once the switch port forwards again (or is disabled)
    /// and `db0` has (or has lost) its carrier. Plugging back also flushes `db0`'s neighbour
    /// cache: an address resolution begun while cut off would otherwise hold the first
    /// packets for up to a second.
    pub fn set_database_link(&self, n: usize, up: bool) -> Result<()> {
        let gateway = self
            .gateways
            .get(n)
            .with_context(|| format!("no node {n}: {} nodes", self.gateways.len()))?;
        let port = format!("g{n}");
        self.db.ip(&format!(
            "link set {port} {}",
            if up { "up" } else { "down" }
        ))?;
        let want = if up {
            "state forwarding"
        } else {
            "state disabled"
        };
        wait_until(|| {
            let line = bridge_ports(&self.db, Some(&port))?;
            if !line.contains(want) {
                return Err(format!("database switch port {port}: {line}"));
            }
            if has_carrier(gateway, "db0")? != up {
                return Err(format!("db0 of node {n}: {}", link_line(gateway, "db0")?));
            }
            Ok(())
        })?;
        if up {
            gateway.ip("neigh flush dev db0")?;
        }
        Ok(())
    }

    /// Writes a server certificate (for `vpn.example.test`), its key and the client CA as PEM
    /// files for `cvpn endpoint create`; returns their paths.
    pub fn write_server_files(&mut self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        self.ca.write_server_files(&self.dir.0)
    }

    /// Creates an endpoint through `node`'s API: client CIDR [`CLIENT_CIDR`], split tunnel, the
    /// server certificate of [`ClusterNet::write_server_files`]. Returns its id.
    pub fn create_endpoint(&mut self, node: &StoreDaemon) -> Result<String> {
        let (cert, key, ca) = self.write_server_files()?;
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let created = node.json(&[
            "endpoint",
            "create",
            "--client-cidr",
            CLIENT_CIDR,
            "--server-cert",
            &path(&cert),
            "--server-key",
            &path(&key),
            "--client-ca",
            &path(&ca),
            "--split-tunnel",
        ])?;
        created["client-vpn-endpoint-id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("endpoint create answered {created}"))
    }

    /// Associates node `n`'s `tgt0` (subnet 10.88.0.0/24) with `endpoint`, asking `through`'s
    /// API (`--node gN`).
    pub fn associate(&self, through: &StoreDaemon, endpoint: &str, n: usize) -> Result<()> {
        through.json(&[
            "network",
            "associate",
            endpoint,
            "--interface",
            "tgt0",
            "--subnet",
            "10.88.0.0/24",
            "--node",
            &format!("g{n}"),
        ])?;
        Ok(())
    }

    /// The profile of `endpoint` that `node` exports (`remote_host`: the `--remote-host` to
    /// give, if any) with a new client certificate of `user` in `groups` inline.
    pub fn client_profile(
        &mut self,
        node: &StoreDaemon,
        endpoint: &str,
        remote_host: Option<&str>,
        user: &str,
        groups: &[&str],
    ) -> Result<String> {
        let pem = self.ca.client(user, groups)?;
        let cert = write(&self.dir.0, &format!("{user}.crt"), &pem.cert)?;
        let key = write(&self.dir.0, &format!("{user}.key"), &pem.key)?;
        let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
        let mut args = vec!["config", "export", endpoint, "--cert", &cert, "--key", &key];
        if let Some(h) = remote_host {
            args.extend(["--remote-host", h]);
        }
        let out = node.cli(&args)?;
        ensure!(out.code == 0, "config export failed: {out:?}");
        Ok(out.stdout)
    }

    /// The database host's namespace (PostgreSQL's; `eth0` 10.55.0.100).
    pub fn database_host(&self) -> &Netns {
        &self.db_host
    }
}
