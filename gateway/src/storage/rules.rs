//! Authorization rules: authorize, revoke, describe.

use super::*;

impl Store {
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
        let (protocol, ports) = port_params(req.protocol.as_deref(), req.port_range.as_deref())?;
        self.write(|db, now| {
            let ep = load_live_endpoint(db, &req.client_vpn_endpoint_id)?;
            let eid = ep.client_vpn_endpoint_id.as_str();
            let (group, all) = group_param(&access);
            let exists: Option<i64> = db
                .prepare_cached(
                    "SELECT seq FROM authorization_rules WHERE endpoint_id = ?1 AND destination = ?2 \
                     AND access_all = ?3 AND coalesce(group_id, '') = coalesce(?4, '') \
                     AND coalesce(protocol, '') = coalesce(?5, '') \
                     AND coalesce(port_range, '') = coalesce(?6, '')",
                )?
                .query_row(
                    params![eid, dest.to_string(), all, group, protocol, ports],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_some() {
                return Err(ApiError::new(
                    codes::DUPLICATE_AUTHORIZATION_RULE,
                    format!(
                        "endpoint {eid} already authorizes {} to {dest}{}",
                        access_text(&access),
                        ports_text(protocol.as_deref(), ports.as_deref())
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
            let seq: i64 = db
                .prepare_cached(
                    "INSERT INTO authorization_rules (endpoint_id, destination, group_id, access_all, \
                     description, created_at, protocol, port_range) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING seq",
                )?
                .query_row(
                    params![eid, dest.to_string(), group, all, description, now.0, protocol, ports],
                    |r| r.get(0),
                )?;
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
        let (protocol, ports) = port_params(req.protocol.as_deref(), req.port_range.as_deref())?;
        self.write(|db, _now| {
            let ep = load_live_endpoint(db, &req.client_vpn_endpoint_id)?;
            let eid = ep.client_vpn_endpoint_id.as_str();
            let (group, all) = group_param(&access);
            let found = db
                .prepare_cached(&format!(
                    "SELECT seq, {RULE_COLS} FROM authorization_rules WHERE endpoint_id = ?1 \
                     AND destination = ?2 AND access_all = ?3 AND coalesce(group_id, '') = coalesce(?4, '') \
                     AND coalesce(protocol, '') = coalesce(?5, '') \
                     AND coalesce(port_range, '') = coalesce(?6, '')"
                ))?
                .query_row(
                    params![eid, dest.to_string(), all, group, protocol, ports],
                    |r| Ok((r.get::<_, i64>(0)?, rule_row_at(r, 1)?)),
                )
                .optional()?;
            let Some((seq, rule)) = found else {
                return Err(ApiError::new(
                    codes::AUTHORIZATION_RULE_NOT_FOUND,
                    format!(
                        "endpoint {eid} has no rule authorizing {} to {dest}{}",
                        access_text(&access),
                        ports_text(protocol.as_deref(), ports.as_deref())
                    ),
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

/// A rule's protocol and port range as stored: the protocol's name and the range (`443`,
/// `8000-8100`), none for every port.
fn port_params(
    protocol: Option<&str>,
    ports: Option<&str>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    Ok(match validate::port_match("protocol", protocol, ports)? {
        None => (None, None),
        Some(m) => (Some(m.protocol_name().to_string()), m.range_text()),
    })
}

fn ports_text(protocol: Option<&str>, ports: Option<&str>) -> String {
    match (protocol, ports) {
        (Some(p), Some(r)) => format!(" on {p} port {r}"),
        (Some(p), None) => format!(" on {p}"),
        _ => String::new(),
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
