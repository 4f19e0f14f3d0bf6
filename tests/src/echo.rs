//! A UDP echo server on a private host and a client loop that measures, request by request,
//! whether a flow gets through: how the live-revoke tests see the moment a flow is cut.

use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;

/// A UDP echo server running on a thread, bound inside a namespace; stopped on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    /// Binds `addr:port` in `ns` and echoes every datagram back to its sender.
    pub fn start(ns: &crate::Netns, addr: Ipv4Addr, port: u16) -> Result<UdpEcho> {
        let sock = ns.run(move || Ok(UdpSocket::bind((addr, port))?))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        });
        Ok(UdpEcho {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a numbered datagram to `target` every ~3 ms for `run_for`; returns, for each, when it
/// was sent and whether its echo came back.
pub fn probe_loop(target: (Ipv4Addr, u16), run_for: Duration) -> Result<Vec<(Instant, bool)>> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(target)?;
    s.set_nonblocking(true)?;
    let mut sent = Vec::new();
    let mut answered = std::collections::HashSet::new();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    while start.elapsed() < run_for {
        let seq = sent.len() as u64;
        let _ = s.send(&seq.to_be_bytes());
        sent.push(Instant::now());
        let until = Instant::now() + Duration::from_millis(3);
        while Instant::now() < until {
            match s.recv(&mut buf) {
                Ok(8) => {
                    answered.insert(u64::from_be_bytes(buf[..8].try_into().unwrap_or([0; 8])));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }
    Ok(sent
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, answered.contains(&(i as u64))))
        .collect())
}

/// A UDP server on a private host that keeps every datagram's payload: what the forged-packet
/// tests look at to see whether a packet got through. Stopped on drop.
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    received: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpSink {
    /// Binds `addr:port` in `ns`.
    pub fn start(ns: &crate::Netns, addr: Ipv4Addr, port: u16) -> Result<UdpSink> {
        let sock = ns.run(move || Ok(UdpSocket::bind((addr, port))?))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, keep) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if let Ok(mut r) = keep.lock() {
                        r.push(buf[..n].to_vec());
                    }
                }
            }
        });
        Ok(UdpSink {
            stop,
            received,
            thread: Some(thread),
        })
    }

    /// How many datagrams so far carried exactly `payload`.
    pub fn count(&self, payload: &[u8]) -> usize {
        self.received
            .lock()
            .map(|r| r.iter().filter(|p| p.as_slice() == payload).count())
            .unwrap_or(0)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the live-revoke tests assert of two probe loops (`probe_loop`) around a revoke at
/// `revoked` (`event` names it in messages): alice's flow ran before it (more than 50 answers)
/// and her last answered probe was sent less than 100 ms after it; bob's flow, from 200 ms
/// after it, still has more than 50 probes and at least 90 % answered.
pub fn assert_cut_and_spared(
    alice: &[(Instant, bool)],
    bob: &[(Instant, bool)],
    revoked: Instant,
    event: &str,
) {
    assert_cut_within_and_spared(alice, bob, revoked, event, Duration::from_millis(100));
}

/// [`assert_cut_and_spared`] with another bound on how late alice's last answered probe may
/// be sent.
pub fn assert_cut_within_and_spared(
    alice: &[(Instant, bool)],
    bob: &[(Instant, bool)],
    revoked: Instant,
    event: &str,
    bound: Duration,
) {
    let before = alice.iter().filter(|(t, ok)| *ok && *t < revoked).count();
    assert!(
        before > 50,
        "alice's flow must run before the revoke ({before} answers)"
    );
    let last_ok = alice
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(t, _)| *t)
        .max()
        .expect("answered probes");
    let after = last_ok.saturating_duration_since(revoked);
    println!("alice's last answered request was sent {after:?} after {event}");
    assert!(
        after < bound,
        "the revoke took effect only {after:?} after {event}"
    );
    let bob_after: Vec<_> = bob
        .iter()
        .filter(|(t, _)| *t > revoked + Duration::from_millis(200))
        .collect();
    let bob_ok = bob_after.iter().filter(|(_, ok)| *ok).count();
    assert!(
        bob_after.len() > 50 && bob_ok * 10 >= bob_after.len() * 9,
        "bob's flow must continue: {bob_ok} of {}",
        bob_after.len()
    );
}
