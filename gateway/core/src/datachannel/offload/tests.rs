use proptest::prelude::*;

use super::*;

const SRC: [u8; 4] = [10, 77, 0, 2];
const DST: [u8; 4] = [10, 88, 0, 10];

/// A TCP/IPv4 packet with valid checksums: `options` after the 20-byte TCP header.
fn tcp_packet(seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let doff = 20 + options.len();
    let total = 20 + doff + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = IP_PROTO_TCP;
    p[12..16].copy_from_slice(&SRC);
    p[16..20].copy_from_slice(&DST);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&7u32.to_be_bytes());
    p[32] = ((doff / 4) as u8) << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&502u16.to_be_bytes());
    p[40..40 + options.len()].copy_from_slice(options);
    p[20 + doff..].copy_from_slice(payload);
    set_ip_checksum(&mut p, 20);
    let sum = pseudo_header_sum(&p, IP_PROTO_TCP, total - 20);
    let c = !checksum_fold(checksum_add(sum, &p[20..]));
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// What the kernel hands a TUN with TSO: the super-packet with the pseudo-header's sum in the
/// checksum field, and its header.
fn super_packet(seq: u32, flags: u8, payload: &[u8], mss: u16) -> (VnetHdr, Vec<u8>) {
    let mut p = tcp_packet(seq, flags, &[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3], payload);
    let pseudo = checksum_fold(pseudo_header_sum(&p, IP_PROTO_TCP, p.len() - 20));
    p[36..38].copy_from_slice(&pseudo.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 52,
        gso_size: mss,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, p)
}

fn split(hdr: VnetHdr, packet: &mut [u8]) -> Vec<Vec<u8>> {
    let mut s = Segments::new(hdr, packet).expect("segments");
    let count = s.count();
    let mut buf = vec![0u8; s.max_len()];
    let mut out = Vec::new();
    while let Some(n) = s.write_next(&mut buf) {
        out.push(buf[..n].to_vec());
        assert!(out.len() <= count, "more segments than announced");
    }
    assert_eq!(out.len(), count);
    out
}

fn payload_of(p: &[u8]) -> &[u8] {
    let h = TcpV4::parse(p).expect("TCP/IPv4");
    &p[h.hdrs..h.total]
}

fn seq_of(p: &[u8]) -> u32 {
    TcpV4::parse(p).expect("TCP/IPv4").seq
}

type Written = Vec<(VnetHdr, Vec<u8>)>;

fn coalesce(packets: &[Vec<u8>]) -> Written {
    let mut c = Coalescer::new();
    let mut out = Vec::new();
    let mut w =
        |h: &[u8; VNET_HDR_LEN], p: &[u8]| out.push((VnetHdr::decode(h).unwrap(), p.to_vec()));
    for p in packets {
        c.push(p, &mut w);
    }
    c.flush(&mut w);
    assert_eq!(c.held(), 0);
    out
}

/// What the kernel does with a written super-packet: checks that its partial checksum is the
/// pseudo-header's (completed over the whole packet, it must verify), then cuts it.
fn kernel_segments(hdr: VnetHdr, p: &[u8]) -> Vec<Vec<u8>> {
    if hdr.gso_type == GSO_NONE {
        assert!(tcp_v4_checksums_ok(p) || TcpV4::parse(p).is_none());
        return vec![p.to_vec()];
    }
    let mut whole = p.to_vec();
    complete_checksum(&mut whole, hdr.csum_start, hdr.csum_offset).unwrap();
    assert!(
        tcp_v4_checksums_ok(&whole),
        "the partial checksum is not the pseudo-header's"
    );
    let mut p = p.to_vec();
    split(hdr, &mut p)
}

#[test]
fn the_checksum_is_rfc_1071s() {
    // RFC 1071 section 3's example: the sum of these words is 0xddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(checksum_fold(checksum_add(0, &data)), 0xddf2);
    // Any split point gives the same sum when the parts are of even length.
    assert_eq!(
        checksum_fold(checksum_add(checksum_add(0, &data[..2]), &data[2..])),
        0xddf2
    );
    // An odd byte is the high half of a word.
    assert_eq!(checksum_fold(checksum_add(0, &[0xab])), 0xab00);
}

#[test]
fn a_super_packet_becomes_valid_segments_of_gso_size() {
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let (hdr, mut p) = super_packet(1000, TCP_ACK | TCP_PSH | TCP_CWR, &payload, 1388);
    let segs = split(hdr, &mut p);
    assert_eq!(segs.len(), 8); // 7 × 1388 + 284
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert!(tcp_v4_checksums_ok(s), "segment {i}: checksums");
        assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16, "IP id");
        assert_eq!(seq_of(s), 1000 + (i as u32) * 1388);
        let flags = s[33];
        let last = i == segs.len() - 1;
        assert_eq!(flags & TCP_PSH != 0, last, "PSH on the last segment only");
        assert_eq!(
            flags & TCP_CWR != 0,
            i == 0,
            "CWR on the first segment only"
        );
        assert_eq!(s.len(), 52 + if last { 284 } else { 1388 });
        joined.extend_from_slice(payload_of(s));
    }
    assert_eq!(joined, payload);
}

#[test]
fn a_plain_packet_with_a_partial_checksum_gets_it_completed() {
    let mut p = tcp_packet(5, TCP_ACK, &[], b"hello");
    let good = p.clone();
    let pseudo = checksum_fold(pseudo_header_sum(&p, IP_PROTO_TCP, p.len() - 20));
    p[36..38].copy_from_slice(&pseudo.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    assert_eq!(split(hdr, &mut p), vec![good.clone()]);
    // Without NEEDS_CSUM the packet goes as it is.
    let mut q = good.clone();
    assert_eq!(split(VnetHdr::default(), &mut q), vec![good]);
}

#[test]
fn what_the_daemon_did_not_ask_for_is_refused() {
    let (mut hdr, mut p) = super_packet(1, TCP_ACK, &[0; 3000], 1000);
    hdr.gso_type = 5; // UDP_L4
    assert_eq!(
        Segments::new(hdr, &mut p).unwrap_err(),
        OffloadError::UnsupportedGso(5)
    );
    hdr.gso_type = GSO_TCPV4;
    hdr.gso_size = 1;
    assert_eq!(
        Segments::new(hdr, &mut p).unwrap_err(),
        OffloadError::BadSegmentSize(1)
    );
    hdr.gso_size = 1000;
    p[9] = 17;
    assert_eq!(
        Segments::new(hdr, &mut p).unwrap_err(),
        OffloadError::NotTcpV4
    );
    let plain = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 60_000,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    assert!(matches!(
        Segments::new(plain, &mut p),
        Err(OffloadError::BadChecksumOffsets { .. })
    ));
}

#[test]
fn a_batch_of_one_flow_becomes_one_super_packet_the_kernel_cuts_back() {
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i ^ (i >> 8)) as u8).collect();
    let (hdr, mut p) = super_packet(77, TCP_ACK | TCP_PSH, &payload, 1400);
    let segs = split(hdr, &mut p);
    let written = coalesce(&segs);
    assert_eq!(written.len(), 1, "one write");
    let (h, sp) = &written[0];
    assert_eq!(h.gso_type, GSO_TCPV4);
    assert_eq!(h.gso_size, 1400);
    assert_eq!(h.flags, F_NEEDS_CSUM);
    assert_eq!(usize::from(h.hdr_len), 52);
    assert_eq!(payload_of(sp), &payload[..]);
    assert_eq!(sp[33] & TCP_PSH, TCP_PSH, "the last segment's PSH");
    assert_eq!(
        kernel_segments(*h, sp),
        segs,
        "cut again, the same segments"
    );
}

#[test]
fn flows_keep_their_order_and_other_packets_go_after_their_flow() {
    let a: Vec<Vec<u8>> = (0..4)
        .map(|i| tcp_packet(i * 100, TCP_ACK, &[], &[1; 100]))
        .collect();
    let mut b: Vec<Vec<u8>> = (0..4)
        .map(|i| tcp_packet(i * 100, TCP_ACK, &[], &[2; 100]))
        .collect();
    for p in &mut b {
        // Another flow: another source port (checksum redone).
        p[20..22].copy_from_slice(&40001u16.to_be_bytes());
        let fixed = tcp_packet_like(p);
        *p = fixed;
    }
    let fin = tcp_packet(400, TCP_ACK | TCP_FIN, &[], &[]);
    let mut batch = Vec::new();
    for i in 0..4 {
        batch.push(a[i as usize].clone());
        batch.push(b[i as usize].clone());
    }
    batch.push(fin.clone());
    let written = coalesce(&batch);
    // a's super-packet goes before a's FIN; b's at the flush.
    assert_eq!(written.len(), 3);
    assert_eq!(payload_of(&written[0].1), &[1u8; 400][..]);
    assert_eq!(written[1].1, fin);
    assert_eq!(payload_of(&written[2].1), &[2u8; 400][..]);
}

/// `p` with its checksums recomputed.
fn tcp_packet_like(p: &[u8]) -> Vec<u8> {
    let mut q = p.to_vec();
    set_ip_checksum(&mut q, 20);
    q[36] = 0;
    q[37] = 0;
    let sum = pseudo_header_sum(&q, IP_PROTO_TCP, q.len() - 20);
    let c = !checksum_fold(checksum_add(sum, &q[20..]));
    q[36..38].copy_from_slice(&c.to_be_bytes());
    q
}

#[test]
fn segments_that_do_not_continue_start_a_new_super_packet() {
    let s0 = tcp_packet(0, TCP_ACK, &[], &[1; 100]);
    // A gap in the sequence.
    let gap = tcp_packet(300, TCP_ACK, &[], &[1; 100]);
    assert_eq!(coalesce(&[s0.clone(), gap.clone()]).len(), 2);
    // Another acknowledgement number.
    let mut ack = tcp_packet(100, TCP_ACK, &[], &[1; 100]);
    ack[28..32].copy_from_slice(&8u32.to_be_bytes());
    let ack = tcp_packet_like(&ack);
    assert_eq!(coalesce(&[s0.clone(), ack]).len(), 2);
    // Other options (a timestamp moved on).
    let t0 = tcp_packet(
        0,
        TCP_ACK,
        &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0],
        &[1; 100],
    );
    let t1 = tcp_packet(
        100,
        TCP_ACK,
        &[1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 0],
        &[1; 100],
    );
    assert_eq!(coalesce(&[t0, t1]).len(), 2);
    // After a shorter segment nothing joins.
    let short = tcp_packet(100, TCP_ACK, &[], &[1; 50]);
    let after = tcp_packet(150, TCP_ACK, &[], &[1; 50]);
    assert_eq!(coalesce(&[s0.clone(), short.clone(), after]).len(), 2);
    // A longer segment does not join either.
    let longer = tcp_packet(100, TCP_ACK, &[], &[1; 200]);
    assert_eq!(coalesce(&[s0.clone(), longer]).len(), 2);
    // SYN, pure ACK, UDP and a fragment pass through untouched.
    let syn = tcp_packet(0, TCP_SYN_FOR_TESTS, &[], &[]);
    let pure_ack = tcp_packet(100, TCP_ACK, &[], &[]);
    let mut frag = tcp_packet(100, TCP_ACK, &[], &[1; 100]);
    frag[6] = 0x20; // MF
    let frag = tcp_packet_like(&frag);
    let mut udp = tcp_packet(0, 0, &[], &[9; 30]);
    udp[9] = 17;
    let out = coalesce(&[syn.clone(), pure_ack.clone(), frag.clone(), udp.clone()]);
    let plain: Vec<Vec<u8>> = out
        .iter()
        .map(|(h, p)| {
            assert_eq!(*h, VnetHdr::default());
            p.clone()
        })
        .collect();
    assert_eq!(plain, vec![syn, pure_ack, frag, udp]);
}

const TCP_SYN_FOR_TESTS: u8 = 0x02;

#[test]
fn the_coalescer_is_bounded_in_flows_segments_and_bytes() {
    // More flows than it holds: the least recently used is written to make room.
    let mut c = Coalescer::new();
    let mut writes = 0;
    let mut w = |_: &[u8; VNET_HDR_LEN], _: &[u8]| writes += 1;
    for port in 0..(MAX_FLOWS as u16 + 3) {
        let mut p = tcp_packet(0, TCP_ACK, &[], &[1; 10]);
        p[20..22].copy_from_slice(&(1000 + port).to_be_bytes());
        assert_eq!(c.push(&tcp_packet_like(&p), &mut w), Pushed::Held);
    }
    assert_eq!(c.held(), MAX_FLOWS);
    c.flush(&mut w);
    assert_eq!(writes, MAX_FLOWS + 3);
    // At most MAX_SEGMENTS segments in one super-packet.
    let small: Vec<Vec<u8>> = (0..(MAX_SEGMENTS as u32 + 10))
        .map(|i| tcp_packet(i * 100, TCP_ACK, &[], &[3; 100]))
        .collect();
    let out = coalesce(&small);
    assert_eq!(out.len(), 2);
    assert_eq!(payload_of(&out[0].1).len(), usize::from(MAX_SEGMENTS) * 100);
    // At most 64 KiB.
    let big: Vec<Vec<u8>> = (0..60u32)
        .map(|i| tcp_packet(i * 1400, TCP_ACK, &[], &[4; 1400]))
        .collect();
    let out = coalesce(&big);
    assert!(out.iter().all(|(_, p)| p.len() <= MAX_PACKET));
    assert_eq!(out.len(), 2);
    let total: usize = out.iter().map(|(_, p)| payload_of(p).len()).sum();
    assert_eq!(total, 60 * 1400);
}

proptest! {
    /// Cut, coalesced and cut again: the same segments, whatever the sizes.
    #[test]
    fn cut_and_coalesced_round_trips(len in 0usize..60_000, mss in 64u16..1500, seq: u32) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let (hdr, mut p) = super_packet(seq, TCP_ACK | TCP_PSH, &payload, mss);
        let segs = split(hdr, &mut p);
        for s in &segs {
            prop_assert!(tcp_v4_checksums_ok(s));
        }
        let mut again = Vec::new();
        for (h, sp) in coalesce(&segs) {
            again.extend(kernel_segments(h, &sp));
        }
        prop_assert_eq!(again, segs);
    }

    /// Nothing the kernel or a peer hands it makes it panic.
    #[test]
    fn any_input_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..3000), hdr in any::<[u8; 10]>()) {
        let h = VnetHdr::decode(&hdr).unwrap();
        let mut p = bytes.clone();
        if let Ok(mut s) = Segments::new(h, &mut p) {
            let mut buf = vec![0u8; s.max_len()];
            let mut n = 0;
            while s.write_next(&mut buf).is_some() {
                n += 1;
                prop_assert!(n <= s.count());
            }
        }
        let mut c = Coalescer::new();
        let mut w = |_: &[u8; VNET_HDR_LEN], p: &[u8]| assert!(p.len() <= MAX_PACKET);
        c.push(&bytes, &mut w);
        c.push(&bytes, &mut w);
        c.flush(&mut w);
    }
}
