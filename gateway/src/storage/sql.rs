//! One SQL surface over two databases: SQLite (embedded, one host) and PostgreSQL (shared by
//! the nodes of a cluster).
//!
//! The resource files write their statements once, in the subset both databases speak, with
//! `?N` placeholders; [`Db`] runs them on whichever backend the store opened. The surface is
//! the few calls the store uses (`prepare_cached` → `query_row` / `execute` / `query_all`,
//! `optional()`, `params!`), shaped like rusqlite's so the resource files read as before.
//!
//! Values cross as [`Value`]: integers (`i64`), text, bytes or null. Booleans are stored as
//! integers 0/1 on both backends (SQLite has no boolean type; the PostgreSQL schema uses
//! `BIGINT` for them), and a boolean a PostgreSQL expression yields (`x IS NOT NULL`) reads
//! back as 0/1.
//!
//! # PostgreSQL
//!
//! [`PgPool`] owns a pool of connections (deadpool-postgres over tokio-postgres) and a
//! small runtime of its own on one thread: every statement runs there with a deadline
//! ([`PG_STATEMENT_TIMEOUT`]), and the calling thread waits for the answer. The store's API
//! stays synchronous, callable from any thread — a tokio worker included — without nesting
//! runtimes. `?N` placeholders become `$N`.
//!
//! Writes run `SERIALIZABLE`: two nodes doing check-then-insert (a quota, a free address)
//! cannot both succeed on a stale read; the loser's transaction fails with SQLSTATE 40001 and
//! the store runs it again ([`PG_WRITE_ATTEMPTS`]).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{IsNull, Type};

/// What a statement may fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `query_row` found no row (turned into `None` by [`OptionalExtension::optional`]).
    #[error("no row")]
    NoRows,
    /// A column held something the reader cannot take.
    #[error("column {column}: {message}")]
    Conversion { column: usize, message: String },
    /// SQLite said no.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no.
    #[error("{0}")]
    Postgres(String),
    /// PostgreSQL did not answer (a deadline, the silence backoff, a lost connection).
    #[error("{0}")]
    Unavailable(String),
}

/// A statement's result.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for crate::model::ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(message) => unavailable_message(&message),
            e => crate::model::ApiError::internal(format!("database: {e}")),
        }
    }
}

/// A column's error for the row readers: column `i` could not be read as wanted.
pub fn conversion_error(column: usize, message: String) -> Error {
    Error::Conversion { column, message }
}

// ---- values -------------------------------------------------------------------------------------

/// A value sent to or read from either database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// A Rust value that can be a statement parameter.
pub trait ToSql {
    fn to_value(&self) -> Value;
}

macro_rules! int_to_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_to_sql!(i64, i32, u8, u16, u32, u64, usize);

impl ToSql for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToSql for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToSql for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToSql for [u8] {
    fn to_value(&self) -> Value {
        Value::Bytes(self.to_vec())
    }
}
impl ToSql for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Bytes(self.clone())
    }
}
impl ToSql for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToSql> ToSql for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToSql::to_value)
    }
}
impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// A statement's parameters: `params![a, b]`, an array of one type, or `()` for none.
pub trait Params {
    fn values(&self) -> Vec<Value>;
}
impl Params for () {
    fn values(&self) -> Vec<Value> {
        Vec::new()
    }
}
impl Params for &[&dyn ToSql] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}
impl<T: ToSql, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(ToSql::to_value).collect()
    }
}

/// `params![a, b, c]`: parameters of mixed types.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$(&$p as &dyn $crate::storage::sql::ToSql),*] as &[&dyn $crate::storage::sql::ToSql]
    };
}
pub(crate) use params;

/// A Rust value a column can be read as.
pub trait FromSql: Sized {
    fn from_value(v: &Value) -> std::result::Result<Self, String>;
}

impl FromSql for i64 {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Int(i) => Ok(*i),
            other => Err(format!("expected an integer, found {}", other.kind())),
        }
    }
}
macro_rules! int_from_sql {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_value(v: &Value) -> std::result::Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
int_from_sql!(i32, u8, u16, u32, u64, usize);

impl FromSql for bool {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromSql for String {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {}", other.kind())),
        }
    }
}
impl FromSql for Vec<u8> {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Bytes(b) => Ok(b.clone()),
            other => Err(format!("expected bytes, found {}", other.kind())),
        }
    }
}
impl FromSql for Value {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        Ok(v.clone())
    }
}
impl<T: FromSql> FromSql for Option<T> {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
        }
    }
}

/// A column number (a trait, so that a literal `r.get(0)` is read as `usize`).
pub trait RowIndex {
    fn index(self) -> usize;
}
impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One result row.
pub struct Row<'a> {
    values: &'a [Value],
}

impl Row<'_> {
    /// Column `i` as a `T`.
    pub fn get<I: RowIndex, T: FromSql>(&self, i: I) -> Result<T> {
        let i = i.index();
        let v = self
            .values
            .get(i)
            .ok_or_else(|| conversion_error(i, "no such column".into()))?;
        T::from_value(v).map_err(|m| conversion_error(i, m))
    }
}

// ---- statements ---------------------------------------------------------------------------------

/// A transaction on either backend: what the store's resource files run statements on.
pub struct Db<'c> {
    conn: Conn<'c>,
    /// Set when PostgreSQL refused a statement for a conflict with a concurrent transaction
    /// (SQLSTATE 40001 / 40P01): the store runs the whole transaction again.
    retry: Cell<bool>,
}

enum Conn<'c> {
    Sqlite(&'c rusqlite::Connection),
    Postgres(&'c PgTx<'c>),
}

impl<'c> Db<'c> {
    pub(super) fn sqlite(conn: &'c rusqlite::Connection) -> Self {
        Db {
            conn: Conn::Sqlite(conn),
            retry: Cell::new(false),
        }
    }

    fn postgres(tx: &'c PgTx<'c>) -> Self {
        Db {
            conn: Conn::Postgres(tx),
            retry: Cell::new(false),
        }
    }

    /// Whether this is the PostgreSQL backend (for the few statements that differ).
    pub fn is_postgres(&self) -> bool {
        matches!(self.conn, Conn::Postgres(_))
    }

    /// A statement (cached by both backends).
    pub fn prepare_cached<'s>(&'s self, sql: &'s str) -> Result<Statement<'s, 'c>> {
        Ok(Statement { db: self, sql })
    }

    /// Runs a statement that returns no rows; returns the number of rows changed.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        self.run_execute(sql, params.values())
    }

    /// Runs several statements without parameters (migrations).
    pub fn batch(&self, sql: &str) -> Result<()> {
        match &self.conn {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(tx) => tx.batch(sql).map_err(|e| self.note(e)),
        }
    }

    /// Runs a query; `f` maps each row.
    pub fn query_all<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.run_query(sql, params.values(), f)
    }

    fn run_execute(&self, sql: &str, values: Vec<Value>) -> Result<usize> {
        match &self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))?)
            }
            Conn::Postgres(tx) => tx.execute(sql, values).map_err(|e| self.note(e)),
        }
    }

    fn run_query<T>(
        &self,
        sql: &str,
        values: Vec<Value>,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = match &self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let row = (0..n)
                        .map(|i| r.get_ref(i).map(Value::from))
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    out.push(row);
                }
                out
            }
            Conn::Postgres(tx) => tx.query(sql, values).map_err(|e| self.note(e))?,
        };
        rows.iter().map(|values| f(&Row { values })).collect()
    }

    fn note(&self, e: PgError) -> Error {
        if e.retryable {
            self.retry.set(true);
        }
        Error::from(e)
    }

    pub(super) fn must_retry(&self) -> bool {
        self.retry.get()
    }
}

/// A statement on a [`Db`], as rusqlite's cached statement.
pub struct Statement<'s, 'c> {
    db: &'s Db<'c>,
    sql: &'s str,
}

impl Statement<'_, '_> {
    /// The first row, mapped; [`Error::NoRows`] when there is none.
    pub fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.db
            .run_query(self.sql, params.values(), f)?
            .into_iter()
            .next()
            .ok_or(Error::NoRows)
    }

    /// Every row, mapped.
    pub fn query_all<T>(
        &mut self,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.db.run_query(self.sql, params.values(), f)
    }

    /// Whether it yields at least one row.
    pub fn exists(&mut self, params: impl Params) -> Result<bool> {
        Ok(!self
            .db
            .run_query(self.sql, params.values(), |_| Ok(()))?
            .is_empty())
    }

    /// Runs it; returns the number of rows changed.
    pub fn execute(&mut self, params: impl Params) -> Result<usize> {
        self.db.run_execute(self.sql, params.values())
    }
}

/// `query_row(…).optional()`: no row is `None`, as rusqlite's extension.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}
impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

// ---- SQLite -------------------------------------------------------------------------------------

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl From<rusqlite::types::ValueRef<'_>> for Value {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Self {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            // The schema has no REAL column; a float would be a bug, kept visible.
            ValueRef::Real(f) => Value::Text(f.to_string()),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
        }
    }
}

// ---- PostgreSQL ---------------------------------------------------------------------------------

/// How long one PostgreSQL statement (or getting a connection) may take before it fails: a
/// database that hangs must not hang the API or the daemon.
pub const PG_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a call found the database silent (no answer within [`PG_STATEMENT_TIMEOUT`]), calls
/// fail at once for this long instead of each waiting out the deadline: a daemon whose
/// resynchronisation meets a database that just went silent loses one deadline, not one per
/// read, and administrators get their refusal at once.
pub const PG_SILENCE_BACKOFF: Duration = Duration::from_secs(5);
/// How many times a serializable write that lost to a concurrent one is run (the first time
/// included).
pub const PG_WRITE_ATTEMPTS: usize = 12;
/// Connections the pool keeps at most.
pub const PG_POOL_SIZE: usize = 8;

struct PgError {
    message: String,
    retryable: bool,
    /// The database did not answer (a deadline, the silence backoff, a lost connection):
    /// the call is refused as unavailable, not as an internal error.
    silent: bool,
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::of(&e)
    }
}

impl PgError {
    fn of(e: &tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let retryable = matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        );
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => {
                // The driver's own text is terse ("error performing TLS handshake"): the causes
                // say what to fix (an unknown issuer, a refused connection).
                let mut message = format!("PostgreSQL: {e}");
                let mut source = std::error::Error::source(e);
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                message
            }
        };
        PgError {
            message,
            retryable,
            silent: e.is_closed(),
        }
    }
}

impl From<PgError> for Error {
    fn from(e: PgError) -> Self {
        if e.silent {
            Error::Unavailable(e.message)
        } else {
            Error::Postgres(e.message)
        }
    }
}

/// A pool of PostgreSQL connections and the runtime their I/O runs on.
pub struct PgPool {
    pool: deadpool_postgres::Pool,
    /// What the pool connects with: a listener ([`PgPool::listen`]) makes its own connection.
    config: Box<tokio_postgres::Config>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Until when calls fail at once: the database was found silent (see
    /// [`PG_SILENCE_BACKOFF`]).
    silent_until: std::sync::Mutex<Option<std::time::Instant>>,
    runtime: tokio::runtime::Handle,
    /// Ends the runtime's thread when the pool is dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
    /// Where it connects (password removed), for messages.
    target: String,
}

impl fmt::Debug for PgPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPool")
            .field("target", &self.target)
            .finish()
    }
}

/// TLS to the database: off, or verified against these roots.
pub enum PgTls {
    /// No TLS (`sslmode=disable`, or a server without TLS under `prefer`).
    None,
    /// Verify the server's certificate against these roots.
    Rustls(Arc<rustls::ClientConfig>),
}

impl PgPool {
    /// A pool for `url` (`postgres://user[:password]@host[:port]/dbname[?sslmode=…]`). Connects
    /// once to check that the database answers.
    pub fn connect(url: &str, tls: PgTls) -> std::result::Result<PgPool, String> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("database URL {}: {e}", redact(url)))?;
        let target = redact(url);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the database runtime: {e}"))?;
        let runtime = rt.handle().clone();
        std::thread::Builder::new()
            .name("cvpn-db".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| format!("cannot start the database thread: {e}"))?;
        // Every connection taken from the pool first rolls back whatever transaction a call
        // left open (one cut by the deadline, or whose ROLLBACK the silence backoff refused),
        // so no later call's COMMIT can commit another call's half-done writes. A connection
        // that cannot (still busy with a statement past its deadline) is dropped.
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Custom("ROLLBACK".into()),
        };
        let tls = match tls {
            PgTls::None => None,
            PgTls::Rustls(c) => Some(c),
        };
        let manager = match &tls {
            None => deadpool_postgres::Manager::from_config(
                config.clone(),
                tokio_postgres::NoTls,
                manager_config,
            ),
            Some(c) => deadpool_postgres::Manager::from_config(
                config.clone(),
                tokio_postgres_rustls::MakeRustlsConnect::new((**c).clone()),
                manager_config,
            ),
        };
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(PG_STATEMENT_TIMEOUT),
            create: Some(PG_STATEMENT_TIMEOUT),
            recycle: Some(PG_STATEMENT_TIMEOUT),
        };
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(PG_POOL_SIZE)
            .timeouts(timeouts)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("database pool: {e}"))?;
        let pg = PgPool {
            pool,
            config: Box::new(config),
            tls,
            silent_until: std::sync::Mutex::new(None),
            runtime,
            _stop: stop_tx,
            target,
        };
        // Fail at open, with the reason, rather than at the first call.
        pg.connection().map_err(|e| e.message)?;
        Ok(pg)
    }

    /// Where it connects, password removed.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `fut` on the pool's runtime with the statement deadline; waits for it.
    fn block<T: Send + 'static>(
        &self,
        what: &'static str,
        fut: impl Future<Output = std::result::Result<T, PgError>> + Send + 'static,
    ) -> std::result::Result<T, PgError> {
        let silent_until = *self.silent_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = silent_until {
            if std::time::Instant::now() < until {
                return Err(PgError {
                    message: format!(
                        "the database did not answer within {} s a moment ago; calls fail at \
                         once until {} s have passed",
                        PG_STATEMENT_TIMEOUT.as_secs(),
                        PG_SILENCE_BACKOFF.as_secs()
                    ),
                    retryable: false,
                    silent: true,
                });
            }
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let out = match tokio::time::timeout(PG_STATEMENT_TIMEOUT, fut).await {
                Ok(out) => (out, false),
                Err(_) => (
                    Err(PgError {
                        message: format!(
                            "the database did not answer {what} within {} s",
                            PG_STATEMENT_TIMEOUT.as_secs()
                        ),
                        retryable: false,
                        silent: true,
                    }),
                    true,
                ),
            };
            let _ = tx.send(out);
        });
        let (out, timed_out) = rx.recv().unwrap_or_else(|_| {
            (
                Err(PgError {
                    message: "the database thread has stopped".into(),
                    retryable: false,
                    silent: false,
                }),
                false,
            )
        });
        if timed_out {
            *self.silent_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::time::Instant::now() + PG_SILENCE_BACKOFF);
        }
        out
    }

    fn connection(&self) -> std::result::Result<PgTx<'_>, PgError> {
        let pool = self.pool.clone();
        let target = self.target.clone();
        let client = self.block("a connection request", async move {
            pool.get().await.map_err(|e| PgError {
                message: format!("cannot reach the database at {target}: {}", pool_error(&e)),
                retryable: false,
                silent: true,
            })
        })?;
        Ok(PgTx {
            client: Arc::new(client),
            pool: self,
        })
    }

    /// Runs `f` in one transaction begun with `begin`; commits if `f` succeeds. Runs it again
    /// (up to `attempts` times) when PostgreSQL refuses it for a concurrent transaction.
    pub(super) fn transaction<T>(
        &self,
        begin: &'static str,
        attempts: usize,
        mut f: impl FnMut(&Db<'_>) -> std::result::Result<T, crate::model::ApiError>,
    ) -> std::result::Result<T, crate::model::ApiError> {
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt));
            }
            let tx = self.connection().map_err(unavailable)?;
            tx.batch(begin).map_err(unavailable)?;
            let db = Db::postgres(&tx);
            match f(&db) {
                Ok(v) => match tx.batch("COMMIT") {
                    Ok(()) => return Ok(v),
                    Err(e) if e.retryable => last = Some(unavailable(e)),
                    Err(e) => return Err(unavailable(e)),
                },
                Err(e) => {
                    let _ = tx.batch("ROLLBACK");
                    if !db.must_retry() {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        let detail = last.map_or_else(String::new, |e| format!(" (last: {})", e.message));
        Err(crate::model::ApiError::new(
            crate::model::codes::SERVICE_UNAVAILABLE,
            format!(
                "the database refused this change {attempts} times for concurrent changes \
                 (other nodes' or other calls'){detail}; nothing was changed: try again"
            ),
        ))
    }

    /// Runs `sql` (several statements, no parameters) outside any transaction.
    pub fn batch(&self, sql: &str) -> std::result::Result<(), String> {
        let tx = self.connection().map_err(|e| e.message)?;
        tx.batch(sql).map_err(|e| e.message)
    }

    /// Listens to `NOTIFY channel` on a connection of its own (not the pool's), reconnecting
    /// every [`LISTEN_RETRY`] while the database is away. Each (re)connection is announced
    /// with [`Notice::Listening`] — whatever was notified before it may have been missed — and
    /// each notification with [`Notice::Notified`]. Stops when the receiver is dropped.
    pub fn listen(&self, channel: &'static str) -> tokio::sync::mpsc::Receiver<Notice> {
        // Notifications between two reads collapse: a full queue drops the newer ones, and the
        // reader reads the database's state anyway.
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let (config, tls, target) = (
            (*self.config).clone(),
            self.tls.clone(),
            self.target.clone(),
        );
        self.runtime.spawn(async move {
            let mut announced_loss = false;
            while !tx.is_closed() {
                let listened = match &tls {
                    None => match config.connect(tokio_postgres::NoTls).await {
                        Ok((client, conn)) => listen_on(client, conn, channel, &tx).await,
                        Err(e) => Err(PgError::of(&e).message),
                    },
                    Some(c) => {
                        let make = tokio_postgres_rustls::MakeRustlsConnect::new((**c).clone());
                        match config.connect(make).await {
                            Ok((client, conn)) => listen_on(client, conn, channel, &tx).await,
                            Err(e) => Err(PgError::of(&e).message),
                        }
                    }
                };
                match listened {
                    Ok(()) => announced_loss = false,
                    Err(e) if !announced_loss => {
                        tracing::warn!(database = %target, error = %e, "not listening to change notifications; retrying every second");
                        announced_loss = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        });
        rx
    }
}

/// How often a lost listener connection is tried again.
pub const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// What a listener ([`PgPool::listen`]) reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Listening (again): notifications sent before may have been missed.
    Listening,
    /// A notification arrived.
    Notified,
}

/// Drives one listener connection until it ends: `Ok` if it was listening when it ended (the
/// loss is announced by the next [`Notice::Listening`]), the reason otherwise.
async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut conn: tokio_postgres::Connection<S, T>,
    channel: &'static str,
    tx: &tokio::sync::mpsc::Sender<Notice>,
) -> std::result::Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::future::poll_fn;
    use tokio_postgres::AsyncMessage;
    // The connection must be driven for LISTEN to be answered: both at once.
    let statement = format!("LISTEN {channel}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                r.map_err(|e| PgError::of(&e).message)?;
                listening = true;
                let _ = tx.try_send(Notice::Listening);
            }
            m = poll_fn(|cx| conn.poll_message(cx)) => match m {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    let _ = tx.try_send(Notice::Notified);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) if listening => {
                    tracing::warn!(error = %PgError::of(&e).message, "the change-notification connection was lost; listening again");
                    return Ok(());
                }
                Some(Err(e)) => return Err(PgError::of(&e).message),
                None => return if listening { Ok(()) } else { Err("the database closed the connection".into()) },
            },
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// How long to wait before attempt `attempt` (1, 2, …) of a transaction that lost a conflict:
/// 2 ms doubling up to 128 ms, with jitter so that the racing writers spread out.
fn backoff(attempt: usize) -> Duration {
    let base = 2u64 << attempt.min(6);
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    ) % base;
    Duration::from_millis(base / 2 + jitter)
}

fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => PgError::of(e).message,
        other => other.to_string(),
    }
}

/// A PostgreSQL error the operator sees: what failed, and that changes wait for the database.
fn unavailable(e: PgError) -> crate::model::ApiError {
    unavailable_message(&e.message)
}

/// `ServiceUnavailable`, saying what the database did and what it means for the VPN.
fn unavailable_message(message: &str) -> crate::model::ApiError {
    crate::model::ApiError::new(
        crate::model::codes::SERVICE_UNAVAILABLE,
        format!(
            "{message}; running sessions continue with their current policy, changes are refused until the database answers again"
        ),
    )
}

/// One connection, checked out of the pool for a transaction.
pub(super) struct PgTx<'p> {
    client: Arc<deadpool_postgres::Object>,
    pool: &'p PgPool,
}

type PgRows = Vec<Vec<Value>>;

impl PgTx<'_> {
    fn batch(&self, sql: &str) -> std::result::Result<(), PgError> {
        let client = self.client.clone();
        let sql = sql.to_owned();
        self.pool.block("a statement", async move {
            client.batch_execute(&sql).await.map_err(PgError::from)
        })
    }

    fn execute(&self, sql: &str, values: Vec<Value>) -> std::result::Result<usize, PgError> {
        let client = self.client.clone();
        let sql = placeholders(sql);
        self.pool.block("a statement", async move {
            let stmt = client.prepare_cached(&sql).await?;
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                values.iter().map(|v| v as _).collect();
            let n = client.execute(&stmt, &params).await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn query(&self, sql: &str, values: Vec<Value>) -> std::result::Result<PgRows, PgError> {
        let client = self.client.clone();
        let sql = placeholders(sql);
        self.pool.block("a query", async move {
            let stmt = client.prepare_cached(&sql).await?;
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                values.iter().map(|v| v as _).collect();
            let rows = client.query(&stmt, &params).await?;
            rows.iter()
                .map(|r| (0..r.len()).map(|i| pg_value(r, i)).collect())
                .collect()
        })
    }
}

/// Column `i` of a PostgreSQL row as a [`Value`].
fn pg_value(r: &tokio_postgres::Row, i: usize) -> std::result::Result<Value, PgError> {
    let ty = r.columns()[i].type_().clone();
    let v = if ty == Type::INT8 {
        r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
    } else if ty == Type::INT4 {
        r.try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Int(v.into()))
    } else if ty == Type::INT2 {
        r.try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Int(v.into()))
    } else if ty == Type::BOOL {
        r.try_get::<_, Option<bool>>(i)?
            .map(|v| Value::Int(v.into()))
    } else if ty == Type::BYTEA {
        r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes)
    } else if ty == Type::TEXT || ty == Type::VARCHAR || ty == Type::NAME || ty == Type::BPCHAR {
        r.try_get::<_, Option<String>>(i)?.map(Value::Text)
    } else {
        return Err(PgError {
            message: format!("column {i} has type {ty}, which the store does not read"),
            retryable: false,
            silent: false,
        });
    };
    Ok(v.unwrap_or(Value::Null))
}

impl tokio_postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*i != 0).to_sql(ty, out)
                } else {
                    i.to_string().to_sql(ty, out)
                }
            }
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// `?N` placeholders as PostgreSQL's `$N`; quoted text is left alone.
pub fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// `url` without its password.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollar_numbers_outside_quotes() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://cvpn:s3cret@db.example:5432/cvpn"),
            "postgres://cvpn:***@db.example:5432/cvpn"
        );
        assert_eq!(
            redact("postgres://cvpn@127.0.0.1/cvpn"),
            "postgres://cvpn@127.0.0.1/cvpn"
        );
    }

    #[test]
    fn values_round_trip_through_the_readers() {
        let row = [
            Value::Int(7),
            Value::Null,
            Value::Text("x".into()),
            Value::Int(1),
        ];
        let r = Row { values: &row };
        assert_eq!(r.get::<_, u16>(0usize).unwrap(), 7);
        assert_eq!(r.get::<_, Option<String>>(1usize).unwrap(), None);
        assert_eq!(r.get::<_, String>(2usize).unwrap(), "x");
        assert!(r.get::<_, bool>(3usize).unwrap());
        assert!(matches!(
            r.get::<_, String>(0usize),
            Err(Error::Conversion { column: 0, .. })
        ));
        assert!(r.get::<_, i64>(9usize).is_err());
    }
}
