//! The control plane's storage: every resource of the model ([`crate::model`]: endpoints, target
//! networks, routes, authorization rules, connections, CRLs) in an embedded SQLite database, with
//! AWS Client VPN's rules, states and error codes.
//!
//! # Layout
//!
//! This file opens the store (data directory, modes, pragmas, migrations), runs transactions
//! (`write`, `read`), maps rows to the model's types and prunes; each resource's
//! calls are an `impl Store` block of their own: `endpoints.rs`, `networks.rs` (target network
//! associations), `routes.rs`, `rules.rs` (authorization rules), `policy_view.rs` (what the data
//! plane is told), `connections.rs`, `crl.rs`, `directories.rs`, `identity_providers.rs`,
//! `issued_certificates.rs` (the client CA key, the portal's certificates and downloads). `apply.rs` imports an endpoint file; the
//! resource types and validation rules are the model's ([`crate::model`]).
//!
//! # Durability
//!
//! One data directory (default [`DEFAULT_DATA_DIR`], 0700) holds the database file
//! [`DB_FILE_NAME`] (created 0600: it holds the servers' private keys). The database runs in WAL
//! mode with `synchronous = FULL` and foreign keys on:
//!
//! * every store call that changes anything is **one** SQLite transaction (`BEGIN IMMEDIATE` …
//!   `COMMIT`), so a daemon killed at any moment — even mid-call — restarts with each call either
//!   wholly applied or not at all, and serves the same endpoints;
//! * `FULL` rather than `NORMAL`: in WAL mode `NORMAL` is already consistent after a process
//!   kill, but may lose the last commits on power loss or a kernel crash. A call that returned
//!   success has been acted on (the data plane changed, the operator was told), so it must
//!   survive those too. The cost is one WAL fsync per call; the control plane writes rarely,
//!   and the one frequent writer, connection counters, is batched
//!   ([`Store::update_connections`]).
//!
//! The schema is versioned with `PRAGMA user_version` and migrated on open, one transaction per
//! migration (see [`schema`]).
//!
//! # Concurrency
//!
//! [`Store`] owns one SQLite connection behind a `Mutex`: every method takes `&self`, and a
//! `Store` is `Send + Sync`, to be shared (`Arc<Store>`) by the API handlers and the daemon.
//! Calls are serialized; each is short (no I/O other than the database's).
//!
//! # Secrets
//!
//! Server certificates, keys, client CAs and CRLs are stored as PEM text in the database, so the
//! daemon is self-contained (no files to keep next to it). [`Endpoint`] (what describe calls
//! return) carries the certificate but never the key; the daemon reads the key with
//! [`Store::endpoint_secrets`].
//!
//! # Time
//!
//! Times are whole seconds (UTC) from the store's clock ([`StoreOptions::clock`], the system
//! clock by default; tests substitute their own).

mod access_keys;
mod address_blocks;
pub mod apply;
pub mod client_tokens;
mod connections;
mod crl;
mod directories;
mod endpoints;
pub mod error;
mod identity_providers;
pub mod imported_certificates;
mod issued_certificates;
mod networks;
pub mod nodes;
mod policy_view;
mod routes;
mod rules;
pub mod schema;
pub mod security_groups;
pub mod sql;

/// re-export: the types live in model ([`crate::model`]); `storage::model::X` keeps working.
pub mod model {
    pub use super::ConnectionCounters;
    pub use crate::model::{ids::*, resources::*};
}
// re-export: the module lives in model
pub use crate::model::validate;

use std::fmt;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnet::Ipv4Net;
use rusqlite::TransactionBehavior;
use sql::{conversion_error, params, Db, OptionalExtension, Row};

use crate::model::policy::{self, Policy, TargetSpec};

/// re-export: the type lives in auth::issuer (what the portal hands a user).
pub use crate::auth::issuer::IssuedCertificate;
pub use access_keys::validate_access_key_id;
pub use apply::{apply_endpoint_config, config_key, ApplyReport, APPLIED_TAG_KEY};
pub use error::{codes, ApiError};
pub use issued_certificates::{
    MAX_LIVE_PORTAL_CERTIFICATES_PER_USER, MAX_PORTAL_CERTIFICATE_LIFETIME, SIGNED_CRL_VALIDITY,
};
// re-export: the types live in model
pub use crate::model::{ids::*, resources::*};

/// A connection's traffic counters as the store records them. re-export: the type lives in
/// model ([`crate::model::Counters`], the one counter type).
pub type ConnectionCounters = crate::model::Counters;

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cvpn";
/// The database file inside the data directory.
pub const DB_FILE_NAME: &str = "cvpn.db";
/// How long ended connections (and disassociated networks, deleted endpoints) stay visible by
/// default: 60 minutes, as AWS.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(60 * 60);

/// The store's source of the current time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// How to open a [`Store`].
#[derive(Clone)]
pub struct StoreOptions {
    /// The data directory (created 0700 if missing); the database is `cvpn.db` in it.
    pub data_dir: PathBuf,
    /// Limits.
    pub quotas: Quotas,
    /// How long ended connections, disassociated networks and deleted endpoints stay visible.
    pub retention: Duration,
    /// The current time.
    pub clock: Clock,
    /// Which client connect handlers endpoints may name (`[connect_handler]` of the daemon
    /// configuration): create and modify refuse others.
    pub handler_policy: HandlerPolicy,
    /// A shared PostgreSQL database instead of SQLite in the data directory (a cluster's
    /// nodes all name the same one).
    pub postgres: Option<PostgresOptions>,
    /// The node this store works for (the daemon's `node_name`): connections it records are
    /// that node's, and [`Store::close_stale_connections`] ends only those. None: a tool
    /// (`cvpn apply`) or a test.
    pub node: Option<String>,
}

/// Where the shared PostgreSQL database is, and how to talk to it.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user[:password]@host[:port]/dbname[?sslmode=disable|prefer|require]`.
    pub url: String,
    /// TLS settings (the roots the server's certificate must chain to); `None`: no TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &sql::redact(&self.url))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            quotas: Quotas::default(),
            retention: DEFAULT_RETENTION,
            clock: Arc::new(Timestamp::now),
            handler_policy: HandlerPolicy::default(),
            postgres: None,
            node: None,
        }
    }
}

impl StoreOptions {
    /// Defaults, with the data directory `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            data_dir: dir.into(),
            ..Default::default()
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("data_dir", &self.data_dir)
            .field("quotas", &self.quotas)
            .field("retention", &self.retention)
            .field("handler_policy", &self.handler_policy)
            .field("postgres", &self.postgres)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The PostgreSQL notification channel of configuration changes ([`Store::watch_changes`]).
const CHANGES_CHANNEL: &str = "cvpn_changes";

/// The control plane's database. See the [module documentation](self).
pub struct Store {
    backend: Backend,
    path: PathBuf,
    quotas: Quotas,
    retention_secs: i64,
    clock: Clock,
    handler_policy: HandlerPolicy,
    node: Option<String>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("quotas", &self.quotas)
            .field("retention_secs", &self.retention_secs)
            .finish_non_exhaustive()
    }
}

/// The database a [`Store`] runs on.
enum Backend {
    /// One SQLite connection, its calls serialized.
    Sqlite(Mutex<rusqlite::Connection>),
    /// A pool of connections to a PostgreSQL database that other nodes may share.
    Postgres(sql::PgPool),
}

// ---- row helpers --------------------------------------------------------------------------------

/// A text column parsed with `FromStr`.
fn col<T: FromStr>(r: &Row<'_>, i: usize) -> sql::Result<T>
where
    T::Err: fmt::Display,
{
    let s: String = r.get(i)?;
    s.parse()
        .map_err(|e: T::Err| conversion_error(i, format!("{s:?}: {e}")))
}

/// A nullable text column parsed with `FromStr`.
fn col_opt<T: FromStr>(r: &Row<'_>, i: usize) -> sql::Result<Option<T>>
where
    T::Err: fmt::Display,
{
    let s: Option<String> = r.get(i)?;
    s.map(|s| {
        s.parse()
            .map_err(|e: T::Err| conversion_error(i, format!("{s:?}: {e}")))
    })
    .transpose()
}

/// A text column holding one of a [`model`] enumeration's spellings.
fn col_enum<T>(r: &Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> sql::Result<T> {
    let s: String = r.get(i)?;
    parse(&s).ok_or_else(|| conversion_error(i, format!("unknown state {s:?}")))
}

fn ts(r: &Row<'_>, i: usize) -> sql::Result<Timestamp> {
    Ok(Timestamp(r.get(i)?))
}

fn ts_opt(r: &Row<'_>, i: usize) -> sql::Result<Option<Timestamp>> {
    Ok(r.get::<_, Option<i64>>(i)?.map(Timestamp))
}

fn u64_col(r: &Row<'_>, i: usize) -> sql::Result<u64> {
    Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0))
}

fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn target_id(seq: i64) -> sql::Result<u32> {
    u32::try_from(seq).map_err(|_| conversion_error(0, format!("target id {seq} exceeds u32")))
}

const ENDPOINT_COLS: &str = "id, state, client_cidr, transport, vpn_port, split_tunnel, \
    dns_servers, session_timeout_hours, disconnect_on_session_timeout, banner_enabled, \
    banner_text, connect_enabled, connect_handler, log_enabled, log_stdout, self_service_portal, \
    description, server_cert_pem, client_ca_pem, crl_entries, policy_revision, created_at, \
    deleted_at, directory_id, idp_id, client_ca_key_pem IS NOT NULL, \
    (SELECT count FROM portal_downloads d WHERE d.endpoint_id = endpoints.id)";

fn endpoint_row(r: &Row<'_>) -> sql::Result<Endpoint> {
    let dns: String = r.get(6)?;
    let dns_servers = dns
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Ipv4Addr>()
                .map_err(|e| conversion_error(6, format!("{s:?}: {e}")))
        })
        .collect::<sql::Result<Vec<_>>>()?;
    let vpn_port: i64 = r.get(4)?;
    let hours: i64 = r.get(7)?;
    Ok(Endpoint {
        client_vpn_endpoint_id: r.get(0)?,
        status: col_enum(r, 1, EndpointStatus::parse)?,
        client_cidr_block: col(r, 2)?,
        transport_protocol: col_enum(r, 3, TransportProtocol::parse)?,
        vpn_port: u16::try_from(vpn_port).map_err(|_| conversion_error(4, "port".into()))?,
        split_tunnel: r.get(5)?,
        dns_servers,
        session_timeout_hours: u8::try_from(hours)
            .map_err(|_| conversion_error(7, "session timeout".into()))?,
        disconnect_on_session_timeout: r.get(8)?,
        client_login_banner_options: ClientLoginBannerOptions {
            enabled: r.get(9)?,
            banner_text: r.get(10)?,
        },
        client_connect_options: ClientConnectOptions {
            enabled: r.get(11)?,
            handler: r.get(12)?,
        },
        connection_log_options: ConnectionLogOptions {
            enabled: r.get(13)?,
            stdout: r.get(14)?,
        },
        self_service_portal: r.get(15)?,
        description: r.get(16)?,
        server_certificate: r.get(17)?,
        authentication_options: authentication_options(r.get(18)?, r.get(23)?, r.get(24)?),
        crl_entries: u64_col(r, 19)?,
        client_ca_key_set: r.get(25)?,
        self_service_portal_downloads: r
            .get::<_, Option<i64>>(26)?
            .map_or(0, |n| u64::try_from(n).unwrap_or(0)),
        policy_revision: u64_col(r, 20)?,
        creation_time: ts(r, 21)?,
        deletion_time: ts_opt(r, 22)?,
        tags: Vec::new(),
        listener: None,
        self_service_portal_url: None,
    })
}

/// The options an endpoint row stands for: certificate authentication when it has a client
/// CA, directory authentication when it names a directory, federated authentication when it
/// names an identity provider.
fn authentication_options(
    client_ca: String,
    directory_id: Option<String>,
    idp_id: Option<String>,
) -> Vec<AuthenticationOption> {
    let mut opts = Vec::new();
    if !client_ca.is_empty() {
        opts.push(AuthenticationOption::CertificateAuthentication {
            client_root_certificate_chain: client_ca,
        });
    }
    if let Some(directory_id) = directory_id {
        opts.push(AuthenticationOption::DirectoryServiceAuthentication { directory_id });
    }
    if let Some(saml_provider_arn) = idp_id {
        opts.push(AuthenticationOption::FederatedAuthentication {
            saml_provider_arn,
            self_service_saml_provider_arn: None,
        });
    }
    opts
}

const ASSOC_COLS: &str = "seq, id, endpoint_id, interface, subnet, snat_address, state, \
    created_at, updated_at, node";

fn assoc_row(r: &Row<'_>) -> sql::Result<TargetNetwork> {
    Ok(TargetNetwork {
        target_id: target_id(r.get(0)?)?,
        association_id: r.get(1)?,
        client_vpn_endpoint_id: r.get(2)?,
        target_network_id: r.get(3)?,
        subnet_cidr: col_opt(r, 4)?,
        snat_address: col_opt(r, 5)?,
        status: col_enum(r, 6, AssociationStatus::parse)?,
        creation_time: ts(r, 7)?,
        update_time: ts(r, 8)?,
        node: r.get(9)?,
        security_group_ids: Vec::new(),
    })
}

const ROUTE_COLS: &str = "r.endpoint_id, r.destination, a.interface, a.id, a.seq, r.origin, \
    r.state, r.description, r.created_at, r.seq";
const ROUTE_FROM: &str = "routes r JOIN associations a ON a.seq = r.association_seq";

fn route_row(r: &Row<'_>) -> sql::Result<Route> {
    Ok(Route {
        client_vpn_endpoint_id: r.get(0)?,
        destination_cidr: col(r, 1)?,
        target_subnet: r.get(2)?,
        association_id: r.get(3)?,
        target_id: target_id(r.get(4)?)?,
        origin: col_enum(r, 5, RouteOrigin::parse)?,
        status: col_enum(r, 6, RouteStatus::parse)?,
        description: r.get(7)?,
        creation_time: ts(r, 8)?,
    })
}

const RULE_COLS: &str =
    "endpoint_id, destination, group_id, access_all, description, created_at, protocol, port_range";

fn rule_row(r: &Row<'_>) -> sql::Result<AuthorizationRule> {
    rule_row_at(r, 0)
}

/// A rule's columns ([`RULE_COLS`]) from column `at` on.
fn rule_row_at(r: &Row<'_>, at: usize) -> sql::Result<AuthorizationRule> {
    Ok(AuthorizationRule {
        client_vpn_endpoint_id: r.get(at)?,
        destination_cidr: col(r, at + 1)?,
        group_id: r.get(at + 2)?,
        access_all: r.get(at + 3)?,
        description: r.get(at + 4)?,
        creation_time: ts(r, at + 5)?,
        protocol: r.get(at + 6)?,
        port_range: r.get(at + 7)?,
    })
}

const CONN_COLS: &str = "id, endpoint_id, status, client_ip, common_name, username, device_ip, \
    device_port, transport, start_time, last_update_time, end_time, ingress_bytes, egress_bytes, \
    ingress_packets, egress_packets, node";

fn conn_row(r: &Row<'_>) -> sql::Result<Connection> {
    let port: i64 = r.get(7)?;
    Ok(Connection {
        connection_id: r.get(0)?,
        client_vpn_endpoint_id: r.get(1)?,
        status: col_enum(r, 2, ConnectionStatus::parse)?,
        client_ip: col(r, 3)?,
        common_name: r.get(4)?,
        username: r.get(5)?,
        device_ip: col(r, 6)?,
        port: u16::try_from(port).map_err(|_| conversion_error(7, "port".into()))?,
        transport_protocol: col_enum(r, 8, TransportProtocol::parse)?,
        connection_start_time: ts(r, 9)?,
        connection_last_update_time: ts(r, 10)?,
        connection_end_time: ts_opt(r, 11)?,
        ingress_bytes: u64_col(r, 12)?,
        egress_bytes: u64_col(r, 13)?,
        ingress_packets: u64_col(r, 14)?,
        egress_packets: u64_col(r, 15)?,
        node: r.get(16)?,
    })
}

/// Runs a query and collects its rows.
fn query<T>(
    db: &Db,
    sql: &str,
    params: impl sql::Params,
    f: impl FnMut(&Row<'_>) -> sql::Result<T>,
) -> Result<Vec<T>, ApiError> {
    Ok(db.query_all(sql, params, f)?)
}

fn endpoint_not_found(id: &str) -> ApiError {
    ApiError::new(
        codes::ENDPOINT_NOT_FOUND,
        format!("client-vpn-endpoint-id: endpoint {id} does not exist"),
    )
}

/// The endpoint `id` (format checked first), with its tags.
fn load_endpoint(db: &Db, id: &str) -> Result<Endpoint, ApiError> {
    validate::id("client-vpn-endpoint-id", ENDPOINT_ID_PREFIX, id)?;
    let mut ep = db
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = ?1"
        ))?
        .query_row([id], endpoint_row)
        .optional()?
        .ok_or_else(|| endpoint_not_found(id))?;
    ep.tags = load_tags(db, id)?;
    Ok(ep)
}

fn load_tags(db: &Db, id: &str) -> Result<Vec<Tag>, ApiError> {
    query(
        db,
        "SELECT key, value FROM endpoint_tags WHERE endpoint_id = ?1 ORDER BY position",
        [id],
        |r| {
            Ok(Tag {
                key: r.get(0)?,
                value: r.get(1)?,
            })
        },
    )
}

/// The endpoint, refusing one that is being deleted or deleted.
fn load_live_endpoint(db: &Db, id: &str) -> Result<Endpoint, ApiError> {
    let ep = load_endpoint(db, id)?;
    match ep.status {
        EndpointStatus::Deleting | EndpointStatus::Deleted => {
            Err(ApiError::incorrect_state(format!(
                "endpoint {id} is {}; it can no longer be changed",
                ep.status
            )))
        }
        _ => Ok(ep),
    }
}

fn bump_revision(db: &Db, endpoint_id: &str) -> Result<(), ApiError> {
    db.prepare_cached("UPDATE endpoints SET policy_revision = policy_revision + 1 WHERE id = ?1")?
        .execute([endpoint_id])?;
    Ok(())
}

fn live_associations(db: &Db, endpoint_id: &str) -> Result<Vec<TargetNetwork>, ApiError> {
    query(
        db,
        &format!(
            "SELECT {ASSOC_COLS} FROM associations \
             WHERE endpoint_id = ?1 AND state <> 'disassociated' ORDER BY seq"
        ),
        [endpoint_id],
        assoc_row,
    )
}

fn routes_of_association(db: &Db, seq: u32) -> Result<Vec<Route>, ApiError> {
    query(
        db,
        &format!(
            "SELECT {ROUTE_COLS} FROM {ROUTE_FROM} WHERE r.association_seq = ?1 ORDER BY r.seq"
        ),
        [seq],
        route_row,
    )
}

/// Marks every active connection of the endpoint `terminating`; returns their ids.
fn terminate_all(db: &Db, endpoint_id: &str) -> Result<Vec<String>, ApiError> {
    let ids = query(
        db,
        "SELECT id FROM connections WHERE endpoint_id = ?1 AND status = 'active' ORDER BY seq",
        [endpoint_id],
        |r| r.get(0),
    )?;
    db.prepare_cached(
        "UPDATE connections SET status = 'terminating' WHERE endpoint_id = ?1 AND status = 'active'",
    )?
    .execute([endpoint_id])?;
    Ok(ids)
}

fn insert_associate_route(
    db: &Db,
    endpoint_id: &str,
    subnet: &Ipv4Net,
    seq: u32,
    now: Timestamp,
) -> Result<(), ApiError> {
    db.prepare_cached(
        "INSERT INTO routes (endpoint_id, destination, association_seq, origin, state, \
         description, created_at) VALUES (?1, ?2, ?3, 'associate', 'active', ?4, ?5)",
    )?
    .execute(params![
        endpoint_id,
        subnet.to_string(),
        seq,
        "route for the target network's own subnet",
        now.0
    ])?;
    Ok(())
}

fn find_route(
    db: &Db,
    endpoint_id: &str,
    dest: &Ipv4Net,
    seq: u32,
) -> Result<Option<Route>, ApiError> {
    Ok(query(
        db,
        &format!(
            "SELECT {ROUTE_COLS} FROM {ROUTE_FROM} \
             WHERE r.endpoint_id = ?1 AND r.destination = ?2 AND r.association_seq = ?3"
        ),
        params![endpoint_id, dest.to_string(), seq],
        route_row,
    )?
    .into_iter()
    .next())
}

// ---- the store ----------------------------------------------------------------------------------

/// Gives the data directory mode 0700 and the database files (`cvpn.db`, its `-wal` and `-shm`)
/// mode 0600 where they have another. Returns one sentence per change made (the caller logs
/// them); `Err` says which file could not be fixed.
pub fn enforce_private_modes(dir: &Path) -> Result<Vec<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut fixed = Vec::new();
    let mut enforce = |path: &Path, want: u32, what: &str| -> Result<(), String> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode != want {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(want)).map_err(|e| {
                format!(
                    "{} has mode {mode:04o} and cannot be made {want:04o}: {e}; run chmod {want:o} {} as its owner",
                    path.display(),
                    path.display()
                )
            })?;
            fixed.push(format!(
                "{} ({what}) had mode {mode:04o}, readable or writable by others than the daemon; set to {want:04o}",
                path.display()
            ));
        }
        Ok(())
    };
    enforce(dir, 0o700, "data directory")?;
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.join(format!("{DB_FILE_NAME}{suffix}"));
        enforce(&file, 0o600, "database file")?;
    }
    Ok(fixed)
}

impl Store {
    /// Opens the store: PostgreSQL when `options.postgres` names a database, else SQLite in
    /// `options.data_dir` (see [`Store::open_sqlite`]). Pending migrations are applied either
    /// way.
    pub fn open(options: StoreOptions) -> Result<Store, ApiError> {
        match options.postgres.clone() {
            Some(pg) => Self::open_postgres(pg, options),
            None => Self::open_sqlite(options),
        }
    }

    /// Opens (creating if needed) the database in `options.data_dir`, enforces the modes of the
    /// directory (0700) and the database files (0600; see [`enforce_private_modes`]), sets WAL
    /// mode, FULL synchronous, foreign keys and secure delete, and applies pending migrations.
    fn open_sqlite(options: StoreOptions) -> Result<Store, ApiError> {
        let dir = &options.data_dir;
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    ApiError::internal(format!(
                        "cannot create data directory {}: {e}",
                        dir.display()
                    ))
                })?;
        }
        let path = dir.join(DB_FILE_NAME);
        // The directory and the database files hold the servers' private keys: whatever made
        // them readable to others (a copy, a restore, an operator's chmod) is undone at every
        // start, and said.
        for fixed in enforce_private_modes(dir).map_err(ApiError::internal)? {
            tracing::warn!("{fixed}");
        }
        // Create the file 0600 ourselves: SQLite would use 0644, and it gives the WAL and
        // shared-memory files the database file's mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", path.display())))?;
        let at =
            |e: rusqlite::Error| ApiError::internal(format!("database {}: {e}", path.display()));
        let mut db = rusqlite::Connection::open(&path).map_err(at)?;
        db.busy_timeout(Duration::from_secs(5)).map_err(at)?;
        let mode: String = db
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(at)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ApiError::internal(format!(
                "database {}: cannot switch to WAL mode (journal_mode is {mode})",
                path.display()
            )));
        }
        db.pragma_update(None, "synchronous", "FULL").map_err(at)?;
        db.pragma_update(None, "foreign_keys", "ON").map_err(at)?;
        // Deleted and overwritten content (a deleted endpoint's private key, a replaced one) is
        // zeroed in the file rather than left in free space. Per connection, so at every open.
        let scrub: i64 = db
            .pragma_update_and_check(None, "secure_delete", "ON", |r| r.get(0))
            .map_err(at)?;
        if scrub != 1 {
            return Err(ApiError::internal(format!(
                "database {}: cannot turn on secure_delete (SQLite answered {scrub})",
                path.display()
            )));
        }
        schema::migrate_sqlite(&mut db).map_err(|e| {
            ApiError::internal(format!("database {}: {}", path.display(), e.message))
        })?;
        Ok(Store {
            backend: Backend::Sqlite(Mutex::new(db)),
            path,
            quotas: options.quotas,
            retention_secs: i64::try_from(options.retention.as_secs()).unwrap_or(i64::MAX),
            clock: options.clock,
            handler_policy: options.handler_policy,
            node: options.node,
        })
    }

    /// Connects to the PostgreSQL database (checking that it answers) and applies pending
    /// migrations, serialized with other nodes starting at the same time.
    fn open_postgres(pg: PostgresOptions, options: StoreOptions) -> Result<Store, ApiError> {
        let tls = match pg.tls {
            Some(config) => sql::PgTls::Rustls(config),
            None => sql::PgTls::None,
        };
        let pool = sql::PgPool::connect(&pg.url, tls)
            .map_err(|e| ApiError::new(codes::SERVICE_UNAVAILABLE, e))?;
        schema::migrate_postgres(&pool)?;
        Ok(Store {
            path: PathBuf::from(pool.target()),
            backend: Backend::Postgres(pool),
            quotas: options.quotas,
            retention_secs: i64::try_from(options.retention.as_secs()).unwrap_or(i64::MAX),
            clock: options.clock,
            handler_policy: options.handler_policy,
            node: options.node,
        })
    }

    /// The SQLite database file; `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match self.backend {
            Backend::Sqlite(_) => Some(&self.path),
            Backend::Postgres(_) => None,
        }
    }

    /// Where the data lives, for messages: the SQLite file, or the PostgreSQL URL without its
    /// password.
    pub fn location(&self) -> String {
        self.path.display().to_string()
    }

    /// The PostgreSQL pool, for tests that need a raw transaction.
    #[cfg(test)]
    pub(crate) fn pg_pool(&self) -> Option<&sql::PgPool> {
        match &self.backend {
            Backend::Postgres(p) => Some(p),
            Backend::Sqlite(_) => None,
        }
    }

    /// Whether the store is a PostgreSQL database (that other nodes may share).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The client connect handlers endpoints may name.
    pub fn handler_policy(&self) -> &HandlerPolicy {
        &self.handler_policy
    }

    /// The quotas in force.
    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<u32, ApiError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                Ok(lock(db).pragma_query_value(None, "user_version", |r| r.get(0))?)
            }
            Backend::Postgres(pool) => schema::postgres_version(pool),
        }
    }

    /// Whether deleted content is zeroed in the database file (`PRAGMA secure_delete`; on
    /// from [`Store::open`]). PostgreSQL has no such setting: `false` there (its dead rows stay
    /// until `VACUUM`; protect the database's disk instead).
    pub fn secure_delete(&self) -> Result<bool, ApiError> {
        match &self.backend {
            Backend::Sqlite(db) => Ok(lock(db)
                .pragma_query_value(None, "secure_delete", |r| r.get::<_, i64>(0))?
                == 1),
            Backend::Postgres(_) => Ok(false),
        }
    }

    /// SQLite's `PRAGMA integrity_check`: `"ok"` for a sound database, else the problems.
    /// PostgreSQL checks its own pages as it reads them: `"ok"` there.
    pub fn integrity_check(&self) -> Result<String, ApiError> {
        match &self.backend {
            Backend::Sqlite(_) => self.read(|db| {
                let lines: Vec<String> = query(db, "PRAGMA integrity_check", (), |r| r.get(0))?;
                Ok(lines.join("\n"))
            }),
            Backend::Postgres(_) => Ok("ok".into()),
        }
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// A configuration change: [`Store::record`] that also increments the change counter in
    /// the same transaction, so every node watching [`Store::change_seq`] learns of it.
    fn write<T>(
        &self,
        mut f: impl FnMut(&Db, Timestamp) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.record(|db, now| {
            let out = f(db, now)?;
            db.prepare_cached("UPDATE changes SET seq = seq + 1 WHERE one = 1")?
                .execute(())?;
            if db.is_postgres() {
                // Delivered to every listening node when (and only if) this commits.
                db.batch(&format!("NOTIFY {CHANGES_CHANNEL}"))?;
            }
            Ok(out)
        })
    }

    /// On PostgreSQL, notice of configuration changes as they commit (through any node's API
    /// or a tool): [`sql::Notice::Notified`] for each (several may collapse into one), and
    /// [`sql::Notice::Listening`] whenever the listening connection is (re)made, since changes
    /// may have been missed before it. `None` on SQLite (one node: its own API's changes are
    /// the only ones, besides `cvpn apply` with SIGHUP).
    pub fn watch_changes(&self) -> Option<tokio::sync::mpsc::Receiver<sql::Notice>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(pool) => Some(pool.listen(CHANGES_CHANNEL)),
        }
    }

    /// The change counter: it moves whenever the configuration changes (through any node's
    /// API or a tool). A daemon on a shared database polls it and resynchronises when it moves.
    pub fn change_seq(&self) -> Result<i64, ApiError> {
        self.read(|db| {
            Ok(db
                .prepare_cached("SELECT seq FROM changes WHERE one = 1")?
                .query_row((), |r| r.get(0))?)
        })
    }

    /// Runs `f` in one write transaction, committed if `f` succeeds and rolled back otherwise,
    /// without noting a configuration change (connection records, heartbeats, housekeeping).
    /// SQLite: `BEGIN IMMEDIATE` (writers queue). PostgreSQL: `SERIALIZABLE`, and `f` runs again
    /// when a concurrent transaction (another node's) wins a conflict, so `f` must be
    /// repeatable: it only reads and writes through `db`.
    fn record<T>(
        &self,
        mut f: impl FnMut(&Db, Timestamp) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let now = self.now();
        match &self.backend {
            Backend::Sqlite(db) => {
                let mut db = lock(db);
                let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&Db::sqlite(&tx), now)?;
                tx.commit()?;
                Ok(out)
            }
            Backend::Postgres(pool) => pool.transaction(
                "BEGIN ISOLATION LEVEL SERIALIZABLE",
                sql::PG_WRITE_ATTEMPTS,
                |db| f(db, now),
            ),
        }
    }

    /// Runs `f` in one read transaction (a consistent snapshot).
    fn read<T>(&self, mut f: impl FnMut(&Db) -> Result<T, ApiError>) -> Result<T, ApiError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let mut db = lock(db);
                let tx = db.transaction_with_behavior(TransactionBehavior::Deferred)?;
                let out = f(&Db::sqlite(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Backend::Postgres(pool) => {
                pool.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 1, |db| {
                    f(db)
                })
            }
        }
    }

    // ---- housekeeping -----------------------------------------------------------------------------

    /// Removes what is past the retention period: ended connections, disassociated
    /// associations, deleted endpoints.
    pub fn prune(&self) -> Result<PruneReport, ApiError> {
        let before = self.now().0.saturating_sub(self.retention_secs);
        self.record(|db, _now| {
            let connections = db.execute(
                "DELETE FROM connections WHERE end_time IS NOT NULL AND end_time < ?1",
                [before],
            )?;
            let associations = db.execute(
                "DELETE FROM associations WHERE state = 'disassociated' AND updated_at < ?1",
                [before],
            )?;
            let endpoints = db.execute(
                "DELETE FROM endpoints WHERE state = 'deleted' AND deleted_at < ?1",
                [before],
            )?;
            Ok(PruneReport {
                connections,
                associations,
                endpoints,
            })
        })
    }
}

#[cfg(test)]
impl Store {
    /// The SQLite connection, for tests of SQLite's own behaviour (pragmas, files).
    fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        match &self.backend {
            Backend::Sqlite(db) => lock(db),
            Backend::Postgres(_) => panic!("a test of SQLite's files ran on PostgreSQL"),
        }
    }
}

fn lock(db: &Mutex<rusqlite::Connection>) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
    // A panic while holding the lock cannot leave a half-done transaction behind (the
    // transaction rolls back when dropped), so a poisoned lock is safe to reuse.
    db.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
