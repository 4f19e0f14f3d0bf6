//! Peer ids: the 24-bit number in every `P_DATA_V2` header that names the client's session.
//! A live id is never handed out twice, also when the counter wraps at 2^24; 0xFFFFFF is
//! OpenVPN's "no peer id" and is never handed out.

use std::collections::HashSet;

/// The largest peer id plus one (24 bits).
const SPACE: u32 = 1 << 24;
/// OpenVPN's undefined peer id.
const UNDEFINED: u32 = SPACE - 1;

/// Hands out peer ids that no live session holds.
#[derive(Debug, Default)]
pub struct PeerIds {
    next: u32,
    live: HashSet<u32>,
}

impl PeerIds {
    pub fn new() -> Self {
        Self::default()
    }

    /// A free id, or `None` when every id is live (16.7 million sessions).
    pub fn allocate(&mut self) -> Option<u32> {
        if self.live.len() >= (SPACE - 1) as usize {
            return None;
        }
        loop {
            let id = self.next;
            self.next = (self.next + 1) % SPACE;
            if id != UNDEFINED && self.live.insert(id) {
                return Some(id);
            }
        }
    }

    /// The session holding `id` ended: the id may be handed out again.
    pub fn release(&mut self, id: u32) {
        self.live.remove(&id);
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_id_is_skipped_after_the_counter_wraps() {
        let mut ids = PeerIds::new();
        let first = ids.allocate().unwrap();
        assert_eq!(first, 0);
        let second = ids.allocate().unwrap();
        // Jump to the end of the space: the next ids wrap.
        ids.next = UNDEFINED - 1;
        assert_eq!(ids.allocate(), Some(UNDEFINED - 1));
        // 0xFFFFFF is skipped; 0 and 1 are live: the next free one is 2.
        assert_eq!(ids.allocate(), Some(2));
        ids.release(first);
        ids.next = UNDEFINED;
        assert_eq!(ids.allocate(), Some(0));
        assert_ne!(second, 0);
        assert_eq!(ids.live(), 4);
    }
}
