//! The [`Authenticator`]: one directory's sign-in checks as the daemon runs them — the LDAP
//! bind and group lookup, then the second factor — bounded in number and in time.
//!
//! The endpoint core asks ([`AuthRequest`]); the endpoint's driver runs
//! [`Authenticator::check`] on a task of its own and hands the answer back, so a slow
//! directory never holds up other clients' packets or handshakes.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::Semaphore;

use super::{
    ldap::LdapDirectory,
    radius::RadiusClient,
    totp::{TotpSecret, TotpVerifier},
    AuthFailure, AuthRequest, DirectoryUser,
};
use crate::model::{Directory, DirectorySecrets, MfaMode};

/// Checks running at once per directory; more wait (within their deadline) for a place.
pub const MAX_CONCURRENT_CHECKS: usize = 64;

/// Errors building an authenticator from a directory's settings.
#[derive(Debug, thiserror::Error)]
pub enum AuthenticatorError {
    #[error("directory {id}: {detail}")]
    Directory { id: String, detail: String },
}

enum SecondFactor {
    None,
    Totp {
        /// Enrolled secrets by user name, lowercase.
        secrets: RwLock<HashMap<String, TotpSecret>>,
        /// Shared by every endpoint of the directory, and kept across rebuilds: a code used
        /// once stays used.
        verifier: Arc<TotpVerifier>,
    },
    Radius(RadiusClient),
}

/// One directory's checks.
pub struct Authenticator {
    directory_id: String,
    ldap: LdapDirectory,
    mfa: SecondFactor,
    /// The deadline of one whole check, queueing included.
    deadline: Duration,
    slots: Semaphore,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("directory_id", &self.directory_id)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `dir`. `enrolled`: its users' TOTP secrets (with `mfa = totp`);
    /// `verifier`: the directory's replay memory.
    pub fn new(
        dir: &Directory,
        secrets: &DirectorySecrets,
        enrolled: Vec<(String, TotpSecret)>,
        verifier: Arc<TotpVerifier>,
    ) -> Result<Self, AuthenticatorError> {
        let err = |detail: String| AuthenticatorError::Directory {
            id: dir.directory_id.clone(),
            detail,
        };
        let ldap = LdapDirectory::new(dir, secrets).map_err(|e| err(e.to_string()))?;
        let mfa = match dir.mfa {
            MfaMode::None => SecondFactor::None,
            MfaMode::Totp => SecondFactor::Totp {
                secrets: RwLock::new(
                    enrolled
                        .into_iter()
                        .map(|(u, s)| (u.to_lowercase(), s))
                        .collect(),
                ),
                verifier,
            },
            MfaMode::Radius => SecondFactor::Radius(
                RadiusClient::new(dir, secrets).map_err(|e| err(e.to_string()))?,
            ),
        };
        // The directory's deadline, and the RADIUS server's tries after it.
        let radius = match dir.mfa {
            MfaMode::Radius => Duration::from_millis(
                u64::from(dir.radius_timeout_ms) * u64::from(dir.radius_retries.max(1)),
            ),
            _ => Duration::ZERO,
        };
        Ok(Authenticator {
            directory_id: dir.directory_id.clone(),
            ldap,
            mfa,
            deadline: Duration::from_millis(u64::from(dir.timeout_ms)) + radius,
            slots: Semaphore::new(MAX_CONCURRENT_CHECKS),
        })
    }

    pub fn directory_id(&self) -> &str {
        &self.directory_id
    }

    /// True when sign-ins need a second factor's code (TOTP or RADIUS).
    pub fn asks_code(&self) -> bool {
        !matches!(self.mfa, SecondFactor::None)
    }

    /// With TOTP as the second factor: whether `username` has an enrolment (`None`: the
    /// directory asks no TOTP code).
    pub fn totp_enrolled(&self, username: &str) -> Option<bool> {
        match &self.mfa {
            SecondFactor::Totp { secrets, .. } => Some(
                secrets
                    .read()
                    .map(|s| s.contains_key(&username.to_lowercase()))
                    .unwrap_or(false),
            ),
            _ => None,
        }
    }

    /// Adds a user's new TOTP enrolment to this authenticator's table (the daemon rebuilds it
    /// from the store too; this makes the enrolment count at once).
    pub fn add_totp_enrolment(&self, username: &str, secret: TotpSecret) {
        if let SecondFactor::Totp { secrets, .. } = &self.mfa {
            if let Ok(mut s) = secrets.write() {
                s.insert(username.to_lowercase(), secret);
            }
        }
    }

    /// Runs one check under the deadline.
    pub async fn check(&self, request: &AuthRequest) -> Result<DirectoryUser, AuthFailure> {
        let work = async {
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|_| AuthFailure::DirectoryUnreachable("shutting down".into()))?;
            match request {
                AuthRequest::Login {
                    username,
                    password,
                    code,
                } => {
                    let user = self.ldap.authenticate(username, password.expose()).await?;
                    self.second_factor(&user, code.as_deref()).await?;
                    Ok(user)
                }
                AuthRequest::Lookup { username } => self.ldap.lookup(username).await,
                // Single sign-on is the web listener's (`crate::web`), never a directory's.
                AuthRequest::WebSignIn(_) | AuthRequest::SsoSession { .. } => Err(
                    AuthFailure::DirectoryError("not a directory check (single sign-on)".into()),
                ),
            }
        };
        match tokio::time::timeout(self.deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(AuthFailure::DirectoryUnreachable(format!(
                "no answer within {} ms",
                self.deadline.as_millis()
            ))),
        }
    }

    async fn second_factor(
        &self,
        user: &DirectoryUser,
        code: Option<&str>,
    ) -> Result<(), AuthFailure> {
        match &self.mfa {
            SecondFactor::None => Ok(()),
            SecondFactor::Totp { secrets, verifier } => {
                let code = code.ok_or(AuthFailure::MfaMissing)?;
                let secret = secrets
                    .read()
                    .map_err(|_| AuthFailure::MfaUnavailable("enrolment table poisoned".into()))?
                    .get(&user.username.to_lowercase())
                    .cloned()
                    .ok_or(AuthFailure::MfaNotEnrolled)?;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let key = format!("{}/{}", self.directory_id, user.username.to_lowercase());
                verifier.verify(&key, &secret, code, now)
            }
            SecondFactor::Radius(client) => {
                let code = code.ok_or(AuthFailure::MfaMissing)?;
                client.verify(&user.username, code).await
            }
        }
    }
}
