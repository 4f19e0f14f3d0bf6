//! The receiving data path, sans-IO: each session's opening keys by peer id, and the check that
//! a decrypted packet may reach the TUN (`datachannel::inner`). It runs without the endpoint:
//! the endpoint installs keys and admissions through its outputs, and reads what happened
//! through the [`Activity`] both hold — so the per-packet work can move to other threads.
//!
//! Nothing here panics on peer input.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{debug, warn};

use super::{ConnId, Peer};
use crate::datachannel::{
    inner::{classify, Inner, InnerDrop},
    Opener,
};

/// What the data path and the endpoint share about one connection: when its last packet came,
/// what was dropped, whether its packet ids run out. Plain atomics: any thread may update it.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last authenticated data packet, plus one (0: none).
    last_rx: AtomicU64,
    forged: AtomicU64,
    early: AtomicU64,
    running_out: AtomicBool,
}

impl Activity {
    pub fn new(epoch: Instant) -> Self {
        Activity {
            epoch,
            last_rx: AtomicU64::new(0),
            forged: AtomicU64::new(0),
            early: AtomicU64::new(0),
            running_out: AtomicBool::new(false),
        }
    }

    pub fn touch(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        self.last_rx.fetch_max(nanos, Ordering::Relaxed);
    }

    /// When the last authenticated data packet came, if any.
    pub fn last_rx(&self) -> Option<Instant> {
        match self.last_rx.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// Packets dropped because their inner source was not the client's address.
    pub fn forged(&self) -> u64 {
        self.forged.load(Ordering::Relaxed)
    }

    /// Packets dropped because they came before the client was admitted.
    pub fn early(&self) -> u64 {
        self.early.load(Ordering::Relaxed)
    }

    /// A sending or receiving key is near the end of its packet ids.
    pub fn mark_running_out(&self) {
        self.running_out.store(true, Ordering::Relaxed);
    }

    pub fn packet_ids_running_out(&self) -> bool {
        self.running_out.load(Ordering::Relaxed)
    }

    /// New keys are in place.
    pub fn renegotiated(&self) {
        self.running_out.store(false, Ordering::Relaxed);
    }
}

struct Session {
    conn: ConnId,
    peer: Peer,
    /// Set once the endpoint admitted the client: only then is anything forwarded.
    client_ip: Option<Ipv4Addr>,
    /// Receiving keys by key id, newest last (the previous key keeps working a while after a
    /// renegotiation).
    openers: Vec<Opener>,
    activity: Arc<Activity>,
}

/// What became of one data packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// Not authenticated (unknown peer id, key id, bad tag, replay): dropped.
    Rejected,
    /// Authenticated; `forward` is the inner packet to write to the TUN, if any. `moved`: it
    /// came from another address than the session's (ask the endpoint whether it may float).
    Accepted {
        conn: ConnId,
        moved: bool,
        forward: Option<&'a [u8]>,
    },
}

/// The receiving halves of all sessions of an endpoint, by peer id.
#[derive(Default)]
pub struct DataPath {
    sessions: HashMap<u32, Session>,
    /// Admissions that came before the session's first keys (the endpoint admits a client as
    /// soon as it authenticated; its keys follow in the same step).
    admitted_early: HashMap<u32, Ipv4Addr>,
}

impl DataPath {
    pub fn new() -> Self {
        Self::default()
    }

    /// New receiving keys for a connection (its first or a renegotiation's).
    pub fn install_keys(
        &mut self,
        conn: ConnId,
        peer_id: u32,
        peer: Peer,
        opener: Opener,
        activity: Arc<Activity>,
    ) {
        let early = &mut self.admitted_early;
        let s = self.sessions.entry(peer_id).or_insert_with(|| Session {
            conn,
            peer,
            client_ip: early.remove(&peer_id),
            // Room for exactly two keys (a Vec would keep room for four: ~1.2 KB more per
            // session).
            openers: Vec::with_capacity(2),
            activity,
        });
        s.openers.retain(|o| o.key_id() != opener.key_id());
        if s.openers.len() >= 2 {
            s.openers.remove(0);
        }
        s.openers.push(opener);
    }

    /// The connection was admitted with `client_ip`.
    pub fn admit(&mut self, peer_id: u32, client_ip: Ipv4Addr) {
        match self.sessions.get_mut(&peer_id) {
            Some(s) => s.client_ip = Some(client_ip),
            None => {
                self.admitted_early.insert(peer_id, client_ip);
            }
        }
    }

    /// The session moved to `peer` (the endpoint allowed the float); its client address.
    pub fn set_peer(&mut self, peer_id: u32, peer: Peer) -> Option<Ipv4Addr> {
        let s = self.sessions.get_mut(&peer_id)?;
        s.peer = peer;
        s.client_ip
    }

    /// The client address of an admitted session.
    pub fn client_ip(&self, peer_id: u32) -> Option<Ipv4Addr> {
        self.sessions.get(&peer_id).and_then(|s| s.client_ip)
    }

    pub fn remove(&mut self, peer_id: u32) {
        self.sessions.remove(&peer_id);
        self.admitted_early.remove(&peer_id);
    }

    /// Opens a `P_DATA_V2` packet from `peer` in place and decides what reaches the TUN: only
    /// an IPv4 packet of an admitted client with the client's own address as source.
    pub fn open<'a>(&mut self, now: Instant, peer: Peer, buf: &'a mut [u8]) -> Opened<'a> {
        if buf.len() < 4 {
            return Opened::Rejected;
        }
        let peer_id = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]);
        let key_id = buf[0] & 0x07;
        let Some(s) = self.sessions.get_mut(&peer_id) else {
            debug!(peer_id, "data packet for an unknown peer id");
            return Opened::Rejected;
        };
        let Some(opener) = s.openers.iter_mut().find(|o| o.key_id() == key_id) else {
            debug!(
                conn = s.conn,
                key_id, "data packet for a key id without keys"
            );
            return Opened::Rejected;
        };
        let plain = match opener.open_in_place(buf) {
            Ok(p) => p,
            Err(e) => {
                debug!(conn = s.conn, error = %e, "data packet dropped");
                return Opened::Rejected;
            }
        };
        if opener.needs_renegotiation() {
            s.activity.mark_running_out();
        }
        s.activity.touch(now);
        let moved = s.peer != peer;
        // Nothing from a client that is not admitted reaches the TUN: it has no address yet
        // (the connect handler decides), so any source it writes would be someone else's.
        let Some(client_ip) = s.client_ip else {
            if s.activity.early.fetch_add(1, Ordering::Relaxed) == 0 {
                warn!(
                    conn = s.conn,
                    "data packet before the client was admitted: dropped"
                );
            }
            return Opened::Accepted {
                conn: s.conn,
                moved: false,
                forward: None,
            };
        };
        let forward = match classify(plain, client_ip) {
            Inner::Forward => Some(&*plain),
            Inner::Keepalive | Inner::Drop(InnerDrop::Ipv6) => None,
            Inner::Drop(InnerDrop::Malformed) => {
                debug!(conn = s.conn, "malformed inner packet dropped");
                None
            }
            Inner::Drop(InnerDrop::ForgedSource(source)) => {
                // The first of a connection is logged; the total at its end.
                if s.activity.forged.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(conn = s.conn, %client_ip, forged_source = %source,
                        "packet with a source address that is not the client's: dropped");
                }
                None
            }
        };
        Opened::Accepted {
            conn: s.conn,
            moved,
            forward,
        }
    }
}
