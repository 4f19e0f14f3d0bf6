//! Map keys, values and constants shared by the kernel programs (`gateway-ebpf`) and the daemon
//! (`gateway`). Everything here is `#[repr(C)]` with explicit padding so that both sides agree
//! on the layout byte for byte. IPv4 addresses are stored as big-endian bytes (`[u8; 4]`), ports
//! in host order (the programs convert when they read and write packets).
//!
//! Map inventory (one map per purpose; names are the ELF section names):
//!
//! | map | kind | key | value | written by |
//! |---|---|---|---|---|
//! | `SESSIONS` | hash | client IPv4 | [`Session`] | daemon |
//! | `SESSION_STATS` | per-CPU hash | client IPv4 | [`SessionStats`] | kernel (daemon creates/deletes) |
//! | `AUTH_0`/`AUTH_1` | LPM trie | destination prefix | [`AuthEntry`] | daemon (double-buffered) |
//! | `PORT_RULES_0`/`PORT_RULES_1` | array | [`AuthEntry::port_set`] - 1 | [`PortRuleSet`] | daemon (double-buffered with `AUTH_n`) |
//! | `ROUTE_0`/`ROUTE_1` | LPM trie | destination prefix | [`RouteEntry`] | daemon (double-buffered) |
//! | `POLICY_SLOT` | array\[1\] | 0 | active slot (0 or 1) | daemon |
//! | `TARGETS` | hash | target id | [`TargetNetwork`] | daemon |
//! | `CONFIG` | array\[1\] | 0 | [`GatewayConfig`] | daemon |
//! | `NAT_FWD` | hash | [`NatKey`] (client side) | [`NatForward`] | kernel; daemon expires |
//! | `NAT_REV` | hash | [`NatKey`] (target side) | [`NatReverse`] | kernel; daemon expires |
//! | `NAT_CREATED` | hash | client IPv4 | u64: NAT entries the kernel made | kernel (daemon creates/deletes) |
//! | `NAT_RELEASED` | hash | client IPv4 | u64: NAT entries the daemon removed | daemon |
//!
//! The NAT tables are plain hashes, not LRU: an LRU evicts the least recently used entry of
//! *any* session when full, so one client spraying ports could evict others' flows (and a later
//! flow could inherit an evicted reverse entry's port). Instead each session may hold at most
//! [`GatewayConfig::nat_session_cap`] entries (`NAT_CREATED - NAT_RELEASED`); a full table
//! refuses new flows and never touches existing ones.
//! | `COUNTERS` | per-CPU array | [`Counter`] index | u64 | kernel |
//! | `EVENTS` | ring buffer | | [`FlowEvent`] | kernel |
#![no_std]

/// Number of 64-bit words in a [`GroupSet`]: 256 distinct groups can be referenced by the rule
/// set at once (AWS caps a rule set at 200 rules, so every rule can name its own group).
pub const GROUP_WORDS: usize = 4;
/// Largest number of distinct groups a policy can reference.
pub const MAX_GROUPS: usize = GROUP_WORDS * 64;

/// A set of group indexes, one bit per group. The daemon assigns indexes (see its group
/// interner); the kernel only intersects sets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupSet {
    pub bits: [u64; GROUP_WORDS],
}

impl GroupSet {
    pub const EMPTY: GroupSet = GroupSet {
        bits: [0; GROUP_WORDS],
    };

    #[inline(always)]
    pub fn insert(&mut self, index: usize) {
        if index < MAX_GROUPS {
            self.bits[index / 64] |= 1u64 << (index % 64);
        }
    }

    #[inline(always)]
    pub fn contains(&self, index: usize) -> bool {
        index < MAX_GROUPS && self.bits[index / 64] & (1u64 << (index % 64)) != 0
    }

    /// True when the two sets share at least one group. Unrolled: the verifier sees four
    /// straight-line AND/OR operations, no loop.
    #[inline(always)]
    pub fn intersects(&self, other: &GroupSet) -> bool {
        (self.bits[0] & other.bits[0])
            | (self.bits[1] & other.bits[1])
            | (self.bits[2] & other.bits[2])
            | (self.bits[3] & other.bits[3])
            != 0
    }
}

/// An active client session, keyed by its tunnel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// The daemon's session id; copied into flow events so logs can name the connection.
    pub session_id: u64,
    /// The groups of the session's user, as indexes of the daemon's group interner.
    pub groups: GroupSet,
}

/// Per-session traffic counters (per CPU; the daemon sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Packets and bytes (IP length) received from the client and forwarded.
    pub from_client_packets: u64,
    pub from_client_bytes: u64,
    /// Packets and bytes delivered to the client on the return path.
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// Packets from the client that were dropped (denied, no route, NAT full).
    pub dropped_packets: u64,
}

/// The aggregated authorization rules at one destination prefix. AWS semantics: among the rules
/// whose CIDR contains the destination only the longest prefix counts, and at that prefix the
/// packet is allowed when any rule is for all groups or names one of the session's groups. The
/// daemon folds all rules of one prefix into one entry, so one LPM lookup decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthEntry {
    /// Non-zero when a rule at this prefix authorizes all groups.
    pub all_groups: u32,
    /// The rules of this prefix limited to a protocol and ports (cvpn, beyond AWS): 1 + their
    /// index in `PORT_RULES_n` of the same slot; 0 when there are none.
    pub port_set: u32,
    pub groups: GroupSet,
}

/// Most port-limited rule groups at one prefix (distinct protocol + port range pairs).
pub const PORT_RULES_PER_PREFIX: usize = 8;
/// Most prefixes with port-limited rules in one policy (entries of `PORT_RULES_n`).
pub const PORT_RULE_SETS: u32 = 1024;

/// Authorization rules of one prefix that are limited to a protocol and a destination port
/// range: at that prefix a packet is also allowed when one of them matches its protocol and
/// port and admits the session's groups. Prefixes without port limits never look here, so
/// AWS's semantics are untouched when no rule names a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP).
    pub protocol: u8,
    /// Non-zero when the rule authorizes all groups.
    pub all_groups: u8,
    pub _pad: u16,
    /// Destination ports, inclusive (TCP and UDP; ignored for ICMP).
    pub from_port: u16,
    pub to_port: u16,
    pub groups: GroupSet,
}

/// The port-limited rules of one prefix (`PORT_RULES_0` / `PORT_RULES_1` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRuleSet {
    /// Rules in use, at most [`PORT_RULES_PER_PREFIX`].
    pub count: u32,
    pub _pad: u32,
    pub rules: [PortRule; PORT_RULES_PER_PREFIX],
}

impl PortRule {
    /// Whether this rule admits a packet of `protocol` to `dport` from a session in `groups`.
    #[inline(always)]
    pub fn admits(&self, protocol: u8, dport: u16, groups: &GroupSet) -> bool {
        if self.protocol != protocol {
            return false;
        }
        let ports = protocol == 1 || (dport >= self.from_port && dport <= self.to_port);
        ports && (self.all_groups != 0 || self.groups.intersects(groups))
    }
}

/// A route: which target network carries traffic to a destination prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteEntry {
    pub target_id: u32,
}

/// A target network: the interface traffic leaves through and the address it is SNATed to.
///
/// The kernel's map value (by target id). Three types share the name, one per layer: this one;
/// the API resource `gateway::model::TargetNetwork` (an association, whose `target_id` keys this
/// map); and `gateway::config::TargetNetwork` (an `[[target_network]]` entry of an endpoint file).
/// Both become a `gateway::model::TargetSpec`, which the data plane turns into this value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetNetwork {
    pub ifindex: u32,
    pub snat_addr: [u8; 4],
    /// Non-zero when security groups apply to this target network: a packet leaves through it
    /// only if one of `egress` allows it. Zero: AWS's default group, everything may leave.
    pub egress_limited: u32,
    /// Rules in use in `egress`, at most [`EGRESS_RULES_PER_TARGET`].
    pub egress_count: u32,
    pub egress: [EgressRule; EGRESS_RULES_PER_TARGET],
}

/// Most egress rules of the security groups applied to one target network, all groups
/// together.
pub const EGRESS_RULES_PER_TARGET: usize = 16;

/// One egress rule of a security group: traffic of `protocol` (0: any) to `net/mask`, to a
/// destination port in `from_port..=to_port` (TCP and UDP; ignored otherwise), may leave.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressRule {
    pub protocol: u8,
    pub _pad: [u8; 3],
    pub from_port: u16,
    pub to_port: u16,
    pub net: [u8; 4],
    pub mask: [u8; 4],
}

impl EgressRule {
    /// Whether this rule lets a packet of `protocol` to `dst`:`dport` leave.
    #[inline(always)]
    pub fn allows(&self, protocol: u8, dst: [u8; 4], dport: u16) -> bool {
        let d = u32::from_be_bytes(dst);
        if d & u32::from_be_bytes(self.mask) != u32::from_be_bytes(self.net) {
            return false;
        }
        if self.protocol == 0 {
            return true;
        }
        if self.protocol != protocol {
            return false;
        }
        let ported = protocol == 6 || protocol == 17;
        !ported || (dport >= self.from_port && dport <= self.to_port)
    }
}

impl TargetNetwork {
    /// Whether the security groups of this target network let the packet leave.
    #[inline(always)]
    pub fn egress_allows(&self, protocol: u8, dst: [u8; 4], dport: u16) -> bool {
        if self.egress_limited == 0 {
            return true;
        }
        let mut i = 0;
        while i < EGRESS_RULES_PER_TARGET {
            if i as u32 >= self.egress_count {
                break;
            }
            if self.egress[i].allows(protocol, dst, dport) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Global settings of the data plane, written once by the daemon at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Where return traffic is delivered (the TUN device carrying client packets).
    pub client_ifindex: u32,
    /// The SNAT port range (inclusive), disjoint from the kernel's local port range: every
    /// TCP/UDP SNAT port comes from it (a client's own port is kept only inside it), and return
    /// traffic to a port outside it is never NAT traffic.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// NAT entries one session may hold at once (0: [`DEFAULT_NAT_SESSION_CAP`]).
    pub nat_session_cap: u32,
}

/// Default SNAT port range: above Linux's default local port range (32768-60999).
pub const DEFAULT_NAT_PORT_MIN: u16 = 61000;
pub const DEFAULT_NAT_PORT_MAX: u16 = 65535;
/// Default number of NAT entries one session may hold.
pub const DEFAULT_NAT_SESSION_CAP: u32 = 4096;

/// Key of both NAT tables. Forward: (proto, client addr, remote addr, client port, remote
/// port). Reverse: (proto, SNAT addr, remote addr, SNAT port, remote port). For ICMP echo the
/// "port" is the echo identifier and the remote port is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub proto: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 4],
    pub remote_addr: [u8; 4],
    pub port: u16,
    pub remote_port: u16,
}

/// Flags kept on NAT entries.
pub const NAT_FLAG_TCP_CLOSING: u32 = 1;

/// Forward NAT entry: how a client flow is translated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatForward {
    pub snat_addr: [u8; 4],
    pub snat_port: u16,
    pub _pad: u16,
    pub target_id: u32,
    pub flags: u32,
    /// `bpf_ktime_get_ns` of the last packet in either direction.
    pub last_seen_ns: u64,
}

/// Reverse NAT entry: where return traffic goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReverse {
    pub client_addr: [u8; 4],
    pub client_port: u16,
    pub _pad: u16,
    pub flags: u32,
    pub _pad2: u32,
    pub last_seen_ns: u64,
}

/// Global per-CPU counters, indexes of the `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Client packets seen by the client-side program.
    ClientPackets = 0,
    /// Client packets forwarded to a target network.
    Forwarded = 1,
    /// Dropped: source is not an active session.
    UnknownSource = 2,
    /// Dropped: no authorization rule allows the destination for the session's groups.
    Denied = 3,
    /// Dropped: no route (or the route's target network is gone).
    NoRoute = 4,
    /// Dropped: no free NAT port for the flow.
    NatFull = 5,
    /// Dropped: not IPv4 (the IPv6 router solicitations every client sends land here).
    NotIpv4 = 6,
    /// Dropped: truncated or malformed IPv4 / L4 header.
    Malformed = 7,
    /// Dropped: an IP protocol or ICMP type the gateway does not forward, or a fragment.
    Unsupported = 8,
    /// Return packets translated and delivered to a client.
    ReturnDelivered = 9,
    /// Return-side packets that were not NAT traffic and passed to the host untouched.
    ReturnPassed = 10,
    /// New NAT flows created.
    NatCreated = 11,
    /// New NAT flows that could not keep the client's port.
    NatPortRemapped = 12,
    /// Return traffic for a NAT entry whose session is gone: dropped.
    ReturnNoSession = 13,
    /// Flow events lost because the ring buffer was full.
    EventsLost = 14,
    /// Dropped: a client packet with IP options (IHL > 5).
    IpOptions = 15,
    /// Dropped: a client packet whose TTL would expire at the gateway (TTL <= 1 on arrival).
    TtlExpired = 16,
    /// New flows refused because their session holds its cap of NAT entries (also counted in
    /// `NatFull`).
    NatSessionCap = 17,
    /// ICMP errors about a translated flow (fragmentation needed, unreachable, time exceeded)
    /// translated back to its client (also counted in `ReturnDelivered`).
    IcmpErrorTranslated = 18,
    /// Dropped: authorized and routed, but the security groups of the target network do not
    /// let it leave.
    SecurityGroup = 19,
}

pub const COUNTER_COUNT: u32 = 20;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::ClientPackets,
        Counter::Forwarded,
        Counter::UnknownSource,
        Counter::Denied,
        Counter::NoRoute,
        Counter::NatFull,
        Counter::NotIpv4,
        Counter::Malformed,
        Counter::Unsupported,
        Counter::ReturnDelivered,
        Counter::ReturnPassed,
        Counter::NatCreated,
        Counter::NatPortRemapped,
        Counter::ReturnNoSession,
        Counter::EventsLost,
        Counter::IpOptions,
        Counter::TtlExpired,
        Counter::NatSessionCap,
        Counter::IcmpErrorTranslated,
        Counter::SecurityGroup,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::ClientPackets => "client_packets",
            Counter::Forwarded => "forwarded",
            Counter::UnknownSource => "dropped_unknown_source",
            Counter::Denied => "dropped_denied",
            Counter::NoRoute => "dropped_no_route",
            Counter::NatFull => "dropped_nat_full",
            Counter::NotIpv4 => "dropped_not_ipv4",
            Counter::Malformed => "dropped_malformed",
            Counter::Unsupported => "dropped_unsupported",
            Counter::ReturnDelivered => "return_delivered",
            Counter::ReturnPassed => "return_passed",
            Counter::NatCreated => "nat_created",
            Counter::NatPortRemapped => "nat_port_remapped",
            Counter::ReturnNoSession => "return_no_session",
            Counter::EventsLost => "events_lost",
            Counter::IpOptions => "dropped_ip_options",
            Counter::TtlExpired => "dropped_ttl_expired",
            Counter::NatSessionCap => "nat_session_cap",
            Counter::IcmpErrorTranslated => "icmp_errors_translated",
            Counter::SecurityGroup => "dropped_security_group",
        }
    }
}

/// Kinds of flow events the kernel reports through the `EVENTS` ring buffer.
pub const EVENT_DENIED: u32 = 1;
pub const EVENT_NO_ROUTE: u32 = 2;
pub const EVENT_UNKNOWN_SOURCE: u32 = 3;
pub const EVENT_NAT_FULL: u32 = 4;
pub const EVENT_SECURITY_GROUP: u32 = 5;

/// One flow event: enough to log who tried what.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub timestamp_ns: u64,
    /// 0 for `EVENT_UNKNOWN_SOURCE`.
    pub session_id: u64,
    pub kind: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad2: u32,
}

/// What carries client packets into the data plane (the `CLIENT_LINK` global of the programs).
/// A TUN: packets start at the IP header.
pub const CLIENT_LINK_TUN: u32 = 0;
/// An Ethernet device whose peers are hosts (a veth in the benchmark): frames carry a real
/// Ethernet header; return traffic needs the client's MAC (`bpf_redirect_neigh`).
pub const CLIENT_LINK_ETHERNET: u32 = 1;
/// A TAP device read by the daemon: frames carry an Ethernet header the daemon ignores; return
/// traffic keeps whatever header it had. Unlike a TUN it accepts XDP frames (`ndo_xdp_xmit`).
pub const CLIENT_LINK_TAP: u32 = 2;

/// IP protocol numbers the data plane understands.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, made of integers and byte arrays, with every
    // padding byte spelled out as a field, so any bit pattern is valid.
    unsafe impl aya::Pod for GroupSet {}
    unsafe impl aya::Pod for Session {}
    unsafe impl aya::Pod for SessionStats {}
    unsafe impl aya::Pod for AuthEntry {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for PortRuleSet {}
    unsafe impl aya::Pod for RouteEntry {}
    unsafe impl aya::Pod for TargetNetwork {}
    unsafe impl aya::Pod for EgressRule {}
    unsafe impl aya::Pod for GatewayConfig {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatForward {}
    unsafe impl aya::Pod for NatReverse {}
    unsafe impl aya::Pod for FlowEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<GroupSet>(), 32);
        assert_eq!(size_of::<Session>(), 40);
        assert_eq!(size_of::<AuthEntry>(), 40);
        assert_eq!(size_of::<PortRule>(), 40);
        assert_eq!(size_of::<PortRuleSet>(), 8 + 40 * PORT_RULES_PER_PREFIX);
        assert_eq!(size_of::<EgressRule>(), 16);
        assert_eq!(
            size_of::<TargetNetwork>(),
            16 + 16 * EGRESS_RULES_PER_TARGET
        );
        assert_eq!(size_of::<GatewayConfig>(), 12);
        assert_eq!(size_of::<NatKey>(), 16);
        assert_eq!(size_of::<NatForward>(), 24);
        assert_eq!(size_of::<NatReverse>(), 24);
        assert_eq!(size_of::<FlowEvent>(), 40);
    }

    #[test]
    fn group_sets() {
        let mut a = GroupSet::EMPTY;
        let mut b = GroupSet::EMPTY;
        a.insert(3);
        a.insert(200);
        b.insert(200);
        assert!(a.contains(200) && a.intersects(&b));
        b = GroupSet::EMPTY;
        b.insert(4);
        assert!(!a.intersects(&b));
        a.insert(MAX_GROUPS); // out of range: ignored, never panics
        assert!(!a.contains(MAX_GROUPS));
    }
}
