//! `cvpn security-group …`: security groups, the egress rules of the target networks they are
//! applied to (`cvpn network apply-security-groups`).

use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Map};

use super::table::Table;
use super::{enc, insert, Cx};
use crate::model::{SecurityGroup, SecurityGroupList, SecurityGroupRule};

/// `cvpn security-group …`.
#[derive(Clone, Debug, Subcommand)]
pub enum SecurityGroupCommand {
    /// Creates a security group. Without --egress, everything may leave (AWS's default).
    Create {
        /// A unique name.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// A description.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// An egress rule, PROTOCOL[:PORTS]:CIDR, e.g. tcp:443:10.88.0.0/24, udp:5000-5100:10.0.0.0/8,
        /// icmp:10.88.0.0/24 or all:0.0.0.0/0; repeat for more (at most 16).
        #[arg(long = "egress", value_name = "RULE")]
        egress: Vec<String>,
    },
    /// Describes security groups (all, or those named).
    Describe {
        /// Security groups, sg-…; none means all.
        security_group_ids: Vec<String>,
    },
    /// Deletes a security group no target network uses.
    Delete {
        /// The security group, sg-….
        security_group_id: String,
    },
}

/// `tcp:443:10.88.0.0/24` → a rule (the API checks the values).
fn parse_rule(text: &str) -> anyhow::Result<SecurityGroupRule> {
    let parts: Vec<&str> = text.split(':').collect();
    let (protocol, ports, cidr) = match parts[..] {
        [p, c] => (p, None, c),
        [p, r, c] => (p, Some(r), c),
        _ => anyhow::bail!(
            "--egress {text:?}: write PROTOCOL[:PORTS]:CIDR, e.g. tcp:443:10.88.0.0/24 or all:0.0.0.0/0"
        ),
    };
    Ok(SecurityGroupRule {
        protocol: protocol.to_string(),
        port_range: ports.map(str::to_string),
        destination_cidr: cidr.to_string(),
    })
}

fn rules_text(g: &SecurityGroup) -> String {
    g.egress
        .iter()
        .map(|r| match &r.port_range {
            Some(p) => format!("{}:{p}:{}", r.protocol, r.destination_cidr),
            None => format!("{}:{}", r.protocol, r.destination_cidr),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn table(list: &[SecurityGroup]) -> String {
    let mut t = Table::new(&["SECURITY GROUP ID", "NAME", "EGRESS", "DESCRIPTION"]);
    for g in list {
        t.row(vec![
            g.security_group_id.clone(),
            g.group_name.clone(),
            rules_text(g),
            g.description.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

pub(super) async fn security_group(c: SecurityGroupCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        SecurityGroupCommand::Create {
            name,
            description,
            egress,
        } => {
            let mut m = Map::new();
            m.insert("group-name".into(), json!(name));
            insert(&mut m, "description", description);
            if !egress.is_empty() {
                let rules = egress
                    .iter()
                    .map(|e| parse_rule(e))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                m.insert("egress".into(), json!(rules));
            }
            let reply = cx
                .send_json(Method::POST, "/v1/security-groups".into(), m)
                .await?;
            cx.show(&reply, |g: SecurityGroup| table(&[g]))
        }
        SecurityGroupCommand::Describe { security_group_ids } => {
            let path = if security_group_ids.is_empty() {
                "/v1/security-groups".to_string()
            } else {
                format!(
                    "/v1/security-groups?security-group-ids={}",
                    enc(&security_group_ids.join(","))
                )
            };
            let reply = cx.get(path).await?;
            cx.show(&reply, |l: SecurityGroupList| table(&l.security_groups))
        }
        SecurityGroupCommand::Delete { security_group_id } => {
            let reply = cx
                .send(super::client::ApiRequest::new(
                    Method::DELETE,
                    format!("/v1/security-groups/{}", enc(&security_group_id)),
                ))
                .await?;
            cx.show(&reply, |g: SecurityGroup| {
                format!("deleted {}\n", g.security_group_id)
            })
        }
    }
}
