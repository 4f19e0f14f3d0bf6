//! The kernel data plane, seen from userspace: loads and attaches the programs of
//! `gateway-ebpf`, and offers the typed API the rest of the daemon drives — sessions, the policy
//! (authorization rules and routes, replaced atomically), target networks, counters, flow events
//! and NAT expiry.

pub mod policy;

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        RingBuf,
    },
    programs::{
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        xdp::XdpLinkId,
        ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use gateway_common::{
    AuthEntry, Counter, FlowEvent, GatewayConfig, NatForward, NatKey, NatReverse, PortRuleSet,
    RouteEntry, Session, SessionStats, TargetNetwork, COUNTER_COUNT, DEFAULT_NAT_PORT_MAX,
    DEFAULT_NAT_PORT_MIN, DEFAULT_NAT_SESSION_CAP, EGRESS_RULES_PER_TARGET, EVENT_DENIED,
    EVENT_NAT_FULL, EVENT_NO_ROUTE, EVENT_SECURITY_GROUP, EVENT_UNKNOWN_SOURCE, IPPROTO_ICMP,
    IPPROTO_TCP, IPPROTO_UDP, NAT_FLAG_TCP_CLOSING,
};
use policy::{compile_routes, compile_rules, group_set, GroupInterner, Policy, Prefix};
use tracing::{debug, info, warn};

/// The kernel object built by `cargo xtask build-ebpf` (see build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("CVPN_EBPF_OBJECT"));

const PROG_CLIENT: &str = "client_ingress";
const PROG_TARGET: &str = "target_ingress";
const PROG_TARGET_XDP: &str = "target_xdp";

/// Errors of the data plane. Each says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("the data plane needs root (CAP_BPF and CAP_NET_ADMIN): run cvpn as root")]
    NotRoot,
    #[error("the kernel refused the cvpn programs or maps: {0}. cvpn needs Linux 5.15 or later with BPF LPM tries, ring buffers and TC (TCX or clsact)")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel refused program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach {program} to interface {interface}: {detail}")]
    Attach {
        program: &'static str,
        interface: String,
        detail: String,
    },
    #[error("interface {0:?} does not exist on this host (see `ip link`)")]
    NoSuchInterface(String),
    #[error("interface {0:?} has no IPv4 address to SNAT to: give it one (`ip addr add`) or set the SNAT address explicitly")]
    NoSnatAddress(String),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the policy names {wanted} distinct groups; rules can reference at most {max} groups at once")]
    TooManyGroups { wanted: usize, max: usize },
    #[error("the rules for {destination} name {wanted} distinct protocol and port ranges; at most {max} per destination")]
    TooManyPortRules {
        destination: String,
        wanted: usize,
        max: usize,
    },
    #[error("more than {max} destinations have rules limited to ports; merge some")]
    TooManyPortRuleSets { max: usize },
    #[error("the security groups of a target network have {wanted} egress rules together; at most {max}")]
    TooManyEgressRules { wanted: usize, max: usize },
    #[error("no target network with id {0}")]
    UnknownTarget(u32),
    #[error("target network id {0} is already in use")]
    TargetExists(u32),
    #[error("a session with client address {0} is already active")]
    SessionExists(Ipv4Addr),
    #[error("no session with client address {0}")]
    NoSession(Ipv4Addr),
    #[error("the kernel object lacks map {0}: rebuild it with `cargo xtask build-ebpf`")]
    MissingMap(&'static str),
    #[error("route to {destination} names target network {target}, which is not attached")]
    RouteToUnknownTarget { destination: String, target: u32 },
    #[error("the SNAT port range {min}-{max} is empty or includes port 0: give a range such as {DEFAULT_NAT_PORT_MIN}-{DEFAULT_NAT_PORT_MAX}")]
    BadSnatRange { min: u16, max: u16 },
    #[error("the SNAT port range {min}-{max} overlaps the kernel's local port range {local_min}-{local_max} (net.ipv4.ip_local_port_range): the host's own connections could collide with clients' flows. Choose an SNAT range outside it, or move the local range away, e.g. `sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"` with the default SNAT range {DEFAULT_NAT_PORT_MIN}-{DEFAULT_NAT_PORT_MAX}")]
    SnatRangeOverlapsLocalPorts {
        min: u16,
        max: u16,
        local_min: u16,
        local_max: u16,
    },
    #[error("another endpoint's data plane already SNATs to {addr} with ports {other_min}-{other_max}, which overlap this one's {min}-{max}: its replies could reach the wrong endpoint's clients. Give each endpoint sharing a target interface its own SNAT port range")]
    SnatPortsShared {
        addr: Ipv4Addr,
        min: u16,
        max: u16,
        other_min: u16,
        other_max: u16,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataPlaneError {
    move |source| DataPlaneError::Map { map, source }
}

/// What carries client packets into the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientLink {
    /// A TUN device: packets start at the IP header.
    Tun,
    /// A TAP device read and written by the daemon: frames with an Ethernet header the daemon
    /// adds and strips. Unlike a TUN it takes XDP frames, so the return path can run in XDP.
    Tap,
    /// An Ethernet device with real hosts behind it (veth): fixtures and the benchmark.
    Ethernet,
}

impl ClientLink {
    fn code(self) -> u32 {
        match self {
            ClientLink::Tun => gateway_common::CLIENT_LINK_TUN,
            ClientLink::Ethernet => gateway_common::CLIENT_LINK_ETHERNET,
            ClientLink::Tap => gateway_common::CLIENT_LINK_TAP,
        }
    }
}

/// How return traffic from target networks is taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnPath {
    /// With a TAP client device: XDP in driver mode where the target interface's driver
    /// supports it, else TC. With a TUN always TC: Linux TUN devices take no XDP frames (an XDP
    /// redirect into one fails with EOPNOTSUPP). With an Ethernet client link always TC: XDP
    /// would need the clients' MAC addresses.
    Auto,
    /// XDP in driver mode; an error when the driver lacks it or the client device is no TAP.
    Xdp,
    /// TC ingress (TCX, or clsact).
    Tc,
}

/// Idle timeouts of NAT entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatTimeouts {
    pub tcp: Duration,
    /// After a FIN or RST was seen in either direction.
    pub tcp_closing: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Default for NatTimeouts {
    fn default() -> Self {
        NatTimeouts {
            tcp: Duration::from_secs(7440),
            // Covers the remote side's TIME_WAIT (60 s on Linux), as conntrack does: a port
            // reused sooner can meet the old connection there and be reset.
            tcp_closing: Duration::from_secs(120),
            udp: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
        }
    }
}

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct DataPlaneConfig {
    /// The device client packets arrive on; `None` loads without attaching (fixtures).
    pub client_interface: Option<String>,
    pub client_link: ClientLink,
    /// Entries of each NAT table (forward and reverse).
    pub nat_table_size: u32,
    pub max_sessions: u32,
    /// SNAT ports (inclusive). Must not overlap the kernel's local port range
    /// (`net.ipv4.ip_local_port_range`, checked at load): the host's own sockets take their
    /// ports from there, and a client flow holding one of them would receive the host's replies.
    /// A client's own port is kept only when it lies in this range. Data planes sharing an SNAT
    /// address (endpoints on one target interface) need disjoint ranges.
    pub nat_port_range: (u16, u16),
    /// NAT entries one session may hold at once: a client spraying ports is refused new flows
    /// (counted as NAT full) instead of filling the table for everyone.
    pub nat_entries_per_session: u32,
    pub nat_timeouts: NatTimeouts,
    pub return_path: ReturnPath,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            client_interface: None,
            client_link: ClientLink::Tun,
            nat_table_size: 262_144,
            max_sessions: 65_536,
            nat_port_range: (DEFAULT_NAT_PORT_MIN, DEFAULT_NAT_PORT_MAX),
            nat_entries_per_session: DEFAULT_NAT_SESSION_CAP,
            nat_timeouts: NatTimeouts::default(),
            return_path: ReturnPath::Auto,
        }
    }
}

// re-export: the types live in model
pub use crate::model::policy::EgressRule;
pub use crate::model::{SessionCounters, TargetSpec};

/// Global counters, summed over CPUs, by [`Counter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters(pub BTreeMap<&'static str, u64>);

impl GlobalCounters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(c.name()).copied().unwrap_or(0)
    }
}

/// What a flow event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEventKind {
    Denied,
    NoRoute,
    UnknownSource,
    NatFull,
    /// Authorized and routed, but the target network's security groups refused it.
    SecurityGroup,
    Other(u32),
}

impl FlowEventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FlowEventKind::Denied => "denied",
            FlowEventKind::NoRoute => "no-route",
            FlowEventKind::UnknownSource => "unknown-source",
            FlowEventKind::NatFull => "nat-table-full",
            FlowEventKind::SecurityGroup => "security-group-denied",
            FlowEventKind::Other(_) => "unknown",
        }
    }
}

/// A decoded flow event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEventRecord {
    pub kind: FlowEventKind,
    pub session_id: u64,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    /// CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
}

impl FlowEventRecord {
    fn decode(raw: &[u8]) -> Option<Self> {
        if raw.len() < std::mem::size_of::<FlowEvent>() {
            return None;
        }
        // SAFETY: length checked; FlowEvent is plain data; read_unaligned tolerates alignment.
        let e: FlowEvent = unsafe { std::ptr::read_unaligned(raw.as_ptr() as *const FlowEvent) };
        let kind = match e.kind {
            EVENT_DENIED => FlowEventKind::Denied,
            EVENT_NO_ROUTE => FlowEventKind::NoRoute,
            EVENT_UNKNOWN_SOURCE => FlowEventKind::UnknownSource,
            EVENT_NAT_FULL => FlowEventKind::NatFull,
            EVENT_SECURITY_GROUP => FlowEventKind::SecurityGroup,
            other => FlowEventKind::Other(other),
        };
        Some(FlowEventRecord {
            kind,
            session_id: e.session_id,
            protocol: e.proto,
            src: Ipv4Addr::from(e.src_addr),
            src_port: e.src_port,
            dst: Ipv4Addr::from(e.dst_addr),
            dst_port: e.dst_port,
            timestamp_ns: e.timestamp_ns,
        })
    }
}

/// The ring buffer of flow events, taken out of the data plane so a reader thread or task can
/// own it. The raw fd is pollable (readable when events are waiting).
pub struct FlowEvents {
    ring: RingBuf<MapData>,
}

impl FlowEvents {
    /// Drains every event waiting now.
    pub fn drain(&mut self) -> Vec<FlowEventRecord> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(rec) = FlowEventRecord::decode(&item) {
                out.push(rec);
            }
        }
        out
    }

    /// Waits up to `timeout` for events, then drains.
    pub fn wait(&mut self, timeout: Duration) -> Vec<FlowEventRecord> {
        let first = self.drain();
        if !first.is_empty() {
            return first;
        }
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        self.drain()
    }
}

impl AsRawFd for FlowEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// One NAT translation, as listed for operators and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatEntry {
    pub protocol: u8,
    pub client: (Ipv4Addr, u16),
    pub snat: (Ipv4Addr, u16),
    pub remote: (Ipv4Addr, u16),
    pub closing: bool,
    /// Since the last packet in either direction.
    pub idle: Duration,
}

/// Result of a NAT expiry pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatGcReport {
    pub expired: usize,
    /// Entries of sessions that ended.
    pub orphaned: usize,
    pub remaining: usize,
}

/// The result of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug)]
pub struct TestRunOutput {
    pub verdict: i32,
    pub packet: Vec<u8>,
    pub duration: Duration,
}

/// Which program a fixture runs.
#[derive(Clone, Copy, Debug)]
pub enum ProgramKind {
    ClientIngress,
    TargetIngress,
    TargetXdp,
}

/// How the return-path program is attached to one target interface.
#[derive(Debug)]
enum TargetLink {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

/// Where return traffic of a target interface is handled (reported to operators).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnHook {
    XdpDriver,
    Tc,
}

struct SessionState {
    session_id: u64,
    groups: Vec<String>,
}

struct TargetState {
    interface: String,
    snat_addr: Ipv4Addr,
    ifindex: u32,
    egress: Option<Vec<EgressRule>>,
}

/// The kernel's value of a target network: where it is, and its security groups' egress
/// rules (none: AWS's default group, everything may leave).
fn target_value(
    ifindex: u32,
    snat_addr: Ipv4Addr,
    egress: Option<&[EgressRule]>,
) -> Result<TargetNetwork, DataPlaneError> {
    let mut t = TargetNetwork {
        ifindex,
        snat_addr: snat_addr.octets(),
        ..TargetNetwork::default()
    };
    if let Some(rules) = egress {
        if rules.len() > EGRESS_RULES_PER_TARGET {
            return Err(DataPlaneError::TooManyEgressRules {
                wanted: rules.len(),
                max: EGRESS_RULES_PER_TARGET,
            });
        }
        t.egress_limited = 1;
        t.egress_count = rules.len() as u32;
        for (slot, r) in t.egress.iter_mut().zip(rules) {
            *slot = gateway_common::EgressRule {
                protocol: r.protocol.unwrap_or(0),
                _pad: [0; 3],
                from_port: r.from_port,
                to_port: r.to_port,
                net: r.destination.network().octets(),
                mask: r.destination.netmask().octets(),
            };
        }
    }
    Ok(t)
}

type AuthTrie = LpmTrie<MapData, [u8; 4], AuthEntry>;
type RouteTrie = LpmTrie<MapData, [u8; 4], RouteEntry>;

/// The loaded data plane. Dropping it detaches every program.
pub struct DataPlane {
    ebpf: Ebpf,
    config: DataPlaneConfig,
    sessions_map: BpfHashMap<MapData, [u8; 4], Session>,
    stats_map: PerCpuHashMap<MapData, [u8; 4], SessionStats>,
    auth: [AuthTrie; 2],
    /// `PORT_RULES_0` / `PORT_RULES_1`: the port-limited rules of each slot.
    port_rules: [Array<MapData, PortRuleSet>; 2],
    routes: [RouteTrie; 2],
    slot_map: Array<MapData, u32>,
    targets_map: BpfHashMap<MapData, u32, TargetNetwork>,
    nat_fwd: BpfHashMap<MapData, NatKey, NatForward>,
    nat_rev: BpfHashMap<MapData, NatKey, NatReverse>,
    /// NAT entries each session created (kernel) and released (daemon): see `gateway_common`.
    nat_created: BpfHashMap<MapData, [u8; 4], u64>,
    nat_released: BpfHashMap<MapData, [u8; 4], u64>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<FlowEvents>,
    // Mirrors of what the kernel holds, so updates write only differences.
    slot: u32,
    slot_auth: [BTreeMap<Prefix, AuthEntry>; 2],
    slot_port_rules: [Vec<PortRuleSet>; 2],
    slot_routes: [BTreeMap<Prefix, RouteEntry>; 2],
    policy: Policy,
    groups: GroupInterner,
    sessions: HashMap<Ipv4Addr, SessionState>,
    targets: HashMap<u32, TargetState>,
    /// Interface -> (link, number of target networks using it).
    target_links: HashMap<String, (TargetLink, usize)>,
    client_link: Option<SchedClassifierLinkId>,
    nr_cpus: usize,
    /// This data plane's key in [`SNAT_CLAIMS`], and the network namespace it was loaded in.
    id: u64,
    netns: u64,
}

/// SNAT port ranges of the data planes of this process, by network namespace and SNAT address:
/// (data plane, namespace, address, min, max). Two data planes (endpoints) on one target
/// interface SNAT to the same address and keep separate NAT tables, so a port both handed out
/// would send one endpoint's replies to the other's client (the first program in the chain
/// would match). Overlaps are refused. (Data planes of other processes are not seen.)
static SNAT_CLAIMS: Mutex<Vec<SnatClaim>> = Mutex::new(Vec::new());
type SnatClaim = (u64, u64, Ipv4Addr, u16, u16);
static NEXT_DATAPLANE_ID: AtomicU64 = AtomicU64::new(1);

/// The calling thread's network namespace (its inode number; 0 when unknown).
fn current_netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Claims `min..=max` on `addr` in namespace `netns` for data plane `id`, unless another data
/// plane holds an overlapping range on the same address there.
fn claim_snat_ports(
    id: u64,
    netns: u64,
    addr: Ipv4Addr,
    min: u16,
    max: u16,
) -> Result<(), DataPlaneError> {
    let mut claims = SNAT_CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(.., other_min, other_max)) = claims.iter().find(|(owner, ns, a, lo, hi)| {
        *owner != id && *ns == netns && *a == addr && *lo <= max && min <= *hi
    }) {
        return Err(DataPlaneError::SnatPortsShared {
            addr,
            min,
            max,
            other_min,
            other_max,
        });
    }
    if !claims
        .iter()
        .any(|(owner, _, a, ..)| *owner == id && *a == addr)
    {
        claims.push((id, netns, addr, min, max));
    }
    Ok(())
}

/// Gives up data plane `id`'s claim on `addr` (all of its claims with `None`).
fn release_snat_ports(id: u64, addr: Option<Ipv4Addr>) {
    let mut claims = SNAT_CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    claims.retain(|(owner, _, a, ..)| !(*owner == id && addr.is_none_or(|x| x == *a)));
}

/// The kernel's local port range (`net.ipv4.ip_local_port_range`) of the calling thread's
/// network namespace.
pub fn kernel_local_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// Checks an SNAT port range: not empty, no port 0, disjoint from the local port range.
pub fn check_snat_range(
    (min, max): (u16, u16),
    local: Option<(u16, u16)>,
) -> Result<(), DataPlaneError> {
    if min == 0 || max < min {
        return Err(DataPlaneError::BadSnatRange { min, max });
    }
    if let Some((local_min, local_max)) = local {
        if min <= local_max && local_min <= max {
            return Err(DataPlaneError::SnatRangeOverlapsLocalPorts {
                min,
                max,
                local_min,
                local_max,
            });
        }
    }
    Ok(())
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataPlaneError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataPlaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// The first IPv4 address of an interface.
pub fn interface_ipv4(interface: &str) -> Option<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.interface_name != interface {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Some(sin.ip());
        }
    }
    None
}

/// The IPv4 network (address and prefix) of an interface's first IPv4 address.
pub fn interface_ipv4_network(interface: &str) -> Option<ipnet::Ipv4Net> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.interface_name != interface {
            continue;
        }
        let (Some(addr), Some(mask)) = (
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .map(|s| s.ip()),
            a.netmask
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .map(|s| s.ip()),
        ) else {
            continue;
        };
        let prefix = u32::from(mask).leading_ones() as u8;
        return ipnet::Ipv4Net::new(addr, prefix).ok().map(|n| n.trunc());
    }
    None
}

/// The kernel driver of an interface (`ethtool -i`), if it says.
pub fn interface_driver(interface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    if interface.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..interface.len()].copy_from_slice(interface.as_bytes());
    // SAFETY: a datagram socket only for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL reads the ifreq and writes the drvinfo it points to; both live on
    // this stack frame for the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return None;
    }
    let end = info
        .driver
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

pub fn interface_index(interface: &str) -> Result<u32, DataPlaneError> {
    nix::net::if_::if_nametoindex(interface)
        .map_err(|_| DataPlaneError::NoSuchInterface(interface.to_string()))
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl DataPlane {
    /// Loads the programs and maps; attaches the client program when the config names an
    /// interface.
    pub fn load(config: DataPlaneConfig) -> Result<Self, DataPlaneError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(DataPlaneError::NotRoot);
        }
        let local = kernel_local_port_range();
        if local.is_none() {
            warn!("cannot read net.ipv4.ip_local_port_range: the SNAT port range is not checked against it");
        }
        check_snat_range(config.nat_port_range, local)?;
        let link = config.client_link.code();
        let mut ebpf = EbpfLoader::new()
            .override_global("CLIENT_LINK", &link, true)
            .map_max_entries("NAT_FWD", config.nat_table_size)
            .map_max_entries("NAT_REV", config.nat_table_size)
            .map_max_entries("SESSIONS", config.max_sessions)
            .map_max_entries("SESSION_STATS", config.max_sessions)
            .map_max_entries("NAT_CREATED", config.max_sessions)
            .map_max_entries("NAT_RELEASED", config.max_sessions)
            .load(EBPF_OBJECT)
            .map_err(DataPlaneError::Load)?;
        for program in [PROG_CLIENT, PROG_TARGET] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(program)
                .ok_or(DataPlaneError::Program {
                    program,
                    source: ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(|source| DataPlaneError::Program { program, source })?;
            prog.load()
                .map_err(|source| DataPlaneError::Program { program, source })?;
        }
        let program = PROG_TARGET_XDP;
        let xdp: &mut Xdp = ebpf
            .program_mut(program)
            .ok_or(DataPlaneError::Program {
                program,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DataPlaneError::Program { program, source })?;
        xdp.load()
            .map_err(|source| DataPlaneError::Program { program, source })?;
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| {
            DataPlaneError::Load(aya::EbpfError::FileError {
                path: "/sys/devices/system/cpu/possible".into(),
                error: e,
            })
        })?;
        let mut dp = DataPlane {
            sessions_map: take(&mut ebpf, "SESSIONS")?,
            stats_map: take(&mut ebpf, "SESSION_STATS")?,
            auth: [take(&mut ebpf, "AUTH_0")?, take(&mut ebpf, "AUTH_1")?],
            port_rules: [
                take(&mut ebpf, "PORT_RULES_0")?,
                take(&mut ebpf, "PORT_RULES_1")?,
            ],
            routes: [take(&mut ebpf, "ROUTE_0")?, take(&mut ebpf, "ROUTE_1")?],
            slot_map: take(&mut ebpf, "POLICY_SLOT")?,
            targets_map: take(&mut ebpf, "TARGETS")?,
            nat_fwd: take(&mut ebpf, "NAT_FWD")?,
            nat_rev: take(&mut ebpf, "NAT_REV")?,
            nat_created: take(&mut ebpf, "NAT_CREATED")?,
            nat_released: take(&mut ebpf, "NAT_RELEASED")?,
            counters: take(&mut ebpf, "COUNTERS")?,
            events: Some(FlowEvents {
                ring: take(&mut ebpf, "EVENTS")?,
            }),
            ebpf,
            slot: 0,
            slot_auth: [BTreeMap::new(), BTreeMap::new()],
            slot_port_rules: [Vec::new(), Vec::new()],
            slot_routes: [BTreeMap::new(), BTreeMap::new()],
            policy: Policy::default(),
            groups: GroupInterner::default(),
            sessions: HashMap::new(),
            targets: HashMap::new(),
            target_links: HashMap::new(),
            client_link: None,
            nr_cpus,
            id: NEXT_DATAPLANE_ID.fetch_add(1, Ordering::Relaxed),
            netns: current_netns(),
            config,
        };
        let client_ifindex = match &dp.config.client_interface {
            Some(name) => interface_index(name)?,
            None => 0,
        };
        let cfg = GatewayConfig {
            client_ifindex,
            nat_port_min: dp.config.nat_port_range.0,
            nat_port_max: dp.config.nat_port_range.1,
            nat_session_cap: dp.config.nat_entries_per_session.max(1),
        };
        let mut config_map: Array<MapData, GatewayConfig> = take(&mut dp.ebpf, "CONFIG")?;
        config_map.set(0, cfg, 0).map_err(map_err("CONFIG"))?;
        if let Some(name) = dp.config.client_interface.clone() {
            let link = dp.attach(PROG_CLIENT, &name)?;
            dp.client_link = Some(link);
            info!(interface = %name, "client program attached");
        }
        Ok(dp)
    }

    fn classifier(
        &mut self,
        program: &'static str,
    ) -> Result<&mut SchedClassifier, DataPlaneError> {
        self.ebpf
            .program_mut(program)
            .ok_or(DataPlaneError::Program {
                program,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DataPlaneError::Program { program, source })
    }

    /// TC ingress: TCX where the kernel has it, else a clsact qdisc and a netlink filter.
    fn attach(
        &mut self,
        program: &'static str,
        interface: &str,
    ) -> Result<SchedClassifierLinkId, DataPlaneError> {
        interface_index(interface)?;
        let prog = self.classifier(program)?;
        match prog.attach(interface, TcAttachType::Ingress) {
            Ok(link) => Ok(link),
            Err(tcx_err) => {
                debug!(%interface, error = %tcx_err, "TCX attach failed; trying clsact");
                if let Err(e) = tc::qdisc_add_clsact(interface) {
                    debug!(%interface, error = %e, "clsact qdisc (may already exist)");
                }
                prog.attach_with_options(
                    interface,
                    TcAttachType::Ingress,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(|e| DataPlaneError::Attach {
                    program,
                    interface: interface.to_string(),
                    detail: format!("TCX: {tcx_err}; clsact: {e}"),
                })
            }
        }
    }

    pub fn config(&self) -> &DataPlaneConfig {
        &self.config
    }

    // ---- sessions -------------------------------------------------------------------------

    /// Registers an active session: packets from `addr` are accepted from now on, authorized
    /// by `groups`.
    pub fn add_session(
        &mut self,
        addr: Ipv4Addr,
        session_id: u64,
        groups: &[String],
    ) -> Result<(), DataPlaneError> {
        if self.sessions.contains_key(&addr) {
            return Err(DataPlaneError::SessionExists(addr));
        }
        let key = addr.octets();
        let zero = PerCpuValues::try_from(vec![SessionStats::default(); self.nr_cpus])
            .map_err(|e| map_err("SESSION_STATS")(MapError::from(e)))?;
        self.stats_map
            .insert(key, zero, 0)
            .map_err(map_err("SESSION_STATS"))?;
        // The NAT cap counts from zero for every session (without these the kernel gives the
        // session no NAT entries).
        self.nat_released
            .insert(key, 0, 0)
            .map_err(map_err("NAT_RELEASED"))?;
        self.nat_created
            .insert(key, 0, 0)
            .map_err(map_err("NAT_CREATED"))?;
        let session = Session {
            session_id,
            groups: group_set(groups, self.groups.current()),
        };
        self.sessions_map
            .insert(key, session, 0)
            .map_err(map_err("SESSIONS"))?;
        self.sessions.insert(
            addr,
            SessionState {
                session_id,
                groups: groups.to_vec(),
            },
        );
        debug!(%addr, session_id, ?groups, "session added");
        Ok(())
    }

    /// Gives a running session new groups (a directory re-check): one map write, so its next
    /// packet is judged by them, and no flow or tunnel is reset. A flow the new groups no
    /// longer allow is dropped from its next packet on (authorization runs on every packet).
    pub fn set_session_groups(
        &mut self,
        addr: Ipv4Addr,
        groups: &[String],
    ) -> Result<(), DataPlaneError> {
        let Some(state) = self.sessions.get_mut(&addr) else {
            return Err(DataPlaneError::NoSession(addr));
        };
        let session = Session {
            session_id: state.session_id,
            groups: group_set(groups, self.groups.current()),
        };
        self.sessions_map
            .insert(addr.octets(), session, 0)
            .map_err(map_err("SESSIONS"))?;
        state.groups = groups.to_vec();
        debug!(%addr, ?groups, "session groups replaced");
        Ok(())
    }

    /// Removes a session; its packets are dropped from now on, and its NAT entries are gone
    /// when this returns, so the address can be handed out again without the next session
    /// inheriting a flow. Returns its final counters.
    pub fn remove_session(
        &mut self,
        addr: Ipv4Addr,
    ) -> Result<Option<SessionCounters>, DataPlaneError> {
        let key = addr.octets();
        if self.sessions.remove(&addr).is_none() {
            return Ok(None);
        }
        // 1. No new packets (and so no new NAT entries) from the address.
        match self.sessions_map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("SESSIONS")(e)),
        }
        // 2. Its NAT entries, then its cap counters.
        let removed = self.remove_nat_of(key);
        let _ = self.nat_created.remove(&key);
        let _ = self.nat_released.remove(&key);
        let counters = self.session_counters(addr)?;
        let _ = self.stats_map.remove(&key);
        debug!(%addr, nat_entries = removed, "session removed");
        Ok(counters)
    }

    /// Deletes every NAT entry (both tables) of the client at `addr`; returns how many reverse
    /// entries went. A walk of both tables: proportional to the NAT entries held.
    fn remove_nat_of(&mut self, addr: [u8; 4]) -> usize {
        let rev: Vec<NatKey> = self
            .nat_rev
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, r)| r.client_addr == addr)
            .map(|(k, _)| k)
            .collect();
        let fwd: Vec<NatKey> = self
            .nat_fwd
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.addr == addr)
            .collect();
        for k in &rev {
            let _ = self.nat_rev.remove(k);
        }
        for k in &fwd {
            let _ = self.nat_fwd.remove(k);
        }
        rev.len()
    }

    pub fn session_counters(
        &self,
        addr: Ipv4Addr,
    ) -> Result<Option<SessionCounters>, DataPlaneError> {
        match self.stats_map.get(&addr.octets(), 0) {
            Ok(values) => {
                let mut c = SessionCounters::default();
                for v in values.iter() {
                    c.from_client_packets += v.from_client_packets;
                    c.from_client_bytes += v.from_client_bytes;
                    c.to_client_packets += v.to_client_packets;
                    c.to_client_bytes += v.to_client_bytes;
                    c.dropped_packets += v.dropped_packets;
                }
                Ok(Some(c))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("SESSION_STATS")(e)),
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    // ---- policy ---------------------------------------------------------------------------

    /// Replaces the authorization rules and routes as one unit. The new policy is written into
    /// the idle slot, then one 4-byte write makes it live: a packet sees the old policy or the
    /// new one, never a mix. Running flows are judged by the new policy from their next packet.
    pub fn replace_policy(&mut self, policy: Policy) -> Result<(), DataPlaneError> {
        for r in &policy.routes {
            if !self.targets.contains_key(&r.target) {
                return Err(DataPlaneError::RouteToUnknownTarget {
                    destination: r.destination.to_string(),
                    target: r.target,
                });
            }
        }
        let plan = self.groups.plan(&policy)?;
        let compiled = compile_rules(&policy.rules, &plan.next)?;
        let routes = compile_routes(&policy.routes);
        let idle = (1 - self.slot) as usize;

        // 1. Sessions learn bits of newly referenced groups (the live policy ignores them).
        self.rewrite_session_groups(&plan.transition)?;
        // 2. Fill the idle slot with the new entries: the port sets first, so that no entry of
        //    the slot ever names a set it does not hold yet (the slot is idle anyway).
        for (i, set) in compiled.port_sets.iter().enumerate() {
            if self.slot_port_rules[idle].get(i) != Some(set) {
                self.port_rules[idle]
                    .set(i as u32, *set, 0)
                    .map_err(map_err("PORT_RULES"))?;
            }
        }
        self.slot_port_rules[idle] = compiled.port_sets.clone();
        let auth = compiled.auth;
        sync_trie(
            &mut self.auth[idle],
            &mut self.slot_auth[idle],
            &auth,
            "AUTH",
        )?;
        sync_trie(
            &mut self.routes[idle],
            &mut self.slot_routes[idle],
            &routes,
            "ROUTE",
        )?;
        // 3. Flip.
        self.slot_map
            .set(0, idle as u32, 0)
            .map_err(map_err("POLICY_SLOT"))?;
        self.slot = idle as u32;
        // 4. Sessions drop the bits of groups no rule names any more.
        self.rewrite_session_groups(&plan.next)?;
        self.groups.commit(plan);
        info!(
            rules = policy.rules.len(),
            routes = policy.routes.len(),
            slot = idle,
            "policy applied"
        );
        self.policy = policy;
        Ok(())
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The group bits of the live policy (group name -> index into [`gateway_common::GroupSet`]),
    /// as sessions hold them in the kernel: lets tests and tools run [`policy::authorize`]
    /// against the same assignment.
    pub fn group_bits(&self) -> &HashMap<String, usize> {
        self.groups.current()
    }

    fn rewrite_session_groups(
        &mut self,
        bits: &HashMap<String, usize>,
    ) -> Result<(), DataPlaneError> {
        for (addr, s) in &self.sessions {
            let session = Session {
                session_id: s.session_id,
                groups: group_set(&s.groups, bits),
            };
            self.sessions_map
                .insert(addr.octets(), session, 0)
                .map_err(map_err("SESSIONS"))?;
        }
        Ok(())
    }

    // ---- target networks ------------------------------------------------------------------

    /// Adds a target network: attaches the return-path program to its interface (once per
    /// interface) and makes it routable.
    pub fn add_target_network(&mut self, spec: TargetSpec) -> Result<Ipv4Addr, DataPlaneError> {
        if self.targets.contains_key(&spec.id) {
            return Err(DataPlaneError::TargetExists(spec.id));
        }
        let ifindex = interface_index(&spec.interface)?;
        let snat_addr = match spec.snat_addr {
            Some(a) => a,
            None => interface_ipv4(&spec.interface)
                .ok_or_else(|| DataPlaneError::NoSnatAddress(spec.interface.clone()))?,
        };
        claim_snat_ports(
            self.id,
            self.netns,
            snat_addr,
            self.config.nat_port_range.0,
            self.config.nat_port_range.1,
        )?;
        if let Some((_, users)) = self.target_links.get_mut(&spec.interface) {
            *users += 1;
        } else {
            let link = match self.attach_return_path(&spec.interface) {
                Ok(link) => link,
                Err(e) => {
                    if !self.targets.values().any(|t| t.snat_addr == snat_addr) {
                        release_snat_ports(self.id, Some(snat_addr));
                    }
                    return Err(e);
                }
            };
            self.target_links.insert(spec.interface.clone(), (link, 1));
        }
        let value = target_value(ifindex, snat_addr, spec.egress.as_deref())?;
        self.targets_map
            .insert(spec.id, value, 0)
            .map_err(map_err("TARGETS"))?;
        self.targets.insert(
            spec.id,
            TargetState {
                interface: spec.interface.clone(),
                snat_addr,
                ifindex,
                egress: spec.egress.clone(),
            },
        );
        info!(id = spec.id, interface = %spec.interface, %snat_addr, "target network added");
        Ok(snat_addr)
    }

    /// Replaces the egress rules of a target network's security groups (`None`: no group,
    /// everything may leave): one map write, so the next packet is judged by the new rules.
    pub fn set_target_egress(
        &mut self,
        id: u32,
        egress: Option<Vec<EgressRule>>,
    ) -> Result<(), DataPlaneError> {
        let state = self
            .targets
            .get_mut(&id)
            .ok_or(DataPlaneError::UnknownTarget(id))?;
        let value = target_value(state.ifindex, state.snat_addr, egress.as_deref())?;
        self.targets_map
            .insert(id, value, 0)
            .map_err(map_err("TARGETS"))?;
        info!(
            id,
            rules = egress.as_ref().map(Vec::len),
            "target network's security groups applied"
        );
        state.egress = egress;
        Ok(())
    }

    /// The egress rules applied to a target network, if it is known.
    pub fn target_egress(&self, id: u32) -> Option<Option<&[EgressRule]>> {
        self.targets.get(&id).map(|t| t.egress.as_deref())
    }

    /// Removes a target network; routes to it stop matching (their packets count as no-route).
    pub fn remove_target_network(&mut self, id: u32) -> Result<(), DataPlaneError> {
        let state = self
            .targets
            .remove(&id)
            .ok_or(DataPlaneError::UnknownTarget(id))?;
        match self.targets_map.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("TARGETS")(e)),
        }
        let last = match self.target_links.get_mut(&state.interface) {
            Some((_, users)) => {
                *users -= 1;
                *users == 0
            }
            None => false,
        };
        if last {
            if let Some((link, _)) = self.target_links.remove(&state.interface) {
                let result = match link {
                    TargetLink::Tc(link) => self.classifier(PROG_TARGET)?.detach(link),
                    TargetLink::Xdp(link) => self.xdp_program()?.detach(link),
                };
                if let Err(e) = result {
                    warn!(interface = %state.interface, error = %e, "detach failed");
                }
            }
        }
        if !self
            .targets
            .values()
            .any(|t| t.snat_addr == state.snat_addr)
        {
            release_snat_ports(self.id, Some(state.snat_addr));
        }
        info!(id, interface = %state.interface, "target network removed");
        Ok(())
    }

    /// Attaches the return path to a target interface as configured (see [`ReturnPath`]).
    fn attach_return_path(&mut self, interface: &str) -> Result<TargetLink, DataPlaneError> {
        let tap = self.config.client_link == ClientLink::Tap;
        let want_xdp = match self.config.return_path {
            ReturnPath::Tc => false,
            ReturnPath::Xdp if !tap => {
                return Err(DataPlaneError::Attach {
                    program: PROG_TARGET_XDP,
                    interface: interface.to_string(),
                    detail: format!(
                        "the XDP return path needs a TAP client device (this one is {:?}); use the TC return path",
                        self.config.client_link
                    ),
                })
            }
            ReturnPath::Xdp => true,
            // A veth hands XDP the packets of local senders with offloaded (partial) checksums,
            // which an XDP rewrite cannot tell from complete ones: TC there.
            ReturnPath::Auto => tap && interface_driver(interface).as_deref() != Some("veth"),
        };
        if want_xdp {
            interface_index(interface)?;
            match self.xdp_program()?.attach(interface, XdpMode::Driver) {
                Ok(link) => {
                    info!(%interface, "return path: XDP (driver mode)");
                    return Ok(TargetLink::Xdp(link));
                }
                Err(e) if self.config.return_path == ReturnPath::Xdp => {
                    return Err(DataPlaneError::Attach {
                        program: PROG_TARGET_XDP,
                        interface: interface.to_string(),
                        detail: format!("XDP driver mode: {e} (an interface holds one XDP program: when another endpoint's return path is there, use the TC return path)"),
                    });
                }
                Err(e) => {
                    info!(%interface, error = %e, "no XDP driver mode here; return path: TC");
                }
            }
        }
        Ok(TargetLink::Tc(self.attach(PROG_TARGET, interface)?))
    }

    fn xdp_program(&mut self) -> Result<&mut Xdp, DataPlaneError> {
        let program = PROG_TARGET_XDP;
        self.ebpf
            .program_mut(program)
            .ok_or(DataPlaneError::Program {
                program,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DataPlaneError::Program { program, source })
    }

    /// How return traffic of `interface` is taken in, if it is a target interface.
    pub fn return_hook(&self, interface: &str) -> Option<ReturnHook> {
        self.target_links
            .get(interface)
            .map(|(link, _)| match link {
                TargetLink::Tc(_) => ReturnHook::Tc,
                TargetLink::Xdp(_) => ReturnHook::XdpDriver,
            })
    }

    pub fn target_snat_addr(&self, id: u32) -> Option<Ipv4Addr> {
        self.targets.get(&id).map(|t| t.snat_addr)
    }

    // ---- observation ----------------------------------------------------------------------

    pub fn global_counters(&self) -> Result<GlobalCounters, DataPlaneError> {
        let mut out = BTreeMap::new();
        for c in Counter::ALL {
            let values = self
                .counters
                .get(&(c as u32), 0)
                .map_err(map_err("COUNTERS"))?;
            out.insert(c.name(), values.iter().sum());
        }
        debug_assert_eq!(out.len(), COUNTER_COUNT as usize);
        Ok(GlobalCounters(out))
    }

    /// Takes the flow-event ring buffer (once) for a reader of its own.
    pub fn take_flow_events(&mut self) -> Option<FlowEvents> {
        self.events.take()
    }

    /// How many NAT entries the sessions hold now (`NAT_CREATED - NAT_RELEASED`, summed): two
    /// lookups per session, not a walk of the NAT tables (metrics read it every few seconds).
    pub fn nat_entry_count(&self) -> u64 {
        self.sessions
            .keys()
            .map(|a| {
                let key = a.octets();
                let created = self.nat_created.get(&key, 0).unwrap_or(0);
                let released = self.nat_released.get(&key, 0).unwrap_or(0);
                created.saturating_sub(released)
            })
            .sum()
    }

    /// Lists NAT translations (forward table joined with the reverse table).
    pub fn nat_entries(&self) -> Vec<NatEntry> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for item in self.nat_rev.iter() {
            let Ok((k, r)) = item else { continue };
            let fwd_key = NatKey {
                addr: r.client_addr,
                port: r.client_port,
                ..k
            };
            let fwd = self.nat_fwd.get(&fwd_key, 0).ok();
            let last = fwd.map_or(r.last_seen_ns, |f| f.last_seen_ns.max(r.last_seen_ns));
            out.push(NatEntry {
                protocol: k.proto,
                client: (Ipv4Addr::from(r.client_addr), r.client_port),
                snat: (Ipv4Addr::from(k.addr), k.port),
                remote: (Ipv4Addr::from(k.remote_addr), k.remote_port),
                closing: (r.flags | fwd.map_or(0, |f| f.flags)) & NAT_FLAG_TCP_CLOSING != 0,
                idle: Duration::from_nanos(now.saturating_sub(last)),
            });
        }
        out
    }

    fn timeout_for(&self, proto: u8, closing: bool) -> Duration {
        let t = &self.config.nat_timeouts;
        match proto {
            IPPROTO_TCP if closing => t.tcp_closing,
            IPPROTO_TCP => t.tcp,
            IPPROTO_UDP => t.udp,
            IPPROTO_ICMP => t.icmp,
            _ => t.udp,
        }
    }

    /// Deletes NAT entries idle longer than their timeout, and those of ended sessions. The
    /// daemon calls this every few seconds; the LRU tables also evict under pressure.
    pub fn expire_nat(&mut self) -> NatGcReport {
        let now = monotonic_ns();
        let mut report = NatGcReport::default();
        let mut doomed: Vec<(NatKey, NatKey, bool)> = Vec::new();
        let mut live_fwd = std::collections::HashSet::new();
        for item in self.nat_rev.iter() {
            let Ok((rev_key, r)) = item else { continue };
            let fwd_key = NatKey {
                addr: r.client_addr,
                port: r.client_port,
                ..rev_key
            };
            let fwd = self.nat_fwd.get(&fwd_key, 0).ok();
            let last = fwd.map_or(r.last_seen_ns, |f| f.last_seen_ns.max(r.last_seen_ns));
            let closing = (r.flags | fwd.map_or(0, |f| f.flags)) & NAT_FLAG_TCP_CLOSING != 0;
            let idle = Duration::from_nanos(now.saturating_sub(last));
            let orphan = !self.sessions.contains_key(&Ipv4Addr::from(r.client_addr));
            if orphan || idle > self.timeout_for(rev_key.proto, closing) {
                doomed.push((rev_key, fwd_key, orphan));
            } else {
                live_fwd.insert(fwd_key);
            }
        }
        let mut released: HashMap<[u8; 4], u64> = HashMap::new();
        for (rev_key, fwd_key, orphan) in doomed {
            // A live session's entry no longer counts against its cap.
            if self.nat_rev.remove(&rev_key).is_ok() && !orphan {
                *released.entry(fwd_key.addr).or_default() += 1;
            }
            // Only when the forward entry still points at this reverse entry.
            if let Ok(f) = self.nat_fwd.get(&fwd_key, 0) {
                if f.snat_addr == rev_key.addr && f.snat_port == rev_key.port {
                    let _ = self.nat_fwd.remove(&fwd_key);
                }
            }
            if orphan {
                report.orphaned += 1;
            } else {
                report.expired += 1;
            }
        }
        // Forward entries without a reverse entry (LRU evicted it) are useless: drop them. The
        // kernel keeps creating flows while this runs, so decide on what the maps hold now:
        // the entry's reverse entry must be missing and the entry itself idle.
        let stray: Vec<NatKey> = self
            .nat_fwd
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, f)| {
                if live_fwd.contains(k) {
                    return false;
                }
                let rev_key = NatKey {
                    addr: f.snat_addr,
                    port: f.snat_port,
                    ..*k
                };
                let idle = Duration::from_nanos(now.saturating_sub(f.last_seen_ns));
                self.nat_rev.get(&rev_key, 0).is_err()
                    && idle > self.timeout_for(k.proto, f.flags & NAT_FLAG_TCP_CLOSING != 0)
            })
            .map(|(k, _)| k)
            .collect();
        for k in stray {
            let _ = self.nat_fwd.remove(&k);
        }
        // Only the daemon writes NAT_RELEASED, so read-add-write is race-free.
        for (addr, n) in released {
            if let Ok(before) = self.nat_released.get(&addr, 0) {
                let _ = self.nat_released.insert(addr, before + n, 0);
            }
        }
        report.remaining = live_fwd.len();
        report
    }

    // ---- fixtures -------------------------------------------------------------------------

    /// Runs a program once on `input` through `BPF_PROG_TEST_RUN` (data starts with an
    /// Ethernet header, as the kernel's test runner requires for TC programs).
    pub fn test_run(
        &mut self,
        program: ProgramKind,
        input: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutput, DataPlaneError> {
        self.test_run_gso(program, input, repeat, None)
    }

    /// [`DataPlane::test_run`] on a GSO packet: `gso` = (segments, segment size), set in the
    /// socket buffer's shared info as the TUN does for a super-packet the daemon writes.
    pub fn test_run_gso(
        &mut self,
        program: ProgramKind,
        input: &[u8],
        repeat: u32,
        gso: Option<(u32, u32)>,
    ) -> Result<TestRunOutput, DataPlaneError> {
        let mut out = vec![0u8; input.len() + 256];
        // `struct __sk_buff`: 192 bytes, `gso_segs` at 164, `gso_size` at 176 (the fields
        // BPF_PROG_TEST_RUN copies into the socket buffer, besides a few others left zero).
        let mut ctx = [0u8; 192];
        if let Some((segs, size)) = gso {
            ctx[164..168].copy_from_slice(&segs.to_ne_bytes());
            ctx[176..180].copy_from_slice(&size.to_ne_bytes());
        }
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: gso.is_some().then_some(&ctx[..]),
            repeat: repeat.max(1),
            ..TestRunOptions::default()
        };
        let (name, res) = match program {
            ProgramKind::ClientIngress => {
                (PROG_CLIENT, self.classifier(PROG_CLIENT)?.test_run(opts))
            }
            ProgramKind::TargetIngress => {
                (PROG_TARGET, self.classifier(PROG_TARGET)?.test_run(opts))
            }
            ProgramKind::TargetXdp => (PROG_TARGET_XDP, self.xdp_program()?.test_run(opts)),
        };
        let res = res.map_err(|source| DataPlaneError::Program {
            program: name,
            source,
        })?;
        out.truncate(res.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: res.return_value as i32,
            packet: out,
            duration: res.duration,
        })
    }
}

/// Makes `trie` hold exactly `want`, writing only differences; `mirror` is what it holds now.
fn sync_trie<V: aya::Pod + PartialEq + Copy>(
    trie: &mut LpmTrie<MapData, [u8; 4], V>,
    mirror: &mut BTreeMap<Prefix, V>,
    want: &BTreeMap<Prefix, V>,
    name: &'static str,
) -> Result<(), DataPlaneError> {
    for (prefix, _) in mirror.iter().filter(|(p, _)| !want.contains_key(*p)) {
        match trie.remove(&Key::new(prefix.0, prefix.1)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    for (prefix, value) in want {
        if mirror.get(prefix) != Some(value) {
            trie.insert(&Key::new(prefix.0, prefix.1), *value, 0)
                .map_err(map_err(name))?;
        }
    }
    *mirror = want.clone();
    Ok(())
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        // aya detaches every link when the programs are dropped; say so in the log.
        debug!(
            client = self.client_link.is_some(),
            targets = self.target_links.len(),
            "detaching data-plane programs"
        );
        release_snat_ports(self.id, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snat_range_must_be_disjoint_from_the_local_port_range() {
        let local = Some((32768, 60999));
        assert!(check_snat_range((61000, 65535), local).is_ok());
        assert!(check_snat_range((20000, 20999), local).is_ok());
        assert!(check_snat_range((61000, 65535), None).is_ok());
        for bad in [
            (1024, 65535),
            (60999, 65535),
            (30000, 32768),
            (40000, 41000),
        ] {
            let err = check_snat_range(bad, local).unwrap_err().to_string();
            assert!(err.contains("ip_local_port_range"), "{bad:?}: {err}");
        }
        assert!(matches!(
            check_snat_range((0, 10), local),
            Err(DataPlaneError::BadSnatRange { .. })
        ));
        assert!(matches!(
            check_snat_range((65000, 64000), local),
            Err(DataPlaneError::BadSnatRange { .. })
        ));
    }

    #[test]
    fn data_planes_sharing_an_snat_address_need_disjoint_port_ranges() {
        let addr = Ipv4Addr::new(192, 0, 2, 1);
        let other = Ipv4Addr::new(192, 0, 2, 2);
        let (a, b) = (u64::MAX - 1, u64::MAX - 2);
        claim_snat_ports(a, 7, addr, 61000, 62999).unwrap();
        claim_snat_ports(a, 7, addr, 61000, 62999).unwrap(); // the same data plane again
        assert!(matches!(
            claim_snat_ports(b, 7, addr, 62000, 65535),
            Err(DataPlaneError::SnatPortsShared { .. })
        ));
        claim_snat_ports(b, 7, addr, 63000, 65535).unwrap();
        claim_snat_ports(b, 7, other, 61000, 65535).unwrap();
        // The same address in another network namespace is another address.
        claim_snat_ports(u64::MAX - 3, 8, addr, 61000, 65535).unwrap();
        release_snat_ports(u64::MAX - 3, None);
        release_snat_ports(a, None);
        claim_snat_ports(b, 7, addr, 63000, 65535).unwrap();
        release_snat_ports(b, None);
        assert!(SNAT_CLAIMS
            .lock()
            .unwrap()
            .iter()
            .all(|(o, ..)| *o != a && *o != b && *o != u64::MAX - 3));
    }
}
