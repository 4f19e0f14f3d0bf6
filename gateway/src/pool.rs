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
//! Every operation is O(1) for a pool of the whole CIDR, and O(blocks) — at most
//! [`BLOCKS_PER_CIDR`] — for one of claimed blocks. Memory grows with use, not with the CIDR:
//! one bit per address up to the highest address ever handed out in each block (128 KiB for a
//! fully used /12), plus four bytes per released-but-not-yet-reused address.

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

/// How many address blocks a client CIDR is cut into when several nodes share it
/// ([`address_blocks`]); fewer for CIDRs too small for 16 blocks of 16 addresses.
pub const BLOCKS_PER_CIDR: u32 = 16;

/// The address blocks of a client CIDR, in order: what nodes sharing an endpoint claim, one
/// at a time, so that no two hand out the same address. [`BLOCKS_PER_CIDR`] blocks, each at
/// least a /28 (a /22 gives 16 blocks of 64 addresses; a /28 one block).
pub fn address_blocks(cidr: Ipv4Net) -> Vec<Ipv4Net> {
    let net = cidr.trunc();
    let prefix = net.prefix_len();
    let block_prefix = (prefix + 4).min(prefix.max(28));
    net.subnets(block_prefix)
        .map(|s| s.collect())
        .unwrap_or_else(|_| vec![net])
}

/// Client tunnel addresses of one client CIDR. See the [module docs](self).
///
/// A pool hands out either the whole CIDR ([`AddressPool::new`]) or only the blocks of it given
/// to it ([`AddressPool::with_blocks`], [`AddressPool::add_block`]): a node sharing an endpoint
/// with others uses the blocks it claimed. The network, gateway and broadcast addresses of the
/// CIDR are never handed out either way.
#[derive(Debug, Clone)]
pub struct AddressPool {
    /// The client CIDR, normalised to its network address.
    net: Ipv4Net,
    /// The offset ranges (from the network address) this pool hands out, in the order they
    /// were given; never overlapping.
    ranges: Vec<Range>,
    /// Released offsets, oldest release first. Every entry is free and appears once.
    released: VecDeque<u32>,
    /// Number of allocated addresses.
    allocated: usize,
}

/// One range of client-address offsets `first..end`.
#[derive(Debug, Clone)]
struct Range {
    /// The block it was given as (`None`: the whole CIDR).
    block: Option<Ipv4Net>,
    first: u32,
    end: u32,
    /// Offset of the next never-used address; `first..fresh` have been handed out at least once.
    fresh: u32,
    /// One bit per offset in `first..fresh` (bit `o - first`), set while that address is
    /// allocated. Grown lazily as `fresh` advances.
    bits: Vec<u64>,
}

impl Range {
    fn new(block: Option<Ipv4Net>, first: u32, end: u32) -> Self {
        Range {
            block,
            first,
            end,
            fresh: first,
            bits: Vec::new(),
        }
    }

    fn contains(&self, offset: u32) -> bool {
        (self.first..self.end).contains(&offset)
    }

    fn bit(&self, offset: u32) -> bool {
        let i = offset - self.first;
        let (word, bit) = ((i / 64) as usize, i % 64);
        self.bits.get(word).is_some_and(|w| w & (1u64 << bit) != 0)
    }

    fn set_bit(&mut self, offset: u32, on: bool) {
        let i = offset - self.first;
        let (word, bit) = ((i / 64) as usize, i % 64);
        // Only called for offsets below `fresh`, which the bitmap always covers.
        if let Some(w) = self.bits.get_mut(word) {
            if on {
                *w |= 1u64 << bit;
            } else {
                *w &= !(1u64 << bit);
            }
        }
    }

    /// The next never-used offset, if any is left.
    fn take_fresh(&mut self) -> Option<u32> {
        if self.fresh >= self.end {
            return None;
        }
        let o = self.fresh;
        self.fresh += 1;
        let words = ((self.fresh - self.first) as usize).div_ceil(64);
        if self.bits.len() < words {
            self.bits.resize(words, 0);
        }
        Some(o)
    }
}

/// Why a block cannot be added to a pool.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BlockError {
    #[error("address block {block} is not inside the client CIDR {cidr}")]
    Outside { block: Ipv4Net, cidr: Ipv4Net },
    #[error("address block {block} overlaps a block the pool already has")]
    Overlaps { block: Ipv4Net },
}

impl AddressPool {
    /// A pool over the whole of `cidr`. Host bits in `cidr` are ignored (`10.2.0.9/22` means
    /// `10.2.0.0/22`).
    ///
    /// Fails if the CIDR is longer than /30, which would leave no client address.
    pub fn new(cidr: Ipv4Net) -> Result<Self, PoolError> {
        let mut pool = Self::with_blocks(cidr)?;
        let end = pool.broadcast_offset();
        pool.ranges.push(Range::new(None, 2, end));
        Ok(pool)
    }

    /// A pool of `cidr` that hands out nothing until blocks of it are added
    /// ([`add_block`](Self::add_block)).
    pub fn with_blocks(cidr: Ipv4Net) -> Result<Self, PoolError> {
        if cidr.prefix_len() > MAX_PREFIX_LEN {
            return Err(PoolError::TooSmall(cidr));
        }
        Ok(Self {
            net: cidr.trunc(),
            ranges: Vec::new(),
            released: VecDeque::new(),
            allocated: 0,
        })
    }

    /// Adds the client addresses of `block` (a block of the CIDR, see [`address_blocks`]).
    /// Adding a block the pool already has changes nothing (false).
    pub fn add_block(&mut self, block: Ipv4Net) -> Result<bool, BlockError> {
        let block = block.trunc();
        if !self.net.contains(&block) {
            return Err(BlockError::Outside {
                block,
                cidr: self.net,
            });
        }
        let start = u32::from(block.network()) - u32::from(self.net.network());
        let size = u64::from(u32::from(block.broadcast()) - u32::from(block.network())) + 1;
        let first = start.max(2);
        let end = u32::try_from(u64::from(start) + size)
            .unwrap_or(u32::MAX)
            .min(self.broadcast_offset());
        if self.ranges.iter().any(|r| r.first == first && r.end == end) {
            return Ok(false);
        }
        if self.ranges.iter().any(|r| first < r.end && r.first < end) {
            return Err(BlockError::Overlaps { block });
        }
        if first < end {
            self.ranges.push(Range::new(Some(block), first, end));
        }
        Ok(true)
    }

    /// The blocks given to this pool, in the order given (none for a pool of the whole CIDR).
    pub fn blocks(&self) -> Vec<Ipv4Net> {
        self.ranges.iter().filter_map(|r| r.block).collect()
    }

    /// Takes `block` away (another node holds it now): none of its addresses is handed out
    /// again, and those allocated stop counting. Returns the allocated ones, whose holders
    /// must go. False-y (empty) if the pool has no such block.
    pub fn remove_block(&mut self, block: Ipv4Net) -> Vec<Ipv4Addr> {
        let block = block.trunc();
        let Some(i) = self.ranges.iter().position(|r| r.block == Some(block)) else {
            return Vec::new();
        };
        let r = self.ranges.remove(i);
        let held: Vec<Ipv4Addr> = (r.first..r.fresh)
            .filter(|o| r.bit(*o))
            .map(|o| self.addr_at(o))
            .collect();
        self.allocated -= held.len();
        self.released.retain(|o| !r.contains(*o));
        held
    }

    /// Offset of the CIDR's broadcast address (clamped for a /0).
    fn broadcast_offset(&self) -> u32 {
        let size: u64 = 1u64 << (32 - u32::from(self.net.prefix_len()));
        u32::try_from(size - 1).unwrap_or(u32::MAX)
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

    /// How many client addresses the pool has in all (allocated or not): for a whole CIDR its
    /// size less the network, gateway and broadcast addresses (1021 for a /22).
    pub fn capacity(&self) -> usize {
        self.ranges.iter().map(|r| (r.end - r.first) as usize).sum()
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
    /// first (blocks in the order they were added), then released ones in the order they were
    /// released.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let offset = match self.ranges.iter_mut().find_map(Range::take_fresh) {
            Some(o) => o,
            None => self.released.pop_front()?,
        };
        if let Some(r) = self.range_mut(offset) {
            r.set_bit(offset, true);
        }
        self.allocated += 1;
        Some(self.addr_at(offset))
    }

    /// Returns `addr` to the pool. False (and nothing changes) if `addr` was not allocated: it is
    /// outside the pool's blocks, reserved, or already free. A double release therefore cannot
    /// put one address into the pool twice.
    pub fn release(&mut self, addr: Ipv4Addr) -> bool {
        let Some(offset) = self.offset_of(addr) else {
            return false;
        };
        let Some(r) = self.range_mut(offset) else {
            return false;
        };
        if offset >= r.fresh || !r.bit(offset) {
            return false;
        }
        r.set_bit(offset, false);
        self.allocated -= 1;
        self.released.push_back(offset);
        true
    }

    /// True if `addr` is currently handed out.
    pub fn is_allocated(&self, addr: Ipv4Addr) -> bool {
        self.offset_of(addr)
            .and_then(|o| self.ranges.iter().find(|r| r.contains(o)).map(|r| (o, r)))
            .is_some_and(|(o, r)| o < r.fresh && r.bit(o))
    }

    /// True if `addr` is one the pool may hand out at all (inside its blocks and not the
    /// network, gateway or broadcast address), allocated or not.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.offset_of(addr)
            .is_some_and(|o| self.ranges.iter().any(|r| r.contains(o)))
    }

    fn range_mut(&mut self, offset: u32) -> Option<&mut Range> {
        self.ranges.iter_mut().find(|r| r.contains(offset))
    }

    /// The offset of `addr` from the network address, if it is inside the CIDR.
    fn offset_of(&self, addr: Ipv4Addr) -> Option<u32> {
        self.net
            .contains(&addr)
            .then(|| u32::from(addr) - u32::from(self.net.network()))
    }

    fn addr_at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net.network()).wrapping_add(offset))
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
        assert!(p.ranges[0].bits.capacity() <= 1, "no eager bitmap");
        for _ in 0..1000 {
            p.allocate().unwrap();
        }
        assert!(
            p.ranges[0].bits.len() <= 16,
            "bitmap grows with use: {} words",
            p.ranges[0].bits.len()
        );
        // Exhaust it entirely: O(1) per call keeps this well under a second.
        let mut n = 1000;
        while p.allocate().is_some() {
            n += 1;
        }
        assert_eq!(n, (1 << 20) - 3);
        assert!(p.ranges[0].bits.len() <= (1 << 20) / 64);
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

    #[test]
    fn a_slash_22_is_cut_into_sixteen_blocks_and_small_cidrs_into_fewer() {
        let blocks = address_blocks("10.2.0.0/22".parse().unwrap());
        assert_eq!(blocks.len(), 16);
        assert_eq!(blocks[0], "10.2.0.0/26".parse::<Ipv4Net>().unwrap());
        assert_eq!(blocks[15], "10.2.3.192/26".parse::<Ipv4Net>().unwrap());
        assert_eq!(address_blocks("10.2.0.0/26".parse().unwrap()).len(), 4);
        assert_eq!(address_blocks("10.2.0.0/28".parse().unwrap()).len(), 1);
        assert_eq!(address_blocks("10.2.0.0/30".parse().unwrap()).len(), 1);
        assert_eq!(address_blocks("172.16.0.0/12".parse().unwrap()).len(), 16);
    }

    #[test]
    fn a_pool_of_blocks_hands_out_only_their_addresses() {
        let cidr: Ipv4Net = "10.2.0.0/22".parse().unwrap();
        let blocks = address_blocks(cidr);
        let mut p = AddressPool::with_blocks(cidr).unwrap();
        assert_eq!(p.allocate(), None, "no block, no address");
        assert_eq!(p.gateway_addr(), ip("10.2.0.1"));
        assert_eq!(p.netmask(), ip("255.255.252.0"));
        assert_eq!(p.add_block(blocks[15]), Ok(true));
        assert_eq!(p.add_block(blocks[15]), Ok(false), "the same block twice");
        assert_eq!(p.capacity(), 63, "the CIDR's broadcast address stays out");
        assert_eq!(p.add_block(blocks[0]), Ok(true));
        assert_eq!(
            p.capacity(),
            63 + 62,
            "network and gateway addresses stay out"
        );
        assert!(matches!(
            p.add_block("10.2.0.0/25".parse().unwrap()),
            Err(BlockError::Overlaps { .. })
        ));
        assert!(matches!(
            p.add_block("10.9.0.0/26".parse().unwrap()),
            Err(BlockError::Outside { .. })
        ));
        // Blocks in the order given: the first block given is used up first.
        assert_eq!(p.allocate(), Some(ip("10.2.3.192")));
        let mut seen = HashSet::new();
        seen.insert(ip("10.2.3.192"));
        while let Some(a) = p.allocate() {
            assert!(seen.insert(a), "{a} handed out twice");
            assert!(blocks[0].contains(&a) || blocks[15].contains(&a), "{a}");
        }
        assert_eq!(seen.len(), 125);
        assert!(!seen.contains(&ip("10.2.3.255")) && !seen.contains(&ip("10.2.0.1")));
        assert!(!p.contains(ip("10.2.1.5")) && !p.release(ip("10.2.1.5")));
        assert!(p.release(ip("10.2.0.9")));
        assert_eq!(p.allocate(), Some(ip("10.2.0.9")));
    }

    #[test]
    fn a_block_taken_away_hands_out_nothing_more_and_names_its_holders() {
        let cidr: Ipv4Net = "10.2.0.0/22".parse().unwrap();
        let blocks = address_blocks(cidr);
        let mut p = AddressPool::with_blocks(cidr).unwrap();
        p.add_block(blocks[0]).unwrap();
        p.add_block(blocks[1]).unwrap();
        assert_eq!(p.blocks(), [blocks[0], blocks[1]]);
        let a: Vec<Ipv4Addr> = (0..70).map(|_| p.allocate().unwrap()).collect();
        assert!(p.release(a[65])); // in block 1, released: must not come back
        let held = p.remove_block(blocks[1]);
        assert_eq!(held.len(), 7, "{held:?}");
        assert!(held.iter().all(|h| blocks[1].contains(h)));
        assert_eq!(p.blocks(), [blocks[0]]);
        assert_eq!(p.len(), 62);
        assert_eq!(p.available(), 0);
        assert_eq!(p.allocate(), None);
        assert!(
            !p.release(held[0]),
            "an address of the lost block is not ours"
        );
        assert!(p.remove_block(blocks[1]).is_empty());
    }

    proptest! {
        /// Two nodes with disjoint blocks of one CIDR never hand out the same address, however
        /// their allocations and releases interleave.
        #[test]
        fn pools_of_disjoint_blocks_never_share_an_address(
            prefix in 20u8..=28,
            split in any::<u16>(),
            ops in proptest::collection::vec((any::<bool>(), op()), 0..400),
        ) {
            let net: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(10, 64, 0, 0), prefix).unwrap().trunc();
            let blocks = address_blocks(net);
            let mut pools = [
                AddressPool::with_blocks(net).unwrap(),
                AddressPool::with_blocks(net).unwrap(),
            ];
            for (i, b) in blocks.iter().enumerate() {
                let owner = usize::from(split >> (i % 16) & 1);
                prop_assert!(pools[owner].add_block(*b).unwrap());
            }
            let mut held: [Vec<Ipv4Addr>; 2] = [Vec::new(), Vec::new()];
            for (which, op) in ops {
                let w = usize::from(which);
                match op {
                    Op::Allocate => {
                        if let Some(a) = pools[w].allocate() {
                            prop_assert!(!held[0].contains(&a) && !held[1].contains(&a), "{} twice", a);
                            prop_assert!(!pools[1 - w].contains(a));
                            held[w].push(a);
                        }
                    }
                    Op::Release(i) if !held[w].is_empty() => {
                        let a = held[w].swap_remove(i % held[w].len());
                        prop_assert!(pools[w].release(a));
                    }
                    Op::ReleaseRandom(x) => {
                        // Another node's address, or none at all: refused unless it is ours.
                        let a = Ipv4Addr::from(x);
                        prop_assert_eq!(pools[w].release(a), held[w].contains(&a));
                        held[w].retain(|h| *h != a);
                    }
                    Op::Release(_) => {}
                }
            }
            prop_assert_eq!(pools[0].capacity() + pools[1].capacity(), AddressPool::new(net).unwrap().capacity());
        }
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
