//! The data-plane test topology:
//!
//! ```text
//!  client ns 1..n            gateway ns                               private ns
//!  tun0 10.77.0.(10+i) ─relay─▶ cvpn0 (TUN) ─client_ingress─▶ tgt0 10.88.0.1 ──veth── eth0 10.88.0.10
//!                        ◀relay─        ◀────target_ingress───                          10.88.0.20
//! ```
//!
//! The relay is a plain copy loop (no crypto) standing in for the data channel.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use gateway::{
    dataplane::{ClientLink, DataPlane, DataPlaneConfig, NatTimeouts, ReturnPath, TargetSpec},
    tun::Tun,
};

use crate::{veth, Netns};

pub const GATEWAY_TUN: &str = "cvpn0";
pub const TARGET_IF: &str = "tgt0";
pub const TARGET_ID: u32 = 1;
pub const GATEWAY_TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const PRIVATE_HOST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
pub const PRIVATE_HOST_2: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 20);
pub const PRIVATE_NET: &str = "10.88.0.0/24";

pub fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i as u8)
}

/// Copies packets between client TUN devices and the gateway's TUN until dropped.
pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub to_gateway: Arc<AtomicU64>,
    pub to_clients: Arc<AtomicU64>,
}

fn readable(fd: i32, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Ethernet header the relay puts in front of packets for a TAP gateway device (the data plane
/// ignores its addresses; `bpf_redirect_neigh` writes real ones).
const TAP_HEADER: [u8; 14] = [0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];

impl Relay {
    /// Starts the copy threads. With `tap`, the gateway device is a TAP: the relay adds an
    /// Ethernet header towards it and strips it coming back (as the daemon would).
    pub fn start(gateway: Tun, clients: Vec<(Ipv4Addr, Tun)>, tap: bool) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let to_gateway = Arc::new(AtomicU64::new(0));
        let to_clients = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let mut by_addr: HashMap<[u8; 4], Tun> = HashMap::new();
        for (addr, tun) in clients {
            let up = tun.try_clone()?;
            by_addr.insert(addr.octets(), tun);
            let gw = gateway.try_clone()?;
            let (stop, count) = (stop.clone(), to_gateway.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let off = if tap { TAP_HEADER.len() } else { 0 };
                buf[..off].copy_from_slice(&TAP_HEADER[..off]);
                while !stop.load(Ordering::Relaxed) {
                    if !readable(up.as_raw_fd(), 50) {
                        continue;
                    }
                    if let Ok(n) = up.recv(&mut buf[off..]) {
                        if gw.send(&buf[..off + n]).is_ok() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        let (stop2, count) = (stop.clone(), to_clients.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                if !readable(gateway.as_raw_fd(), 50) {
                    continue;
                }
                let Ok(n) = gateway.recv(&mut buf) else {
                    continue;
                };
                let off = if tap { TAP_HEADER.len() } else { 0 };
                if tap && (n < off || buf[12..14] != [0x08, 0x00]) {
                    continue;
                }
                let pkt = &buf[off..n];
                if pkt.len() < 20 || pkt[0] >> 4 != 4 {
                    continue;
                }
                let dst = [pkt[16], pkt[17], pkt[18], pkt[19]];
                if let Some(tun) = by_addr.get(&dst) {
                    if tun.send(pkt).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
        Ok(Relay {
            stop,
            threads,
            to_gateway,
            to_clients,
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Debug)]
pub struct TopologyOptions {
    pub clients: usize,
    pub nat_timeouts: NatTimeouts,
    pub nat_table_size: u32,
    /// The gateway's client device: `Tun` or `Tap`.
    pub client_link: ClientLink,
    pub return_path: ReturnPath,
    /// The data plane's SNAT port range (inclusive).
    pub nat_port_range: (u16, u16),
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            clients: 1,
            nat_timeouts: NatTimeouts::default(),
            nat_table_size: 65536,
            client_link: ClientLink::Tun,
            return_path: ReturnPath::Auto,
            nat_port_range: DataPlaneConfig::default().nat_port_range,
        }
    }
}

pub struct Client {
    pub ns: Netns,
    pub addr: Ipv4Addr,
}

/// Clients, relay, gateway with the kernel data plane attached, private network. Field order
/// is drop order: relay and data plane go before the namespaces.
pub struct Topology {
    pub relay: Relay,
    pub dataplane: DataPlane,
    pub clients: Vec<Client>,
    pub private: Netns,
    pub gateway: Netns,
}

impl Topology {
    /// Builds the topology. The calling thread moves into the gateway namespace (attaching
    /// programs names interfaces there); call it from a test's own thread.
    pub fn new(opts: TopologyOptions) -> Result<Self> {
        let gateway = Netns::new("g")?;
        let private = Netns::new("p")?;
        veth(&gateway, TARGET_IF, &private, "eth0")?;
        gateway.ip(&format!(
            "addr add {GATEWAY_TARGET_ADDR}/24 dev {TARGET_IF}"
        ))?;
        private.ip(&format!("addr add {PRIVATE_HOST}/24 dev eth0"))?;
        private.ip(&format!("addr add {PRIVATE_HOST_2}/24 dev eth0"))?;

        gateway.enter()?;
        let tap = opts.client_link == ClientLink::Tap;
        let gw_tun = if tap {
            Tun::open_tap(GATEWAY_TUN)
        } else {
            Tun::open(GATEWAY_TUN)
        }
        .context("gateway TUN/TAP")?;
        gateway.ip(&format!("addr add 10.77.0.1/22 dev {GATEWAY_TUN}"))?;
        gateway.ip(&format!("link set {GATEWAY_TUN} up"))?;

        let mut clients = Vec::new();
        let mut client_tuns = Vec::new();
        for i in 1..=opts.clients {
            let ns = Netns::new(&format!("c{i}"))?;
            let tun = ns.run(|| Ok(Tun::open("tun0")?))?;
            let addr = client_addr(i);
            ns.ip(&format!("addr add {addr}/32 dev tun0"))?;
            ns.ip("link set tun0 up")?;
            ns.ip(&format!("route add {PRIVATE_NET} dev tun0 src {addr}"))?;
            client_tuns.push((addr, tun));
            clients.push(Client { ns, addr });
        }

        let mut dataplane = DataPlane::load(DataPlaneConfig {
            client_interface: Some(GATEWAY_TUN.to_string()),
            client_link: opts.client_link,
            return_path: opts.return_path,
            nat_table_size: opts.nat_table_size,
            nat_timeouts: opts.nat_timeouts,
            nat_port_range: opts.nat_port_range,
            ..DataPlaneConfig::default()
        })?;
        dataplane.add_target_network(TargetSpec {
            id: TARGET_ID,
            interface: TARGET_IF.to_string(),
            snat_addr: None,
            egress: None,
        })?;
        let relay = Relay::start(gw_tun, client_tuns, tap)?;
        Ok(Topology {
            relay,
            dataplane,
            clients,
            private,
            gateway,
        })
    }
}

/// A second endpoint on the same gateway: its own TUN, its own data plane (whose return path
/// attaches to the same target interface as the first), one client namespace and a relay.
/// Field order is drop order.
pub struct SecondEndpoint {
    pub relay: Relay,
    pub dataplane: DataPlane,
    pub client: Client,
}

impl Topology {
    /// Adds a second endpoint with TUN `tun_name`, gateway address `10.66.0.1/22`, one client
    /// `10.66.0.10`, and SNAT ports `nat_port_range`. Call it on the thread that built the
    /// topology (it is inside the gateway namespace).
    pub fn second_endpoint(
        &self,
        tun_name: &str,
        nat_port_range: (u16, u16),
    ) -> Result<SecondEndpoint> {
        let gw_tun = Tun::open(tun_name).context("second gateway TUN")?;
        self.gateway
            .ip(&format!("addr add 10.66.0.1/22 dev {tun_name}"))?;
        self.gateway.ip(&format!("link set {tun_name} up"))?;
        let addr = Ipv4Addr::new(10, 66, 0, 10);
        let ns = Netns::new("c2e")?;
        let tun = ns.run(|| Ok(Tun::open("tun0")?))?;
        ns.ip(&format!("addr add {addr}/32 dev tun0"))?;
        ns.ip("link set tun0 up")?;
        ns.ip(&format!("route add {PRIVATE_NET} dev tun0 src {addr}"))?;
        let mut dataplane = DataPlane::load(DataPlaneConfig {
            client_interface: Some(tun_name.to_string()),
            nat_port_range,
            ..DataPlaneConfig::default()
        })?;
        dataplane.add_target_network(TargetSpec {
            id: TARGET_ID,
            interface: TARGET_IF.to_string(),
            snat_addr: None,
            egress: None,
        })?;
        let relay = Relay::start(gw_tun, vec![(addr, tun)], false)?;
        Ok(SecondEndpoint {
            relay,
            dataplane,
            client: Client { ns, addr },
        })
    }
}
