//! Packet building and checking for fixtures: etherparse builds, and an independent RFC 1071
//! checksum verifier checks what the kernel programs wrote.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, fin: bool },
    Udp { sport: u16, dport: u16 },
    EchoRequest { id: u16, seq: u16 },
    EchoReply { id: u16, seq: u16 },
}

/// An Ethernet + IPv4 packet with correct checksums.
pub fn build(src: Ipv4Addr, dst: Ipv4Addr, l4: L4, payload: &[u8]) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(src.octets(), dst.octets(), 64);
    let mut out = Vec::new();
    let r = match l4 {
        L4::Tcp { sport, dport, fin } => {
            let b = ip.tcp(sport, dport, 1000, 65535).ack(1);
            let b = if fin { b.fin() } else { b };
            b.write(&mut out, payload)
        }
        L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut out, payload),
        L4::EchoRequest { id, seq } => ip.icmpv4_echo_request(id, seq).write(&mut out, payload),
        L4::EchoReply { id, seq } => ip.icmpv4_echo_reply(id, seq).write(&mut out, payload),
    };
    r.expect("building a fixture packet");
    out
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// What a fixture reads back from an output packet (Ethernet + IPv4).
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Ports; for ICMP echo `sport` is the identifier and `dport` 0.
    pub sport: u16,
    pub dport: u16,
}

/// Parses an Ethernet + IPv4 packet and verifies the IP and L4 checksums from scratch.
pub fn parse_and_verify(pkt: &[u8]) -> Result<Parsed, String> {
    if pkt.len() < 14 + 20 {
        return Err(format!("packet too short: {} bytes", pkt.len()));
    }
    let ip = &pkt[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip.len() < total || total < ihl {
        return Err("IP length field disagrees with the packet".into());
    }
    if fold(sum16(&ip[..ihl], 0)) != 0xffff {
        return Err("bad IPv4 header checksum".into());
    }
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[ihl..total];
    let pseudo = |len: usize| {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&ip[12..20]);
        p.push(0);
        p.push(proto);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        sum16(&p, 0)
    };
    let (sport, dport) = match proto {
        6 | 17 => {
            let ok = if proto == 17 && l4[6..8] == [0, 0] {
                true // UDP without checksum
            } else {
                fold(sum16(l4, pseudo(l4.len()))) == 0xffff
            };
            if !ok {
                return Err(format!(
                    "bad {} checksum",
                    if proto == 6 { "TCP" } else { "UDP" }
                ));
            }
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        }
        1 => {
            if fold(sum16(l4, 0)) != 0xffff {
                return Err("bad ICMP checksum".into());
            }
            (u16::from_be_bytes([l4[4], l4[5]]), 0)
        }
        p => return Err(format!("unexpected protocol {p}")),
    };
    Ok(Parsed {
        src,
        dst,
        proto,
        sport,
        dport,
    })
}
