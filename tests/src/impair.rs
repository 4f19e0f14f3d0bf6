//! A UDP relay that loses and reorders datagrams, both ways: what `tc qdisc … netem` would do,
//! on kernels built without `sch_netem` (this one). A client's profile names the relay as its
//! `remote`; the relay forwards to the server from a socket of its own and sends the answers
//! back to the client's last address.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Result;

/// What the relay does to datagrams, in parts per thousand.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    /// Datagrams dropped.
    pub loss_per_mille: u32,
    /// Datagrams held back and sent after the next one.
    pub reorder_per_mille: u32,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    loss: AtomicU32,
    reorder: AtomicU32,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    reordered: AtomicU64,
    client: Mutex<Option<SocketAddr>>,
}

/// What the relay did so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayStats {
    pub forwarded: u64,
    pub dropped: u64,
    pub reordered: u64,
}

/// The relay's two threads; stopped on drop.
pub struct UdpRelay {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpRelay {
    /// In `ns`: listens on `listen` and relays to `upstream`.
    pub fn start(ns: &crate::Netns, listen: SocketAddr, upstream: SocketAddr) -> Result<UdpRelay> {
        let (front, back) =
            ns.run(move || Ok((UdpSocket::bind(listen)?, UdpSocket::bind("0.0.0.0:0")?)))?;
        back.connect(upstream)?;
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(5)))?;
        }
        let shared = Arc::new(Shared::default());
        let (front2, back2) = (front.try_clone()?, back.try_clone()?);
        let s1 = shared.clone();
        let to_server = std::thread::spawn(move || {
            relay(
                &s1,
                0x9e37_79b9,
                |buf| {
                    let (n, from) = front.recv_from(buf).ok()?;
                    *s1.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                    Some(n)
                },
                |d| {
                    let _ = back.send(d);
                },
            )
        });
        let s2 = shared.clone();
        let to_client = std::thread::spawn(move || {
            relay(
                &s2,
                0x85eb_ca6b,
                |buf| back2.recv(buf).ok(),
                |d| {
                    if let Some(c) = *s2.client.lock().unwrap_or_else(|e| e.into_inner()) {
                        let _ = front2.send_to(d, c);
                    }
                },
            )
        });
        Ok(UdpRelay {
            shared,
            threads: vec![to_server, to_client],
        })
    }

    /// Changes what happens to datagrams from now on.
    pub fn set(&self, i: Impairment) {
        self.shared.loss.store(i.loss_per_mille, Ordering::Relaxed);
        self.shared
            .reorder
            .store(i.reorder_per_mille, Ordering::Relaxed);
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            reordered: self.shared.reordered.load(Ordering::Relaxed),
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One direction: receive, maybe drop, maybe hold until the next datagram has gone.
fn relay(
    shared: &Shared,
    seed: u64,
    mut recv: impl FnMut(&mut [u8]) -> Option<usize>,
    mut send: impl FnMut(&[u8]),
) {
    let mut rng = seed;
    let mut next = move || {
        // xorshift64: deterministic, no dependency.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 1000) as u32
    };
    let mut buf = vec![0u8; 65536];
    let mut held: Option<Vec<u8>> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(n) = recv(&mut buf) else {
            // Quiet for a moment: what was held goes now.
            if let Some(h) = held.take() {
                send(&h);
            }
            continue;
        };
        if next() < shared.loss.load(Ordering::Relaxed) {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if held.is_none() && next() < shared.reorder.load(Ordering::Relaxed) {
            held = Some(buf[..n].to_vec());
            shared.reordered.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        send(&buf[..n]);
        shared.forwarded.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = held.take() {
            send(&h);
            shared.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}
