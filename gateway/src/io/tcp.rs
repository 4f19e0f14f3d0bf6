//! The TCP transport of an endpoint: accepts connections, splits their byte streams into
//! OpenVPN packets (16-bit length prefix) for the event loop, and writes packets back.
//!
//! Everything a TCP peer can make the daemon hold is bounded (SECURITY.md, attack 2):
//!
//! | what | bound | at the bound |
//! |---|---|---|
//! | connections without an admitted session, from one address | [`TcpLimits::per_source`] | new ones are closed at once |
//! | connections without an admitted session, in all | [`TcpLimits::unadmitted`] (at most a quarter of the file limit) | new ones are closed at once |
//! | time to an admitted session | [`TcpLimits::admission_deadline`] | the connection is closed |
//! | packets queued to one peer | [`TcpLimits::queue_packets`] | further packets are dropped (as a congested link would) |
//! | one write to a peer that does not read | [`TcpLimits::write_stall`] | the connection is closed |
//! | packets from all readers to the event loop | [`EVENT_QUEUE`] | readers wait (TCP flow control pushes back on the peer) |
//!
//! An accept error (EMFILE when file descriptors run out, ENOBUFS, …) is logged once a second
//! at most and the accept loop pauses briefly instead of spinning. When a session ends the
//! event loop closes its connection ([`TcpPeers::close`]).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
    task::AbortHandle,
};
use tracing::{debug, info, warn};

use crate::protocol::packet::{frame_into, TcpFramer};

/// Packets from all connections' readers waiting for the event loop.
pub const EVENT_QUEUE: usize = 1024;
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// The bounds on TCP peers.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    pub per_source: usize,
    pub unadmitted: usize,
    pub admission_deadline: Duration,
    pub queue_packets: usize,
    pub write_stall: Duration,
}

impl TcpLimits {
    /// Defaults for a process whose file limit is `nofile`: connections without a session may
    /// take at most a quarter of the descriptors, so admitted clients and the daemon's own
    /// files always have room.
    pub fn for_file_limit(nofile: u64) -> Self {
        TcpLimits {
            per_source: 32,
            unadmitted: usize::try_from(nofile / 4)
                .unwrap_or(usize::MAX)
                .clamp(16, 1024),
            // The handshake (60 s at most) and the connect handler (30 s) fit in it for any
            // client that is not stalling on purpose.
            admission_deadline: Duration::from_secs(60),
            queue_packets: 256,
            write_stall: Duration::from_secs(20),
        }
    }
}

/// What the readers tell the event loop.
#[derive(Debug)]
pub enum TcpEvent {
    /// One OpenVPN packet from connection `id`.
    Packet(u64, SocketAddr, Vec<u8>),
    /// Connection `id` is gone (closed by the peer, a read or framing error, a stalled write).
    Closed(u64),
}

struct Entry {
    addr: SocketAddr,
    accepted: Instant,
    admitted: bool,
    queue: mpsc::Sender<Vec<u8>>,
    tasks: [AbortHandle; 2],
}

#[derive(Default)]
struct Table {
    next_id: u64,
    peers: HashMap<u64, Entry>,
    unadmitted: usize,
    unadmitted_by_source: HashMap<IpAddr, usize>,
}

impl Table {
    fn forget_unadmitted(&mut self, ip: IpAddr) {
        self.unadmitted = self.unadmitted.saturating_sub(1);
        if let Some(n) = self.unadmitted_by_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.unadmitted_by_source.remove(&ip);
            }
        }
    }
}

/// The connections of one TCP listener, shared by the event loop (which admits and closes)
/// and the TUN reader thread (which sends).
#[derive(Clone, Default)]
pub struct TcpPeers {
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for TcpPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpPeers").finish_non_exhaustive()
    }
}

impl TcpPeers {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A poisoned lock only means a panic elsewhere; the table itself is consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one packet to connection `id` (framed). False when it is gone or its queue is
    /// full (the packet is dropped, as a congested link would).
    pub fn send(&self, id: u64, packet: &[u8]) -> bool {
        let mut framed = Vec::with_capacity(packet.len() + 2);
        if frame_into(packet, &mut framed).is_err() {
            return false;
        }
        let t = self.table();
        match t.peers.get(&id) {
            Some(e) => e.queue.try_send(framed).is_ok(),
            None => false,
        }
    }

    /// Connection `id` carries an admitted session now: it leaves the bounds on connections
    /// without one.
    pub fn admitted(&self, id: u64) {
        let mut t = self.table();
        let ip = match t.peers.get_mut(&id) {
            Some(e) if !e.admitted => {
                e.admitted = true;
                e.addr.ip()
            }
            _ => return,
        };
        t.forget_unadmitted(ip);
    }

    /// Closes connection `id` (its session ended, or it broke a bound): both tasks end and
    /// the socket is closed.
    pub fn close(&self, id: u64) {
        let mut t = self.table();
        if let Some(e) = t.peers.remove(&id) {
            for task in &e.tasks {
                task.abort();
            }
            if !e.admitted {
                t.forget_unadmitted(e.addr.ip());
            }
        }
    }

    /// Closes the connections that have had no admitted session for `deadline`; returns
    /// their ids.
    pub fn reap(&self, now: Instant, deadline: Duration) -> Vec<u64> {
        let late: Vec<u64> = self
            .table()
            .peers
            .iter()
            .filter(|(_, e)| !e.admitted && now.duration_since(e.accepted) >= deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in &late {
            self.close(*id);
        }
        late
    }

    /// Connections open now, and of those without an admitted session.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.table();
        (t.peers.len(), t.unadmitted)
    }

    /// Registers a new connection unless a bound says no; returns its id.
    fn register(
        &self,
        addr: SocketAddr,
        limits: &TcpLimits,
        queue: mpsc::Sender<Vec<u8>>,
        tasks: impl FnOnce(u64) -> [AbortHandle; 2],
    ) -> Result<u64, &'static str> {
        let mut t = self.table();
        if t.unadmitted >= limits.unadmitted {
            return Err("connections without a session, in all");
        }
        let from_here = t.unadmitted_by_source.get(&addr.ip()).copied().unwrap_or(0);
        if from_here >= limits.per_source {
            return Err("connections without a session from this address");
        }
        let id = t.next_id;
        t.next_id += 1;
        t.unadmitted += 1;
        *t.unadmitted_by_source.entry(addr.ip()).or_insert(0) += 1;
        let tasks = tasks(id);
        t.peers.insert(
            id,
            Entry {
                addr,
                accepted: Instant::now(),
                admitted: false,
                queue,
                tasks,
            },
        );
        Ok(id)
    }
}

/// Accepts connections on `listener` until the returned task is aborted; packets and closes go
/// to `events`.
pub fn spawn_acceptor(
    listener: TcpListener,
    peers: TcpPeers,
    limits: TcpLimits,
    events: mpsc::Sender<TcpEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_complaint: Option<Instant> = None;
        let mut refused: u64 = 0;
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: the connection stays in the backlog; pausing
                    // lets sessions end and descriptors come back instead of spinning.
                    if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        warn!(error = %e, "TCP accept failed; pausing accepts briefly");
                        last_complaint = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (rd, wr) = stream.into_split();
            let (queue, rx) = mpsc::channel::<Vec<u8>>(limits.queue_packets);
            let registered = peers.register(addr, &limits, queue, |id| {
                let reader = tokio::spawn(read_loop(id, addr, rd, events.clone()));
                let writer =
                    tokio::spawn(write_loop(id, wr, rx, limits.write_stall, events.clone()));
                [reader.abort_handle(), writer.abort_handle()]
            });
            match registered {
                Ok(id) => debug!(conn = id, %addr, "TCP connection accepted"),
                Err(bound) => {
                    // The halves were dropped with the closure: the socket is closed.
                    refused += 1;
                    if refused.is_power_of_two() {
                        info!(%addr, %bound, refused, "TCP connection closed at once: too many without a session");
                    }
                }
            }
        }
    })
}

async fn read_loop(
    id: u64,
    addr: SocketAddr,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    events: mpsc::Sender<TcpEvent>,
) {
    let mut framer = TcpFramer::new();
    let mut buf = vec![0u8; READ_CHUNK];
    'read: loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_frame() {
                Ok(Some(f)) => {
                    // Waits when the event loop is behind: the peer is pushed back on.
                    if events
                        .send(TcpEvent::Packet(id, addr, f.to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
    }
    let _ = events.send(TcpEvent::Closed(id)).await;
}

async fn write_loop(
    id: u64,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    stall: Duration,
    events: mpsc::Sender<TcpEvent>,
) {
    while let Some(frame) = rx.recv().await {
        match tokio::time::timeout(stall, wr.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                debug!(conn = id, "TCP peer does not read: closing");
                break;
            }
        }
    }
    let _ = events.send(TcpEvent::Closed(id)).await;
}

/// Raises the soft file limit to the hard one (systemd gives services 1024 soft) and returns
/// the limit in force.
pub fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct of the right type.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TcpLimits {
        TcpLimits {
            per_source: 2,
            unadmitted: 3,
            admission_deadline: Duration::from_millis(0),
            queue_packets: 2,
            write_stall: Duration::from_secs(1),
        }
    }

    fn dummy_tasks() -> [AbortHandle; 2] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _g = rt.enter();
        let a = tokio::spawn(async {}).abort_handle();
        let b = tokio::spawn(async {}).abort_handle();
        [a, b]
    }

    #[test]
    fn bounds_per_source_and_in_all_and_admission_frees_a_place() {
        let peers = TcpPeers::default();
        let l = limits();
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let c: SocketAddr = "192.0.2.3:1000".parse().unwrap();
        let reg = |addr| {
            let (q, _rx) = mpsc::channel(2);
            peers.register(addr, &l, q, |_| dummy_tasks())
        };
        let a1 = reg(a).unwrap();
        reg(a).unwrap();
        assert!(reg(a).is_err(), "a third from one address");
        reg(b).unwrap();
        assert!(reg(c).is_err(), "a fourth in all");
        peers.admitted(a1);
        assert_eq!(peers.counts(), (3, 2));
        reg(c).unwrap();
        // Reaping closes only the ones without a session.
        let reaped = peers.reap(Instant::now(), Duration::from_millis(0));
        assert_eq!(reaped.len(), 3);
        assert_eq!(peers.counts(), (1, 0));
        peers.close(a1);
        assert_eq!(peers.counts(), (0, 0));
    }

    #[test]
    fn a_full_queue_drops_packets() {
        let peers = TcpPeers::default();
        let (q, _rx) = mpsc::channel(2);
        let id = peers
            .register("192.0.2.1:1".parse().unwrap(), &limits(), q, |_| {
                dummy_tasks()
            })
            .unwrap();
        assert!(peers.send(id, b"one"));
        assert!(peers.send(id, b"two"));
        assert!(!peers.send(id, b"three"), "the third must be dropped");
        assert!(!peers.send(99, b"gone"));
    }
}
