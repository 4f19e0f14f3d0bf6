//! Replay protection for the data channel: a sliding window over packet ids.
//!
//! The window remembers the highest packet id accepted so far and, for the `size` ids at and
//! below it, which ones were seen. A packet id is acceptable when it is
//!
//! * not 0 (ids start at 1),
//! * above the highest id seen (the window then slides forward), or
//! * inside the window (`highest - id < size`) and not seen before (out-of-order delivery).
//!
//! Anything else is a duplicate ([`DataError::Replay`]) or too old to tell
//! ([`DataError::TooOld`]). The default size, 64, is OpenVPN's `--replay-window 64`.
//!
//! The data channel calls [`ReplayWindow::check`] before decrypting (a read-only pre-check that
//! saves the AEAD work on obvious replays) and [`ReplayWindow::commit`] only after the tag
//! verified, so unauthenticated packets never move the window.
//!
//! The bitmap is a ring of 64-bit words indexed by `id / 64`, with one word more than the
//! window needs so that sliding forward clears whole words without losing in-window bits. It is
//! allocated once, in [`ReplayWindow::new`]; checking and committing never allocate.

use super::DataError;

/// A sliding-window replay filter over 32-bit packet ids.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// How many ids at and below `highest` the window tracks.
    size: u32,
    /// The highest id accepted so far; 0 before the first one.
    highest: u32,
    /// Bit `id % 64` of word `(id / 64) % words.len()` is set when `id` was accepted.
    words: Box<[u64]>,
}

impl ReplayWindow {
    /// OpenVPN's default `--replay-window`.
    pub const DEFAULT_SIZE: u32 = 64;
    /// The largest window accepted (OpenVPN caps `--replay-window` at 65536 too).
    pub const MAX_SIZE: u32 = 65536;

    /// A window tracking `size` packet ids (1..=[`Self::MAX_SIZE`]).
    pub fn new(size: u32) -> Result<Self, DataError> {
        if size == 0 || size > Self::MAX_SIZE {
            return Err(DataError::InvalidReplayWindow { size });
        }
        let words = (size as usize).div_ceil(64) + 1;
        Ok(Self {
            size,
            highest: 0,
            words: vec![0; words].into_boxed_slice(),
        })
    }

    /// The window size this filter was built with.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The highest packet id accepted so far (0 if none yet).
    pub fn highest(&self) -> u32 {
        self.highest
    }

    /// Whether `packet_id` would be accepted now. Does not change the window.
    pub fn check(&self, packet_id: u32) -> Result<(), DataError> {
        if packet_id == 0 {
            return Err(DataError::ZeroPacketId);
        }
        if packet_id > self.highest {
            return Ok(());
        }
        if self.highest - packet_id >= self.size {
            return Err(DataError::TooOld {
                packet_id,
                highest: self.highest,
                window: self.size,
            });
        }
        let (word, bit) = self.locate(packet_id);
        if self.words[word] & bit != 0 {
            return Err(DataError::Replay { packet_id });
        }
        Ok(())
    }

    /// Checks `packet_id` and, if acceptable, records it (sliding the window forward when it is
    /// the new highest). Call this only for authenticated packets.
    pub fn commit(&mut self, packet_id: u32) -> Result<(), DataError> {
        self.check(packet_id)?;
        if packet_id > self.highest {
            let old_word = (self.highest / 64) as usize;
            let new_word = (packet_id / 64) as usize;
            let n = self.words.len();
            // Words strictly after the old highest's, up to the new highest's, now stand for
            // ids not seen yet: clear them (all of them at most once).
            for i in 1..=(new_word - old_word).min(n) {
                self.words[(old_word + i) % n] = 0;
            }
            self.highest = packet_id;
        }
        let (word, bit) = self.locate(packet_id);
        self.words[word] |= bit;
        Ok(())
    }

    fn locate(&self, packet_id: u32) -> (usize, u64) {
        (
            (packet_id / 64) as usize % self.words.len(),
            1u64 << (packet_id % 64),
        )
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            size: Self::DEFAULT_SIZE,
            highest: 0,
            words: vec![0; (Self::DEFAULT_SIZE as usize).div_ceil(64) + 1].into_boxed_slice(),
        }
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("size", &self.size)
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn sizes() {
        assert!(ReplayWindow::new(0).is_err());
        assert!(ReplayWindow::new(ReplayWindow::MAX_SIZE + 1).is_err());
        for size in [1, 63, 64, 65, 1000, ReplayWindow::MAX_SIZE] {
            assert_eq!(ReplayWindow::new(size).unwrap().size(), size);
        }
        assert_eq!(ReplayWindow::default(), ReplayWindow::new(64).unwrap());
    }

    #[test]
    fn zero_is_invalid() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.commit(0), Err(DataError::ZeroPacketId));
        w.commit(5).unwrap();
        assert_eq!(w.check(0), Err(DataError::ZeroPacketId));
    }

    #[test]
    fn in_order_duplicates_out_of_order_and_too_old() {
        let mut w = ReplayWindow::default();
        for id in 1..=10 {
            w.commit(id).unwrap();
        }
        assert_eq!(w.commit(10), Err(DataError::Replay { packet_id: 10 }));
        assert_eq!(w.commit(3), Err(DataError::Replay { packet_id: 3 }));
        // A gap, then the missing ids arrive late: all accepted once.
        w.commit(50).unwrap();
        for id in (11..50).rev() {
            w.commit(id).unwrap();
        }
        for id in 11..=50 {
            assert_eq!(w.check(id), Err(DataError::Replay { packet_id: id }));
        }
        // Jump far ahead: 70 is in the window of 64 below 100, 36 is not.
        w.commit(100).unwrap();
        w.check(37).unwrap_err(); // seen (11..=50)
        assert_eq!(
            w.check(36),
            Err(DataError::TooOld {
                packet_id: 36,
                highest: 100,
                window: 64
            })
        );
        w.commit(70).unwrap();
        w.commit(99).unwrap();
        assert_eq!(w.commit(70), Err(DataError::Replay { packet_id: 70 }));
        // Exactly the window edge: highest - id == size - 1 is inside, == size is outside.
        w.commit(51 + 64 + 40).unwrap(); // highest 155
        assert!(w.check(155 - 63).is_ok());
        assert!(matches!(w.check(155 - 64), Err(DataError::TooOld { .. })));
    }

    #[test]
    fn huge_jump_clears_everything() {
        let mut w = ReplayWindow::new(128).unwrap();
        for id in 1..=200 {
            w.commit(id).unwrap();
        }
        w.commit(1_000_000).unwrap();
        for id in 1_000_000 - 127..1_000_000 {
            w.check(id).unwrap();
        }
        assert!(w.check(1_000_000 - 128).is_err());
        w.commit(u32::MAX).unwrap();
        assert_eq!(
            w.commit(u32::MAX),
            Err(DataError::Replay {
                packet_id: u32::MAX
            })
        );
        w.commit(u32::MAX - 127).unwrap();
        assert!(matches!(
            w.commit(u32::MAX - 128),
            Err(DataError::TooOld { .. })
        ));
    }

    /// The specification, as plainly as possible: the set of accepted ids.
    struct Model {
        size: u32,
        seen: BTreeSet<u32>,
    }

    impl Model {
        fn accept(&mut self, id: u32) -> bool {
            let highest = self.seen.last().copied().unwrap_or(0);
            let ok =
                id != 0 && !self.seen.contains(&id) && (id > highest || highest - id < self.size);
            if ok {
                self.seen.insert(id);
            }
            ok
        }
    }

    fn ids() -> impl Strategy<Value = Vec<u32>> {
        // Mostly small steps around a moving point, sometimes big jumps, sometimes repeats.
        prop::collection::vec((0u32..4, 0u32..300, 0u32..1_000_000), 1..400).prop_map(|ops| {
            let mut base = 0u32;
            ops.into_iter()
                .map(|(kind, small, big)| match kind {
                    0 => {
                        base = base.saturating_add(small / 4);
                        base
                    }
                    1 => base.saturating_sub(small),
                    2 => base.saturating_add(small % 8),
                    _ => {
                        if big % 50 == 0 {
                            base = base.saturating_add(big);
                        }
                        base.saturating_sub(small / 2)
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn matches_model(size in prop_oneof![Just(1u32), Just(64), 1u32..300, Just(65536)], ids in ids()) {
            let mut w = ReplayWindow::new(size).unwrap();
            let mut model = Model { size, seen: BTreeSet::new() };
            for id in ids {
                let before = w.check(id).is_ok();
                let accepted = w.commit(id).is_ok();
                prop_assert_eq!(before, accepted);
                prop_assert_eq!(accepted, model.accept(id), "id {} size {}", id, size);
                prop_assert_eq!(w.highest(), model.seen.last().copied().unwrap_or(0));
            }
        }
    }
}
