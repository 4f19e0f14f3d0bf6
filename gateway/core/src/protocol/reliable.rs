//! The control channel's reliability layer, sans-IO: OpenVPN carries TLS over UDP, so control
//! packets get ids, selective acknowledgements (no cumulative acks), retransmission with
//! exponential backoff, in-order delivery and a fixed window on both sides.
//!
//! One [`Reliable`] per key state (key id) of a session. The caller feeds it what arrived
//! ([`Reliable::on_received`], [`Reliable::on_acks`]) and asks it what to send
//! ([`Reliable::poll_transmit`]) and when to wake up ([`Reliable::next_deadline`]); it never
//! touches a socket or a clock of its own.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use super::packet::{ControlOpcode, MAX_ACKS};

/// Send and receive window, as OpenVPN's `TLS_RELIABLE_N_SEND_BUFFERS` /
/// `TLS_RELIABLE_N_REC_BUFFERS`.
pub const WINDOW: u32 = 6;

/// Tuning of the reliability layer.
#[derive(Clone, Copy, Debug)]
pub struct ReliableConfig {
    /// First retransmission timeout; doubled on every retransmission of the same packet.
    pub initial_rto: Duration,
    pub max_rto: Duration,
}

impl Default for ReliableConfig {
    fn default() -> Self {
        ReliableConfig {
            initial_rto: Duration::from_millis(1000),
            max_rto: Duration::from_secs(8),
        }
    }
}

#[derive(Debug)]
struct InFlight {
    opcode: ControlOpcode,
    payload: Vec<u8>,
    /// When it is due again: `None` before its first transmission.
    due: Option<Instant>,
    rto: Duration,
    transmissions: u32,
}

/// A packet to put on the wire: the caller adds session ids and encodes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit {
    pub opcode: ControlOpcode,
    pub packet_id: u32,
    pub payload: Vec<u8>,
    /// Acknowledgements to piggy-back (at most [`MAX_ACKS`]).
    pub acks: Vec<u32>,
}

/// What happened to a received packet id.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// New: stored (and acknowledged); `on_received` returned whatever is now in order.
    New,
    /// Seen before: acknowledged again, nothing delivered.
    Duplicate,
    /// Beyond the receive window: dropped without an ack (the peer will retransmit).
    OutOfWindow,
}

/// The reliability state of one key state.
#[derive(Debug)]
pub struct Reliable {
    config: ReliableConfig,
    // Send side.
    next_packet_id: u32,
    queued: VecDeque<(ControlOpcode, Vec<u8>)>,
    in_flight: BTreeMap<u32, InFlight>,
    // Receive side.
    next_expected: u32,
    reorder: BTreeMap<u32, Vec<u8>>,
    pending_acks: VecDeque<u32>,
}

impl Reliable {
    pub fn new(config: ReliableConfig) -> Self {
        Reliable {
            config,
            next_packet_id: 0,
            queued: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_expected: 0,
            reorder: BTreeMap::new(),
            pending_acks: VecDeque::new(),
        }
    }

    /// State after a stateless reset exchange: the peer's reset (id 0) was received and our
    /// reset (id 0) was sent and is now acknowledged.
    pub fn after_reset_exchange(config: ReliableConfig) -> Self {
        let mut r = Self::new(config);
        r.next_packet_id = 1;
        r.next_expected = 1;
        r
    }

    /// Queues a payload for reliable delivery.
    pub fn send(&mut self, opcode: ControlOpcode, payload: Vec<u8>) {
        self.queued.push_back((opcode, payload));
    }

    /// Records a received control packet. Returns what it means and the payloads that are now
    /// deliverable in order (possibly several, when it filled a gap).
    pub fn on_received(&mut self, packet_id: u32, payload: Vec<u8>) -> (Received, Vec<Vec<u8>>) {
        if packet_id < self.next_expected || self.reorder.contains_key(&packet_id) {
            self.ack(packet_id);
            return (Received::Duplicate, Vec::new());
        }
        if packet_id - self.next_expected >= WINDOW {
            return (Received::OutOfWindow, Vec::new());
        }
        self.ack(packet_id);
        self.reorder.insert(packet_id, payload);
        let mut ready = Vec::new();
        while let Some(p) = self.reorder.remove(&self.next_expected) {
            ready.push(p);
            self.next_expected = self.next_expected.wrapping_add(1);
        }
        if self.reorder.is_empty() {
            // An emptied BTreeMap keeps its node: an idle session holds none.
            self.reorder = BTreeMap::new();
        }
        (Received::New, ready)
    }

    fn ack(&mut self, packet_id: u32) {
        if !self.pending_acks.contains(&packet_id) {
            self.pending_acks.push_back(packet_id);
        }
    }

    /// Removes acknowledged packets from the send window. Unknown ids are ignored (acks are
    /// repeated by design).
    pub fn on_acks(&mut self, ids: &[u32]) {
        for id in ids {
            self.in_flight.remove(id);
        }
        if self.in_flight.is_empty() {
            // An emptied BTreeMap keeps its node: an idle session holds none.
            self.in_flight = BTreeMap::new();
        }
    }

    /// The oldest id that may still be sent: the window starts at the oldest unacknowledged
    /// packet.
    fn window_start(&self) -> u32 {
        self.in_flight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_packet_id)
    }

    fn take_acks(&mut self) -> Vec<u32> {
        let n = self.pending_acks.len().min(MAX_ACKS);
        self.pending_acks.drain(..n).collect()
    }

    /// The next packet to send now, if any: a retransmission that is due, else a new packet
    /// the window admits; acks ride along. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        // Admit queued payloads into the window.
        while self.next_packet_id.wrapping_sub(self.window_start()) < WINDOW {
            let Some((opcode, payload)) = self.queued.pop_front() else {
                break;
            };
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            self.in_flight.insert(
                id,
                InFlight {
                    opcode,
                    payload,
                    due: None,
                    rto: self.config.initial_rto,
                    transmissions: 0,
                },
            );
        }
        let due_id = self
            .in_flight
            .iter()
            .find(|(_, p)| p.due.is_none_or(|d| d <= now))
            .map(|(id, _)| *id)?;
        let acks = self.take_acks();
        let max_rto = self.config.max_rto;
        let p = self.in_flight.get_mut(&due_id)?;
        if p.transmissions > 0 {
            p.rto = (p.rto * 2).min(max_rto);
        }
        p.transmissions += 1;
        p.due = Some(now + p.rto);
        Some(Transmit {
            opcode: p.opcode,
            packet_id: due_id,
            payload: p.payload.clone(),
            acks,
        })
    }

    /// Acks waiting with nothing to carry them: send them in a `P_ACK_V1`.
    pub fn poll_ack(&mut self) -> Option<Vec<u32>> {
        if self.pending_acks.is_empty() {
            None
        } else {
            Some(self.take_acks())
        }
    }

    /// When [`Reliable::poll_transmit`] will have something again (a retransmission).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.values().filter_map(|p| p.due).min()
    }

    /// Packets sent and not yet acknowledged, and payloads waiting for the window.
    pub fn unacknowledged(&self) -> usize {
        self.in_flight.len() + self.queued.len()
    }

    /// The most transmissions any unacknowledged packet has had (to give up on a dead peer).
    pub fn max_transmissions(&self) -> u32 {
        self.in_flight
            .values()
            .map(|p| p.transmissions)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const C: ControlOpcode = ControlOpcode::ControlV1;

    #[test]
    fn window_limits_packets_in_flight_and_acks_open_it() {
        let now = Instant::now();
        let mut r = Reliable::new(ReliableConfig::default());
        for i in 0..10u8 {
            r.send(C, vec![i]);
        }
        let sent: Vec<u32> = std::iter::from_fn(|| r.poll_transmit(now))
            .map(|t| t.packet_id)
            .collect();
        assert_eq!(sent, vec![0, 1, 2, 3, 4, 5]);
        // Acking a later packet does not move the window start: 0 is still outstanding.
        r.on_acks(&[3]);
        assert!(r.poll_transmit(now).is_none());
        r.on_acks(&[0]);
        assert_eq!(r.poll_transmit(now).map(|t| t.packet_id), Some(6));
        r.on_acks(&[1, 2]);
        let more: Vec<u32> = std::iter::from_fn(|| r.poll_transmit(now))
            .map(|t| t.packet_id)
            .collect();
        assert_eq!(
            more,
            vec![7, 8, 9],
            "the window now starts at 4, the oldest unacknowledged"
        );
    }

    #[test]
    fn retransmits_with_backoff_until_acked() {
        let t0 = Instant::now();
        let mut r = Reliable::new(ReliableConfig {
            initial_rto: Duration::from_millis(100),
            max_rto: Duration::from_millis(350),
        });
        r.send(C, b"hello".to_vec());
        assert_eq!(r.poll_transmit(t0).unwrap().packet_id, 0);
        assert!(r.poll_transmit(t0).is_none());
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(r.poll_transmit(t1).unwrap().payload, b"hello");
        assert_eq!(r.next_deadline(), Some(t1 + Duration::from_millis(200)));
        let t2 = t1 + Duration::from_millis(200);
        r.poll_transmit(t2).unwrap();
        assert_eq!(
            r.next_deadline(),
            Some(t2 + Duration::from_millis(350)),
            "capped at max_rto"
        );
        assert_eq!(r.max_transmissions(), 3);
        r.on_acks(&[0]);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.unacknowledged(), 0);
    }

    #[test]
    fn delivers_in_order_acks_everything_and_reacks_duplicates() {
        let mut r = Reliable::new(ReliableConfig::default());
        assert_eq!(r.on_received(1, b"b".to_vec()), (Received::New, vec![]));
        assert_eq!(
            r.on_received(0, b"a".to_vec()),
            (Received::New, vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert_eq!(r.on_received(0, b"a".to_vec()).0, Received::Duplicate);
        assert_eq!(
            r.on_received(2 + WINDOW, b"far".to_vec()).0,
            Received::OutOfWindow
        );
        assert_eq!(r.poll_ack(), Some(vec![1, 0]));
        assert_eq!(r.poll_ack(), None);
    }

    #[test]
    fn acks_ride_on_data_at_most_eight() {
        let now = Instant::now();
        let mut r = Reliable::new(ReliableConfig::default());
        for id in 0..WINDOW {
            r.on_received(id, vec![]);
        }
        for id in WINDOW..WINDOW + 4 {
            r.on_received(id, vec![]);
        }
        r.send(C, b"x".to_vec());
        let t = r.poll_transmit(now).unwrap();
        assert_eq!(t.acks.len(), MAX_ACKS);
        assert_eq!(r.poll_ack().unwrap().len(), 2);
    }

    proptest! {
        /// Two endpoints over a lossy, reordering, duplicating link: every payload arrives
        /// exactly once, in order.
        #[test]
        fn lossy_link_delivers_everything_in_order(
            n in 1usize..40,
            drops in proptest::collection::vec(any::<bool>(), 400),
            swaps in proptest::collection::vec(any::<bool>(), 400),
        ) {
            let mut a = Reliable::new(ReliableConfig { initial_rto: Duration::from_millis(10), max_rto: Duration::from_millis(40) });
            let mut b = Reliable::new(ReliableConfig::default());
            for i in 0..n {
                a.send(C, (i as u32).to_be_bytes().to_vec());
            }
            let mut got = Vec::new();
            let mut now = Instant::now();
            let mut k = 0usize;
            for _round in 0..400 {
                let mut wire: Vec<Transmit> = std::iter::from_fn(|| a.poll_transmit(now)).collect();
                if swaps[k % swaps.len()] && wire.len() > 1 {
                    wire.swap(0, 1);
                }
                for t in wire {
                    k += 1;
                    if drops[k % drops.len()] && k.is_multiple_of(3) {
                        continue; // lost
                    }
                    let (_, ready) = b.on_received(t.packet_id, t.payload.clone());
                    got.extend(ready);
                    if k.is_multiple_of(7) {
                        b.on_received(t.packet_id, t.payload); // duplicated
                    }
                }
                if let Some(acks) = b.poll_ack() {
                    k += 1;
                    if !(drops[k % drops.len()] && k.is_multiple_of(2)) {
                        a.on_acks(&acks);
                    }
                }
                if got.len() == n && a.unacknowledged() == 0 {
                    break;
                }
                now += Duration::from_millis(10);
            }
            let want: Vec<Vec<u8>> = (0..n).map(|i| (i as u32).to_be_bytes().to_vec()).collect();
            prop_assert_eq!(got, want);
        }
    }
}
