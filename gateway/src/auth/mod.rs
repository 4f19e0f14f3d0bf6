//! Signing people in beyond the certificate: directories (LDAP, Active Directory), second
//! factors (TOTP, RADIUS), the auth-token that spares them a second prompt, and the throttle
//! that slows guessing.
//!
//! The endpoint core (`crate::endpoint`) decides *when* a user is checked and what follows
//! (admit, refuse, narrow a running session's groups, end it); the modules here do the checks.
//! Network lookups are `async` and run off the endpoint's event loop, each under a deadline;
//! everything a directory, RADIUS server or client says is checked before it counts.
//!
//! Every outcome other than success is an [`AuthFailure`]: its [`AuthFailure::reason`] goes to
//! the connection log, its [`AuthFailure::client_message`] to the client's `AUTH_FAILED`.

pub mod challenge;
pub mod issuer;
pub mod ldap;
pub mod oidc;
pub mod radius;
pub mod saml;
pub mod service;
pub mod throttle;
pub mod token;
pub mod totp;

use crate::protocol::keymethod::Password;

/// A check the endpoint asks of the directory (and MFA service); the answer comes back
/// through `Endpoint::handle_auth_answer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRequest {
    /// A sign-in: the password (bind) and, with MFA, the code.
    Login {
        username: String,
        password: Password,
        code: Option<String>,
    },
    /// The account and groups without a password: a re-check of a connected user, a
    /// renegotiation, or a reconnect with a valid auth-token.
    Lookup { username: String },
    /// A web sign-in (single sign-on): the client was told to open
    /// `{public_url}/s/{id}`; the answer comes when the user has signed in at the identity
    /// provider (or the sign-in is abandoned).
    WebSignIn(Box<WebSignIn>),
    /// A single sign-on session's user and groups now (a re-check, a renegotiation, a
    /// reconnect with its auth-token): refreshed at the identity provider.
    SsoSession { username: String, session: String },
}

impl AuthRequest {
    /// The user the request is about (empty for a web sign-in: the IdP will say).
    pub fn username(&self) -> &str {
        match self {
            AuthRequest::Login { username, .. }
            | AuthRequest::Lookup { username }
            | AuthRequest::SsoSession { username, .. } => username,
            AuthRequest::WebSignIn(_) => "",
        }
    }
}

/// A web sign-in waiting for its user: what the approval page shows, so that a forwarded
/// link cannot silently sign someone else's connection in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSignIn {
    /// The secret in the short URL (`/s/{id}`): 128 random bits, base64url.
    pub id: String,
    /// The auth-token session the sign-in starts (its refresh token is kept under it).
    pub session: String,
    /// The connection's id (connection log, `connection list`).
    pub connection_id: String,
    /// Where the client connects from.
    pub client_addr: std::net::SocketAddr,
    /// `IV_PLAT` and `IV_VER`, as the client announced them.
    pub platform: Option<String>,
    pub client_version: Option<String>,
    /// The client certificate's common name (certificate + federated endpoints).
    pub common_name: Option<String>,
    /// When the sign-in is abandoned (Unix seconds).
    pub expires_unix: u64,
    /// When the session it starts ends at the latest (its auth-token's expiry).
    pub session_expires_unix: u64,
}

/// Who the directory says a user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    /// The user name as the directory stores it (`uid`, `sAMAccountName`): the session's
    /// user name in the connection log and `connection list`.
    pub username: String,
    /// The user's entry.
    pub dn: String,
    /// Every name an authorization rule may use for each of the user's groups, direct and
    /// nested: the group's name (CN), its DN, and on Active Directory its SID (`S-1-5-…`).
    /// Sorted, without duplicates.
    pub groups: Vec<String>,
}

/// Why a sign-in (or a check of a connected user) did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("the client sent no user name and password (the profile needs auth-user-pass)")]
    NoCredentials,
    #[error("empty password refused (it would be an unauthenticated bind)")]
    EmptyPassword,
    #[error("wrong password")]
    BadPassword,
    #[error("no such user in the directory")]
    UnknownUser,
    #[error("the account is disabled")]
    AccountDisabled,
    #[error("the account is locked out")]
    AccountLocked,
    #[error("the account has expired")]
    AccountExpired,
    #[error("the password has expired")]
    PasswordExpired,
    #[error("the user is in no group")]
    NotInAnyGroup,
    #[error("directory unreachable: {0}")]
    DirectoryUnreachable(String),
    #[error("the directory refused the lookup: {0}")]
    DirectoryError(String),
    #[error("no MFA code given")]
    MfaMissing,
    #[error("wrong MFA code")]
    MfaBadCode,
    #[error("MFA code already used")]
    MfaReplayed,
    #[error("the user has no MFA enrolment")]
    MfaNotEnrolled,
    #[error("MFA server unavailable: {0}")]
    MfaUnavailable(String),
    #[error("too many failed attempts: try again later")]
    Throttled,
    #[error("the auth-token is invalid or expired")]
    BadToken,
    #[error("the client cannot sign in through a web browser (it announced no IV_SSO=webauth)")]
    WebSignInUnsupported,
    #[error("the web sign-in was not completed in time")]
    WebSignInTimedOut,
    #[error("the identity provider refused the sign-in: {0}")]
    IdpRefused(String),
    #[error("identity provider unreachable: {0}")]
    IdpUnreachable(String),
    #[error("the single sign-on session is unknown (the gateway restarted or it ended)")]
    SsoSessionUnknown,
}

impl AuthFailure {
    /// The connection log's reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "no-credentials",
            AuthFailure::EmptyPassword => "empty-password",
            AuthFailure::BadPassword => "bad-password",
            AuthFailure::UnknownUser => "unknown-user",
            AuthFailure::AccountDisabled => "account-disabled",
            AuthFailure::AccountLocked => "account-locked",
            AuthFailure::AccountExpired => "account-expired",
            AuthFailure::PasswordExpired => "password-expired",
            AuthFailure::NotInAnyGroup => "not-in-any-group",
            AuthFailure::DirectoryUnreachable(_) => "directory-unreachable",
            AuthFailure::DirectoryError(_) => "directory-error",
            AuthFailure::MfaMissing => "mfa-code-missing",
            AuthFailure::MfaBadCode => "mfa-code-wrong",
            AuthFailure::MfaReplayed => "mfa-code-replayed",
            AuthFailure::MfaNotEnrolled => "mfa-not-enrolled",
            AuthFailure::MfaUnavailable(_) => "mfa-unavailable",
            AuthFailure::Throttled => "throttled",
            AuthFailure::BadToken => "auth-token-invalid",
            AuthFailure::WebSignInUnsupported => "web-sign-in-unsupported",
            AuthFailure::WebSignInTimedOut => "web-sign-in-timeout",
            AuthFailure::IdpRefused(_) => "idp-refused",
            AuthFailure::IdpUnreachable(_) => "idp-unreachable",
            AuthFailure::SsoSessionUnknown => "sso-session-unknown",
        }
    }

    /// What the user is told (`AUTH_FAILED,<message>`). A wrong password and an unknown user
    /// read the same, so the message does not tell a guesser which names exist.
    pub fn client_message(&self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "this server needs a user name and password",
            AuthFailure::EmptyPassword | AuthFailure::BadPassword | AuthFailure::UnknownUser => {
                "wrong user name or password"
            }
            AuthFailure::AccountDisabled => "your account is disabled: ask your administrator",
            AuthFailure::AccountLocked => "your account is locked: ask your administrator",
            AuthFailure::AccountExpired => "your account has expired: ask your administrator",
            AuthFailure::PasswordExpired => "your password has expired: change it, then retry",
            AuthFailure::NotInAnyGroup => "your account has no VPN access: ask your administrator",
            AuthFailure::DirectoryUnreachable(_) | AuthFailure::DirectoryError(_) => {
                "the directory is not answering: try again later"
            }
            AuthFailure::MfaMissing => "enter your MFA code",
            AuthFailure::MfaBadCode | AuthFailure::MfaReplayed => {
                "wrong or already used MFA code: wait for the next one"
            }
            AuthFailure::MfaNotEnrolled => {
                "no MFA device is enrolled for you: ask your administrator"
            }
            AuthFailure::MfaUnavailable(_) => "the MFA service is not answering: try again later",
            AuthFailure::Throttled => "too many failed attempts: wait a minute, then retry",
            AuthFailure::BadToken => "your session token expired: sign in again",
            AuthFailure::WebSignInUnsupported => {
                "this server signs you in through a web browser: add 'setenv IV_SSO webauth' to \
                 your profile (or download it again from the portal), or use OpenVPN Connect, \
                 openvpn-gui or Tunnelblick"
            }
            AuthFailure::WebSignInTimedOut => {
                "the web sign-in was not finished in time: connect again and sign in in the browser"
            }
            AuthFailure::IdpRefused(_) => {
                "your identity provider refused the sign-in: ask your administrator"
            }
            AuthFailure::IdpUnreachable(_) => {
                "the identity provider is not answering: try again later"
            }
            AuthFailure::SsoSessionUnknown => "your session ended: sign in again",
        }
    }

    /// True when the failure says something about the credentials (counted by the throttle);
    /// false when the directory or MFA service could not answer.
    pub fn is_guess(&self) -> bool {
        matches!(
            self,
            AuthFailure::EmptyPassword
                | AuthFailure::BadPassword
                | AuthFailure::UnknownUser
                | AuthFailure::MfaBadCode
                | AuthFailure::MfaReplayed
                | AuthFailure::BadToken
        )
    }
}

impl AuthFailure {
    /// The connection log's failure reason: the code, and the detail a directory or MFA
    /// server gave (never a secret).
    pub fn failure_reason(&self) -> crate::connlog::FailureReason {
        use crate::connlog::FailureReason;
        match self {
            AuthFailure::DirectoryUnreachable(d)
            | AuthFailure::DirectoryError(d)
            | AuthFailure::MfaUnavailable(d)
            | AuthFailure::IdpRefused(d)
            | AuthFailure::IdpUnreachable(d) => {
                FailureReason::with_detail(self.reason(), d.clone())
            }
            _ => FailureReason::new(self.reason()),
        }
    }

    /// True when a connected user's re-check says the account may no longer be used: the
    /// session ends. Other failures (the directory not answering) keep the current access.
    pub fn ends_session(&self) -> bool {
        matches!(
            self,
            AuthFailure::UnknownUser
                | AuthFailure::AccountDisabled
                | AuthFailure::AccountLocked
                | AuthFailure::AccountExpired
                | AuthFailure::NotInAnyGroup
                | AuthFailure::IdpRefused(_)
                | AuthFailure::SsoSessionUnknown
        )
    }
}

#[cfg(test)]
#[path = "oidc_tests.rs"]
pub(crate) mod oidc_tests;
