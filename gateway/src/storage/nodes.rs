//! The nodes: the daemons serving from this database, each registered under a name with a
//! heartbeat.
//!
//! A daemon registers when it starts ([`Store::register_node`]), beats every
//! [`HEARTBEAT_EVERY`] and removes itself when it stops. A node whose heartbeat is older than
//! [`NODE_STALE_AFTER`] is dead (killed, cut off).
//!
//! Until the client CIDR is split between nodes and changes propagate between them, one node
//! serves a database at a time: a daemon starting while another node *of another name* is
//! alive is refused, saying which, so two daemons never hand out the same client address or
//! close each other's connections. A node of the same name is the same host restarting (after
//! a crash its last heartbeat may still look fresh): it takes over its own row. A dead node's
//! place can be taken by another (a standby host) once its heartbeat is stale.

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

impl Store {
    /// Registers this daemon as node `name`, run `instance`. Refused (`IncorrectState`) while
    /// another node of another name is alive; see the [module documentation](self).
    pub fn register_node(
        &self,
        name: &str,
        instance: &str,
        address: Option<&str>,
    ) -> Result<Node, ApiError> {
        validate_node_name(name)?;
        let stale = i64::try_from(NODE_STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
        self.record(|db, now| {
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
                        "node {:?} is serving from this database (last heartbeat {} s ago); \
                         one node serves a database at a time for now: stop it, or start this \
                         one {} s after it died",
                        other.name,
                        (now.0 - other.heartbeat_at.0).max(0),
                        NODE_STALE_AFTER.as_secs()
                    ),
                ));
            }
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
        self.register_node(name, instance, address)?;
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
                    "UPDATE connections SET status = 'terminated', end_time = last_update_time \
                     WHERE node = ?1 AND status IN ('active', 'terminating')",
                    [&name],
                )?;
                db.execute("DELETE FROM nodes WHERE name = ?1", [&name])?;
                swept.push(SweptNode { name, connections });
            }
            Ok(swept)
        })
    }

    /// Removes node `name` (this run only): a clean stop.
    pub fn deregister_node(&self, name: &str, instance: &str) -> Result<(), ApiError> {
        self.record(|db, _now| {
            db.prepare_cached("DELETE FROM nodes WHERE name = ?1 AND instance = ?2")?
                .execute(params![name, instance])?;
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
