//! TUN offloads, sans-IO: the `virtio_net_hdr` a TUN opened with `IFF_VNET_HDR` puts in front of
//! every packet, the cutting of the kernel's TCP super-packets into tunnel-sized segments
//! (userspace GSO, [`Segments`]), and the coalescing of a receive batch's TCP segments of one
//! flow into one super-packet (userspace GRO, [`Coalescer`]) — what wireguard-go and Tailscale
//! do on their TUNs.
//!
//! ```text
//!  TUN read:   [virtio_net_hdr 10][IPv4][TCP][payload up to 64 KiB]        (gso_type TCPV4)
//!               │ Segments: one segment per gso_size bytes of payload, headers copied with
//!               ▼ total length, IP id, IP checksum, sequence number, flags and TCP checksum set
//!             [IPv4][TCP][≤ gso_size] [IPv4][TCP][≤ gso_size] …  → seal each → one UDP GSO send
//!
//!  TUN write:  decrypted [IPv4][TCP][mss] [IPv4][TCP][mss] … of one flow, contiguous
//!               │ Coalescer: payloads appended behind the first segment's headers
//!               ▼
//!             [virtio_net_hdr: TCPV4, gso_size mss, NEEDS_CSUM][IPv4][TCP][n × mss]  → one write
//! ```
//!
//! The header's fields are in the host's byte order (a TUN without `TUNSETVNETLE`/`BE` uses the
//! legacy virtio layout, native-endian). A packet with `NEEDS_CSUM` carries in its checksum
//! field only the sum of the pseudo-header: the whole checksum is folded from `csum_start` to
//! the end, field included (what `skb_checksum_help` does).
//!
//! The kernel programs see the coalesced packets as GSO packets with a partial checksum; their
//! checksum helpers (`bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR`) keep such a packet right,
//! and the kernel cuts it again where the next hop needs it.
//!
//! Coalescing does not verify the segments' TCP checksums: every segment passed the data
//! channel's AEAD tag, so nothing changed it on the way, and a client that computes a wrong
//! checksum only spoils its own stream. The coalesced packet's checksum is computed afresh.
//!
//! Sans-IO and bounded: a [`Coalescer`] holds [`MAX_FLOWS`] flows of at most 64 KiB each,
//! allocated once; [`Segments`] writes into the caller's buffers. Nothing here allocates per
//! packet, and nothing panics on what the kernel or a peer hands it.

/// Length of `struct virtio_net_hdr` (without `num_buffers`): what a TUN with `IFF_VNET_HDR`
/// and the default header size puts in front of each packet.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial (`csum_start`, `csum_offset`).
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was verified (only on packets from the kernel).
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_ECN`: a flag on the GSO type.
pub const GSO_ECN: u8 = 0x80;
/// Largest IPv4 packet, and so largest super-packet.
pub const MAX_PACKET: usize = 65_535;
/// Flows a [`Coalescer`] builds at once; a further flow writes out the least recently used.
pub const MAX_FLOWS: usize = 8;
/// Segments coalesced into one super-packet at most (the kernel's GRO stops at 64 as well).
pub const MAX_SEGMENTS: u16 = 64;
/// Smallest segment size [`Segments`] accepts: a 64 KiB packet never becomes more than about a
/// thousand segments.
pub const MIN_SEGMENT: u16 = 64;

const IP_PROTO_TCP: u8 = 6;
const TCP_CSUM: usize = 16;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header at the start of `b` (`None` if shorter than [`VNET_HDR_LEN`]).
    pub fn decode(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a packet read from the TUN cannot be cut into segments. Such a packet is dropped (and
/// counted by the caller); none of these happen with the offloads the daemon asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("packet shorter than its headers")]
    Truncated,
    #[error("GSO packet that is not IPv4 + TCP")]
    NotTcpV4,
    #[error("GSO type {0:#x} was not asked for (only TCPv4 segmentation is enabled)")]
    UnsupportedGso(u8),
    #[error("checksum offsets {start}+{offset} lie outside the packet")]
    BadChecksumOffsets { start: u16, offset: u16 },
    #[error("GSO segment size {0} below the minimum {MIN_SEGMENT}")]
    BadSegmentSize(u16),
}

// ---------------------------------------------------------------------------------------------
// The Internet checksum (RFC 1071)

/// Adds `data` to a ones'-complement sum (big-endian 16-bit words; an odd last byte is padded
/// with zero). 32-bit words summed into 64 bits fold to the same 16-bit sum.
pub fn checksum_add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        acc += u64::from(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits (not inverted).
pub fn checksum_fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The sum of the IPv4 pseudo-header of a TCP/UDP packet whose L4 part is `l4_len` bytes.
fn pseudo_header_sum(ip: &[u8], proto: u8, l4_len: usize) -> u64 {
    checksum_add(0, &ip[12..20]) + u64::from(proto) + l4_len as u64
}

/// Sets the IPv4 header checksum of `ip` (its first `ihl` bytes).
fn set_ip_checksum(ip: &mut [u8], ihl: usize) {
    ip[10] = 0;
    ip[11] = 0;
    let c = !checksum_fold(checksum_add(0, &ip[..ihl]));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Whether a TCP/IPv4 packet's checksums are right (tests and the fuzz target use it).
pub fn tcp_v4_checksums_ok(packet: &[u8]) -> bool {
    let Some(h) = TcpV4::parse(packet) else {
        return false;
    };
    let ip_ok = checksum_fold(checksum_add(0, &packet[..h.ihl])) == 0xffff;
    let l4 = &packet[h.ihl..h.total];
    let sum = pseudo_header_sum(packet, IP_PROTO_TCP, l4.len());
    ip_ok && checksum_fold(checksum_add(sum, l4)) == 0xffff
}

// ---------------------------------------------------------------------------------------------
// Headers

/// The offsets and fields of a TCP/IPv4 packet this module needs.
#[derive(Clone, Copy, Debug)]
struct TcpV4 {
    ihl: usize,
    /// IP header + TCP header.
    hdrs: usize,
    /// The IP total length (≤ the packet's length).
    total: usize,
    seq: u32,
    flags: u8,
}

impl TcpV4 {
    fn parse(p: &[u8]) -> Option<TcpV4> {
        if p.len() < 20 || p[0] >> 4 != 4 || p[9] != IP_PROTO_TCP {
            return None;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if ihl < 20 || total > p.len() || total < ihl + 20 {
            return None;
        }
        let doff = usize::from(p[ihl + 12] >> 4) * 4;
        if doff < 20 || ihl + doff > total {
            return None;
        }
        Some(TcpV4 {
            ihl,
            hdrs: ihl + doff,
            total,
            seq: u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]),
            flags: p[ihl + 13],
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Segmentation (TUN → tunnel)

/// One packet read from a TUN with offloads, as the tunnel-sized packets it stands for: itself
/// (its checksum completed if the kernel left it partial), or the segments of a TCP
/// super-packet. [`Segments::write_next`] writes them one by one into the caller's buffer.
#[derive(Debug)]
pub struct Segments<'a> {
    packet: &'a [u8],
    plan: Plan,
}

#[derive(Debug)]
enum Plan {
    /// The packet as it is; `done` once written.
    Whole { done: bool },
    /// TCP segmentation: `next` is the payload offset of the next segment.
    Tcp {
        h: TcpV4,
        mss: usize,
        next: usize,
        index: u16,
        ip_id: u16,
    },
}

impl<'a> Segments<'a> {
    /// Reads what the kernel said of `packet` in `hdr`. A non-GSO packet with a partial checksum
    /// gets its checksum completed in place.
    pub fn new(hdr: VnetHdr, packet: &'a mut [u8]) -> Result<Segments<'a>, OffloadError> {
        let gso = hdr.gso_type & !GSO_ECN;
        if gso == GSO_NONE {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(packet, hdr.csum_start, hdr.csum_offset)?;
            }
            return Ok(Segments {
                packet,
                plan: Plan::Whole { done: false },
            });
        }
        if gso != GSO_TCPV4 {
            return Err(OffloadError::UnsupportedGso(hdr.gso_type));
        }
        if hdr.gso_size < MIN_SEGMENT {
            return Err(OffloadError::BadSegmentSize(hdr.gso_size));
        }
        let h = TcpV4::parse(packet).ok_or(if packet.len() < 40 {
            OffloadError::Truncated
        } else {
            OffloadError::NotTcpV4
        })?;
        let ip_id = u16::from_be_bytes([packet[4], packet[5]]);
        let packet: &'a [u8] = packet;
        Ok(Segments {
            packet,
            plan: Plan::Tcp {
                h,
                mss: usize::from(hdr.gso_size),
                next: h.hdrs,
                index: 0,
                ip_id,
            },
        })
    }

    /// How many packets this stands for.
    pub fn count(&self) -> usize {
        match &self.plan {
            Plan::Whole { .. } => 1,
            Plan::Tcp { h, mss, .. } => (h.total - h.hdrs).div_ceil(*mss).max(1),
        }
    }

    /// The longest packet [`Segments::write_next`] writes.
    pub fn max_len(&self) -> usize {
        match &self.plan {
            Plan::Whole { .. } => self.packet.len(),
            Plan::Tcp { h, mss, .. } => h.hdrs + (*mss).min(h.total - h.hdrs),
        }
    }

    /// Writes the next packet to the start of `dst` and returns its length; `None` when all
    /// are written, or when `dst` is shorter than [`Segments::max_len`].
    pub fn write_next(&mut self, dst: &mut [u8]) -> Option<usize> {
        match &mut self.plan {
            Plan::Whole { done } => {
                let n = self.packet.len();
                if *done || dst.len() < n {
                    return None;
                }
                dst[..n].copy_from_slice(self.packet);
                *done = true;
                Some(n)
            }
            Plan::Tcp {
                h,
                mss,
                next,
                index,
                ip_id,
            } => {
                let h = *h;
                // A packet without payload still goes out once (headers only).
                if *next >= h.total && !(*index == 0 && h.total == h.hdrs) {
                    return None;
                }
                let take = (*mss).min(h.total - *next);
                let len = h.hdrs + take;
                if dst.len() < len {
                    return None;
                }
                let last = *next + take >= h.total;
                let out = &mut dst[..len];
                out[..h.hdrs].copy_from_slice(&self.packet[..h.hdrs]);
                out[h.hdrs..].copy_from_slice(&self.packet[*next..*next + take]);
                // IPv4: length, id (one more per segment, as the kernel's TSO does), checksum.
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                out[4..6].copy_from_slice(&ip_id.wrapping_add(*index).to_be_bytes());
                set_ip_checksum(out, h.ihl);
                // TCP: sequence number; CWR on the first segment only, FIN and PSH on the last.
                let t = h.ihl;
                let seq = h.seq.wrapping_add((*next - h.hdrs) as u32);
                out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
                let mut flags = h.flags;
                if *index > 0 {
                    flags &= !TCP_CWR;
                }
                if !last {
                    flags &= !(TCP_FIN | TCP_PSH);
                }
                out[t + 13] = flags;
                out[t + TCP_CSUM] = 0;
                out[t + TCP_CSUM + 1] = 0;
                let sum = pseudo_header_sum(out, IP_PROTO_TCP, len - t);
                let c = !checksum_fold(checksum_add(sum, &out[t..]));
                out[t + TCP_CSUM..t + TCP_CSUM + 2].copy_from_slice(&c.to_be_bytes());
                *next += take.max(1);
                *index = index.wrapping_add(1);
                Some(len)
            }
        }
    }
}

/// Completes a partial checksum: the field at `start + offset` holds the pseudo-header's sum;
/// the checksum covers everything from `start` on.
fn complete_checksum(packet: &mut [u8], start: u16, offset: u16) -> Result<(), OffloadError> {
    let (s, o) = (usize::from(start), usize::from(offset));
    if s + o + 2 > packet.len() {
        return Err(OffloadError::BadChecksumOffsets { start, offset });
    }
    let c = !checksum_fold(checksum_add(0, &packet[s..]));
    packet[s + o..s + o + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Coalescing (tunnel → TUN)

/// The fields that must be equal for two segments to join one super-packet: addresses, ports,
/// and what the kernel's GRO compares too (TOS, TTL, DF, acknowledgement, window, options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    addrs: [u8; 8],
    ports: [u8; 4],
}

impl FlowKey {
    fn of(p: &[u8], ihl: usize) -> FlowKey {
        let mut addrs = [0; 8];
        addrs.copy_from_slice(&p[12..20]);
        let mut ports = [0; 4];
        ports.copy_from_slice(&p[ihl..ihl + 4]);
        FlowKey { addrs, ports }
    }
}

/// One super-packet being built: `buf[..len]` is an IPv4 packet (the first segment's headers,
/// then every segment's payload).
struct Flow {
    buf: Box<[u8]>,
    len: usize,
    key: FlowKey,
    hdrs: usize,
    ihl: usize,
    mss: usize,
    segments: u16,
    next_seq: u32,
    /// False once a shorter segment or PSH ended it.
    open: bool,
    /// For choosing the least recently used flow.
    used: u64,
}

impl Flow {
    /// Whether `p` (TCP, ACK/PSH only, with payload) continues this flow's packet.
    fn takes(&self, p: &[u8], h: &TcpV4, key: &FlowKey) -> bool {
        let first = &self.buf[..self.hdrs];
        let payload = h.total - h.hdrs;
        self.open
            && self.key == *key
            && h.seq == self.next_seq
            && h.hdrs == self.hdrs
            && payload <= self.mss
            && self.segments < MAX_SEGMENTS
            && self.len + payload <= MAX_PACKET
            // Header length, TOS, TTL and the fragment word (DF) alike …
            && p[0] == first[0]
            && p[1] == first[1]
            && p[8] == first[8]
            && p[6..8] == first[6..8]
            // … and the acknowledgement, window and options.
            && p[self.ihl + 8..self.ihl + 12] == first[self.ihl + 8..self.ihl + 12]
            && p[self.ihl + 14..self.ihl + 16] == first[self.ihl + 14..self.ihl + 16]
            && p[self.ihl + 20..self.hdrs] == first[self.ihl + 20..self.hdrs]
    }
}

/// What [`Coalescer::push`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Joined (or started) a super-packet: written at a later flush.
    Held,
    /// Written at once, as it is.
    Written,
}

/// Userspace GRO for the packets of one receive batch. Push each decrypted packet, then
/// [`Coalescer::flush`] at the end of the batch; `write(header, packet)` gets each packet to
/// write to the TUN, in an order that keeps every flow's own order.
pub struct Coalescer {
    flows: Vec<Flow>,
    clock: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

impl Coalescer {
    /// Allocates its [`MAX_FLOWS`] buffers once.
    pub fn new() -> Coalescer {
        Coalescer {
            flows: (0..MAX_FLOWS)
                .map(|_| Flow {
                    buf: vec![0u8; MAX_PACKET].into_boxed_slice(),
                    len: 0,
                    key: FlowKey {
                        addrs: [0; 8],
                        ports: [0; 4],
                    },
                    hdrs: 0,
                    ihl: 0,
                    mss: 0,
                    segments: 0,
                    next_seq: 0,
                    open: false,
                    used: 0,
                })
                .collect(),
            clock: 0,
        }
    }

    /// Takes one IPv4 packet. A TCP segment with payload and only ACK (and PSH) set joins its
    /// flow's super-packet; anything else is written at once, after its flow's super-packet.
    pub fn push(
        &mut self,
        packet: &[u8],
        write: &mut impl FnMut(&[u8; VNET_HDR_LEN], &[u8]),
    ) -> Pushed {
        self.clock += 1;
        let Some(h) = TcpV4::parse(packet) else {
            write(&VnetHdr::default().encode(), packet);
            return Pushed::Written;
        };
        let key = FlowKey::of(packet, h.ihl);
        let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
        let payload = h.total - h.hdrs;
        let plain = h.flags & !(TCP_ACK | TCP_PSH) == 0 && h.flags & TCP_ACK != 0;
        let mergeable = plain && !fragment && payload > 0 && h.total == packet.len();
        let slot = self.flows.iter().position(|f| f.len > 0 && f.key == key);
        if !mergeable {
            if let Some(i) = slot {
                self.write_flow(i, write);
            }
            write(&VnetHdr::default().encode(), packet);
            return Pushed::Written;
        }
        if let Some(i) = slot {
            if self.flows[i].takes(packet, &h, &key) {
                let f = &mut self.flows[i];
                f.buf[f.len..f.len + payload].copy_from_slice(&packet[h.hdrs..h.total]);
                f.len += payload;
                f.segments += 1;
                f.next_seq = f.next_seq.wrapping_add(payload as u32);
                f.used = self.clock;
                if payload < f.mss || h.flags & TCP_PSH != 0 {
                    f.open = false;
                    let psh = f.ihl + 13;
                    f.buf[psh] |= h.flags & TCP_PSH;
                }
                return Pushed::Held;
            }
            self.write_flow(i, write);
        }
        // A new super-packet: in a free buffer, else in the least recently used one.
        let i = match self.flows.iter().position(|f| f.len == 0) {
            Some(i) => i,
            None => {
                let i = self
                    .flows
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, f)| f.used)
                    .map_or(0, |(i, _)| i);
                self.write_flow(i, write);
                i
            }
        };
        let f = &mut self.flows[i];
        f.buf[..h.total].copy_from_slice(&packet[..h.total]);
        f.len = h.total;
        f.key = key;
        f.hdrs = h.hdrs;
        f.ihl = h.ihl;
        f.mss = payload;
        f.segments = 1;
        f.next_seq = h.seq.wrapping_add(payload as u32);
        f.open = h.flags & TCP_PSH == 0;
        f.used = self.clock;
        Pushed::Held
    }

    /// Writes every super-packet held (the end of a batch).
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8; VNET_HDR_LEN], &[u8])) {
        for i in 0..self.flows.len() {
            self.write_flow(i, write);
        }
    }

    /// Packets held, for tests and bounds.
    pub fn held(&self) -> usize {
        self.flows
            .iter()
            .filter(|f| f.len > 0)
            .map(|f| usize::from(f.segments))
            .sum()
    }

    fn write_flow(&mut self, i: usize, write: &mut impl FnMut(&[u8; VNET_HDR_LEN], &[u8])) {
        let f = &mut self.flows[i];
        if f.len == 0 {
            return;
        }
        let len = f.len;
        f.len = 0;
        if f.segments == 1 {
            // The segment as the client sent it, checksum and all.
            write(&VnetHdr::default().encode(), &f.buf[..len]);
            return;
        }
        let (ihl, hdrs) = (f.ihl, f.hdrs);
        let p = &mut f.buf[..len];
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        set_ip_checksum(p, ihl);
        // A partial checksum: the pseudo-header's sum, for the kernel to complete per segment.
        let pseudo = checksum_fold(pseudo_header_sum(p, IP_PROTO_TCP, len - ihl));
        p[ihl + TCP_CSUM..ihl + TCP_CSUM + 2].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: hdrs as u16,
            gso_size: f.mss as u16,
            csum_start: ihl as u16,
            csum_offset: TCP_CSUM as u16,
        };
        write(&hdr.encode(), p);
    }
}

#[cfg(test)]
mod tests;
