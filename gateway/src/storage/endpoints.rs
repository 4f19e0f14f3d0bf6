//! Endpoints: create, modify, delete, describe, and the TLS material the daemon reads.

use super::*;

impl Store {
    /// Creates an endpoint (`pending-associate`). Validates every field; see
    /// [`CreateEndpointRequest`] for the rules and defaults.
    pub fn create_endpoint(&self, req: &CreateEndpointRequest) -> Result<Endpoint, ApiError> {
        let cidr_text = req.client_cidr_block.as_deref().ok_or_else(|| {
            ApiError::missing("client-cidr-block", "required (e.g. \"10.2.0.0/22\")")
        })?;
        let client_cidr = validate::client_cidr("client-cidr-block", cidr_text)?;
        let cert = req.server_certificate.as_deref().ok_or_else(|| {
            ApiError::missing("server-certificate", "required (PEM certificate chain)")
        })?;
        let key = req
            .server_private_key
            .as_deref()
            .ok_or_else(|| ApiError::missing("server-private-key", "required (PEM private key)"))?;
        validate::server_identity("server-certificate", cert, "server-private-key", key)?;
        let auth = validate::authentication_options(
            "authentication-options",
            &req.authentication_options,
        )?;
        let transport = match req.transport_protocol.as_deref() {
            None => TransportProtocol::Udp,
            Some(s) => validate::transport("transport-protocol", s)?,
        };
        let port = match req.vpn_port {
            None => DEFAULT_PORT,
            Some(n) => validate::port("vpn-port", n)?,
        };
        let dns = validate::dns_servers("dns-servers", req.dns_servers.as_deref().unwrap_or(&[]))?;
        let hours = match req.session_timeout_hours {
            None => DEFAULT_SESSION_TIMEOUT_HOURS,
            Some(n) => validate::session_timeout("session-timeout-hours", n)?,
        };
        let banner = validate::banner(
            "client-login-banner-options",
            &req.client_login_banner_options.clone().unwrap_or_default(),
        )?;
        let connect = validate::client_connect(
            "client-connect-options",
            &req.client_connect_options.clone().unwrap_or_default(),
            &self.handler_policy,
        )?;
        let log = req.connection_log_options.clone().unwrap_or_default();
        let portal = validate::self_service_portal(
            "self-service-portal",
            req.self_service_portal.unwrap_or(false),
            auth.idp_id.is_some() || auth.directory_id.is_some(),
        )?;
        let description = validate::description("description", req.description.as_deref())?;
        let tags = validate::tags("tags", &req.tags)?;
        let id = new_id(ENDPOINT_ID_PREFIX)?;
        self.write(|db, now| {
            if let Some(dir) = &auth.directory_id {
                directories::load_directory(db, dir)?;
            }
            if let Some(idp) = &auth.idp_id {
                identity_providers::load_identity_provider(db, idp)?;
            }
            db.prepare_cached(
                "INSERT INTO endpoints (id, state, client_cidr, transport, vpn_port, split_tunnel, \
                 dns_servers, session_timeout_hours, disconnect_on_session_timeout, \
                 banner_enabled, banner_text, connect_enabled, connect_handler, log_enabled, \
                 log_stdout, self_service_portal, description, server_cert_pem, server_key_pem, \
                 client_ca_pem, created_at, directory_id, idp_id) VALUES (?1, \
                 'pending-associate', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
                 ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
            )?
            .execute(params![
                id,
                client_cidr.to_string(),
                transport.as_str(),
                port,
                req.split_tunnel.unwrap_or(false),
                dns_text(&dns),
                hours,
                req.disconnect_on_session_timeout.unwrap_or(false),
                banner.enabled,
                banner.banner_text,
                connect.enabled,
                connect.handler,
                log.enabled,
                log.stdout,
                portal,
                description,
                cert,
                key,
                auth.client_ca.clone().unwrap_or_default(),
                now.0,
                auth.directory_id,
                auth.idp_id,
            ])?;
            write_tags(db, &id, &tags)?;
            load_endpoint(db, &id)
        })
    }

    /// Modifies an endpoint's mutable fields. Refuses to change the immutable ones
    /// (`OperationNotPermitted`) and any change to an endpoint being deleted (`IncorrectState`).
    /// A request that changes nothing writes nothing (`changed` is empty).
    pub fn modify_endpoint(
        &self,
        id: &str,
        req: &ModifyEndpointRequest,
    ) -> Result<ModifyEndpointResult, ApiError> {
        self.write(|db, _now| {
            let cur = load_live_endpoint(db, id)?;
            if let Some(s) = &req.client_cidr_block {
                let v = validate::client_cidr("client-cidr-block", s)?;
                if v != cur.client_cidr_block {
                    return Err(ApiError::not_permitted(format!(
                        "client-cidr-block is immutable (endpoint {id} has {}); create a new \
                         endpoint for another client CIDR",
                        cur.client_cidr_block
                    )));
                }
            }
            if let Some(s) = &req.transport_protocol {
                let v = validate::transport("transport-protocol", s)?;
                if v != cur.transport_protocol {
                    return Err(ApiError::not_permitted(format!(
                        "transport-protocol is immutable (endpoint {id} uses {}); create a new \
                         endpoint for another transport",
                        cur.transport_protocol
                    )));
                }
            }
            if let Some(v) = &req.authentication_options {
                // Compared as checked, so that an ARN naming the endpoint's identity provider
                // is the same option as its id.
                let same =
                    validate::authentication_options("authentication-options", v).is_ok_and(|c| {
                        c == validate::CheckedAuthentication::of(&cur.authentication_options)
                    });
                if !same {
                    return Err(ApiError::not_permitted(format!(
                        "authentication-options are immutable on endpoint {id}; create a new \
                         endpoint for other authentication options"
                    )));
                }
            }
            let mut changed: Vec<EndpointField> = Vec::new();
            let mut mark = |field: EndpointField, differs: bool| {
                if differs {
                    changed.push(field);
                }
            };

            let (cur_cert, cur_key): (String, String) = db
                .prepare_cached(
                    "SELECT server_cert_pem, server_key_pem FROM endpoints WHERE id = ?1",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let cert = req
                .server_certificate
                .clone()
                .unwrap_or_else(|| cur_cert.clone());
            let key = req
                .server_private_key
                .clone()
                .unwrap_or_else(|| cur_key.clone());
            if req.server_certificate.is_some() || req.server_private_key.is_some() {
                validate::server_identity("server-certificate", &cert, "server-private-key", &key)?;
            }
            mark(EndpointField::ServerCertificate, cert != cur_cert);
            mark(EndpointField::ServerPrivateKey, key != cur_key);

            let port = match req.vpn_port {
                None => cur.vpn_port,
                Some(n) => validate::port("vpn-port", n)?,
            };
            mark(EndpointField::VpnPort, port != cur.vpn_port);
            let dns = match &req.dns_servers {
                None => cur.dns_servers.clone(),
                Some(l) => validate::dns_servers("dns-servers", l)?,
            };
            mark(EndpointField::DnsServers, dns != cur.dns_servers);
            let split = req.split_tunnel.unwrap_or(cur.split_tunnel);
            mark(EndpointField::SplitTunnel, split != cur.split_tunnel);
            let hours = match req.session_timeout_hours {
                None => cur.session_timeout_hours,
                Some(n) => validate::session_timeout("session-timeout-hours", n)?,
            };
            mark(
                EndpointField::SessionTimeoutHours,
                hours != cur.session_timeout_hours,
            );
            let disconnect = req
                .disconnect_on_session_timeout
                .unwrap_or(cur.disconnect_on_session_timeout);
            mark(
                EndpointField::DisconnectOnSessionTimeout,
                disconnect != cur.disconnect_on_session_timeout,
            );
            let banner = match &req.client_login_banner_options {
                None => cur.client_login_banner_options.clone(),
                Some(b) => validate::banner("client-login-banner-options", b)?,
            };
            mark(
                EndpointField::ClientLoginBannerOptions,
                banner != cur.client_login_banner_options,
            );
            let connect = match &req.client_connect_options {
                None => cur.client_connect_options.clone(),
                Some(c) => {
                    validate::client_connect("client-connect-options", c, &self.handler_policy)?
                }
            };
            mark(
                EndpointField::ClientConnectOptions,
                connect != cur.client_connect_options,
            );
            let log = req
                .connection_log_options
                .clone()
                .unwrap_or_else(|| cur.connection_log_options.clone());
            mark(
                EndpointField::ConnectionLogOptions,
                log != cur.connection_log_options,
            );
            let portal = match req.self_service_portal {
                None => cur.self_service_portal,
                Some(on) => validate::self_service_portal(
                    "self-service-portal",
                    on,
                    cur.idp_id().is_some()
                        || validate::CheckedAuthentication::of(&cur.authentication_options)
                            .directory_id
                            .is_some(),
                )?,
            };
            mark(
                EndpointField::SelfServicePortal,
                portal != cur.self_service_portal,
            );
            let description = match &req.description {
                None => cur.description.clone(),
                Some(d) => validate::description("description", Some(d))?,
            };
            mark(EndpointField::Description, description != cur.description);
            let tags = match &req.tags {
                None => cur.tags.clone(),
                Some(t) => validate::tags("tags", t)?,
            };
            mark(EndpointField::Tags, tags != cur.tags);
            let cur_ca_key = issued_certificates::stored_ca_key(db, id)?;
            let ca_key = match &req.client_ca_key {
                None => cur_ca_key.clone(),
                Some(k) => issued_certificates::checked_ca_key(db, id, Some(k))?,
            };
            mark(EndpointField::ClientCaKey, ca_key != cur_ca_key);

            if changed.is_empty() {
                return Ok(ModifyEndpointResult {
                    endpoint: cur,
                    changed,
                });
            }
            db.prepare_cached(
                "UPDATE endpoints SET server_cert_pem = ?2, server_key_pem = ?3, vpn_port = ?4, \
                 dns_servers = ?5, split_tunnel = ?6, session_timeout_hours = ?7, \
                 disconnect_on_session_timeout = ?8, banner_enabled = ?9, banner_text = ?10, \
                 connect_enabled = ?11, connect_handler = ?12, log_enabled = ?13, \
                 log_stdout = ?14, self_service_portal = ?15, description = ?16 WHERE id = ?1",
            )?
            .execute(params![
                id,
                cert,
                key,
                port,
                dns_text(&dns),
                split,
                hours,
                disconnect,
                banner.enabled,
                banner.banner_text,
                connect.enabled,
                connect.handler,
                log.enabled,
                log.stdout,
                portal,
                description,
            ])?;
            if tags != cur.tags {
                write_tags(db, id, &tags)?;
            }
            if ca_key != cur_ca_key {
                db.prepare_cached("UPDATE endpoints SET client_ca_key_pem = ?2 WHERE id = ?1")?
                    .execute(params![id, ca_key])?;
            }
            Ok(ModifyEndpointResult {
                endpoint: load_endpoint(db, id)?,
                changed,
            })
        })
    }

    /// Starts deleting an endpoint: it must have no target network left (disassociate them
    /// first, as AWS requires). The endpoint becomes `deleting`; any connection still recorded
    /// active is marked `terminating` and returned. The daemon then tears the endpoint down
    /// and calls [`finish_endpoint_deletion`](Self::finish_endpoint_deletion); after a crash
    /// it finds the `deleting` endpoints with [`describe_endpoints`](Self::describe_endpoints)
    /// and finishes them.
    pub fn delete_endpoint(&self, id: &str) -> Result<DeleteEndpointResult, ApiError> {
        self.write(|db, _now| {
            load_live_endpoint(db, id)?;
            let live = live_associations(db, id)?;
            if !live.is_empty() {
                let names: Vec<String> = live
                    .iter()
                    .map(|a| format!("{} ({})", a.target_network_id, a.association_id))
                    .collect();
                return Err(ApiError::incorrect_state(format!(
                    "endpoint {id} still has target networks: {}; disassociate them first",
                    names.join(", ")
                )));
            }
            db.prepare_cached("UPDATE endpoints SET state = 'deleting' WHERE id = ?1")?
                .execute([id])?;
            let terminate_connections = terminate_all(db, id)?;
            Ok(DeleteEndpointResult {
                endpoint: load_endpoint(db, id)?,
                terminate_connections,
            })
        })
    }

    /// Finishes deleting a `deleting` endpoint: its rules, routes, associations, connections
    /// and tags are removed and its private keys (server, client CA) and CRL erased; the
    /// endpoint stays visible as `deleted` for the retention period.
    pub fn finish_endpoint_deletion(&self, id: &str) -> Result<DeleteEndpointResult, ApiError> {
        self.write(|db, now| {
            let ep = load_endpoint(db, id)?;
            if ep.status != EndpointStatus::Deleting {
                return Err(ApiError::incorrect_state(format!(
                    "endpoint {id} is {}, not deleting; call delete first",
                    ep.status
                )));
            }
            let terminate_connections = query(
                db,
                "SELECT id FROM connections WHERE endpoint_id = ?1 \
                 AND status IN ('active', 'terminating') ORDER BY seq",
                [id],
                |r| r.get(0),
            )?;
            for table in [
                "routes",
                "authorization_rules",
                "connections",
                "endpoint_tags",
                "associations",
            ] {
                db.execute(&format!("DELETE FROM {table} WHERE endpoint_id = ?1"), [id])?;
            }
            db.prepare_cached(
                "UPDATE endpoints SET state = 'deleted', deleted_at = ?2, server_key_pem = '', \
                 crl_pem = NULL, crl_entries = 0, client_ca_key_pem = NULL WHERE id = ?1",
            )?
            .execute(params![id, now.0])?;
            Ok(DeleteEndpointResult {
                endpoint: load_endpoint(db, id)?,
                terminate_connections,
            })
        })
    }

    /// Describes endpoints: all of them (oldest first) when `ids` is empty, else exactly
    /// those (`InvalidClientVpnEndpointId.NotFound` for an unknown one).
    pub fn describe_endpoints(&self, ids: &[String]) -> Result<Vec<Endpoint>, ApiError> {
        self.read(|db| {
            if !ids.is_empty() {
                return ids.iter().map(|id| load_endpoint(db, id)).collect();
            }
            let mut eps = query(
                db,
                &format!("SELECT {ENDPOINT_COLS} FROM endpoints ORDER BY created_at, id"),
                (),
                endpoint_row,
            )?;
            for ep in &mut eps {
                ep.tags = load_tags(db, &ep.client_vpn_endpoint_id)?;
            }
            Ok(eps)
        })
    }

    /// Describes one endpoint.
    pub fn describe_endpoint(&self, id: &str) -> Result<Endpoint, ApiError> {
        self.read(|db| load_endpoint(db, id))
    }

    /// The TLS material of an endpoint, for the daemon.
    pub fn endpoint_secrets(&self, id: &str) -> Result<EndpointSecrets, ApiError> {
        self.read(|db| {
            load_endpoint(db, id)?;
            Ok(db
                .prepare_cached(
                    "SELECT server_cert_pem, server_key_pem, client_ca_pem, crl_pem \
                     FROM endpoints WHERE id = ?1",
                )?
                .query_row([id], |r| {
                    Ok(EndpointSecrets {
                        client_vpn_endpoint_id: id.to_string(),
                        server_certificate_pem: r.get(0)?,
                        server_private_key_pem: r.get(1)?,
                        client_ca_pem: r.get(2)?,
                        crl_pem: r.get(3)?,
                    })
                })?)
        })
    }
}

fn dns_text(list: &[Ipv4Addr]) -> String {
    list.iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn write_tags(db: &Db, id: &str, tags: &[Tag]) -> Result<(), ApiError> {
    db.prepare_cached("DELETE FROM endpoint_tags WHERE endpoint_id = ?1")?
        .execute([id])?;
    let mut ins = db.prepare_cached(
        "INSERT INTO endpoint_tags (endpoint_id, position, key, value) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (i, t) in tags.iter().enumerate() {
        ins.execute(params![
            id,
            i64::try_from(i).unwrap_or(i64::MAX),
            t.key,
            t.value
        ])?;
    }
    Ok(())
}
