//! Packet parsing and rewriting for the TC programs. Reads go through `bpf_skb_load_bytes`
//! (`TcContext::load`), which checks bounds against the whole packet, linear or not; writes
//! through `bpf_skb_store_bytes` and the checksum helpers, which keep hardware-offloaded
//! checksums (CHECKSUM_PARTIAL from veths) right.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_skb_change_head,
    programs::TcContext,
};
use gateway_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP errors that quote the packet they answer: destination unreachable (fragmentation
/// needed among them) and time exceeded.
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Offset of the quoted packet in an ICMP error (type, code, checksum, 4 bytes of rest).
const ICMP_ERROR_QUOTE: usize = 8;

// Offsets inside the IPv4 header and the L4 headers.
const IP_TTL: usize = 8;
const IP_CSUM: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
const ICMP_CSUM: usize = 2;
const ICMP_ID: usize = 4;

#[derive(Clone, Copy)]
pub enum PacketError {
    /// Not an IPv4 packet.
    NotIpv4,
    /// Shorter than its headers say, or a bad header length.
    Malformed,
    /// A protocol, ICMP type or fragment the gateway does not translate.
    Unsupported,
    /// A client packet with IP options (IHL > 5): source routes, record-route and the like
    /// are never forwarded.
    IpOptions,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

/// The first 14 bytes of a TCP header (ports, sequence numbers, offset, flags).
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHead {
    sport: [u8; 2],
    dport: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    off: u8,
    flags: u8,
}

/// UDP header, or the first 8 bytes of an ICMP echo (type, code, csum, id, seq).
#[repr(C)]
#[derive(Clone, Copy)]
struct Head8 {
    a: [u8; 2],
    b: [u8; 2],
    c: [u8; 2],
    d: [u8; 2],
}

/// What the programs need to know about a packet.
#[derive(Clone, Copy)]
pub struct Flow {
    pub proto: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Ports in host order; for ICMP echo, `sport`/`dport` hold the identifier on the side it
    /// is translated (source for requests from clients, destination for replies), 0 on the
    /// other.
    pub sport: u16,
    pub dport: u16,
    pub ip_len: u16,
    pub ttl: u8,
    /// Offset of the L4 header from the start of the packet.
    pub l4: usize,
    /// Length of the L4 header (TCP with options; 8 for UDP and ICMP).
    pub l4_hdr_len: u16,
    pub tcp_fin_or_rst: bool,
    /// UDP only: the checksum field is zero (no checksum).
    pub udp_no_csum: bool,
}

impl Flow {
    /// No flow (a packet dropped before it was parsed).
    pub const EMPTY: Flow = Flow {
        proto: 0,
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        ip_len: 0,
        ttl: 0,
        l4: 0,
        l4_hdr_len: 0,
        tcp_fin_or_rst: false,
        udp_no_csum: false,
    };
}

/// True for an ARP frame (only asked on Ethernet links).
#[inline(always)]
pub fn is_arp(ctx: &TcContext) -> bool {
    matches!(ctx.load::<[u8; 2]>(12), Ok(t) if u16::from_be_bytes(t) == ETH_P_ARP)
}

/// Parses an IPv4 TCP, UDP or ICMP echo packet whose IP header starts at `l3`. With `l3 ==
/// ETH_HLEN` the Ethernet type is checked first. `from_client` selects which ICMP echo type is
/// expected (requests from clients, replies on the return path).
#[inline(always)]
pub fn parse(ctx: &TcContext, l3: usize, from_client: bool) -> Result<Flow, PacketError> {
    if l3 == ETH_HLEN {
        let proto: [u8; 2] = ctx.load(12).map_err(|_| PacketError::Malformed)?;
        if u16::from_be_bytes(proto) != ETH_P_IP {
            return Err(PacketError::NotIpv4);
        }
    }
    let first: u8 = ctx.load(l3).map_err(|_| PacketError::Malformed)?;
    if first >> 4 != 4 {
        return Err(PacketError::NotIpv4);
    }
    let ip: Ipv4Hdr = ctx.load(l3).map_err(|_| PacketError::Malformed)?;
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(PacketError::Malformed);
    }
    if from_client && ihl > 20 {
        return Err(PacketError::IpOptions);
    }
    let ip_len = u16::from_be_bytes(ip.tot_len);
    if (ip_len as usize) < ihl || (ctx.len() as usize) < l3 + ip_len as usize {
        return Err(PacketError::Malformed);
    }
    // Fragments carry no (or partial) L4 headers: not translated.
    if u16::from_be_bytes(ip.frag_off) & 0x3fff != 0 {
        return Err(PacketError::Unsupported);
    }
    let l4 = l3 + ihl;
    let mut flow = Flow {
        proto: ip.proto,
        src: ip.src,
        dst: ip.dst,
        sport: 0,
        dport: 0,
        ip_len,
        ttl: ip.ttl,
        l4,
        l4_hdr_len: 8,
        tcp_fin_or_rst: false,
        udp_no_csum: false,
    };
    match ip.proto {
        IPPROTO_TCP => {
            let tcp: TcpHead = ctx.load(l4).map_err(|_| PacketError::Malformed)?;
            flow.sport = u16::from_be_bytes(tcp.sport);
            flow.dport = u16::from_be_bytes(tcp.dport);
            // FIN (0x01) or RST (0x04).
            flow.tcp_fin_or_rst = tcp.flags & 0x05 != 0;
            flow.l4_hdr_len = u16::from(tcp.off >> 4) * 4;
        }
        IPPROTO_UDP => {
            let udp: Head8 = ctx.load(l4).map_err(|_| PacketError::Malformed)?;
            flow.sport = u16::from_be_bytes(udp.a);
            flow.dport = u16::from_be_bytes(udp.b);
            flow.udp_no_csum = udp.d == [0, 0];
        }
        IPPROTO_ICMP => {
            let icmp: Head8 = ctx.load(l4).map_err(|_| PacketError::Malformed)?;
            let expected = if from_client {
                ICMP_ECHO_REQUEST
            } else {
                ICMP_ECHO_REPLY
            };
            if icmp.a[0] != expected || icmp.a[1] != 0 {
                return Err(PacketError::Unsupported);
            }
            let id = u16::from_be_bytes(icmp.c);
            if from_client {
                flow.sport = id;
            } else {
                flow.dport = id;
            }
        }
        _ => return Err(PacketError::Unsupported),
    }
    Ok(flow)
}

#[inline(always)]
fn l4_csum_offset(flow: &Flow) -> usize {
    match flow.proto {
        IPPROTO_TCP => flow.l4 + TCP_CSUM,
        IPPROTO_UDP => flow.l4 + UDP_CSUM,
        _ => flow.l4 + ICMP_CSUM,
    }
}

/// Replaces one IPv4 address (source or destination, at `addr_off` in the IP header) and one
/// port (or ICMP id) at `port_off` from the start of the packet, fixing the IP and L4
/// checksums.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    l3: usize,
    flow: &Flow,
    addr_off: usize,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), PacketError> {
    let csum = l4_csum_offset(flow);
    let old_a = u32::from_ne_bytes(old_addr) as u64;
    let new_a = u32::from_ne_bytes(new_addr) as u64;
    let old_p = u16::to_be(old_port) as u64;
    let new_p = u16::to_be(new_port) as u64;
    let err = |_| PacketError::Malformed;
    if old_addr != new_addr {
        ctx.store(l3 + addr_off, &new_addr, 0).map_err(err)?;
        ctx.l3_csum_replace(l3 + IP_CSUM, old_a, new_a, 4)
            .map_err(err)?;
        match flow.proto {
            IPPROTO_TCP => ctx
                .l4_csum_replace(csum, old_a, new_a, (BPF_F_PSEUDO_HDR | 4) as u64)
                .map_err(err)?,
            IPPROTO_UDP => ctx
                .l4_csum_replace(
                    csum,
                    old_a,
                    new_a,
                    (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4) as u64,
                )
                .map_err(err)?,
            // ICMP has no pseudo-header.
            _ => {}
        }
    }
    if old_port != new_port {
        ctx.store(port_off, &new_port.to_be_bytes(), 0)
            .map_err(err)?;
        let flags = if flow.proto == IPPROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64 | 2
        } else {
            2
        };
        ctx.l4_csum_replace(csum, old_p, new_p, flags)
            .map_err(err)?;
    }
    Ok(())
}

/// SNAT: source address and source port (ICMP: echo id) of a client packet.
#[inline(always)]
pub fn rewrite_source(
    ctx: &TcContext,
    l3: usize,
    flow: &Flow,
    snat_addr: [u8; 4],
    snat_port: u16,
) -> Result<(), PacketError> {
    let port_off = if flow.proto == IPPROTO_ICMP {
        flow.l4 + ICMP_ID
    } else {
        flow.l4
    };
    rewrite(
        ctx, l3, flow, IP_SRC, flow.src, snat_addr, port_off, flow.sport, snat_port,
    )
}

/// Reverse NAT: destination address and destination port (ICMP: echo id) of a return packet.
#[inline(always)]
pub fn rewrite_destination(
    ctx: &TcContext,
    l3: usize,
    flow: &Flow,
    client_addr: [u8; 4],
    client_port: u16,
) -> Result<(), PacketError> {
    let port_off = if flow.proto == IPPROTO_ICMP {
        flow.l4 + ICMP_ID
    } else {
        flow.l4 + 2
    };
    rewrite(
        ctx,
        l3,
        flow,
        IP_DST,
        flow.dst,
        client_addr,
        port_off,
        flow.dport,
        client_port,
    )
}

/// An ICMP error on the return path that quotes one of our translated packets: the quoted
/// packet went out from the SNAT address and port to a remote, so the error belongs to that
/// flow's client.
pub struct IcmpError {
    /// The outer packet: destination the SNAT address; ICMP header at `outer.l4`.
    pub outer: Flow,
    /// The quoted packet's IP header, and its flow as the return path sees replies to it
    /// (`src` the remote, `dst` the SNAT address, `dport` the SNAT port).
    pub quoted_l3: usize,
    pub quoted: Flow,
}

/// Parses an ICMP destination-unreachable or time-exceeded message whose IP header starts at
/// `l3` and that quotes a TCP or UDP packet (its IP header and at least 8 bytes).
#[inline(always)]
pub fn parse_icmp_error(ctx: &TcContext, l3: usize) -> Result<IcmpError, PacketError> {
    let ip: Ipv4Hdr = ctx.load(l3).map_err(|_| PacketError::Malformed)?;
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < 20 || ip.proto != IPPROTO_ICMP {
        return Err(PacketError::Unsupported);
    }
    if u16::from_be_bytes(ip.frag_off) & 0x3fff != 0 {
        return Err(PacketError::Unsupported);
    }
    let l4 = l3 + ihl;
    let icmp: Head8 = ctx.load(l4).map_err(|_| PacketError::Malformed)?;
    if icmp.a[0] != ICMP_DEST_UNREACHABLE && icmp.a[0] != ICMP_TIME_EXCEEDED {
        return Err(PacketError::Unsupported);
    }
    let quoted_l3 = l4 + ICMP_ERROR_QUOTE;
    let q: Ipv4Hdr = ctx.load(quoted_l3).map_err(|_| PacketError::Malformed)?;
    let qihl = ((q.version_ihl & 0x0f) as usize) * 4;
    if q.version_ihl >> 4 != 4 || qihl != 20 {
        return Err(PacketError::Unsupported);
    }
    if q.proto != IPPROTO_TCP && q.proto != IPPROTO_UDP {
        return Err(PacketError::Unsupported);
    }
    let ports: Head8 = ctx
        .load(quoted_l3 + 20)
        .map_err(|_| PacketError::Malformed)?;
    let outer = Flow {
        proto: IPPROTO_ICMP,
        src: ip.src,
        dst: ip.dst,
        sport: 0,
        dport: 0,
        ip_len: u16::from_be_bytes(ip.tot_len),
        ttl: ip.ttl,
        l4,
        l4_hdr_len: 8,
        tcp_fin_or_rst: false,
        udp_no_csum: false,
    };
    // The quoted packet went SNAT address:port -> remote; as a reply it is remote -> SNAT.
    let quoted = Flow {
        proto: q.proto,
        src: q.dst,
        dst: q.src,
        sport: u16::from_be_bytes(ports.b),
        dport: u16::from_be_bytes(ports.a),
        ip_len: u16::from_be_bytes(q.tot_len),
        ttl: q.ttl,
        l4: quoted_l3 + 20,
        l4_hdr_len: 8,
        tcp_fin_or_rst: false,
        udp_no_csum: false,
    };
    Ok(IcmpError {
        outer,
        quoted_l3,
        quoted,
    })
}

/// Translates an ICMP error back to the client: the outer destination, and the quoted
/// packet's source address and port, become the client's. The quoted IP header's checksum is
/// fixed; the ICMP checksum changes only by the port (an address change and the quoted header
/// checksum's matching change cancel out in the ICMP sum). The quoted TCP/UDP checksum is left
/// as it is: nobody verifies a quoted one.
#[inline(always)]
pub fn rewrite_icmp_error(
    ctx: &TcContext,
    l3: usize,
    e: &IcmpError,
    client_addr: [u8; 4],
    client_port: u16,
) -> Result<(), PacketError> {
    let err = |_| PacketError::Malformed;
    let old_a = u32::from_ne_bytes(e.outer.dst) as u64;
    let new_a = u32::from_ne_bytes(client_addr) as u64;
    // 1. Outer destination (the IP checksum; ICMP has no pseudo-header).
    ctx.store(l3 + IP_DST, &client_addr, 0).map_err(err)?;
    ctx.l3_csum_replace(l3 + IP_CSUM, old_a, new_a, 4)
        .map_err(err)?;
    // 2. Quoted source address, with the quoted header's checksum.
    let old_q = u32::from_ne_bytes(e.quoted.dst) as u64;
    ctx.store(e.quoted_l3 + IP_SRC, &client_addr, 0)
        .map_err(err)?;
    ctx.l3_csum_replace(e.quoted_l3 + IP_CSUM, old_q, new_a, 4)
        .map_err(err)?;
    // 3. Quoted source port, and the ICMP checksum.
    let old_p = u16::to_be(e.quoted.dport) as u64;
    let new_p = u16::to_be(client_port) as u64;
    ctx.store(e.quoted.l4, &client_port.to_be_bytes(), 0)
        .map_err(err)?;
    ctx.l4_csum_replace(e.outer.l4 + ICMP_CSUM, old_p, new_p, 2)
        .map_err(err)?;
    Ok(())
}

/// Forwarding: TTL minus one, with the IP checksum fixed. The caller has dropped packets whose
/// TTL is 1 or 0.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, l3: usize, flow: &Flow) -> Result<(), PacketError> {
    let new_ttl = flow.ttl.wrapping_sub(1);
    // TTL shares a 16-bit checksum word with the protocol byte.
    let old_word = u16::from_ne_bytes([flow.ttl, flow.proto]) as u64;
    let new_word = u16::from_ne_bytes([new_ttl, flow.proto]) as u64;
    let err = |_| PacketError::Malformed;
    ctx.store(l3 + IP_TTL, &new_ttl, 0).map_err(err)?;
    ctx.l3_csum_replace(l3 + IP_CSUM, old_word, new_word, 2)
        .map_err(err)?;
    Ok(())
}

/// Puts an Ethernet header (zero MACs, type IPv4) in front of an IP packet. The kernel silently
/// drops packets redirected from a TUN to an Ethernet device without one (seen on Linux 6.18);
/// `bpf_redirect_neigh` then fills in the MAC addresses.
#[inline(always)]
pub fn push_ethernet(ctx: &TcContext) -> Result<(), PacketError> {
    // SAFETY: helper call on our own context.
    let ret = unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_HLEN as u32, 0) };
    if ret != 0 {
        return Err(PacketError::Malformed);
    }
    ctx.store(12, &ETH_P_IP.to_be_bytes(), 0)
        .map_err(|_| PacketError::Malformed)?;
    Ok(())
}
