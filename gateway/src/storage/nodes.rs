//! The nodes: the daemons serving from this database, each registered under a name with a
//! heartbeat.
//!
//! A daemon registers when it starts ([`Store::register_node`]), beats every
//! [`HEARTBEAT_EVERY`] and removes itself when it stops. A node whose heartbeat is older than
//! [`NODE_STALE_AFTER`] is dead (killed, cut off).
//!
//! On PostgreSQL any number of nodes of different names serve one database together: each
//! serves the endpoints it has target network associations for, hands out client addresses
//! from the blocks it claimed (`address_blocks.rs`) and ends only its own connections. A
//! SQLite database is a file on one host, so one node serves it at a time: a daemon starting
//! while another node *of another name* is alive there is refused, saying which.
//!
//! A node of the same name is the same host restarting (after a crash its last heartbeat may
//! still look fresh): it takes over its own row, and the address blocks its previous run held
//! become free (that run's sessions are gone). A node that was swept while cut off from the
//! database and comes back rejoins with its blocks, which nobody took while any other block was
//! free.

use std::time::Duration;

use super::*;

/// How often a running daemon refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A node silent for this long is dead: three missed heartbeats.
pub const NODE_STALE_AFTER: Duration = Duration::from_secs(15);
/// The longest node name.
pub const MAX_NODE_NAME: usize = 63;

/// A daemon serving from this database.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Node {
    /// The operator's name for the host (`node_name`; the host name by default).
    pub name: String,
    /// This run of the daemon.
    pub instance: String,
    /// Where clients reach it (`public_host`), if known.
    pub address: Option<String>,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
}

/// What a heartbeat found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// Recorded.
    Beat,
    /// The node had been swept as dead (it was cut off): registered again.
    Rejoined,
}

/// A dead node that [`Store::sweep_dead_nodes`] removed, and the connections it recorded as
/// ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweptNode {
    pub name: String,
    pub connections: Vec<String>,
}

const NODE_COLS: &str = "name, instance, address, started_at, heartbeat_at";

fn node_row(r: &Row<'_>) -> sql::Result<Node> {
    Ok(Node {
        name: r.get(0)?,
        instance: r.get(1)?,
        address: r.get(2)?,
        started_at: ts(r, 3)?,
        heartbeat_at: ts(r, 4)?,
    })
}

/// Checks a node name: 1 to [`MAX_NODE_NAME`] letters, digits, `-`, `_` or `.`.
pub fn validate_node_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "node_name",
            format!("{name:?}: use 1 to {MAX_NODE_NAME} letters, digits, '-', '_' or '.'"),
        ))
    }
}

fn upsert_node_row(
    db: &Db,
    name: &str,
    instance: &str,
    address: Option<&str>,
    now: Timestamp,
) -> Result<Node, ApiError> {
    db.prepare_cached(
        "INSERT INTO nodes (name, instance, address, started_at, heartbeat_at) \
         VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (name) DO UPDATE SET \
         instance = excluded.instance, address = excluded.address, \
         started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
    )?
    .execute(params![name, instance, address, now.0])?;
    Ok(db
        .prepare_cached(&format!("SELECT {NODE_COLS} FROM nodes WHERE name = ?1"))?
        .query_row([name], node_row)?)
}

impl Store {
    /// Registers this daemon as node `name`, run `instance`: a fresh start, so the address
    /// blocks a previous run of `name` held are released. On SQLite, refused (`IncorrectState`)
    /// while another node of another name is alive; see the [module documentation](self).
    pub fn register_node(
        &self,
        name: &str,
        instance: &str,
        address: Option<&str>,
    ) -> Result<Node, ApiError> {
        self.upsert_node(name, instance, address, true)
    }

    fn upsert_node(
        &self,
        name: &str,
        instance: &str,
        address: Option<&str>,
        fresh_start: bool,
    ) -> Result<Node, ApiError> {
        validate_node_name(name)?;
        let stale = i64::try_from(NODE_STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
        let one_node_only = !self.is_shared();
        self.record(|db, now| {
            if fresh_start {
                db.prepare_cached("DELETE FROM address_blocks WHERE node = ?1")?
                    .execute([name])?;
            }
            if !one_node_only {
                return upsert_node_row(db, name, instance, address, now);
            }
            let live: Vec<Node> = query(
                db,
                &format!(
                    "SELECT {NODE_COLS} FROM nodes WHERE name <> ?1 AND heartbeat_at > ?2 \
                     ORDER BY name"
                ),
                params![name, now.0 - stale],
                node_row,
            )?;
            if let Some(other) = live.first() {
                return Err(ApiError::new(
                    codes::INCORRECT_STATE,
                    format!(
                        "node {:?} is serving from this SQLite database (last heartbeat {} s \
                         ago); one node serves a SQLite database at a time: stop it, or start \
                         this one {} s after it died. Several nodes share a PostgreSQL database \
                         (database = \"postgres://…\")",
                        other.name,
                        (now.0 - other.heartbeat_at.0).max(0),
                        NODE_STALE_AFTER.as_secs()
                    ),
                ));
            }
            upsert_node_row(db, name, instance, address, now)
        })
    }

    /// Refreshes node `name`'s heartbeat. A node found dead and swept meanwhile (cut off from
    /// the database for longer than [`NODE_STALE_AFTER`]) registers again:
    /// [`Heartbeat::Rejoined`]. `IncorrectState` when another run has taken the name over, or
    /// another host serves the database now: this daemon must stop serving.
    pub fn node_heartbeat(
        &self,
        name: &str,
        instance: &str,
        address: Option<&str>,
    ) -> Result<Heartbeat, ApiError> {
        let swept = self.record(|db, now| {
            let n = db
                .prepare_cached(
                    "UPDATE nodes SET heartbeat_at = ?3 WHERE name = ?1 AND instance = ?2",
                )?
                .execute(params![name, instance, now.0])?;
            if n == 1 {
                return Ok(false);
            }
            let taken: Option<String> = db
                .prepare_cached("SELECT instance FROM nodes WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?;
            if taken.is_some() {
                return Err(ApiError::new(
                    codes::INCORRECT_STATE,
                    format!("node {name:?} has been taken over by another run of the daemon"),
                ));
            }
            Ok(true)
        })?;
        if !swept {
            return Ok(Heartbeat::Beat);
        }
        self.upsert_node(name, instance, address, false)?;
        Ok(Heartbeat::Rejoined)
    }

    /// The nodes whose heartbeat is older than [`NODE_STALE_AFTER`] (this store's own node
    /// aside): their live connections are recorded as ended and their rows removed, in one
    /// transaction, so any node may run it at any time and each dead node is swept once. A
    /// node that comes back registers again.
    pub fn sweep_dead_nodes(&self) -> Result<Vec<SweptNode>, ApiError> {
        let stale = i64::try_from(NODE_STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
        self.record(|db, now| {
            let dead: Vec<String> = query(
                db,
                "SELECT name FROM nodes WHERE heartbeat_at <= ?1 \
                 AND (CAST(?2 AS TEXT) IS NULL OR name <> ?2) ORDER BY name",
                params![now.0 - stale, self.node],
                |r| r.get(0),
            )?;
            let mut swept = Vec::with_capacity(dead.len());
            for name in dead {
                let connections: Vec<String> = query(
                    db,
                    "SELECT id FROM connections WHERE node = ?1 \
                     AND status IN ('active', 'terminating') ORDER BY seq",
                    [&name],
                    |r| r.get(0),
                )?;
                db.execute(
                    "UPDATE connections SET status = 'terminated', end_time = last_update_time, \
                     swept_at = ?2 WHERE node = ?1 AND status IN ('active', 'terminating')",
                    params![&name, now.0],
                )?;
                db.execute("DELETE FROM nodes WHERE name = ?1", [&name])?;
                swept.push(SweptNode { name, connections });
            }
            Ok(swept)
        })
    }

    /// Removes node `name` (this run only): a clean stop. Its address blocks are free again.
    pub fn deregister_node(&self, name: &str, instance: &str) -> Result<(), ApiError> {
        self.record(|db, _now| {
            let n = db
                .prepare_cached("DELETE FROM nodes WHERE name = ?1 AND instance = ?2")?
                .execute(params![name, instance])?;
            if n == 1 {
                db.prepare_cached("DELETE FROM address_blocks WHERE node = ?1")?
                    .execute([name])?;
            }
            Ok(())
        })
    }

    /// Every registered node, by name; `alive` tells whether its heartbeat is fresh.
    pub fn describe_nodes(&self) -> Result<Vec<(Node, bool)>, ApiError> {
        let now = self.now();
        let stale = i64::try_from(NODE_STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
        let nodes = self.read(|db| {
            query(
                db,
                &format!("SELECT {NODE_COLS} FROM nodes ORDER BY name"),
                (),
                node_row,
            )
        })?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let alive = n.heartbeat_at.0 > now.0 - stale;
                (n, alive)
            })
            .collect())
    }
}
