//! The management API: HTTP/JSON over the [`Store`], one route per action on the resources of
//! [`crate::model`] (AWS Client VPN's: endpoints, target networks, routes, authorization rules,
//! connections, CRLs), AWS-flavoured names (kebab-case fields, AWS error codes). See
//! `docs/architecture.md` for where it sits.
//!
//! # Routes
//!
//! | Method and path | Action |
//! |---|---|
//! | `POST /v1/endpoints` | create an endpoint |
//! | `GET /v1/endpoints[?client-vpn-endpoint-ids=a,b]` | describe endpoints |
//! | `GET`, `PATCH`, `DELETE /v1/endpoints/{id}` | describe, modify, delete one |
//! | `POST`, `GET /v1/endpoints/{id}/target-networks` | associate, describe target networks |
//! | `DELETE /v1/endpoints/{id}/target-networks/{association-id}` | disassociate |
//! | `POST`, `GET`, `DELETE /v1/endpoints/{id}/routes` | create, describe, delete routes |
//! | `POST`, `GET`, `DELETE /v1/endpoints/{id}/authorization-rules` | authorize, describe, revoke |
//! | `GET /v1/endpoints/{id}/connections` | describe connections (filters) |
//! | `POST /v1/endpoints/{id}/connections/terminate` | terminate by connection id or username |
//! | `GET /v1/endpoints/{id}/client-config` | export the OpenVPN client profile (text) |
//! | `PUT`, `GET /v1/endpoints/{id}/crl` | import, export the CRL |
//! | `POST /v1/endpoints/{id}/revoke-user` | end a user's access: revoke the certificates the self-service portal issued them (new CRL), terminate their connections |
//! | `GET /v1/endpoints/{id}/issued-certificates[?username=U]` | the certificates the self-service portal issued |
//! | `POST`, `GET /v1/directories` | create, describe directories (LDAP / Active Directory) |
//! | `GET`, `PATCH`, `DELETE /v1/directories/{id}` | describe, modify, delete one (id or name) |
//! | `POST`, `GET /v1/directories/{id}/mfa-enrollments` | enrol a user for TOTP (the secret is shown once), list enrolled users |
//! | `DELETE /v1/directories/{id}/mfa-enrollments/{username}` | remove a user's TOTP enrolment |
//! | `POST`, `GET /v1/identity-providers` | create, describe identity providers (OIDC / SAML) |
//! | `GET`, `PATCH`, `DELETE /v1/identity-providers/{id}` | describe, modify, delete one (id or name) |
//! | `POST /v1/endpoints/{id}/security-groups` | apply security groups to the endpoint's target networks (of one node: `vpc-id`) |
//! | `POST`, `GET /v1/security-groups` | create, describe security groups (egress rules of target networks) |
//! | `GET`, `DELETE /v1/security-groups/{id}` | describe, delete one |
//! | `POST`, `GET /v1/access-keys` | make an access key of the AWS-compatible API (its secret is shown once), list them |
//! | `DELETE /v1/access-keys/{id}` | delete one |
//! | `GET /v1/openapi.json` | this API's OpenAPI 3 description |
//!
//! The OpenAPI document ([`OPENAPI_JSON`], `openapi.json` beside this file) is written by hand;
//! a test checks that it and [`routes`] list the same operations.
//!
//! # Errors
//!
//! Every failure answers `{"error": {"code": "...", "message": "..."}}` with the status of
//! [`ApiError::http_status`]: bad JSON, unknown or mistyped fields are `InvalidParameterValue`,
//! absent ones `MissingParameter`, each with a message that names the field. Unknown paths are
//! 404 `InvalidAction`, a wrong method 405 `InvalidAction`, a refused bearer token 401
//! `AuthFailure`.
//!
//! # Live effects
//!
//! The daemon applies changes to running sessions and the data plane: every handler that
//! changed something sends [`ControlEvent`]s on the channel in [`ApiState`] **after** the store
//! committed, then answers. A closed channel (no daemon listening) is logged, not an error:
//! the change is committed and the daemon applies it from the store when it starts.
//!
//! # Serving
//!
//! [`serve_unix`] (the default, `/run/cvpn/api.sock`, mode 0600) and [`serve_tls`] (TCP with
//! rustls and a bearer token); see [`serve`].

pub mod actions;
mod handlers;
pub(crate) mod profile;
pub mod serve;
#[cfg(test)]
pub(crate) mod tests;
pub mod types;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;

use crate::storage::{codes, ApiError, EndpointStatus, Store};

pub use actions::{
    issue_portal_certificate, issued_certificates, record_portal_download, revoke_user,
    send_terminate, terminate, terminate_connection,
};
pub use profile::{render_client_profile, ClientProfile};
pub use serve::{
    bind_unix, serve_tls, serve_tls_listener, serve_unix, serve_unix_listener, ServeError,
    DEFAULT_SOCKET_PATH,
};

/// The hand-written OpenAPI 3 description of this API, served at `GET /v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Error code of a request to an unknown path or with a method the path does not take.
pub const INVALID_ACTION: &str = "InvalidAction";
/// Error code of a request whose bearer token is absent or wrong (TLS listener only).
pub const AUTH_FAILURE: &str = "AuthFailure";

/// Largest request body accepted (a CRL at AWS's 20 000-entry cap is about 1 MiB of PEM).
pub const MAX_BODY_BYTES: usize = 8 << 20;

// ---- live effects -------------------------------------------------------------------------------

/// What the daemon must apply after an API call; sent after the store committed the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlEvent {
    /// The endpoint itself changed: recreate, reconfigure or tear down its listener and
    /// sessions as [`EndpointChange`] says (the store has the new state).
    EndpointChanged {
        /// The endpoint.
        endpoint_id: String,
        /// What happened to it.
        change: EndpointChange,
    },
    /// The endpoint's authorization rules, routes or target networks changed: recompile its
    /// data-plane policy and target table from the store
    /// ([`Store::policy_for`](crate::storage::Store::policy_for),
    /// [`Store::target_specs`](crate::storage::Store::target_specs)).
    PolicyChanged {
        /// The endpoint.
        endpoint_id: String,
    },
    /// Close these connections (the store has marked them `terminating`): send the client an
    /// explicit restart/exit, remove the session from the data plane, free its address, then
    /// call [`Store::end_connection`](crate::storage::Store::end_connection).
    Terminate {
        /// The endpoint.
        endpoint_id: String,
        /// The connections, `cvpn-connection-…`.
        connection_ids: Vec<String>,
    },
    /// A directory's settings or MFA enrolments changed: the running endpoints that use it
    /// take them for new sign-ins and the next re-checks.
    DirectoryChanged {
        /// The directory.
        directory_id: String,
    },
    /// An identity provider's settings changed: the running endpoints that use it take them
    /// for new sign-ins and the next session refreshes.
    IdentityProviderChanged {
        /// The identity provider, `idp-…`.
        id: String,
    },
    /// A new certificate revocation list was imported: reload it for new handshakes and close
    /// the sessions whose client certificate serial is revoked.
    CrlChanged {
        /// The endpoint.
        endpoint_id: String,
        /// The revoked serials, `aa:bb:…` hex (the TLS layer's client identity format).
        revoked_serials: Vec<String>,
    },
}

/// What happened to an endpoint ([`ControlEvent::EndpointChanged`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointChange {
    /// Created (`pending-associate`: it serves once a target network is associated).
    Created,
    /// Settings changed; the kebab-case names of the fields whose value changed.
    Modified {
        /// e.g. `[VpnPort, DnsServers]`.
        fields: Vec<crate::model::EndpointField>,
    },
    /// Its state changed because a target network was associated or disassociated
    /// (`pending-associate` ↔ `available`).
    Status {
        /// The new state.
        status: EndpointStatus,
    },
    /// Deletion requested (`deleting`): tear it down, then call
    /// [`Store::finish_endpoint_deletion`](crate::storage::Store::finish_endpoint_deletion).
    Deleting,
}

// ---- state --------------------------------------------------------------------------------------

/// Daemon settings the API needs beyond the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSettings {
    /// The host name or address clients reach the endpoints at, written into exported client
    /// profiles (`remote <host> <port>`) when the request gives no `remote-host`.
    pub remote_host: Option<String>,
    /// The data ciphers the daemon accepts, best first (`data-ciphers` of exported profiles).
    pub data_ciphers: Vec<String>,
    /// The gateway's public web address (`https://vpn.example.com`, no trailing `/`), where
    /// the self-service portal and the sign-in pages are: endpoint descriptions show
    /// `self-service-portal-url` = `{public_url}/portal/{endpoint id}` when it is set and the
    /// portal is enabled.
    pub public_url: Option<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            remote_host: None,
            public_url: None,
            data_ciphers: crate::protocol::push::DEFAULT_SERVER_CIPHERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// What the API's handlers share: the store, the daemon's event channel and settings.
#[derive(Debug)]
pub struct ApiState {
    /// The control plane's database.
    pub store: Arc<Store>,
    /// Where handlers report committed changes; the daemon holds the receiver.
    pub events: UnboundedSender<ControlEvent>,
    /// Daemon settings.
    pub settings: ApiSettings,
    /// What each endpoint's listener is doing, kept by the running daemon and shown in
    /// endpoint descriptions (empty when no daemon runs the endpoints).
    pub listeners: Listeners,
}

/// The running daemon's listener states by endpoint id ([`crate::storage::ListenerStatus`]).
#[derive(Clone, Debug, Default)]
pub struct Listeners(
    Arc<std::sync::RwLock<std::collections::HashMap<String, crate::storage::ListenerStatus>>>,
);

impl Listeners {
    /// Records an endpoint's listener state.
    pub fn set(&self, endpoint_id: &str, state: &str, message: Option<String>) {
        let mut m = self.0.write().unwrap_or_else(|e| e.into_inner());
        m.insert(
            endpoint_id.to_string(),
            crate::storage::ListenerStatus {
                state: state.to_string(),
                message,
            },
        );
    }

    /// An endpoint's listener state, if the daemon knows it.
    pub fn get(&self, endpoint_id: &str) -> Option<crate::storage::ListenerStatus> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(endpoint_id)
            .cloned()
    }

    /// Fills in [`Endpoint::listener`](crate::storage::Endpoint::listener).
    pub fn annotate(&self, ep: &mut crate::storage::Endpoint) {
        ep.listener = self.get(&ep.client_vpn_endpoint_id);
    }
}

/// The self-service portal's address of an endpoint: `{public_url}/portal/{endpoint id}` when
/// the portal is enabled and the daemon has a public URL.
pub fn self_service_portal_url(
    public_url: Option<&str>,
    ep: &crate::storage::Endpoint,
) -> Option<String> {
    let base = public_url?.trim_end_matches('/');
    (ep.self_service_portal && !matches!(ep.status, EndpointStatus::Deleted))
        .then(|| format!("{base}/portal/{}", ep.client_vpn_endpoint_id))
}

impl ApiState {
    /// State with default [`ApiSettings`].
    pub fn new(store: Arc<Store>, events: UnboundedSender<ControlEvent>) -> Arc<ApiState> {
        Self::with_settings(store, events, ApiSettings::default())
    }

    /// State with `settings`.
    pub fn with_settings(
        store: Arc<Store>,
        events: UnboundedSender<ControlEvent>,
        settings: ApiSettings,
    ) -> Arc<ApiState> {
        Arc::new(ApiState {
            store,
            events,
            settings,
            listeners: Listeners::default(),
        })
    }

    /// Sends an event to the daemon; a closed channel is logged (the change is committed).
    pub(crate) fn emit(&self, event: ControlEvent) {
        if let Err(e) = self.events.send(event) {
            tracing::warn!(event = ?e.0, "API: no daemon receives control events; change committed but not applied live");
        }
    }

    /// Runs a store call on the blocking pool (SQLite fsyncs on every commit).
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&state.store))
            .await
            .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
    }
}

// ---- router -------------------------------------------------------------------------------------

/// One operation of the API: its method and path (axum/OpenAPI template syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// `GET`, `POST`, ...
    pub method: &'static str,
    /// e.g. `/v1/endpoints/{id}/routes`.
    pub path: &'static str,
}

type Handler = MethodRouter<Arc<ApiState>>;

/// The operations, each with its handler; [`router`] and [`routes`] are both built from it, so
/// the OpenAPI test sees exactly what is served.
fn table() -> Vec<(RouteSpec, MethodFilter, Handler)> {
    use handlers as h;
    use MethodFilter as M;
    macro_rules! op {
        ($m:ident, $path:literal, $h:expr) => {
            (
                RouteSpec {
                    method: stringify!($m),
                    path: $path,
                },
                M::$m,
                on(M::$m, $h),
            )
        };
    }
    vec![
        op!(GET, "/v1/openapi.json", h::openapi),
        op!(POST, "/v1/endpoints", h::create_endpoint),
        op!(GET, "/v1/endpoints", h::describe_endpoints),
        op!(GET, "/v1/endpoints/{id}", h::describe_endpoint),
        op!(PATCH, "/v1/endpoints/{id}", h::modify_endpoint),
        op!(DELETE, "/v1/endpoints/{id}", h::delete_endpoint),
        op!(POST, "/v1/endpoints/{id}/target-networks", h::associate),
        op!(
            GET,
            "/v1/endpoints/{id}/target-networks",
            h::describe_target_networks
        ),
        op!(
            DELETE,
            "/v1/endpoints/{id}/target-networks/{association_id}",
            h::disassociate
        ),
        op!(POST, "/v1/endpoints/{id}/routes", h::create_route),
        op!(GET, "/v1/endpoints/{id}/routes", h::describe_routes),
        op!(DELETE, "/v1/endpoints/{id}/routes", h::delete_route),
        op!(POST, "/v1/endpoints/{id}/authorization-rules", h::authorize),
        op!(
            GET,
            "/v1/endpoints/{id}/authorization-rules",
            h::describe_rules
        ),
        op!(DELETE, "/v1/endpoints/{id}/authorization-rules", h::revoke),
        op!(
            GET,
            "/v1/endpoints/{id}/connections",
            h::describe_connections
        ),
        op!(
            POST,
            "/v1/endpoints/{id}/connections/terminate",
            h::terminate_connections
        ),
        op!(
            GET,
            "/v1/endpoints/{id}/client-config",
            h::export_client_config
        ),
        op!(PUT, "/v1/endpoints/{id}/crl", h::import_crl),
        op!(GET, "/v1/endpoints/{id}/crl", h::export_crl),
        op!(POST, "/v1/endpoints/{id}/revoke-user", h::revoke_user),
        op!(
            GET,
            "/v1/endpoints/{id}/issued-certificates",
            h::issued_certificates
        ),
        op!(POST, "/v1/directories", h::create_directory),
        op!(GET, "/v1/directories", h::describe_directories),
        op!(GET, "/v1/directories/{id}", h::describe_directory),
        op!(PATCH, "/v1/directories/{id}", h::modify_directory),
        op!(DELETE, "/v1/directories/{id}", h::delete_directory),
        op!(POST, "/v1/directories/{id}/mfa-enrollments", h::enroll_mfa),
        op!(GET, "/v1/directories/{id}/mfa-enrollments", h::describe_mfa),
        op!(
            DELETE,
            "/v1/directories/{id}/mfa-enrollments/{username}",
            h::remove_mfa
        ),
        op!(
            POST,
            "/v1/endpoints/{id}/security-groups",
            h::apply_security_groups
        ),
        op!(POST, "/v1/security-groups", h::create_security_group),
        op!(GET, "/v1/security-groups", h::describe_security_groups),
        op!(GET, "/v1/security-groups/{id}", h::describe_security_group),
        op!(DELETE, "/v1/security-groups/{id}", h::delete_security_group),
        op!(POST, "/v1/access-keys", h::create_access_key),
        op!(GET, "/v1/access-keys", h::list_access_keys),
        op!(DELETE, "/v1/access-keys/{id}", h::delete_access_key),
        op!(POST, "/v1/identity-providers", h::create_identity_provider),
        op!(
            GET,
            "/v1/identity-providers",
            h::describe_identity_providers
        ),
        op!(
            GET,
            "/v1/identity-providers/{id}",
            h::describe_identity_provider
        ),
        op!(
            PATCH,
            "/v1/identity-providers/{id}",
            h::modify_identity_provider
        ),
        op!(
            DELETE,
            "/v1/identity-providers/{id}",
            h::delete_identity_provider
        ),
    ]
}

/// Every operation the router serves.
pub fn routes() -> Vec<RouteSpec> {
    table().into_iter().map(|(spec, _, _)| spec).collect()
}

/// The API's router (no authentication: the Unix socket's mode guards it; [`serve_tls`] adds
/// the bearer token check).
pub fn router(state: Arc<ApiState>) -> Router {
    let mut r: Router<Arc<ApiState>> = Router::new();
    for (spec, _, handler) in table() {
        r = r.route(spec.path, handler);
    }
    r.fallback(handlers::unknown_path)
        .method_not_allowed_fallback(handlers::wrong_method)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

// ---- errors -------------------------------------------------------------------------------------

// re-export: the types live in model (the error body is a wire type, read by the HTTP client too)
pub use crate::model::{ErrorBody, ErrorDetail};

/// An error response with an explicit status.
pub(crate) fn error_response(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: message.into(),
        },
    };
    (status, axum::Json(body)).into_response()
}

/// An [`ApiError`] as a response: its status from its code, the AWS-style body.
fn api_error_response(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_response(status, e.code, e.message)
}

/// A refused request: an [`ApiError`] (status from its code) or an error with an explicit
/// status (body too large, unknown path, ...).
#[derive(Debug)]
pub(crate) enum Rejection {
    Api(ApiError),
    Status(StatusCode, &'static str, String),
}

impl From<ApiError> for Rejection {
    fn from(e: ApiError) -> Self {
        Rejection::Api(e)
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Api(e) => api_error_response(e),
            Rejection::Status(s, code, msg) => error_response(s, code, msg),
        }
    }
}

// ---- extractors ---------------------------------------------------------------------------------

/// A request body: JSON (`Content-Type: application/json` or none) or, where an operation
/// takes it, text. An empty body reads as `{}`.
pub(crate) struct Body {
    bytes: Bytes,
    json: bool,
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Rejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Rejection> {
        let json = match req.headers().get(header::CONTENT_TYPE) {
            None => true,
            Some(v) => is_json(v),
        };
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            Rejection::Status(
                e.status(),
                codes::INVALID_PARAMETER_VALUE,
                format!("request body: {}", e.body_text()),
            )
        })?;
        Ok(Body { bytes, json })
    }
}

fn is_json(v: &HeaderValue) -> bool {
    let Ok(s) = v.to_str() else { return false };
    let mime = s
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl Body {
    fn is_empty(&self) -> bool {
        self.bytes.iter().all(|b| b.is_ascii_whitespace())
    }

    /// The body as a JSON object (`{}` when empty).
    fn object(&self) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
        if !self.json {
            return Err(ApiError::invalid(
                "content-type",
                "this operation takes a JSON body (Content-Type: application/json)",
            ));
        }
        if self.is_empty() {
            return Ok(serde_json::Map::new());
        }
        let de = &mut serde_json::Deserializer::from_slice(&self.bytes);
        let v: serde_json::Value = serde_path_to_error::deserialize(de).map_err(json_error)?;
        match v {
            serde_json::Value::Object(m) => Ok(m),
            other => Err(ApiError::invalid(
                "request body",
                format!("expected a JSON object, got {}", json_kind(&other)),
            )),
        }
    }

    /// The body as the request type `T`.
    fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        from_object(self.object()?)
    }

    /// The body as the request type `T`, with `client-vpn-endpoint-id` taken from the path
    /// (a body may repeat it, but not contradict it).
    fn parse_for_endpoint<T: DeserializeOwned>(&self, endpoint_id: &str) -> Result<T, ApiError> {
        from_object(with_endpoint(self.object()?, endpoint_id)?)
    }
}

/// Fills `client-vpn-endpoint-id` from the path.
fn with_endpoint(
    mut m: serde_json::Map<String, serde_json::Value>,
    endpoint_id: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    const KEY: &str = "client-vpn-endpoint-id";
    if let Some(v) = m.get(KEY) {
        if v.as_str() != Some(endpoint_id) {
            return Err(ApiError::combination(format!(
                "{KEY}: the body names {v} but the path names endpoint {endpoint_id}"
            )));
        }
    }
    m.insert(
        KEY.to_string(),
        serde_json::Value::String(endpoint_id.to_string()),
    );
    Ok(m)
}

fn from_object<T: DeserializeOwned>(
    m: serde_json::Map<String, serde_json::Value>,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(serde_json::Value::Object(m)).map_err(json_error)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A deserialization error as an [`ApiError`] that names the field: `MissingParameter` for an
/// absent field, `InvalidParameterValue` for anything else.
fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::invalid("request body", format!("not valid JSON: {inner}"));
    }
    // serde_json appends " at line L column C" when reading text; the field name says more.
    let mut msg = inner.to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    let join = |field: &str| -> String {
        if path == "." {
            field.to_string()
        } else if path == field || path.ends_with(&format!(".{field}")) {
            path.clone()
        } else {
            format!("{path}.{field}")
        }
    };
    let quoted = |rest: &str| -> Option<(String, String)> {
        let rest = rest.strip_prefix('`')?;
        let end = rest.find('`')?;
        Some((rest[..end].to_string(), rest[end + 1..].to_string()))
    };
    if let Some((field, _)) = msg.strip_prefix("missing field ").and_then(quoted) {
        return ApiError::missing(&join(&field), "is required");
    }
    if let Some((field, rest)) = msg.strip_prefix("unknown field ").and_then(quoted) {
        return ApiError::invalid(&join(&field), format!("unknown field{rest}"));
    }
    let field = if path == "." {
        "request body"
    } else {
        path.as_str()
    };
    ApiError::invalid(field, msg)
}

/// Path parameters, with our error format on failure.
pub(crate) struct PathParams<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| Rejection::Api(ApiError::invalid("path", e.body_text())))
    }
}

/// Query parameters, in order; see [`QueryParams::take`].
pub(crate) struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| Rejection::Api(ApiError::invalid("query", e.body_text())))
    }
}

impl QueryParams {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The single value of `name` (an error if given twice), removing it.
    fn take(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut values = self.take_all(name);
        match values.len() {
            0 => Ok(None),
            1 => Ok(values.pop()),
            _ => Err(ApiError::invalid(name, "given more than once")),
        }
    }

    /// Every value of `name`, repeated or comma-separated, removing them.
    fn take_list(&mut self, name: &str) -> Vec<String> {
        self.take_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn take_all(&mut self, name: &str) -> Vec<String> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(k, _)| k == name);
        self.0 = rest;
        mine.into_iter().map(|(_, v)| v).collect()
    }

    /// Refuses any parameter not taken.
    fn finish(self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(ApiError::invalid(
                k,
                if allowed.is_empty() {
                    "unknown query parameter; this operation takes none".to_string()
                } else {
                    format!(
                        "unknown query parameter; expected one of {}",
                        allowed.join(", ")
                    )
                },
            )),
        }
    }

    /// The parameters as a JSON object of strings (`true`/`false` become booleans for the
    /// fields named `*-all-groups`), for operations that take a body or a query.
    fn into_object(self) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
        let mut m = serde_json::Map::new();
        for (k, v) in self.0 {
            if m.contains_key(&k) {
                return Err(ApiError::invalid(&k, "given more than once"));
            }
            let value = match (k.ends_with("-all-groups"), v.as_str()) {
                (true, "true") => serde_json::Value::Bool(true),
                (true, "false") => serde_json::Value::Bool(false),
                _ => serde_json::Value::String(v),
            };
            m.insert(k, value);
        }
        Ok(m)
    }
}
