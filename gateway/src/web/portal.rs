//! The self-service portal (`{public_url}/portal/{endpoint}`): people sign in the way the
//! endpoint signs them in (its identity provider, or its directory with the second factor) and
//! serve themselves: download a ready profile of the VPNs they may use, see and disconnect their
//! own sessions, enrol their authenticator app (directories with TOTP), read setup notes for
//! their system.
//!
//! A portal session is a random cookie scoped to the endpoint's portal path (HttpOnly, Secure,
//! SameSite=Lax), bounded in number and lifetime; every form that changes something carries the
//! session's CSRF token. A user who signed in with a password but has not enrolled the second
//! factor the directory requires may only enrol (first sign-in enrolment), nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::pages::{escape, message, page};
use super::sso::{random_secret, SsoIdp};
use super::{cookie, WebState};
use crate::api::serve::ClientAddr;
use crate::auth::service::Authenticator;
use crate::auth::throttle::{Throttle, ThrottlePolicy};
use crate::auth::totp::{otpauth_uri, TotpSecret, TotpVerifier};
use crate::auth::{AuthFailure, AuthRequest};
use crate::model::{ConnectionFilter, ConnectionStatus, Endpoint};
use crate::protocol::keymethod::Password;
use crate::storage::MAX_LIVE_PORTAL_CERTIFICATES_PER_USER;

/// At most this many portal sessions at once (the oldest go first beyond it).
pub const MAX_SESSIONS: usize = 10_000;
/// At most this many portal sign-ins at an identity provider under way.
pub const MAX_SIGN_INS: usize = 4096;
/// How long a portal session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// How long a client certificate the portal issues is valid (where the endpoint holds its
/// client CA's key): a day, so a lost laptop's profile stops working soon even if nobody
/// revokes it, and the CRL of revoked ones stays short.
pub const ISSUED_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a portal sign-in at the identity provider may take.
const SIGN_IN_LIFETIME: Duration = Duration::from_secs(600);
const SESSION_COOKIE: &str = "cvpn_portal";
const BINDING_COOKIE: &str = "cvpn_portal_sso";

/// How an endpoint's portal signs people in (kept current by the daemon for running endpoints).
#[derive(Clone, Default)]
pub struct PortalAccess {
    /// The endpoint's directory checks.
    pub authenticator: Option<Arc<Authenticator>>,
    /// The endpoint's identity provider.
    pub idp: Option<Arc<SsoIdp>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    /// Signed in as the endpoint requires.
    Full,
    /// Password right, second factor not enrolled yet: may only enrol.
    EnrolOnly,
}

struct Session {
    endpoint_id: String,
    username: String,
    groups: Vec<String>,
    csrf: String,
    level: Level,
    expires: Instant,
    /// When the user signed in (wall clock): an administrator's `revoke-user` after it ends
    /// the session's right to new profiles.
    started: crate::model::Timestamp,
    /// A TOTP secret shown for enrolment, until confirmed by one code.
    enrolling: Option<TotpSecret>,
}

struct SignIn {
    endpoint_id: String,
    idp: Arc<SsoIdp>,
    nonce: String,
    pkce_verifier: String,
    binding: String,
    expires: Instant,
}

/// The portal's sessions, sign-ins under way, and each endpoint's way of signing in.
pub struct Portal {
    access: Mutex<HashMap<String, PortalAccess>>,
    sessions: Mutex<HashMap<String, Session>>,
    sign_ins: Mutex<HashMap<String, SignIn>>,
    throttle: Mutex<Throttle>,
    /// Codes used for enrolment count as used (as at sign-in).
    verifier: TotpVerifier,
}

impl Default for Portal {
    fn default() -> Self {
        Portal {
            access: Mutex::default(),
            sessions: Mutex::default(),
            sign_ins: Mutex::default(),
            throttle: Mutex::new(Throttle::new(ThrottlePolicy::default())),
            verifier: TotpVerifier::new(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Portal {
    pub fn new() -> Self {
        Self::default()
    }

    /// How endpoint `id` signs people in now; `None`: it is not running (the portal says so).
    pub fn set_access(&self, endpoint_id: &str, access: Option<PortalAccess>) {
        let mut a = lock(&self.access);
        match access {
            Some(x) => {
                a.insert(endpoint_id.to_string(), x);
            }
            None => {
                a.remove(endpoint_id);
                lock(&self.sessions).retain(|_, s| s.endpoint_id != endpoint_id);
            }
        }
    }

    fn access(&self, endpoint_id: &str) -> Option<PortalAccess> {
        lock(&self.access).get(endpoint_id).cloned()
    }

    fn new_session(&self, s: Session) -> Option<String> {
        let id = random_secret()?;
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), s);
        Some(id)
    }

    /// The portal sign-in at an identity provider that `state` names, taken out (one use).
    fn take_sign_in(&self, state: &str) -> Option<SignIn> {
        let s = lock(&self.sign_ins).remove(state)?;
        (s.expires > Instant::now()).then_some(s)
    }

    /// The number of portal sessions (tests).
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (status, Html(body)).into_response()
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut r = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to);
    if let Some(c) = cookie {
        r = r.header(header::SET_COOKIE, c);
    }
    r.body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn session_cookie(endpoint_id: &str, id: &str, max_age: u64) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/portal/{endpoint_id}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax"
    )
}

fn base(endpoint_id: &str) -> String {
    format!("/portal/{endpoint_id}")
}

/// What the portal shows of a session (a copy: the lock is not held while pages render).
#[derive(Clone)]
struct Who {
    id: String,
    username: String,
    groups: Vec<String>,
    csrf: String,
    level: Level,
    started: crate::model::Timestamp,
}

fn who(web: &WebState, endpoint_id: &str, headers: &HeaderMap) -> Option<Who> {
    let id = cookie(headers, SESSION_COOKIE)?;
    let sessions = lock(&web.portal.sessions);
    let s = sessions.get(id)?;
    (s.endpoint_id == endpoint_id && s.expires > Instant::now()).then(|| Who {
        id: id.to_string(),
        username: s.username.clone(),
        groups: s.groups.clone(),
        csrf: s.csrf.clone(),
        level: s.level,
        started: s.started,
    })
}

fn csrf_ok(w: &Who, given: &str) -> bool {
    bool::from(w.csrf.as_bytes().ct_eq(given.as_bytes()))
}

/// A form without this session's CSRF token (an old page, or another site's form).
fn stale_form() -> Response {
    html(
        StatusCode::FORBIDDEN,
        message(
            "Refused",
            "The form was stale: reload the page and try again.",
            false,
        ),
    )
}

/// The endpoint, if its portal is on; else the page that says there is none.
async fn portal_endpoint(web: &WebState, endpoint_id: &str) -> Result<Endpoint, Response> {
    let id = endpoint_id.to_string();
    let ep = web
        .api
        .blocking(move |s| s.describe_endpoint(&id))
        .await
        .ok()
        .filter(|ep| ep.self_service_portal);
    ep.ok_or_else(|| {
        html(
            StatusCode::NOT_FOUND,
            message(
                "No self-service portal here",
                "This VPN has no self-service portal, or the link is wrong. Ask your \
                 administrator for the right link.",
                false,
            ),
        )
    })
}

fn endpoint_title(ep: &Endpoint) -> String {
    ep.description
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ep.client_vpn_endpoint_id.clone())
}

fn nav(endpoint_id: &str, w: &Who) -> String {
    format!(
        "<span class=\"muted\">{}</span><form method=\"post\" action=\"{}/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button class=\"secondary\" type=\"submit\" style=\"margin:0\">Sign out</button></form>",
        escape(&w.username),
        base(endpoint_id),
        escape(&w.csrf)
    )
}

// ---- sign-in ------------------------------------------------------------------------------------

/// `GET /portal/{endpoint}`: the sign-in page, or the signed-in user's page.
pub async fn index(
    State(web): State<Arc<WebState>>,
    Path(endpoint_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ep = match portal_endpoint(&web, &endpoint_id).await {
        Ok(ep) => ep,
        Err(page) => return page,
    };
    match who(&web, &endpoint_id, &headers) {
        Some(w) if w.level == Level::Full => dashboard(&web, &ep, &w).await,
        Some(_) => redirect(&format!("{}/mfa", base(&endpoint_id)), None),
        None => sign_in_page(&web, &ep, None),
    }
}

fn sign_in_page(web: &WebState, ep: &Endpoint, error: Option<&str>) -> Response {
    let id = &ep.client_vpn_endpoint_id;
    let access = web.portal.access(id);
    let error = error
        .map(|e| format!("<p class=\"error card\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let form = match &access {
        Some(a) if a.idp.is_some() => format!(
            "<form method=\"post\" action=\"{}/sso\"><button type=\"submit\" autofocus>Sign in \
             with your organization</button></form>",
            base(id)
        ),
        Some(a) if a.authenticator.is_some() => {
            let code = a.authenticator.as_ref().is_some_and(|x| x.asks_code());
            format!(
                "<form method=\"post\" action=\"{}/login\">\
                 <label for=\"username\">User name</label>\
                 <input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
                 <label for=\"password\">Password</label>\
                 <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
                 {}<button type=\"submit\">Sign in</button></form>",
                base(id),
                if code {
                    "<label for=\"code\">MFA code</label><input type=\"text\" id=\"code\" \
                     name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\">\
                     <p class=\"muted\">Leave it empty the first time: you will set up your \
                     authenticator app next.</p>"
                } else {
                    ""
                }
            )
        }
        Some(_) => "<p>This VPN signs people in with certificates only: ask your \
                    administrator for your profile.</p>"
            .to_string(),
        None => "<p>This VPN is not running right now. Try again later.</p>".to_string(),
    };
    html(
        StatusCode::OK,
        page(
            "Sign in",
            None,
            &format!(
                "<section class=\"card\"><h1>{}</h1><p class=\"muted\">Self-service portal: \
                 sign in to download your VPN profile and manage your sessions.</p>{error}{form}\
                 </section>",
                escape(&endpoint_title(ep))
            ),
        ),
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    code: String,
}

/// `POST /portal/{endpoint}/login`: directory sign-in (password, and the second factor).
pub async fn login(
    State(web): State<Arc<WebState>>,
    Path(endpoint_id): Path<String>,
    peer: Option<Extension<ClientAddr>>,
    Form(f): Form<LoginForm>,
) -> Response {
    let ep = match portal_endpoint(&web, &endpoint_id).await {
        Ok(ep) => ep,
        Err(page) => return page,
    };
    let Some(auth) = web
        .portal
        .access(&endpoint_id)
        .and_then(|a| a.authenticator)
    else {
        return sign_in_page(
            &web,
            &ep,
            Some("This VPN does not sign in with a password."),
        );
    };
    let source = peer.map_or_else(
        || std::net::IpAddr::from([127, 0, 0, 1]),
        |Extension(ClientAddr(a)): Extension<ClientAddr>| a.ip(),
    );
    let username = f.username.trim().to_string();
    if username.is_empty() || username.len() > 256 || username.chars().any(char::is_control) {
        return sign_in_page(&web, &ep, Some("Enter your user name and password."));
    }
    if lock(&web.portal.throttle)
        .check(Instant::now(), &username, source)
        .is_err()
    {
        return sign_in_page(
            &web,
            &ep,
            Some("Too many failed attempts: wait a minute, then try again."),
        );
    }
    let code = Some(f.code.trim().to_string()).filter(|c| !c.is_empty());
    let result = auth
        .check(&AuthRequest::Login {
            username: username.clone(),
            password: Password::new(f.password),
            code,
        })
        .await;
    let (user, level) = match result {
        Ok(u) => (u, Level::Full),
        // The password was right (the directory is asked first); the second factor is missing
        // and the user has none enrolled: first sign-in enrolment.
        Err(AuthFailure::MfaMissing) if auth.totp_enrolled(&username) == Some(false) => (
            crate::auth::DirectoryUser {
                username: username.clone(),
                dn: String::new(),
                groups: Vec::new(),
            },
            Level::EnrolOnly,
        ),
        Err(failure) => {
            if failure.is_guess() || matches!(failure, AuthFailure::MfaMissing) {
                lock(&web.portal.throttle).failed(Instant::now(), &username, source);
            }
            info!(endpoint = %endpoint_id, user = %username, reason = failure.reason(), "portal sign-in refused");
            return sign_in_page(&web, &ep, Some(failure.client_message()));
        }
    };
    lock(&web.portal.throttle).succeeded(&username);
    info!(endpoint = %endpoint_id, user = %user.username, level = ?level, "portal sign-in");
    start_session(&web, &endpoint_id, user.username, user.groups, level)
}

fn start_session(
    web: &WebState,
    endpoint_id: &str,
    username: String,
    groups: Vec<String>,
    level: Level,
) -> Response {
    let Some(csrf) = random_secret() else {
        return html(
            StatusCode::INTERNAL_SERVER_ERROR,
            message("Sign-in failed", "no system randomness", false),
        );
    };
    let Some(id) = web.portal.new_session(Session {
        endpoint_id: endpoint_id.to_string(),
        username,
        groups,
        csrf,
        level,
        expires: Instant::now() + SESSION_LIFETIME,
        started: crate::model::Timestamp::now(),
        enrolling: None,
    }) else {
        return html(
            StatusCode::INTERNAL_SERVER_ERROR,
            message("Sign-in failed", "no system randomness", false),
        );
    };
    let to = match level {
        Level::Full => base(endpoint_id),
        Level::EnrolOnly => format!("{}/mfa", base(endpoint_id)),
    };
    redirect(
        &to,
        Some(session_cookie(endpoint_id, &id, SESSION_LIFETIME.as_secs())),
    )
}

/// `POST /portal/{endpoint}/sso`: off to the endpoint's identity provider.
pub async fn sso(State(web): State<Arc<WebState>>, Path(endpoint_id): Path<String>) -> Response {
    let ep = match portal_endpoint(&web, &endpoint_id).await {
        Ok(ep) => ep,
        Err(page) => return page,
    };
    let Some(idp) = web.portal.access(&endpoint_id).and_then(|a| a.idp) else {
        return sign_in_page(
            &web,
            &ep,
            Some("This VPN does not sign in at an identity provider."),
        );
    };
    let sent = match idp.start().await {
        Ok(s) => s,
        Err(e) => {
            warn!(endpoint = %endpoint_id, error = %e, "portal: cannot start the sign-in at the identity provider");
            return sign_in_page(
                &web,
                &ep,
                Some("The identity provider could not be reached. Try again in a moment."),
            );
        }
    };
    let Some(binding) = random_secret() else {
        return sign_in_page(&web, &ep, Some("no system randomness"));
    };
    {
        let mut s = lock(&web.portal.sign_ins);
        let now = Instant::now();
        s.retain(|_, x| x.expires > now);
        if s.len() >= MAX_SIGN_INS {
            return sign_in_page(
                &web,
                &ep,
                Some("Too many sign-ins under way: try again in a moment."),
            );
        }
        s.insert(
            sent.state.clone(),
            SignIn {
                endpoint_id: endpoint_id.clone(),
                idp,
                nonce: sent.nonce,
                pkce_verifier: sent.pkce_verifier,
                binding: binding.clone(),
                expires: now + SIGN_IN_LIFETIME,
            },
        );
    }
    redirect(
        &sent.url,
        Some(format!(
            "{BINDING_COOKIE}={binding}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=None",
            SIGN_IN_LIFETIME.as_secs()
        )),
    )
}

/// The identity provider's answer to a portal sign-in (called by the callbacks in
/// [`super::sso`] when `state` names a portal sign-in): checked like a VPN sign-in's, then a
/// portal session.
pub(super) async fn idp_answered(
    web: &WebState,
    state: &str,
    headers: &HeaderMap,
    answer: super::sso::IdpAnswer,
) -> Option<Response> {
    let s = web.portal.take_sign_in(state)?;
    let bound = cookie(headers, BINDING_COOKIE)
        .is_some_and(|c| bool::from(c.as_bytes().ct_eq(s.binding.as_bytes())));
    if !bound {
        return Some(html(
            StatusCode::FORBIDDEN,
            message(
                "Sign-in refused",
                "This sign-in was started in another browser. Open the portal again here.",
                false,
            ),
        ));
    }
    match super::sso::verify_answer(&s.idp, answer, &s.nonce, &s.pkce_verifier).await {
        Ok(user) => {
            info!(endpoint = %s.endpoint_id, user = %user.username, "portal sign-in at the identity provider");
            Some(start_session(
                web,
                &s.endpoint_id,
                user.username,
                user.groups,
                Level::Full,
            ))
        }
        Err(f) => {
            warn!(endpoint = %s.endpoint_id, error = %f, "portal sign-in at the identity provider failed");
            Some(html(
                StatusCode::FORBIDDEN,
                message(
                    "Sign-in failed",
                    "The identity provider's answer could not be verified or was a refusal. \
                     Open the portal again; if it persists, tell your administrator.",
                    false,
                ),
            ))
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /portal/{endpoint}/logout`.
pub async fn logout(
    State(web): State<Arc<WebState>>,
    Path(endpoint_id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(w) = who(&web, &endpoint_id, &headers) {
        if csrf_ok(&w, &f.csrf) {
            lock(&web.portal.sessions).remove(&w.id);
        }
    }
    redirect(
        &base(&endpoint_id),
        Some(session_cookie(&endpoint_id, "", 0)),
    )
}

// ---- the signed-in user's page ------------------------------------------------------------------

/// Whether `groups` get anything on an endpoint with these rules.
fn may_use(rules: &[crate::model::AuthorizationRule], groups: &[String]) -> bool {
    rules.iter().any(|r| {
        r.access_all
            || r.group_id
                .as_ref()
                .is_some_and(|g| groups.iter().any(|x| x == g))
    })
}

/// The portal-enabled endpoints that sign people in the same way as `ep` and give `groups`
/// something.
async fn usable_endpoints(web: &WebState, ep: &Endpoint, groups: &[String]) -> Vec<Endpoint> {
    let me = ep.clone();
    let groups = groups.to_vec();
    web.api
        .blocking(move |s| {
            let mut out = Vec::new();
            for other in s.describe_endpoints(&[])? {
                let same_source = other.client_vpn_endpoint_id == me.client_vpn_endpoint_id
                    || (other.idp_id().is_some() && other.idp_id() == me.idp_id())
                    || (me.idp_id().is_none() && {
                        let a = s.endpoint_directory(&other.client_vpn_endpoint_id)?;
                        let b = s.endpoint_directory(&me.client_vpn_endpoint_id)?;
                        a.is_some() && a.map(|d| d.directory_id) == b.map(|d| d.directory_id)
                    });
                if same_source
                    && other.self_service_portal
                    && may_use(&s.describe_rules(&other.client_vpn_endpoint_id)?, &groups)
                {
                    out.push(other);
                }
            }
            Ok(out)
        })
        .await
        .unwrap_or_default()
}

async fn my_sessions(
    web: &WebState,
    endpoint_id: &str,
    username: &str,
) -> Vec<crate::model::Connection> {
    let filter = ConnectionFilter {
        client_vpn_endpoint_id: Some(endpoint_id.to_string()),
        username: Some(username.to_string()),
        status: Some(ConnectionStatus::Active),
        ..Default::default()
    };
    web.api
        .blocking(move |s| s.describe_connections(&filter))
        .await
        .unwrap_or_default()
}

async fn dashboard(web: &WebState, ep: &Endpoint, w: &Who) -> Response {
    let id = &ep.client_vpn_endpoint_id;
    let usable = usable_endpoints(web, ep, &w.groups).await;
    let mut vpns = String::new();
    for other in &usable {
        vpns.push_str(&format!(
            "<tr><td>{}</td><td>{} {}</td><td><a class=\"button\" \
             href=\"{}/profile.ovpn?endpoint={}&amp;csrf={}\" download>Download profile</a></td></tr>",
            escape(&endpoint_title(other)),
            escape(other.transport_protocol.as_str()),
            other.vpn_port,
            base(id),
            escape(&other.client_vpn_endpoint_id),
            escape(&w.csrf),
        ));
    }
    if vpns.is_empty() {
        vpns = "<tr><td colspan=\"3\">No VPN gives your groups access yet: ask your \
                administrator.</td></tr>"
            .into();
    }
    let sessions = my_sessions(web, id, &w.username).await;
    let mut rows = String::new();
    for c in &sessions {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" action=\"{}/disconnect\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"connection_id\" value=\"{}\">\
             <button class=\"secondary\" type=\"submit\" style=\"margin:0\" aria-label=\"Disconnect {}\">Disconnect</button></form></td></tr>",
            escape(&c.client_ip.to_string()),
            escape(&c.device_ip.to_string()),
            escape(&c.connection_start_time.to_string()),
            base(id),
            escape(&w.csrf),
            escape(&c.connection_id),
            escape(&c.connection_id),
        ));
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"4\">No active session.</td></tr>".into();
    }
    let body = format!(
        "<section class=\"card\"><h1>Your VPNs</h1><p class=\"muted\">Signed in as {} \
         (groups: {}).</p><table><thead><tr><th scope=\"col\">VPN</th><th scope=\"col\">Transport</th>\
         <th scope=\"col\">Profile</th></tr></thead><tbody>{vpns}</tbody></table></section>\
         <section class=\"card\"><h2>Your active sessions</h2><table><thead><tr>\
         <th scope=\"col\">VPN address</th><th scope=\"col\">From</th><th scope=\"col\">Since</th>\
         <th scope=\"col\"></th></tr></thead><tbody>{rows}</tbody></table></section>{}",
        escape(&w.username),
        escape(&if w.groups.is_empty() {
            "none".to_string()
        } else {
            w.groups.join(", ")
        }),
        SETUP_NOTES,
    );
    html(
        StatusCode::OK,
        page(&endpoint_title(ep), Some(&nav(id, w)), &body),
    )
}

const SETUP_NOTES: &str = "<section class=\"card\" id=\"setup\"><h2>Setting up your device</h2>\
<details open><summary><strong>Windows</strong></summary><p>Install <em>OpenVPN Connect</em> or \
<em>OpenVPN GUI</em> (OpenVPN 2.6). Import the downloaded profile; when you connect, your browser \
opens for sign-in if your VPN uses single sign-on.</p></details>\
<details><summary><strong>macOS</strong></summary><p>Install <em>Tunnelblick</em> or <em>OpenVPN \
Connect</em>, then double-click the profile to import it.</p></details>\
<details><summary><strong>Linux</strong></summary><p>Run <code>sudo openvpn --config \
profile.ovpn</code> (OpenVPN 2.6), or import it in NetworkManager \
(<code>nmcli connection import type openvpn file profile.ovpn</code>). With single sign-on the \
command line prints the sign-in link: open it in your browser.</p></details>\
<details><summary><strong>iOS and Android</strong></summary><p>Install <em>OpenVPN Connect</em> \
from your app store and open the profile with it.</p></details></section>";

// ---- profile, sessions, second factor -----------------------------------------------------------

#[derive(Deserialize)]
pub struct ProfileQuery {
    /// Which of the user's VPNs (default: this portal's endpoint).
    endpoint: Option<String>,
    /// The session's CSRF token: a download issues a certificate, so another site's link
    /// must not trigger one.
    #[serde(default)]
    csrf: String,
}

/// `GET /portal/{endpoint}/profile.ovpn[?endpoint=ID]`: the user's ready profile of one of the
/// VPNs the portal lists for her (counted on that endpoint).
pub async fn profile(
    State(web): State<Arc<WebState>>,
    Path(portal_id): Path<String>,
    Query(q): Query<ProfileQuery>,
    headers: HeaderMap,
) -> Response {
    let portal = match portal_endpoint(&web, &portal_id).await {
        Ok(ep) => ep,
        Err(page) => return page,
    };
    let Some(w) = who(&web, &portal_id, &headers).filter(|w| w.level == Level::Full) else {
        return redirect(&base(&portal_id), None);
    };
    if !csrf_ok(&w, &q.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            message(
                "Refused",
                "The download link was stale or came from another site: reload your VPN list \
                 and use its link.",
                false,
            ),
        );
    }
    // Only a VPN the page lists: same sign-in, portal on, something the user's groups may reach.
    let wanted = q.endpoint.unwrap_or_else(|| portal_id.clone());
    let Some(ep) = usable_endpoints(&web, &portal, &w.groups)
        .await
        .into_iter()
        .find(|e| e.client_vpn_endpoint_id == wanted)
    else {
        return html(
            StatusCode::NOT_FOUND,
            message(
                "Not one of your VPNs",
                "There is no profile for you here: go back to the list of your VPNs.",
                false,
            ),
        );
    };
    let endpoint_id = ep.client_vpn_endpoint_id.clone();
    // An administrator who ended this user's access (revoke-user) after this session began
    // ends its right to new profiles: the user must sign in again (where a disabled account
    // fails).
    let (id, user, since) = (endpoint_id.clone(), w.username.clone(), w.started);
    let revoked = web
        .api
        .blocking(move |s| s.access_revoked_since(&id, &user, since))
        .await;
    if !matches!(revoked, Ok(false)) {
        lock(&web.portal.sessions).remove(&w.id);
        info!(endpoint = %endpoint_id, user = %w.username, "portal: access revoked since sign-in; session ended");
        return html(
            StatusCode::FORBIDDEN,
            message(
                "Access ended",
                "An administrator has ended your access to this VPN since you signed in. Sign \
                 in again; if you still may use it, you will get a new profile.",
                false,
            ),
        );
    }
    let fallback = web.api.settings.remote_host.clone().or_else(|| {
        url::Url::parse(&web.settings.public_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
    });
    let ciphers = web.api.settings.data_ciphers.clone();
    let id = endpoint_id.clone();
    let profile = web
        .api
        .blocking(move |s| {
            let hosts = crate::api::profile::remote_hosts(s, &id, None, fallback.clone())?;
            crate::api::profile::endpoint_profile(s, &id, &hosts, &ciphers)
        })
        .await;
    // Where the endpoint holds its client CA's key, the profile carries the user's own
    // short-lived certificate (the administrator's `revoke-user` puts it on the CRL).
    let text = match profile {
        Ok(mut p) if ep.client_ca_key_set => crate::api::issue_portal_certificate(
            &web.api,
            &endpoint_id,
            &w.username,
            ISSUED_CERTIFICATE_LIFETIME,
        )
        .await
        .map(|c| {
            info!(endpoint = %endpoint_id, user = %w.username, serial = %c.serial_hex,
                "portal: client certificate issued");
            p.client_certificate = Some((c.cert_pem.clone(), c.key_pem.clone()));
            p.render()
        }),
        Ok(p) => Ok(p.render()),
        Err(e) => Err(e),
    };
    match text {
        Ok(text) => {
            match crate::api::record_portal_download(&web.api, &endpoint_id).await {
                Ok(n) => {
                    info!(endpoint = %endpoint_id, user = %w.username, downloads = n, "portal: profile downloaded")
                }
                Err(e) => {
                    warn!(endpoint = %endpoint_id, error = %e, "portal: download not counted")
                }
            }
            (
                [
                    (
                        header::CONTENT_TYPE,
                        "application/x-openvpn-profile".to_string(),
                    ),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{endpoint_id}.ovpn\""),
                    ),
                ],
                text,
            )
                .into_response()
        }
        Err(e) if e.code == crate::model::codes::OPERATION_NOT_PERMITTED => html(
            StatusCode::TOO_MANY_REQUESTS,
            message(
                "Too many profiles",
                &format!(
                    "You already hold {MAX_LIVE_PORTAL_CERTIFICATES_PER_USER} profiles of this \
                     VPN that have not expired. Use one you downloaded before, or try again \
                     tomorrow."
                ),
                false,
            ),
        ),
        Err(e) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            message(
                "Profile not available",
                &format!("The profile could not be made ({e}). Tell your administrator."),
                false,
            ),
        ),
    }
}

#[derive(Deserialize)]
pub struct DisconnectForm {
    #[serde(default)]
    csrf: String,
    connection_id: String,
}

/// `POST /portal/{endpoint}/disconnect`: ends one of the user's own sessions.
pub async fn disconnect(
    State(web): State<Arc<WebState>>,
    Path(endpoint_id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<DisconnectForm>,
) -> Response {
    let Some(w) = who(&web, &endpoint_id, &headers).filter(|w| w.level == Level::Full) else {
        return redirect(&base(&endpoint_id), None);
    };
    if !csrf_ok(&w, &f.csrf) {
        return stale_form();
    }
    // Only the user's own active sessions.
    let mine = my_sessions(&web, &endpoint_id, &w.username)
        .await
        .into_iter()
        .any(|c| c.connection_id == f.connection_id);
    if !mine {
        return html(
            StatusCode::NOT_FOUND,
            message(
                "No such session",
                "That session is not yours or has already ended.",
                false,
            ),
        );
    }
    match crate::api::terminate_connection(&web.api, &endpoint_id, &f.connection_id).await {
        Ok(_) => {
            info!(endpoint = %endpoint_id, user = %w.username, connection = %f.connection_id, "portal: session disconnected by its user");
            redirect(&base(&endpoint_id), None)
        }
        Err(e) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            message("Not disconnected", &e.to_string(), false),
        ),
    }
}

/// `GET /portal/{endpoint}/mfa`: TOTP enrolment — a new secret as a QR code and text, confirmed
/// by one code (only for users with no enrolment yet).
pub async fn mfa_page(
    State(web): State<Arc<WebState>>,
    Path(endpoint_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ep = match portal_endpoint(&web, &endpoint_id).await {
        Ok(ep) => ep,
        Err(page) => return page,
    };
    let Some(w) = who(&web, &endpoint_id, &headers) else {
        return redirect(&base(&endpoint_id), None);
    };
    let auth = web
        .portal
        .access(&endpoint_id)
        .and_then(|a| a.authenticator);
    if auth.as_ref().and_then(|a| a.totp_enrolled(&w.username)) != Some(false) {
        return html(
            StatusCode::OK,
            page(
                "Authenticator app",
                Some(&nav(&endpoint_id, &w)),
                "<section class=\"card\"><h1>Authenticator app</h1><p>Your authenticator app is \
                 already set up (or this VPN needs none). To replace it, ask your administrator \
                 to reset it.</p></section>",
            ),
        );
    }
    let secret = {
        let mut sessions = lock(&web.portal.sessions);
        let Some(s) = sessions.get_mut(&w.id) else {
            return redirect(&base(&endpoint_id), None);
        };
        if s.enrolling.is_none() {
            match TotpSecret::generate() {
                Ok(x) => s.enrolling = Some(x),
                Err(_) => {
                    return html(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        message("Not available", "no system randomness", false),
                    )
                }
            }
        }
        s.enrolling.clone()
    };
    let Some(secret) = secret else {
        return redirect(&base(&endpoint_id), None);
    };
    let uri = otpauth_uri(
        &secret,
        &format!("cvpn {}", endpoint_title(&ep)),
        &w.username,
    );
    let qr = qrcode::QrCode::new(uri.as_bytes())
        .map(|c| {
            c.render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .dark_color(qrcode::render::svg::Color("#000"))
                .light_color(qrcode::render::svg::Color("#fff"))
                .build()
        })
        .unwrap_or_default();
    let body = format!(
        "<section class=\"card\"><h1>Set up your authenticator app</h1>\
         <p>This VPN asks for a code from an authenticator app at every sign-in. Scan the code \
         below with your app (Google Authenticator, Microsoft Authenticator, FreeOTP, 1Password, \
         …), then enter the code it shows.</p>\
         <div class=\"qr\" role=\"img\" aria-label=\"QR code of your authenticator secret\">{qr}</div>\
         <p>Cannot scan? Enter this key by hand:</p>\
         <p><code id=\"totp-key\">{}</code> <span class=\"muted\">(account {})</span></p>\
         <form method=\"post\" action=\"{}/mfa\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label for=\"code\">Code from the app</label>\
         <input type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus>\
         <button type=\"submit\">Confirm</button></form></section>",
        escape(&secret.to_base32()),
        escape(&w.username),
        base(&endpoint_id),
        escape(&w.csrf),
    );
    html(
        StatusCode::OK,
        page("Authenticator app", Some(&nav(&endpoint_id, &w)), &body),
    )
}

#[derive(Deserialize)]
pub struct MfaForm {
    #[serde(default)]
    csrf: String,
    code: String,
}

/// `POST /portal/{endpoint}/mfa`: the first code confirms the enrolment; then the session is a
/// full one.
pub async fn mfa_confirm(
    State(web): State<Arc<WebState>>,
    Path(endpoint_id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<MfaForm>,
) -> Response {
    let Some(w) = who(&web, &endpoint_id, &headers) else {
        tracing::debug!(endpoint = %endpoint_id, "portal: enrolment confirmation without a session");
        return redirect(&base(&endpoint_id), None);
    };
    if !csrf_ok(&w, &f.csrf) {
        warn!(endpoint = %endpoint_id, user = %w.username, "portal: enrolment confirmation with a wrong CSRF token");
        return stale_form();
    }
    let Some(auth) = web
        .portal
        .access(&endpoint_id)
        .and_then(|a| a.authenticator)
    else {
        return redirect(&base(&endpoint_id), None);
    };
    if auth.totp_enrolled(&w.username) != Some(false) {
        tracing::debug!(endpoint = %endpoint_id, user = %w.username, "portal: enrolment confirmation for a user already enrolled");
        return redirect(&base(&endpoint_id), None);
    }
    let secret = lock(&web.portal.sessions)
        .get(&w.id)
        .and_then(|s| s.enrolling.clone());
    let Some(secret) = secret else {
        return redirect(&format!("{}/mfa", base(&endpoint_id)), None);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let key = format!("portal/{endpoint_id}/{}", w.username.to_lowercase());
    if web
        .portal
        .verifier
        .verify(&key, &secret, f.code.trim(), now)
        .is_err()
    {
        return html(
            StatusCode::BAD_REQUEST,
            message(
                "Wrong code",
                "That code does not match. Check the time on your phone, then go back and enter \
                 the current code.",
                false,
            ),
        );
    }
    let id = endpoint_id.clone();
    let user = w.username.clone();
    let bytes = secret.as_bytes().to_vec();
    let stored = web
        .api
        .blocking(move |s| {
            let dir = s.endpoint_directory(&id)?.ok_or_else(|| {
                crate::model::ApiError::incorrect_state("this VPN has no directory")
            })?;
            Ok(s.enroll_mfa(&dir.directory_id, &user, &bytes, false)?
                .directory_id)
        })
        .await;
    match stored {
        Ok(directory_id) => {
            auth.add_totp_enrolment(&w.username, secret);
            web.api
                .emit(crate::api::ControlEvent::DirectoryChanged { directory_id });
            if let Some(s) = lock(&web.portal.sessions).get_mut(&w.id) {
                s.enrolling = None;
                // Enrolled, but this session began with the password alone: sign in again
                // with the code for the rest.
                if s.level == Level::EnrolOnly {
                    s.expires = Instant::now();
                }
            }
            info!(endpoint = %endpoint_id, user = %w.username, "portal: authenticator app enrolled");
            html(
                StatusCode::OK,
                page(
                    "Authenticator app ready",
                    None,
                    &format!(
                        "<section class=\"card ok\"><h1>Your authenticator app is set up</h1>\
                         <p>From now on, enter its code when you sign in.</p>\
                         <a class=\"button\" href=\"{}\">Sign in</a></section>",
                        base(&endpoint_id)
                    ),
                ),
            )
        }
        Err(e) => html(
            StatusCode::CONFLICT,
            message("Not enrolled", &e.to_string(), false),
        ),
    }
}
