//! The route handlers: parse, call the store on the blocking pool, send the control events,
//! answer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::types::*;
use super::{
    from_object, profile, with_endpoint, ApiState, Body, ControlEvent, EndpointChange, PathParams,
    QueryParams, Rejection, INVALID_ACTION, OPENAPI_JSON,
};
use crate::storage::{
    ApiError, AssociateTargetNetworkRequest, AuthorizeRequest, ConnectionFilter, ConnectionStatus,
    CreateEndpointRequest, CreateRouteRequest, DeleteRouteRequest, EndpointStatus,
    ModifyEndpointRequest, RevokeRequest, TerminateTarget,
};

type S = State<Arc<ApiState>>;
type Answer = Result<Response, Rejection>;

fn ok<T: serde::Serialize>(v: T) -> Answer {
    Ok(Json(v).into_response())
}

fn created<T: serde::Serialize>(v: T) -> Answer {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn policy_changed(state: &ApiState, endpoint_id: &str) {
    state.emit(ControlEvent::PolicyChanged {
        endpoint_id: endpoint_id.to_string(),
    });
}

fn terminate(state: &ApiState, endpoint_id: &str, ids: Vec<String>) {
    super::actions::send_terminate(state, endpoint_id, ids);
}

fn status_changed(
    state: &ApiState,
    endpoint_id: &str,
    before: EndpointStatus,
    after: EndpointStatus,
) {
    if before != after {
        state.emit(ControlEvent::EndpointChanged {
            endpoint_id: endpoint_id.to_string(),
            change: EndpointChange::Status { status: after },
        });
    }
}

/// What the API adds to a stored endpoint: its listener's state and its portal address.
fn annotate(state: &ApiState, ep: &mut crate::storage::Endpoint) {
    state.listeners.annotate(ep);
    ep.self_service_portal_url =
        super::self_service_portal_url(state.settings.public_url.as_deref(), ep);
}

// ---- misc ---------------------------------------------------------------------------------------

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

pub(super) async fn unknown_path(uri: Uri) -> Response {
    super::error_response(
        StatusCode::NOT_FOUND,
        INVALID_ACTION,
        format!("no operation at {}; see GET /v1/openapi.json", uri.path()),
    )
}

pub(super) async fn wrong_method(method: axum::http::Method, uri: Uri) -> Response {
    super::error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        INVALID_ACTION,
        format!(
            "{} {} is not an operation; see GET /v1/openapi.json",
            method,
            uri.path()
        ),
    )
}

// ---- endpoints ----------------------------------------------------------------------------------

pub(super) async fn create_endpoint(State(state): S, q: QueryParams, body: Body) -> Answer {
    q.finish(&[])?;
    let req: CreateEndpointRequest = body.parse()?;
    let mut ep = state.blocking(move |s| s.create_endpoint(&req)).await?;
    annotate(&state, &mut ep);
    state.emit(ControlEvent::EndpointChanged {
        endpoint_id: ep.client_vpn_endpoint_id.clone(),
        change: EndpointChange::Created,
    });
    created(ep)
}

pub(super) async fn describe_endpoints(State(state): S, mut q: QueryParams) -> Answer {
    const IDS: &str = "client-vpn-endpoint-ids";
    let ids = q.take_list(IDS);
    q.finish(&[IDS])?;
    let mut list = state.blocking(move |s| s.describe_endpoints(&ids)).await?;
    for ep in &mut list {
        annotate(&state, ep);
    }
    ok(EndpointList {
        client_vpn_endpoints: list,
    })
}

pub(super) async fn describe_endpoint(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let mut ep = state.blocking(move |s| s.describe_endpoint(&id)).await?;
    annotate(&state, &mut ep);
    ok(ep)
}

pub(super) async fn modify_endpoint(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: ModifyEndpointRequest = body.parse()?;
    let id2 = id.clone();
    let mut res = state
        .blocking(move |s| s.modify_endpoint(&id2, &req))
        .await?;
    annotate(&state, &mut res.endpoint);
    if !res.changed.is_empty() {
        state.emit(ControlEvent::EndpointChanged {
            endpoint_id: id,
            change: EndpointChange::Modified {
                fields: res.changed.clone(),
            },
        });
    }
    ok(res)
}

pub(super) async fn delete_endpoint(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let id2 = id.clone();
    let res = state.blocking(move |s| s.delete_endpoint(&id2)).await?;
    terminate(&state, &id, res.terminate_connections.clone());
    state.emit(ControlEvent::EndpointChanged {
        endpoint_id: id,
        change: EndpointChange::Deleting,
    });
    ok(res)
}

// ---- target networks ----------------------------------------------------------------------------

pub(super) async fn associate(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: AssociateTargetNetworkRequest = body.parse_for_endpoint(&id)?;
    let id2 = id.clone();
    let (before, res) = state
        .blocking(move |s| {
            let before = s.describe_endpoint(&id2)?.status;
            Ok((before, s.associate_target_network(&req)?))
        })
        .await?;
    policy_changed(&state, &id);
    status_changed(&state, &id, before, res.endpoint_status);
    created(res)
}

pub(super) async fn describe_target_networks(
    State(state): S,
    PathParams(id): PathParams<String>,
    mut q: QueryParams,
) -> Answer {
    const IDS: &str = "association-ids";
    let ids = q.take_list(IDS);
    q.finish(&[IDS])?;
    let list = state
        .blocking(move |s| s.describe_target_networks(&id, &ids))
        .await?;
    ok(TargetNetworkList {
        client_vpn_target_networks: list,
    })
}

pub(super) async fn disassociate(
    State(state): S,
    PathParams((id, association_id)): PathParams<(String, String)>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let id2 = id.clone();
    let (before, res) = state
        .blocking(move |s| {
            let before = s.describe_endpoint(&id2)?.status;
            Ok((
                before,
                s.disassociate_target_network(&id2, &association_id)?,
            ))
        })
        .await?;
    terminate(&state, &id, res.terminate_connections.clone());
    policy_changed(&state, &id);
    status_changed(&state, &id, before, res.endpoint_status);
    ok(res)
}

// ---- routes -------------------------------------------------------------------------------------

pub(super) async fn create_route(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: CreateRouteRequest = body.parse_for_endpoint(&id)?;
    let route = state.blocking(move |s| s.create_route(&req)).await?;
    policy_changed(&state, &id);
    created(route)
}

pub(super) async fn describe_routes(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let routes = state.blocking(move |s| s.describe_routes(&id)).await?;
    ok(RouteList { routes })
}

/// A request given either as a JSON body or as query parameters (for `DELETE`, whose body
/// some clients cannot send), with the endpoint id from the path.
fn body_or_query<T: serde::de::DeserializeOwned>(
    id: &str,
    q: QueryParams,
    body: &Body,
) -> Result<T, ApiError> {
    if body.is_empty() {
        from_object(with_endpoint(q.into_object()?, id)?)
    } else if !q.is_empty() {
        Err(ApiError::combination(
            "give the parameters either in the JSON body or in the query, not both",
        ))
    } else {
        body.parse_for_endpoint(id)
    }
}

pub(super) async fn delete_route(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    let req: DeleteRouteRequest = body_or_query(&id, q, &body)?;
    let route = state.blocking(move |s| s.delete_route(&req)).await?;
    policy_changed(&state, &id);
    ok(route)
}

// ---- authorization rules ------------------------------------------------------------------------

pub(super) async fn authorize(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: AuthorizeRequest = body.parse_for_endpoint(&id)?;
    let rule = state.blocking(move |s| s.authorize_rule(&req)).await?;
    policy_changed(&state, &id);
    created(rule)
}

pub(super) async fn describe_rules(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let rules = state.blocking(move |s| s.describe_rules(&id)).await?;
    ok(AuthorizationRuleList {
        authorization_rules: rules,
    })
}

pub(super) async fn revoke(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    let req: RevokeRequest = body_or_query(&id, q, &body)?;
    let rule = state.blocking(move |s| s.revoke_rule(&req)).await?;
    policy_changed(&state, &id);
    ok(rule)
}

// ---- connections --------------------------------------------------------------------------------

pub(super) async fn describe_connections(
    State(state): S,
    PathParams(id): PathParams<String>,
    mut q: QueryParams,
) -> Answer {
    const ALLOWED: [&str; 3] = ["connection-id", "username", "status"];
    let connection_id = q.take("connection-id")?;
    let username = q.take("username")?;
    let status = match q.take("status")? {
        None => None,
        Some(s) => Some(ConnectionStatus::parse(&s).ok_or_else(|| {
            ApiError::invalid(
                "status",
                format!(
                    "{s:?} is not a connection status; expected one of {}",
                    ConnectionStatus::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?),
    };
    q.finish(&ALLOWED)?;
    let filter = ConnectionFilter {
        client_vpn_endpoint_id: Some(id),
        connection_id,
        username,
        status,
    };
    let connections = state
        .blocking(move |s| s.describe_connections(&filter))
        .await?;
    ok(ConnectionList { connections })
}

pub(super) async fn terminate_connections(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: TerminateRequest = body.parse_for_endpoint(&id)?;
    let target = match (req.connection_id, req.username) {
        (Some(_), Some(_)) => {
            return Err(
                ApiError::combination("give either connection-id or username, not both").into(),
            )
        }
        (None, None) => {
            return Err(ApiError::missing("connection-id", "give connection-id or username").into())
        }
        (Some(c), None) => TerminateTarget::ConnectionId(c),
        (None, Some(u)) => TerminateTarget::Username(u),
    };
    let username = match &target {
        TerminateTarget::Username(u) => Some(u.clone()),
        TerminateTarget::ConnectionId(_) => None,
    };
    let statuses = super::actions::terminate(&state, &id, target).await?;
    ok(TerminateResult {
        client_vpn_endpoint_id: id,
        username,
        connection_statuses: statuses,
    })
}

// ---- client configuration -----------------------------------------------------------------------

/// True when the client asked for JSON rather than the profile text.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|m| {
            m.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .any(|m| m == "application/json")
}

pub(super) async fn export_client_config(
    State(state): S,
    PathParams(id): PathParams<String>,
    mut q: QueryParams,
    headers: HeaderMap,
) -> Answer {
    const HOST: &str = "remote-host";
    let host = q.take(HOST)?;
    q.finish(&[HOST])?;
    if let Some(h) = &host {
        profile::remote_host_param(h)?;
    }
    let fallback = state.settings.remote_host.clone();
    let ciphers = state.settings.data_ciphers.clone();
    let id2 = id.clone();
    let text = state
        .blocking(move |s| {
            let ep = s.describe_endpoint(&id2)?;
            if matches!(
                ep.status,
                EndpointStatus::Deleting | EndpointStatus::Deleted
            ) {
                return Err(ApiError::incorrect_state(format!(
                    "endpoint {id2} is {}; it has no client configuration",
                    ep.status
                )));
            }
            let hosts = profile::remote_hosts(s, &id2, host.clone(), fallback.clone())?;
            Ok(profile::endpoint_profile(s, &id2, &hosts, &ciphers)?.render())
        })
        .await?;
    if wants_json(&headers) {
        return ok(ClientConfigExport {
            client_vpn_endpoint_id: id,
            client_configuration: text,
        });
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

// ---- CRL ----------------------------------------------------------------------------------------

pub(super) async fn import_crl(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let pem = if body.json {
        body.parse_for_endpoint::<CrlImportRequest>(&id)?
            .certificate_revocation_list
    } else {
        String::from_utf8(body.bytes.to_vec()).map_err(|_| {
            ApiError::invalid("certificate-revocation-list", "the PEM text is not UTF-8")
        })?
    };
    let id2 = id.clone();
    let summary = state.blocking(move |s| s.import_crl(&id2, &pem)).await?;
    state.emit(ControlEvent::CrlChanged {
        endpoint_id: id,
        revoked_serials: summary.revoked_serials.clone(),
    });
    ok(summary)
}

pub(super) async fn export_crl(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let id2 = id.clone();
    let crl = state.blocking(move |s| s.export_crl(&id2)).await?;
    ok(CrlExport {
        client_vpn_endpoint_id: id,
        certificate_revocation_list: crl,
    })
}

// ---- the self-service portal's certificates -----------------------------------------------------

pub(super) async fn revoke_user(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: RevokeUserRequest = body.parse_for_endpoint(&id)?;
    ok(super::actions::revoke_user(&state, &id, &req.username).await?)
}

pub(super) async fn issued_certificates(
    State(state): S,
    PathParams(id): PathParams<String>,
    mut q: QueryParams,
) -> Answer {
    const USER: &str = "username";
    let username = q.take(USER)?;
    q.finish(&[USER])?;
    let issued_certificates =
        super::actions::issued_certificates(&state, &id, username.as_deref()).await?;
    ok(IssuedCertificateList {
        issued_certificates,
    })
}

// ---- directories --------------------------------------------------------------------------------

fn directory_changed(state: &ApiState, directory_id: &str) {
    state.emit(ControlEvent::DirectoryChanged {
        directory_id: directory_id.to_string(),
    });
}

pub(super) async fn create_directory(State(state): S, q: QueryParams, body: Body) -> Answer {
    q.finish(&[])?;
    let req: crate::model::CreateDirectoryRequest = body.parse()?;
    let dir = state.blocking(move |s| s.create_directory(&req)).await?;
    created(dir)
}

pub(super) async fn describe_directories(State(state): S, q: QueryParams) -> Answer {
    q.finish(&[])?;
    let directories = state.blocking(|s| s.describe_directories()).await?;
    ok(crate::model::DirectoryList { directories })
}

pub(super) async fn describe_directory(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    ok(state.blocking(move |s| s.describe_directory(&id)).await?)
}

pub(super) async fn modify_directory(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: crate::model::ModifyDirectoryRequest = body.parse()?;
    let dir = state
        .blocking(move |s| s.modify_directory(&id, &req))
        .await?;
    directory_changed(&state, &dir.directory_id);
    ok(dir)
}

pub(super) async fn delete_directory(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    ok(state.blocking(move |s| s.delete_directory(&id)).await?)
}

pub(super) async fn enroll_mfa(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: crate::model::MfaEnrollRequest = body.parse()?;
    let username = req
        .username
        .clone()
        .ok_or_else(|| ApiError::missing("username", "required: the directory user name"))?;
    let secret = crate::auth::totp::TotpSecret::generate()
        .map_err(|_| ApiError::internal("no system randomness for a TOTP secret"))?;
    let bytes = secret.as_bytes().to_vec();
    let user = username.clone();
    let dir = state
        .blocking(move |s| s.enroll_mfa(&id, &user, &bytes, req.replace))
        .await?;
    directory_changed(&state, &dir.directory_id);
    let uri = crate::auth::totp::otpauth_uri(&secret, &format!("cvpn {}", dir.name), &username);
    created(crate::model::MfaEnrollment {
        directory_id: dir.directory_id,
        username,
        secret: secret.to_base32(),
        otpauth_uri: uri,
    })
}

pub(super) async fn describe_mfa(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let users = state.blocking(move |s| s.mfa_enrolled_users(&id)).await?;
    ok(serde_json::json!({ "usernames": users }))
}

pub(super) async fn remove_mfa(
    State(state): S,
    PathParams((id, username)): PathParams<(String, String)>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let dir = state
        .blocking(move |s| s.remove_mfa(&id, &username))
        .await?;
    directory_changed(&state, &dir.directory_id);
    ok(dir)
}

// ---- identity providers -------------------------------------------------------------------------

/// What the API adds to a stored identity provider: what to register at the provider, under
/// the daemon's public web address.
fn annotate_idp(
    state: &ApiState,
    mut idp: crate::model::IdentityProvider,
) -> crate::model::IdentityProvider {
    if let Some(base) = state.settings.public_url.as_deref() {
        let base = base.trim_end_matches('/');
        match idp.protocol {
            crate::model::IdpProtocol::Oidc => {
                idp.redirect_uri = Some(format!("{base}/oidc/callback"))
            }
            crate::model::IdpProtocol::Saml => {
                idp.sp_metadata_url = Some(format!("{base}/saml/metadata"))
            }
        }
    }
    idp
}

pub(super) async fn create_identity_provider(
    State(state): S,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: crate::model::CreateIdentityProviderRequest = body.parse()?;
    let idp = state
        .blocking(move |s| s.create_identity_provider(&req))
        .await?;
    created(annotate_idp(&state, idp))
}

pub(super) async fn describe_identity_providers(State(state): S, q: QueryParams) -> Answer {
    q.finish(&[])?;
    let identity_providers = state
        .blocking(|s| s.describe_identity_providers())
        .await?
        .into_iter()
        .map(|i| annotate_idp(&state, i))
        .collect();
    ok(crate::model::IdentityProviderList { identity_providers })
}

pub(super) async fn describe_identity_provider(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let idp = state
        .blocking(move |s| s.describe_identity_provider(&id))
        .await?;
    ok(annotate_idp(&state, idp))
}

pub(super) async fn modify_identity_provider(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: crate::model::ModifyIdentityProviderRequest = body.parse()?;
    let idp = state
        .blocking(move |s| s.modify_identity_provider(&id, &req))
        .await?;
    state.emit(ControlEvent::IdentityProviderChanged { id: idp.id.clone() });
    ok(annotate_idp(&state, idp))
}

pub(super) async fn delete_identity_provider(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    ok(state
        .blocking(move |s| s.delete_identity_provider(&id))
        .await?)
}

// ---- access keys (the AWS-compatible API's) -----------------------------------------------------

pub(super) async fn create_access_key(State(state): S, q: QueryParams, body: Body) -> Answer {
    q.finish(&[])?;
    let req: crate::model::CreateAccessKeyRequest = body.parse()?;
    let key = state.blocking(move |s| s.create_access_key(&req)).await?;
    tracing::info!(key = %key.key.access_key_id, permission = %key.key.permission, "access key created");
    created(key)
}

pub(super) async fn list_access_keys(State(state): S, q: QueryParams) -> Answer {
    q.finish(&[])?;
    let access_keys = state.blocking(|s| s.list_access_keys()).await?;
    ok(crate::model::AccessKeyList { access_keys })
}

pub(super) async fn delete_access_key(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let key = state.blocking(move |s| s.delete_access_key(&id)).await?;
    tracing::info!(key = %key.access_key_id, "access key deleted");
    ok(key)
}

// ---- security groups ----------------------------------------------------------------------------

pub(super) async fn create_security_group(State(state): S, q: QueryParams, body: Body) -> Answer {
    q.finish(&[])?;
    let req: crate::model::CreateSecurityGroupRequest = body.parse()?;
    created(
        state
            .blocking(move |s| s.create_security_group(&req))
            .await?,
    )
}

pub(super) async fn describe_security_groups(State(state): S, mut q: QueryParams) -> Answer {
    const IDS: &str = "security-group-ids";
    let ids = q.take_list(IDS);
    q.finish(&[IDS])?;
    let security_groups = state
        .blocking(move |s| s.describe_security_groups(&ids))
        .await?;
    ok(crate::model::SecurityGroupList { security_groups })
}

pub(super) async fn describe_security_group(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    let mut list = state
        .blocking(move |s| s.describe_security_groups(&[id]))
        .await?;
    ok(list.remove(0))
}

pub(super) async fn delete_security_group(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
) -> Answer {
    q.finish(&[])?;
    ok(state
        .blocking(move |s| s.delete_security_group(&id))
        .await?)
}

pub(super) async fn apply_security_groups(
    State(state): S,
    PathParams(id): PathParams<String>,
    q: QueryParams,
    body: Body,
) -> Answer {
    q.finish(&[])?;
    let req: crate::model::ApplySecurityGroupsRequest = body.parse()?;
    let id2 = id.clone();
    let result = state
        .blocking(move |s| s.apply_security_groups(&id2, &req))
        .await?;
    policy_changed(&state, &id);
    ok(result)
}
