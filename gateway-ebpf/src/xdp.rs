//! The return path as an XDP program: the same reverse NAT as `target_ingress`, run by the
//! driver before any socket buffer exists. Packets are read and rewritten in place with direct
//! packet access — every bounds check is the `ptr_at` below — and checksums are updated
//! incrementally (RFC 1624), and the frame is redirected to the client device. Only devices
//! with `ndo_xdp_xmit` take XDP frames: a TAP does, a TUN does not (the kernel answers
//! EOPNOTSUPP), so the daemon uses this program with a TAP client device and TC with a TUN.
//!
//! Traffic that is not this endpoint's gets `XDP_PASS`: an interface holds one XDP program, so
//! a second endpoint on the same target interface necessarily runs its return path in TC
//! (the loader falls back to TC when the XDP hook is taken), and a passed packet reaches it
//! there.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use gateway_common::{Counter, CLIENT_LINK_TUN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    count,
    packet::{Flow, PacketError, ETH_HLEN},
    reverse_nat, ReturnError,
};

const ETH_P_IP: u16 = 0x0800;

/// A pointer to a `T` at `offset`, if the whole `T` lies inside the packet.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, PacketError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(PacketError::Malformed);
    }
    Ok((start + offset) as *mut T)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624: HC' = ~(~HC + ~m + m') for one 16-bit word.
#[inline(always)]
fn csum_replace2(csum: *mut [u8; 2], old: [u8; 2], new: [u8; 2]) {
    // SAFETY: `csum` comes from `ptr_at`, so it lies inside the packet.
    unsafe {
        let hc = u16::from_be_bytes(*csum);
        let sum = (!hc) as u32 + (!u16::from_be_bytes(old)) as u32 + u16::from_be_bytes(new) as u32;
        *csum = (!fold(sum)).to_be_bytes();
    }
}

#[inline(always)]
fn csum_replace4(csum: *mut [u8; 2], old: [u8; 4], new: [u8; 4]) {
    csum_replace2(csum, [old[0], old[1]], [new[0], new[1]]);
    csum_replace2(csum, [old[2], old[3]], [new[2], new[3]]);
}

pub fn try_target_xdp(ctx: &XdpContext) -> Result<u32, ReturnError> {
    let ethertype: *mut [u8; 2] = ptr_at(ctx, 12).map_err(ReturnError::NotOurs)?;
    // SAFETY: bounds checked by ptr_at.
    if u16::from_be_bytes(unsafe { *ethertype }) != ETH_P_IP {
        return Err(ReturnError::NotOurs(PacketError::NotIpv4));
    }
    let vihl: *mut u8 = ptr_at(ctx, ETH_HLEN).map_err(ReturnError::NotOurs)?;
    // SAFETY: bounds checked by ptr_at.
    let vihl = unsafe { *vihl };
    if vihl >> 4 != 4 {
        return Err(ReturnError::NotOurs(PacketError::NotIpv4));
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(ReturnError::NotOurs(PacketError::Malformed));
    }
    let ip: *mut [u8; 20] = ptr_at(ctx, ETH_HLEN).map_err(ReturnError::NotOurs)?;
    // SAFETY: bounds checked by ptr_at.
    let iph = unsafe { *ip };
    let frag = u16::from_be_bytes([iph[6], iph[7]]);
    if frag & 0x3fff != 0 {
        return Err(ReturnError::NotOurs(PacketError::Unsupported));
    }
    let ip_len = u16::from_be_bytes([iph[2], iph[3]]);
    let proto = iph[9];
    let src = [iph[12], iph[13], iph[14], iph[15]];
    let dst = [iph[16], iph[17], iph[18], iph[19]];
    let l4 = ETH_HLEN + (ihl & 0x3c);
    let mut flow = Flow {
        proto,
        src,
        dst,
        sport: 0,
        dport: 0,
        ip_len,
        ttl: iph[8],
        l4,
        // Not read: XDP frames are never GSO packets.
        l4_hdr_len: 0,
        tcp_fin_or_rst: false,
        udp_no_csum: false,
    };
    // (offset of the translated port or id, offset of the L4 checksum)
    let (port_off, csum_off) = match proto {
        IPPROTO_TCP => {
            let tcp: *mut [u8; 14] = ptr_at(ctx, l4).map_err(ReturnError::NotOurs)?;
            // SAFETY: bounds checked by ptr_at.
            let t = unsafe { *tcp };
            flow.sport = u16::from_be_bytes([t[0], t[1]]);
            flow.dport = u16::from_be_bytes([t[2], t[3]]);
            flow.tcp_fin_or_rst = t[13] & 0x05 != 0;
            (l4 + 2, l4 + 16)
        }
        IPPROTO_UDP => {
            let udp: *mut [u8; 8] = ptr_at(ctx, l4).map_err(ReturnError::NotOurs)?;
            // SAFETY: bounds checked by ptr_at.
            let u = unsafe { *udp };
            flow.sport = u16::from_be_bytes([u[0], u[1]]);
            flow.dport = u16::from_be_bytes([u[2], u[3]]);
            flow.udp_no_csum = u[6] == 0 && u[7] == 0;
            (l4 + 2, l4 + 6)
        }
        IPPROTO_ICMP => {
            let icmp: *mut [u8; 8] = ptr_at(ctx, l4).map_err(ReturnError::NotOurs)?;
            // SAFETY: bounds checked by ptr_at.
            let i = unsafe { *icmp };
            if i[0] != 0 || i[1] != 0 {
                return Err(ReturnError::NotOurs(PacketError::Unsupported));
            }
            flow.dport = u16::from_be_bytes([i[4], i[5]]);
            (l4 + 4, l4 + 2)
        }
        _ => return Err(ReturnError::NotOurs(PacketError::Unsupported)),
    };

    let (client_addr, client_port) = reverse_nat(&flow)?;

    // Rewrite destination address, then port / id, with incremental checksum updates.
    let ip_csum: *mut [u8; 2] = ptr_at(ctx, ETH_HLEN + 10).map_err(ReturnError::NotOurs)?;
    let ip_dst: *mut [u8; 4] = ptr_at(ctx, ETH_HLEN + 16).map_err(ReturnError::NotOurs)?;
    let l4_csum: *mut [u8; 2] = ptr_at(ctx, csum_off).map_err(ReturnError::NotOurs)?;
    let port: *mut [u8; 2] = ptr_at(ctx, port_off).map_err(ReturnError::NotOurs)?;
    let new_port = client_port.to_be_bytes();
    // SAFETY: all four pointers are bounds checked by ptr_at.
    unsafe {
        let old_port = *port;
        *ip_dst = client_addr;
        csum_replace4(ip_csum, dst, client_addr);
        let skip_l4 = proto == IPPROTO_UDP && flow.udp_no_csum;
        if !skip_l4 {
            if proto != IPPROTO_ICMP {
                csum_replace4(l4_csum, dst, client_addr); // pseudo-header
            }
            csum_replace2(l4_csum, old_port, new_port);
            if proto == IPPROTO_UDP && *l4_csum == [0, 0] {
                *l4_csum = [0xff, 0xff];
            }
        }
        *port = new_port;
    }
    // An XDP frame is never a GSO packet.
    crate::add_session_stats(&client_addr, 1, ip_len as u64, true, false);
    count(Counter::ReturnDelivered);

    let cfg = crate::maps::CONFIG.get(0).copied().unwrap_or_default();
    if crate::client_link() == CLIENT_LINK_TUN {
        // A TUN wants the bare IP packet. (Linux TUN devices take no XDP frames today — the
        // redirect fails with EOPNOTSUPP — so the daemon attaches TC instead; kept correct for
        // kernels that do.)
        // SAFETY: helper call on our own context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, ETH_HLEN as i32) } != 0 {
            count(Counter::Malformed);
            return Ok(XDP_DROP);
        }
    }
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect(cfg.client_ifindex, 0) } as u32)
}

pub fn verdict(ctx: &XdpContext) -> u32 {
    match try_target_xdp(ctx) {
        Ok(v) => v,
        Err(ReturnError::NotOurs(_)) => {
            count(Counter::ReturnPassed);
            XDP_PASS
        }
        Err(ReturnError::NoSession) => XDP_DROP,
    }
}
