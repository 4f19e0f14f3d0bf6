//! Importing the declaration of `cvpn serve --config FILE` ([`EndpointConfig`]) into the store,
//! idempotently: applying the same file twice changes nothing the second time.
//!
//! # Which endpoint a file declares
//!
//! An endpoint created by [`apply_endpoint_config`] carries the tag [`APPLIED_TAG_KEY`] whose
//! value is the file's **immutable** identity: `"<client CIDR> <transport>"`, e.g.
//! `"10.2.0.0/22 udp"` (see [`config_key`]). Applying a file looks for the live (not
//! `deleting`/`deleted`) endpoint with that tag and value:
//!
//! * found: the endpoint is brought in line with the file (mutable fields modified, target
//!   networks, routes, rules and CRL reconciled);
//! * not found: a new endpoint is created and tagged.
//!
//! Only the immutable fields are in the key. The port, DNS servers, split tunnel and the server
//! certificate/key are mutable (AWS semantics), so changing them in the file modifies the same
//! endpoint. Changing the client CIDR or the transport (immutable on AWS: it is another
//! endpoint) makes the file declare **another endpoint**: a new one is created, and the one
//! applied from the old declaration is left untouched (its id is listed in
//! [`ApplyReport::superseded`] so that the caller can tell the operator, or disassociate and
//! delete it). The client CA (authentication options) is immutable too but is not part of the
//! key: a file whose client CA differs from its endpoint's is refused with
//! `OperationNotPermitted` (the store's own rule for modify).
//!
//! # What is reconciled, and how
//!
//! * target networks, by interface name: missing ones are associated (subnet unknown: the
//!   daemon fills it in), ones no longer in the file are disassociated; one whose SNAT address
//!   changed is disassociated and associated again (the store has no call to change it), which
//!   removes and re-creates the routes through it;
//! * routes of origin `add-route`, by (destination, target interface): missing ones are
//!   created, others deleted; routes of origin `associate` are never touched (and one to the
//!   same destination through the same network satisfies a declared route);
//! * authorization rules, by (destination, access) *and* description: a rule whose description
//!   changed is revoked and authorized again;
//! * the CRL: imported when given and different from the stored one. A file without `crl`
//!   leaves a stored CRL alone (the store has no call to remove one).
//!
//! Each step is one store call (one transaction); apply as a whole is not atomic. Re-applying
//! the file after a failure finishes the job, since every step is computed from the store's
//! current state.

use std::collections::BTreeSet;

use crate::config::EndpointConfig;
use crate::model::policy::Access;

use super::*;

/// The tag that marks an endpoint as applied from a configuration file; its value is
/// [`config_key`].
pub const APPLIED_TAG_KEY: &str = "cvpn:config";

/// The stable identity of the endpoint a file declares: its immutable fields,
/// `"<client CIDR> <transport>"`.
pub fn config_key(cfg: &EndpointConfig) -> String {
    format!("{} {}", cfg.client_cidr, cfg.transport)
}

/// What [`apply_endpoint_config`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The endpoint the file declares.
    pub endpoint_id: String,
    /// True if the endpoint was created by this call.
    pub created: bool,
    /// One human-readable line per change, in the order made; empty when nothing changed.
    pub changes: Vec<String>,
    /// Connections the daemon must close (a disassociation of the last target network marks
    /// them `terminating`).
    pub terminate_connections: Vec<String>,
    /// The CRL imported by this call, if any (the daemon terminates the revoked sessions).
    pub crl: Option<CrlSummary>,
    /// Live endpoints applied from a file with the same listener (transport and port) but
    /// another identity (another client CIDR): probably the previous version of this file.
    /// They are left alone.
    pub superseded: Vec<String>,
}

impl ApplyReport {
    /// True if the call changed anything in the store.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

fn is_live_assoc(a: &TargetNetwork) -> bool {
    matches!(
        a.status,
        AssociationStatus::Associated | AssociationStatus::Associating
    )
}

fn access_text(a: &Access) -> String {
    match a {
        Access::AllGroups => "all groups".to_string(),
        Access::Group(g) => format!("group {g:?}"),
    }
}

/// Imports `cfg` (with the PEM texts its paths name, read by the caller) into `store`; see the
/// module documentation for the key and the rules.
pub fn apply_endpoint_config(
    store: &Store,
    cfg: &EndpointConfig,
    server_cert_pem: &str,
    server_key_pem: &str,
    client_ca_pem: Option<&str>,
    crl_pem: Option<&str>,
) -> Result<ApplyReport, ApiError> {
    let key = config_key(cfg);
    let transport = cfg.transport;
    let dns: Vec<String> = cfg.dns_servers.iter().map(|a| a.to_string()).collect();
    let mut auth: Vec<AuthenticationOption> = client_ca_pem
        .map(|ca| AuthenticationOption::CertificateAuthentication {
            client_root_certificate_chain: ca.to_string(),
        })
        .into_iter()
        .collect();
    if let Some(dir) = &cfg.directory {
        auth.push(AuthenticationOption::DirectoryServiceAuthentication {
            directory_id: store.describe_directory(dir)?.directory_id,
        });
    }
    if let Some(idp) = &cfg.idp {
        auth.push(AuthenticationOption::FederatedAuthentication {
            saml_provider_arn: store.describe_identity_provider(idp)?.id,
            self_service_saml_provider_arn: None,
        });
    }
    let mut report = ApplyReport::default();

    // ---- the endpoint ----
    let live: Vec<Endpoint> = store
        .describe_endpoints(&[])?
        .into_iter()
        .filter(|e| {
            matches!(
                e.status,
                EndpointStatus::PendingAssociate | EndpointStatus::Available
            )
        })
        .collect();
    let tagged = |e: &Endpoint| {
        e.tags
            .iter()
            .find(|t| t.key == APPLIED_TAG_KEY)
            .map(|t| t.value.clone())
    };
    let mut matching = live
        .iter()
        .filter(|e| tagged(e).as_deref() == Some(key.as_str()));
    let found = matching.next().cloned();
    if let Some(other) = matching.next() {
        return Err(ApiError::incorrect_state(format!(
            "endpoints {} and {} are both tagged {APPLIED_TAG_KEY}={key:?}; delete one or remove \
             its tag",
            found
                .as_ref()
                .map_or("", |e| e.client_vpn_endpoint_id.as_str()),
            other.client_vpn_endpoint_id
        )));
    }
    report.superseded = live
        .iter()
        .filter(|e| {
            tagged(e).is_some_and(|v| v != key)
                && e.transport_protocol == transport
                && e.vpn_port == cfg.port
        })
        .map(|e| e.client_vpn_endpoint_id.clone())
        .collect();

    let eid = match found {
        Some(ep) => {
            let eid = ep.client_vpn_endpoint_id.clone();
            let res = store.modify_endpoint(
                &eid,
                &ModifyEndpointRequest {
                    client_cidr_block: Some(cfg.client_cidr.to_string()),
                    transport_protocol: Some(transport.as_str().to_string()),
                    authentication_options: Some(auth),
                    server_certificate: Some(server_cert_pem.to_string()),
                    server_private_key: Some(server_key_pem.to_string()),
                    vpn_port: Some(i64::from(cfg.port)),
                    dns_servers: Some(dns),
                    split_tunnel: Some(cfg.split_tunnel),
                    self_service_portal: Some(cfg.self_service_portal),
                    ..Default::default()
                },
            )?;
            for field in &res.changed {
                report
                    .changes
                    .push(format!("modified endpoint {eid}: {field}"));
            }
            eid
        }
        None => {
            let ep = store.create_endpoint(&CreateEndpointRequest {
                client_cidr_block: Some(cfg.client_cidr.to_string()),
                server_certificate: Some(server_cert_pem.to_string()),
                server_private_key: Some(server_key_pem.to_string()),
                authentication_options: auth,
                transport_protocol: Some(transport.as_str().to_string()),
                vpn_port: Some(i64::from(cfg.port)),
                dns_servers: Some(dns),
                split_tunnel: Some(cfg.split_tunnel),
                self_service_portal: Some(cfg.self_service_portal),
                tags: vec![Tag {
                    key: APPLIED_TAG_KEY.to_string(),
                    value: key.clone(),
                }],
                ..Default::default()
            })?;
            report.created = true;
            report.changes.push(format!(
                "created endpoint {} ({key})",
                ep.client_vpn_endpoint_id
            ));
            ep.client_vpn_endpoint_id
        }
    };
    report.endpoint_id = eid.clone();

    // ---- target networks (this node's; other nodes apply their own) ----
    let assocs: Vec<TargetNetwork> = store
        .describe_target_networks(&eid, &[])?
        .into_iter()
        .filter(|a| is_live_assoc(a) && store.is_own(a))
        .collect();
    // Disassociate the ones no longer declared, or declared with another SNAT address.
    for a in &assocs {
        let keep = cfg
            .target_network(&a.target_network_id)
            .is_some_and(|t| t.snat_address == a.snat_address);
        if !keep {
            let res = store.disassociate_target_network(&eid, &a.association_id)?;
            report.changes.push(format!(
                "disassociated target network {} ({})",
                a.target_network_id, a.association_id
            ));
            report
                .terminate_connections
                .extend(res.terminate_connections);
        }
    }
    let assocs: Vec<TargetNetwork> = store
        .describe_target_networks(&eid, &[])?
        .into_iter()
        .filter(|a| is_live_assoc(a) && store.is_own(a))
        .collect();
    for t in &cfg.target_networks {
        if assocs.iter().any(|a| a.target_network_id == t.interface) {
            continue;
        }
        let res = store.associate_target_network(&AssociateTargetNetworkRequest {
            client_vpn_endpoint_id: eid.clone(),
            target_network_id: t.interface.clone(),
            subnet_cidr: None,
            snat_address: t.snat_address.map(|a| a.to_string()),
            node: None,
        })?;
        report.changes.push(format!(
            "associated target network {} ({})",
            t.interface, res.association.association_id
        ));
    }

    // ---- routes (origin add-route only) ----
    let wanted: BTreeSet<(Ipv4Net, &str)> = cfg
        .routes
        .iter()
        .map(|r| (r.destination, r.target.as_str()))
        .collect();
    let all_routes = store.describe_routes(&eid)?;
    for r in all_routes
        .iter()
        .filter(|r| r.origin == RouteOrigin::AddRoute)
    {
        if !wanted.contains(&(r.destination_cidr, r.target_subnet.as_str())) {
            store.delete_route(&DeleteRouteRequest {
                client_vpn_endpoint_id: eid.clone(),
                destination_cidr_block: r.destination_cidr.to_string(),
                target_network_id: Some(r.target_subnet.clone()),
            })?;
            report.changes.push(format!(
                "deleted route {} via {}",
                r.destination_cidr, r.target_subnet
            ));
        }
    }
    for r in &cfg.routes {
        // A route of either origin counts: the store replaces an `add-route` route by the
        // `associate` route of the same network when the daemon learns its subnet, and that
        // one already carries the traffic.
        let exists = all_routes
            .iter()
            .any(|x| x.destination_cidr == r.destination && x.target_subnet == r.target);
        if !exists {
            store.create_route(&CreateRouteRequest {
                client_vpn_endpoint_id: eid.clone(),
                destination_cidr_block: r.destination.to_string(),
                target_network_id: r.target.clone(),
                description: None,
            })?;
            report
                .changes
                .push(format!("created route {} via {}", r.destination, r.target));
        }
    }

    // ---- authorization rules ----
    let rules = store.describe_rules(&eid)?;
    let same = |x: &AuthorizationRule, c: &crate::config::AuthorizationRuleConfig| {
        x.destination_cidr == c.destination
            && x.access() == c.access
            && x.description.as_deref().unwrap_or("") == c.description.as_deref().unwrap_or("")
    };
    for x in &rules {
        if !cfg.authorization_rules.iter().any(|c| same(x, c)) {
            let access = x.access();
            let (group, all) = match &access {
                Access::AllGroups => (None, Some(true)),
                Access::Group(g) => (Some(g.clone()), None),
            };
            store.revoke_rule(&RevokeRequest {
                protocol: None,
                port_range: None,
                client_vpn_endpoint_id: eid.clone(),
                target_network_cidr: x.destination_cidr.to_string(),
                access_group_id: group,
                revoke_all_groups: all,
            })?;
            report.changes.push(format!(
                "revoked rule {} for {}",
                x.destination_cidr,
                access_text(&access)
            ));
        }
    }
    for c in &cfg.authorization_rules {
        if !rules.iter().any(|x| same(x, c)) {
            let (group, all) = match &c.access {
                Access::AllGroups => (None, Some(true)),
                Access::Group(g) => (Some(g.clone()), None),
            };
            store.authorize_rule(&AuthorizeRequest {
                protocol: None,
                port_range: None,
                client_vpn_endpoint_id: eid.clone(),
                target_network_cidr: c.destination.to_string(),
                access_group_id: group,
                authorize_all_groups: all,
                description: c.description.clone(),
            })?;
            report.changes.push(format!(
                "authorized rule {} for {}",
                c.destination,
                access_text(&c.access)
            ));
        }
    }

    // ---- CRL ----
    if let Some(pem) = crl_pem {
        if store.export_crl(&eid)?.as_deref() != Some(pem) {
            let summary = store.import_crl(&eid, pem)?;
            report.changes.push(format!(
                "imported CRL ({} revoked certificate(s))",
                summary.entries
            ));
            report.crl = Some(summary);
        }
    }

    Ok(report)
}
