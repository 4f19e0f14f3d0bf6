//! Routes: create, delete, describe.

use super::*;

impl Store {
    /// Adds a route (origin `add-route`) through an associated target network. The
    /// destination must not overlap the client CIDR (`0.0.0.0/0` excepted); (destination,
    /// target network) must be new; the association's route quota applies.
    pub fn create_route(&self, req: &CreateRouteRequest) -> Result<Route, ApiError> {
        let dest = validate::cidr("destination-cidr-block", &req.destination_cidr_block)?;
        let (on_node, interface) = target_network_name(&req.target_network_id)?;
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
            let assoc = self.resolve_association(&live, on_node.as_deref(), &interface, eid)?;
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
}

/// A target network as a request names it: `INTERFACE`, or `NODE:INTERFACE` where several
/// nodes have an interface of that name.
pub(super) fn target_network_name(s: &str) -> Result<(Option<String>, String), ApiError> {
    const FIELD: &str = "target-network-id";
    match s.split_once(':') {
        Some((node, interface)) => {
            super::nodes::validate_node_name(node).map_err(|_| {
                ApiError::invalid(
                    FIELD,
                    format!("{s:?}: before ':' comes a node name (letters, digits, '-', '_', '.')"),
                )
            })?;
            Ok((
                Some(node.to_string()),
                validate::interface_name(FIELD, interface)?,
            ))
        }
        None => Ok((None, validate::interface_name(FIELD, s)?)),
    }
}

impl Store {
    /// The associated target network a request names (see [`target_network_name`]): with a
    /// node, that node's; without, this store's node's association of that interface, else
    /// the only one of that name.
    pub(super) fn resolve_association<'a>(
        &self,
        live: &'a [TargetNetwork],
        node: Option<&str>,
        interface: &str,
        eid: &str,
    ) -> Result<&'a TargetNetwork, ApiError> {
        let named: Vec<&TargetNetwork> = live
            .iter()
            .filter(|a| a.target_network_id == interface)
            .filter(|a| node.is_none_or(|n| a.node.as_deref() == Some(n)))
            .collect();
        let own = named
            .iter()
            .find(|a| self.node.is_some() && a.node == self.node)
            .copied();
        match (own, named.as_slice()) {
            (Some(a), _) | (None, &[a]) => Ok(a),
            (None, []) => {
                let names: Vec<String> = live.iter().map(association_name).collect();
                Err(ApiError::invalid(
                    "target-network-id",
                    format!(
                        "{} is not an associated target network of endpoint {eid} \
                         (associated: {})",
                        match node {
                            Some(n) => format!("{n}:{interface}"),
                            None => format!("{interface:?}"),
                        },
                        names.join(", ")
                    ),
                ))
            }
            (None, several) => {
                let names: Vec<String> = several.iter().map(|a| association_name(a)).collect();
                Err(ApiError::invalid(
                    "target-network-id",
                    format!(
                        "{interface:?} is associated on several nodes of endpoint {eid}; name \
                         one as NODE:INTERFACE ({})",
                        names.join(", ")
                    ),
                ))
            }
        }
    }
}

/// `NODE:INTERFACE`, or the interface alone for an association of no node.
fn association_name(a: &TargetNetwork) -> String {
    match &a.node {
        Some(n) => format!("{n}:{}", a.target_network_id),
        None => a.target_network_id.clone(),
    }
}
