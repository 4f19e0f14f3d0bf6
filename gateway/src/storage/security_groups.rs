//! Security groups: egress rules for the traffic that leaves through the target networks they
//! are applied to (AWS's `ApplySecurityGroupsToClientVpnTargetNetwork`). A target network with
//! no group applied lets everything leave, as AWS's default group does. Applying groups is a
//! policy change of the endpoint: the data plane takes the new rules at its next resync.

use super::*;
use crate::model::{
    ApplySecurityGroupsRequest, ApplySecurityGroupsResult, CreateSecurityGroupRequest,
    SecurityGroup, SecurityGroupRule, MAX_EGRESS_RULES, MAX_SECURITY_GROUPS,
    MAX_SECURITY_GROUPS_PER_NETWORK, SECURITY_GROUP_ID_PREFIX,
};

const SG_COLS: &str = "id, name, description, egress, created_at";

fn sg_row(r: &Row<'_>) -> sql::Result<SecurityGroup> {
    let egress: String = r.get(3)?;
    Ok(SecurityGroup {
        security_group_id: r.get(0)?,
        group_name: r.get(1)?,
        description: r.get(2)?,
        egress: serde_json::from_str(&egress)
            .map_err(|e| conversion_error(3, format!("egress rules: {e}")))?,
        creation_time: ts(r, 4)?,
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        codes::SECURITY_GROUP_NOT_FOUND,
        format!("security group {id} does not exist (`cvpn security-group describe` lists them)"),
    )
}

/// Checks and normalises egress rules (protocol names lower case, CIDRs as networks).
fn checked_rules(rules: &[SecurityGroupRule]) -> Result<Vec<SecurityGroupRule>, ApiError> {
    if rules.len() > MAX_EGRESS_RULES {
        return Err(ApiError::invalid(
            "egress",
            format!(
                "{} rules: a group has at most {MAX_EGRESS_RULES} (the kernel's bound per target network)",
                rules.len()
            ),
        ));
    }
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("egress[{i}]");
            let dest = validate::cidr(&format!("{field}.destination-cidr"), &r.destination_cidr)?;
            let protocol = r.protocol.trim().to_ascii_lowercase();
            if protocol == "all" || protocol == "-1" {
                if r.port_range.is_some() {
                    return Err(ApiError::combination(format!(
                        "{field}: protocol all has no ports; name tcp or udp for a port range"
                    )));
                }
                return Ok(SecurityGroupRule {
                    protocol: "all".into(),
                    port_range: None,
                    destination_cidr: dest.trunc().to_string(),
                });
            }
            let m = validate::port_match(
                &format!("{field}.protocol"),
                Some(&protocol),
                r.port_range.as_deref(),
            )?
            .ok_or_else(|| ApiError::missing(&format!("{field}.protocol"), "name a protocol"))?;
            Ok(SecurityGroupRule {
                protocol: m.protocol_name().to_string(),
                port_range: m.range_text(),
                destination_cidr: dest.trunc().to_string(),
            })
        })
        .collect()
}

/// The security groups applied to an association, in the order given.
pub(super) fn groups_of(db: &Db, association_id: &str) -> Result<Vec<String>, ApiError> {
    query(
        db,
        "SELECT security_group_id FROM association_security_groups WHERE association_id = ?1 \
         ORDER BY position",
        [association_id],
        |r| r.get(0),
    )
}

/// The egress rules of an association's groups together; `None` when none is applied.
pub(super) fn egress_of(
    db: &Db,
    association_id: &str,
) -> Result<Option<Vec<policy::EgressRule>>, ApiError> {
    let groups = groups_of(db, association_id)?;
    if groups.is_empty() {
        return Ok(None);
    }
    let mut rules = Vec::new();
    for id in groups {
        let g = load(db, &id)?;
        rules.extend(g.egress.iter().filter_map(SecurityGroupRule::egress));
    }
    rules.sort();
    rules.dedup();
    Ok(Some(rules))
}

fn load(db: &Db, id: &str) -> Result<SecurityGroup, ApiError> {
    db.prepare_cached(&format!(
        "SELECT {SG_COLS} FROM security_groups WHERE id = ?1"
    ))?
    .query_row([id], sg_row)
    .optional()?
    .ok_or_else(|| not_found(id))
}

impl Store {
    /// Makes a security group; without egress rules, AWS's default (everything may leave).
    pub fn create_security_group(
        &self,
        req: &CreateSecurityGroupRequest,
    ) -> Result<SecurityGroup, ApiError> {
        let name = validate::text("group-name", &req.group_name, 255)?
            .ok_or_else(|| ApiError::missing("group-name", "name the security group"))?;
        let description = validate::description("description", req.description.as_deref())?;
        let egress = match &req.egress {
            None => vec![SecurityGroupRule {
                protocol: "all".into(),
                port_range: None,
                destination_cidr: "0.0.0.0/0".into(),
            }],
            Some(rules) => checked_rules(rules)?,
        };
        let id = new_id(SECURITY_GROUP_ID_PREFIX)?;
        let text = serde_json::to_string(&egress)
            .map_err(|e| ApiError::internal(format!("egress rules: {e}")))?;
        self.write(|db, now| {
            let n: i64 = db
                .prepare_cached("SELECT count(*) FROM security_groups")?
                .query_row((), |r| r.get(0))?;
            if usize::try_from(n).unwrap_or(usize::MAX) >= MAX_SECURITY_GROUPS {
                return Err(ApiError::new(
                    codes::LIMIT_EXCEEDED,
                    format!("{n} security groups exist, the most kept: delete one no network uses"),
                ));
            }
            let taken = db
                .prepare_cached("SELECT 1 FROM security_groups WHERE name = ?1")?
                .exists([name.as_str()])?;
            if taken {
                return Err(ApiError::new(
                    codes::DUPLICATE_SECURITY_GROUP,
                    format!("a security group named {name:?} exists already"),
                ));
            }
            db.prepare_cached(
                "INSERT INTO security_groups (id, name, description, egress, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, name, description, text, now.0])?;
            load(db, &id)
        })
    }

    /// The security groups (all, or those of `ids`), oldest first.
    pub fn describe_security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, ApiError> {
        for id in ids {
            validate::id("security-group-id", SECURITY_GROUP_ID_PREFIX, id)?;
        }
        self.read(|db| {
            if ids.is_empty() {
                return query(
                    db,
                    &format!("SELECT {SG_COLS} FROM security_groups ORDER BY created_at, id"),
                    (),
                    sg_row,
                );
            }
            ids.iter().map(|id| load(db, id)).collect()
        })
    }

    /// Deletes a security group no target network uses.
    pub fn delete_security_group(&self, id: &str) -> Result<SecurityGroup, ApiError> {
        validate::id("security-group-id", SECURITY_GROUP_ID_PREFIX, id)?;
        self.write(|db, _| {
            let g = load(db, id)?;
            let users: Vec<String> = query(
                db,
                "SELECT association_id FROM association_security_groups \
                 WHERE security_group_id = ?1 ORDER BY association_id",
                [id],
                |r| r.get(0),
            )?;
            if !users.is_empty() {
                return Err(ApiError::new(
                    codes::SECURITY_GROUP_IN_USE,
                    format!(
                        "security group {id} is applied to {}: apply other groups to those \
                         target networks first",
                        users.join(", ")
                    ),
                ));
            }
            db.prepare_cached("DELETE FROM security_groups WHERE id = ?1")?
                .execute([id])?;
            Ok(g)
        })
    }

    /// Applies security groups to the endpoint's live target networks (those of node
    /// `vpc-id`, or every node's): they replace the groups applied before; an empty list goes
    /// back to AWS's default group. A policy change: the data plane takes it at once.
    pub fn apply_security_groups(
        &self,
        endpoint_id: &str,
        req: &ApplySecurityGroupsRequest,
    ) -> Result<ApplySecurityGroupsResult, ApiError> {
        if req.security_group_ids.len() > MAX_SECURITY_GROUPS_PER_NETWORK {
            return Err(ApiError::invalid(
                "security-group-ids",
                format!(
                    "{} groups: at most {MAX_SECURITY_GROUPS_PER_NETWORK} per target network",
                    req.security_group_ids.len()
                ),
            ));
        }
        let mut ids: Vec<String> = Vec::new();
        for id in &req.security_group_ids {
            validate::id("security-group-ids", SECURITY_GROUP_ID_PREFIX, id)?;
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        self.write(|db, _| {
            let ep = load_live_endpoint(db, endpoint_id)?;
            let eid = ep.client_vpn_endpoint_id.as_str();
            let mut rules = 0;
            for id in &ids {
                rules += load(db, id)?.egress.len();
            }
            if rules > MAX_EGRESS_RULES {
                return Err(ApiError::invalid(
                    "security-group-ids",
                    format!(
                        "the groups have {rules} egress rules together: a target network takes \
                         at most {MAX_EGRESS_RULES}"
                    ),
                ));
            }
            let targets: Vec<TargetNetwork> = live_associations(db, eid)?
                .into_iter()
                .filter(|a| match &req.vpc_id {
                    Some(node) => a.node.as_deref() == Some(node.as_str()),
                    None => true,
                })
                .collect();
            if targets.is_empty() {
                return Err(ApiError::invalid(
                    "vpc-id",
                    match &req.vpc_id {
                        Some(n) => format!("endpoint {eid} has no target network of node {n:?}"),
                        None => format!("endpoint {eid} has no target network to apply them to"),
                    },
                ));
            }
            for a in &targets {
                db.prepare_cached(
                    "DELETE FROM association_security_groups WHERE association_id = ?1",
                )?
                .execute([a.association_id.as_str()])?;
                for (i, id) in ids.iter().enumerate() {
                    db.prepare_cached(
                        "INSERT INTO association_security_groups \
                         (association_id, security_group_id, position) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![a.association_id, id, i as i64])?;
                }
            }
            bump_revision(db, eid)?;
            Ok(ApplySecurityGroupsResult {
                security_group_ids: ids.clone(),
                association_ids: targets.into_iter().map(|a| a.association_id).collect(),
            })
        })
    }
}
