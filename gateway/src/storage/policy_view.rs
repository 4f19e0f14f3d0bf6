//! What an endpoint's data plane is told: its policy (rules and routes) and target networks,
//! in the model's terms ([`crate::model::policy`]).

use super::*;

impl Store {
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
}
