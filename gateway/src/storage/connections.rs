//! Client connections as the daemon records them: start, counters, end, terminate, describe.

use super::*;

impl Store {
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
        self.record(|db, now| {
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
                 username, device_ip, device_port, transport, start_time, last_update_time, \
                 node) VALUES (?1, ?2, 'active', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
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
                now.0,
                self.node
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
        self.record(|db, now| {
            load_live_connection(db, id)?;
            set_counters(db, id, counters, now)?;
            load_connection(db, id)
        })
    }

    /// Records the counters of many connections in one transaction (one fsync); unknown and
    /// ended connections are skipped. Returns how many were updated.
    ///
    /// A connection a sweep recorded as ended (its node was cut off the database long enough
    /// to be found dead) is active again: counters prove it runs.
    pub fn update_connections(
        &self,
        batch: &[(String, ConnectionCounters)],
    ) -> Result<usize, ApiError> {
        self.record(|db, now| {
            let mut n = 0;
            for (id, counters) in batch {
                db.prepare_cached(
                    "UPDATE connections SET status = 'active', end_time = NULL, swept_at = NULL \
                     WHERE id = ?1 AND swept_at IS NOT NULL AND status = 'terminated'",
                )?
                .execute([id])?;
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
        self.record(|db, now| {
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
        self.record(|db, _now| {
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

    /// After a daemon restart, none of its recorded connections survives: every `active` or
    /// `terminating` one of this store's node (and any recorded before nodes existed; every
    /// one for a store without a node) is ended (`terminated`, end time = its last update).
    /// Other nodes' connections are theirs. Returns the ids ended.
    pub fn close_stale_connections(&self) -> Result<Vec<String>, ApiError> {
        self.record(|db, _now| end_connections_of(db, self.node.as_deref()))
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
                     AND (CAST(?2 AS TEXT) IS NULL OR endpoint_id = ?2) AND (CAST(?3 AS TEXT) IS NULL OR id = ?3) \
                     AND (CAST(?4 AS TEXT) IS NULL OR username = ?4 OR (username IS NULL AND common_name = ?4)) AND (CAST(?5 AS TEXT) IS NULL OR status = ?5) \
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

/// Records the live connections of `node` as ended at their last update (the daemon that held
/// them is gone), and those recorded before nodes existed; returns their ids. `None`: every
/// live connection (a store without a node: one host).
pub(super) fn end_connections_of(db: &Db, node: Option<&str>) -> Result<Vec<String>, ApiError> {
    const MINE: &str = "status IN ('active', 'terminating') \
        AND (CAST(?1 AS TEXT) IS NULL OR node IS NULL OR node = ?1)";
    let ids = query(
        db,
        &format!("SELECT id FROM connections WHERE {MINE} ORDER BY seq"),
        [node],
        |r| r.get(0),
    )?;
    db.execute(
        &format!(
            "UPDATE connections SET status = 'terminated', end_time = last_update_time WHERE {MINE}"
        ),
        [node],
    )?;
    Ok(ids)
}
