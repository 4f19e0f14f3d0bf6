//! Feeds arbitrary bytes to the TUN offloads (`datachannel::offload`): as a packet read from
//! the TUN (a `virtio_net_hdr` and what follows it), cut into segments; and as a receive batch
//! of decrypted client packets (each prefixed by a length byte pair), joined by the coalescer.
//! Checks that nothing panics, that cutting never writes more or longer packets than it
//! announced and that every TCP segment it cuts from a super-packet carries valid checksums,
//! and that every super-packet the coalescer writes cuts again into segments with valid
//! checksums, no longer than 64 KiB.
#![no_main]

use gateway::datachannel::offload::{
    tcp_v4_checksums_ok, Coalescer, Segments, VnetHdr, GSO_TCPV4, MAX_PACKET, VNET_HDR_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 1. A TUN read.
    if let Some(hdr) = VnetHdr::decode(data) {
        let mut packet = data[VNET_HDR_LEN..].to_vec();
        if let Ok(mut s) = Segments::new(hdr, &mut packet) {
            let (count, max) = (s.count(), s.max_len());
            let mut buf = vec![0u8; max];
            let mut n = 0;
            while let Some(len) = s.write_next(&mut buf) {
                n += 1;
                assert!(n <= count && len <= max);
                if hdr.gso_type & 0x7f == GSO_TCPV4 {
                    assert!(tcp_v4_checksums_ok(&buf[..len]), "a cut segment with a bad checksum");
                }
            }
        }
    }

    // 2. A receive batch: [len hi, len lo, packet…]…
    let mut c = Coalescer::new();
    let mut written = Vec::new();
    let mut write = |h: &[u8; VNET_HDR_LEN], p: &[u8]| {
        assert!(p.len() <= MAX_PACKET);
        written.push((VnetHdr::decode(h).unwrap(), p.to_vec()));
    };
    let mut rest = data;
    while rest.len() >= 2 {
        let len = (usize::from(rest[0]) << 8 | usize::from(rest[1])).min(rest.len() - 2);
        c.push(&rest[2..2 + len], &mut write);
        rest = &rest[2 + len..];
    }
    c.flush(&mut write);
    for (hdr, mut p) in written {
        if hdr.gso_type == GSO_TCPV4 {
            let mut s = Segments::new(hdr, &mut p).expect("the coalescer wrote a super-packet that cannot be cut");
            let mut buf = vec![0u8; s.max_len()];
            while let Some(len) = s.write_next(&mut buf) {
                assert!(tcp_v4_checksums_ok(&buf[..len]));
            }
        }
    }
});
