//! What a decrypted client packet may be before it reaches the TUN: an IPv4 packet whose source
//! is the address the client was given. The kernel's `client_ingress` only asks whether a source
//! is *some* session, so this check is what stops one client from speaking with another's
//! address (and so with the other's groups, NAT state and name in the flow log).
//!
//! Sans-IO, no allocation; nothing here panics on peer input.

use std::net::Ipv4Addr;

/// OpenVPN's keepalive ping: a data-channel payload with these 16 bytes.
pub const PING_MAGIC: [u8; 16] = [
    0x2a, 0x18, 0x7b, 0xf3, 0x64, 0x1e, 0xb4, 0xcb, 0x07, 0xed, 0x2d, 0x0a, 0x98, 0x1f, 0xc7, 0x48,
];

/// What a decrypted payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inner {
    /// An IPv4 packet from the client's own address: goes to the TUN.
    Forward,
    /// A keepalive ping (or an empty payload): nothing to deliver.
    Keepalive,
    /// Dropped: the reason, for counters and logs.
    Drop(InnerDrop),
}

/// Why a decrypted payload is not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerDrop {
    /// IPv6 (the tunnel carries IPv4 only; stock clients send a router solicitation first).
    Ipv6,
    /// Not an IP packet, or shorter than its header.
    Malformed,
    /// An IPv4 source other than the client's address: a forged packet.
    ForgedSource(Ipv4Addr),
}

/// Classifies a decrypted payload of the client whose tunnel address is `client_ip`.
pub fn classify(plain: &[u8], client_ip: Ipv4Addr) -> Inner {
    if plain.is_empty() || plain == PING_MAGIC {
        return Inner::Keepalive;
    }
    match plain[0] >> 4 {
        4 => {}
        6 => return Inner::Drop(InnerDrop::Ipv6),
        _ => return Inner::Drop(InnerDrop::Malformed),
    }
    if plain.len() < 20 || usize::from(plain[0] & 0x0f) * 4 < 20 {
        return Inner::Drop(InnerDrop::Malformed);
    }
    let source = Ipv4Addr::new(plain[12], plain[13], plain[14], plain[15]);
    if source != client_ip {
        return Inner::Drop(InnerDrop::ForgedSource(source));
    }
    Inner::Forward
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    fn ipv4(src: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[3] = 28;
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&[10, 88, 0, 20]);
        p
    }

    #[test]
    fn own_source_is_forwarded_and_others_are_forged() {
        assert_eq!(classify(&ipv4([10, 77, 0, 2]), ME), Inner::Forward);
        assert_eq!(
            classify(&ipv4([10, 77, 0, 3]), ME),
            Inner::Drop(InnerDrop::ForgedSource(Ipv4Addr::new(10, 77, 0, 3)))
        );
        assert_eq!(
            classify(&ipv4([0, 0, 0, 0]), ME),
            Inner::Drop(InnerDrop::ForgedSource(Ipv4Addr::UNSPECIFIED))
        );
    }

    #[test]
    fn ipv6_pings_short_and_odd_packets() {
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        assert_eq!(classify(&v6, ME), Inner::Drop(InnerDrop::Ipv6));
        assert_eq!(classify(&PING_MAGIC, ME), Inner::Keepalive);
        assert_eq!(classify(&[], ME), Inner::Keepalive);
        assert_eq!(
            classify(&ipv4([10, 77, 0, 2])[..19], ME),
            Inner::Drop(InnerDrop::Malformed)
        );
        let mut bad_ihl = ipv4([10, 77, 0, 2]);
        bad_ihl[0] = 0x44;
        assert_eq!(classify(&bad_ihl, ME), Inner::Drop(InnerDrop::Malformed));
        assert_eq!(classify(&[0x10; 40], ME), Inner::Drop(InnerDrop::Malformed));
    }

    proptest::proptest! {
        /// Whatever the bytes, only a packet carrying the client's own source is forwarded.
        #[test]
        fn only_the_own_source_is_forwarded(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            if classify(&bytes, ME) == Inner::Forward {
                proptest::prop_assert_eq!(&bytes[12..16], &ME.octets()[..]);
                proptest::prop_assert_eq!(bytes[0] >> 4, 4);
            }
        }
    }
}
