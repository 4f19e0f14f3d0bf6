//! cvpn kernel data plane.
//!
//! * `client_ingress` (TC ingress on the TUN device that carries decrypted client packets):
//!   session check, authorization (one LPM lookup), route (one LPM lookup), SNAT through the NAT
//!   tables, Ethernet header, redirect out of the target interface.
//! * `target_ingress` (TC ingress on each target interface): reverse NAT for return traffic and
//!   redirect into the TUN; everything else goes on untouched with `TC_ACT_UNSPEC` (TCX:
//!   `TCX_NEXT`), so the program of another endpoint attached to the same interface (or, at
//!   the end of the chain, the host) sees it. `TC_ACT_OK` would end the chain there.
//!
//! Every drop is an [`Drop`] value that names its counter (and, where the flow log wants it, a
//! flow event); the program entry points turn it into a verdict in one place.
#![no_std]
#![no_main]
// `atomic_xadd`: the one atomic the NAT cap counter needs (see `allocate_nat`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

pub(crate) mod maps;
mod packet;
mod xdp;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh},
    macros::{classifier, xdp},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    AuthEntry, Counter, FlowEvent, GatewayConfig, GroupSet, NatForward, NatKey, NatReverse,
    RouteEntry, Session, SessionStats, PORT_RULES_PER_PREFIX, CLIENT_LINK_ETHERNET, CLIENT_LINK_TUN, DEFAULT_NAT_PORT_MAX,
    DEFAULT_NAT_PORT_MIN, DEFAULT_NAT_SESSION_CAP, EVENT_DENIED, EVENT_NAT_FULL, EVENT_NO_ROUTE, EVENT_SECURITY_GROUP,
    EVENT_UNKNOWN_SOURCE, IPPROTO_ICMP, IPPROTO_TCP, NAT_FLAG_TCP_CLOSING,
};

use maps::*;
use packet::{Flow, PacketError, ETH_HLEN};

/// What carries client packets (`gateway_common::CLIENT_LINK_*`): a TUN (packets start at the
/// IP header), an Ethernet device (benchmark veth, fixtures), or a TAP. Set by the daemon at
/// load time.
#[no_mangle]
static CLIENT_LINK: u32 = 0;

/// How many ports the NAT tries before it gives up on a flow (the client's own port first,
/// when it lies in the SNAT range).
const NAT_PORT_TRIES: u32 = 16;

/// What the client path keeps of a target network once its security groups let a packet
/// through.
#[derive(Clone, Copy)]
struct Target {
    ifindex: u32,
    snat_addr: [u8; 4],
}

/// Why a client packet is dropped. Each maps to a counter; some also emit a flow event.
/// Fieldless on purpose (see [`Drop`]).
#[derive(Clone, Copy)]
enum Reason {
    NotIpv4,
    Malformed,
    Unsupported,
    IpOptions,
    UnknownSource,
    Denied,
    NoRoute,
    TtlExpired,
    NatFull,
    NatSessionCap,
    SecurityGroup,
}

/// A dropped client packet: why, and the flow and session it belongs to (empty before the
/// packet is parsed). Every byte is set on every path: with enum variants carrying payloads of
/// different shapes, LLVM merges them into registers left undefined on some paths (and spills
/// whatever such a register holds, a pointer even), which the verifier refuses.
struct Drop {
    reason: Reason,
    flow: Flow,
    session_id: u64,
}

impl Drop {
    #[inline(always)]
    fn packet(error: PacketError) -> Drop {
        let reason = match error {
            PacketError::NotIpv4 => Reason::NotIpv4,
            PacketError::Malformed => Reason::Malformed,
            PacketError::Unsupported => Reason::Unsupported,
            PacketError::IpOptions => Reason::IpOptions,
        };
        Drop {
            reason,
            flow: Flow::EMPTY,
            session_id: 0,
        }
    }

    #[inline(always)]
    fn of(reason: Reason, flow: Flow, session_id: u64) -> Drop {
        Drop {
            reason,
            flow,
            session_id,
        }
    }
}

/// Why a new flow gets no NAT entry.
#[derive(Clone, Copy)]
enum NatError {
    /// No free port, or the table is full.
    Full,
    /// The session holds its cap of NAT entries.
    SessionCap,
}

/// The global settings (defaults when the daemon wrote none).
#[inline(always)]
pub(crate) fn config() -> GatewayConfig {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// The SNAT port range, inclusive; the default range when the configured one is empty.
#[inline(always)]
pub(crate) fn nat_port_range(cfg: &GatewayConfig) -> (u32, u32) {
    if cfg.nat_port_min == 0 || cfg.nat_port_max < cfg.nat_port_min {
        (DEFAULT_NAT_PORT_MIN as u32, DEFAULT_NAT_PORT_MAX as u32)
    } else {
        (cfg.nat_port_min as u32, cfg.nat_port_max as u32)
    }
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs this program concurrently.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub(crate) fn client_link() -> u32 {
    // SAFETY: a read of a global the loader may rewrite before load; volatile so the compiler
    // does not fold the default.
    unsafe { core::ptr::read_volatile(&CLIENT_LINK) }
}

/// Length of the link-layer header in front of client packets.
#[inline(always)]
fn client_l2_len() -> usize {
    if client_link() == CLIENT_LINK_TUN {
        0
    } else {
        ETH_HLEN
    }
}

fn emit(kind: u32, flow: &Flow, session_id: u64) {
    let event = FlowEvent {
        // SAFETY: helper call without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        session_id,
        kind,
        proto: flow.proto,
        _pad: [0; 3],
        src_addr: flow.src,
        dst_addr: flow.dst,
        src_port: flow.sport,
        dst_port: flow.dport,
        _pad2: 0,
    };
    if EVENTS.output::<FlowEvent>(&event, 0).is_err() {
        count(Counter::EventsLost);
    }
}

/// Packets and bytes a packet stands for. A GSO super-packet (segments of one TCP stream the
/// daemon joined, or the sender's stack did) counts as the segments it will be cut into, each
/// with its own headers: what the same traffic counts without offloads.
#[inline(always)]
fn on_wire(ctx: &TcContext, flow: &Flow, l3: usize) -> (u32, u64) {
    // SAFETY: a read of the program's own context.
    let segments = unsafe { (*ctx.skb.skb).gso_segs }.max(1);
    let headers = (flow.l4 - l3) as u64 + flow.l4_hdr_len as u64;
    (
        segments,
        flow.ip_len as u64 + (segments as u64 - 1) * headers,
    )
}

pub(crate) fn add_session_stats(
    addr: &[u8; 4],
    packets: u32,
    bytes: u64,
    to_client: bool,
    dropped: bool,
) {
    let ptr = match SESSION_STATS.get_ptr_mut(addr) {
        Some(ptr) => ptr,
        None => {
            let _ = SESSION_STATS.insert(addr, &SessionStats::default(), 0);
            match SESSION_STATS.get_ptr_mut(addr) {
                Some(ptr) => ptr,
                None => return,
            }
        }
    };
    // SAFETY: per-CPU value of this CPU.
    let stats = unsafe { &mut *ptr };
    if dropped {
        stats.dropped_packets += packets as u64;
    } else if to_client {
        stats.to_client_packets += packets as u64;
        stats.to_client_bytes += bytes;
    } else {
        stats.from_client_packets += packets as u64;
        stats.from_client_bytes += bytes;
    }
}

#[classifier]
pub fn client_ingress(ctx: TcContext) -> i32 {
    match try_client_ingress(&ctx) {
        Ok(verdict) => verdict,
        Err(drop) => {
            account(&drop);
            TC_ACT_SHOT
        }
    }
}

/// Counts a dropped client packet (and emits its flow event).
#[inline(always)]
fn account(drop: &Drop) {
    let (flow, session_id) = (&drop.flow, drop.session_id);
    match drop.reason {
        Reason::NotIpv4 => count(Counter::NotIpv4),
        Reason::Malformed => count(Counter::Malformed),
        Reason::Unsupported => count(Counter::Unsupported),
        Reason::IpOptions => count(Counter::IpOptions),
        Reason::UnknownSource => {
            count(Counter::UnknownSource);
            emit(EVENT_UNKNOWN_SOURCE, flow, 0);
        }
        Reason::Denied => {
            count(Counter::Denied);
            add_session_stats(&flow.src, 1, 0, false, true);
            emit(EVENT_DENIED, flow, session_id);
        }
        Reason::NoRoute => {
            count(Counter::NoRoute);
            add_session_stats(&flow.src, 1, 0, false, true);
            emit(EVENT_NO_ROUTE, flow, session_id);
        }
        Reason::SecurityGroup => {
            count(Counter::SecurityGroup);
            add_session_stats(&flow.src, 1, 0, false, true);
            emit(EVENT_SECURITY_GROUP, flow, session_id);
        }
        Reason::TtlExpired => {
            count(Counter::TtlExpired);
            add_session_stats(&flow.src, 1, 0, false, true);
        }
        Reason::NatFull | Reason::NatSessionCap => {
            count(Counter::NatFull);
            if let Reason::NatSessionCap = drop.reason {
                count(Counter::NatSessionCap);
            }
            add_session_stats(&flow.src, 1, 0, false, true);
            emit(EVENT_NAT_FULL, flow, session_id);
        }
    }
}

fn try_client_ingress(ctx: &TcContext) -> Result<i32, Drop> {
    let l2 = client_l2_len();
    if l2 != 0 && l2 != ETH_HLEN {
        return Err(Drop::packet(PacketError::Malformed));
    }
    // On an Ethernet client link (benchmark variant) the clients must resolve the gateway:
    // ARP goes to the host. A TUN has no ARP.
    if l2 == ETH_HLEN && packet::is_arp(ctx) {
        return Ok(TC_ACT_OK);
    }
    let flow = packet::parse(ctx, l2, true).map_err(Drop::packet)?;
    count(Counter::ClientPackets);

    // 1. The source must be an active session.
    // SAFETY: the value is copied out at once; the daemon never mutates a session in place.
    let session: Session = match unsafe { SESSIONS.get(&flow.src) } {
        Some(s) => *s,
        None => return Err(Drop::of(Reason::UnknownSource, flow, 0)),
    };

    // 2. Authorization and route, from the same policy slot (one read of the slot).
    let slot = POLICY_SLOT.get(0).copied().unwrap_or(0);
    let key = Key::new(32, flow.dst);
    let (auth, route): (Option<&AuthEntry>, Option<&RouteEntry>) = if slot == 0 {
        (AUTH_0.get(&key), ROUTE_0.get(&key))
    } else {
        (AUTH_1.get(&key), ROUTE_1.get(&key))
    };
    let allowed = match auth {
        Some(rule) => {
            rule.all_groups != 0
                || rule.groups.intersects(&session.groups)
                || port_rules_admit(slot, rule.port_set, &flow, &session.groups)
        }
        None => false,
    };
    if !allowed {
        return Err(Drop::of(Reason::Denied, flow, session.session_id));
    }
    let target_id = match route {
        Some(r) => r.target_id,
        None => return Err(Drop::of(Reason::NoRoute, flow, session.session_id)),
    };
    // 2b. The target network, and its security groups (AWS's default group when none: all
    //     leave). Only its address and interface are copied out: the egress rules are read in
    //     place (the whole value would not fit the program's stack).
    // SAFETY: read at once; the daemon replaces a target's value as a whole (hash map update).
    let target = match unsafe { TARGETS.get(&target_id) } {
        Some(t) => {
            if !t.egress_allows(flow.proto, flow.dst, flow.dport) {
                return Err(Drop::of(Reason::SecurityGroup, flow, session.session_id));
            }
            Target {
                ifindex: t.ifindex,
                snat_addr: t.snat_addr,
            }
        }
        None => return Err(Drop::of(Reason::NoRoute, flow, session.session_id)),
    };

    // 3. TTL: a packet that would expire here goes no further (and makes no NAT state).
    if flow.ttl <= 1 {
        return Err(Drop::of(Reason::TtlExpired, flow, session.session_id));
    }

    // 4. SNAT: reuse the flow's translation, or allocate one.
    // SAFETY: helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let closing = flow.proto == IPPROTO_TCP && flow.tcp_fin_or_rst;
    let fwd_key = NatKey {
        proto: flow.proto,
        _pad: [0; 3],
        addr: flow.src,
        remote_addr: flow.dst,
        port: flow.sport,
        remote_port: flow.dport,
    };
    let snat_port = match NAT_FWD.get_ptr_mut(&fwd_key) {
        // SAFETY: the pointer is valid for this program run; plain field writes.
        Some(entry) if unsafe { (*entry).snat_addr } == target.snat_addr => unsafe {
            (*entry).last_seen_ns = now;
            if closing {
                (*entry).flags |= NAT_FLAG_TCP_CLOSING;
            }
            (*entry).snat_port
        },
        _ => allocate_nat(&flow, &fwd_key, target_id, &target, now, closing).map_err(|e| {
            let reason = match e {
                NatError::Full => Reason::NatFull,
                NatError::SessionCap => Reason::NatSessionCap,
            };
            Drop::of(reason, flow, session.session_id)
        })?,
    };

    // 5. Rewrite source address and port and decrement the TTL, fixing the checksums.
    packet::rewrite_source(ctx, l2, &flow, target.snat_addr, snat_port).map_err(Drop::packet)?;
    packet::decrement_ttl(ctx, l2, &flow).map_err(Drop::packet)?;
    let (packets, bytes) = on_wire(ctx, &flow, l2);
    add_session_stats(&flow.src, packets, bytes, false, false);
    count(Counter::Forwarded);

    // 6. An Ethernet header in front (TUN packets have none), then out of the target interface;
    //    the kernel fills the MAC addresses from its neighbour table.
    if l2 == 0 {
        packet::push_ethernet(ctx).map_err(Drop::packet)?;
    }
    // SAFETY: helper call; a NULL neighbour means "look the next hop up in the FIB".
    let verdict = unsafe { bpf_redirect_neigh(target.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    Ok(verdict)
}

/// Whether a port-limited rule of the prefix (`port_set`, 1-based; 0: none) admits the
/// packet: its protocol, its destination port within the rule's range (TCP, UDP), and the
/// session's groups. At most `PORT_RULES_PER_PREFIX` comparisons, one array lookup.
#[inline(always)]
fn port_rules_admit(slot: u32, port_set: u32, flow: &Flow, groups: &GroupSet) -> bool {
    if port_set == 0 {
        return false;
    }
    let index = port_set - 1;
    let set = if slot == 0 {
        PORT_RULES_0.get(index)
    } else {
        PORT_RULES_1.get(index)
    };
    let Some(set) = set else { return false };
    let mut i = 0;
    while i < PORT_RULES_PER_PREFIX {
        if i as u32 >= set.count {
            break;
        }
        if set.rules[i].admits(flow.proto, flow.dport, groups) {
            return true;
        }
        i += 1;
    }
    false
}

/// How many NAT entries the session at `addr` may still create: `Ok` with the counter to bump
/// when it is below its cap. A session without a counter (never registered, or ended) gets
/// none.
#[inline(always)]
fn nat_quota(addr: &[u8; 4], cfg: &GatewayConfig) -> Result<*mut u64, NatError> {
    let cap = if cfg.nat_session_cap == 0 {
        DEFAULT_NAT_SESSION_CAP
    } else {
        cfg.nat_session_cap
    } as u64;
    let created = NAT_CREATED.get_ptr_mut(addr).ok_or(NatError::Full)?;
    // SAFETY: a read of a map value valid for this run. A concurrent add on another CPU may be
    // missed: the cap can be exceeded by at most (CPUs - 1) entries, never more.
    let held = unsafe { core::ptr::read_volatile(created) }
        // SAFETY: read-only lookup; the value is copied out at once.
        .saturating_sub(unsafe { NAT_RELEASED.get(addr) }.copied().unwrap_or(0));
    if held >= cap {
        return Err(NatError::SessionCap);
    }
    Ok(created)
}

/// Picks the SNAT port for a new flow: the client's own port when it lies in the SNAT range
/// and no other flow to the same remote holds it, else a random port of the range — never a
/// port outside it, so replies meant for the host's own sockets (whose ports come from the
/// kernel's local port range, disjoint from the SNAT range) never reach a client. The reverse
/// entry is inserted with `BPF_NOEXIST`, so two CPUs can never hand out the same port; the
/// session's cap is checked first and its counter bumped once both entries exist.
fn allocate_nat(
    flow: &Flow,
    fwd_key: &NatKey,
    target_id: u32,
    target: &Target,
    now: u64,
    closing: bool,
) -> Result<u16, NatError> {
    let cfg = config();
    // 1. The session's cap.
    let created = nat_quota(&flow.src, &cfg)?;
    // 2. The port range.
    let (min, max) = nat_port_range(&cfg);
    // Never zero (max >= min above); spelled out so no division-by-zero path reaches the verifier.
    let span = if max >= min { max - min + 1 } else { 1 };
    // ICMP echo ids are no ports of the host's sockets: kept as they are when free.
    let keep_own =
        flow.proto == IPPROTO_ICMP || (flow.sport as u32 >= min && flow.sport as u32 <= max);
    let flags = if closing { NAT_FLAG_TCP_CLOSING } else { 0 };
    let reverse = NatReverse {
        client_addr: flow.src,
        client_port: flow.sport,
        _pad: 0,
        flags,
        _pad2: 0,
        last_seen_ns: now,
    };
    let mut rev_key = NatKey {
        proto: flow.proto,
        _pad: [0; 3],
        addr: target.snat_addr,
        remote_addr: flow.dst,
        port: flow.sport,
        remote_port: flow.dport,
    };
    let mut chosen: Option<u16> = None;
    let mut i = 0;
    while i < NAT_PORT_TRIES {
        if i > 0 || !keep_own {
            // SAFETY: helper call without arguments.
            let r = unsafe { bpf_get_prandom_u32() };
            rev_key.port = (min + r.checked_rem(span).unwrap_or(0)) as u16;
        }
        // ICMP echo ids may be 0; ports 0 are never handed out.
        if !(flow.proto != IPPROTO_ICMP && rev_key.port == 0)
            && NAT_REV
                .insert(&rev_key, &reverse, aya_ebpf::bindings::BPF_NOEXIST as u64)
                .is_ok()
        {
            chosen = Some(rev_key.port);
            break;
        }
        i += 1;
    }
    let port = chosen.ok_or(NatError::Full)?;
    let forward = NatForward {
        snat_addr: target.snat_addr,
        snat_port: port,
        _pad: 0,
        target_id,
        flags,
        last_seen_ns: now,
    };
    if NAT_FWD.insert(fwd_key, &forward, 0).is_err() {
        let _ = NAT_REV.remove(&rev_key);
        return Err(NatError::Full);
    }
    // 3. One more entry held by the session.
    // SAFETY: `created` points at a map value valid for this run; an atomic add (the result is
    // unused, so this is BPF's plain XADD) keeps concurrent CPUs' increments. The intrinsic,
    // because `AtomicU64::fetch_add` does not exist for bpfel (no 64-bit atomics declared).
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            created, 1,
        )
    };
    count(Counter::NatCreated);
    if port != flow.sport {
        count(Counter::NatPortRemapped);
    }
    Ok(port)
}

/// Why return-side traffic is not delivered to a client.
pub enum ReturnError {
    /// Not NAT return traffic (or not parseable as such): the host stack decides.
    NotOurs(PacketError),
    /// NAT return traffic for a session that ended: dropped.
    NoSession,
}

/// The reverse-NAT step shared by the TC and XDP return paths: finds the client of a return
/// packet, refreshes the entry, and checks that the client's session is still active. TCP and
/// UDP to a port outside the SNAT range are the host's own traffic (its sockets and services)
/// and never looked up.
#[inline(always)]
pub fn reverse_nat(flow: &Flow) -> Result<([u8; 4], u16), ReturnError> {
    if flow.proto != IPPROTO_ICMP {
        let (min, max) = nat_port_range(&config());
        let port = flow.dport as u32;
        if port < min || port > max {
            return Err(ReturnError::NotOurs(PacketError::Unsupported));
        }
    }
    let rev_key = NatKey {
        proto: flow.proto,
        _pad: [0; 3],
        addr: flow.dst,
        remote_addr: flow.src,
        port: flow.dport,
        remote_port: flow.sport,
    };
    let entry = NAT_REV
        .get_ptr_mut(&rev_key)
        .ok_or(ReturnError::NotOurs(PacketError::Unsupported))?;
    // SAFETY: valid for this run; fields copied out and plain writes.
    let (client_addr, client_port) = unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        if flow.proto == IPPROTO_TCP && flow.tcp_fin_or_rst {
            (*entry).flags |= NAT_FLAG_TCP_CLOSING;
        }
        ((*entry).client_addr, (*entry).client_port)
    };
    // SAFETY: read-only lookup of a key that exists or not.
    if unsafe { SESSIONS.get(&client_addr) }.is_none() {
        count(Counter::ReturnNoSession);
        return Err(ReturnError::NoSession);
    }
    Ok((client_addr, client_port))
}

#[classifier]
pub fn target_ingress(ctx: TcContext) -> i32 {
    match try_target_ingress(&ctx) {
        Ok(verdict) => verdict,
        Err(ReturnError::NotOurs(_)) => {
            count(Counter::ReturnPassed);
            // Not this endpoint's: the next program on the interface (another endpoint's), or
            // the host when none follows. TC_ACT_OK would end the chain here.
            TC_ACT_UNSPEC
        }
        Err(ReturnError::NoSession) => TC_ACT_SHOT,
    }
}

fn try_target_ingress(ctx: &TcContext) -> Result<i32, ReturnError> {
    // 1. A reply of a translated flow, or an ICMP error about one (fragmentation needed,
    //    unreachable, time exceeded: path-MTU discovery needs them at the client).
    let (client_addr, (packets, bytes)) = match packet::parse(ctx, ETH_HLEN, false) {
        Ok(flow) => {
            let (client_addr, client_port) = reverse_nat(&flow)?;
            if packet::rewrite_destination(ctx, ETH_HLEN, &flow, client_addr, client_port).is_err()
            {
                count(Counter::Malformed);
                return Ok(TC_ACT_SHOT);
            }
            (client_addr, on_wire(ctx, &flow, ETH_HLEN))
        }
        Err(PacketError::Unsupported) => {
            let e = packet::parse_icmp_error(ctx, ETH_HLEN).map_err(ReturnError::NotOurs)?;
            let (client_addr, client_port) = reverse_nat(&e.quoted)?;
            if packet::rewrite_icmp_error(ctx, ETH_HLEN, &e, client_addr, client_port).is_err() {
                count(Counter::Malformed);
                return Ok(TC_ACT_SHOT);
            }
            count(Counter::IcmpErrorTranslated);
            (client_addr, (1, e.outer.ip_len as u64))
        }
        Err(e) => return Err(ReturnError::NotOurs(e)),
    };
    // 2. Into the client's device.
    add_session_stats(&client_addr, packets, bytes, true, false);
    count(Counter::ReturnDelivered);

    let cfg = config();
    let verdict = if client_link() == CLIENT_LINK_ETHERNET {
        // Hosts behind an Ethernet link need their MAC: the kernel's neighbour table has it.
        // SAFETY: helper call; NULL neighbour = FIB lookup.
        unsafe { bpf_redirect_neigh(cfg.client_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
    } else {
        // TUN: a layer-3 device, the kernel strips the Ethernet header on redirect. TAP: the
        // daemon reads the frame and ignores its header.
        // SAFETY: helper call.
        unsafe { bpf_redirect(cfg.client_ifindex, 0) as i32 }
    };
    Ok(verdict)
}

/// The return path at the driver (XDP native where the driver allows): used when the client
/// link is a TUN. See `xdp.rs`.
#[xdp]
pub fn target_xdp(ctx: XdpContext) -> u32 {
    xdp::verdict(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
