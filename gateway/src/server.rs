//! The endpoint daemon's I/O: sockets, the TUN device, the kernel data plane, timers. It only
//! moves bytes and drives deadlines for the sans-IO [`crate::endpoint::Endpoint`] (which decides
//! everything about connections) and [`crate::endpoint::datapath::DataPath`] (which opens data
//! packets), and applies their outputs in order.
//!
//! One event loop: UDP datagrams and TCP packets in (data packets to the data path, the rest to
//! the endpoint), commands and connect-handler answers in, the endpoint's next deadline, a
//! one-second housekeeping tick that touches no connection. Decrypted client packets go into
//! the TUN (with offloads, a receive batch's TCP segments of one flow as one super-packet,
//! `datachannel::offload::Coalescer`), where `client_ingress` takes them; return traffic comes
//! out of the TUN and is encrypted and sent by a second thread (`io::tx::TunReader`).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
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
    auth::{service::Authenticator, AuthRequest},
    datachannel::offload::{Coalescer, VNET_HDR_LEN},
    dataplane::{policy::Policy, DataPlane, DataPlaneConfig, TargetSpec},
    endpoint::{
        datapath::{DataPath, Opened},
        Clock, Command as EndpointCommand, ConnId, Endpoint, EndpointConfig, Output, Peer,
    },
    io::{
        tcp::{TcpEvent, TcpLimits},
        tx::{lock, read_lock, write_lock, write_tun, TunReader, TxSession, TxShared},
    },
    protocol::{
        packet::{Header, Opcode},
        session::SessionConfig,
        tls::TlsMaterial,
    },
    tun::{Kind, Tun},
};

/// OpenVPN's keepalive ping: a data-channel packet with this payload.
pub use crate::datachannel::inner::PING_MAGIC;

/// Transport of an endpoint.
pub use crate::model::TransportProtocol as Transport;

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
    /// Runs the directory checks of `live.directory` (changeable while running).
    pub authenticator: Option<Arc<Authenticator>>,
    /// Runs the web sign-ins and single sign-on sessions of `live.sso` (changeable while
    /// running).
    pub sso: Option<SsoLink>,
    /// SNAT ports of this endpoint; `None`: the data plane's default range. Endpoints of one
    /// daemon that share a target interface need disjoint ranges ([`snat_slice`]).
    pub nat_port_range: Option<(u16, u16)>,
    /// Client addresses from claimed blocks of the client CIDR (several nodes serve the
    /// endpoint); `None`: from all of it.
    pub address_blocks: Option<AddressBlocks>,
    /// Where this endpoint counts its metrics (`crate::metrics`); none: not counted.
    pub metrics: Option<Arc<crate::metrics::EndpointMetrics>>,
    /// TUN offloads: TCP super-packets read from the TUN are cut in userspace, and a receive
    /// batch's segments of one flow go into it as one super-packet (`datachannel::offload`).
    pub offloads: bool,
}

/// The blocks of the client CIDR a node has claimed for an endpoint, and where it asks for
/// more (the answer comes back as [`ServerCommand::AddAddressBlock`]).
#[derive(Clone, Debug)]
pub struct AddressBlocks {
    pub claimed: Vec<Ipv4Net>,
    /// Receives the endpoint id when its pool runs low.
    pub ask_more: tokio::sync::mpsc::UnboundedSender<String>,
}

/// An endpoint's single sign-on: the web listener's sign-ins and sessions, and the endpoint's
/// identity provider.
#[derive(Clone, Debug)]
pub struct SsoLink {
    pub service: Arc<crate::web::SsoService>,
    pub idp: Arc<crate::web::SsoIdp>,
    /// Shown on the approval page.
    pub endpoint_name: String,
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
    let (min, max) = (
        u32::from(DEFAULT_NAT_PORT_MIN),
        u32::from(DEFAULT_NAT_PORT_MAX),
    );
    let size = (max - min + 1) / 4;
    let lo = min + slot * size;
    let hi = if slot == 3 { max } else { lo + size - 1 };
    (lo as u16, hi as u16)
}

/// The settings a running endpoint takes without a restart ([`ServerCommand::LiveSettings`]).
pub use crate::endpoint::LiveSettings;

/// What the server tells the control plane about connections. Calls come from the event loop,
/// so implementations queue the work (see `control::recorder`) rather than block.
pub trait ConnectionRecorder: Send + Sync + std::fmt::Debug {
    /// A client authenticated and got `connection.client_ip`.
    fn started(&self, connection_id: &str, connection: crate::model::NewConnection);
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
    /// A new authenticator for the endpoint's directory (settings changed, a user enrolled for
    /// MFA); `None`: no directory.
    Authenticator(Option<Arc<Authenticator>>),
    /// A new identity provider link (settings changed); `None`: no single sign-on.
    Sso(Option<SsoLink>),
    /// Another claimed block of the client CIDR for the address pool (asked for through
    /// [`AddressBlocks::ask_more`]); `None`: none could be claimed, so the clients waiting for
    /// an address are refused.
    AddAddressBlock(Option<Ipv4Net>),
    /// The blocks this node holds now (after it rejoined the database): the others leave the
    /// pool and their clients reconnect.
    KeepAddressBlocks(Vec<Ipv4Net>),
}

/// The directory's answer for a connection.
type AuthAnswer = (
    ConnId,
    Result<crate::auth::DirectoryUser, crate::auth::AuthFailure>,
);

/// The connect handler's answer for a connection.
type HandlerAnswer = (
    ConnId,
    Result<crate::connect_handler::ConnectResponse, crate::connect_handler::HandlerError>,
);

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

/// How often the driver's own housekeeping runs (counters to the recorder, NAT expiry, TCP
/// deadlines). It touches no connection of the endpoint.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// NAT entries are expired this often.
const NAT_EXPIRY_EVERY: Duration = Duration::from_secs(10);

/// One endpoint's I/O: sockets, the TUN device, the kernel data plane, and the sans-IO
/// [`Endpoint`] and [`DataPath`] it drives.
pub struct Server {
    settings: ServerSettings,
    endpoint: Endpoint,
    datapath: DataPath,
    dataplane: DataPlane,
    /// Sending halves of connections not admitted yet (their keys come before their address).
    unadmitted_tx: HashMap<ConnId, Arc<Mutex<TxSession>>>,
    /// What the TUN reader thread shares with the event loop: sockets and sending halves.
    tx: TxShared,
    tun: Arc<AsyncFd<Tun>>,
    /// Joins a receive batch's TCP segments of one flow before they go into the TUN.
    coalescer: Coalescer,
    logs: Option<Arc<crate::connlog::ConnectionLogs>>,
    /// When counters were last reported to the recorder and NAT entries last expired.
    counters_at: Instant,
    nat_expired_at: Instant,
    /// Connect handler answers come back here.
    handler_tx: mpsc::UnboundedSender<HandlerAnswer>,
    handler_rx: Option<mpsc::UnboundedReceiver<HandlerAnswer>>,
    /// Directory answers come back here.
    auth_tx: mpsc::UnboundedSender<AuthAnswer>,
    auth_rx: Option<mpsc::UnboundedReceiver<AuthAnswer>>,
    flow_events: Option<AsyncFd<crate::dataplane::FlowEvents>>,
}

impl Server {
    /// Opens the TUN, loads the data plane, and binds the listener's socket.
    pub fn new(settings: ServerSettings) -> Result<Self> {
        let tls = settings.tls.server_config().context("TLS configuration")?;
        let session_config = Arc::new(SessionConfig {
            force_tls_prf: settings.force_tls_prf,
            require_client_certificate: settings.tls.requires_client_certificate(),
            ..SessionConfig::new(tls)
        });
        let mut endpoint = Endpoint::new(
            EndpointConfig {
                endpoint_id: settings.endpoint_id.clone(),
                transport: settings.transport,
                client_cidr: settings.client_cidr,
                split_tunnel: settings.split_tunnel,
                dns_servers: settings.dns_servers.clone(),
                ciphers: settings.ciphers.clone(),
                ping: settings.ping,
                ping_restart: settings.ping_restart,
                reneg_after: settings.reneg_after,
                live: settings.live.clone(),
            },
            session_config,
            Endpoint::random_cookies()?,
            Instant::now(),
        )?;
        if let Some(blocks) = &settings.address_blocks {
            endpoint
                .use_address_blocks(&blocks.claimed)
                .context("the claimed address blocks")?;
        }

        let tun = Tun::open_full(
            &settings.tun_name,
            Kind::Tun,
            false,
            true,
            settings.offloads,
        )
        .with_context(|| format!("creating TUN device {}", settings.tun_name))?;
        let gw = format!(
            "{}/{}",
            endpoint.gateway_addr(),
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
        endpoint.handle_command(
            Clock::system(),
            EndpointCommand::SetRoutes(pushed_routes(&dataplane)),
        );

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
        let (auth_tx, auth_rx) = mpsc::unbounded_channel();
        Ok(Server {
            auth_tx,
            auth_rx: Some(auth_rx),
            logs,
            counters_at: Instant::now(),
            nat_expired_at: Instant::now(),
            handler_tx,
            handler_rx: Some(handler_rx),
            flow_events,
            endpoint,
            datapath: DataPath::new(),
            coalescer: Coalescer::new(),
            dataplane,
            unadmitted_tx: HashMap::new(),
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
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        // Receive batches: up to RECV_BATCH datagrams (each possibly GRO-coalesced) per call.
        let mut rx_bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; 65536]).collect();
        let mut rx_meta = vec![quinn_udp::RecvMeta::default(); RECV_BATCH];
        // The TUN side (read, encrypt, send) runs on a thread of its own.
        let mut handler_rx = self
            .handler_rx
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        let mut auth_rx = self
            .auth_rx
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
        // The endpoint's next deadline: recomputed after every input it takes (data packets
        // only move keepalive deadlines later, so an early wake-up finds nothing to do).
        let mut deadline = self.endpoint.poll_timeout();
        loop {
            let udp = self.tx.udp.clone();
            // At least a millisecond ahead: a deadline that does not move cannot spin the loop.
            let wake = deadline.map(|d| d.max(Instant::now() + Duration::from_millis(1)));
            tokio::select! {
                _ = &mut shutdown => break,
                r = async { match &udp { Some(s) => s.readable().await, None => std::future::pending().await } } => {
                    if r.is_ok() {
                        if let Some(sock) = &udp {
                            let mut control = false;
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
                                                control |= self.on_packet(Peer::Udp(meta.addr), meta.addr, dgram);
                                            }
                                        }
                                    }
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                    Err(e) => { warn!(error = %e, "UDP receive"); break; }
                                }
                                self.flush_tun();
                            }
                            if control {
                                self.drain();
                                deadline = self.endpoint.poll_timeout();
                            }
                        }
                    }
                }
                Some(ev) = tcp_rx.recv() => {
                    match ev {
                        TcpEvent::Packet(id, addr, mut packet) => {
                            self.on_packet(Peer::Tcp(id), addr, &mut packet);
                            self.flush_tun();
                        }
                        TcpEvent::Closed(id) => {
                            self.tx.tcp.close(id);
                            self.endpoint.handle_tcp_closed(Clock::system(), id);
                        }
                    }
                    self.drain();
                    deadline = self.endpoint.poll_timeout();
                }
                r = async { match &self.flow_events { Some(f) => f.readable().await.map(|mut g| g.clear_ready()), None => std::future::pending().await } } => {
                    if r.is_ok() {
                        self.on_flow_events();
                    }
                }
                Some(cmd) = commands.recv() => {
                    self.on_command(cmd);
                    self.drain();
                    deadline = self.endpoint.poll_timeout();
                }
                Some((id, answer)) = handler_rx.recv() => {
                    self.endpoint.handle_connect_answer(Clock::system(), id, answer);
                    self.drain();
                    deadline = self.endpoint.poll_timeout();
                }
                Some((id, answer)) = auth_rx.recv() => {
                    self.endpoint.handle_auth_answer(Clock::system(), id, answer);
                    self.drain();
                    deadline = self.endpoint.poll_timeout();
                }
                _ = async { match wake { Some(w) => tokio::time::sleep_until(w.into()).await, None => std::future::pending().await } } => {
                    self.endpoint.handle_timeout(Clock::system());
                    self.drain();
                    deadline = self.endpoint.poll_timeout();
                }
                _ = housekeeping.tick() => {
                    self.housekeeping(tcp_limits);
                    self.drain();
                    deadline = self.endpoint.poll_timeout();
                }
            }
        }
        if let Some(acceptor) = &tcp_listener {
            acceptor.abort();
        }
        self.endpoint.shutdown(Clock::system());
        self.drain();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Each session's end goes to the connection log and the recorder.
        self.endpoint.close_all(Clock::system());
        self.drain();
        reader.stop();
        Ok(())
    }

    /// One packet from a peer: data packets to the data path, the rest to the endpoint. True
    /// when the endpoint took it (its outputs want draining).
    fn on_packet(&mut self, peer: Peer, addr: SocketAddr, buf: &mut [u8]) -> bool {
        let Ok(header) = Header::peek(buf) else {
            return false;
        };
        match header.opcode {
            Opcode::DataV2 => {
                self.on_data(peer, buf);
                false
            }
            Opcode::DataV1 => false,
            _ => {
                self.endpoint
                    .handle_packet(Clock::system(), peer, addr, buf);
                true
            }
        }
    }

    fn on_data(&mut self, peer: Peer, buf: &mut [u8]) {
        let peer_id = match buf {
            [_, a, b, c, ..] => u32::from_be_bytes([0, *a, *b, *c]),
            _ => return,
        };
        let Opened::Accepted {
            conn,
            moved,
            forward,
        } = self.datapath.open(Instant::now(), peer, buf)
        else {
            return;
        };
        if moved && self.endpoint.handle_float(conn, peer) {
            if let Some(ip) = self.datapath.set_peer(peer_id, peer) {
                if let Some(tx) = read_lock(&self.tx.sessions).get(&ip) {
                    lock(tx).peer = peer;
                }
            }
        }
        if let Some(packet) = forward {
            let tun = self.tun.get_ref();
            if tun.offloads() {
                self.coalescer
                    .push(packet, &mut |h, p| write_tun(tun, h, p));
            } else {
                write_tun(tun, &[0; VNET_HDR_LEN], packet);
            }
        }
    }

    /// Writes what the coalescer holds (the end of a receive batch).
    fn flush_tun(&mut self) {
        let tun = self.tun.get_ref();
        self.coalescer.flush(&mut |h, p| write_tun(tun, h, p));
    }

    /// Applies the endpoint's outputs, in order.
    fn drain(&mut self) {
        while let Some(out) = self.endpoint.poll_output() {
            match out {
                Output::Transmit { peer, packet } => self.tx.send_to(peer, &packet),
                Output::Keys {
                    conn,
                    peer_id,
                    peer,
                    opener,
                    sealer,
                    activity,
                } => {
                    self.datapath
                        .install_keys(conn, peer_id, peer, *opener, activity.clone());
                    // The newest key seals from now on (by client address once admitted).
                    let client_ip = self.datapath.client_ip(peer_id);
                    let existing = client_ip
                        .and_then(|ip| read_lock(&self.tx.sessions).get(&ip).cloned())
                        .or_else(|| self.unadmitted_tx.get(&conn).cloned());
                    match existing {
                        Some(tx) => lock(&tx).sealer = *sealer,
                        None => {
                            let tx = Arc::new(Mutex::new(TxSession {
                                peer,
                                sealer: *sealer,
                                last_tx: Instant::now(),
                                activity,
                            }));
                            match client_ip {
                                Some(ip) => {
                                    write_lock(&self.tx.sessions).insert(ip, tx);
                                }
                                None => {
                                    self.unadmitted_tx.insert(conn, tx);
                                }
                            }
                        }
                    }
                }
                Output::Admitted {
                    conn,
                    peer_id,
                    peer,
                    client_ip,
                    groups,
                    connection_id,
                    record,
                    took,
                } => {
                    if let Err(e) = self.dataplane.add_session(client_ip, conn, &groups) {
                        warn!(conn, error = %e, "data plane refused the session");
                        self.endpoint.admission_failed(Clock::system(), conn);
                        continue;
                    }
                    self.datapath.admit(peer_id, client_ip);
                    if let Some(tx) = self.unadmitted_tx.remove(&conn) {
                        write_lock(&self.tx.sessions).insert(client_ip, tx);
                    }
                    if let Peer::Tcp(tcp) = peer {
                        self.tx.tcp.admitted(tcp);
                    }
                    if let Some(r) = &self.settings.recorder {
                        r.started(&connection_id, record);
                    }
                    if let Some(m) = &self.settings.metrics {
                        m.admitted(took);
                    }
                }
                Output::Ended {
                    conn,
                    peer_id,
                    peer,
                    client_ip,
                    info,
                    reason: _,
                } => {
                    // The data path first (nothing more is forwarded), then the data plane
                    // (its NAT entries go before the address can be handed out again).
                    self.datapath.remove(peer_id);
                    self.unadmitted_tx.remove(&conn);
                    // A TCP session's socket closes with it.
                    if let Peer::Tcp(tcp) = peer {
                        self.tx.tcp.close(tcp);
                    }
                    if let Some(addr) = client_ip {
                        write_lock(&self.tx.sessions).remove(&addr);
                        let counters = self.dataplane.remove_session(addr).ok().flatten();
                        info!(conn, client_ip = %addr, ?counters, "session ended");
                        if let Some(r) = &self.settings.recorder {
                            r.ended(&info.connection_id, counters.unwrap_or_default());
                        }
                        if let Some(m) = &self.settings.metrics {
                            m.traffic(&info.connection_id, counters.unwrap_or_default(), true);
                        }
                        let counters: crate::connlog::TrafficCounters =
                            counters.unwrap_or_default().into();
                        let entry = crate::connlog::ConnectionLogEntry::reset(
                            &info,
                            &counters,
                            SystemTime::now(),
                        );
                        log_connection(&self.logs, self.settings.print_log_lines, &entry);
                    }
                }
                Output::AskConnectHandler {
                    conn,
                    handler,
                    request,
                } => {
                    let answers = self.handler_tx.clone();
                    tokio::spawn(async move {
                        let answer = handler.call(&request).await;
                        let _ = answers.send((conn, answer));
                    });
                }
                Output::Authenticate { conn, request } => {
                    let answers = self.auth_tx.clone();
                    if matches!(
                        request,
                        AuthRequest::WebSignIn(_) | AuthRequest::SsoSession { .. }
                    ) {
                        self.single_sign_on(conn, request);
                        continue;
                    }
                    match self.settings.authenticator.clone() {
                        Some(authenticator) => {
                            tokio::spawn(async move {
                                let answer = authenticator.check(&request).await;
                                let _ = answers.send((conn, answer));
                            });
                        }
                        None => {
                            let _ = answers.send((
                                conn,
                                Err(crate::auth::AuthFailure::DirectoryUnreachable(
                                    "the endpoint's directory could not be set up (see the daemon's log)".into(),
                                )),
                            ));
                        }
                    }
                }
                Output::GroupsChanged {
                    conn,
                    client_ip,
                    groups,
                } => {
                    if let Err(e) = self.dataplane.set_session_groups(client_ip, &groups) {
                        warn!(conn, error = %e, "data plane refused the session's new groups: session ended");
                        self.endpoint.admission_failed(Clock::system(), conn);
                    }
                }
                Output::Log(entry) => {
                    if let Some(m) = &self.settings.metrics {
                        if entry.connection_attempt_status == crate::connlog::AttemptStatus::Failed
                        {
                            m.refused(&entry.connection_attempt_failure_reason);
                        }
                    }
                    log_connection(&self.logs, self.settings.print_log_lines, &entry)
                }
                Output::NotRunning { connection_id } => {
                    if let Some(r) = &self.settings.recorder {
                        r.ended(&connection_id, Default::default());
                    }
                }
                Output::NeedAddressBlock => {
                    if let Some(b) = &self.settings.address_blocks {
                        let _ = b.ask_more.send(self.settings.endpoint_id.clone());
                    }
                }
            }
        }
    }

    /// A web sign-in goes to the web listener, which answers when the user has signed in; a
    /// session check goes to the identity provider (off the event loop).
    fn single_sign_on(&mut self, conn: ConnId, request: AuthRequest) {
        let answers = self.auth_tx.clone();
        let Some(link) = self.settings.sso.clone() else {
            let _ = answers.send((
                conn,
                Err(crate::auth::AuthFailure::IdpUnreachable(
                    "the endpoint's identity provider could not be set up (see the daemon's log)"
                        .into(),
                )),
            ));
            return;
        };
        match request {
            AuthRequest::WebSignIn(sign_in) => link.service.begin(
                crate::web::sso::SignInTarget {
                    endpoint_id: self.settings.endpoint_id.clone(),
                    endpoint_name: link.endpoint_name.clone(),
                    conn,
                    idp: link.idp,
                    answers,
                },
                *sign_in,
            ),
            AuthRequest::SsoSession { username, session } => {
                let endpoint_id = self.settings.endpoint_id.clone();
                tokio::spawn(async move {
                    let answer = link
                        .service
                        .check_session(&endpoint_id, &session, &username)
                        .await;
                    let _ = answers.send((conn, answer));
                });
            }
            _ => {}
        }
    }

    fn on_command(&mut self, cmd: ServerCommand) {
        let clock = Clock::system();
        match cmd {
            ServerCommand::ReplacePolicy(policy) => self.replace_policy(policy),
            ServerCommand::KeepAddressBlocks(held) => {
                self.endpoint.keep_address_blocks(Clock::system(), &held);
                self.drain();
            }
            ServerCommand::AddAddressBlock(None) => {
                self.endpoint.no_address_block(Clock::system());
                self.drain();
            }
            ServerCommand::AddAddressBlock(Some(block)) => {
                match self.endpoint.add_address_block(Clock::system(), block) {
                    Ok(_) => {
                        info!(endpoint = %self.settings.endpoint_id, %block, available = self.endpoint.addresses_available(), "address block added to the pool")
                    }
                    Err(e) => {
                        warn!(endpoint = %self.settings.endpoint_id, error = %e, "address block not added")
                    }
                }
                self.drain();
            }
            ServerCommand::Sso(link) => {
                info!(idp = ?link.as_ref().map(|l| &l.idp), "identity provider replaced");
                self.settings.sso = link;
            }
            ServerCommand::Authenticator(a) => {
                info!(directory = ?a.as_ref().map(|a| a.directory_id().to_string()), "directory checks replaced");
                self.settings.authenticator = a;
            }
            ServerCommand::LiveSettings(live) => {
                self.endpoint
                    .handle_command(clock, EndpointCommand::LiveSettings(live));
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
                    if let Some(known) = self.settings.targets.iter_mut().find(|o| o.id == t.id) {
                        // Security groups applied or changed: one map write, no reset.
                        if known.egress != t.egress {
                            match self.dataplane.set_target_egress(t.id, t.egress.clone()) {
                                Ok(()) => known.egress = t.egress.clone(),
                                Err(e) => {
                                    warn!(interface = %t.interface, error = %e, "security groups not applied")
                                }
                            }
                        }
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
            } => match tls.server_config() {
                Ok(config) => {
                    let config = Arc::new(SessionConfig {
                        force_tls_prf: self.settings.force_tls_prf,
                        require_client_certificate: tls.requires_client_certificate(),
                        ..SessionConfig::new(config)
                    });
                    self.settings.tls = tls;
                    info!("TLS material replaced for new handshakes and renegotiations");
                    self.endpoint.handle_command(
                        clock,
                        EndpointCommand::ReplaceTls {
                            config,
                            revoked_serials,
                        },
                    );
                }
                Err(e) => {
                    warn!(error = %e, "new TLS material refused; the previous one stays");
                }
            },
            ServerCommand::Terminate {
                connection_ids,
                usernames,
            } => self.endpoint.handle_command(
                clock,
                EndpointCommand::Terminate {
                    connection_ids,
                    usernames,
                },
            ),
        }
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
        let routes = pushed_routes(&self.dataplane);
        self.endpoint
            .handle_command(Clock::system(), EndpointCommand::SetRoutes(routes));
    }

    /// Counters to the recorder, NAT expiry, TCP connections past their admission deadline.
    fn housekeeping(&mut self, tcp_limits: TcpLimits) {
        let now = Instant::now();
        if now.duration_since(self.counters_at) >= self.settings.counters_every {
            self.counters_at = now;
            self.report_counters();
        }
        if now.duration_since(self.nat_expired_at) >= NAT_EXPIRY_EVERY {
            self.nat_expired_at = now;
            let r = self.dataplane.expire_nat();
            debug!(?r, "NAT expiry");
        }
        for id in self.tx.tcp.reap(now, tcp_limits.admission_deadline) {
            debug!(
                conn = id,
                "TCP connection without a session past its deadline: closed"
            );
            self.endpoint.handle_tcp_deadline(Clock::system(), id);
        }
    }

    /// Reports running connections' counters to the recorder and the metrics, and the data
    /// plane's own counters to the metrics.
    fn report_counters(&mut self) {
        if let Some(m) = &self.settings.metrics {
            if let Ok(c) = self.dataplane.global_counters() {
                m.dataplane(&c.0, self.dataplane.nat_entry_count());
            }
        }
        if self.settings.recorder.is_none() && self.settings.metrics.is_none() {
            return;
        }
        let batch: Vec<_> = self
            .endpoint
            .admitted()
            .filter_map(|(_, ip, connection_id)| {
                let counters = self.dataplane.session_counters(ip).ok().flatten()?;
                Some((connection_id.to_string(), counters))
            })
            .collect();
        if let Some(m) = &self.settings.metrics {
            for (id, c) in &batch {
                m.traffic(id, *c, false);
            }
        }
        if let Some(recorder) = &self.settings.recorder {
            if !batch.is_empty() {
                recorder.counters(batch);
            }
        }
    }

    /// Data-plane flow events (denied, no route, ...) into the flow log, with the session's
    /// connection id and username.
    fn on_flow_events(&mut self) {
        let Some(f) = self.flow_events.as_mut() else {
            return;
        };
        let events = f.get_mut().drain();
        let Some(logs) = &self.logs else {
            return;
        };
        for ev in events {
            let names = self.endpoint.connection_names(ev.session_id);
            let entry = crate::connlog::FlowLogEntry::from_event(
                &self.settings.endpoint_id,
                &ev,
                names.map(|n| n.0),
                names.and_then(|n| n.1),
            );
            if let Err(e) = logs.flow(&entry) {
                warn!(error = %e, "flow log");
            }
            if self.settings.print_log_lines {
                println!("{}", entry.to_json_line());
            }
        }
    }
}

/// The routes split-tunnel clients are told about: every route of the live policy.
fn pushed_routes(dataplane: &DataPlane) -> Vec<Ipv4Net> {
    dataplane
        .policy()
        .routes
        .iter()
        .map(|r| r.destination)
        .collect()
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
