//! The control plane's model and storage: every resource of DESIGN.md §2 in an embedded SQLite
//! database, with AWS Client VPN's rules, states and error codes.
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

pub mod apply;
pub mod error;
pub mod schema;

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
use rusqlite::{params, Connection as Db, OptionalExtension, Row, TransactionBehavior};

use crate::model::policy::{self, Policy, TargetSpec};

pub use apply::{apply_endpoint_config, config_key, ApplyReport, APPLIED_TAG_KEY};
pub use error::{codes, ApiError};
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            quotas: Quotas::default(),
            retention: DEFAULT_RETENTION,
            clock: Arc::new(Timestamp::now),
            handler_policy: HandlerPolicy::default(),
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
            .finish_non_exhaustive()
    }
}

/// The control plane's database. See the [module documentation](self).
pub struct Store {
    db: Mutex<Db>,
    path: PathBuf,
    quotas: Quotas,
    retention_secs: i64,
    clock: Clock,
    handler_policy: HandlerPolicy,
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

// ---- row helpers --------------------------------------------------------------------------------

fn conversion_error(i: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, msg.into())
}

/// A text column parsed with `FromStr`.
fn col<T: FromStr>(r: &Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T::Err: fmt::Display,
{
    let s: String = r.get(i)?;
    s.parse()
        .map_err(|e: T::Err| conversion_error(i, format!("{s:?}: {e}")))
}

/// A nullable text column parsed with `FromStr`.
fn col_opt<T: FromStr>(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<T>>
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
fn col_enum<T>(r: &Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    parse(&s).ok_or_else(|| conversion_error(i, format!("unknown state {s:?}")))
}

fn ts(r: &Row<'_>, i: usize) -> rusqlite::Result<Timestamp> {
    Ok(Timestamp(r.get(i)?))
}

fn ts_opt(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(r.get::<_, Option<i64>>(i)?.map(Timestamp))
}

fn u64_col(r: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0))
}

fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn target_id(seq: i64) -> rusqlite::Result<u32> {
    u32::try_from(seq).map_err(|_| conversion_error(0, format!("target id {seq} exceeds u32")))
}

const ENDPOINT_COLS: &str = "id, state, client_cidr, transport, vpn_port, split_tunnel, \
    dns_servers, session_timeout_hours, disconnect_on_session_timeout, banner_enabled, \
    banner_text, connect_enabled, connect_handler, log_enabled, log_stdout, self_service_portal, \
    description, server_cert_pem, client_ca_pem, crl_entries, policy_revision, created_at, \
    deleted_at";

fn endpoint_row(r: &Row<'_>) -> rusqlite::Result<Endpoint> {
    let dns: String = r.get(6)?;
    let dns_servers = dns
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Ipv4Addr>()
                .map_err(|e| conversion_error(6, format!("{s:?}: {e}")))
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
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
        authentication_options: vec![AuthenticationOption::CertificateAuthentication {
            client_root_certificate_chain: r.get(18)?,
        }],
        crl_entries: u64_col(r, 19)?,
        policy_revision: u64_col(r, 20)?,
        creation_time: ts(r, 21)?,
        deletion_time: ts_opt(r, 22)?,
        tags: Vec::new(),
        listener: None,
    })
}

const ASSOC_COLS: &str = "seq, id, endpoint_id, interface, subnet, snat_address, state, \
    created_at, updated_at";

fn assoc_row(r: &Row<'_>) -> rusqlite::Result<TargetNetwork> {
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
    })
}

const ROUTE_COLS: &str = "r.endpoint_id, r.destination, a.interface, a.id, a.seq, r.origin, \
    r.state, r.description, r.created_at, r.seq";
const ROUTE_FROM: &str = "routes r JOIN associations a ON a.seq = r.association_seq";

fn route_row(r: &Row<'_>) -> rusqlite::Result<Route> {
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

const RULE_COLS: &str = "endpoint_id, destination, group_id, access_all, description, created_at";

fn rule_row(r: &Row<'_>) -> rusqlite::Result<AuthorizationRule> {
    Ok(AuthorizationRule {
        client_vpn_endpoint_id: r.get(0)?,
        destination_cidr: col(r, 1)?,
        group_id: r.get(2)?,
        access_all: r.get(3)?,
        description: r.get(4)?,
        creation_time: ts(r, 5)?,
    })
}

const CONN_COLS: &str = "id, endpoint_id, status, client_ip, common_name, username, device_ip, \
    device_port, transport, start_time, last_update_time, end_time, ingress_bytes, egress_bytes, \
    ingress_packets, egress_packets";

fn conn_row(r: &Row<'_>) -> rusqlite::Result<Connection> {
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
    })
}

/// Runs a query and collects its rows.
fn query<T>(
    db: &Db,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, ApiError> {
    let mut stmt = db.prepare_cached(sql)?;
    let rows = stmt.query_map(params, f)?;
    Ok(rows.collect::<rusqlite::Result<Vec<T>>>()?)
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

/// A connection that has not ended (active or terminating); `IncorrectState` otherwise.
fn load_live_connection(db: &Db, id: &str) -> Result<Connection, ApiError> {
    let c = load_connection(db, id)?;
    if !matches!(
        c.status,
        ConnectionStatus::Active | ConnectionStatus::Terminating
    ) {
        return Err(ApiError::incorrect_state(format!(
            "connection {id} is already {}",
            c.status
        )));
    }
    Ok(c)
}

fn load_connection(db: &Db, id: &str) -> Result<Connection, ApiError> {
    validate::id("connection-id", CONNECTION_ID_PREFIX, id)?;
    db.prepare_cached(&format!(
        "SELECT {CONN_COLS} FROM connections WHERE id = ?1"
    ))?
    .query_row([id], conn_row)
    .optional()?
    .ok_or_else(|| {
        ApiError::new(
            codes::CONNECTION_NOT_FOUND,
            format!("connection-id: connection {id} does not exist"),
        )
    })
}

fn dns_text(list: &[Ipv4Addr]) -> String {
    list.iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn write_tags(db: &Db, id: &str, tags: &[Tag]) -> Result<(), ApiError> {
    db.prepare_cached("DELETE FROM endpoint_tags WHERE endpoint_id = ?1")?
        .execute([id])?;
    let mut ins = db.prepare_cached(
        "INSERT INTO endpoint_tags (endpoint_id, position, key, value) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (i, t) in tags.iter().enumerate() {
        ins.execute(params![
            id,
            i64::try_from(i).unwrap_or(i64::MAX),
            t.key,
            t.value
        ])?;
    }
    Ok(())
}

/// Parses the access part of an authorize/revoke request.
fn access_of(
    group: Option<&str>,
    all: Option<bool>,
    all_field: &str,
) -> Result<policy::Access, ApiError> {
    match (group, all.unwrap_or(false)) {
        (Some(_), true) => Err(ApiError::combination(format!(
            "give either access-group-id or {all_field} = true, not both"
        ))),
        (None, false) => Err(ApiError::missing(
            "access-group-id",
            format!("give access-group-id or {all_field} = true"),
        )),
        (Some(g), false) => Ok(policy::Access::Group(validate::group(
            "access-group-id",
            g,
        )?)),
        (None, true) => Ok(policy::Access::AllGroups),
    }
}

fn group_param(access: &policy::Access) -> (Option<&str>, bool) {
    match access {
        policy::Access::AllGroups => (None, true),
        policy::Access::Group(g) => (Some(g.as_str()), false),
    }
}

fn access_text(access: &policy::Access) -> String {
    match access {
        policy::Access::AllGroups => "all groups".to_string(),
        policy::Access::Group(g) => format!("group {g:?}"),
    }
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
    /// Opens (creating if needed) the database in `options.data_dir`, enforces the modes of the
    /// directory (0700) and the database files (0600; see [`enforce_private_modes`]), sets WAL
    /// mode, FULL synchronous, foreign keys and secure delete, and applies pending migrations.
    pub fn open(options: StoreOptions) -> Result<Store, ApiError> {
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
        let mut db = Db::open(&path).map_err(at)?;
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
        migrate(&mut db).map_err(|e| {
            ApiError::internal(format!("database {}: {}", path.display(), e.message))
        })?;
        Ok(Store {
            db: Mutex::new(db),
            path,
            quotas: options.quotas,
            retention_secs: i64::try_from(options.retention.as_secs()).unwrap_or(i64::MAX),
            clock: options.clock,
            handler_policy: options.handler_policy,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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
        self.read(|db| Ok(db.pragma_query_value(None, "user_version", |r| r.get(0))?))
    }

    /// Whether deleted content is zeroed in the database file (`PRAGMA secure_delete`; on
    /// from [`Store::open`]).
    pub fn secure_delete(&self) -> Result<bool, ApiError> {
        self.read(|db| {
            Ok(db.pragma_query_value(None, "secure_delete", |r| r.get::<_, i64>(0))? == 1)
        })
    }

    /// SQLite's `PRAGMA integrity_check`: `"ok"` for a sound database, else the problems.
    pub fn integrity_check(&self) -> Result<String, ApiError> {
        self.read(|db| {
            let lines: Vec<String> = query(db, "PRAGMA integrity_check", [], |r| r.get(0))?;
            Ok(lines.join("\n"))
        })
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Db> {
        // A panic while holding the lock cannot leave a half-done transaction behind (the
        // transaction rolls back when dropped), so a poisoned lock is safe to reuse.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`), committed if `f` succeeds and
    /// rolled back otherwise.
    fn write<T>(
        &self,
        f: impl FnOnce(&Db, Timestamp) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let now = self.now();
        let mut db = self.lock();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx, now)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in one read transaction (a consistent snapshot).
    fn read<T>(&self, f: impl FnOnce(&Db) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut db = self.lock();
        let tx = db.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    // ---- endpoints ------------------------------------------------------------------------------

    /// Creates an endpoint (`pending-associate`). Validates every field; see
    /// [`CreateEndpointRequest`] for the rules and defaults.
    pub fn create_endpoint(&self, req: &CreateEndpointRequest) -> Result<Endpoint, ApiError> {
        let cidr_text = req.client_cidr_block.as_deref().ok_or_else(|| {
            ApiError::missing("client-cidr-block", "required (e.g. \"10.2.0.0/22\")")
        })?;
        let client_cidr = validate::client_cidr("client-cidr-block", cidr_text)?;
        let cert = req.server_certificate.as_deref().ok_or_else(|| {
            ApiError::missing("server-certificate", "required (PEM certificate chain)")
        })?;
        let key = req
            .server_private_key
            .as_deref()
            .ok_or_else(|| ApiError::missing("server-private-key", "required (PEM private key)"))?;
        validate::server_identity("server-certificate", cert, "server-private-key", key)?;
        let client_ca = validate::authentication_options(
            "authentication-options",
            &req.authentication_options,
        )?;
        let transport = match req.transport_protocol.as_deref() {
            None => TransportProtocol::Udp,
            Some(s) => validate::transport("transport-protocol", s)?,
        };
        let port = match req.vpn_port {
            None => DEFAULT_PORT,
            Some(n) => validate::port("vpn-port", n)?,
        };
        let dns = validate::dns_servers("dns-servers", req.dns_servers.as_deref().unwrap_or(&[]))?;
        let hours = match req.session_timeout_hours {
            None => DEFAULT_SESSION_TIMEOUT_HOURS,
            Some(n) => validate::session_timeout("session-timeout-hours", n)?,
        };
        let banner = validate::banner(
            "client-login-banner-options",
            &req.client_login_banner_options.clone().unwrap_or_default(),
        )?;
        let connect = validate::client_connect(
            "client-connect-options",
            &req.client_connect_options.clone().unwrap_or_default(),
            &self.handler_policy,
        )?;
        let log = req.connection_log_options.clone().unwrap_or_default();
        let portal = validate::self_service_portal(
            "self-service-portal",
            req.self_service_portal.unwrap_or(false),
        )?;
        let description = validate::description("description", req.description.as_deref())?;
        let tags = validate::tags("tags", &req.tags)?;
        let id = new_id(ENDPOINT_ID_PREFIX)?;
        self.write(|db, now| {
            db.prepare_cached(
                "INSERT INTO endpoints (id, state, client_cidr, transport, vpn_port, split_tunnel, \
                 dns_servers, session_timeout_hours, disconnect_on_session_timeout, \
                 banner_enabled, banner_text, connect_enabled, connect_handler, log_enabled, \
                 log_stdout, self_service_portal, description, server_cert_pem, server_key_pem, \
                 client_ca_pem, created_at) VALUES (?1, 'pending-associate', ?2, ?3, ?4, ?5, ?6, \
                 ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            )?
            .execute(params![
                id,
                client_cidr.to_string(),
                transport.as_str(),
                port,
                req.split_tunnel.unwrap_or(false),
                dns_text(&dns),
                hours,
                req.disconnect_on_session_timeout.unwrap_or(false),
                banner.enabled,
                banner.banner_text,
                connect.enabled,
                connect.handler,
                log.enabled,
                log.stdout,
                portal,
                description,
                cert,
                key,
                client_ca,
                now.0,
            ])?;
            write_tags(db, &id, &tags)?;
            load_endpoint(db, &id)
        })
    }

    /// Modifies an endpoint's mutable fields. Refuses to change the immutable ones
    /// (`OperationNotPermitted`) and any change to an endpoint being deleted (`IncorrectState`).
    /// A request that changes nothing writes nothing (`changed` is empty).
    pub fn modify_endpoint(
        &self,
        id: &str,
        req: &ModifyEndpointRequest,
    ) -> Result<ModifyEndpointResult, ApiError> {
        self.write(|db, _now| {
            let cur = load_live_endpoint(db, id)?;
            if let Some(s) = &req.client_cidr_block {
                let v = validate::client_cidr("client-cidr-block", s)?;
                if v != cur.client_cidr_block {
                    return Err(ApiError::not_permitted(format!(
                        "client-cidr-block is immutable (endpoint {id} has {}); create a new \
                         endpoint for another client CIDR",
                        cur.client_cidr_block
                    )));
                }
            }
            if let Some(s) = &req.transport_protocol {
                let v = validate::transport("transport-protocol", s)?;
                if v != cur.transport_protocol {
                    return Err(ApiError::not_permitted(format!(
                        "transport-protocol is immutable (endpoint {id} uses {}); create a new \
                         endpoint for another transport",
                        cur.transport_protocol
                    )));
                }
            }
            if let Some(v) = &req.authentication_options {
                if *v != cur.authentication_options {
                    return Err(ApiError::not_permitted(format!(
                        "authentication-options are immutable on endpoint {id}; create a new \
                         endpoint for other authentication options"
                    )));
                }
            }
            let mut changed: Vec<String> = Vec::new();
            let mut mark = |field: &str, differs: bool| {
                if differs {
                    changed.push(field.to_string());
                }
            };

            let (cur_cert, cur_key): (String, String) = db
                .prepare_cached(
                    "SELECT server_cert_pem, server_key_pem FROM endpoints WHERE id = ?1",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let cert = req
                .server_certificate
                .clone()
                .unwrap_or_else(|| cur_cert.clone());
            let key = req
                .server_private_key
                .clone()
                .unwrap_or_else(|| cur_key.clone());
            if req.server_certificate.is_some() || req.server_private_key.is_some() {
                validate::server_identity("server-certificate", &cert, "server-private-key", &key)?;
            }
            mark("server-certificate", cert != cur_cert);
            mark("server-private-key", key != cur_key);

            let port = match req.vpn_port {
                None => cur.vpn_port,
                Some(n) => validate::port("vpn-port", n)?,
            };
            mark("vpn-port", port != cur.vpn_port);
            let dns = match &req.dns_servers {
                None => cur.dns_servers.clone(),
                Some(l) => validate::dns_servers("dns-servers", l)?,
            };
            mark("dns-servers", dns != cur.dns_servers);
            let split = req.split_tunnel.unwrap_or(cur.split_tunnel);
            mark("split-tunnel", split != cur.split_tunnel);
            let hours = match req.session_timeout_hours {
                None => cur.session_timeout_hours,
                Some(n) => validate::session_timeout("session-timeout-hours", n)?,
            };
            mark("session-timeout-hours", hours != cur.session_timeout_hours);
            let disconnect = req
                .disconnect_on_session_timeout
                .unwrap_or(cur.disconnect_on_session_timeout);
            mark(
                "disconnect-on-session-timeout",
                disconnect != cur.disconnect_on_session_timeout,
            );
            let banner = match &req.client_login_banner_options {
                None => cur.client_login_banner_options.clone(),
                Some(b) => validate::banner("client-login-banner-options", b)?,
            };
            mark(
                "client-login-banner-options",
                banner != cur.client_login_banner_options,
            );
            let connect = match &req.client_connect_options {
                None => cur.client_connect_options.clone(),
                Some(c) => {
                    validate::client_connect("client-connect-options", c, &self.handler_policy)?
                }
            };
            mark(
                "client-connect-options",
                connect != cur.client_connect_options,
            );
            let log = req
                .connection_log_options
                .clone()
                .unwrap_or_else(|| cur.connection_log_options.clone());
            mark("connection-log-options", log != cur.connection_log_options);
            let portal = match req.self_service_portal {
                None => cur.self_service_portal,
                Some(on) => validate::self_service_portal("self-service-portal", on)?,
            };
            mark("self-service-portal", portal != cur.self_service_portal);
            let description = match &req.description {
                None => cur.description.clone(),
                Some(d) => validate::description("description", Some(d))?,
            };
            mark("description", description != cur.description);
            let tags = match &req.tags {
                None => cur.tags.clone(),
                Some(t) => validate::tags("tags", t)?,
            };
            mark("tags", tags != cur.tags);

            if changed.is_empty() {
                return Ok(ModifyEndpointResult {
                    endpoint: cur,
                    changed,
                });
            }
            db.prepare_cached(
                "UPDATE endpoints SET server_cert_pem = ?2, server_key_pem = ?3, vpn_port = ?4, \
                 dns_servers = ?5, split_tunnel = ?6, session_timeout_hours = ?7, \
                 disconnect_on_session_timeout = ?8, banner_enabled = ?9, banner_text = ?10, \
                 connect_enabled = ?11, connect_handler = ?12, log_enabled = ?13, \
                 log_stdout = ?14, self_service_portal = ?15, description = ?16 WHERE id = ?1",
            )?
            .execute(params![
                id,
                cert,
                key,
                port,
                dns_text(&dns),
                split,
                hours,
                disconnect,
                banner.enabled,
                banner.banner_text,
                connect.enabled,
                connect.handler,
                log.enabled,
                log.stdout,
                portal,
                description,
            ])?;
            if tags != cur.tags {
                write_tags(db, id, &tags)?;
            }
            Ok(ModifyEndpointResult {
                endpoint: load_endpoint(db, id)?,
                changed,
            })
        })
    }

    /// Starts deleting an endpoint: it must have no target network left (disassociate them
    /// first, as AWS requires). The endpoint becomes `deleting`; any connection still recorded
    /// active is marked `terminating` and returned. The daemon then tears the endpoint down
    /// and calls [`finish_endpoint_deletion`](Self::finish_endpoint_deletion); after a crash
    /// it finds the `deleting` endpoints with [`describe_endpoints`](Self::describe_endpoints)
    /// and finishes them.
    pub fn delete_endpoint(&self, id: &str) -> Result<DeleteEndpointResult, ApiError> {
        self.write(|db, _now| {
            load_live_endpoint(db, id)?;
            let live = live_associations(db, id)?;
            if !live.is_empty() {
                let names: Vec<String> = live
                    .iter()
                    .map(|a| format!("{} ({})", a.target_network_id, a.association_id))
                    .collect();
                return Err(ApiError::incorrect_state(format!(
                    "endpoint {id} still has target networks: {}; disassociate them first",
                    names.join(", ")
                )));
            }
            db.prepare_cached("UPDATE endpoints SET state = 'deleting' WHERE id = ?1")?
                .execute([id])?;
            let terminate_connections = terminate_all(db, id)?;
            Ok(DeleteEndpointResult {
                endpoint: load_endpoint(db, id)?,
                terminate_connections,
            })
        })
    }

    /// Finishes deleting a `deleting` endpoint: its rules, routes, associations, connections
    /// and tags are removed and its private key and CRL erased; the endpoint stays visible as
    /// `deleted` for the retention period.
    pub fn finish_endpoint_deletion(&self, id: &str) -> Result<DeleteEndpointResult, ApiError> {
        self.write(|db, now| {
            let ep = load_endpoint(db, id)?;
            if ep.status != EndpointStatus::Deleting {
                return Err(ApiError::incorrect_state(format!(
                    "endpoint {id} is {}, not deleting; call delete first",
                    ep.status
                )));
            }
            let terminate_connections = query(
                db,
                "SELECT id FROM connections WHERE endpoint_id = ?1 \
                 AND status IN ('active', 'terminating') ORDER BY seq",
                [id],
                |r| r.get(0),
            )?;
            for table in [
                "routes",
                "authorization_rules",
                "connections",
                "endpoint_tags",
                "associations",
            ] {
                db.execute(&format!("DELETE FROM {table} WHERE endpoint_id = ?1"), [id])?;
            }
            db.prepare_cached(
                "UPDATE endpoints SET state = 'deleted', deleted_at = ?2, server_key_pem = '', \
                 crl_pem = NULL, crl_entries = 0 WHERE id = ?1",
            )?
            .execute(params![id, now.0])?;
            Ok(DeleteEndpointResult {
                endpoint: load_endpoint(db, id)?,
                terminate_connections,
            })
        })
    }

    /// Describes endpoints: all of them (oldest first) when `ids` is empty, else exactly
    /// those (`InvalidClientVpnEndpointId.NotFound` for an unknown one).
    pub fn describe_endpoints(&self, ids: &[String]) -> Result<Vec<Endpoint>, ApiError> {
        self.read(|db| {
            if !ids.is_empty() {
                return ids.iter().map(|id| load_endpoint(db, id)).collect();
            }
            let mut eps = query(
                db,
                &format!("SELECT {ENDPOINT_COLS} FROM endpoints ORDER BY created_at, id"),
                [],
                endpoint_row,
            )?;
            for ep in &mut eps {
                ep.tags = load_tags(db, &ep.client_vpn_endpoint_id)?;
            }
            Ok(eps)
        })
    }

    /// Describes one endpoint.
    pub fn describe_endpoint(&self, id: &str) -> Result<Endpoint, ApiError> {
        self.read(|db| load_endpoint(db, id))
    }

    /// The TLS material of an endpoint, for the daemon.
    pub fn endpoint_secrets(&self, id: &str) -> Result<EndpointSecrets, ApiError> {
        self.read(|db| {
            load_endpoint(db, id)?;
            Ok(db
                .prepare_cached(
                    "SELECT server_cert_pem, server_key_pem, client_ca_pem, crl_pem \
                     FROM endpoints WHERE id = ?1",
                )?
                .query_row([id], |r| {
                    Ok(EndpointSecrets {
                        client_vpn_endpoint_id: id.to_string(),
                        server_certificate_pem: r.get(0)?,
                        server_private_key_pem: r.get(1)?,
                        client_ca_pem: r.get(2)?,
                        crl_pem: r.get(3)?,
                    })
                })?)
        })
    }

    // ---- target networks ------------------------------------------------------------------------

    /// Associates a target network (a gateway-host interface) with an endpoint. With a known
    /// subnet, a route to it is added (origin `associate`). The first association makes the
    /// endpoint `available`.
    pub fn associate_target_network(
        &self,
        req: &AssociateTargetNetworkRequest,
    ) -> Result<AssociateResult, ApiError> {
        let interface = validate::interface_name("target-network-id", &req.target_network_id)?;
        let subnet = req
            .subnet_cidr
            .as_deref()
            .map(|s| validate::cidr("subnet-cidr", s))
            .transpose()?;
        let snat = req
            .snat_address
            .as_deref()
            .map(|s| validate::ipv4("snat-address", s))
            .transpose()?;
        let assoc_id = new_id(ASSOCIATION_ID_PREFIX)?;
        self.write(|db, now| {
            let ep = load_live_endpoint(db, &req.client_vpn_endpoint_id)?;
            let eid = ep.client_vpn_endpoint_id.as_str();
            if let Some(a) = live_associations(db, eid)?
                .into_iter()
                .find(|a| a.target_network_id == interface)
            {
                return Err(ApiError::new(
                    codes::DUPLICATE_ASSOCIATION,
                    format!(
                        "target-network-id: {interface} is already associated with endpoint {eid} \
                         ({})",
                        a.association_id
                    ),
                ));
            }
            if let Some(net) = &subnet {
                self.check_subnet(&ep, net)?;
            }
            db.prepare_cached(
                "INSERT INTO associations (id, endpoint_id, interface, subnet, snat_address, \
                 state, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 'associated', ?6, ?6)",
            )?
            .execute(params![
                assoc_id,
                eid,
                interface,
                subnet.map(|n| n.to_string()),
                snat.map(|a| a.to_string()),
                now.0
            ])?;
            let seq = target_id(db.last_insert_rowid())?;
            let route = match &subnet {
                Some(net) => {
                    insert_associate_route(db, eid, net, seq, now)?;
                    find_route(db, eid, net, seq)?
                }
                None => None,
            };
            if ep.status == EndpointStatus::PendingAssociate {
                db.prepare_cached("UPDATE endpoints SET state = 'available' WHERE id = ?1")?
                    .execute([eid])?;
            }
            bump_revision(db, eid)?;
            Ok(AssociateResult {
                association: self.load_association(db, &assoc_id)?,
                route,
                endpoint_status: EndpointStatus::Available,
            })
        })
    }

    /// A target network's subnet must not overlap the client CIDR, and its route must fit the
    /// quota.
    fn check_subnet(&self, ep: &Endpoint, net: &Ipv4Net) -> Result<(), ApiError> {
        if validate::overlaps(net, &ep.client_cidr_block) {
            return Err(ApiError::new(
                codes::SUBNET_OVERLAPPING_CIDR,
                format!(
                    "subnet-cidr: {net} overlaps the client CIDR {} of endpoint {}; a target \
                     network must lie outside the client CIDR",
                    ep.client_cidr_block, ep.client_vpn_endpoint_id
                ),
            ));
        }
        if self.quotas.routes_per_association == 0 {
            return Err(self.route_limit(&ep.client_vpn_endpoint_id));
        }
        Ok(())
    }

    fn route_limit(&self, what: &str) -> ApiError {
        ApiError::new(
            codes::ROUTE_LIMIT_EXCEEDED,
            format!(
                "{what} has reached its quota of {} routes per target network association",
                self.quotas.routes_per_association
            ),
        )
    }

    fn load_association(&self, db: &Db, id: &str) -> Result<TargetNetwork, ApiError> {
        validate::id("association-id", ASSOCIATION_ID_PREFIX, id)?;
        db.prepare_cached(&format!(
            "SELECT {ASSOC_COLS} FROM associations WHERE id = ?1"
        ))?
        .query_row([id], assoc_row)
        .optional()?
        .ok_or_else(|| {
            ApiError::new(
                codes::ASSOCIATION_NOT_FOUND,
                format!("association-id: association {id} does not exist"),
            )
        })
    }

    /// Disassociates a target network: the routes through it (both origins) are removed.
    /// Removing the last one puts the endpoint back to `pending-associate` and marks all its
    /// active connections `terminating`: the daemon must close the ones listed in the result.
    pub fn disassociate_target_network(
        &self,
        endpoint_id: &str,
        association_id: &str,
    ) -> Result<DisassociateResult, ApiError> {
        self.write(|db, now| {
            let ep = load_endpoint(db, endpoint_id)?;
            if ep.status == EndpointStatus::Deleted {
                return Err(ApiError::incorrect_state(format!("endpoint {endpoint_id} is deleted")));
            }
            let assoc = self.load_association(db, association_id)?;
            if assoc.client_vpn_endpoint_id != endpoint_id {
                return Err(ApiError::new(
                    codes::ASSOCIATION_NOT_FOUND,
                    format!("association-id: association {association_id} does not belong to endpoint {endpoint_id}"),
                ));
            }
            if assoc.status == AssociationStatus::Disassociated {
                return Err(ApiError::incorrect_state(format!(
                    "association {association_id} is already disassociated"
                )));
            }
            let removed_routes = routes_of_association(db, assoc.target_id)?;
            db.prepare_cached("DELETE FROM routes WHERE association_seq = ?1")?
                .execute([assoc.target_id])?;
            db.prepare_cached(
                "UPDATE associations SET state = 'disassociated', updated_at = ?2 WHERE id = ?1",
            )?
            .execute(params![association_id, now.0])?;
            let mut terminate_connections = Vec::new();
            let mut status = ep.status;
            if live_associations(db, endpoint_id)?.is_empty() && ep.status == EndpointStatus::Available {
                db.prepare_cached("UPDATE endpoints SET state = 'pending-associate' WHERE id = ?1")?
                    .execute([endpoint_id])?;
                status = EndpointStatus::PendingAssociate;
                terminate_connections = terminate_all(db, endpoint_id)?;
            }
            bump_revision(db, endpoint_id)?;
            Ok(DisassociateResult {
                association: self.load_association(db, association_id)?,
                removed_routes,
                endpoint_status: status,
                terminate_connections,
            })
        })
    }

    /// Records the subnet the daemon observed on an associated target network's interface
    /// (`None`: it has none). The `associate` route follows: the old one is removed, one to
    /// the new subnet added (replacing an `add-route` route to the same destination through
    /// the same network, which it makes redundant).
    pub fn update_association_subnet(
        &self,
        association_id: &str,
        subnet: Option<&str>,
    ) -> Result<SubnetUpdateResult, ApiError> {
        let subnet = subnet
            .map(|s| validate::cidr("subnet-cidr", s))
            .transpose()?;
        self.write(|db, now| {
            let assoc = self.load_association(db, association_id)?;
            if assoc.status != AssociationStatus::Associated {
                return Err(ApiError::incorrect_state(format!(
                    "association {association_id} is {}",
                    assoc.status
                )));
            }
            if assoc.subnet_cidr == subnet {
                return Ok(SubnetUpdateResult {
                    association: assoc,
                    removed_route: None,
                    added_route: None,
                });
            }
            let eid = assoc.client_vpn_endpoint_id.clone();
            let ep = load_live_endpoint(db, &eid)?;
            let seq = assoc.target_id;
            let removed_route = match &assoc.subnet_cidr {
                Some(old) => {
                    let r = find_route(db, &eid, old, seq)?
                        .filter(|r| r.origin == RouteOrigin::Associate);
                    db.prepare_cached(
                        "DELETE FROM routes WHERE endpoint_id = ?1 AND destination = ?2 \
                         AND association_seq = ?3 AND origin = 'associate'",
                    )?
                    .execute(params![eid, old.to_string(), seq])?;
                    r
                }
                None => None,
            };
            let added_route = match &subnet {
                Some(net) => {
                    self.check_subnet(&ep, net)?;
                    db.prepare_cached(
                        "DELETE FROM routes WHERE endpoint_id = ?1 AND destination = ?2 \
                         AND association_seq = ?3",
                    )?
                    .execute(params![eid, net.to_string(), seq])?;
                    let count: i64 = db
                        .prepare_cached("SELECT count(*) FROM routes WHERE association_seq = ?1")?
                        .query_row([seq], |r| r.get(0))?;
                    if usize::try_from(count).unwrap_or(usize::MAX)
                        >= self.quotas.routes_per_association
                    {
                        return Err(self
                            .route_limit(&format!("target network {}", assoc.target_network_id)));
                    }
                    insert_associate_route(db, &eid, net, seq, now)?;
                    find_route(db, &eid, net, seq)?
                }
                None => None,
            };
            db.prepare_cached(
                "UPDATE associations SET subnet = ?2, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![
                association_id,
                subnet.map(|n| n.to_string()),
                now.0
            ])?;
            bump_revision(db, &eid)?;
            Ok(SubnetUpdateResult {
                association: self.load_association(db, association_id)?,
                removed_route,
                added_route,
            })
        })
    }

    /// Describes an endpoint's target network associations (including disassociated ones
    /// within the retention period), oldest first; with `ids`, exactly those.
    pub fn describe_target_networks(
        &self,
        endpoint_id: &str,
        ids: &[String],
    ) -> Result<Vec<TargetNetwork>, ApiError> {
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            let all = query(
                db,
                &format!("SELECT {ASSOC_COLS} FROM associations WHERE endpoint_id = ?1 ORDER BY seq"),
                [endpoint_id],
                assoc_row,
            )?;
            if ids.is_empty() {
                return Ok(all);
            }
            ids.iter()
                .map(|id| {
                    validate::id("association-id", ASSOCIATION_ID_PREFIX, id)?;
                    all.iter()
                        .find(|a| &a.association_id == id)
                        .cloned()
                        .ok_or_else(|| {
                            ApiError::new(
                                codes::ASSOCIATION_NOT_FOUND,
                                format!("association-id: endpoint {endpoint_id} has no association {id}"),
                            )
                        })
                })
                .collect()
        })
    }

    // ---- routes ---------------------------------------------------------------------------------

    /// Adds a route (origin `add-route`) through an associated target network. The
    /// destination must not overlap the client CIDR (`0.0.0.0/0` excepted); (destination,
    /// target network) must be new; the association's route quota applies.
    pub fn create_route(&self, req: &CreateRouteRequest) -> Result<Route, ApiError> {
        let dest = validate::cidr("destination-cidr-block", &req.destination_cidr_block)?;
        let interface = validate::interface_name("target-network-id", &req.target_network_id)?;
        let description = validate::description("description", req.description.as_deref())?;
        self.write(|db, now| {
            let ep = load_live_endpoint(db, &req.client_vpn_endpoint_id)?;
            let eid = ep.client_vpn_endpoint_id.as_str();
            if dest.prefix_len() != 0 && validate::overlaps(&dest, &ep.client_cidr_block) {
                return Err(ApiError::invalid(
                    "destination-cidr-block",
                    format!(
                        "{dest} overlaps the client CIDR {} of endpoint {eid}; routes must not \
                         cover client addresses (only 0.0.0.0/0 may)",
                        ep.client_cidr_block
                    ),
                ));
            }
            let live: Vec<TargetNetwork> = live_associations(db, eid)?
                .into_iter()
                .filter(|a| a.status == AssociationStatus::Associated)
                .collect();
            if live.is_empty() {
                return Err(ApiError::new(
                    codes::ACTIVE_ASSOCIATION_NOT_FOUND,
                    format!("endpoint {eid} has no associated target network; associate one first"),
                ));
            }
            let Some(assoc) = live.iter().find(|a| a.target_network_id == interface) else {
                let names: Vec<&str> = live.iter().map(|a| a.target_network_id.as_str()).collect();
                return Err(ApiError::invalid(
                    "target-network-id",
                    format!(
                        "{interface:?} is not an associated target network of endpoint {eid} \
                         (associated: {})",
                        names.join(", ")
                    ),
                ));
            };
            if find_route(db, eid, &dest, assoc.target_id)?.is_some() {
                return Err(ApiError::new(
                    codes::DUPLICATE_ROUTE,
                    format!("endpoint {eid} already has a route to {dest} through {interface}"),
                ));
            }
            let count: i64 = db
                .prepare_cached("SELECT count(*) FROM routes WHERE association_seq = ?1")?
                .query_row([assoc.target_id], |r| r.get(0))?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= self.quotas.routes_per_association {
                return Err(self.route_limit(&format!(
                    "target network {interface} ({})",
                    assoc.association_id
                )));
            }
            db.prepare_cached(
                "INSERT INTO routes (endpoint_id, destination, association_seq, origin, state, \
                 description, created_at) VALUES (?1, ?2, ?3, 'add-route', 'active', ?4, ?5)",
            )?
            .execute(params![
                eid,
                dest.to_string(),
                assoc.target_id,
                description,
                now.0
            ])?;
            bump_revision(db, eid)?;
            find_route(db, eid, &dest, assoc.target_id)?
                .ok_or_else(|| ApiError::internal("route vanished after insert"))
        })
    }

    /// Deletes an `add-route` route. Without a target network the destination must identify
    /// one route. Routes of origin `associate` cannot be deleted (`OperationNotPermitted`):
    /// disassociate the network instead. Returns the route, `deleting`.
    pub fn delete_route(&self, req: &DeleteRouteRequest) -> Result<Route, ApiError> {
        let dest = validate::cidr("destination-cidr-block", &req.destination_cidr_block)?;
        let interface = req
            .target_network_id
            .as_deref()
            .map(|s| validate::interface_name("target-network-id", s))
            .transpose()?;
        self.write(|db, _now| {
            let ep = load_live_endpoint(db, &req.client_vpn_endpoint_id)?;
            let eid = ep.client_vpn_endpoint_id.as_str();
            let candidates: Vec<Route> = query(
                db,
                &format!(
                    "SELECT {ROUTE_COLS} FROM {ROUTE_FROM} \
                     WHERE r.endpoint_id = ?1 AND r.destination = ?2 ORDER BY r.seq"
                ),
                params![eid, dest.to_string()],
                route_row,
            )?
            .into_iter()
            .filter(|r| interface.as_ref().is_none_or(|i| &r.target_subnet == i))
            .collect();
            let mut route = match candidates.as_slice() {
                [] => {
                    let via = interface.as_ref().map(|i| format!(" through {i}")).unwrap_or_default();
                    return Err(ApiError::new(
                        codes::ROUTE_NOT_FOUND,
                        format!("endpoint {eid} has no route to {dest}{via}"),
                    ));
                }
                [one] => one.clone(),
                many => {
                    let via: Vec<&str> = many.iter().map(|r| r.target_subnet.as_str()).collect();
                    return Err(ApiError::missing(
                        "target-network-id",
                        format!(
                            "{} routes go to {dest} (through {}); name the target network",
                            many.len(),
                            via.join(", ")
                        ),
                    ));
                }
            };
            if route.origin == RouteOrigin::Associate {
                return Err(ApiError::not_permitted(format!(
                    "the route to {dest} through {} was added by associating that target network \
                     (origin associate); disassociate the network to remove it",
                    route.target_subnet
                )));
            }
            db.prepare_cached(
                "DELETE FROM routes WHERE endpoint_id = ?1 AND destination = ?2 AND association_seq = ?3",
            )?
            .execute(params![eid, dest.to_string(), route.target_id])?;
            bump_revision(db, eid)?;
            route.status = RouteStatus::Deleting;
            Ok(route)
        })
    }

    /// Describes an endpoint's routes, oldest first.
    pub fn describe_routes(&self, endpoint_id: &str) -> Result<Vec<Route>, ApiError> {
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            query(
                db,
                &format!(
                    "SELECT {ROUTE_COLS} FROM {ROUTE_FROM} WHERE r.endpoint_id = ?1 ORDER BY r.seq"
                ),
                [endpoint_id],
                route_row,
            )
        })
    }

    // ---- authorization rules --------------------------------------------------------------------

    /// Adds an authorization rule. The (destination, group | all groups) pair must be new, and
    /// the endpoint's rule quota applies.
    pub fn authorize_rule(&self, req: &AuthorizeRequest) -> Result<AuthorizationRule, ApiError> {
        let dest = validate::cidr("target-network-cidr", &req.target_network_cidr)?;
        let access = access_of(
            req.access_group_id.as_deref(),
            req.authorize_all_groups,
            "authorize-all-groups",
        )?;
        let description = validate::description("description", req.description.as_deref())?;
        self.write(|db, now| {
            let ep = load_live_endpoint(db, &req.client_vpn_endpoint_id)?;
            let eid = ep.client_vpn_endpoint_id.as_str();
            let (group, all) = group_param(&access);
            let exists: Option<i64> = db
                .prepare_cached(
                    "SELECT seq FROM authorization_rules WHERE endpoint_id = ?1 AND destination = ?2 \
                     AND access_all = ?3 AND ifnull(group_id, '') = ifnull(?4, '')",
                )?
                .query_row(params![eid, dest.to_string(), all, group], |r| r.get(0))
                .optional()?;
            if exists.is_some() {
                return Err(ApiError::new(
                    codes::DUPLICATE_AUTHORIZATION_RULE,
                    format!(
                        "endpoint {eid} already authorizes {} to {dest}",
                        access_text(&access)
                    ),
                ));
            }
            let count: i64 = db
                .prepare_cached("SELECT count(*) FROM authorization_rules WHERE endpoint_id = ?1")?
                .query_row([eid], |r| r.get(0))?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= self.quotas.authorization_rules_per_endpoint {
                return Err(ApiError::new(
                    codes::AUTHORIZATION_RULE_LIMIT_EXCEEDED,
                    format!(
                        "endpoint {eid} has reached its quota of {} authorization rules",
                        self.quotas.authorization_rules_per_endpoint
                    ),
                ));
            }
            db.prepare_cached(
                "INSERT INTO authorization_rules (endpoint_id, destination, group_id, access_all, \
                 description, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![eid, dest.to_string(), group, all, description, now.0])?;
            let seq = db.last_insert_rowid();
            bump_revision(db, eid)?;
            Ok(db
                .prepare_cached(&format!("SELECT {RULE_COLS} FROM authorization_rules WHERE seq = ?1"))?
                .query_row([seq], rule_row)?)
        })
    }

    /// Removes an authorization rule; returns it.
    pub fn revoke_rule(&self, req: &RevokeRequest) -> Result<AuthorizationRule, ApiError> {
        let dest = validate::cidr("target-network-cidr", &req.target_network_cidr)?;
        let access = access_of(
            req.access_group_id.as_deref(),
            req.revoke_all_groups,
            "revoke-all-groups",
        )?;
        self.write(|db, _now| {
            let ep = load_live_endpoint(db, &req.client_vpn_endpoint_id)?;
            let eid = ep.client_vpn_endpoint_id.as_str();
            let (group, all) = group_param(&access);
            let found = db
                .prepare_cached(&format!(
                    "SELECT seq, {RULE_COLS} FROM authorization_rules WHERE endpoint_id = ?1 \
                     AND destination = ?2 AND access_all = ?3 AND ifnull(group_id, '') = ifnull(?4, '')"
                ))?
                .query_row(params![eid, dest.to_string(), all, group], |r| {
                    let seq: i64 = r.get(0)?;
                    Ok((
                        seq,
                        AuthorizationRule {
                            client_vpn_endpoint_id: r.get(1)?,
                            destination_cidr: col(r, 2)?,
                            group_id: r.get(3)?,
                            access_all: r.get(4)?,
                            description: r.get(5)?,
                            creation_time: ts(r, 6)?,
                        },
                    ))
                })
                .optional()?;
            let Some((seq, rule)) = found else {
                return Err(ApiError::new(
                    codes::AUTHORIZATION_RULE_NOT_FOUND,
                    format!("endpoint {eid} has no rule authorizing {} to {dest}", access_text(&access)),
                ));
            };
            db.prepare_cached("DELETE FROM authorization_rules WHERE seq = ?1")?
                .execute([seq])?;
            bump_revision(db, eid)?;
            Ok(rule)
        })
    }

    /// Describes an endpoint's authorization rules, oldest first.
    pub fn describe_rules(&self, endpoint_id: &str) -> Result<Vec<AuthorizationRule>, ApiError> {
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            query(
                db,
                &format!("SELECT {RULE_COLS} FROM authorization_rules WHERE endpoint_id = ?1 ORDER BY seq"),
                [endpoint_id],
                rule_row,
            )
        })
    }

    // ---- what the data plane wants --------------------------------------------------------------

    /// The data plane's policy for an endpoint: every authorization rule, and every route with
    /// its association's stable target id (the association's row id, never reused). Routes
    /// come oldest first, so where two target networks route the same destination the older
    /// route wins in the data plane.
    pub fn policy_for(&self, endpoint_id: &str) -> Result<Policy, ApiError> {
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            let rules = query(
                db,
                &format!("SELECT {RULE_COLS} FROM authorization_rules WHERE endpoint_id = ?1 ORDER BY seq"),
                [endpoint_id],
                rule_row,
            )?
            .into_iter()
            .map(|r| policy::AuthorizationRule {
                destination: r.destination_cidr,
                access: r.access(),
            })
            .collect();
            let routes = query(
                db,
                &format!(
                    "SELECT {ROUTE_COLS} FROM {ROUTE_FROM} WHERE r.endpoint_id = ?1 \
                     AND a.state = 'associated' ORDER BY r.seq"
                ),
                [endpoint_id],
                route_row,
            )?
            .into_iter()
            .map(|r| policy::Route {
                destination: r.destination_cidr,
                target: r.target_id,
            })
            .collect();
            Ok(Policy { rules, routes })
        })
    }

    /// The data plane's target networks for an endpoint: its associated networks with their
    /// target ids (the ids [`policy_for`](Self::policy_for)'s routes use).
    pub fn target_specs(&self, endpoint_id: &str) -> Result<Vec<TargetSpec>, ApiError> {
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            Ok(live_associations(db, endpoint_id)?
                .into_iter()
                .filter(|a| a.status == AssociationStatus::Associated)
                .map(|a| TargetSpec {
                    id: a.target_id,
                    interface: a.target_network_id,
                    snat_addr: a.snat_address,
                })
                .collect())
        })
    }

    // ---- connections ----------------------------------------------------------------------------

    /// Records a new connection (`active`). The endpoint must be `available` and the client
    /// address inside its client CIDR.
    pub fn record_connection_start(&self, c: &NewConnection) -> Result<Connection, ApiError> {
        let id = new_id(CONNECTION_ID_PREFIX)?;
        self.record_connection_start_as(&id, c)
    }

    /// [`record_connection_start`](Self::record_connection_start) under an id the caller
    /// chose (the daemon names a connection when its handshake starts, so the connection log
    /// and the store agree). The id must have the `cvpn-connection-` form and be new.
    pub fn record_connection_start_as(
        &self,
        id: &str,
        c: &NewConnection,
    ) -> Result<Connection, ApiError> {
        validate::id("connection-id", CONNECTION_ID_PREFIX, id)?;
        let id = id.to_string();
        self.write(|db, now| {
            let ep = load_endpoint(db, &c.client_vpn_endpoint_id)?;
            if ep.status != EndpointStatus::Available {
                return Err(ApiError::incorrect_state(format!(
                    "endpoint {} is {}; it accepts connections only when available",
                    ep.client_vpn_endpoint_id, ep.status
                )));
            }
            if !ep.client_cidr_block.contains(&c.client_ip) {
                return Err(ApiError::invalid(
                    "client-ip",
                    format!(
                        "{} is outside the client CIDR {} of endpoint {}",
                        c.client_ip, ep.client_cidr_block, ep.client_vpn_endpoint_id
                    ),
                ));
            }
            db.prepare_cached(
                "INSERT INTO connections (id, endpoint_id, status, client_ip, common_name, \
                 username, device_ip, device_port, transport, start_time, last_update_time) \
                 VALUES (?1, ?2, 'active', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
            )?
            .execute(params![
                id,
                ep.client_vpn_endpoint_id,
                c.client_ip.to_string(),
                c.common_name,
                c.username,
                c.device_ip.to_string(),
                c.device_port,
                c.transport_protocol.as_str(),
                now.0
            ])?;
            load_connection(db, &id)
        })
    }

    /// Records a connection's counters (active or terminating connections only).
    pub fn update_connection(
        &self,
        id: &str,
        counters: ConnectionCounters,
    ) -> Result<Connection, ApiError> {
        self.write(|db, now| {
            load_live_connection(db, id)?;
            set_counters(db, id, counters, now)?;
            load_connection(db, id)
        })
    }

    /// Records the counters of many connections in one transaction (one fsync); unknown and
    /// ended connections are skipped. Returns how many were updated.
    pub fn update_connections(
        &self,
        batch: &[(String, ConnectionCounters)],
    ) -> Result<usize, ApiError> {
        self.write(|db, now| {
            let mut n = 0;
            for (id, counters) in batch {
                n += set_counters(db, id, *counters, now)?;
            }
            Ok(n)
        })
    }

    /// Records the end of a connection (`terminated`) with its final counters.
    pub fn end_connection(
        &self,
        id: &str,
        counters: ConnectionCounters,
    ) -> Result<Connection, ApiError> {
        self.write(|db, now| {
            load_live_connection(db, id)?;
            set_counters(db, id, counters, now)?;
            db.prepare_cached(
                "UPDATE connections SET status = 'terminated', end_time = ?2 WHERE id = ?1",
            )?
            .execute(params![id, now.0])?;
            load_connection(db, id)
        })
    }

    /// Requests termination of connections of an endpoint, by id or by user name: active ones
    /// become `terminating` (the daemon closes them and calls
    /// [`end_connection`](Self::end_connection)).
    pub fn terminate_connections(
        &self,
        endpoint_id: &str,
        target: &TerminateTarget,
    ) -> Result<Vec<TerminatedConnection>, ApiError> {
        self.write(|db, _now| {
            load_endpoint(db, endpoint_id)?;
            let conns: Vec<Connection> = match target {
                TerminateTarget::ConnectionId(id) => {
                    let c = load_connection(db, id)?;
                    if c.client_vpn_endpoint_id != endpoint_id {
                        return Err(ApiError::new(
                            codes::CONNECTION_NOT_FOUND,
                            format!("connection-id: endpoint {endpoint_id} has no connection {id}"),
                        ));
                    }
                    vec![load_live_connection(db, id)?]
                }
                TerminateTarget::Username(user) => {
                    let list = query(
                        db,
                        &format!(
                            "SELECT {CONN_COLS} FROM connections WHERE endpoint_id = ?1 \
                             AND (username = ?2 OR (username IS NULL AND common_name = ?2)) \
                             AND status IN ('active', 'terminating') ORDER BY seq"
                        ),
                        params![endpoint_id, user],
                        conn_row,
                    )?;
                    if list.is_empty() {
                        return Err(ApiError::new(
                            codes::CONNECTION_USER_NOT_FOUND,
                            format!("username: {user:?} has no active connection to endpoint {endpoint_id}"),
                        ));
                    }
                    list
                }
            };
            let mut out = Vec::new();
            for c in conns {
                db.prepare_cached("UPDATE connections SET status = 'terminating' WHERE id = ?1")?
                    .execute([&c.connection_id])?;
                out.push(TerminatedConnection {
                    connection_id: c.connection_id,
                    previous_status: c.status,
                    current_status: ConnectionStatus::Terminating,
                });
            }
            Ok(out)
        })
    }

    /// Records that the daemon could not close a `terminating` connection.
    pub fn connection_termination_failed(&self, id: &str) -> Result<Connection, ApiError> {
        self.write(|db, _now| {
            let c = load_connection(db, id)?;
            if c.status != ConnectionStatus::Terminating {
                return Err(ApiError::incorrect_state(format!(
                    "connection {id} is {}, not terminating",
                    c.status
                )));
            }
            db.prepare_cached(
                "UPDATE connections SET status = 'failed-to-terminate' WHERE id = ?1",
            )?
            .execute([id])?;
            load_connection(db, id)
        })
    }

    /// After a daemon restart, no recorded connection survives: every `active` or
    /// `terminating` one is ended (`terminated`, end time = its last update). Returns their ids.
    pub fn close_stale_connections(&self) -> Result<Vec<String>, ApiError> {
        self.write(|db, _now| {
            let ids = query(
                db,
                "SELECT id FROM connections WHERE status IN ('active', 'terminating') ORDER BY seq",
                [],
                |r| r.get(0),
            )?;
            db.execute(
                "UPDATE connections SET status = 'terminated', end_time = last_update_time \
                 WHERE status IN ('active', 'terminating')",
                [],
            )?;
            Ok(ids)
        })
    }

    /// Describes connections: those not ended and those ended within the retention period,
    /// oldest first, filtered.
    pub fn describe_connections(
        &self,
        filter: &ConnectionFilter,
    ) -> Result<Vec<Connection>, ApiError> {
        let since = self.now().0.saturating_sub(self.retention_secs);
        self.read(|db| {
            if let Some(e) = &filter.client_vpn_endpoint_id {
                load_endpoint(db, e)?;
            }
            if let Some(c) = &filter.connection_id {
                validate::id("connection-id", CONNECTION_ID_PREFIX, c)?;
            }
            query(
                db,
                &format!(
                    "SELECT {CONN_COLS} FROM connections \
                     WHERE (end_time IS NULL OR end_time >= ?1) \
                     AND (?2 IS NULL OR endpoint_id = ?2) AND (?3 IS NULL OR id = ?3) \
                     AND (?4 IS NULL OR username = ?4 OR (username IS NULL AND common_name = ?4)) AND (?5 IS NULL OR status = ?5) \
                     ORDER BY start_time, seq"
                ),
                params![
                    since,
                    filter.client_vpn_endpoint_id,
                    filter.connection_id,
                    filter.username,
                    filter.status.map(|s| s.as_str())
                ],
                conn_row,
            )
        })
    }

    /// Removes what is past the retention period: ended connections, disassociated
    /// associations, deleted endpoints.
    pub fn prune(&self) -> Result<PruneReport, ApiError> {
        let before = self.now().0.saturating_sub(self.retention_secs);
        self.write(|db, _now| {
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

    // ---- CRL ------------------------------------------------------------------------------------

    /// Imports (replaces) an endpoint's certificate revocation list: PEM, one or more
    /// `X509 CRL` blocks issued by the endpoint's client CA, at most the quota of entries.
    /// Returns the revoked serials: the daemon terminates their sessions.
    pub fn import_crl(&self, endpoint_id: &str, pem: &str) -> Result<CrlSummary, ApiError> {
        self.write(|db, _now| {
            load_live_endpoint(db, endpoint_id)?;
            let ca: String = db
                .prepare_cached("SELECT client_ca_pem FROM endpoints WHERE id = ?1")?
                .query_row([endpoint_id], |r| r.get(0))?;
            let parsed = validate::crl(
                "certificate-revocation-list",
                pem,
                &ca,
                self.quotas.crl_entries,
            )?;
            db.prepare_cached("UPDATE endpoints SET crl_pem = ?2, crl_entries = ?3 WHERE id = ?1")?
                .execute(params![
                    endpoint_id,
                    pem,
                    i64::try_from(parsed.revoked_serials.len()).unwrap_or(i64::MAX)
                ])?;
            Ok(CrlSummary {
                client_vpn_endpoint_id: endpoint_id.to_string(),
                crls: parsed.crls,
                entries: parsed.revoked_serials.len(),
                revoked_serials: parsed.revoked_serials,
            })
        })
    }

    /// The endpoint's certificate revocation list as imported (PEM), if any.
    pub fn export_crl(&self, endpoint_id: &str) -> Result<Option<String>, ApiError> {
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            Ok(db
                .prepare_cached("SELECT crl_pem FROM endpoints WHERE id = ?1")?
                .query_row([endpoint_id], |r| r.get(0))?)
        })
    }
}

fn set_counters(
    db: &Db,
    id: &str,
    c: ConnectionCounters,
    now: Timestamp,
) -> Result<usize, ApiError> {
    Ok(db
        .prepare_cached(
            "UPDATE connections SET ingress_bytes = ?2, egress_bytes = ?3, ingress_packets = ?4, \
             egress_packets = ?5, last_update_time = ?6 \
             WHERE id = ?1 AND status IN ('active', 'terminating')",
        )?
        .execute(params![
            id,
            sql_u64(c.ingress_bytes),
            sql_u64(c.egress_bytes),
            sql_u64(c.ingress_packets),
            sql_u64(c.egress_packets),
            now.0
        ])?)
}

/// Applies the missing migrations, each in one transaction with its `user_version` bump.
fn migrate(db: &mut Db) -> Result<(), ApiError> {
    let current: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = schema::MIGRATIONS.len();
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > known {
        return Err(ApiError::internal(format!(
            "schema version {current} is newer than this cvpn knows ({known}); run a newer cvpn"
        )));
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(current) {
        let tx = db.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)
            .map_err(|e| ApiError::internal(format!("migration {}: {e}", i + 1)))?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
