//! The endpoint daemon's I/O: sockets, the TUN device, timers. It only moves bytes between the
//! sans-IO protocol core ([`crate::protocol`]), the data channel ([`crate::datachannel`]) and
//! the kernel data plane ([`crate::dataplane`]), which makes every per-packet policy decision.
//!
//! One event loop owns all state: UDP datagrams and TCP frames in, TUN packets in, a tick for
//! retransmissions and keepalives. Decrypted client packets go into the TUN, where
//! `client_ingress` takes them; return traffic comes out of the TUN and is encrypted here.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use tokio::{
    io::unix::AsyncFd,
    net::{TcpListener, UdpSocket},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::{
    connlog::FailureReason,
    datachannel::{Cipher, DataChannel, Opener, Role, Sealer},
    dataplane::{policy::Policy, DataPlane, DataPlaneConfig, TargetSpec},
    io::tcp::{TcpEvent, TcpLimits},
    pool::AddressPool,
    protocol::{
        cookie::CookieJar,
        packet::{Header, Opcode, Packet},
        push::{negotiate_cipher, KeySignalling, PushReply, Tunnel},
        session::{Event, ServerSession, SessionConfig},
        tls::TlsMaterial,
    },
    tun::{Kind, Tun},
};

/// OpenVPN's keepalive ping: a data-channel packet with this payload.
pub use crate::datachannel::inner::PING_MAGIC;

/// Transport of an endpoint.
pub use crate::storage::TransportProtocol as Transport;

/// Everything the daemon needs to serve one endpoint.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub transport: Transport,
    pub client_cidr: Ipv4Net,
    pub tls: TlsMaterial,
    pub split_tunnel: bool,
    pub dns_servers: Vec<Ipv4Addr>,
    pub targets: Vec<TargetSpec>,
    /// Rules and routes; routes to each target interface's own subnet are added.
    pub policy: Policy,
    pub tun_name: String,
    /// Data ciphers, best first.
    pub ciphers: Vec<String>,
    /// Derive data keys by the legacy TLS-PRF even for clients with TLS-EKM.
    pub force_tls_prf: bool,
    /// The endpoint's id in logs (`cvpn-endpoint-...`).
    pub endpoint_id: String,
    /// Where the connection log and flow log go (`connection.log`, `flow.log`); `None`: no
    /// log files.
    pub log_dir: Option<std::path::PathBuf>,
    pub log_options: crate::connlog::LogOptions,
    /// Seconds between keepalive pings, and of silence before a client is dropped.
    pub ping: u32,
    pub ping_restart: u32,
    /// Renegotiate each session's keys after this long (server-initiated soft reset);
    /// `None`: only when the client asks or packet ids run out.
    pub reneg_after: Option<Duration>,
    /// Connection and flow logs shared with other endpoints of the daemon; when set,
    /// `log_dir` is not opened.
    pub shared_logs: Option<Arc<crate::connlog::ConnectionLogs>>,
    /// Where connections are reported to the control plane (the store); `None`: nowhere.
    pub recorder: Option<Arc<dyn ConnectionRecorder>>,
    /// How often running connections' counters are reported to the recorder.
    pub counters_every: Duration,
    /// Print this endpoint's connection- and flow-log lines on stdout (when its logs are
    /// shared ones that do not print already).
    pub print_log_lines: bool,
    /// Session timeout and connect handler (changeable while running).
    pub live: LiveSettings,
    /// SNAT ports of this endpoint; `None`: the data plane's default range. Endpoints of one
    /// daemon that share a target interface need disjoint ranges ([`snat_slice`]).
    pub nat_port_range: Option<(u16, u16)>,
}

/// The slice of the default SNAT range an endpoint of a daemon uses, by its listener: AWS's
/// ports (443, 1194) and transports give four endpoints per host address, each with a quarter
/// of the range, so two endpoints on one target interface never hand out the same port.
pub fn snat_slice(transport: Transport, port: u16) -> (u16, u16) {
    use gateway_common::{DEFAULT_NAT_PORT_MAX, DEFAULT_NAT_PORT_MIN};
    let slot: u32 = match (transport, port) {
        (Transport::Udp, 443) => 0,
        (Transport::Udp, _) => 1,
        (Transport::Tcp, 443) => 2,
        (Transport::Tcp, _) => 3,
    };
    let (min, max) = (u32::from(DEFAULT_NAT_PORT_MIN), u32::from(DEFAULT_NAT_PORT_MAX));
    let size = (max - min + 1) / 4;
    let lo = min + slot * size;
    let hi = if slot == 3 { max } else { lo + size - 1 };
    (lo as u16, hi as u16)
}

/// The settings a running endpoint takes without a restart ([`ServerCommand::LiveSettings`]).
#[derive(Clone, Debug, Default)]
pub struct LiveSettings {
    /// The longest a session lasts (AWS's session timeout, 8 to 24 hours); `None`: no limit.
    /// Running sessions are measured against a new value from their start.
    pub session_timeout: Option<Duration>,
    /// At the session timeout: true, the client is told to exit (HALT; its user reconnects);
    /// false, it is told to reconnect at once (RESTART), which authenticates it again.
    pub disconnect_on_session_timeout: bool,
    /// The client connect handler, asked before a client gets an address (clients that
    /// connect after a change use the new one); `None`: none.
    pub connect_handler: Option<Arc<crate::connect_handler::ConnectHandler>>,
}

/// What the server tells the control plane about connections. Calls come from the event loop,
/// so implementations queue the work (see `control::recorder`) rather than block.
pub trait ConnectionRecorder: Send + Sync + std::fmt::Debug {
    /// A client authenticated and got `connection.client_ip`.
    fn started(&self, connection_id: &str, connection: crate::storage::NewConnection);
    /// The current counters of running connections.
    fn counters(&self, batch: Vec<(String, crate::dataplane::SessionCounters)>);
    /// A connection ended (or was asked to end and was not running any more).
    fn ended(&self, connection_id: &str, counters: crate::dataplane::SessionCounters);
}

impl ServerSettings {
    pub fn default_ciphers() -> Vec<String> {
        vec![
            "AES-256-GCM".into(),
            "AES-128-GCM".into(),
            "CHACHA20-POLY1305".into(),
        ]
    }
}

/// Datagrams received per batched receive call.
const RECV_BATCH: usize = 16;
/// Largest datagram sent as a GSO segment: 1500-byte MTU less IPv4 and UDP headers.
const GSO_MAX_SEGMENT: usize = 1500 - 28;
/// Largest GSO batch: a UDP datagram's 64 KiB less headers, with margin.
const GSO_MAX_BYTES: usize = 65_000;

/// Equal-size datagrams for one destination, sent with one GSO `sendmsg` (the last may be
/// shorter).
#[derive(Default)]
struct GsoBatch {
    dest: Option<SocketAddr>,
    segment: usize,
    count: usize,
    buf: Vec<u8>,
}

/// The sending half of a client's data channel: the TUN reader thread seals with it.
struct TxSession {
    peer: Peer,
    sealer: Sealer,
    last_tx: Instant,
}

/// State the event loop and the TUN reader thread share.
#[derive(Clone)]
struct TxShared {
    /// Sending halves by client tunnel address.
    sessions: Arc<RwLock<HashMap<Ipv4Addr, Arc<Mutex<TxSession>>>>>,
    udp: Option<Arc<UdpSocket>>,
    /// GSO/GRO and batched syscalls on the UDP socket (quinn-udp).
    udp_state: Option<Arc<quinn_udp::UdpSocketState>>,
    /// The TCP listener's connections (sending, closing, admission bounds).
    tcp: crate::io::tcp::TcpPeers,
}

/// A poisoned lock only means another thread panicked while holding it; the data (maps of
/// handles) is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

impl TxShared {
    /// Sends one packet to a peer, now (control packets, pings, oversized datagrams).
    fn send_to(&self, peer: Peer, bytes: &[u8]) {
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

    /// Adds a datagram for `dest` to the GSO batch, sending the batch first when it cannot
    /// take it (another destination, another size, full) and after it when it is complete.
    fn queue_gso(&self, gso: &mut GsoBatch, dest: SocketAddr, datagram: &[u8]) {
        // A datagram that does not fit an Ethernet MTU cannot be a GSO segment (the kernel
        // refuses the whole batch): it goes alone, and the kernel fragments it, as OpenVPN's
        // do.
        if datagram.len() > GSO_MAX_SEGMENT {
            self.flush_gso(gso);
            self.send_to(Peer::Udp(dest), datagram);
            return;
        }
        let max = self
            .udp_state
            .as_ref()
            .map_or(1, |s| s.max_gso_segments())
            .clamp(1, 64);
        let fits = gso.dest == Some(dest)
            && datagram.len() <= gso.segment
            && gso.count < max
            && gso.buf.len() + datagram.len() <= GSO_MAX_BYTES;
        if !fits {
            self.flush_gso(gso);
        }
        if gso.count == 0 {
            gso.dest = Some(dest);
            gso.segment = datagram.len();
        }
        gso.buf.extend_from_slice(datagram);
        gso.count += 1;
        // A shorter datagram ends a batch.
        if datagram.len() < gso.segment || gso.count >= max {
            self.flush_gso(gso);
        }
    }

    fn flush_gso(&self, gso: &mut GsoBatch) {
        if gso.count == 0 {
            return;
        }
        if let (Some(sock), Some(state), Some(dest)) = (&self.udp, &self.udp_state, gso.dest) {
            let t = quinn_udp::Transmit {
                destination: dest,
                ecn: None,
                contents: &gso.buf,
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
                Err(e) => {
                    warn!(error = %e, %dest, segments = gso.count, bytes = gso.buf.len(), "UDP batch send failed")
                }
            }
        }
        gso.buf.clear();
        gso.count = 0;
        gso.dest = None;
    }

    /// Encrypts and sends one packet the data plane delivered into the TUN (return traffic).
    /// `buf[24..24 + n]` holds it; the 24 bytes in front are room for the data header.
    fn on_tun_packet(&self, gso: &mut GsoBatch, buf: &mut [u8], n: usize) {
        if n < 20 || buf[24] >> 4 != 4 {
            return;
        }
        let dst = Ipv4Addr::new(buf[24 + 16], buf[24 + 17], buf[24 + 18], buf[24 + 19]);
        let Some(tx) = read_lock(&self.sessions).get(&dst).cloned() else {
            return;
        };
        let (peer, len) = {
            let mut t = lock(&tx);
            match t.sealer.seal_in_place(&mut buf[..24 + n], n) {
                Ok(len) => {
                    t.last_tx = Instant::now();
                    (t.peer, len)
                }
                Err(e) => {
                    debug!(%dst, error = %e, "seal");
                    return;
                }
            }
        };
        match peer {
            Peer::Udp(addr) => self.queue_gso(gso, addr, &buf[..len]),
            peer => self.send_to(peer, &buf[..len]),
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
struct TunReader {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TunReader {
    fn spawn(tun: Tun, shared: TxShared, ping: Duration) -> Result<Self> {
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
                    let mut buf = vec![0u8; 65536 + 64];
                    let mut gso = GsoBatch::default();
                    let mut tick = tokio::time::interval(Duration::from_millis(200));
                    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                        tokio::select! {
                            r = fd.readable() => {
                                let Ok(mut guard) = r else { continue };
                                for _ in 0..64 {
                                    match guard.get_inner().recv(&mut buf[24..]) {
                                        Ok(n) => shared.on_tun_packet(&mut gso, &mut buf, n),
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
    fn stop(self) {
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

/// Commands to a running server (from a configuration reload, later the management API).
#[derive(Debug)]
pub enum ServerCommand {
    /// Replace the authorization rules and routes; applies to running flows, no session reset.
    ReplacePolicy(Policy),
    /// End the sessions of these connection ids or usernames: HALT is sent to each client (it
    /// exits rather than reconnecting), the session leaves the data plane and its address is
    /// freed. Ids that are not running are reported ended to the recorder.
    Terminate {
        connection_ids: Vec<String>,
        usernames: Vec<String>,
    },
    /// Replace the target networks and, with them, the rules and routes (an association was
    /// added or removed); running sessions are kept.
    ReplaceNetwork {
        targets: Vec<TargetSpec>,
        policy: Policy,
    },
    /// New TLS material (a CRL import): new handshakes use it, and the sessions whose client
    /// certificate serial (`aa:bb:…`) is listed end at once.
    ReplaceTls {
        tls: TlsMaterial,
        revoked_serials: Vec<String>,
    },
    /// New session timeout and connect handler.
    LiveSettings(LiveSettings),
}

/// Where a client's packets come from and go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Peer {
    Udp(SocketAddr),
    Tcp(u64),
}

struct Conn {
    peer: Peer,
    remote_addr: SocketAddr,
    /// The address the handshake came from (counted in [`PendingHandshakes`] until admitted;
    /// `remote_addr` may move).
    handshake_source: IpAddr,
    session: ServerSession,
    /// Where the connection is in its life; data packets are accepted only when admitted.
    state: ConnState,
    /// Receiving halves of the data channel by key id, newest last (the previous key keeps
    /// working after a renegotiation until it is replaced).
    data: Vec<Opener>,
    /// The sending half, shared with the TUN reader thread.
    tx: Option<Arc<Mutex<TxSession>>>,
    peer_id: u32,
    cipher: Option<Cipher>,
    common_name: String,
    /// The client certificate's serial, `aa:bb:…` (CRL checks of running sessions).
    serial: String,
    /// For the connection log.
    log: crate::connlog::ConnectionInfo,
    last_rx: Instant,
    /// When the current data keys were installed, and whether we started a renegotiation
    /// that has not finished.
    keys_at: Instant,
    rekey_pending: bool,
    /// A renegotiation failed at this time; the session ends if no new key is in place
    /// within [`RENEGOTIATION_GRACE`].
    rekey_failed_at: Option<Instant>,
    /// The client asked for its configuration (it is sent once the client is admitted).
    push_requested: bool,
    /// Data packets dropped because their inner source was not the client's own address (or
    /// not IPv4), and because they came before the client was admitted.
    forged: u64,
    early: u64,
}

/// A connection's life. It moves forward only: `Handshaking` → `Authorizing` → `Admitted`,
/// and ends by removal from the endpoint's table (with a connection-log entry saying why).
enum ConnState {
    /// The reset exchange is done; TLS and the first key exchange are under way.
    Handshaking,
    /// The certificate is verified and data keys exist, but outside checks (the client
    /// connect handler) decide whether the client may in. It has no address; its data
    /// packets are dropped.
    Authorizing {
        admission: Admission,
        /// The session timeout counts from here.
        authenticated_at: Instant,
    },
    /// The client has an address and a data-plane session; its configuration is pushed when
    /// it asks (or at once, for clients that do not ask).
    Admitted {
        client_ip: Ipv4Addr,
        authenticated_at: Instant,
        push_messages: Vec<String>,
    },
}

impl ConnState {
    fn client_ip(&self) -> Option<Ipv4Addr> {
        match self {
            ConnState::Admitted { client_ip, .. } => Some(*client_ip),
            _ => None,
        }
    }

    fn authenticated_at(&self) -> Option<Instant> {
        match self {
            ConnState::Handshaking => None,
            ConnState::Authorizing {
                authenticated_at, ..
            }
            | ConnState::Admitted {
                authenticated_at, ..
            } => Some(*authenticated_at),
        }
    }
}

/// Bounds on connections that are not admitted yet: each holds a TLS state.
const MAX_PENDING_HANDSHAKES: usize = 1024;
const MAX_PENDING_PER_SOURCE: u32 = 32;

/// Connections not admitted yet, in all and by source address.
#[derive(Debug, Default)]
struct PendingHandshakes {
    total: usize,
    by_source: HashMap<IpAddr, u32>,
}

impl PendingHandshakes {
    /// Counts a new handshake from `source`, or says which bound it would break.
    fn admit(&mut self, source: IpAddr) -> Result<(), &'static str> {
        if self.total >= MAX_PENDING_HANDSHAKES {
            return Err("pending handshakes in all");
        }
        let n = self.by_source.entry(source).or_insert(0);
        if *n >= MAX_PENDING_PER_SOURCE {
            return Err("pending handshakes from this address");
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// A handshake from `source` ended or was admitted.
    fn done(&mut self, source: IpAddr) {
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
            self.total = self.total.saturating_sub(1);
        }
    }
}

/// How long a session keeps its old keys after a renegotiation failed (a revoked or expired
/// certificate, a stalled key exchange) before it is ended.
const RENEGOTIATION_GRACE: Duration = Duration::from_secs(10);

/// What admitting an authenticated client takes (kept while the connect handler decides).
struct Admission {
    identity: crate::protocol::tls::ClientIdentity,
    peer_info: crate::protocol::keymethod::PeerInfo,
    tls_version: String,
    tls_ekm: bool,
    cipher_name: String,
}

/// The connect handler's answer for a connection.
type HandlerAnswer = (
    u64,
    Result<crate::connect_handler::ConnectResponse, crate::connect_handler::HandlerError>,
);

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The daemon's state and event loop.
pub struct Server {
    settings: ServerSettings,
    session_config: Arc<SessionConfig>,
    cookies: CookieJar,
    pool: AddressPool,
    dataplane: DataPlane,
    conns: HashMap<u64, Conn>,
    by_peer: HashMap<Peer, u64>,
    by_peer_id: HashMap<u32, u64>,
    next_conn: u64,
    peer_ids: crate::protocol::peer_id::PeerIds,
    /// Connections not yet admitted, in all and by source address (handshake-flood bounds).
    pending: PendingHandshakes,
    /// What the TUN reader thread shares with the event loop: sockets and sending halves.
    tx: TxShared,
    tun: Arc<AsyncFd<Tun>>,
    logs: Option<Arc<crate::connlog::ConnectionLogs>>,
    /// When counters were last reported to the recorder.
    counters_at: Instant,
    /// Connect handler answers come back here.
    handler_tx: mpsc::UnboundedSender<HandlerAnswer>,
    handler_rx: Option<mpsc::UnboundedReceiver<HandlerAnswer>>,
    flow_events: Option<AsyncFd<crate::dataplane::FlowEvents>>,
}

impl Server {
    /// Opens the TUN, loads the data plane, and binds the listener's socket.
    pub fn new(settings: ServerSettings) -> Result<Self> {
        let pool = AddressPool::new(settings.client_cidr).context("client CIDR")?;
        let tls = settings.tls.server_config().context("TLS configuration")?;
        let session_config = Arc::new(SessionConfig {
            force_tls_prf: settings.force_tls_prf,
            ..SessionConfig::new(tls)
        });

        let tun = Tun::open_with(&settings.tun_name, Kind::Tun, false, true)
            .with_context(|| format!("creating TUN device {}", settings.tun_name))?;
        let gw = format!(
            "{}/{}",
            pool.gateway_addr(),
            settings.client_cidr.prefix_len()
        );
        ip(&["addr", "replace", &gw, "dev", &settings.tun_name])?;
        ip(&["link", "set", &settings.tun_name, "mtu", "1500", "up"])?;

        let defaults = DataPlaneConfig::default();
        let mut dataplane = DataPlane::load(DataPlaneConfig {
            client_interface: Some(settings.tun_name.clone()),
            nat_port_range: settings.nat_port_range.unwrap_or(defaults.nat_port_range),
            ..DataPlaneConfig::default()
        })
        .context("loading the kernel data plane")?;
        for t in &settings.targets {
            dataplane
                .add_target_network(t.clone())
                .with_context(|| format!("target network {}", t.interface))?;
            check_target_overlap(settings.client_cidr, t)?;
        }
        dataplane
            .replace_policy(with_connected_routes(
                settings.policy.clone(),
                &settings.targets,
            ))
            .context("applying rules and routes")?;

        let logs = match (&settings.shared_logs, &settings.log_dir) {
            (Some(shared), _) => Some(shared.clone()),
            (None, Some(dir)) => Some(Arc::new(
                crate::connlog::ConnectionLogs::open(dir, &settings.log_options)
                    .with_context(|| format!("opening the connection log in {}", dir.display()))?,
            )),
            (None, None) => None,
        };
        let flow_events = match dataplane.take_flow_events() {
            // SAFETY: FlowEvents owns the ring buffer's fd for as long as the AsyncFd exists.
            Some(ev) => unsafe { AsyncFd::register(ev) }.ok(),
            None => None,
        };
        let (handler_tx, handler_rx) = mpsc::unbounded_channel();
        Ok(Server {
            logs,
            counters_at: Instant::now(),
            handler_tx,
            handler_rx: Some(handler_rx),
            flow_events,
            cookies: CookieJar::new()
                .map_err(|_| anyhow::anyhow!("no system randomness for the cookie key"))?,
            session_config,
            pool,
            dataplane,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            by_peer_id: HashMap::new(),
            next_conn: 1,
            peer_ids: crate::protocol::peer_id::PeerIds::new(),
            pending: PendingHandshakes::default(),
            tx: TxShared {
                sessions: Arc::new(RwLock::new(HashMap::new())),
                udp: None,
                udp_state: None,
                tcp: Default::default(),
            },
            // SAFETY: the Tun owns its fd, which stays open for as long as the AsyncFd (which
            // owns the Tun) exists.
            tun: Arc::new(
                unsafe { AsyncFd::register(tun) }
                    .map_err(|e| anyhow::anyhow!("registering the TUN with the event loop: {e}"))?,
            ),
            settings,
        })
    }

    pub fn dataplane(&self) -> &DataPlane {
        &self.dataplane
    }

    /// Serves until `shutdown` resolves; then tells every client to reconnect.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let (_tx, rx) = mpsc::unbounded_channel();
        self.run_with_commands(shutdown, rx).await
    }

    /// Serves until `shutdown` resolves, applying `commands` as they come.
    pub async fn run_with_commands(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
        mut commands: mpsc::UnboundedReceiver<ServerCommand>,
    ) -> Result<()> {
        let (tcp_tx, mut tcp_rx) = mpsc::channel::<TcpEvent>(crate::io::tcp::EVENT_QUEUE);
        let tcp_limits = TcpLimits::for_file_limit(crate::io::tcp::raise_file_limit());
        let tcp_listener = match self.settings.transport {
            Transport::Udp => {
                let sock = UdpSocket::bind(self.settings.listen)
                    .await
                    .with_context(|| format!("binding UDP {}", self.settings.listen))?;
                let state = quinn_udp::UdpSocketState::new((&sock).into())
                    .context("setting up batched UDP I/O")?;
                // quinn-udp sets "don't fragment" for QUIC's path-MTU probing; an OpenVPN
                // server lets the kernel fragment full-size tunnel packets instead.
                allow_fragmentation(&sock);
                // Room for bursts: the data channel is bulk traffic.
                let _ = state.set_recv_buffer_size((&sock).into(), 8 << 20);
                let _ = state.set_send_buffer_size((&sock).into(), 8 << 20);
                info!(
                    gso_segments = state.max_gso_segments(),
                    gro_segments = state.gro_segments(),
                    "UDP offloads"
                );
                self.tx.udp_state = Some(Arc::new(state));
                self.tx.udp = Some(Arc::new(sock));
                None
            }
            Transport::Tcp => {
                let listener = TcpListener::bind(self.settings.listen)
                    .await
                    .with_context(|| format!("binding TCP {}", self.settings.listen))?;
                info!(?tcp_limits, "TCP bounds");
                Some(crate::io::tcp::spawn_acceptor(
                    listener,
                    self.tx.tcp.clone(),
                    tcp_limits,
                    tcp_tx,
                ))
            }
        };
        info!(listen = %self.settings.listen, transport = ?self.settings.transport, tun = %self.settings.tun_name, "serving");
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut last_gc = Instant::now();
        // Receive batches: up to RECV_BATCH datagrams (each possibly GRO-coalesced) per call.
        let mut rx_bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; 65536]).collect();
        let mut rx_meta = vec![quinn_udp::RecvMeta::default(); RECV_BATCH];
        // The TUN side (read, encrypt, send) runs on a thread of its own.
        let mut handler_rx = self
            .handler_rx
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        let reader = TunReader::spawn(
            self.tun
                .get_ref()
                .try_clone()
                .context("second handle on the TUN")?,
            self.tx.clone(),
            Duration::from_secs(self.settings.ping as u64),
        )?;
        tokio::pin!(shutdown);
        loop {
            let udp = self.tx.udp.clone();
            tokio::select! {
                _ = &mut shutdown => break,
                r = async { match &udp { Some(s) => s.readable().await, None => std::future::pending().await } } => {
                    if r.is_ok() {
                        if let Some(sock) = &udp {
                            // A few batches per wake-up, so the TUN side gets its turn.
                            for _ in 0..4 {
                                let got = {
                                    let Some(state) = &self.tx.udp_state else { break };
                                    let mut slices: Vec<io::IoSliceMut<'_>> =
                                        rx_bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
                                    sock.try_io(tokio::io::Interest::READABLE, || {
                                        state.recv(sock.into(), &mut slices, &mut rx_meta)
                                    })
                                };
                                match got {
                                    Ok(n) => {
                                        for i in 0..n {
                                            let meta = rx_meta[i];
                                            let stride = meta.stride.max(1);
                                            let buf = &mut rx_bufs[i][..meta.len];
                                            // GRO hands several datagrams of one sender in one buffer.
                                            for dgram in buf.chunks_mut(stride) {
                                                self.on_packet(Peer::Udp(meta.addr), meta.addr, dgram);
                                            }
                                        }
                                    }
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                    Err(e) => { warn!(error = %e, "UDP receive"); break; }
                                }
                            }
                        }
                    }
                }
                Some(ev) = tcp_rx.recv() => {
                    match ev {
                        TcpEvent::Packet(id, addr, mut packet) => {
                            self.on_packet(Peer::Tcp(id), addr, &mut packet);
                        }
                        TcpEvent::Closed(id) => {
                            self.tx.tcp.close(id);
                            if let Some(cid) = self.by_peer.get(&Peer::Tcp(id)).copied() {
                                self.disconnect(cid, FailureReason::TCP_CLOSED);
                            }
                        }
                    }
                }
                r = async { match &self.flow_events { Some(f) => f.readable().await.map(|mut g| g.clear_ready()), None => std::future::pending().await } } => {
                    if r.is_ok() {
                        self.on_flow_events();
                    }
                }
                Some(cmd) = commands.recv() => self.on_command(cmd),
                Some((id, answer)) = handler_rx.recv() => self.on_handler_answer(id, answer),
                _ = tick.tick() => {
                    self.on_tick();
                    for id in self.tx.tcp.reap(Instant::now(), tcp_limits.admission_deadline) {
                        debug!(conn = id, "TCP connection without a session past its deadline: closed");
                        if let Some(cid) = self.by_peer.get(&Peer::Tcp(id)).copied() {
                            self.disconnect(cid, FailureReason::HANDSHAKE_TIMEOUT);
                        }
                    }
                    if last_gc.elapsed() > Duration::from_secs(10) {
                        let r = self.dataplane.expire_nat();
                        debug!(?r, "NAT expiry");
                        last_gc = Instant::now();
                    }
                }
            }
        }
        if let Some(acceptor) = &tcp_listener {
            acceptor.abort();
        }
        info!(
            clients = self.conns.len(),
            "shutting down: telling clients to reconnect"
        );
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.session.send_control("RESTART");
            }
            self.flush(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Each session's end goes to the connection log and the recorder.
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.disconnect(id, FailureReason::SERVER_SHUTDOWN);
        }
        reader.stop();
        Ok(())
    }

    fn send_to(&mut self, peer: Peer, bytes: &[u8]) {
        self.tx.send_to(peer, bytes);
    }

    fn on_packet(&mut self, peer: Peer, addr: SocketAddr, buf: &mut [u8]) {
        let Ok(header) = Header::peek(buf) else {
            return;
        };
        if header.opcode == Opcode::DataV2 {
            self.on_data(peer, buf);
            return;
        }
        if header.opcode == Opcode::DataV1 {
            return;
        }
        let packet = match Packet::decode(buf) {
            Ok(p) => p,
            Err(e) => {
                debug!(%addr, error = %e, "malformed control packet");
                return;
            }
        };
        let now = Instant::now();
        if let Some(&id) = self.by_peer.get(&peer) {
            if let Some(c) = self.conns.get_mut(&id) {
                if let Err(e) = c.session.handle(now, &packet) {
                    debug!(conn = id, error = %e, "control packet dropped");
                }
                c.last_rx = now;
                self.after_session(id);
                return;
            }
        }
        // No state for this peer: only a first reset (answered statelessly) or a packet that
        // acknowledges our cookie creates any.
        match &packet {
            Packet::Control(c)
                if c.opcode == crate::protocol::packet::ControlOpcode::HardResetClientV2 =>
            {
                if let Some(answer) = self.cookies.answer(c, addr, unix_now()) {
                    let bytes = Packet::Control(answer).to_vec();
                    self.send_to(peer, &bytes);
                }
            }
            Packet::Control(c) => {
                if let Some(acks) = &c.acks {
                    self.accept(peer, addr, c.session_id, acks.remote_session_id(), &packet);
                }
            }
            Packet::Ack(a) => {
                self.accept(
                    peer,
                    addr,
                    a.session_id,
                    a.acks.remote_session_id(),
                    &packet,
                );
            }
            Packet::Data(_) => {}
        }
    }

    fn accept(
        &mut self,
        peer: Peer,
        addr: SocketAddr,
        client_sid: crate::protocol::packet::SessionId,
        claimed: crate::protocol::packet::SessionId,
        packet: &Packet<'_>,
    ) {
        if !self.cookies.verify(client_sid, addr, claimed, unix_now()) {
            debug!(%addr, "packet for an unknown session without a valid cookie: dropped");
            return;
        }
        // Handshakes cost a TLS state each: bounded in all and per source address. The
        // client retransmits, so it gets in once others finish.
        if let Err(bound) = self.pending.admit(addr.ip()) {
            debug!(%addr, %bound, "handshake not started: too many pending");
            return;
        }
        let Some(peer_id) = self.peer_ids.allocate() else {
            self.pending.done(addr.ip());
            warn!(%addr, "no free peer id");
            return;
        };
        let now = Instant::now();
        let session =
            match ServerSession::after_reset(self.session_config.clone(), claimed, client_sid, now)
            {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot start a TLS session");
                    self.pending.done(addr.ip());
                    self.peer_ids.release(peer_id);
                    return;
                }
            };
        let id = self.next_conn;
        self.next_conn += 1;
        let mut conn = Conn {
            peer,
            remote_addr: addr,
            handshake_source: addr.ip(),
            session,
            state: ConnState::Handshaking,
            data: Vec::new(),
            tx: None,
            peer_id,
            cipher: None,
            common_name: String::new(),
            serial: String::new(),
            log: crate::connlog::ConnectionInfo::new(
                new_connection_id(),
                self.settings.endpoint_id.clone(),
                self.settings.transport,
                addr,
                SystemTime::now(),
            ),
            last_rx: now,
            keys_at: now,
            rekey_pending: false,
            rekey_failed_at: None,
            push_requested: false,
            forged: 0,
            early: 0,
        };
        if let Err(e) = conn.session.handle(now, packet) {
            debug!(error = %e, "first packet of a session dropped");
        }
        info!(conn = id, %addr, "control channel opened");
        self.conns.insert(id, conn);
        self.by_peer.insert(peer, id);
        self.by_peer_id.insert(peer_id, id);
        self.after_session(id);
    }

    /// Handles session events and sends what the session has to send.
    fn after_session(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let Some(ev) = c.session.poll_event() else {
                break;
            };
            match ev {
                Event::Authenticated {
                    identity,
                    peer_info,
                    tls_version,
                    tls_ekm,
                    ..
                } => {
                    // Certificate authentication only: a user name the client sends in its
                    // key-method record is a claim nothing checked, so it is not the user
                    // (AWS records "NA"); the identity is the certificate's.
                    c.common_name = identity.common_name.clone();
                    c.serial = identity.serial.clone();
                    c.log = c.log.clone().with_common_name(identity.common_name.clone());
                    if let Some(platform) = &peer_info.platform {
                        c.log = c.log.clone().with_device_type(platform.clone());
                    }
                    // The cipher is settled now: the data keys (next event) need it.
                    let cipher_name = match negotiate_cipher(&self.settings.ciphers, &peer_info) {
                        Ok(n) => n.to_string(),
                        Err(e) => {
                            warn!(conn = id, error = %e, "no common data cipher");
                            self.disconnect(id, FailureReason::NO_COMMON_CIPHER);
                            return;
                        }
                    };
                    c.cipher = Cipher::from_openvpn_name(&cipher_name);
                    let admission = Admission {
                        identity,
                        peer_info,
                        tls_version,
                        tls_ekm,
                        cipher_name,
                    };
                    if let Some(handler) = self.settings.live.connect_handler.clone() {
                        let request = crate::connect_handler::ConnectRequest {
                            connection_id: c.log.connection_id.clone(),
                            endpoint_id: self.settings.endpoint_id.clone(),
                            common_name: admission.identity.common_name.clone(),
                            username: "NA".into(),
                            platform: admission
                                .peer_info
                                .platform
                                .clone()
                                .unwrap_or_else(|| "NA".into()),
                            platform_version: admission
                                .peer_info
                                .platform_version
                                .clone()
                                .unwrap_or_else(|| "NA".into()),
                            public_ip: c.remote_addr.ip().to_string(),
                            client_openvpn_version: admission
                                .peer_info
                                .version
                                .clone()
                                .unwrap_or_else(|| "NA".into()),
                            groups: admission.identity.groups.clone(),
                            schema_version: "v2".into(),
                        };
                        c.state = ConnState::Authorizing {
                            admission,
                            authenticated_at: Instant::now(),
                        };
                        let answers = self.handler_tx.clone();
                        debug!(conn = id, "asking the client connect handler");
                        tokio::spawn(async move {
                            let answer = handler.call(&request).await;
                            let _ = answers.send((id, answer));
                        });
                        continue;
                    }
                    if !self.admit(id, admission, Instant::now()) {
                        return;
                    }
                }
                Event::KeysReady { key_id, material } => {
                    let cipher = c.cipher.unwrap_or(Cipher::Aes256Gcm);
                    match DataChannel::from_ekm(
                        &material,
                        cipher,
                        Role::Server,
                        key_id.get(),
                        c.peer_id,
                    ) {
                        Ok(dc) => {
                            c.keys_at = Instant::now();
                            c.rekey_pending = false;
                            c.rekey_failed_at = None;
                            let (sealer, opener) = dc.split();
                            c.data.retain(|d| d.key_id() != key_id.get());
                            c.data.push(opener);
                            if c.data.len() > 2 {
                                c.data.remove(0);
                            }
                            // The newest key seals from now on.
                            match &c.tx {
                                Some(tx) => lock(tx).sealer = sealer,
                                None => {
                                    let tx = Arc::new(Mutex::new(TxSession {
                                        peer: c.peer,
                                        sealer,
                                        last_tx: Instant::now(),
                                    }));
                                    if let Some(ip) = c.state.client_ip() {
                                        write_lock(&self.tx.sessions).insert(ip, tx.clone());
                                    }
                                    c.tx = Some(tx);
                                }
                            }
                            if key_id.get() != 0 {
                                info!(conn = id, key_id = key_id.get(), "renegotiated");
                            }
                        }
                        Err(e) => warn!(conn = id, error = %e, "data channel keys"),
                    }
                }
                Event::RenegotiationFailed { key_id, reason } => {
                    c.rekey_pending = false;
                    c.rekey_failed_at.get_or_insert_with(Instant::now);
                    warn!(conn = id, key_id = key_id.get(), %reason, grace = ?RENEGOTIATION_GRACE,
                        "renegotiation failed; the session ends unless a new key is in place within the grace");
                }
                Event::Control(text) => {
                    if text.starts_with("PUSH_REQUEST") {
                        self.push(id);
                    } else if text.starts_with("EXIT") {
                        self.disconnect(id, "client-exit");
                        return;
                    } else {
                        debug!(conn = id, %text, "control message ignored");
                    }
                }
                Event::Refused { reason } => {
                    warn!(conn = id, %reason, addr = %c.remote_addr, "handshake refused");
                    let entry = crate::connlog::ConnectionLogEntry::attempt_failed(
                        reason.as_str(),
                        &c.log,
                        SystemTime::now(),
                    );
                    log_connection(&self.logs, self.settings.print_log_lines, &entry);
                    self.flush(id);
                    self.remove(id);
                    return;
                }
                Event::Flood { reason } => {
                    warn!(conn = id, addr = %c.remote_addr, common_name = %c.common_name, %reason,
                        "control channel flood: session ended");
                    self.disconnect(id, FailureReason::CONTROL_CHANNEL_FLOOD);
                    return;
                }
                Event::Gone => {
                    self.disconnect(id, FailureReason::PEER_GONE);
                    return;
                }
            }
        }
        self.flush(id);
    }

    /// Gives an authenticated (and, with a connect handler, allowed) client its address, its
    /// data-plane session and its configuration. False when the connection is gone.
    fn admit(&mut self, id: u64, a: Admission, authenticated_at: Instant) -> bool {
        let Some(addr) = self.pool.allocate() else {
            warn!(conn = id, "client address pool exhausted");
            self.refuse(
                id,
                FailureReason::new(FailureReason::ADDRESS_POOL_EXHAUSTED),
                None,
            );
            return false;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            self.pool.release(addr);
            return false;
        };
        if let Err(e) = self.dataplane.add_session(addr, id, &a.identity.groups) {
            warn!(conn = id, error = %e, "data plane refused the session");
            self.pool.release(addr);
            self.disconnect(id, FailureReason::INTERNAL_ERROR);
            return false;
        }
        // Data keys may already be in place (they come while the connect handler decides).
        if let Some(tx) = &c.tx {
            write_lock(&self.tx.sessions).insert(addr, tx.clone());
        }
        c.log = c.log.clone().with_client_ip(addr);
        if let Some(r) = &self.settings.recorder {
            r.started(
                &c.log.connection_id,
                crate::storage::NewConnection {
                    client_vpn_endpoint_id: self.settings.endpoint_id.clone(),
                    client_ip: addr,
                    common_name: a.identity.common_name.clone(),
                    username: None,
                    device_ip: c.remote_addr.ip(),
                    device_port: c.remote_addr.port(),
                    transport_protocol: self.settings.transport,
                },
            );
        }
        log_connection(
            &self.logs,
            self.settings.print_log_lines,
            &crate::connlog::ConnectionLogEntry::attempt_succeeded(&c.log),
        );
        let reply = PushReply {
            tunnel: if self.settings.split_tunnel {
                Tunnel::Split(
                    self.dataplane
                        .policy()
                        .routes
                        .iter()
                        .map(|r| r.destination)
                        .collect(),
                )
            } else {
                Tunnel::Full
            },
            dns_servers: self.settings.dns_servers.clone(),
            ping: Some(self.settings.ping),
            ping_restart: Some(self.settings.ping_restart),
            peer_id: Some(c.peer_id),
            cipher: Some(a.cipher_name.clone()),
            key_signalling: KeySignalling::for_client(a.peer_info.proto, a.tls_ekm),
            tun_mtu: Some(1500),
            ..PushReply::new(addr, self.pool.netmask(), self.pool.gateway_addr())
        };
        self.pending.done(c.handshake_source);
        if let Peer::Tcp(tcp) = c.peer {
            self.tx.tcp.admitted(tcp);
        }
        c.state = ConnState::Admitted {
            client_ip: addr,
            authenticated_at,
            push_messages: reply.to_messages(1024).unwrap_or_default(),
        };
        info!(
            conn = id,
            common_name = %a.identity.common_name,
            groups = ?a.identity.groups,
            client_ip = %addr,
            cipher = %a.cipher_name,
            tls = %a.tls_version,
            version = a.peer_info.version.as_deref().unwrap_or("?"),
            "client authenticated"
        );
        // Clients that announce IV_PROTO "request push" send no PUSH_REQUEST.
        if a.peer_info.proto.request_push() || c.push_requested {
            self.push(id);
        }
        true
    }

    /// The connect handler answered for connection `id`.
    fn on_handler_answer(
        &mut self,
        id: u64,
        answer: Result<
            crate::connect_handler::ConnectResponse,
            crate::connect_handler::HandlerError,
        >,
    ) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let (admission, authenticated_at) =
            match std::mem::replace(&mut c.state, ConnState::Handshaking) {
                ConnState::Authorizing {
                    admission,
                    authenticated_at,
                } => (admission, authenticated_at),
                other => {
                    // Not waiting for an answer (a stale one): nothing changes.
                    c.state = other;
                    return;
                }
            };
        match answer {
            Ok(r) if r.allow => {
                c.log.posture_compliance_statuses = r.posture_compliance_statuses;
                if self.admit(id, admission, authenticated_at) {
                    self.flush(id);
                }
            }
            Ok(r) => {
                info!(conn = id, common_name = %admission.identity.common_name, "the client connect handler denied the connection");
                let message = r
                    .error_msg_on_denied_connection
                    .filter(|m| !m.trim().is_empty());
                let reason = match &message {
                    Some(m) => {
                        FailureReason::with_detail(FailureReason::CLIENT_CONNECT_FAILED, m.clone())
                    }
                    None => FailureReason::new(FailureReason::CLIENT_CONNECT_FAILED),
                };
                c.log.posture_compliance_statuses = r.posture_compliance_statuses;
                self.refuse(id, reason, message);
            }
            Err(e) => {
                warn!(conn = id, error = %e, "client connect handler failed: connection refused (fails closed)");
                self.refuse(id, e.reason(), None);
            }
        }
    }

    /// Refuses an authenticated client: AUTH_FAILED (with `message` for the user; the client
    /// stops rather than retrying), a failed attempt in the connection log, state dropped.
    fn refuse(&mut self, id: u64, reason: crate::connlog::FailureReason, message: Option<String>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let text: String = message
            .unwrap_or_default()
            .chars()
            .map(|ch| if ch.is_control() { ' ' } else { ch })
            .take(crate::connect_handler::MAX_DENIAL_MESSAGE)
            .collect();
        c.session.send_control(&if text.is_empty() {
            "AUTH_FAILED".to_string()
        } else {
            format!("AUTH_FAILED,{text}")
        });
        let entry =
            crate::connlog::ConnectionLogEntry::attempt_failed(reason, &c.log, SystemTime::now());
        log_connection(&self.logs, self.settings.print_log_lines, &entry);
        self.flush(id);
        self.remove(id);
    }

    fn push(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let ConnState::Admitted { push_messages, .. } = &c.state else {
            // Not admitted yet (the connect handler decides): answer when it is.
            c.push_requested = true;
            return;
        };
        for m in push_messages {
            c.session.send_control(m);
        }
    }

    fn flush(&mut self, id: u64) {
        let now = Instant::now();
        let mut out = Vec::new();
        let peer = {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            while let Some(p) = c.session.poll_transmit(now) {
                out.push(p);
            }
            c.peer
        };
        for p in out {
            self.send_to(peer, &p);
        }
    }

    fn on_data(&mut self, peer: Peer, buf: &mut [u8]) {
        if buf.len() < 4 {
            return;
        }
        let peer_id = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]);
        let Some(&id) = self.by_peer_id.get(&peer_id) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let key_id = buf[0] & 0x07;
        let Some(dc) = c.data.iter_mut().find(|d| d.key_id() == key_id) else {
            return;
        };
        let plain = match dc.open_in_place(buf) {
            Ok(p) => p,
            Err(e) => {
                debug!(conn = id, error = %e, "data packet dropped");
                return;
            }
        };
        c.last_rx = Instant::now();
        // Nothing from a client that is not admitted reaches the TUN: it has no address yet
        // (the connect handler decides), so any source it writes would be someone else's.
        let Some(client_ip) = c.state.client_ip() else {
            c.early += 1;
            if c.early == 1 {
                warn!(
                    conn = id,
                    "data packet before the client was admitted: dropped"
                );
            }
            return;
        };
        // The client moved (NAT rebinding, roaming): same peer id, authenticated packet. Not
        // onto an address another connection holds (a spoofed source must not take it over).
        let taken = self.by_peer.get(&peer).is_some_and(|&other| other != id);
        if c.peer != peer && !taken {
            if let Peer::Udp(addr) = peer {
                info!(conn = id, from = %c.remote_addr, to = %addr, "client address changed");
                self.by_peer.remove(&c.peer);
                c.peer = peer;
                c.remote_addr = addr;
                if let Some(tx) = &c.tx {
                    lock(tx).peer = peer;
                }
                self.by_peer.insert(peer, id);
            }
        }
        use crate::datachannel::inner::{classify, Inner, InnerDrop};
        match classify(plain, client_ip) {
            Inner::Forward => {
                if let Err(e) = self.tun.get_ref().send(plain) {
                    debug!(error = %e, "TUN write");
                }
            }
            Inner::Keepalive | Inner::Drop(InnerDrop::Ipv6) => {}
            Inner::Drop(InnerDrop::Malformed) => {
                debug!(conn = id, "malformed inner packet dropped")
            }
            Inner::Drop(InnerDrop::ForgedSource(source)) => {
                c.forged += 1;
                // The first of a connection is logged; the total at its end.
                if c.forged == 1 {
                    warn!(conn = id, common_name = %c.common_name, %client_ip, forged_source = %source,
                        "packet with a source address that is not the client's: dropped");
                }
            }
        }
    }

    fn on_command(&mut self, cmd: ServerCommand) {
        match cmd {
            ServerCommand::ReplacePolicy(policy) => self.replace_policy(policy),
            ServerCommand::LiveSettings(live) => {
                info!(?live, "live settings changed");
                self.settings.live = live;
            }
            ServerCommand::ReplaceNetwork { targets, policy } => {
                // Removed networks first, so an interface can move to a new association.
                let gone: Vec<u32> = self
                    .settings
                    .targets
                    .iter()
                    .filter(|t| !targets.iter().any(|n| n.id == t.id))
                    .map(|t| t.id)
                    .collect();
                // The policy without the removed targets' routes goes in before they leave.
                let mut interim = self.dataplane.policy().clone();
                interim.routes.retain(|r| !gone.contains(&r.target));
                if let Err(e) = self.dataplane.replace_policy(interim) {
                    warn!(error = %e, "routes of removed target networks not withdrawn");
                }
                for id in &gone {
                    if let Err(e) = self.dataplane.remove_target_network(*id) {
                        warn!(target = id, error = %e, "target network not removed from the data plane");
                    }
                }
                self.settings.targets.retain(|t| !gone.contains(&t.id));
                for t in targets {
                    if self.settings.targets.iter().any(|o| o.id == t.id) {
                        continue;
                    }
                    if let Err(e) = check_target_overlap(self.settings.client_cidr, &t) {
                        warn!(interface = %t.interface, error = %e, "target network not added");
                        continue;
                    }
                    match self.dataplane.add_target_network(t.clone()) {
                        Ok(addr) => {
                            info!(interface = %t.interface, snat = %addr, "target network added");
                            self.settings.targets.push(t);
                        }
                        Err(e) => {
                            warn!(interface = %t.interface, error = %e, "target network not added")
                        }
                    }
                }
                self.replace_policy(policy);
            }
            ServerCommand::ReplaceTls {
                tls,
                revoked_serials,
            } => {
                match tls.server_config() {
                    Ok(config) => {
                        self.session_config = Arc::new(SessionConfig {
                            force_tls_prf: self.settings.force_tls_prf,
                            ..SessionConfig::new(config)
                        });
                        self.settings.tls = tls;
                        // Running sessions' renegotiations are checked against it too.
                        for c in self.conns.values_mut() {
                            c.session.set_config(self.session_config.clone());
                        }
                        info!("TLS material replaced for new handshakes");
                    }
                    Err(e) => warn!(error = %e, "new TLS material refused; the previous one stays"),
                }
                let revoked: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        !c.serial.is_empty()
                            && revoked_serials
                                .iter()
                                .any(|s| s.eq_ignore_ascii_case(&c.serial))
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in revoked {
                    self.halt(id, "certificate-revoked");
                }
            }
            ServerCommand::Terminate {
                connection_ids,
                usernames,
            } => {
                let ids: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        connection_ids.contains(&c.log.connection_id)
                            || c.log
                                .username
                                .as_ref()
                                .is_some_and(|u| usernames.contains(u))
                            || usernames.contains(&c.common_name)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for cid in &connection_ids {
                    if !ids.iter().any(|id| {
                        self.conns
                            .get(id)
                            .is_some_and(|c| &c.log.connection_id == cid)
                    }) {
                        if let Some(r) = &self.settings.recorder {
                            r.ended(cid, Default::default());
                        }
                    }
                }
                for id in ids {
                    self.halt(id, "terminated");
                }
            }
        }
    }

    /// Tells the client to exit (HALT), then forgets it: its packets are dropped from now on.
    fn halt(&mut self, id: u64, reason: &str) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.session.send_control("HALT");
        }
        self.flush(id);
        self.disconnect(id, reason);
    }

    fn replace_policy(&mut self, policy: Policy) {
        let started = Instant::now();
        match self
            .dataplane
            .replace_policy(with_connected_routes(policy, &self.settings.targets))
        {
            Ok(()) => info!(took = ?started.elapsed(), "policy replaced; running sessions kept"),
            Err(e) => warn!(error = %e, "policy not replaced; the previous one stays in force"),
        }
    }

    /// Reports running connections' counters to the recorder.
    fn report_counters(&mut self) {
        let Some(recorder) = &self.settings.recorder else {
            return;
        };
        let batch: Vec<_> = self
            .conns
            .values()
            .filter_map(|c| {
                let ip = c.state.client_ip()?;
                let counters = self.dataplane.session_counters(ip).ok().flatten()?;
                Some((c.log.connection_id.clone(), counters))
            })
            .collect();
        if !batch.is_empty() {
            recorder.counters(batch);
        }
    }

    /// Data-plane flow events (denied, no route, ...) into the flow log, with the session's
    /// connection id and username.
    fn on_flow_events(&mut self) {
        let Some(f) = self.flow_events.as_mut() else {
            return;
        };
        let events = f.get_mut().drain();
        let Some(logs) = &self.logs else { return };
        for ev in events {
            let conn = self.conns.get(&ev.session_id);
            let entry = crate::connlog::FlowLogEntry::from_event(
                &self.settings.endpoint_id,
                &ev,
                conn.map(|c| c.log.connection_id.as_str()),
                conn.and_then(|c| c.log.username.as_deref()),
            );
            if let Err(e) = logs.flow(&entry) {
                warn!(error = %e, "flow log");
            }
            if self.settings.print_log_lines {
                println!("{}", entry.to_json_line());
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.counters_at) >= self.settings.counters_every {
            self.counters_at = now;
            self.report_counters();
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.after_session(id);
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.session.is_established()
                && now.duration_since(c.last_rx)
                    > Duration::from_secs(self.settings.ping_restart as u64 * 2)
            {
                self.disconnect(id, "keepalive-timeout");
                continue;
            }
            if c.rekey_failed_at
                .is_some_and(|at| now.duration_since(at) >= RENEGOTIATION_GRACE)
            {
                self.halt(id, FailureReason::RENEGOTIATION_FAILED);
                continue;
            }
            let expired = match (
                self.settings.live.session_timeout,
                c.state.authenticated_at(),
            ) {
                (Some(limit), Some(at)) => now.duration_since(at) >= limit,
                _ => false,
            };
            if expired {
                if self.settings.live.disconnect_on_session_timeout {
                    self.halt(id, "session-timeout");
                } else {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.session.send_control("RESTART");
                    }
                    self.flush(id);
                    self.disconnect(id, "session-timeout");
                }
                continue;
            }
            // Renegotiate from our side: keys old enough, or packet ids running out.
            let exhausted = c.data.last().is_some_and(|d| d.needs_renegotiation())
                || c.tx
                    .as_ref()
                    .is_some_and(|t| lock(t).sealer.needs_renegotiation());
            let aged = self
                .settings
                .reneg_after
                .is_some_and(|a| now.duration_since(c.keys_at) > a);
            if (exhausted || aged)
                && !c.rekey_pending
                && !c.data.is_empty()
                && c.session.active_key().is_some()
            {
                match c.session.start_renegotiation(now) {
                    Ok(k) => {
                        c.rekey_pending = true;
                        let why = if exhausted {
                            "packet ids running out"
                        } else {
                            "key lifetime reached"
                        };
                        info!(
                            conn = id,
                            key_id = k.get(),
                            reason = why,
                            "starting renegotiation"
                        );
                    }
                    Err(e) => warn!(conn = id, error = %e, "cannot start renegotiation"),
                }
            }
        }
    }

    /// Ends a connection. One that was admitted gets its end (with counters) in the
    /// connection log; one that never got in gets a failed attempt with `reason`.
    fn disconnect(&mut self, id: u64, reason: &str) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        info!(conn = id, common_name = %c.common_name, %reason, forged = c.forged, early = c.early, "disconnect");
        if c.state.client_ip().is_none() {
            let entry = crate::connlog::ConnectionLogEntry::attempt_failed(
                reason,
                &c.log,
                SystemTime::now(),
            );
            log_connection(&self.logs, self.settings.print_log_lines, &entry);
        }
        self.remove(id);
    }

    /// Forgets a connection: its peer and peer id, and for an admitted one its session in the
    /// data plane and its address (in that order: the address is free only once the kernel
    /// has no state of it), with the end in the connection log.
    fn remove(&mut self, id: u64) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        if self.by_peer.get(&c.peer) == Some(&id) {
            self.by_peer.remove(&c.peer);
        }
        self.by_peer_id.remove(&c.peer_id);
        self.peer_ids.release(c.peer_id);
        // A TCP session's socket closes with it.
        if let Peer::Tcp(tcp) = c.peer {
            self.tx.tcp.close(tcp);
        }
        if c.state.client_ip().is_none() {
            self.pending.done(c.handshake_source);
        }
        if let Some(addr) = c.state.client_ip() {
            write_lock(&self.tx.sessions).remove(&addr);
            let counters = self.dataplane.remove_session(addr).ok().flatten();
            self.pool.release(addr);
            info!(conn = id, client_ip = %addr, ?counters, "session ended");
            if let Some(r) = &self.settings.recorder {
                r.ended(&c.log.connection_id, counters.unwrap_or_default());
            }
            let counters: crate::connlog::TrafficCounters = counters.unwrap_or_default().into();
            let entry =
                crate::connlog::ConnectionLogEntry::reset(&c.log, &counters, SystemTime::now());
            log_connection(&self.logs, self.settings.print_log_lines, &entry);
        }
    }
}

/// Writes a connection-log entry; `print` also puts it on stdout (an endpoint that asks for
/// that when the daemon's shared log does not).
fn log_connection(
    logs: &Option<Arc<crate::connlog::ConnectionLogs>>,
    print: bool,
    entry: &crate::connlog::ConnectionLogEntry,
) {
    if let Some(logs) = logs {
        if let Err(e) = logs.connection(entry) {
            warn!(error = %e, "connection log");
        }
    }
    if print {
        println!("{}", entry.to_json_line());
    }
}

/// Adds a route to each target network's own subnet unless the policy routes it already.
fn with_connected_routes(mut policy: Policy, targets: &[TargetSpec]) -> Policy {
    for t in targets {
        if let Some(net) = crate::dataplane::interface_ipv4_network(&t.interface) {
            if !policy.routes.iter().any(|r| r.destination == net) {
                policy.routes.push(crate::dataplane::policy::Route {
                    destination: net,
                    target: t.id,
                });
            }
        }
    }
    policy
}

/// A target network's subnet must not overlap the client CIDR.
fn check_target_overlap(client_cidr: Ipv4Net, t: &TargetSpec) -> Result<()> {
    if let Some(net) = crate::dataplane::interface_ipv4_network(&t.interface) {
        if net.contains(&client_cidr.network()) || client_cidr.contains(&net.network()) {
            bail!(
                "client_cidr {} overlaps target network {} ({}): choose a client CIDR outside every target network",
                client_cidr,
                t.interface,
                net
            );
        }
    }
    Ok(())
}

/// A connection id in AWS's form: `cvpn-connection-` and 17 hex digits.
fn new_connection_id() -> String {
    use crate::model::ids::{new_id, CONNECTION_ID_PREFIX, ID_HEX_DIGITS};
    // Without system randomness the digits stay zero, as they always did here.
    new_id(CONNECTION_ID_PREFIX)
        .unwrap_or_else(|_| format!("{CONNECTION_ID_PREFIX}{}", "0".repeat(ID_HEX_DIGITS)))
}

/// Lets the kernel fragment datagrams larger than the path MTU (IP_PMTUDISC_DONT).
fn allow_fragmentation(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let (level, opt, val) = match sock.local_addr() {
        Ok(SocketAddr::V6(_)) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        ),
        _ => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        ),
    };
    // SAFETY: setsockopt on our own socket with a c_int value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        warn!(error = %io::Error::last_os_error(), "cannot allow IP fragmentation on the UDP socket");
    }
}

/// The listen address as a socket address.
pub fn listen_addr(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}
