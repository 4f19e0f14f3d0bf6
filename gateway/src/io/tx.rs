//! The sending half of the data path: what the data plane delivers into the TUN (return
//! traffic) is read by a thread of its own, sealed with the client's sending key and sent —
//! UDP datagrams batched into one GSO `sendmsg` per destination, TCP frames through the TCP
//! transport. With TUN offloads a read may be a TCP super-packet, cut into tunnel-sized
//! segments that are sealed straight into the batch (`datachannel::offload`). Also the one
//! place decrypted packets are written into the TUN ([`write_tun`]).
//!
//! The event loop (`server.rs`) installs and replaces each client's [`TxSession`] in
//! [`TxShared::sessions`]; per packet the thread takes a read lock of that map and the
//! client's own lock, once per TUN read (a super-packet: once per up to 64 KiB).

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{io::unix::AsyncFd, net::UdpSocket};
use tracing::{debug, warn};

use crate::{
    datachannel::{
        inner::PING_MAGIC,
        offload::{self, Segments, VnetHdr, VNET_HDR_LEN},
        Sealer, OVERHEAD,
    },
    endpoint::{datapath::Activity, Peer},
    tun::Tun,
};

/// Largest datagram sent as a GSO segment: 1500-byte MTU less IPv4 and UDP headers.
const GSO_MAX_SEGMENT: usize = 1500 - 28;
/// Largest GSO batch: a UDP datagram's 64 KiB less headers, with margin.
const GSO_MAX_BYTES: usize = 65_000;
/// What a TUN read may hold: a `virtio_net_hdr` and a 64 KiB packet.
const TUN_READ_BUF: usize = VNET_HDR_LEN + offload::MAX_PACKET;

/// Sealed datagrams for one destination, sent with one GSO `sendmsg`: all of one size but the
/// last, which may be shorter. Its buffer is allocated once: room for a full batch and one
/// more datagram being sealed behind it.
pub(crate) struct GsoBatch {
    dest: Option<SocketAddr>,
    segment: usize,
    count: usize,
    len: usize,
    buf: Box<[u8]>,
}

impl Default for GsoBatch {
    fn default() -> Self {
        GsoBatch {
            dest: None,
            segment: 0,
            count: 0,
            len: 0,
            buf: vec![0u8; GSO_MAX_BYTES + OVERHEAD + offload::MAX_PACKET].into_boxed_slice(),
        }
    }
}

/// The sending half of a client's data channel: the TUN reader thread seals with it.
pub(crate) struct TxSession {
    pub(crate) peer: Peer,
    pub(crate) sealer: Sealer,
    pub(crate) last_tx: Instant,
    /// Shared with the endpoint: told when packet ids run out.
    pub(crate) activity: Arc<Activity>,
}

/// State the event loop and the TUN reader thread share.
#[derive(Clone)]
pub(crate) struct TxShared {
    /// Sending halves by client tunnel address.
    pub(crate) sessions: Arc<RwLock<HashMap<Ipv4Addr, Arc<Mutex<TxSession>>>>>,
    pub(crate) udp: Option<Arc<UdpSocket>>,
    /// GSO/GRO and batched syscalls on the UDP socket (quinn-udp).
    pub(crate) udp_state: Option<Arc<quinn_udp::UdpSocketState>>,
    /// The TCP listener's connections (sending, closing, admission bounds).
    pub(crate) tcp: crate::io::tcp::TcpPeers,
}

/// A poisoned lock only means another thread panicked while holding it; the data (maps of
/// handles) is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

impl TxShared {
    /// Sends one packet to a peer, now (control packets, pings, oversized datagrams).
    pub(crate) fn send_to(&self, peer: Peer, bytes: &[u8]) {
        match peer {
            Peer::Udp(addr) => {
                if let Some(s) = &self.udp {
                    if let Err(e) = s.try_send_to(bytes, addr) {
                        debug!(error = %e, %addr, "UDP send");
                    }
                }
            }
            Peer::Tcp(id) => {
                if !self.tcp.send(id, bytes) {
                    debug!(
                        conn = id,
                        "TCP packet dropped: queue full or connection gone"
                    );
                }
            }
        }
    }

    fn max_gso_segments(&self) -> usize {
        self.udp_state
            .as_ref()
            .map_or(1, |s| s.max_gso_segments())
            .clamp(1, 64)
    }

    /// Takes the datagram of `len` bytes just sealed at the batch's end (`gso.buf[gso.len..]`)
    /// into the batch: what is batched goes first when the datagram cannot join it (another
    /// destination or a longer datagram), and the batch goes when it is complete.
    fn commit_gso(&self, gso: &mut GsoBatch, dest: SocketAddr, len: usize) {
        let max = self.max_gso_segments();
        let start = gso.len;
        let joins = gso.dest == Some(dest) && len <= gso.segment && gso.count < max;
        if gso.count > 0 && !joins {
            self.send_batch(gso);
            gso.buf.copy_within(start..start + len, 0);
        }
        let at = gso.len;
        // A datagram that does not fit an Ethernet MTU cannot be a GSO segment (the kernel
        // refuses the whole batch): it goes alone, and the kernel fragments it, as OpenVPN's
        // do.
        if len > GSO_MAX_SEGMENT {
            self.send_to(Peer::Udp(dest), &gso.buf[at..at + len]);
            return;
        }
        if gso.count == 0 {
            gso.dest = Some(dest);
            gso.segment = len;
        }
        gso.len += len;
        gso.count += 1;
        // A shorter datagram ends a batch, and so does a full one.
        if len < gso.segment || gso.count >= max || gso.len + gso.segment > GSO_MAX_BYTES {
            self.send_batch(gso);
        }
    }

    /// Sends what is batched.
    fn flush_gso(&self, gso: &mut GsoBatch) {
        if gso.count > 0 {
            self.send_batch(gso);
        }
    }

    fn send_batch(&self, gso: &mut GsoBatch) {
        if let (Some(sock), Some(state), Some(dest)) = (&self.udp, &self.udp_state, gso.dest) {
            let t = quinn_udp::Transmit {
                destination: dest,
                ecn: None,
                contents: &gso.buf[..gso.len],
                segment_size: (gso.count > 1).then_some(gso.segment),
                src_ip: None,
            };
            match sock.try_io(tokio::io::Interest::WRITABLE, || {
                state.try_send(sock.as_ref().into(), &t)
            }) {
                Ok(()) => {}
                // Socket buffer full: dropped, as a congested link would.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    debug!(%dest, segments = gso.count, "UDP batch dropped: send buffer full")
                }
                // The path's MTU no longer takes a segment (EMSGSIZE), or the device cannot
                // segment (EINVAL, EIO): each datagram goes alone, and the kernel fragments
                // those that need it, as it does for OpenVPN's.
                Err(e)
                    if gso.count > 1
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EMSGSIZE | libc::EINVAL | libc::EIO)
                        ) =>
                {
                    debug!(error = %e, %dest, segments = gso.count, "UDP batch sent datagram by datagram");
                    for datagram in gso.buf[..gso.len].chunks(gso.segment) {
                        self.send_to(Peer::Udp(dest), datagram);
                    }
                }
                Err(e) => {
                    warn!(error = %e, %dest, segments = gso.count, bytes = gso.len, "UDP batch send failed")
                }
            }
        }
        gso.len = 0;
        gso.count = 0;
        gso.dest = None;
    }

    /// Encrypts and sends what one TUN read returned (return traffic the data plane delivered):
    /// with offloads, `read` starts with a `virtio_net_hdr` and may be a TCP super-packet,
    /// which goes out as tunnel-sized packets, sealed straight into the send batch.
    fn on_tun_read(&self, gso: &mut GsoBatch, read: &mut [u8], offloads: bool) {
        let (hdr, packet) = if offloads {
            let Some(hdr) = VnetHdr::decode(read) else {
                return;
            };
            (hdr, &mut read[VNET_HDR_LEN..])
        } else {
            (VnetHdr::default(), read)
        };
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return;
        }
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let Some(tx) = read_lock(&self.sessions).get(&dst).cloned() else {
            return;
        };
        let mut segments = match Segments::new(hdr, packet) {
            Ok(s) => s,
            Err(e) => {
                debug!(%dst, error = %e, "TUN packet dropped");
                return;
            }
        };
        let room = OVERHEAD + segments.max_len();
        let mut t = lock(&tx);
        loop {
            let peer = t.peer;
            if let Peer::Udp(dest) = peer {
                if gso.count > 0 && (gso.dest != Some(dest) || gso.len + room > gso.buf.len()) {
                    self.send_batch(gso);
                }
            }
            let start = gso.len;
            let Some(n) = segments.write_next(&mut gso.buf[start + OVERHEAD..]) else {
                break;
            };
            let len = match t
                .sealer
                .seal_in_place(&mut gso.buf[start..start + OVERHEAD + n], n)
            {
                Ok(len) => len,
                Err(e) => {
                    debug!(%dst, error = %e, "seal");
                    break;
                }
            };
            t.last_tx = Instant::now();
            if t.sealer.needs_renegotiation() {
                t.activity.mark_running_out();
            }
            match peer {
                Peer::Udp(dest) => self.commit_gso(gso, dest, len),
                peer => self.send_to(peer, &gso.buf[start..start + len]),
            }
        }
    }

    /// Keepalive: a ping to every client we have sent nothing to for `interval`.
    fn keepalive(&self, interval: Duration) {
        let now = Instant::now();
        let sessions: Vec<Arc<Mutex<TxSession>>> =
            read_lock(&self.sessions).values().cloned().collect();
        for tx in sessions {
            let mut out = Vec::new();
            let peer = {
                let mut t = lock(&tx);
                if now.duration_since(t.last_tx) < interval
                    || t.sealer.seal(&PING_MAGIC, &mut out).is_err()
                {
                    continue;
                }
                t.last_tx = now;
                t.peer
            };
            self.send_to(peer, &out);
        }
    }
}

/// The thread that reads the TUN (return traffic the data plane delivered), encrypts and
/// sends: the second core's share of the data path.
pub(crate) struct TunReader {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TunReader {
    pub(crate) fn spawn(tun: Tun, shared: TxShared, ping: Duration) -> Result<Self> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cvpn-tun".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "TUN reader: no event loop");
                        return;
                    }
                };
                rt.block_on(async move {
                    // SAFETY: the Tun owns its fd for as long as the AsyncFd exists.
                    let fd = match unsafe { AsyncFd::register(tun) } {
                        Ok(fd) => fd,
                        Err(e) => {
                            warn!(error = %e, "TUN reader: cannot register the TUN");
                            return;
                        }
                    };
                    let offloads = fd.get_ref().offloads();
                    let mut buf = vec![0u8; TUN_READ_BUF];
                    let mut gso = GsoBatch::default();
                    let mut tick = tokio::time::interval(Duration::from_millis(200));
                    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                        tokio::select! {
                            r = fd.readable() => {
                                let Ok(mut guard) = r else { continue };
                                for _ in 0..64 {
                                    match guard.get_inner().recv(&mut buf) {
                                        Ok(n) => shared.on_tun_read(&mut gso, &mut buf[..n], offloads),
                                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => { guard.clear_ready(); break; }
                                        Err(e) => { warn!(error = %e, "TUN read"); guard.clear_ready(); break; }
                                    }
                                }
                                shared.flush_gso(&mut gso);
                            }
                            _ = tick.tick() => shared.keepalive(ping),
                        }
                    }
                });
            })
            .context("starting the TUN reader thread")?;
        Ok(TunReader {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (within one tick) and waits for it.
    pub(crate) fn stop(self) {
        drop(self);
    }
}

impl Drop for TunReader {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes one decrypted packet (or super-packet) into the TUN; a full TUN queue drops it, as a
/// congested link would.
pub(crate) fn write_tun(tun: &Tun, header: &[u8; VNET_HDR_LEN], packet: &[u8]) {
    if let Err(e) = tun.send_with_header(header, packet) {
        debug!(error = %e, len = packet.len(), "TUN write");
    }
}
