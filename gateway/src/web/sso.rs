//! Web sign-in for VPN clients (single sign-on), and the single sign-on sessions it starts.
//!
//! A sign-in lives in [`SsoService`] from the moment the endpoint asks for it
//! ([`SsoService::begin`]) until the callback answers, the user gives up, or its deadline
//! passes. Each is used once: the callback removes it before anything else. Its secrets — the
//! short URL's id, the OAuth `state`, nonce and PKCE verifier, the cookie that binds the
//! browser that approved it — never leave the server except as the protocol needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::pages::{details, escape, message, page};
use super::{cookie, WebState};
use crate::auth::oidc::OidcRelyingParty;
use crate::auth::saml::SamlServiceProvider;
use crate::auth::{AuthFailure, DirectoryUser, WebSignIn};
use crate::endpoint::ConnId;

/// Where an endpoint's sign-in answers go (the endpoint driver's channel).
pub type Answers = mpsc::UnboundedSender<(ConnId, Result<DirectoryUser, AuthFailure>)>;

/// At most this many web sign-ins under way, across all endpoints (each endpoint's own bound
/// on connections not yet admitted comes first).
pub const MAX_PENDING: usize = 4096;
/// At most this many single sign-on sessions remembered (for refreshes and reconnects).
pub const MAX_SESSIONS: usize = 100_000;
/// The cookie that binds a sign-in to the browser that approved it.
const BINDING_COOKIE: &str = "cvpn_sso";

/// An endpoint's identity provider. Always shared behind an `Arc` (one per provider), so the
/// variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum SsoIdp {
    Oidc(OidcRelyingParty),
    Saml(SamlServiceProvider),
}

impl std::fmt::Debug for SsoIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SsoIdp::Oidc(rp) => rp.fmt(f),
            SsoIdp::Saml(sp) => f
                .debug_struct("SamlServiceProvider")
                .field("idp", &sp.settings().idp_entity_id)
                .finish(),
        }
    }
}

/// A sign-in sent to the provider: where the browser goes, and what the answer is checked
/// against (OIDC: `state`, nonce, PKCE verifier; SAML: RelayState and the request's ID).
pub(super) struct Sent {
    pub(super) url: String,
    pub(super) state: String,
    pub(super) nonce: String,
    pub(super) pkce_verifier: String,
}

impl SsoIdp {
    pub(super) async fn start(&self) -> Result<Sent, String> {
        match self {
            SsoIdp::Oidc(rp) => rp
                .authorize()
                .await
                .map(|a| Sent {
                    url: a.url,
                    state: a.state,
                    nonce: a.nonce,
                    pkce_verifier: a.pkce_verifier,
                })
                .map_err(|e| e.to_string()),
            SsoIdp::Saml(sp) => {
                let relay = random_secret().ok_or("no system randomness")?;
                let r = sp.authn_request(&relay).map_err(|e| e.to_string())?;
                Ok(Sent {
                    url: r.url,
                    state: relay,
                    nonce: r.id,
                    pkce_verifier: String::new(),
                })
            }
        }
    }
}

/// What the endpoint's driver hands over with a sign-in.
#[derive(Clone)]
pub struct SignInTarget {
    pub endpoint_id: String,
    pub endpoint_name: String,
    pub conn: ConnId,
    pub idp: Arc<SsoIdp>,
    pub answers: Answers,
}

enum Stage {
    /// Shown, not approved yet.
    Waiting,
    /// Sent to the provider.
    AtIdp {
        state: String,
        nonce: String,
        pkce_verifier: String,
        binding: String,
    },
}

struct Pending {
    target: SignInTarget,
    sign_in: WebSignIn,
    stage: Stage,
}

/// A running single sign-on session.
struct Session {
    endpoint_id: String,
    username: String,
    subject: String,
    groups: Vec<String>,
    refresh_token: Option<String>,
    idp: Arc<SsoIdp>,
    expires_unix: u64,
}

/// The sign-ins under way and the sessions they started.
#[derive(Default)]
pub struct SsoService {
    pending: Mutex<HashMap<String, Pending>>,
    /// OAuth `state` → sign-in id.
    by_state: Mutex<HashMap<String, String>>,
    /// (endpoint, auth-token session) → session.
    sessions: Mutex<HashMap<(String, String), Session>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for SsoService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoService")
            .field("pending", &lock(&self.pending).len())
            .field("sessions", &lock(&self.sessions).len())
            .finish()
    }
}

impl SsoService {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sign-in the endpoint started (it has told the client the URL). Refused at once when
    /// too many are under way.
    pub fn begin(&self, target: SignInTarget, sign_in: WebSignIn) {
        let now = now_unix();
        let mut pending = lock(&self.pending);
        pending.retain(|_, p| p.sign_in.expires_unix > now);
        // A sign-in abandoned at the IdP leaves its `state` behind: forget it with its sign-in,
        // so the states never outnumber the sign-ins (themselves at most MAX_PENDING).
        lock(&self.by_state).retain(|_, id| pending.contains_key(id));
        if pending.len() >= MAX_PENDING {
            drop(pending);
            warn!(endpoint = %target.endpoint_id, "too many web sign-ins under way: refused");
            let _ = target.answers.send((
                target.conn,
                Err(AuthFailure::IdpUnreachable(
                    "too many sign-ins under way".into(),
                )),
            ));
            return;
        }
        info!(endpoint = %target.endpoint_id, connection = %sign_in.connection_id,
            client = %sign_in.client_addr, "web sign-in waiting for its user");
        pending.insert(
            sign_in.id.clone(),
            Pending {
                target,
                sign_in,
                stage: Stage::Waiting,
            },
        );
    }

    /// Forgets the sign-ins and sessions of an endpoint that stopped.
    pub fn forget_endpoint(&self, endpoint_id: &str) {
        let mut pending = lock(&self.pending);
        pending.retain(|_, p| p.target.endpoint_id != endpoint_id);
        lock(&self.by_state).retain(|_, id| pending.contains_key(id));
        drop(pending);
        lock(&self.sessions).retain(|(e, _), _| e != endpoint_id);
    }

    /// How many sign-ins, IdP states and sessions it holds (tests of its bounds).
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        (
            lock(&self.pending).len(),
            lock(&self.by_state).len(),
            lock(&self.sessions).len(),
        )
    }

    /// The user and groups of a running session now: refreshed at the provider when it gave a
    /// refresh token. A refusal ends the session (and forgets it); the provider not answering
    /// keeps it.
    pub async fn check_session(
        &self,
        endpoint_id: &str,
        session: &str,
        username: &str,
    ) -> Result<DirectoryUser, AuthFailure> {
        let key = (endpoint_id.to_string(), session.to_string());
        let (idp, refresh, subject, known) = {
            let sessions = lock(&self.sessions);
            let s = sessions.get(&key).ok_or(AuthFailure::SsoSessionUnknown)?;
            if !s.username.eq_ignore_ascii_case(username) {
                return Err(AuthFailure::BadToken);
            }
            (
                Arc::clone(&s.idp),
                s.refresh_token.clone(),
                s.subject.clone(),
                DirectoryUser {
                    username: s.username.clone(),
                    dn: s.subject.clone(),
                    groups: s.groups.clone(),
                },
            )
        };
        let Some(refresh) = refresh else {
            return Ok(known);
        };
        let answer = match &*idp {
            SsoIdp::Oidc(rp) => rp.refresh(&refresh, &subject).await,
            // SAML has no refresh: the session keeps what the assertion said.
            SsoIdp::Saml(_) => return Ok(known),
        };
        match answer {
            Ok(id) => {
                let mut sessions = lock(&self.sessions);
                if let Some(s) = sessions.get_mut(&key) {
                    s.groups = id.groups.clone();
                    s.refresh_token = id.refresh_token;
                }
                Ok(DirectoryUser {
                    username: known.username,
                    dn: subject,
                    groups: id.groups,
                })
            }
            Err(e) => {
                let failure = AuthFailure::from(e);
                if failure.ends_session() {
                    lock(&self.sessions).remove(&key);
                }
                Err(failure)
            }
        }
    }

    fn remember(&self, p: &Pending, id: &SignedInUser, expires_unix: u64) {
        let mut sessions = lock(&self.sessions);
        let now = now_unix();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires_unix > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            warn!("too many single sign-on sessions remembered: this one will not be refreshed");
            return;
        }
        sessions.insert(
            (p.target.endpoint_id.clone(), p.sign_in.session.clone()),
            Session {
                endpoint_id: p.target.endpoint_id.clone(),
                username: id.username.clone(),
                subject: id.subject.clone(),
                groups: id.groups.clone(),
                refresh_token: id.refresh_token.clone(),
                idp: Arc::clone(&p.target.idp),
                expires_unix,
            },
        );
    }

    /// The number of sign-ins under way (tests, metrics).
    pub fn pending_count(&self) -> usize {
        lock(&self.pending).len()
    }

    /// The single sign-on sessions of an endpoint (tests, the portal).
    pub fn session_users(&self, endpoint_id: &str) -> Vec<String> {
        lock(&self.sessions)
            .values()
            .filter(|s| s.endpoint_id == endpoint_id)
            .map(|s| s.username.clone())
            .collect()
    }
}

/// How long the browser's binding cookie lives: as long as a sign-in may take at most.
const BINDING_MAX_AGE: u64 = 900;

pub(super) fn random_secret() -> Option<String> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut b).ok()?;
    Some(URL_SAFE_NO_PAD.encode(b))
}

fn html(status: StatusCode, body: String) -> Response {
    (status, Html(body)).into_response()
}

fn unknown_link() -> Response {
    html(
        StatusCode::NOT_FOUND,
        message(
            "Sign-in link unknown or expired",
            "This sign-in link was already used, has expired, or never existed. Connect again \
             from your VPN client: it shows a new link.",
            false,
        ),
    )
}

/// `GET /`: where a stray visitor lands.
pub async fn home() -> Response {
    html(
        StatusCode::OK,
        message(
            "cvpn sign-in",
            "Your VPN client opens the right page here when you connect.",
            true,
        ),
    )
}

/// `GET /s/{id}`: which connection is being approved, and a button to go on (a GET never
/// signs anyone in, so a link previewer or a forwarded link does nothing by itself).
pub async fn approval_page(State(web): State<Arc<WebState>>, Path(id): Path<String>) -> Response {
    let now = now_unix();
    let pending = lock(&web.sso.pending);
    let Some(p) = pending.get(&id).filter(|p| p.sign_in.expires_unix > now) else {
        return unknown_link();
    };
    let s = &p.sign_in;
    let mut rows = vec![
        (
            "VPN",
            if p.target.endpoint_name == p.target.endpoint_id {
                p.target.endpoint_id.clone()
            } else {
                format!("{} ({})", p.target.endpoint_name, p.target.endpoint_id)
            },
        ),
        ("Connecting from", s.client_addr.ip().to_string()),
        (
            "Platform",
            s.platform.clone().unwrap_or_else(|| "not announced".into()),
        ),
        (
            "Client version",
            s.client_version
                .clone()
                .unwrap_or_else(|| "not announced".into()),
        ),
    ];
    if let Some(cn) = &s.common_name {
        rows.push(("Certificate", cn.clone()));
    }
    rows.push((
        "Expires in",
        format!("{} s", s.expires_unix.saturating_sub(now)),
    ));
    let body = format!(
        "<section class=\"card\"><h1>Approve this VPN connection?</h1>\
         <p>A VPN client asks to sign in as you. Continue only if it is yours: the details \
         below must match the device you are connecting from.</p>{}\
         <form method=\"post\" action=\"/s/{}\"><button type=\"submit\" autofocus>Continue \
         to sign in</button></form>\
         <p class=\"muted\">Not you? Close this page: the connection is refused when the link \
         expires.</p></section>",
        details(&rows),
        escape(&id),
    );
    html(StatusCode::OK, page("Approve connection", None, &body))
}

/// `POST /s/{id}`: off to the identity provider, with a cookie that binds the sign-in to this
/// browser.
pub async fn approve(State(web): State<Arc<WebState>>, Path(id): Path<String>) -> Response {
    let now = now_unix();
    let idp = {
        let pending = lock(&web.sso.pending);
        match pending.get(&id).filter(|p| p.sign_in.expires_unix > now) {
            Some(p) if matches!(p.stage, Stage::Waiting) => Arc::clone(&p.target.idp),
            Some(_) => {
                return html(
                    StatusCode::CONFLICT,
                    message(
                        "Sign-in already started",
                        "This sign-in was already sent to the identity provider from a \
                         browser. Connect again from your VPN client for a new link.",
                        false,
                    ),
                )
            }
            None => return unknown_link(),
        }
    };
    let a = match idp.start().await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot start the sign-in at the identity provider");
            return html(
                StatusCode::BAD_GATEWAY,
                message(
                    "Identity provider unavailable",
                    "The identity provider could not be reached. Try again in a moment; if it \
                     persists, tell your administrator.",
                    false,
                ),
            );
        }
    };
    let Some(binding) = random_secret() else {
        return html(
            StatusCode::INTERNAL_SERVER_ERROR,
            message("Sign-in failed", "no system randomness", false),
        );
    };
    {
        let mut pending = lock(&web.sso.pending);
        let Some(p) = pending
            .get_mut(&id)
            .filter(|p| matches!(p.stage, Stage::Waiting))
        else {
            return unknown_link();
        };
        p.stage = Stage::AtIdp {
            state: a.state.clone(),
            nonce: a.nonce,
            pkce_verifier: a.pkce_verifier,
            binding: binding.clone(),
        };
        lock(&web.sso.by_state).insert(a.state, id);
    }
    // SameSite=None: a SAML provider posts the answer back (a cross-site POST, which Lax
    // cookies do not accompany); the cookie is a binding, not a credential.
    let cookie = format!(
        "{BINDING_COOKIE}={binding}; Path=/; Max-Age={BINDING_MAX_AGE}; HttpOnly; Secure; SameSite=None"
    );
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, a.url)
        .header(header::SET_COOKIE, cookie)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Who the provider says signed in (either protocol).
pub(super) struct SignedInUser {
    pub(super) username: String,
    pub(super) subject: String,
    pub(super) groups: Vec<String>,
    pub(super) refresh_token: Option<String>,
}

/// What came back from the provider.
#[derive(Clone)]
pub(super) enum IdpAnswer {
    /// OIDC: the authorization code (or the provider's error).
    Code(Result<String, String>),
    /// SAML: the posted SAMLResponse.
    SamlResponse(String),
}

/// Verifies a provider's answer for a sign-in that sent `nonce` (OIDC nonce, or SAML request
/// ID) and `pkce_verifier`.
pub(super) async fn verify_answer(
    idp: &SsoIdp,
    answer: IdpAnswer,
    nonce: &str,
    pkce_verifier: &str,
) -> Result<SignedInUser, AuthFailure> {
    match (idp, answer) {
        (_, IdpAnswer::Code(Err(refusal))) => Err(AuthFailure::IdpRefused(refusal)),
        (SsoIdp::Oidc(rp), IdpAnswer::Code(Ok(code))) => rp
            .finish(&code, nonce, pkce_verifier)
            .await
            .map(|id| SignedInUser {
                username: id.username,
                subject: id.subject,
                groups: id.groups,
                refresh_token: id.refresh_token,
            })
            .map_err(AuthFailure::from),
        (SsoIdp::Saml(sp), IdpAnswer::SamlResponse(response)) => sp
            .verify_response(&response, nonce, SystemTime::now())
            .map(|id| SignedInUser {
                username: id.username,
                subject: id.name_id,
                groups: id.groups,
                refresh_token: None,
            })
            .map_err(AuthFailure::from),
        _ => Err(AuthFailure::IdpRefused(
            "an answer of the other protocol".into(),
        )),
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
pub struct AcsForm {
    #[serde(rename = "SAMLResponse")]
    saml_response: Option<String>,
    #[serde(rename = "RelayState")]
    relay_state: Option<String>,
}

/// The sign-in a provider's answer names (by `state` / RelayState), taken out (one use) and
/// checked to come back to the browser that approved it. Everything the caller needs from it
/// is returned; an error is the page to show.
struct Returned {
    p: Pending,
    nonce: String,
    pkce_verifier: String,
}

fn take_returned(
    web: &WebState,
    state: Option<String>,
    headers: &HeaderMap,
) -> Result<Returned, Box<Response>> {
    let Some(state) = state.filter(|s| !s.is_empty() && s.len() <= 512) else {
        return Err(Box::new(html(
            StatusCode::BAD_REQUEST,
            message(
                "Sign-in failed",
                "The identity provider sent the browser back without the sign-in's state. \
                 Connect again from your VPN client.",
                false,
            ),
        )));
    };
    let id = lock(&web.sso.by_state)
        .remove(&state)
        .ok_or_else(|| Box::new(unknown_link()))?;
    let p = lock(&web.sso.pending)
        .remove(&id)
        .ok_or_else(|| Box::new(unknown_link()))?;
    let Stage::AtIdp {
        state: expected,
        nonce,
        pkce_verifier,
        binding,
    } = &p.stage
    else {
        return Err(Box::new(unknown_link()));
    };
    let refuse = |p: &Pending, why: &str| {
        let _ = p
            .target
            .answers
            .send((p.target.conn, Err(AuthFailure::IdpRefused(why.into()))));
    };
    if !bool::from(expected.as_bytes().ct_eq(state.as_bytes())) {
        refuse(&p, "state mismatch");
        return Err(Box::new(unknown_link()));
    }
    let bound = cookie(headers, BINDING_COOKIE)
        .is_some_and(|c| bool::from(c.as_bytes().ct_eq(binding.as_bytes())));
    if !bound {
        warn!(endpoint = %p.target.endpoint_id, connection = %p.sign_in.connection_id,
            "sign-in answer in a browser that did not approve it: refused");
        refuse(&p, "answer in another browser");
        return Err(Box::new(html(
            StatusCode::FORBIDDEN,
            message(
                "Sign-in refused",
                "This sign-in was approved in another browser. Connect again from your VPN \
                 client and finish the sign-in in the browser that opens.",
                false,
            ),
        )));
    }
    let (nonce, pkce_verifier) = (nonce.clone(), pkce_verifier.clone());
    Ok(Returned {
        p,
        nonce,
        pkce_verifier,
    })
}

/// Answers the endpoint with the provider's verdict and shows the user the outcome.
fn complete(web: &WebState, p: Pending, result: Result<SignedInUser, AuthFailure>) -> Response {
    let answer = |r: Result<DirectoryUser, AuthFailure>| {
        let _ = p.target.answers.send((p.target.conn, r));
    };
    match result {
        Ok(user) => {
            info!(endpoint = %p.target.endpoint_id, connection = %p.sign_in.connection_id,
                user = %user.username, groups = ?user.groups, "web sign-in completed");
            web.sso.remember(&p, &user, p.sign_in.session_expires_unix);
            answer(Ok(DirectoryUser {
                username: user.username.clone(),
                dn: user.subject.clone(),
                groups: user.groups,
            }));
            html(
                StatusCode::OK,
                message(
                    "You are signed in",
                    &format!(
                        "Signed in as {}. Your VPN connects now; you can close this page.",
                        user.username
                    ),
                    true,
                ),
            )
        }
        Err(AuthFailure::IdpRefused(detail)) if detail.starts_with("provider: ") => {
            answer(Err(AuthFailure::IdpRefused(detail.clone())));
            html(
                StatusCode::FORBIDDEN,
                message(
                    "Sign-in refused",
                    &format!("The identity provider refused the sign-in ({detail})."),
                    false,
                ),
            )
        }
        Err(failure) => {
            warn!(endpoint = %p.target.endpoint_id, connection = %p.sign_in.connection_id,
                error = %failure, "web sign-in failed");
            answer(Err(failure));
            html(
                StatusCode::FORBIDDEN,
                message(
                    "Sign-in failed",
                    "The identity provider's answer could not be verified. Connect again from \
                     your VPN client; if it persists, tell your administrator.",
                    false,
                ),
            )
        }
    }
}

/// `GET /oidc/callback`: an OpenID provider sends the browser back. The sign-in is taken out
/// first (one use), then the browser binding, the code (PKCE) and the ID token are checked;
/// the endpoint gets the answer either way.
pub async fn oidc_callback(
    State(web): State<Arc<WebState>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let answer = match q.error {
        Some(err) => IdpAnswer::Code(Err(format!(
            "provider: {}{}",
            err.chars().take(100).collect::<String>(),
            q.error_description
                .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
                .unwrap_or_default()
        ))),
        None => IdpAnswer::Code(Ok(q.code.unwrap_or_default())),
    };
    answered(&web, q.state, &headers, answer).await
}

/// `POST /saml/acs`: a SAML provider posts its response. The sign-in (RelayState) is taken
/// out first, then the browser binding, then the response: signature over the element used,
/// issuer, destination, recipient, audience, validity window, InResponseTo, one use.
pub async fn saml_acs(
    State(web): State<Arc<WebState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<AcsForm>,
) -> Response {
    let answer = IdpAnswer::SamlResponse(form.saml_response.unwrap_or_default());
    answered(&web, form.relay_state, &headers, answer).await
}

/// A provider's answer: for a portal sign-in, or for a VPN connection's.
async fn answered(
    web: &WebState,
    state: Option<String>,
    headers: &HeaderMap,
    answer: IdpAnswer,
) -> Response {
    if let Some(s) = state.as_deref() {
        if !s.is_empty() && s.len() <= 512 {
            if let Some(page) = super::portal::idp_answered(web, s, headers, answer.clone()).await {
                return page;
            }
        }
    }
    let r = match take_returned(web, state, headers) {
        Ok(r) => r,
        Err(page) => return *page,
    };
    let result = verify_answer(&r.p.target.idp, answer, &r.nonce, &r.pkce_verifier).await;
    complete(web, r.p, result)
}

/// `GET /saml/metadata`: the service provider's metadata, for the identity provider's
/// administrator (our entity id is this URL).
pub async fn saml_metadata(State(web): State<Arc<WebState>>) -> Response {
    let base = &web.settings.public_url;
    let xml = crate::auth::saml::sp_metadata(
        &format!("{base}/saml/metadata"),
        &format!("{base}/saml/acs"),
    );
    (
        [(header::CONTENT_TYPE, "application/samlmetadata+xml")],
        xml,
    )
        .into_response()
}
