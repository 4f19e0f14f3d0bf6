//! The client address pool: hands out the tunnel addresses of the client CIDR.
//!
//! Sans-IO and allocation-light. Of the CIDR's addresses the pool never hands out
//!
//! * the network address (`10.2.0.0` in `10.2.0.0/22`),
//! * the broadcast address (`10.2.3.255`),
//! * the first host address (`10.2.0.1`): the gateway's own tunnel address, which clients use as
//!   their `route-gateway` ([`AddressPool::gateway_addr`]).
//!
//! # Order of hand-out
//!
//! Addresses that were never used are handed out first, in ascending order. Only when none is
//! left are released addresses reused, oldest release first. So a client that reconnects shortly
//! after a disconnect does not find its old address already given to somebody else (and peers
//! that still hold state about an old address, such as flow logs or a NAT table, see it reused
//! as late as possible).
//!
//! # Cost
//!
//! Every operation is O(1). Memory grows with use, not with the CIDR: one bit per address up to
//! the highest address ever handed out (128 KiB for a fully used /12), plus four bytes per
//! released-but-not-yet-reused address.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use thiserror::Error;

/// Longest client CIDR prefix the pool accepts: a /30 has exactly one client address.
pub const MAX_PREFIX_LEN: u8 = 30;

/// Why an address pool cannot be built over a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    /// The CIDR has no address left for a client after the network, gateway and broadcast
    /// addresses.
    #[error(
        "client CIDR {0} is too small for an address pool: it needs at least 4 addresses \
         (a prefix of /{MAX_PREFIX_LEN} or shorter)"
    )]
    TooSmall(Ipv4Net),
}

/// Client tunnel addresses of one client CIDR. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct AddressPool {
    /// The client CIDR, normalised to its network address.
    net: Ipv4Net,
    /// Offset (from the network address) of the first client address: 2.
    first: u32,
    /// Offset one past the last client address: the broadcast address's offset.
    end: u32,
    /// Offset of the next never-used address; `first..fresh` have been handed out at least once.
    fresh: u32,
    /// Released offsets, oldest release first. Every entry is free and appears once.
    released: VecDeque<u32>,
    /// One bit per offset below `fresh`, set while that address is allocated. Grown lazily as
    /// `fresh` advances.
    bits: Vec<u64>,
    /// Number of allocated addresses.
    allocated: usize,
}

impl AddressPool {
    /// A pool over `cidr`. Host bits in `cidr` are ignored (`10.2.0.9/22` means `10.2.0.0/22`).
    ///
    /// Fails if the CIDR is longer than /30, which would leave no client address.
    pub fn new(cidr: Ipv4Net) -> Result<Self, PoolError> {
        if cidr.prefix_len() > MAX_PREFIX_LEN {
            return Err(PoolError::TooSmall(cidr));
        }
        let net = cidr.trunc();
        // Size fits in u32 for prefixes >= 1; a /0 has 2^32 addresses, so compute in u64 and
        // clamp (a /0 client CIDR makes no sense but must not overflow).
        let size: u64 = 1u64 << (32 - u32::from(net.prefix_len()));
        let end = u32::try_from(size - 1).unwrap_or(u32::MAX);
        Ok(Self {
            net,
            first: 2,
            end,
            fresh: 2,
            released: VecDeque::new(),
            bits: Vec::new(),
            allocated: 0,
        })
    }

    /// The client CIDR this pool hands addresses out of.
    pub fn cidr(&self) -> Ipv4Net {
        self.net
    }

    /// The CIDR's netmask, as pushed to clients in `ifconfig <addr> <netmask>`.
    pub fn netmask(&self) -> Ipv4Addr {
        self.net.netmask()
    }

    /// The gateway's own tunnel address: the first host address of the CIDR. Never handed out.
    pub fn gateway_addr(&self) -> Ipv4Addr {
        self.addr_at(1)
    }

    /// How many client addresses the pool has in all (allocated or not): the CIDR's size less
    /// the network, gateway and broadcast addresses. 1021 for a /22.
    pub fn capacity(&self) -> usize {
        (self.end - self.first) as usize
    }

    /// Number of addresses currently allocated.
    pub fn len(&self) -> usize {
        self.allocated
    }

    /// True when no address is allocated.
    pub fn is_empty(&self) -> bool {
        self.allocated == 0
    }

    /// Number of addresses that [`allocate`](Self::allocate) can still hand out.
    pub fn available(&self) -> usize {
        self.capacity() - self.allocated
    }

    /// Hands out a free address, or `None` when the pool is exhausted. Never-used addresses come
    /// first, then released ones in the order they were released.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let offset = if self.fresh < self.end {
            let o = self.fresh;
            self.fresh += 1;
            let words = (self.fresh as usize).div_ceil(64);
            if self.bits.len() < words {
                self.bits.resize(words, 0);
            }
            o
        } else {
            self.released.pop_front()?
        };
        self.set_bit(offset, true);
        self.allocated += 1;
        Some(self.addr_at(offset))
    }

    /// Returns `addr` to the pool. False (and nothing changes) if `addr` was not allocated: it is
    /// outside the CIDR, reserved, or already free. A double release therefore cannot put one
    /// address into the pool twice.
    pub fn release(&mut self, addr: Ipv4Addr) -> bool {
        let Some(offset) = self.offset_of(addr) else {
            return false;
        };
        if !self.bit(offset) {
            return false;
        }
        self.set_bit(offset, false);
        self.allocated -= 1;
        self.released.push_back(offset);
        true
    }

    /// True if `addr` is currently handed out.
    pub fn is_allocated(&self, addr: Ipv4Addr) -> bool {
        self.offset_of(addr).is_some_and(|o| self.bit(o))
    }

    /// True if `addr` is one the pool may hand out at all (inside the CIDR and not the network,
    /// gateway or broadcast address), allocated or not.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.offset_of(addr).is_some()
    }

    /// The client-address offset of `addr`, if it is one.
    fn offset_of(&self, addr: Ipv4Addr) -> Option<u32> {
        if !self.net.contains(&addr) {
            return None;
        }
        let offset = u32::from(addr) - u32::from(self.net.network());
        (self.first..self.end).contains(&offset).then_some(offset)
    }

    fn addr_at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net.network()).wrapping_add(offset))
    }

    fn bit(&self, offset: u32) -> bool {
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        self.bits.get(word).is_some_and(|w| w & (1u64 << bit) != 0)
    }

    fn set_bit(&mut self, offset: u32, on: bool) {
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        // Only called for offsets below `fresh`, which the bitmap always covers.
        if let Some(w) = self.bits.get_mut(word) {
            if on {
                *w |= 1u64 << bit;
            } else {
                *w &= !(1u64 << bit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn pool(cidr: &str) -> AddressPool {
        AddressPool::new(cidr.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn reserved_addresses_and_first_hand_out() {
        let mut p = pool("10.2.0.0/22");
        assert_eq!(p.gateway_addr(), ip("10.2.0.1"));
        assert_eq!(p.netmask(), ip("255.255.252.0"));
        assert_eq!(p.capacity(), 1021);
        assert_eq!(p.allocate(), Some(ip("10.2.0.2")));
        assert_eq!(p.allocate(), Some(ip("10.2.0.3")));
        for reserved in ["10.2.0.0", "10.2.0.1", "10.2.3.255"] {
            assert!(!p.contains(ip(reserved)), "{reserved}");
            assert!(!p.is_allocated(ip(reserved)), "{reserved}");
            assert!(!p.release(ip(reserved)), "{reserved}");
        }
        assert!(p.contains(ip("10.2.3.254")));
    }

    #[test]
    fn host_bits_in_the_cidr_are_ignored() {
        let p = pool("10.2.1.77/22");
        assert_eq!(p.cidr(), "10.2.0.0/22".parse::<Ipv4Net>().unwrap());
        assert_eq!(p.gateway_addr(), ip("10.2.0.1"));
    }

    #[test]
    fn exhausting_a_slash_22() {
        let mut p = pool("10.2.0.0/22");
        let mut seen = HashSet::new();
        while let Some(a) = p.allocate() {
            assert!(seen.insert(a), "{a} handed out twice");
        }
        assert_eq!(seen.len(), 1021);
        assert_eq!(p.len(), 1021);
        assert_eq!(p.available(), 0);
        assert!(!seen.contains(&ip("10.2.0.0")));
        assert!(!seen.contains(&ip("10.2.0.1")));
        assert!(!seen.contains(&ip("10.2.3.255")));
        assert!(seen.contains(&ip("10.2.3.254")));
        assert_eq!(p.allocate(), None);
        // One release makes exactly that address available again.
        assert!(p.release(ip("10.2.1.7")));
        assert_eq!(p.available(), 1);
        assert_eq!(p.allocate(), Some(ip("10.2.1.7")));
        assert_eq!(p.allocate(), None);
    }

    #[test]
    fn released_addresses_are_reused_last_and_in_release_order() {
        let mut p = pool("192.168.7.0/29"); // client addresses .2 .. .6
        let a: Vec<_> = (0..3).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(a, [ip("192.168.7.2"), ip("192.168.7.3"), ip("192.168.7.4")]);
        assert!(p.release(a[1]));
        assert!(p.release(a[0]));
        // Never-used addresses go first ...
        assert_eq!(p.allocate(), Some(ip("192.168.7.5")));
        assert_eq!(p.allocate(), Some(ip("192.168.7.6")));
        // ... then the released ones, oldest release first.
        assert_eq!(p.allocate(), Some(a[1]));
        assert_eq!(p.allocate(), Some(a[0]));
        assert_eq!(p.allocate(), None);
    }

    #[test]
    fn double_release_and_foreign_addresses_are_refused() {
        let mut p = pool("10.2.0.0/22");
        let a = p.allocate().unwrap();
        assert!(p.is_allocated(a));
        assert!(p.release(a));
        assert!(!p.is_allocated(a));
        assert!(!p.release(a), "second release must be refused");
        assert!(!p.release(ip("10.9.0.5")));
        // Never handed out yet: not allocated, release refused.
        assert!(!p.release(ip("10.2.2.2")));
        assert_eq!(p.len(), 0);
        assert_eq!(p.available(), 1021);
        // The address is in the released queue exactly once.
        let mut all = HashSet::new();
        while let Some(x) = p.allocate() {
            assert!(all.insert(x));
        }
        assert_eq!(all.len(), 1021);
    }

    #[test]
    fn slash_12_is_lazy_and_fast() {
        let mut p = pool("172.16.0.0/12");
        assert_eq!(p.capacity(), (1 << 20) - 3);
        assert!(p.bits.capacity() <= 1, "no eager bitmap");
        for _ in 0..1000 {
            p.allocate().unwrap();
        }
        assert!(
            p.bits.len() <= 16,
            "bitmap grows with use: {} words",
            p.bits.len()
        );
        // Exhaust it entirely: O(1) per call keeps this well under a second.
        let mut n = 1000;
        while p.allocate().is_some() {
            n += 1;
        }
        assert_eq!(n, (1 << 20) - 3);
        assert!(p.bits.len() <= (1 << 20) / 64);
        assert!(p.is_allocated(ip("172.31.255.254")));
        assert!(!p.contains(ip("172.31.255.255")));
    }

    #[test]
    fn too_small_cidrs_are_refused() {
        for c in ["10.0.0.0/31", "10.0.0.0/32"] {
            let err = AddressPool::new(c.parse().unwrap()).unwrap_err();
            assert!(err.to_string().contains("too small"), "{err}");
        }
        let mut p = pool("10.0.0.0/30");
        assert_eq!(p.capacity(), 1);
        assert_eq!(p.allocate(), Some(ip("10.0.0.2")));
        assert_eq!(p.allocate(), None);
    }

    #[test]
    fn slash_zero_does_not_overflow() {
        let mut p = pool("0.0.0.0/0");
        assert_eq!(p.allocate(), Some(ip("0.0.0.2")));
        assert!(!p.contains(ip("255.255.255.255")));
        assert!(p.contains(ip("255.255.255.254")));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate,
        /// Release the n-th (mod len) currently allocated address.
        Release(usize),
        /// Release an arbitrary address (mostly not allocated).
        ReleaseRandom(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Allocate),
            2 => any::<usize>().prop_map(Op::Release),
            1 => any::<u32>().prop_map(Op::ReleaseRandom),
        ]
    }

    proptest! {
        #[test]
        fn allocations_are_unique_inside_the_cidr_and_match_a_model(
            prefix in 22u8..=30,
            base in any::<u32>(),
            ops in proptest::collection::vec(op(), 0..600),
        ) {
            let net = Ipv4Net::new(Ipv4Addr::from(base), prefix).unwrap().trunc();
            let mut p = AddressPool::new(net).unwrap();
            let mut model: Vec<Ipv4Addr> = Vec::new();
            for op in ops {
                match op {
                    Op::Allocate => match p.allocate() {
                        Some(a) => {
                            prop_assert!(net.contains(&a));
                            prop_assert_ne!(a, net.network());
                            prop_assert_ne!(a, net.broadcast());
                            prop_assert_ne!(a, p.gateway_addr());
                            prop_assert!(!model.contains(&a), "{} handed out twice", a);
                            prop_assert!(p.is_allocated(a));
                            model.push(a);
                        }
                        None => prop_assert_eq!(model.len(), p.capacity()),
                    },
                    Op::Release(i) => {
                        if !model.is_empty() {
                            let a = model.swap_remove(i % model.len());
                            prop_assert!(p.release(a));
                            prop_assert!(!p.is_allocated(a));
                        }
                    }
                    Op::ReleaseRandom(x) => {
                        let a = Ipv4Addr::from(x);
                        let held = model.iter().position(|m| *m == a);
                        prop_assert_eq!(p.release(a), held.is_some());
                        if let Some(i) = held {
                            model.swap_remove(i);
                        }
                    }
                }
                prop_assert_eq!(p.len(), model.len());
                prop_assert_eq!(p.len() + p.available(), p.capacity());
            }
        }
    }
}
