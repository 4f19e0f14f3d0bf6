//! cvpn kernel data plane.
//!
//! * `client_ingress` (TC ingress on the TUN device that carries decrypted client packets):
//!   session check, authorization (one LPM lookup), route (one LPM lookup), SNAT through the NAT
//!   tables, Ethernet header, redirect out of the target interface.
//! * `target_ingress` (TC ingress on each target interface): reverse NAT for return traffic and
//!   redirect into the TUN; everything else passes to the host untouched.
//!
//! Every drop is an [`Drop`] value that names its counter (and, where the flow log wants it, a
//! flow event); the program entry points turn it into a verdict in one place.
#![no_std]
#![no_main]

pub(crate) mod maps;
mod packet;
mod xdp;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh},
    macros::{classifier, xdp},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    AuthEntry, Counter, FlowEvent, NatForward, NatKey, NatReverse, RouteEntry, Session,
    SessionStats, CLIENT_LINK_ETHERNET, CLIENT_LINK_TUN, EVENT_DENIED, EVENT_NAT_FULL,
    EVENT_NO_ROUTE, EVENT_UNKNOWN_SOURCE, IPPROTO_ICMP, IPPROTO_TCP, NAT_FLAG_TCP_CLOSING,
};

use maps::*;
use packet::{Flow, PacketError, ETH_HLEN};

/// What carries client packets (`gateway_common::CLIENT_LINK_*`): a TUN (packets start at the
/// IP header), an Ethernet device (benchmark veth, fixtures), or a TAP. Set by the daemon at
/// load time.
#[no_mangle]
static CLIENT_LINK: u32 = 0;

/// How many ports the NAT tries before it gives up on a flow (the client's own port first).
const NAT_PORT_TRIES: u32 = 16;

/// Why a client packet is dropped. Each maps to a counter; some also emit a flow event.
enum Drop {
    Packet(PacketError),
    UnknownSource(Flow),
    Denied(Flow, u64),
    NoRoute(Flow, u64),
    NatFull(Flow, u64),
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

pub(crate) fn add_session_stats(addr: &[u8; 4], bytes: u16, to_client: bool, dropped: bool) {
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
        stats.dropped_packets += 1;
    } else if to_client {
        stats.to_client_packets += 1;
        stats.to_client_bytes += bytes as u64;
    } else {
        stats.from_client_packets += 1;
        stats.from_client_bytes += bytes as u64;
    }
}

#[classifier]
pub fn client_ingress(ctx: TcContext) -> i32 {
    match try_client_ingress(&ctx) {
        Ok(verdict) => verdict,
        Err(drop) => {
            match drop {
                Drop::Packet(PacketError::NotIpv4) => count(Counter::NotIpv4),
                Drop::Packet(PacketError::Malformed) => count(Counter::Malformed),
                Drop::Packet(PacketError::Unsupported) => count(Counter::Unsupported),
                Drop::UnknownSource(flow) => {
                    count(Counter::UnknownSource);
                    emit(EVENT_UNKNOWN_SOURCE, &flow, 0);
                }
                Drop::Denied(flow, session_id) => {
                    count(Counter::Denied);
                    add_session_stats(&flow.src, 0, false, true);
                    emit(EVENT_DENIED, &flow, session_id);
                }
                Drop::NoRoute(flow, session_id) => {
                    count(Counter::NoRoute);
                    add_session_stats(&flow.src, 0, false, true);
                    emit(EVENT_NO_ROUTE, &flow, session_id);
                }
                Drop::NatFull(flow, session_id) => {
                    count(Counter::NatFull);
                    add_session_stats(&flow.src, 0, false, true);
                    emit(EVENT_NAT_FULL, &flow, session_id);
                }
            }
            TC_ACT_SHOT
        }
    }
}

fn try_client_ingress(ctx: &TcContext) -> Result<i32, Drop> {
    let l2 = client_l2_len();
    if l2 != 0 && l2 != ETH_HLEN {
        return Err(Drop::Packet(PacketError::Malformed));
    }
    // On an Ethernet client link (benchmark variant) the clients must resolve the gateway:
    // ARP goes to the host. A TUN has no ARP.
    if l2 == ETH_HLEN && packet::is_arp(ctx) {
        return Ok(TC_ACT_OK);
    }
    let flow = packet::parse(ctx, l2, true).map_err(Drop::Packet)?;
    count(Counter::ClientPackets);

    // 1. The source must be an active session.
    // SAFETY: the value is copied out at once; the daemon never mutates a session in place.
    let session: Session = match unsafe { SESSIONS.get(&flow.src) } {
        Some(s) => *s,
        None => return Err(Drop::UnknownSource(flow)),
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
        Some(rule) => rule.all_groups != 0 || rule.groups.intersects(&session.groups),
        None => false,
    };
    if !allowed {
        return Err(Drop::Denied(flow, session.session_id));
    }
    let target_id = match route {
        Some(r) => r.target_id,
        None => return Err(Drop::NoRoute(flow, session.session_id)),
    };
    // SAFETY: copied out at once.
    let target = match unsafe { TARGETS.get(&target_id) } {
        Some(t) => *t,
        None => return Err(Drop::NoRoute(flow, session.session_id)),
    };

    // 3. SNAT: reuse the flow's translation, or allocate one.
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
        _ => allocate_nat(&flow, &fwd_key, target_id, &target, now, closing)
            .ok_or(Drop::NatFull(flow, session.session_id))?,
    };

    // 4. Rewrite source address and port, fix the checksums.
    packet::rewrite_source(ctx, l2, &flow, target.snat_addr, snat_port).map_err(Drop::Packet)?;
    add_session_stats(&flow.src, flow.ip_len, false, false);
    count(Counter::Forwarded);

    // 5. An Ethernet header in front (TUN packets have none), then out of the target interface;
    //    the kernel fills the MAC addresses from its neighbour table.
    if l2 == 0 {
        packet::push_ethernet(ctx).map_err(Drop::Packet)?;
    }
    // SAFETY: helper call; a NULL neighbour means "look the next hop up in the FIB".
    let verdict = unsafe { bpf_redirect_neigh(target.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    Ok(verdict)
}

/// Picks the SNAT port for a new flow: the client's own port when no other flow to the same
/// remote holds it, else a random port of the configured range. The reverse entry is inserted
/// with `BPF_NOEXIST`, so two CPUs can never hand out the same port.
fn allocate_nat(
    flow: &Flow,
    fwd_key: &NatKey,
    target_id: u32,
    target: &gateway_common::TargetNetwork,
    now: u64,
    closing: bool,
) -> Option<u16> {
    let cfg = CONFIG.get(0).copied().unwrap_or_default();
    let (min, max) = if cfg.nat_port_min == 0 || cfg.nat_port_max < cfg.nat_port_min {
        (1024u32, 65535u32)
    } else {
        (cfg.nat_port_min as u32, cfg.nat_port_max as u32)
    };
    // Never zero (max >= min above); spelled out so no division-by-zero path reaches the verifier.
    let span = if max >= min { max - min + 1 } else { 1 };
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
        if i > 0 {
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
    let port = chosen?;
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
        return None;
    }
    count(Counter::NatCreated);
    if port != flow.sport {
        count(Counter::NatPortRemapped);
    }
    Some(port)
}

/// Why return-side traffic is not delivered to a client.
pub enum ReturnError {
    /// Not NAT return traffic (or not parseable as such): the host stack decides.
    NotOurs(PacketError),
    /// NAT return traffic for a session that ended: dropped.
    NoSession,
}

/// The reverse-NAT step shared by the TC and XDP return paths: finds the client of a return
/// packet, refreshes the entry, and checks that the client's session is still active.
#[inline(always)]
pub fn reverse_nat(flow: &Flow) -> Result<([u8; 4], u16), ReturnError> {
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
            TC_ACT_OK
        }
        Err(ReturnError::NoSession) => TC_ACT_SHOT,
    }
}

fn try_target_ingress(ctx: &TcContext) -> Result<i32, ReturnError> {
    let flow = packet::parse(ctx, ETH_HLEN, false).map_err(ReturnError::NotOurs)?;
    let (client_addr, client_port) = reverse_nat(&flow)?;
    if packet::rewrite_destination(ctx, ETH_HLEN, &flow, client_addr, client_port).is_err() {
        count(Counter::Malformed);
        return Ok(TC_ACT_SHOT);
    }
    add_session_stats(&client_addr, flow.ip_len, true, false);
    count(Counter::ReturnDelivered);

    let cfg = CONFIG.get(0).copied().unwrap_or_default();
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
