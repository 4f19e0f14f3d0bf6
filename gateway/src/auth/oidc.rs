//! The OpenID Connect relying party of single sign-on: discovery, the authorization request
//! (code flow with PKCE, state and nonce), the code exchange, ID-token verification, and the
//! refresh of a running session. All the cryptography and claim checks are the `openidconnect`
//! crate's: signature against the provider's JWKS (`alg: none` and HMAC with the client
//! secret refused unless the provider announces it), issuer, audience (and `azp`), expiry,
//! issue time and nonce. This module adds what is ours: which claims name the user and the
//! groups, bounds on them, the provider's keys fetched again when a token names one we do not
//! know (key rotation without a restart), and what a refusal means for the session.
//!
//! Everything the provider says is hostile until checked: answers are read up to
//! [`MAX_ANSWER`], claims are bounded, and HTTP goes through [`crate::http_client::fetch`]
//! (no redirects; plain HTTP only to loopback).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreTokenResponse,
};
use openidconnect::JwsSigningAlgorithm;
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse,
};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::AuthFailure;

/// The most bytes read of any answer of the provider (discovery, JWKS, token).
pub const MAX_ANSWER: usize = 256 * 1024;
/// At most this many groups in a token; more is refused (a claim that large is an attack or a
/// misconfiguration, and the data plane keeps a bounded list per session).
pub const MAX_GROUPS: usize = 256;
/// The longest user name or group name taken from a token.
pub const MAX_NAME: usize = 256;
/// The provider's metadata and keys are fetched again at most this often when a token names
/// an unknown key (so forged tokens cannot make us hammer the provider).
const REDISCOVER_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// How long a caller waits for the provider's metadata and keys, its turn behind another
/// caller's fetch included. Sign-ins come from unauthenticated users: a provider that stops
/// answering must cost each of them seconds, not the HTTP client's two minutes (found reviewing
/// issue 10: every `/sso` request queued behind one hanging discovery).
pub const DISCOVERY_DEADLINE: Duration = Duration::from_secs(10);

/// A relying party's settings (from the identity provider resource and the web listener).
#[derive(Clone)]
pub struct OidcClientSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// The claim that lists the user's groups (`groups`).
    pub groups_claim: String,
    /// The claim that names the user (`email`; `sub` when the token lacks it).
    pub username_claim: String,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The web listener's callback (`{public_url}/oidc/callback`).
    pub redirect_url: String,
}

impl std::fmt::Debug for OidcClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClientSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("groups_claim", &self.groups_claim)
            .field("username_claim", &self.username_claim)
            .field("scopes", &self.scopes)
            .field("redirect_url", &self.redirect_url)
            .finish()
    }
}

/// Why an OIDC step failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached or answered something unreadable.
    #[error("identity provider unreachable: {0}")]
    Unreachable(String),
    /// The provider refused (an error answer, `invalid_grant` on a refresh: the user was
    /// disabled or the session revoked).
    #[error("the identity provider refused: {0}")]
    Refused(String),
    /// A token or claim failed verification (signature, issuer, audience, expiry, nonce, …).
    #[error("the identity provider's answer failed verification: {0}")]
    Invalid(String),
    /// The settings are unusable (a bad URL).
    #[error("identity provider settings: {0}")]
    Settings(String),
}

impl From<OidcError> for AuthFailure {
    fn from(e: OidcError) -> Self {
        match e {
            OidcError::Unreachable(d) => AuthFailure::IdpUnreachable(d),
            OidcError::Refused(d) | OidcError::Invalid(d) | OidcError::Settings(d) => {
                AuthFailure::IdpRefused(d)
            }
        }
    }
}

/// A sign-in sent to the provider: the URL to send the browser to, and the secrets the
/// callback is checked with (kept server-side, never shown to the browser except `state`).
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// Who the provider says the user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcIdentity {
    /// The user name (the configured claim, else `sub`).
    pub username: String,
    /// The provider's subject identifier (stable; a refresh must name the same).
    pub subject: String,
    /// The groups claim, sorted and without duplicates.
    pub groups: Vec<String>,
    /// For refreshes at the re-check interval, if the provider issued one.
    pub refresh_token: Option<String>,
}

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

struct Discovered {
    client: Client,
    /// The signature algorithms ID tokens may use: what the provider announces, without
    /// `none` and without the HMAC ones (a client secret is no key to trust tokens by).
    algs: Vec<CoreJwsSigningAlgorithm>,
    /// When a token naming an unknown key last sent us to the provider.
    refetched_at: Option<Instant>,
}

/// One identity provider's relying party.
pub struct OidcRelyingParty {
    settings: OidcClientSettings,
    tls: Arc<rustls::ClientConfig>,
    discovered: Mutex<Option<Discovered>>,
    /// [`DISCOVERY_DEADLINE`], shorter in tests.
    discovery_deadline: Duration,
}

impl std::fmt::Debug for OidcRelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcRelyingParty")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What the HTTP client `openidconnect` calls returns.
type HttpFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<http::Response<Vec<u8>>, HttpError>> + Send>,
>;

/// The HTTP client `openidconnect` calls: ours, bounded, no redirects.
fn http_client(tls: Arc<rustls::ClientConfig>) -> impl Fn(http::Request<Vec<u8>>) -> HttpFuture {
    move |request| {
        let tls = Arc::clone(&tls);
        Box::pin(async move {
            crate::http_client::fetch(&tls, request, MAX_ANSWER)
                .await
                .map_err(|e| HttpError(e.to_string()))
        })
    }
}

/// An HTTP failure, as `openidconnect` wants it (an `Error`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

impl OidcRelyingParty {
    pub fn new(settings: OidcClientSettings, tls: Arc<rustls::ClientConfig>) -> Self {
        OidcRelyingParty {
            settings,
            tls,
            discovered: Mutex::new(None),
            discovery_deadline: DISCOVERY_DEADLINE,
        }
    }

    /// The same with another discovery deadline (tests).
    pub fn with_discovery_deadline(mut self, deadline: Duration) -> Self {
        self.discovery_deadline = deadline;
        self
    }

    pub fn settings(&self) -> &OidcClientSettings {
        &self.settings
    }

    /// The client built from the provider's metadata and keys: fetched on first use, and again
    /// when `stale` (a token named a key we do not have), at most every
    /// [`REDISCOVER_AT_MOST_EVERY`].
    async fn client(
        &self,
        stale: bool,
    ) -> Result<(Client, Vec<CoreJwsSigningAlgorithm>), OidcError> {
        // The wait for the lock is inside the deadline too: callers queued behind a hanging
        // fetch give up with it (and a fetch given up releases the lock).
        match tokio::time::timeout(self.discovery_deadline, self.fetch_client(stale)).await {
            Ok(r) => r,
            Err(_) => Err(OidcError::Unreachable(format!(
                "discovery: the identity provider did not answer within {} s",
                self.discovery_deadline.as_secs_f32()
            ))),
        }
    }

    async fn fetch_client(
        &self,
        stale: bool,
    ) -> Result<(Client, Vec<CoreJwsSigningAlgorithm>), OidcError> {
        let mut d = self.discovered.lock().await;
        if let Some(found) = d.as_ref() {
            let recently = found
                .refetched_at
                .is_some_and(|t| t.elapsed() < REDISCOVER_AT_MOST_EVERY);
            if !stale || recently {
                return Ok((found.client.clone(), found.algs.clone()));
            }
        }
        let issuer = IssuerUrl::new(self.settings.issuer.clone())
            .map_err(|e| OidcError::Settings(format!("issuer URL: {e}")))?;
        let http = http_client(Arc::clone(&self.tls));
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| OidcError::Unreachable(format!("discovery: {}", chain(&e))))?;
        let algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|a| !a.uses_shared_secret() && **a != CoreJwsSigningAlgorithm::None)
            .cloned()
            .collect();
        if algs.is_empty() {
            return Err(OidcError::Settings(
                "the provider announces no asymmetric ID-token signature algorithm (RS256, ES256, …)"
                    .into(),
            ));
        }
        let redirect = RedirectUrl::new(self.settings.redirect_url.clone())
            .map_err(|e| OidcError::Settings(format!("redirect URL: {e}")))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            self.settings.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        if d.is_some() {
            info!(issuer = %self.settings.issuer, "identity provider keys fetched again");
        }
        *d = Some(Discovered {
            client: client.clone(),
            algs: algs.clone(),
            refetched_at: stale.then(Instant::now),
        });
        Ok((client, algs))
    }

    /// Starts a sign-in: the provider's authorization URL with a fresh state, nonce and PKCE
    /// challenge (S256).
    pub async fn authorize(&self) -> Result<Authorization, OidcError> {
        let (client, _) = self.client(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &self.settings.scopes {
            if scope != "openid" {
                request = request.add_scope(Scope::new(scope.clone()));
            }
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// The callback's code: exchanged with the PKCE verifier, and the ID token verified
    /// (signature, issuer, audience, expiry, nonce). The caller has matched `state` already.
    pub async fn finish(
        &self,
        code: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> Result<OidcIdentity, OidcError> {
        if code.is_empty() || code.len() > 4096 {
            return Err(OidcError::Invalid(
                "authorization code missing or too long".into(),
            ));
        }
        let (client, algs) = self.client(false).await?;
        let http = http_client(Arc::clone(&self.tls));
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Settings(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&http)
            .await
            .map_err(token_error)?;
        let nonce = Nonce::new(nonce.to_string());
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::Invalid("the token answer has no id_token".into()))?;
        let subject = self.verify(&client, &algs, id_token, &nonce).await?;
        self.identity(&response, id_token, subject)
    }

    /// A running session's refresh: a new token from the refresh token; the provider refusing
    /// (`invalid_grant`: user disabled, session revoked) is [`OidcError::Refused`]. The new ID
    /// token, if any, must name the same subject.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        subject: &str,
    ) -> Result<OidcIdentity, OidcError> {
        let (client, algs) = self.client(false).await?;
        let http = http_client(Arc::clone(&self.tls));
        let token = RefreshToken::new(refresh_token.to_string());
        let response = client
            .exchange_refresh_token(&token)
            .map_err(|e| OidcError::Settings(e.to_string()))?
            .request_async(&http)
            .await
            .map_err(token_error)?;
        let id_token = response.id_token().ok_or_else(|| {
            OidcError::Invalid(
                "the refresh answer has no id_token (ask for the openid scope)".into(),
            )
        })?;
        // A refreshed ID token carries no nonce (OpenID Connect Core §12.2).
        let no_nonce = |_: Option<&Nonce>| Ok::<(), String>(());
        let found = self.verify(&client, &algs, id_token, no_nonce).await?;
        if found != subject {
            return Err(OidcError::Invalid(format!(
                "the refreshed token names another subject ({found:?}, not {subject:?})"
            )));
        }
        let mut identity = self.identity(&response, id_token, found)?;
        if identity.refresh_token.is_none() {
            identity.refresh_token = Some(refresh_token.to_string());
        }
        Ok(identity)
    }

    /// Verifies an ID token; a key we do not know sends us to the provider once more for its
    /// current keys (rotation), then verifies again. Returns the subject.
    async fn verify<N: openidconnect::NonceVerifier + Copy>(
        &self,
        client: &Client,
        algs: &[CoreJwsSigningAlgorithm],
        id_token: &CoreIdToken,
        nonce: N,
    ) -> Result<String, OidcError> {
        let verifier = client.id_token_verifier().set_allowed_algs(algs.to_vec());
        match id_token.claims(&verifier, nonce) {
            Ok(c) => Ok(c.subject().to_string()),
            Err(e) if is_key_problem(&e) => {
                warn!(issuer = %self.settings.issuer, error = %e,
                    "ID token signed with a key we do not know: fetching the provider's keys again");
                let (fresh, algs) = self.client(true).await?;
                let verifier = fresh.id_token_verifier().set_allowed_algs(algs);
                let subject = match id_token.claims(&verifier, nonce) {
                    Ok(c) => c.subject().to_string(),
                    Err(e) => return Err(OidcError::Invalid(chain(&e))),
                };
                Ok(subject)
            }
            Err(e) => Err(OidcError::Invalid(chain(&e))),
        }
    }

    /// The user name and groups from a verified ID token's payload.
    fn identity(
        &self,
        response: &CoreTokenResponse,
        id_token: &CoreIdToken,
        subject: String,
    ) -> Result<OidcIdentity, OidcError> {
        let claims = payload(id_token)?;
        // An address the IdP says it has not verified is a name anyone could have typed in:
        // it must not become the user name (the connection log's identity, terminate by user,
        // the portal's certificates). IdPs that do not send `email_verified` vouch for their
        // addresses in other ways; an explicit `false` is refused.
        if self.settings.username_claim == "email" {
            let unverified = matches!(
                claims.get("email_verified"),
                Some(serde_json::Value::Bool(false))
            ) || matches!(
                claims.get("email_verified"),
                Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false")
            );
            if unverified {
                return Err(OidcError::Invalid(
                    "the IdP says the user's email address is not verified \
                     (email_verified: false): it cannot name the user; verify the address at the \
                     IdP, or name users by another claim (username-claim)"
                        .into(),
                ));
            }
        }
        let username = match claims.get(&self.settings.username_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => subject.clone(),
        };
        if username.len() > MAX_NAME || username.chars().any(char::is_control) {
            return Err(OidcError::Invalid(
                "the user name claim is too long or has control characters".into(),
            ));
        }
        let groups = groups_of(&claims, &self.settings.groups_claim)?;
        Ok(OidcIdentity {
            username,
            subject,
            groups,
            refresh_token: response.refresh_token().map(|t| t.secret().clone()),
        })
    }
}

/// The claims of an ID token that `openidconnect` has verified, as JSON (to read the claims
/// the administrator names, which the crate's typed claims do not carry).
fn payload(
    id_token: &CoreIdToken,
) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
    let text = id_token.to_string();
    let part = text
        .split('.')
        .nth(1)
        .ok_or_else(|| OidcError::Invalid("the ID token is not a JWS".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| OidcError::Invalid(format!("ID token payload: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| OidcError::Invalid(format!("ID token payload: {e}")))
}

/// The groups claim: an array of strings (or one string), bounded; absent means none.
pub fn groups_of(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Vec<String>, OidcError> {
    let mut groups: Vec<String> = match claims.get(name) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => {
            if items.len() > MAX_GROUPS {
                return Err(OidcError::Invalid(format!(
                    "the {name:?} claim lists {} groups (at most {MAX_GROUPS})",
                    items.len()
                )));
            }
            items
                .iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    _ => Err(OidcError::Invalid(format!(
                        "the {name:?} claim holds a non-string"
                    ))),
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(OidcError::Invalid(format!(
                "the {name:?} claim is neither a string nor a list"
            )))
        }
    };
    if groups
        .iter()
        .any(|g| g.is_empty() || g.len() > MAX_NAME || g.chars().any(char::is_control))
    {
        return Err(OidcError::Invalid(format!(
            "the {name:?} claim holds an empty, overlong or control-character name"
        )));
    }
    groups.sort();
    groups.dedup();
    Ok(groups)
}

/// A signature check that failed because no key of ours matched the token's.
fn is_key_problem(e: &openidconnect::ClaimsVerificationError) -> bool {
    use openidconnect::{ClaimsVerificationError as C, SignatureVerificationError as S};
    matches!(
        e,
        C::SignatureVerification(S::NoMatchingKey | S::AmbiguousKeyId(_))
    )
}

/// A token endpoint error: the provider's refusal, or a transport problem.
fn token_error<E: std::error::Error + 'static>(
    e: RequestTokenError<
        E,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> OidcError {
    match e {
        RequestTokenError::ServerResponse(r) => OidcError::Refused(r.to_string()),
        RequestTokenError::Request(e) => OidcError::Unreachable(chain(&e)),
        RequestTokenError::Parse(e, _) => OidcError::Invalid(format!("token answer: {e}")),
        RequestTokenError::Other(s) => OidcError::Invalid(s),
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
