//! The endpoint core, sans-IO: everything an OpenVPN endpoint decides, and nothing it does.
//!
//! An [`Endpoint`] owns every connection of one listener: the stateless reset cookie,
//! admission (handshake bounds, the client connect handler), the address pool, peer ids, the
//! push, keepalive and session timeouts, renegotiation, terminate and CRL checks. What goes in:
//! control packets ([`Endpoint::handle_packet`]), the time ([`Endpoint::handle_timeout`]),
//! commands ([`Endpoint::handle_command`]) and the answers of outside checks
//! ([`Endpoint::handle_connect_answer`]). What comes out ([`Endpoint::poll_output`]): packets to
//! send, data keys for the data path, sessions for the kernel data plane, connection-log
//! entries, questions for the connect handler; and [`Endpoint::poll_timeout`], when to call
//! again. The I/O layer (`crate::server`) only moves bytes and drives that deadline.
//!
//! Data packets do not come here: the data path ([`datapath::DataPath`]) holds each session's
//! keys and opens, checks and forwards them on its own, so the per-packet work never needs the
//! endpoint's single owner. It shares with the endpoint one [`datapath::Activity`] per
//! connection (last packet, drop counters, "packet ids running out"), read here for timeouts.
//!
//! A connection's life is one [`ConnState`]; it only moves forward and ends by removal, with
//! an [`Output::Ended`] saying why. Applying the outputs in order, before the next input, is
//! the driver's part of the contract: an ended session leaves the data plane before its
//! address can be handed out again.

pub mod datapath;
pub mod test_client;

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::Ipv4Net;

/// A destination pushed to split-tunnel clients.
type Route = Ipv4Net;
use tracing::{debug, info, warn};

use crate::{
    auth::{
        challenge::split_static_challenge,
        throttle::{Throttle, ThrottlePolicy},
        token::{is_token, session_of, TokenClaims, TokenKey},
        AuthFailure, AuthRequest, DirectoryUser, WebSignIn,
    },
    connect_handler::{ConnectHandler, ConnectRequest, ConnectResponse, HandlerError},
    connlog::{ConnectionInfo, ConnectionLogEntry, FailureReason},
    datachannel::{Cipher, DataChannel, Opener, Role, Sealer},
    model::{MfaMode, NewConnection, TransportProtocol as Transport},
    pool::AddressPool,
    protocol::{
        cookie::CookieJar,
        keymethod::{Credentials, Password},
        packet::{ControlOpcode, Header, Opcode, Packet, SessionId},
        peer_id::PeerIds,
        push::{negotiate_cipher, KeySignalling, PushReply, Tunnel},
        session::{Event, ServerSession, SessionConfig},
        tls::ClientIdentity,
    },
};
use datapath::Activity;

/// A connection of the endpoint (also the data plane's session id and the flow log's key).
pub type ConnId = u64;

/// Where a client's packets come from and go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Udp(SocketAddr),
    /// A TCP connection of the listener (`io::tcp`'s id).
    Tcp(u64),
}

/// The time, both ways: the monotonic clock for deadlines, the wall clock for logs and the
/// reset cookie. Tests pass virtual time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Instant,
    pub wall: SystemTime,
}

impl Clock {
    pub fn system() -> Self {
        Clock {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn unix(&self) -> Duration {
        self.wall.duration_since(UNIX_EPOCH).unwrap_or_default()
    }
}

/// Bounds on connections that are not admitted yet: each holds a TLS state.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
pub const MAX_PENDING_PER_SOURCE: u32 = 32;
/// A pending handshake whose client sent nothing for this long gives its place to a new one
/// when the pending handshakes are at their bound: a live client answers each server flight
/// within a round trip (and stock clients resend after 2 s), a flood's abandoned handshakes
/// never do. Without this, a flood of ClientHellos from many addresses keeps the table full
/// for the whole handshake window and no real client gets in.
pub const STALLED_HANDSHAKE: Duration = Duration::from_secs(3);
/// Sooner for a handshake whose client sent nothing at all after its first TLS packet (a real
/// client acknowledges the server's flight within a round trip): what a ClientHello flood
/// leaves behind makes room after this long, so at the bound the table turns over about
/// twice a second per slot.
pub const SILENT_AFTER_HELLO: Duration = Duration::from_millis(500);
/// How long a session keeps its old keys after a renegotiation failed (a revoked or expired
/// certificate, a stalled key exchange) before it is ended.
pub const RENEGOTIATION_GRACE: Duration = Duration::from_secs(10);

/// What the endpoint is configured with (the I/O bits — sockets, TUN, logs — stay outside).
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    pub endpoint_id: String,
    pub transport: Transport,
    pub client_cidr: Ipv4Net,
    pub split_tunnel: bool,
    pub dns_servers: Vec<Ipv4Addr>,
    /// Data ciphers, best first.
    pub ciphers: Vec<String>,
    /// Seconds between keepalive pings, and of silence before a client is dropped (twice
    /// `ping_restart`).
    pub ping: u32,
    pub ping_restart: u32,
    /// Renegotiate each session's keys after this long; `None`: only when asked or when
    /// packet ids run out.
    pub reneg_after: Option<Duration>,
    pub live: LiveSettings,
}

/// The settings a running endpoint takes without a restart.
#[derive(Clone, Debug, Default)]
pub struct LiveSettings {
    /// The longest a session lasts (AWS's session timeout); `None`: no limit. Running sessions
    /// are measured against a new value from their start.
    pub session_timeout: Option<Duration>,
    /// At the session timeout: true, HALT (the client exits); false, RESTART (it reconnects at
    /// once and authenticates again).
    pub disconnect_on_session_timeout: bool,
    /// Asked before a client gets an address (clients that connect after a change use the new
    /// one); `None`: none.
    pub connect_handler: Option<Arc<ConnectHandler>>,
    /// Clients sign in with a directory user name and password (and a second factor): how.
    /// `None`: the certificate alone.
    pub directory: Option<DirectoryPolicy>,
    /// Clients sign in through a web browser at an identity provider (single sign-on): how.
    /// `None`: no web sign-in.
    pub sso: Option<SsoPolicy>,
}

/// How an endpoint signs users in at its identity provider: the client is told to open
/// `{sign_in_base}/s/{id}` (`AUTH_PENDING` + `INFO_PRE,WEB_AUTH::…`), the web listener does the
/// rest and answers through [`Endpoint::handle_auth_answer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsoPolicy {
    pub idp_id: String,
    /// The web listener's public URL, without a trailing `/`.
    pub sign_in_base: String,
    /// How long a user has to finish signing in.
    pub sign_in_timeout: Duration,
    /// How often a connected user's session is refreshed at the identity provider.
    pub recheck: Duration,
}

/// How an endpoint signs users in against its directory (the checks themselves run outside,
/// see [`Output::Authenticate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryPolicy {
    pub directory_id: String,
    /// The second factor the password field must carry (`SCRV1:` static challenge answers).
    pub mfa: MfaMode,
    /// How often a connected user's account and groups are checked again.
    pub recheck: Duration,
}

/// Commands from the control plane.
#[derive(Debug)]
pub enum Command {
    /// End the sessions of these connection ids or user names (HALT: the client exits).
    Terminate {
        connection_ids: Vec<String>,
        usernames: Vec<String>,
    },
    /// New TLS settings (a CRL import, a reloaded file): new handshakes and running sessions'
    /// renegotiations use them; sessions whose certificate serial is listed end at once.
    ReplaceTls {
        config: Arc<SessionConfig>,
        revoked_serials: Vec<String>,
    },
    /// The routes pushed to split-tunnel clients that connect from now on.
    SetRoutes(Vec<Route>),
    LiveSettings(LiveSettings),
}

/// What the endpoint asks the I/O layer to do, in order.
#[derive(Debug)]
pub enum Output {
    /// Send one packet.
    Transmit { peer: Peer, packet: Vec<u8> },
    /// New data keys of a connection (its first, or a renegotiation's): the data path opens
    /// with `opener` from now on (keeping the previous key a while) and seals with `sealer`.
    Keys {
        conn: ConnId,
        peer_id: u32,
        peer: Peer,
        /// Boxed: key schedules are large and keys are rare next to transmits.
        opener: Box<Opener>,
        sealer: Box<Sealer>,
        activity: Arc<Activity>,
    },
    /// The client is admitted with `client_ip`: the data plane gets its session (groups), the
    /// data path accepts its packets from that source, the store records it.
    Admitted {
        conn: ConnId,
        peer_id: u32,
        peer: Peer,
        client_ip: Ipv4Addr,
        groups: Vec<String>,
        connection_id: String,
        record: NewConnection,
        /// From the client's first packet to now (handshake, sign-in, address).
        took: Duration,
    },
    /// The connection is gone. `client_ip` is set for an admitted one: the data path and the
    /// data plane forget it (before anything else happens), and its end goes to the connection
    /// log with the data plane's counters. A TCP peer's socket is closed.
    Ended {
        conn: ConnId,
        peer_id: u32,
        peer: Peer,
        client_ip: Option<Ipv4Addr>,
        info: Box<ConnectionInfo>,
        reason: String,
    },
    /// Ask the client connect handler; the answer comes back through
    /// [`Endpoint::handle_connect_answer`].
    AskConnectHandler {
        conn: ConnId,
        handler: Arc<ConnectHandler>,
        request: ConnectRequest,
    },
    /// A connection-log entry (attempts, successful or failed). Boxed, as `Ended`'s info:
    /// outputs are mostly transmits, which should stay small.
    Log(Box<ConnectionLogEntry>),
    /// A terminate named a connection that is not running: the store records its end.
    NotRunning { connection_id: String },
    /// The pool of claimed address blocks runs low: claim another block of the client CIDR
    /// for this node and give it back with [`Endpoint::add_address_block`].
    NeedAddressBlock,
    /// Check a user against the endpoint's directory (off the event loop, under its deadline).
    Authenticate { conn: ConnId, request: AuthRequest },
    /// An admitted session's groups changed (a directory re-check): the data plane judges
    /// its next packet by these.
    GroupsChanged {
        conn: ConnId,
        client_ip: Ipv4Addr,
        groups: Vec<String>,
    },
}

/// What an authorizing connection waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Waiting {
    /// The client's answer to the MFA question asked with `CR_TEXT` (clients that announce
    /// `IV_SSO=crtext` and sent a plain password): the password waits here until `until`.
    Code {
        username: String,
        password: Password,
        until: Instant,
    },
    /// The directory (and MFA) check of its credentials.
    Directory,
    /// The user signing in through the browser (single sign-on), until `until`.
    Web { until: Instant },
    /// The client connect handler.
    ConnectHandler,
    /// A client address: the pool of claimed blocks ran out and another block was asked for
    /// ([`Output::NeedAddressBlock`]); refused at `until` if none has come.
    Address { until: Instant },
}

/// How long an admitted-to-be client waits for another address block before it is refused.
pub const ADDRESS_BLOCK_WAIT: Duration = Duration::from_secs(10);

/// How a single sign-on endpoint starts with a new client.
enum WebStart {
    /// A valid auth-token: the session goes on once the identity provider confirms the user.
    Resume {
        request: AuthRequest,
        resumed: TokenClaims,
    },
    /// Sign in through the browser.
    Browser(Box<WebSignIn>),
}

/// What a directory endpoint does with a client's credentials.
enum SignIn {
    /// Ask the directory; `resumed`: a reconnect with a valid auth-token.
    Ask {
        request: AuthRequest,
        resumed: Option<TokenClaims>,
    },
    /// Ask the client for its code first (`CR_TEXT`), then the directory.
    AskCode {
        username: String,
        password: Password,
    },
}

/// How long a client has to answer the `CR_TEXT` question.
pub const CODE_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// The question clients show.
const CODE_PROMPT: &str = "Enter MFA code";

/// A connection's life. It moves forward only: `Handshaking` → `Authorizing` → `Admitted`,
/// and ends by removal from the endpoint's table (with an [`Output::Ended`] saying why).
enum ConnState {
    /// The reset exchange is done; TLS and the first key exchange are under way.
    Handshaking,
    /// The certificate is verified and data keys exist, but outside checks (the client
    /// connect handler) decide whether the client may in. It has no address; the data path
    /// drops its packets.
    Authorizing {
        admission: Box<Admission>,
        authenticated_at: Instant,
        waiting: Waiting,
    },
    /// The client has an address and a data-plane session.
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

/// What admitting an authenticated client takes (kept while the directory and the connect
/// handler decide).
struct Admission {
    identity: ClientIdentity,
    /// The user name the client claimed (directory endpoints), until the directory answers.
    claimed_user: Option<String>,
    /// A reconnect with a valid auth-token: the session it continues.
    resumed: Option<TokenClaims>,
    peer_info: crate::protocol::keymethod::PeerInfo,
    tls_version: String,
    tls_ekm: bool,
    cipher_name: String,
}

struct Connection {
    peer: Peer,
    remote_addr: SocketAddr,
    /// The address the handshake came from (counted in [`PendingHandshakes`] until admitted;
    /// `remote_addr` may move).
    handshake_source: IpAddr,
    session: ServerSession,
    state: ConnState,
    peer_id: u32,
    cipher: Option<Cipher>,
    common_name: String,
    /// The client certificate's serial, `aa:bb:…` (CRL checks of running sessions).
    serial: String,
    log: ConnectionInfo,
    /// Shared with the data path: last packet, drop counters.
    activity: Arc<Activity>,
    /// The last control packet (data packets count through `activity`).
    last_control_rx: Instant,
    /// When the client's first packet came.
    started: Instant,
    /// When the current data keys were installed.
    keys_at: Instant,
    rekey_pending: bool,
    /// A renegotiation failed at this time; the session ends unless a new key is in place
    /// within [`RENEGOTIATION_GRACE`].
    rekey_failed_at: Option<Instant>,
    /// The client asked for its configuration (it is sent once the client is admitted).
    push_requested: bool,
    /// Signed in against the directory: who, and when to check again.
    user: Option<SignedIn>,
}

/// A directory user's session.
struct SignedIn {
    /// The directory's name for the user.
    username: String,
    /// The groups the certificate gives (OU values), kept to rebuild the session's groups
    /// when the directory's change.
    certificate_groups: Vec<String>,
    /// The directory's groups at the last check.
    groups: Vec<String>,
    /// The auth-token's claims (the session it names, its expiry).
    token: TokenClaims,
    next_check: Instant,
    /// A re-check is under way.
    checking: bool,
}

impl SignedIn {
    /// The check of a connected user: the directory's lookup, or the identity provider's
    /// refresh of the session.
    fn recheck_request(&self, sso: bool) -> AuthRequest {
        if sso {
            AuthRequest::SsoSession {
                username: self.username.clone(),
                session: self.token.session.clone(),
            }
        } else {
            AuthRequest::Lookup {
                username: self.username.clone(),
            }
        }
    }
}

impl Connection {
    /// The last packet of any kind from the client.
    fn last_rx(&self) -> Instant {
        self.activity
            .last_rx()
            .map_or(self.last_control_rx, |d| d.max(self.last_control_rx))
    }
}

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

/// The endpoint: all connections of one listener.
pub struct Endpoint {
    config: EndpointConfig,
    session_config: Arc<SessionConfig>,
    cookies: CookieJar,
    pool: AddressPool,
    peer_ids: PeerIds,
    pending: PendingHandshakes,
    /// Handshaking connections, oldest first (some may have ended or moved on since: skipped
    /// when met): where a stalled handshake is looked for when the table is full.
    pending_order: VecDeque<ConnId>,
    conns: HashMap<ConnId, Connection>,
    by_peer: HashMap<Peer, ConnId>,
    next_conn: ConnId,
    /// Routes pushed to split-tunnel clients.
    routes: Vec<Route>,
    /// The data path's clock origin (activity timestamps are offsets from it).
    epoch: Instant,
    outputs: VecDeque<Output>,
    /// Failed sign-ins slow down further tries.
    throttle: Throttle,
    /// Signs and checks auth-tokens (random per endpoint instance).
    tokens: TokenKey,
    /// Sessions whose tokens no longer count (terminated, account gone), until they expire.
    revoked_sessions: HashMap<String, u64>,
    /// Whether the pool holds claimed blocks of the client CIDR (a node sharing the endpoint
    /// with others) rather than all of it, and whether another block has been asked for.
    blocks: BlockSupply,
}

/// Where the address pool's addresses come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockSupply {
    /// The whole client CIDR.
    WholeCidr,
    /// Claimed blocks; `asked`: [`Output::NeedAddressBlock`] went out and no block came since.
    Claimed { asked: bool },
}

/// A pool of claimed blocks asks for another block when fewer addresses than this are left.
pub const ADDRESS_LOW_WATER: usize = 16;

/// Revoked token sessions remembered at most (the oldest expiry goes first beyond it).
const MAX_REVOKED_SESSIONS: usize = 10_000;
/// The re-check interval when the live settings name none (a directory removed mid-session).
const DEFAULT_RECHECK: Duration = Duration::from_secs(300);
/// A token's lifetime when the endpoint has no session timeout.
const TOKEN_LIFETIME_WITHOUT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Errors starting an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("client CIDR: {0}")]
    Pool(#[from] crate::pool::PoolError),
    #[error("no system randomness for the reset cookie or auth-token key")]
    Randomness,
}

impl Endpoint {
    pub fn new(
        config: EndpointConfig,
        session_config: Arc<SessionConfig>,
        cookies: CookieJar,
        epoch: Instant,
    ) -> Result<Self, EndpointError> {
        let pool = AddressPool::new(config.client_cidr)?;
        Ok(Endpoint {
            config,
            session_config,
            cookies,
            pool,
            peer_ids: PeerIds::new(),
            pending: PendingHandshakes::default(),
            pending_order: VecDeque::new(),
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            next_conn: 1,
            routes: Vec::new(),
            epoch,
            outputs: VecDeque::new(),
            throttle: Throttle::new(ThrottlePolicy::default()),
            tokens: TokenKey::random().ok_or(EndpointError::Randomness)?,
            revoked_sessions: HashMap::new(),
            blocks: BlockSupply::WholeCidr,
        })
    }

    /// Hands out client addresses only from `blocks` of the client CIDR (claimed by this node
    /// for an endpoint that several nodes serve), and from blocks added later
    /// ([`add_address_block`](Self::add_address_block)); when few addresses are left the
    /// endpoint asks for another ([`Output::NeedAddressBlock`]). Called before any client is
    /// admitted.
    pub fn use_address_blocks(
        &mut self,
        blocks: &[Ipv4Net],
    ) -> Result<(), crate::pool::BlockError> {
        let mut pool = AddressPool::with_blocks(self.pool.cidr()).map_err(|_| {
            crate::pool::BlockError::Outside {
                block: self.pool.cidr(),
                cidr: self.pool.cidr(),
            }
        })?;
        for b in blocks {
            pool.add_block(*b)?;
        }
        self.pool = pool;
        self.blocks = BlockSupply::Claimed { asked: false };
        self.ask_for_addresses_if_low();
        Ok(())
    }

    /// One more claimed block of the client CIDR for the pool; clients waiting for an address
    /// get theirs.
    pub fn add_address_block(
        &mut self,
        clock: Clock,
        block: Ipv4Net,
    ) -> Result<bool, crate::pool::BlockError> {
        let added = self.pool.add_block(block)?;
        if let BlockSupply::Claimed { asked } = &mut self.blocks {
            *asked = false;
        }
        for id in self.waiting_for_address() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if let ConnState::Authorizing {
                admission,
                authenticated_at,
                ..
            } = std::mem::replace(&mut c.state, ConnState::Handshaking)
            {
                if self.admit(clock, id, *admission, authenticated_at) {
                    self.flush(clock, id);
                }
            }
        }
        self.ask_for_addresses_if_low();
        Ok(added)
    }

    /// No block of the client CIDR could be claimed (every block is held by a live node, or
    /// the database did not answer): the clients waiting for an address are refused.
    pub fn no_address_block(&mut self, clock: Clock) {
        if let BlockSupply::Claimed { asked } = &mut self.blocks {
            *asked = false;
        }
        for id in self.waiting_for_address() {
            warn!(
                conn = id,
                "client address pool exhausted and no address block to claim"
            );
            self.refuse(
                clock,
                id,
                FailureReason::new(FailureReason::ADDRESS_POOL_EXHAUSTED),
                None,
            );
        }
    }

    /// The blocks of the client CIDR this node holds now are `held` (it was cut off the
    /// database, found dead, and another node claimed some of its blocks meanwhile): blocks
    /// not among them leave the pool, and the clients with an address in one are told to
    /// reconnect (RESTART), to get an address this node may hand out.
    pub fn keep_address_blocks(&mut self, clock: Clock, held: &[Ipv4Net]) {
        if self.blocks == BlockSupply::WholeCidr {
            return;
        }
        for block in self.pool.blocks() {
            if held.contains(&block) {
                continue;
            }
            let addresses = self.pool.remove_block(block);
            warn!(%block, clients = addresses.len(), "address block now held by another node: its clients reconnect");
            let ids: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.state.client_ip().is_some_and(|ip| block.contains(&ip)))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.say_and_end(clock, id, "RESTART", "address-block-lost");
            }
        }
        self.ask_for_addresses_if_low();
    }

    /// The connections waiting for an address block, oldest first.
    fn waiting_for_address(&self) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.state,
                    ConnState::Authorizing {
                        waiting: Waiting::Address { .. },
                        ..
                    }
                )
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Client addresses the pool can still hand out.
    pub fn addresses_available(&self) -> usize {
        self.pool.available()
    }

    fn ask_for_addresses_if_low(&mut self) {
        if self.blocks == (BlockSupply::Claimed { asked: false })
            && self.pool.available() < ADDRESS_LOW_WATER
        {
            self.blocks = BlockSupply::Claimed { asked: true };
            self.outputs.push_back(Output::NeedAddressBlock);
        }
    }

    /// A cookie jar with a random key (the daemon's).
    pub fn random_cookies() -> Result<CookieJar, EndpointError> {
        CookieJar::new().map_err(|_| EndpointError::Randomness)
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// The gateway's own address in the client CIDR and the client netmask.
    pub fn gateway_addr(&self) -> Ipv4Addr {
        self.pool.gateway_addr()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The connection id and user name of a connection (flow log lines).
    pub fn connection_names(&self, conn: ConnId) -> Option<(&str, Option<&str>)> {
        self.conns
            .get(&conn)
            .map(|c| (c.log.connection_id.as_str(), c.log.username.as_deref()))
    }

    /// Admitted connections: (conn, client address, connection id).
    pub fn admitted(&self) -> impl Iterator<Item = (ConnId, Ipv4Addr, &str)> {
        self.conns.iter().filter_map(|(id, c)| {
            c.state
                .client_ip()
                .map(|ip| (*id, ip, c.log.connection_id.as_str()))
        })
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next time [`Endpoint::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let keepalive = Duration::from_secs(u64::from(self.config.ping_restart) * 2);
        self.conns
            .values()
            .flat_map(|c| {
                let established = c.session.is_established();
                [
                    c.session.next_deadline(),
                    established.then(|| c.last_rx() + keepalive),
                    c.state
                        .authenticated_at()
                        .zip(self.config.live.session_timeout)
                        .map(|(at, limit)| at + limit),
                    c.rekey_failed_at.map(|at| at + RENEGOTIATION_GRACE),
                    c.user
                        .as_ref()
                        .filter(|u| !u.checking)
                        .map(|u| u.next_check),
                    match &c.state {
                        ConnState::Authorizing {
                            waiting: Waiting::Code { until, .. } | Waiting::Address { until },
                            ..
                        } => Some(*until),
                        _ => None,
                    },
                    (established && !c.rekey_pending)
                        .then_some(self.config.reneg_after)
                        .flatten()
                        .map(|after| c.keys_at + after),
                ]
            })
            .flatten()
            .min()
    }

    /// A packet that is not a data packet (the data path takes those), from `peer` at `addr`.
    pub fn handle_packet(&mut self, clock: Clock, peer: Peer, addr: SocketAddr, buf: &[u8]) {
        let Ok(header) = Header::peek(buf) else {
            return;
        };
        if matches!(header.opcode, Opcode::DataV1 | Opcode::DataV2) {
            return;
        }
        let packet = match Packet::decode(buf) {
            Ok(p) => p,
            Err(e) => {
                debug!(%addr, error = %e, "malformed control packet");
                return;
            }
        };
        if let Some(&id) = self.by_peer.get(&peer) {
            if let Some(c) = self.conns.get_mut(&id) {
                if let Err(e) = c.session.handle(clock.now, &packet) {
                    debug!(conn = id, error = %e, "control packet dropped");
                }
                c.last_control_rx = clock.now;
                self.after_session(clock, id);
                return;
            }
        }
        // No state for this peer: only a first reset (answered statelessly) or a packet that
        // acknowledges our cookie creates any.
        match &packet {
            Packet::Control(c) if c.opcode == ControlOpcode::HardResetClientV2 => {
                if let Some(answer) = self.cookies.answer(c, addr, clock.unix()) {
                    self.outputs.push_back(Output::Transmit {
                        peer,
                        packet: Packet::Control(answer).to_vec(),
                    });
                }
            }
            Packet::Control(c) => {
                if let Some(acks) = &c.acks {
                    self.accept(
                        clock,
                        peer,
                        addr,
                        c.session_id,
                        acks.remote_session_id(),
                        &packet,
                    );
                }
            }
            Packet::Ack(a) => {
                self.accept(
                    clock,
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
        clock: Clock,
        peer: Peer,
        addr: SocketAddr,
        client_sid: SessionId,
        claimed: SessionId,
        packet: &Packet<'_>,
    ) {
        if !self.cookies.verify(client_sid, addr, claimed, clock.unix()) {
            debug!(%addr, "packet for an unknown session without a valid cookie: dropped");
            return;
        }
        // Handshakes cost a TLS state each: bounded in all and per source address. The
        // client retransmits, so it gets in once others finish; at the bound in all, a stalled
        // handshake gives its place.
        if self.pending.total >= MAX_PENDING_HANDSHAKES {
            self.evict_stalled_handshake(clock);
        }
        if let Err(bound) = self.pending.admit(addr.ip()) {
            debug!(%addr, %bound, "handshake not started: too many pending");
            return;
        }
        let Some(peer_id) = self.peer_ids.allocate() else {
            self.pending.done(addr.ip());
            warn!(%addr, "no free peer id");
            return;
        };
        let now = clock.now;
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
        let mut conn = Connection {
            peer,
            remote_addr: addr,
            handshake_source: addr.ip(),
            session,
            state: ConnState::Handshaking,
            peer_id,
            cipher: None,
            common_name: String::new(),
            serial: String::new(),
            log: ConnectionInfo::new(
                new_connection_id(),
                self.config.endpoint_id.clone(),
                self.config.transport,
                addr,
                clock.wall,
            ),
            activity: Arc::new(Activity::new(self.epoch)),
            last_control_rx: now,
            started: now,
            keys_at: now,
            rekey_pending: false,
            rekey_failed_at: None,
            push_requested: false,
            user: None,
        };
        if let Err(e) = conn.session.handle(now, packet) {
            debug!(error = %e, "first packet of a session dropped");
        }
        info!(conn = id, %addr, "control channel opened");
        self.conns.insert(id, conn);
        self.by_peer.insert(peer, id);
        if self.pending_order.len() >= 2 * MAX_PENDING_HANDSHAKES {
            // Bounded: what finished its handshake since is dropped from the order.
            let conns = &self.conns;
            self.pending_order.retain(|id| {
                conns
                    .get(id)
                    .is_some_and(|c| matches!(c.state, ConnState::Handshaking))
            });
        }
        self.pending_order.push_back(id);
        self.after_session(clock, id);
    }

    /// Ends the oldest handshake whose client has been quiet for [`STALLED_HANDSHAKE`] (or for
    /// [`SILENT_AFTER_HELLO`] when it sent nothing after its first packet), if one is found
    /// among the oldest few (bounded work per new handshake).
    fn evict_stalled_handshake(&mut self, clock: Clock) {
        for _ in 0..self.pending_order.len().min(64) {
            let Some(id) = self.pending_order.pop_front() else {
                return;
            };
            let Some(c) = self.conns.get(&id) else {
                continue;
            };
            // Only the TLS handshake itself: a client waiting for a directory or a connect
            // handler is quiet by design.
            if !matches!(c.state, ConnState::Handshaking) {
                continue;
            }
            let quiet = clock.now.saturating_duration_since(c.last_control_rx);
            let only_first_packet = c.last_control_rx == c.started;
            if quiet >= STALLED_HANDSHAKE || (only_first_packet && quiet >= SILENT_AFTER_HELLO) {
                debug!(conn = id, "stalled handshake ended to make room");
                self.end(clock, id, FailureReason::HANDSHAKE_STALLED);
                return;
            }
            self.pending_order.push_back(id);
        }
    }

    /// Handles session events and queues what the session has to send.
    fn after_session(&mut self, clock: Clock, id: ConnId) {
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
                    credentials,
                    peer_info,
                    tls_version,
                    tls_ekm,
                    ..
                } => {
                    // Without a directory, a user name the client sends in its key-method
                    // record is a claim nothing checks, so it is not the user (AWS records
                    // "NA"); the identity is the certificate's. With one, the directory
                    // decides (below) before anything is admitted.
                    c.common_name = identity.common_name.clone();
                    c.serial = identity.serial.clone();
                    c.log = c.log.clone().with_common_name(identity.common_name.clone());
                    if let Some(platform) = &peer_info.platform {
                        c.log = c.log.clone().with_device_type(platform.clone());
                    }
                    // The cipher is settled now: the data keys (next event) need it.
                    let cipher_name = match negotiate_cipher(&self.config.ciphers, &peer_info) {
                        Ok(n) => n.to_string(),
                        Err(e) => {
                            warn!(conn = id, error = %e, "no common data cipher");
                            self.end(clock, id, FailureReason::NO_COMMON_CIPHER);
                            return;
                        }
                    };
                    c.cipher = Cipher::from_openvpn_name(&cipher_name);
                    let mut admission = Admission {
                        identity,
                        claimed_user: None,
                        resumed: None,
                        peer_info,
                        tls_version,
                        tls_ekm,
                        cipher_name,
                    };
                    if let Some(policy) = self.config.live.sso.clone() {
                        match self.web_sign_in(clock, id, &policy, credentials, &admission) {
                            Ok(WebStart::Resume { request, resumed }) => {
                                let Some(c) = self.conns.get_mut(&id) else {
                                    return;
                                };
                                admission.claimed_user = Some(request.username().to_string());
                                let authenticated_at = resumed_at(clock, resumed.issued_unix);
                                admission.resumed = Some(resumed);
                                c.state = ConnState::Authorizing {
                                    admission: Box::new(admission),
                                    authenticated_at,
                                    waiting: Waiting::Directory,
                                };
                                debug!(conn = id, user = %request.username(), "resuming a single sign-on session");
                                self.outputs
                                    .push_back(Output::Authenticate { conn: id, request });
                                continue;
                            }
                            Ok(WebStart::Browser(request)) => {
                                let Some(c) = self.conns.get_mut(&id) else {
                                    return;
                                };
                                let timeout = policy.sign_in_timeout.as_secs();
                                c.session.send_control(&if admission
                                    .peer_info
                                    .proto
                                    .auth_pending_kw()
                                {
                                    format!("AUTH_PENDING,timeout {timeout}")
                                } else {
                                    "AUTH_PENDING".to_string()
                                });
                                c.session.send_control(&format!(
                                    "INFO_PRE,WEB_AUTH::{}/s/{}",
                                    policy.sign_in_base, request.id
                                ));
                                c.state = ConnState::Authorizing {
                                    admission: Box::new(admission),
                                    authenticated_at: clock.now,
                                    waiting: Waiting::Web {
                                        until: clock.now + policy.sign_in_timeout,
                                    },
                                };
                                debug!(conn = id, "web sign-in started");
                                self.outputs.push_back(Output::Authenticate {
                                    conn: id,
                                    request: AuthRequest::WebSignIn(request),
                                });
                                continue;
                            }
                            Err(failure) => {
                                self.refuse_sign_in(clock, id, None, failure);
                                return;
                            }
                        }
                    }
                    if let Some(policy) = self.config.live.directory.clone() {
                        let source = c.remote_addr.ip();
                        let claimed = credentials.as_ref().map(|cr| cr.username.clone());
                        let crtext = admission.peer_info.sso("crtext");
                        let pending_kw = admission.peer_info.proto.auth_pending_kw();
                        match self.sign_in_request(clock, source, &policy, credentials, crtext) {
                            Ok(SignIn::AskCode { username, password }) => {
                                let Some(c) = self.conns.get_mut(&id) else {
                                    return;
                                };
                                admission.claimed_user = Some(username.clone());
                                let timeout = CODE_ANSWER_TIMEOUT.as_secs();
                                c.session.send_control(&if pending_kw {
                                    format!("AUTH_PENDING,timeout {timeout}")
                                } else {
                                    "AUTH_PENDING".to_string()
                                });
                                c.session
                                    .send_control(&format!("INFO_PRE,CR_TEXT:R,E:{CODE_PROMPT}"));
                                c.state = ConnState::Authorizing {
                                    admission: Box::new(admission),
                                    authenticated_at: clock.now,
                                    waiting: Waiting::Code {
                                        username,
                                        password,
                                        until: clock.now + CODE_ANSWER_TIMEOUT,
                                    },
                                };
                                debug!(conn = id, "asking the client for its MFA code (CR_TEXT)");
                                continue;
                            }
                            Ok(SignIn::Ask { request, resumed }) => {
                                let Some(c) = self.conns.get_mut(&id) else {
                                    return;
                                };
                                let authenticated_at = match &resumed {
                                    // A reconnect within the session: its timeout counts from
                                    // the first sign-in.
                                    Some(t) => resumed_at(clock, t.issued_unix),
                                    None => clock.now,
                                };
                                admission.claimed_user = Some(request.username().to_string());
                                admission.resumed = resumed;
                                c.state = ConnState::Authorizing {
                                    admission: Box::new(admission),
                                    authenticated_at,
                                    waiting: Waiting::Directory,
                                };
                                debug!(conn = id, user = %request.username(), "asking the directory");
                                self.outputs
                                    .push_back(Output::Authenticate { conn: id, request });
                                continue;
                            }
                            Err(failure) => {
                                self.refuse_sign_in(clock, id, claimed.as_deref(), failure);
                                return;
                            }
                        }
                    }
                    if let Some(handler) = self.config.live.connect_handler.clone() {
                        let request = connect_request(&self.config.endpoint_id, c, &admission);
                        c.state = ConnState::Authorizing {
                            admission: Box::new(admission),
                            authenticated_at: clock.now,
                            waiting: Waiting::ConnectHandler,
                        };
                        debug!(conn = id, "asking the client connect handler");
                        self.outputs.push_back(Output::AskConnectHandler {
                            conn: id,
                            handler,
                            request,
                        });
                        continue;
                    }
                    if !self.admit(clock, id, admission, clock.now) {
                        return;
                    }
                }
                Event::KeysReady {
                    key_id,
                    material,
                    credentials,
                } => {
                    // A directory user's renegotiation carries the auth-token: the new keys
                    // count only if it is this session's, and the account is checked again.
                    if key_id.get() != 0 && c.user.is_some() {
                        let now_unix = clock.unix().as_secs();
                        let valid = match (&c.user, &credentials) {
                            (Some(u), Some(cr)) => {
                                cr.username.eq_ignore_ascii_case(&u.username)
                                    && !self.revoked_sessions.contains_key(&u.token.session)
                                    && self
                                        .tokens
                                        .verify(cr.password.expose(), &u.username, now_unix)
                                        .is_ok_and(|t| t.session == u.token.session)
                            }
                            _ => false,
                        };
                        if !valid {
                            warn!(
                                conn = id,
                                "renegotiation without this session's auth-token: session ended"
                            );
                            self.halt(clock, id, AuthFailure::BadToken.reason());
                            return;
                        }
                        let sso = self.config.live.sso.is_some();
                        if let Some(u) = c.user.as_mut() {
                            if !u.checking {
                                u.checking = true;
                                self.outputs.push_back(Output::Authenticate {
                                    conn: id,
                                    request: u.recheck_request(sso),
                                });
                            }
                        }
                    }
                    let cipher = c.cipher.unwrap_or(Cipher::Aes256Gcm);
                    match DataChannel::from_ekm(
                        &material,
                        cipher,
                        Role::Server,
                        key_id.get(),
                        c.peer_id,
                    ) {
                        Ok(dc) => {
                            c.keys_at = clock.now;
                            c.rekey_pending = false;
                            c.rekey_failed_at = None;
                            c.activity.renegotiated();
                            let (sealer, opener) = dc.split();
                            self.outputs.push_back(Output::Keys {
                                conn: id,
                                peer_id: c.peer_id,
                                peer: c.peer,
                                opener: Box::new(opener),
                                sealer: Box::new(sealer),
                                activity: c.activity.clone(),
                            });
                            if key_id.get() != 0 {
                                info!(conn = id, key_id = key_id.get(), "renegotiated");
                            }
                        }
                        Err(e) => warn!(conn = id, error = %e, "data channel keys"),
                    }
                }
                Event::RenegotiationFailed { key_id, reason } => {
                    c.rekey_pending = false;
                    c.rekey_failed_at.get_or_insert(clock.now);
                    warn!(conn = id, key_id = key_id.get(), %reason, grace = ?RENEGOTIATION_GRACE,
                        "renegotiation failed; the session ends unless a new key is in place within the grace");
                }
                Event::Control(text) => {
                    if text.starts_with("PUSH_REQUEST") {
                        self.push(id);
                    } else if let Some(answer) = text.strip_prefix("CR_RESPONSE,") {
                        self.code_answered(clock, id, answer);
                    } else if text.starts_with("EXIT") {
                        self.end(clock, id, "client-exit");
                        return;
                    } else {
                        debug!(conn = id, %text, "control message ignored");
                    }
                }
                Event::Refused { reason } => {
                    warn!(conn = id, %reason, addr = %c.remote_addr, "handshake refused");
                    self.outputs.push_back(Output::Log(Box::new(
                        ConnectionLogEntry::attempt_failed(reason.as_str(), &c.log, clock.wall),
                    )));
                    self.flush(clock, id);
                    self.remove(id, &reason);
                    return;
                }
                Event::Flood { reason } => {
                    warn!(conn = id, addr = %c.remote_addr, common_name = %c.common_name, %reason,
                        "control channel flood: session ended");
                    self.end(clock, id, FailureReason::CONTROL_CHANNEL_FLOOD);
                    return;
                }
                Event::Gone => {
                    self.end(clock, id, FailureReason::PEER_GONE);
                    return;
                }
            }
        }
        self.flush(clock, id);
    }

    /// Gives an authenticated (and, with a connect handler, allowed) client its address and
    /// its configuration. False when the connection is gone.
    fn admit(&mut self, clock: Clock, id: ConnId, a: Admission, authenticated_at: Instant) -> bool {
        let allocated = self.pool.allocate();
        self.ask_for_addresses_if_low();
        let Some(addr) = allocated else {
            if let (BlockSupply::Claimed { asked: true }, Some(c)) =
                (self.blocks, self.conns.get_mut(&id))
            {
                // Another block is on its way: the client waits for it (a burst of connects
                // outruns the claim).
                c.state = ConnState::Authorizing {
                    admission: Box::new(a),
                    authenticated_at,
                    waiting: Waiting::Address {
                        until: clock.now + ADDRESS_BLOCK_WAIT,
                    },
                };
                // Still there: what its session has queued goes out.
                return true;
            }
            warn!(conn = id, "client address pool exhausted");
            self.refuse(
                clock,
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
        self.pending.done(c.handshake_source);
        c.log = c.log.clone().with_client_ip(addr);
        self.outputs.push_back(Output::Admitted {
            took: clock.now.saturating_duration_since(c.started),
            conn: id,
            peer_id: c.peer_id,
            peer: c.peer,
            client_ip: addr,
            groups: a.identity.groups.clone(),
            connection_id: c.log.connection_id.clone(),
            record: NewConnection {
                client_vpn_endpoint_id: self.config.endpoint_id.clone(),
                client_ip: addr,
                common_name: a.identity.common_name.clone(),
                username: c.user.as_ref().map(|u| u.username.clone()),
                device_ip: c.remote_addr.ip(),
                device_port: c.remote_addr.port(),
                transport_protocol: self.config.transport,
            },
        });
        self.outputs.push_back(Output::Log(Box::new(
            ConnectionLogEntry::attempt_succeeded(&c.log),
        )));
        let reply = PushReply {
            tunnel: if self.config.split_tunnel {
                Tunnel::Split(self.routes.clone())
            } else {
                Tunnel::Full
            },
            dns_servers: self.config.dns_servers.clone(),
            ping: Some(self.config.ping),
            ping_restart: Some(self.config.ping_restart),
            peer_id: Some(c.peer_id),
            cipher: Some(a.cipher_name.clone()),
            key_signalling: KeySignalling::for_client(a.peer_info.proto, a.tls_ekm),
            tun_mtu: Some(1500),
            extra: c
                .user
                .as_ref()
                .map(|u| auth_token_options(&self.tokens, u))
                .unwrap_or_default(),
            ..PushReply::new(addr, self.pool.netmask(), self.pool.gateway_addr())
        };
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

    /// Turns a directory endpoint's credentials into the check to ask for, or a refusal that
    /// needs no directory (missing or malformed credentials, a throttled name or address, an
    /// invalid auth-token).
    fn sign_in_request(
        &mut self,
        clock: Clock,
        source: IpAddr,
        policy: &DirectoryPolicy,
        credentials: Option<Credentials>,
        crtext: bool,
    ) -> Result<SignIn, AuthFailure> {
        let Some(Credentials { username, password }) = credentials else {
            return Err(AuthFailure::NoCredentials);
        };
        if username.is_empty() {
            return Err(AuthFailure::NoCredentials);
        }
        if username.len() > MAX_USERNAME || username.chars().any(char::is_control) {
            return Err(AuthFailure::UnknownUser);
        }
        if let Err(r) = self.throttle.check(clock.now, &username, source) {
            debug!(user = %username, %source, by = r.by, retry_after = ?r.retry_after, "sign-in throttled");
            return Err(AuthFailure::Throttled);
        }
        let secret = password.expose();
        if is_token(secret) {
            let claims = self
                .tokens
                .verify(secret, &username, clock.unix().as_secs())?;
            if self.revoked_sessions.contains_key(&claims.session) {
                return Err(AuthFailure::BadToken);
            }
            return Ok(SignIn::Ask {
                request: AuthRequest::Lookup { username },
                resumed: Some(claims),
            });
        }
        let (password, code) = match split_static_challenge(secret) {
            Ok(Some((p, code))) => (p, Some(code)),
            Ok(None) => (password, None),
            Err(_) => return Err(AuthFailure::MfaBadCode),
        };
        if password.is_empty() {
            return Err(AuthFailure::EmptyPassword);
        }
        if policy.mfa != MfaMode::None && code.is_none() && crtext {
            return Ok(SignIn::AskCode { username, password });
        }
        let code = match policy.mfa {
            MfaMode::None => None,
            _ => Some(
                code.filter(|c| !c.is_empty())
                    .ok_or(AuthFailure::MfaMissing)?
                    .expose()
                    .to_string(),
            ),
        };
        Ok(SignIn::Ask {
            request: AuthRequest::Login {
                username,
                password,
                code,
            },
            resumed: None,
        })
    }

    /// The client answered the `CR_TEXT` question (`CR_RESPONSE,<base64>`): the directory is
    /// asked with the password and the code. An answer nobody asked for is ignored.
    fn code_answered(&mut self, clock: Clock, id: ConnId, answer: &str) {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !matches!(
            c.state,
            ConnState::Authorizing {
                waiting: Waiting::Code { .. },
                ..
            }
        ) {
            debug!(conn = id, "CR_RESPONSE nobody asked for: ignored");
            return;
        }
        let ConnState::Authorizing {
            admission,
            authenticated_at,
            waiting: Waiting::Code {
                username, password, ..
            },
        } = std::mem::replace(&mut c.state, ConnState::Handshaking)
        else {
            return;
        };
        c.state = ConnState::Authorizing {
            admission,
            authenticated_at,
            waiting: Waiting::Directory,
        };
        // A code is a handful of digits: anything long or undecodable is a wrong code.
        let code = (answer.len() <= 256)
            .then(|| STANDARD.decode(answer.trim()).ok())
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        match code {
            Some(code) => {
                debug!(conn = id, user = %username, "asking the directory");
                self.outputs.push_back(Output::Authenticate {
                    conn: id,
                    request: AuthRequest::Login {
                        username,
                        password,
                        code: Some(code),
                    },
                });
            }
            None => self.refuse_sign_in(clock, id, Some(&username), AuthFailure::MfaBadCode),
        }
    }

    /// Refuses a directory sign-in: counted by the throttle when it was a guess (a burst is
    /// logged once), then refused like any other attempt.
    fn refuse_sign_in(
        &mut self,
        clock: Clock,
        id: ConnId,
        claimed: Option<&str>,
        failure: AuthFailure,
    ) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let source = c.remote_addr.ip();
        if let Some(user) = claimed.filter(|u| !u.is_empty()) {
            c.log = c.log.clone().with_username(user.to_string());
            if failure.is_guess() {
                for by in self.throttle.failed(clock.now, user, source) {
                    warn!(user, %source, by, "repeated failed sign-ins: further tries are slowed down");
                }
            }
        }
        info!(conn = id, user = claimed.unwrap_or(""), reason = failure.reason(), error = %failure, "sign-in refused");
        self.refuse(
            clock,
            id,
            failure.failure_reason(),
            Some(failure.client_message().to_string()),
        );
    }

    /// The directory (and MFA service) answered for connection `conn`: a sign-in, or a
    /// re-check of a connected user.
    pub fn handle_auth_answer(
        &mut self,
        clock: Clock,
        conn: ConnId,
        answer: Result<DirectoryUser, AuthFailure>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match &c.state {
            ConnState::Authorizing {
                waiting: Waiting::Directory | Waiting::Web { .. },
                ..
            } => self.finish_sign_in(clock, conn, answer),
            ConnState::Admitted { .. } if c.user.as_ref().is_some_and(|u| u.checking) => {
                self.finish_recheck(clock, conn, answer)
            }
            // Not waiting for an answer (a stale one): nothing changes.
            _ => {}
        }
    }

    fn finish_sign_in(
        &mut self,
        clock: Clock,
        conn: ConnId,
        answer: Result<DirectoryUser, AuthFailure>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let ConnState::Authorizing {
            admission,
            authenticated_at,
            ..
        } = std::mem::replace(&mut c.state, ConnState::Handshaking)
        else {
            return;
        };
        let claimed = admission.claimed_user.clone();
        let user = match answer {
            Ok(u) if u.groups.is_empty() => Err(AuthFailure::NotInAnyGroup),
            other => other,
        };
        let user = match user {
            Ok(u) => u,
            Err(f) => {
                c.state = ConnState::Authorizing {
                    admission,
                    authenticated_at,
                    waiting: Waiting::Directory,
                };
                self.refuse_sign_in(clock, conn, claimed.as_deref(), f);
                return;
            }
        };
        if let Some(name) = &claimed {
            self.throttle.succeeded(name);
        }
        let recheck = self.recheck_interval();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut admission = admission;
        let now_unix = clock.unix().as_secs();
        let token = admission.resumed.take().unwrap_or_else(|| TokenClaims {
            session: session_of(&c.log.connection_id).to_string(),
            issued_unix: now_unix,
            expires_unix: now_unix.saturating_add(
                self.config
                    .live
                    .session_timeout
                    .unwrap_or(TOKEN_LIFETIME_WITHOUT_TIMEOUT)
                    .as_secs(),
            ),
        });
        let certificate_groups = admission.identity.groups.clone();
        admission.identity.groups = merge_groups(&certificate_groups, &user.groups);
        c.log = c.log.clone().with_username(user.username.clone());
        info!(conn, user = %user.username, groups = ?user.groups,
            via = if self.config.live.sso.is_some() { "identity provider" } else { "directory" },
            "signed in");
        c.user = Some(SignedIn {
            username: user.username,
            certificate_groups,
            groups: user.groups,
            token,
            next_check: clock.now + recheck,
            checking: false,
        });
        if let Some(handler) = self.config.live.connect_handler.clone() {
            let request = connect_request(&self.config.endpoint_id, c, &admission);
            c.state = ConnState::Authorizing {
                admission,
                authenticated_at,
                waiting: Waiting::ConnectHandler,
            };
            self.outputs.push_back(Output::AskConnectHandler {
                conn,
                handler,
                request,
            });
            return;
        }
        if self.admit(clock, conn, *admission, authenticated_at) {
            self.flush(clock, conn);
        }
    }

    fn finish_recheck(
        &mut self,
        clock: Clock,
        conn: ConnId,
        answer: Result<DirectoryUser, AuthFailure>,
    ) {
        let recheck = self.recheck_interval();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(client_ip) = c.state.client_ip() else {
            return;
        };
        let Some(u) = c.user.as_mut() else {
            return;
        };
        u.checking = false;
        u.next_check = clock.now + recheck;
        let answer = match answer {
            Ok(d) if d.groups.is_empty() => Err(AuthFailure::NotInAnyGroup),
            other => other,
        };
        match answer {
            Ok(d) => {
                if d.groups != u.groups {
                    info!(conn, user = %u.username, from = ?u.groups, to = ?d.groups,
                        "the directory changed the user's groups: the session's access follows");
                    let groups = merge_groups(&u.certificate_groups, &d.groups);
                    u.groups = d.groups;
                    self.outputs.push_back(Output::GroupsChanged {
                        conn,
                        client_ip,
                        groups,
                    });
                }
            }
            Err(f) if f.ends_session() => {
                let session = u.token.session.clone();
                let expires = u.token.expires_unix;
                warn!(conn, user = %u.username, reason = f.reason(), "the directory no longer admits the user: session ended");
                self.revoke_session(session, expires);
                self.halt(clock, conn, f.reason());
            }
            Err(f) => {
                // The directory did not answer: the session keeps the access it has (ending
                // every session whenever the directory blinks would be worse), and the next
                // check comes after the usual interval.
                warn!(conn, user = %u.username, error = %f, "re-check failed: the session keeps its current access");
            }
        }
    }

    /// How often a directory or single sign-on user's account and groups are checked again.
    fn recheck_interval(&self) -> Duration {
        match (&self.config.live.sso, &self.config.live.directory) {
            (Some(p), _) => p.recheck,
            (None, Some(p)) => p.recheck,
            (None, None) => DEFAULT_RECHECK,
        }
    }

    /// A single sign-on endpoint's first step with a new client: a reconnect or renegotiation
    /// with this endpoint's auth-token resumes its session; any other client must be able to
    /// sign in through a browser. A user name and password the client sends otherwise are not
    /// an identity (a profile may carry placeholders so that clients without a certificate
    /// start at all) and are ignored.
    fn web_sign_in(
        &mut self,
        clock: Clock,
        id: ConnId,
        policy: &SsoPolicy,
        credentials: Option<Credentials>,
        admission: &Admission,
    ) -> Result<WebStart, AuthFailure> {
        let now_unix = clock.unix().as_secs();
        if let Some(Credentials { username, password }) = credentials {
            if is_token(password.expose()) {
                let claims = self.tokens.verify(password.expose(), &username, now_unix)?;
                if self.revoked_sessions.contains_key(&claims.session) {
                    return Err(AuthFailure::BadToken);
                }
                return Ok(WebStart::Resume {
                    request: AuthRequest::SsoSession {
                        username,
                        session: claims.session.clone(),
                    },
                    resumed: claims,
                });
            }
        }
        if !admission.peer_info.sso("webauth") {
            return Err(AuthFailure::WebSignInUnsupported);
        }
        let c = self.conns.get(&id).ok_or(AuthFailure::WebSignInTimedOut)?;
        let common_name = (!admission.identity.common_name.is_empty())
            .then(|| admission.identity.common_name.clone());
        Ok(WebStart::Browser(Box::new(WebSignIn {
            id: sign_in_id()
                .ok_or_else(|| AuthFailure::IdpUnreachable("no system randomness".into()))?,
            session: session_of(&c.log.connection_id).to_string(),
            connection_id: c.log.connection_id.clone(),
            client_addr: c.remote_addr,
            platform: admission.peer_info.platform.clone(),
            client_version: admission.peer_info.version.clone(),
            common_name,
            expires_unix: now_unix.saturating_add(policy.sign_in_timeout.as_secs()),
            session_expires_unix: now_unix.saturating_add(
                self.config
                    .live
                    .session_timeout
                    .unwrap_or(TOKEN_LIFETIME_WITHOUT_TIMEOUT)
                    .as_secs(),
            ),
        })))
    }

    /// Tokens of this session no longer count (until they would have expired).
    fn revoke_session(&mut self, session: String, expires_unix: u64) {
        if self.revoked_sessions.len() >= MAX_REVOKED_SESSIONS {
            if let Some(oldest) = self
                .revoked_sessions
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
            {
                self.revoked_sessions.remove(&oldest);
            }
        }
        self.revoked_sessions.insert(session, expires_unix);
    }

    /// The data plane could not take an admitted session: the connection ends.
    pub fn admission_failed(&mut self, clock: Clock, conn: ConnId) {
        self.end(clock, conn, FailureReason::INTERNAL_ERROR);
    }

    /// The connect handler answered for connection `conn`.
    pub fn handle_connect_answer(
        &mut self,
        clock: Clock,
        conn: ConnId,
        answer: Result<ConnectResponse, HandlerError>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let (admission, authenticated_at) =
            match std::mem::replace(&mut c.state, ConnState::Handshaking) {
                ConnState::Authorizing {
                    admission,
                    authenticated_at,
                    waiting: Waiting::ConnectHandler,
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
                if self.admit(clock, conn, *admission, authenticated_at) {
                    self.flush(clock, conn);
                }
            }
            Ok(r) => {
                info!(conn, common_name = %admission.identity.common_name, "the client connect handler denied the connection");
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
                self.refuse(clock, conn, reason, message);
            }
            Err(e) => {
                warn!(conn, error = %e, "client connect handler failed: connection refused (fails closed)");
                self.refuse(clock, conn, e.reason(), None);
            }
        }
    }

    /// Refuses an authenticated client: AUTH_FAILED (with `message` for the user; the client
    /// stops rather than retrying), a failed attempt in the connection log, state dropped.
    fn refuse(&mut self, clock: Clock, id: ConnId, reason: FailureReason, message: Option<String>) {
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
        let code = reason.code.clone();
        self.outputs
            .push_back(Output::Log(Box::new(ConnectionLogEntry::attempt_failed(
                reason, &c.log, clock.wall,
            ))));
        self.flush(clock, id);
        self.remove(id, &code);
    }

    fn push(&mut self, id: ConnId) {
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

    /// Queues what connection `id`'s session has to send.
    fn flush(&mut self, clock: Clock, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while let Some(packet) = c.session.poll_transmit(clock.now) {
            self.outputs.push_back(Output::Transmit {
                peer: c.peer,
                packet,
            });
        }
    }

    /// The data path saw an authenticated packet of `conn` from a new UDP address (NAT
    /// rebinding, roaming). True when the connection moves there; not onto an address another
    /// connection holds (a spoofed source must not take it over).
    pub fn handle_float(&mut self, conn: ConnId, peer: Peer) -> bool {
        let Peer::Udp(addr) = peer else {
            return false;
        };
        if self.by_peer.get(&peer).is_some_and(|&other| other != conn) {
            return false;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.state.client_ip().is_none() || c.peer == peer {
            return false;
        }
        info!(conn, from = %c.remote_addr, to = %addr, "client address changed");
        self.by_peer.remove(&c.peer);
        c.peer = peer;
        c.remote_addr = addr;
        self.by_peer.insert(peer, conn);
        true
    }

    /// The TCP connection of a peer closed.
    pub fn handle_tcp_closed(&mut self, clock: Clock, tcp: u64) {
        if let Some(id) = self.by_peer.get(&Peer::Tcp(tcp)).copied() {
            self.end(clock, id, FailureReason::TCP_CLOSED);
        }
    }

    /// The TCP connection of a peer had no admitted session in time and was closed.
    pub fn handle_tcp_deadline(&mut self, clock: Clock, tcp: u64) {
        if let Some(id) = self.by_peer.get(&Peer::Tcp(tcp)).copied() {
            self.end(clock, id, FailureReason::HANDSHAKE_TIMEOUT);
        }
    }

    pub fn handle_command(&mut self, clock: Clock, command: Command) {
        match command {
            Command::SetRoutes(routes) => self.routes = routes,
            Command::LiveSettings(live) => {
                info!(?live, "live settings changed");
                self.config.live = live;
            }
            Command::ReplaceTls {
                config,
                revoked_serials,
            } => {
                self.session_config = config;
                // Running sessions' renegotiations are checked against it too.
                for c in self.conns.values_mut() {
                    c.session.set_config(self.session_config.clone());
                }
                let revoked: Vec<ConnId> = self
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
                    self.halt(clock, id, "certificate-revoked");
                }
            }
            Command::Terminate {
                connection_ids,
                usernames,
            } => {
                let ids: Vec<ConnId> = self
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
                for cid in connection_ids {
                    let running = ids.iter().any(|id| {
                        self.conns
                            .get(id)
                            .is_some_and(|c| c.log.connection_id == cid)
                    });
                    if !running {
                        self.outputs
                            .push_back(Output::NotRunning { connection_id: cid });
                    }
                }
                for id in ids {
                    if let Some(u) = self.conns.get(&id).and_then(|c| c.user.as_ref()) {
                        let (session, expires) = (u.token.session.clone(), u.token.expires_unix);
                        self.revoke_session(session, expires);
                    }
                    self.halt(clock, id, "terminated");
                }
            }
        }
    }

    /// Tells the client to exit (HALT), then forgets it.
    fn halt(&mut self, clock: Clock, id: ConnId, reason: &str) {
        self.say_and_end(clock, id, "HALT", reason);
    }

    /// Sends `message` on the control channel, then ends the connection.
    fn say_and_end(&mut self, clock: Clock, id: ConnId, message: &str, reason: &str) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.session.send_control(message);
        }
        self.flush(clock, id);
        self.end(clock, id, reason);
    }

    /// Keepalive, session timeouts, renegotiation and the control channels' own timers.
    pub fn handle_timeout(&mut self, clock: Clock) {
        let now = clock.now;
        let keepalive = Duration::from_secs(u64::from(self.config.ping_restart) * 2);
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.after_session(clock, id);
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if let ConnState::Authorizing {
                waiting: Waiting::Code {
                    username, until, ..
                },
                ..
            } = &c.state
            {
                if now >= *until {
                    let username = username.clone();
                    self.refuse_sign_in(clock, id, Some(&username), AuthFailure::MfaMissing);
                    continue;
                }
            }
            if let ConnState::Authorizing {
                waiting: Waiting::Address { until },
                ..
            } = &c.state
            {
                if now >= *until {
                    warn!(conn = id, "no address block came in time: client refused");
                    self.refuse(
                        clock,
                        id,
                        FailureReason::new(FailureReason::ADDRESS_POOL_EXHAUSTED),
                        None,
                    );
                    continue;
                }
            }
            if let ConnState::Authorizing {
                waiting: Waiting::Web { until },
                ..
            } = &c.state
            {
                if now >= *until {
                    self.refuse_sign_in(clock, id, None, AuthFailure::WebSignInTimedOut);
                    continue;
                }
            }
            if c.session.is_established() && now.saturating_duration_since(c.last_rx()) > keepalive
            {
                self.end(clock, id, "keepalive-timeout");
                continue;
            }
            if c.rekey_failed_at
                .is_some_and(|at| now.saturating_duration_since(at) >= RENEGOTIATION_GRACE)
            {
                self.halt(clock, id, FailureReason::RENEGOTIATION_FAILED);
                continue;
            }
            let expired = match (self.config.live.session_timeout, c.state.authenticated_at()) {
                (Some(limit), Some(at)) => now.saturating_duration_since(at) >= limit,
                _ => false,
            };
            if expired {
                let message = if self.config.live.disconnect_on_session_timeout {
                    "HALT"
                } else {
                    "RESTART"
                };
                self.say_and_end(clock, id, message, "session-timeout");
                continue;
            }
            // Directory and single sign-on users: time to check the account and groups again.
            let sso = self.config.live.sso.is_some();
            if let Some(u) = c.user.as_mut() {
                if !u.checking && now >= u.next_check && c.state.client_ip().is_some() {
                    u.checking = true;
                    self.outputs.push_back(Output::Authenticate {
                        conn: id,
                        request: u.recheck_request(sso),
                    });
                }
            }
            // Renegotiate from our side: keys old enough, or packet ids running out.
            let exhausted = c.activity.packet_ids_running_out();
            let aged = self
                .config
                .reneg_after
                .is_some_and(|a| now.saturating_duration_since(c.keys_at) >= a);
            if (exhausted || aged) && !c.rekey_pending && c.session.active_key().is_some() {
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
                    Err(e) => {
                        // Tried again after another key lifetime (the deadline must move).
                        c.keys_at = now;
                        warn!(conn = id, error = %e, "cannot start renegotiation");
                    }
                }
            }
            self.flush(clock, id);
        }
    }

    /// Tells every client to reconnect (the daemon stops); [`Endpoint::close_all`] after a
    /// moment ends their connections.
    pub fn shutdown(&mut self, clock: Clock) {
        info!(
            clients = self.conns.len(),
            "shutting down: telling clients to reconnect"
        );
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.session.send_control("RESTART");
            }
            self.flush(clock, id);
        }
    }

    /// Ends every connection (each end goes to the log and the store).
    pub fn close_all(&mut self, clock: Clock) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.end(clock, id, FailureReason::SERVER_SHUTDOWN);
        }
    }

    /// Ends a connection. One that never got in gets a failed attempt with `reason` in the
    /// connection log; an admitted one's end is logged by the driver with the counters.
    fn end(&mut self, clock: Clock, id: ConnId, reason: &str) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let activity = &c.activity;
        info!(conn = id, common_name = %c.common_name, %reason,
            forged = activity.forged(), early = activity.early(), "disconnect");
        if c.state.client_ip().is_none() {
            self.outputs
                .push_back(Output::Log(Box::new(ConnectionLogEntry::attempt_failed(
                    reason, &c.log, clock.wall,
                ))));
        }
        self.remove(id, reason);
    }

    /// Forgets a connection: its peer, peer id, handshake place and address; the driver is
    /// told to forget its data path, data-plane session and TCP socket.
    fn remove(&mut self, id: ConnId, reason: &str) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        if self.by_peer.get(&c.peer) == Some(&id) {
            self.by_peer.remove(&c.peer);
        }
        self.peer_ids.release(c.peer_id);
        let client_ip = c.state.client_ip();
        match client_ip {
            Some(addr) => {
                self.pool.release(addr);
            }
            None => self.pending.done(c.handshake_source),
        }
        self.outputs.push_back(Output::Ended {
            conn: id,
            peer_id: c.peer_id,
            peer: c.peer,
            client_ip,
            info: Box::new(c.log),
            reason: reason.to_string(),
        });
    }
}

/// The connect handler's request for a connection (AWS's Lambda contract, v2).
fn connect_request(endpoint_id: &str, c: &Connection, a: &Admission) -> ConnectRequest {
    let or_na = |v: &Option<String>| v.clone().unwrap_or_else(|| "NA".into());
    ConnectRequest {
        connection_id: c.log.connection_id.clone(),
        endpoint_id: endpoint_id.to_string(),
        common_name: a.identity.common_name.clone(),
        username: c
            .user
            .as_ref()
            .map_or_else(|| "NA".into(), |u| u.username.clone()),
        platform: or_na(&a.peer_info.platform),
        platform_version: or_na(&a.peer_info.platform_version),
        public_ip: c.remote_addr.ip().to_string(),
        client_openvpn_version: or_na(&a.peer_info.version),
        groups: a.identity.groups.clone(),
        schema_version: "v2".into(),
    }
}

/// Longest user name taken from a client (longer ones are refused without a lookup).
const MAX_USERNAME: usize = 256;

/// The session's groups: the certificate's and the directory's, sorted, without duplicates.
fn merge_groups(certificate: &[String], directory: &[String]) -> Vec<String> {
    let mut all: Vec<String> = certificate.iter().chain(directory).cloned().collect();
    all.sort();
    all.dedup();
    all
}

/// `auth-token-user` and `auth-token` for a directory user's push.
fn auth_token_options(tokens: &TokenKey, u: &SignedIn) -> Vec<String> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    match tokens.issue(&u.username, &u.token) {
        Some(token) => vec![
            format!("auth-token-user {}", STANDARD.encode(u.username.as_bytes())),
            format!("auth-token {token}"),
        ],
        None => Vec::new(),
    }
}

/// A connection id in AWS's form: `cvpn-connection-` and 17 hex digits.
/// When a resumed session first signed in, on the monotonic clock (its session timeout counts
/// from there).
fn resumed_at(clock: Clock, issued_unix: u64) -> Instant {
    clock
        .now
        .checked_sub(Duration::from_secs(
            clock.unix().as_secs().saturating_sub(issued_unix),
        ))
        .unwrap_or(clock.now)
}

/// The secret of a web sign-in's short URL: 128 random bits, base64url (22 characters).
/// `None` without system randomness (no sign-in is safe then).
fn sign_in_id() -> Option<String> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

fn new_connection_id() -> String {
    use crate::model::ids::{new_id, CONNECTION_ID_PREFIX, ID_HEX_DIGITS};
    // Without system randomness the digits stay zero.
    new_id(CONNECTION_ID_PREFIX)
        .unwrap_or_else(|_| format!("{CONNECTION_ID_PREFIX}{}", "0".repeat(ID_HEX_DIGITS)))
}

#[cfg(test)]
mod tests;
