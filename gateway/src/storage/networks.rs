//! Target network associations: associate, disassociate, subnet updates, describe.

use super::*;

impl Store {
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
        let node = match &req.node {
            Some(n) => {
                super::nodes::validate_node_name(n).map_err(|e| {
                    ApiError::invalid("node", e.message.trim_start_matches("node_name: "))
                })?;
                Some(n.clone())
            }
            None => self.node.clone(),
        };
        let assoc_id = new_id(ASSOCIATION_ID_PREFIX)?;
        self.write(|db, now| {
            let ep = load_live_endpoint(db, &req.client_vpn_endpoint_id)?;
            let eid = ep.client_vpn_endpoint_id.as_str();
            if let Some(a) = live_associations(db, eid)?
                .into_iter()
                .find(|a| a.target_network_id == interface && a.node == node)
            {
                let on = node
                    .as_deref()
                    .map(|n| format!(" of node {n}"))
                    .unwrap_or_default();
                return Err(ApiError::new(
                    codes::DUPLICATE_ASSOCIATION,
                    format!(
                        "target-network-id: {interface}{on} is already associated with endpoint \
                         {eid} ({})",
                        a.association_id
                    ),
                ));
            }
            if let Some(net) = &subnet {
                self.check_subnet(&ep, net)?;
            }
            let seq = db
                .prepare_cached(
                    "INSERT INTO associations (id, endpoint_id, interface, subnet, snat_address, \
                 state, created_at, updated_at, node) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'associated', ?6, ?6, ?7) RETURNING seq",
                )?
                .query_row(
                    params![
                        assoc_id,
                        eid,
                        interface,
                        subnet.map(|n| n.to_string()),
                        snat.map(|a| a.to_string()),
                        now.0,
                        node
                    ],
                    |r| r.get::<_, i64>(0),
                )?;
            let seq = target_id(seq)?;
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

    pub(super) fn route_limit(&self, what: &str) -> ApiError {
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
            let mut all = query(
                db,
                &format!("SELECT {ASSOC_COLS} FROM associations WHERE endpoint_id = ?1 ORDER BY seq"),
                [endpoint_id],
                assoc_row,
            )?;
            for a in &mut all {
                a.security_group_ids = security_groups::groups_of(db, &a.association_id)?;
            }
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
}
