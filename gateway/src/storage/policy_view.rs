//! What an endpoint's data plane is told: its policy (rules and routes) and target networks,
//! in the model's terms ([`crate::model::policy`]).

use super::*;

impl Store {
    /// The data plane's policy for an endpoint on this store's node: every authorization rule,
    /// and every route through one of the node's own associations with its stable target id (the association's row id, never reused). Routes
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
                ports: r.ports(),
            })
            .collect();
            let routes = query(
                db,
                &format!(
                    "SELECT {ROUTE_COLS} FROM {ROUTE_FROM} WHERE r.endpoint_id = ?1 \
                     AND a.state = 'associated' AND {OWN_ASSOCIATION} ORDER BY r.seq"
                ),
                params![endpoint_id, self.node],
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
            live_associations(db, endpoint_id)?
                .into_iter()
                .filter(|a| a.status == AssociationStatus::Associated && self.is_own(a))
                .map(|a| {
                    Ok(TargetSpec {
                        id: a.target_id,
                        egress: security_groups::egress_of(db, &a.association_id)?,
                        interface: a.target_network_id,
                        snat_addr: a.snat_address,
                    })
                })
                .collect()
        })
    }
}

/// The associations a node's data plane uses: its own and those made before nodes existed
/// (`?2` is the store's node; a store of no node sees all).
const OWN_ASSOCIATION: &str =
    "(a.node IS NULL OR CAST(?2 AS TEXT) IS NULL OR a.node = CAST(?2 AS TEXT))";

impl Store {
    /// Whether association `a` is one this store's node serves (see [`OWN_ASSOCIATION`]).
    pub(super) fn is_own(&self, a: &TargetNetwork) -> bool {
        match (&a.node, &self.node) {
            (Some(theirs), Some(mine)) => theirs == mine,
            _ => true,
        }
    }

    /// Whether this store's node serves endpoint `endpoint_id`: it is `available` and one of
    /// its associated target networks is the node's own (or predates nodes).
    pub fn serves_endpoint(&self, endpoint_id: &str) -> Result<bool, ApiError> {
        self.read(|db| {
            let ep = load_endpoint(db, endpoint_id)?;
            Ok(ep.status == EndpointStatus::Available
                && live_associations(db, endpoint_id)?
                    .iter()
                    .any(|a| a.status == AssociationStatus::Associated && self.is_own(a)))
        })
    }

    /// Where clients reach the nodes serving endpoint `endpoint_id`: the public address of
    /// each live node with an association for it (every live node where an association
    /// predates nodes), by node name. Nodes without a public address are left out.
    pub fn endpoint_node_addresses(&self, endpoint_id: &str) -> Result<Vec<String>, ApiError> {
        let now = self.now();
        let stale = i64::try_from(super::nodes::NODE_STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            query(
                db,
                "SELECT DISTINCT n.name, n.address FROM nodes n JOIN associations a \
                 ON (a.node = n.name OR a.node IS NULL) \
                 WHERE a.endpoint_id = ?1 AND a.state = 'associated' \
                 AND n.heartbeat_at > ?2 AND n.address IS NOT NULL ORDER BY n.name",
                params![endpoint_id, now.0 - stale],
                |r| r.get::<_, String>(1),
            )
        })
    }
}
