//! The web listener: the pages a person sees in a browser. Single sign-on for VPN clients
//! (the short `WEB_AUTH` URL a client is given, the approval page, the identity provider's
//! callback) and the self-service portal.
//!
//! ```text
//!  client ──AUTH_PENDING, WEB_AUTH::{public_url}/s/{id}──▶ user's browser
//!  GET  /s/{id}            approval page: which connection (address, platform, certificate)
//!  POST /s/{id}            → 303 to the IdP (state, nonce, PKCE S256), cookie binds the browser
//!  GET  /oidc/callback     code + state checked, token exchanged and verified → the endpoint
//!                          admits the connection and pushes its configuration at once
//! ```
//!
//! The endpoint core decides *when* (it sends `AUTH_PENDING`, keeps the deadline, admits or
//! refuses); this room keeps the sign-ins under way and the running single sign-on sessions
//! (for refreshes at the re-check interval), both bounded, and speaks HTTP.

pub mod pages;
pub mod portal;
pub mod sso;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::Router;
use tokio::net::TcpListener;

pub use self::portal::{Portal, PortalAccess};
pub use self::sso::{SsoIdp, SsoService};

/// The web listener's settings (`[web]` in the daemon configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSettings {
    /// The URL users reach the listener at, without a trailing `/` (`https://vpn.example.com`).
    pub public_url: String,
}

/// Everything the pages need.
pub struct WebState {
    pub settings: WebSettings,
    pub sso: Arc<SsoService>,
    pub portal: Arc<Portal>,
    /// The store and the daemon's change events (the portal reads endpoints, enrols, ends
    /// sessions through them, as the management API does).
    pub api: Arc<crate::api::ApiState>,
}

/// The routes of the web listener, with headers every page carries: nothing may be framed,
/// sniffed, cached or loaded from elsewhere.
pub fn router(state: Arc<WebState>) -> Router {
    use axum::routing::{get, post};
    Router::new()
        .route("/s/{id}", get(sso::approval_page).post(sso::approve))
        .route("/oidc/callback", get(sso::oidc_callback))
        .route("/saml/acs", post(sso::saml_acs))
        .route("/saml/metadata", get(sso::saml_metadata))
        .route("/portal/{endpoint}", get(portal::index))
        .route("/portal/{endpoint}/login", post(portal::login))
        .route("/portal/{endpoint}/sso", post(portal::sso))
        .route("/portal/{endpoint}/logout", post(portal::logout))
        .route("/portal/{endpoint}/profile.ovpn", get(portal::profile))
        .route("/portal/{endpoint}/disconnect", post(portal::disconnect))
        .route(
            "/portal/{endpoint}/mfa",
            get(portal::mfa_page).post(portal::mfa_confirm),
        )
        .route("/", get(sso::home))
        .with_state(state)
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut r: axum::response::Response) -> axum::response::Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
             form-action 'self' https: http:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The value of cookie `name` in a request (the first, if several).
fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// At most this many browser connections at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// Serves the web listener with TLS until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<WebState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    crate::api::serve::serve_router_tls(
        listener,
        tls,
        router(state),
        "web",
        MAX_CONNECTIONS,
        shutdown,
    )
    .await;
}

/// Where the listener is, for logs.
pub fn describe(addr: SocketAddr, settings: &WebSettings) -> String {
    format!("{addr} (public URL {})", settings.public_url)
}

#[cfg(test)]
mod tests;
