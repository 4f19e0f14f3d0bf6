//! The directory client: signs users in against an LDAP directory (OpenLDAP, Active
//! Directory) and reads their account state and groups.
//!
//! One sign-in ([`LdapDirectory::authenticate`]):
//!
//! 1. refuse an empty password (it would be an unauthenticated bind, which succeeds) and a user
//!    name that is too long or holds control characters, before any network I/O;
//! 2. connect to the first URL that answers (`ldaps://`, or `ldap://` with StartTLS; plain
//!    `ldap://` only with `allow_plaintext`), verifying the server's certificate against the
//!    directory's CA bundle or the system's roots;
//! 3. bind as the service account (or stay anonymous) and search for the user with the escaped
//!    name (RFC 4515); exactly one entry must match;
//! 4. on Active Directory, refuse disabled, expired and locked accounts from
//!    `userAccountControl`, `msDS-User-Account-Control-Computed` and `accountExpires`;
//! 5. bind as the entry found with the user's password (AD's `data 52e/533/532/701/775`
//!    diagnostics tell why a bind failed);
//! 6. bind as the service account again and read the groups (`memberOf`, AD's in-chain rule
//!    with SIDs, or a bounded recursive `groupOfNames` search).
//!
//! [`LdapDirectory::lookup`] is the same without step 5, for the periodic checks of connected
//! users. Connection failures and timeouts move on to the next URL (domain controller
//! failover) as long as the user's password has not been sent; the whole operation has the
//! directory's deadline (`timeout_ms`). Everything the server sends is bounded (entries,
//! values, sizes) and parsed without panicking; each attempt runs in a task of its own, so a
//! library panic on a malformed answer becomes a [`AuthFailure::DirectoryError`].

use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use cvpn_core::model::directory::{Directory, DirectoryPreset, DirectorySecrets, GroupMode};
use ldap3::{
    asn1::{StructureTag, PL},
    ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchOptions,
};
use rustls::{pki_types::pem::PemObject, pki_types::CertificateDer, ClientConfig, RootCertStore};
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info, warn};

use super::{AuthFailure, DirectoryUser};

/// Longest user name accepted (bytes); longer ones are unknown users without a query.
pub const MAX_USERNAME_LEN: usize = 256;
/// Attribute values longer than this (bytes) are skipped.
pub const MAX_VALUE_LEN: usize = 1024;
/// At most this many groups are read for one user.
pub const MAX_GROUPS: usize = 1000;
/// How deep nested `groupOfNames` groups are followed.
pub const MAX_GROUP_DEPTH: usize = 16;
/// Member DNs per `groupOfNames` query (one `(|(member=…)…)` filter).
const MEMBER_BATCH: usize = 50;
/// Values read from one attribute of one entry.
const MAX_VALUES_PER_ATTR: usize = MAX_GROUPS;

/// AD `userAccountControl` / `msDS-User-Account-Control-Computed` bits.
const UF_ACCOUNTDISABLE: u64 = 0x2;
const UF_LOCKOUT: u64 = 0x10;
/// AD FILETIME: 100 ns intervals since 1601-01-01; seconds between 1601 and 1970.
const FILETIME_UNIX_OFFSET_SECS: u64 = 11_644_473_600;

/// Why a directory's settings cannot be used. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum LdapConfigError {
    #[error("the directory has no URL: give at least one ldaps:// or ldap:// URL")]
    NoUrl,
    #[error("URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the CA bundle is not usable: {0} (give the CA certificates as PEM, -----BEGIN CERTIFICATE-----)")]
    BadCaPem(String),
    #[error(
        "no CA bundle is set and the system has no trusted roots: give the CA that signs the \
         directory's certificate (ca-pem)"
    )]
    NoSystemRoots,
    #[error("the user filter {0:?} {1}: write a filter such as (&(objectClass=inetOrgPerson)(uid={{username}}))")]
    BadUserFilter(String, &'static str),
    #[error("the base DN is empty: give the DN under which users and groups are searched")]
    EmptyBaseDn,
    #[error(
        "a service account DN is set but no bind password: an empty password is an \
         unauthenticated bind; set the bind password, or clear bind-dn for anonymous search"
    )]
    NoBindPassword,
    #[error("the timeout is 0 ms: give a deadline such as 5000")]
    ZeroTimeout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Security {
    /// `ldaps://`.
    Tls,
    /// `ldap://` upgraded with StartTLS before anything else is sent.
    StartTls,
    /// `ldap://` in clear (`allow_plaintext`).
    Plain,
}

#[derive(Clone, Debug)]
struct Target {
    url: String,
    security: Security,
}

struct Inner {
    targets: Vec<Target>,
    base_dn: String,
    bind_dn: Option<String>,
    bind_password: Option<String>,
    preset: DirectoryPreset,
    user_filter: String,
    groups: GroupMode,
    realm: Option<String>,
    timeout: Duration,
    tls: Option<Arc<ClientConfig>>,
}

/// A directory to sign users in against. Cheap to clone (shared settings); `Send + Sync`.
#[derive(Clone)]
pub struct LdapDirectory {
    inner: Arc<Inner>,
}

impl fmt::Debug for LdapDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("LdapDirectory")
            .field(
                "urls",
                &i.targets.iter().map(|t| &t.url).collect::<Vec<_>>(),
            )
            .field("base_dn", &i.base_dn)
            .field("bind_dn", &i.bind_dn)
            .field(
                "bind_password",
                &i.bind_password.as_ref().map(|_| "<redacted>"),
            )
            .field("preset", &i.preset)
            .field("user_filter", &i.user_filter)
            .field("groups", &i.groups)
            .field("realm", &i.realm)
            .field("timeout", &i.timeout)
            .finish()
    }
}

/// What one operation does after finding the user.
#[derive(Clone)]
struct Op {
    /// The name as given (validated).
    username: String,
    /// `Some`: bind as the user with it (authenticate); `None`: lookup.
    password: Option<String>,
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Op")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How an attempt on one server ended, when it did not succeed.
#[derive(Debug)]
enum Step {
    /// The server could not be used (connection, TLS, timeout before the user's password was
    /// sent): try the next URL. The message names the URL.
    Failover(String),
    /// The answer stands (wrong password, unknown user, the directory refused…).
    Final(AuthFailure),
}

static SYSTEM_ROOTS: LazyLock<RootCertStore> = LazyLock::new(|| {
    let mut store = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!(error = %e, "reading the system's trusted roots");
    }
    for cert in found.certs {
        let _ = store.add(cert);
    }
    store
});

fn tls_config(ca_pem: Option<&str>) -> Result<Arc<ClientConfig>, LdapConfigError> {
    let roots = match ca_pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| LdapConfigError::BadCaPem(e.to_string()))?;
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| LdapConfigError::BadCaPem(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(LdapConfigError::BadCaPem("it holds no certificate".into()));
            }
            roots
        }
        None => {
            if SYSTEM_ROOTS.is_empty() {
                return Err(LdapConfigError::NoSystemRoots);
            }
            SYSTEM_ROOTS.clone()
        }
    };
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| LdapConfigError::BadCaPem(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

fn parse_target(raw: &str, allow_plaintext: bool) -> Result<Target, LdapConfigError> {
    let bad = |reason: &str| LdapConfigError::BadUrl {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(raw).map_err(|e| bad(&format!("{e} (write ldaps://HOST[:PORT])")))?;
    let security = match url.scheme() {
        "ldaps" => Security::Tls,
        "ldap" if allow_plaintext => Security::Plain,
        "ldap" => Security::StartTls,
        other => {
            return Err(bad(&format!(
                "scheme {other}: is not supported: use ldaps:// or ldap:// (StartTLS)"
            )))
        }
    };
    let host = match url.host() {
        Some(h) => h,
        None => return Err(bad("no host: write ldaps://HOST[:PORT]")),
    };
    if host.to_string().is_empty() {
        return Err(bad("no host: write ldaps://HOST[:PORT]"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials in the URL: give the service account as bind-dn and its password",
        ));
    }
    if !(url.path().is_empty() || url.path() == "/")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad(
            "a DN, filter or extension in the URL: give only ldaps://HOST[:PORT]; the base DN \
             and the filter are settings of their own",
        ));
    }
    if matches!(host, url::Host::Ipv6(_)) && security != Security::Plain {
        return Err(bad(
            "IPv6 address literals cannot be verified against the certificate by the LDAP \
             library: use a host name (or an IPv4 address)",
        ));
    }
    Ok(Target {
        url: raw.to_string(),
        security,
    })
}

impl LdapDirectory {
    /// Checks the directory's settings (URLs, CA bundle, filter) and prepares its TLS
    /// configuration. No network I/O.
    pub fn new(dir: &Directory, secrets: &DirectorySecrets) -> Result<Self, LdapConfigError> {
        if dir.urls.is_empty() {
            return Err(LdapConfigError::NoUrl);
        }
        let targets = dir
            .urls
            .iter()
            .map(|u| parse_target(u.trim(), dir.allow_plaintext))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = if targets.iter().any(|t| t.security != Security::Plain) {
            Some(tls_config(dir.ca_pem.as_deref())?)
        } else {
            None
        };
        if dir.base_dn.trim().is_empty() {
            return Err(LdapConfigError::EmptyBaseDn);
        }
        if !dir.user_filter.contains("{username}") {
            return Err(LdapConfigError::BadUserFilter(
                dir.user_filter.clone(),
                "has no {username}",
            ));
        }
        if ldap3::parse_filter(dir.user_filter.replace("{username}", "x")).is_err() {
            return Err(LdapConfigError::BadUserFilter(
                dir.user_filter.clone(),
                "is not a valid LDAP filter (RFC 4515)",
            ));
        }
        let bind_dn = dir.bind_dn.clone().filter(|d| !d.trim().is_empty());
        let bind_password = secrets.bind_password.clone().filter(|p| !p.is_empty());
        if bind_dn.is_some() && bind_password.is_none() {
            return Err(LdapConfigError::NoBindPassword);
        }
        if dir.timeout_ms == 0 {
            return Err(LdapConfigError::ZeroTimeout);
        }
        Ok(LdapDirectory {
            inner: Arc::new(Inner {
                targets,
                base_dn: dir.base_dn.clone(),
                bind_dn,
                bind_password,
                preset: dir.preset,
                user_filter: dir.user_filter.clone(),
                groups: dir.groups,
                realm: dir.realm.clone().filter(|r| !r.is_empty()),
                timeout: Duration::from_millis(u64::from(dir.timeout_ms)),
                tls,
            }),
        })
    }

    /// Search (service account or anonymous) for the escaped user name, bind as the DN found,
    /// read account state and groups. Empty password -> AuthFailure::EmptyPassword before any
    /// network I/O.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<DirectoryUser, AuthFailure> {
        if password.is_empty() {
            return Err(AuthFailure::EmptyPassword);
        }
        check_username(username)?;
        self.run(Op {
            username: username.to_string(),
            password: Some(password.to_string()),
        })
        .await
    }

    /// The same without the password (periodic re-checks of connected users): account state
    /// (deleted -> UnknownUser, disabled/locked/expired) and current groups.
    pub async fn lookup(&self, username: &str) -> Result<DirectoryUser, AuthFailure> {
        check_username(username)?;
        self.run(Op {
            username: username.to_string(),
            password: None,
        })
        .await
    }

    async fn run(&self, op: Op) -> Result<DirectoryUser, AuthFailure> {
        let started = Instant::now();
        let deadline = started + self.inner.timeout;
        let total_ms = self.inner.timeout.as_millis();
        let n = self.inner.targets.len();
        let mut failures: Vec<String> = Vec::new();
        for (i, target) in self.inner.targets.iter().enumerate() {
            let now = Instant::now();
            if now >= deadline {
                failures.push(format!("{}: not tried, the deadline passed", target.url));
                break;
            }
            // Each server gets an equal share of what is left until its answer to the user
            // search; the last one gets all of it.
            let share = (deadline - now) / u32::try_from(n - i).unwrap_or(u32::MAX);
            let pre_deadline = now + share;
            let inner = self.inner.clone();
            let op2 = op.clone();
            let task = tokio::spawn(async move {
                attempt(&inner, i, &op2, pre_deadline, share, deadline).await
            });
            let abort = task.abort_handle();
            let outcome = match timeout_at(deadline, task).await {
                Err(_) => {
                    abort.abort();
                    failures.push(format!("{}: no answer within {total_ms} ms", target.url));
                    break;
                }
                Ok(Err(join)) => {
                    // A panic in the LDAP library on a malformed answer.
                    warn!(url = %target.url, error = %join, "directory answer could not be read");
                    return Err(AuthFailure::DirectoryError(format!(
                        "{}: malformed answer from the server",
                        target.url
                    )));
                }
                Ok(Ok(r)) => r,
            };
            match outcome {
                Ok(user) => {
                    debug!(url = %target.url, user = %user.username, groups = user.groups.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64, "directory check passed");
                    return Ok(user);
                }
                Err(Step::Final(f)) => {
                    info!(url = %target.url, user = ?op.username, reason = f.reason(), detail = %f,
                        "directory check failed");
                    return Err(f);
                }
                Err(Step::Failover(msg)) => {
                    warn!(detail = %msg, "directory server unusable, trying the next one");
                    failures.push(msg);
                }
            }
        }
        let msg = failures.join("; ");
        info!(user = ?op.username, detail = %msg, "directory unreachable");
        Err(AuthFailure::DirectoryUnreachable(msg))
    }
}

/// Whole milliseconds, rounded (a share computed a few µs after the start reads as the
/// configured timeout).
fn round_ms(d: Duration) -> u128 {
    (d.as_micros() + 500) / 1000
}

/// Hostile names are unknown users, without a query.
fn check_username(username: &str) -> Result<(), AuthFailure> {
    if username.is_empty()
        || username.len() > MAX_USERNAME_LEN
        || username.chars().any(char::is_control)
    {
        return Err(AuthFailure::UnknownUser);
    }
    Ok(())
}

/// An LDAP error: was it the transport (connection, TLS, closed) or the server's answer?
fn describe(e: &LdapError) -> (bool, String) {
    match e {
        LdapError::LdapResult { result } => (false, server_message(result)),
        LdapError::Timeout { .. } => (true, "no answer in time".into()),
        other => (true, other.to_string()),
    }
}

fn server_message(r: &ldap3::LdapResult) -> String {
    let text: String = r
        .text
        .chars()
        .take(300)
        .filter(|c| !c.is_control())
        .collect();
    format!("{} ({})", result_name(r.rc), text.trim())
}

fn result_name(rc: u32) -> String {
    let name = match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        13 => "confidentialityRequired",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        _ => return format!("result code {rc}"),
    };
    format!("{name} ({rc})")
}

/// Before the user's password is sent, transport failures and a busy/unavailable server move
/// on to the next URL; any other answer stands.
fn pre_err(url: &str, what: &str, e: &LdapError) -> Step {
    let (transport, msg) = describe(e);
    let busy = matches!(e, LdapError::LdapResult { result } if matches!(result.rc, 51 | 52));
    if transport || busy {
        Step::Failover(format!("{url}: {what}: {msg}"))
    } else {
        Step::Final(AuthFailure::DirectoryError(format!("{url}: {what}: {msg}")))
    }
}

/// After the password was sent, nothing is retried elsewhere.
fn post_err(url: &str, what: &str, e: &LdapError) -> Step {
    let (transport, msg) = describe(e);
    if transport {
        Step::Final(AuthFailure::DirectoryUnreachable(format!(
            "{url}: {what}: {msg}"
        )))
    } else {
        Step::Final(AuthFailure::DirectoryError(format!("{url}: {what}: {msg}")))
    }
}

async fn connect(inner: &Inner, target: &Target) -> Result<Ldap, LdapError> {
    let mut settings = LdapConnSettings::new();
    if let Some(tls) = &inner.tls {
        settings = settings.set_config(tls.clone());
    }
    settings = settings.set_starttls(target.security == Security::StartTls);
    let (conn, ldap) = LdapConnAsync::with_settings(settings, &target.url).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            debug!(error = %e, "directory connection ended");
        }
    });
    Ok(ldap)
}

/// Binds as the service account, or anonymously (an empty simple bind) when there is none.
async fn service_bind(inner: &Inner, ldap: &mut Ldap) -> Result<(), LdapError> {
    let (dn, pw) = match (&inner.bind_dn, &inner.bind_password) {
        (Some(dn), Some(pw)) => (dn.as_str(), pw.as_str()),
        _ => ("", ""),
    };
    ldap.simple_bind(dn, pw).await?.success()?;
    Ok(())
}

/// One attempt on one server; see [`LdapDirectory`]'s module docs for the steps.
async fn attempt(
    inner: &Inner,
    idx: usize,
    op: &Op,
    pre_deadline: Instant,
    share: Duration,
    deadline: Instant,
) -> Result<DirectoryUser, Step> {
    let target = &inner.targets[idx];
    let url = target.url.as_str();
    let pre = timeout_at(pre_deadline, async {
        let mut ldap = connect(inner, target)
            .await
            .map_err(|e| Step::Failover(format!("{url}: {}", describe(&e).1)))?;
        if inner.bind_dn.is_some() {
            service_bind(inner, &mut ldap)
                .await
                .map_err(|e| pre_err(url, "service account bind", &e))?;
        }
        let entry = find_user(inner, &mut ldap, &op.username)
            .await
            .map_err(|e| pre_err(url, "user search", &e))?;
        Ok::<_, Step>((ldap, entry))
    })
    .await;
    let (mut ldap, entry) = match pre {
        Err(_) => {
            return Err(Step::Failover(format!(
                "{url}: no answer within {} ms",
                round_ms(share)
            )))
        }
        Ok(r) => r?,
    };
    let entry = match entry {
        UserSearch::None => return Err(Step::Final(AuthFailure::UnknownUser)),
        UserSearch::Ambiguous => {
            return Err(Step::Final(AuthFailure::DirectoryError(format!(
                "{url}: more than one entry matches the user name (make the user filter \
                 more specific)"
            ))))
        }
        UserSearch::One(e) => e,
    };
    if inner.preset == DirectoryPreset::ActiveDirectory {
        ad_account_state(&entry, now_filetime()).map_err(Step::Final)?;
    }
    let username = canonical_username(inner.preset, &entry, &op.username);
    let post = timeout_at(deadline, async {
        if let Some(password) = &op.password {
            let res = ldap
                .simple_bind(&entry.dn, password)
                .await
                .map_err(|e| post_err(url, "user bind", &e))?;
            if res.rc != 0 {
                return Err(Step::Final(bind_failure(url, &res)));
            }
            // Back to the service identity for the group searches.
            service_bind(inner, &mut ldap)
                .await
                .map_err(|e| post_err(url, "service account bind", &e))?;
        }
        let groups = read_groups(inner, &mut ldap, &entry)
            .await
            .map_err(|e| post_err(url, "group search", &e))?;
        Ok::<_, Step>(groups)
    })
    .await;
    let groups = match post {
        Err(_) => {
            return Err(Step::Final(AuthFailure::DirectoryUnreachable(format!(
                "{url}: no answer within {} ms",
                inner.timeout.as_millis()
            ))))
        }
        Ok(r) => r?,
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), ldap.unbind()).await;
    Ok(DirectoryUser {
        username,
        dn: entry.dn,
        groups,
    })
}

/// The failure a refused user bind means. AD's diagnostic message carries the reason as
/// `data <hex>` (`80090308: LdapErr: DSID-…, comment: AcceptSecurityContext error, data 52e`).
fn bind_failure(url: &str, res: &ldap3::LdapResult) -> AuthFailure {
    match res.rc {
        49 => match ad_bind_data(&res.text).as_deref() {
            Some("533") => AuthFailure::AccountDisabled,
            Some("532") | Some("773") => AuthFailure::PasswordExpired,
            Some("701") => AuthFailure::AccountExpired,
            Some("775") => AuthFailure::AccountLocked,
            _ => AuthFailure::BadPassword,
        },
        _ => AuthFailure::DirectoryError(format!("{url}: user bind: {}", server_message(res))),
    }
}

/// The `data XXX` code of an AD bind error, lowercased.
fn ad_bind_data(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let pos = lower.find("data ")?;
    let code: String = lower[pos + 5..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .take(8)
        .collect();
    (!code.is_empty()).then_some(code)
}

/// An entry as read from the server: the DN and its attributes' values (names lowercased),
/// each value at most [`MAX_VALUE_LEN`] bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    dn: String,
    attrs: Vec<(String, Vec<Vec<u8>>)>,
}

impl Entry {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.attrs
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.iter().map(Vec::as_slice))
    }

    fn strings<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
    }

    fn first<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.strings(name).next()
    }
}

/// Parses a SearchResultEntry (`[APPLICATION 4] SEQUENCE { objectName, attributes }`) without
/// trusting it: `None` when malformed; long values skipped, counts bounded.
fn parse_entry(tag: StructureTag) -> Option<Entry> {
    if tag.id != 4 {
        return None;
    }
    let PL::C(parts) = tag.payload else {
        return None;
    };
    let mut parts = parts.into_iter();
    let PL::P(dn) = parts.next()?.payload else {
        return None;
    };
    let dn = String::from_utf8(dn).ok()?;
    let PL::C(attrs) = parts.next()?.payload else {
        return None;
    };
    let mut out = Vec::new();
    for a in attrs.into_iter().take(64) {
        let PL::C(pa) = a.payload else { continue };
        let mut pa = pa.into_iter();
        let Some(PL::P(name)) = pa.next().map(|t| t.payload) else {
            continue;
        };
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        let Some(PL::C(vals)) = pa.next().map(|t| t.payload) else {
            continue;
        };
        let vals: Vec<Vec<u8>> = vals
            .into_iter()
            .filter_map(|v| match v.payload {
                PL::P(b) if b.len() <= MAX_VALUE_LEN => Some(b),
                _ => None,
            })
            .take(MAX_VALUES_PER_ATTR)
            .collect();
        out.push((name.to_ascii_lowercase(), vals));
    }
    Some(Entry { dn, attrs: out })
}

/// Runs a search and returns at most `limit` entries (search references and malformed
/// entries skipped). `Ok((entries, more))`: `more` is true when the server had more than
/// `limit` (or said its size limit was exceeded).
async fn bounded_search(
    ldap: &mut Ldap,
    base: &str,
    filter: &str,
    attrs: &[&str],
    limit: usize,
) -> Result<(Vec<Entry>, bool), LdapError> {
    let server_limit = i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX);
    let mut stream = ldap
        .with_search_options(SearchOptions::new().sizelimit(server_limit))
        .streaming_search(base, Scope::Subtree, filter, attrs.to_vec())
        .await?;
    let mut entries = Vec::new();
    let mut more = false;
    while let Some(item) = stream.next().await? {
        if item.is_ref() || item.is_intermediate() {
            continue;
        }
        if entries.len() >= limit {
            more = true;
            break;
        }
        if let Some(e) = parse_entry(item.0) {
            entries.push(e);
        }
    }
    if more {
        let id = stream.ldap_handle().last_id();
        let _ = stream.finish().await;
        let _ = ldap.abandon(id).await;
        return Ok((entries, true));
    }
    let res = stream.finish().await;
    match res.rc {
        0 => Ok((entries, false)),
        4 => Ok((entries, true)),
        _ => Err(LdapError::LdapResult { result: res }),
    }
}

enum UserSearch {
    None,
    One(Entry),
    Ambiguous,
}

/// The user search's filter for a name (already checked by [`check_username`]).
fn user_filter(inner: &Inner, username: &str) -> String {
    let default_ad = DirectoryPreset::ActiveDirectory.default_user_filter();
    if inner.preset == DirectoryPreset::ActiveDirectory {
        if let Some((user, realm)) = username.rsplit_once('@') {
            let own_realm = inner
                .realm
                .as_deref()
                .is_some_and(|r| r.eq_ignore_ascii_case(realm));
            if own_realm && !user.is_empty() {
                // user@REALM of this directory: the sAMAccountName.
                return inner.user_filter.replace("{username}", &ldap_escape(user));
            }
            if inner.user_filter == default_ad {
                // Another UPN suffix: look the name up as a userPrincipalName.
                return format!(
                    "(&(objectClass=user)(objectCategory=person)(userPrincipalName={}))",
                    ldap_escape(username)
                );
            }
        }
    }
    inner
        .user_filter
        .replace("{username}", &ldap_escape(username))
}

async fn find_user(
    inner: &Inner,
    ldap: &mut Ldap,
    username: &str,
) -> Result<UserSearch, LdapError> {
    let filter = user_filter(inner, username);
    let attrs: &[&str] = match inner.preset {
        DirectoryPreset::Openldap => &["uid", "memberOf"],
        DirectoryPreset::ActiveDirectory => &[
            "sAMAccountName",
            "userPrincipalName",
            "userAccountControl",
            "msDS-User-Account-Control-Computed",
            "accountExpires",
            "memberOf",
        ],
    };
    let (entries, more) = bounded_search(ldap, &inner.base_dn, &filter, attrs, 1).await?;
    Ok(match entries.len() {
        _ if more => UserSearch::Ambiguous,
        0 => UserSearch::None,
        _ => match entries.into_iter().next() {
            Some(e) if !e.dn.is_empty() => UserSearch::One(e),
            _ => UserSearch::None,
        },
    })
}

/// The user name as the directory stores it: `uid` (the value equal to the name given, if
/// several) or `sAMAccountName`; the name given when the entry has none.
fn canonical_username(preset: DirectoryPreset, entry: &Entry, given: &str) -> String {
    let attr = match preset {
        DirectoryPreset::Openldap => "uid",
        DirectoryPreset::ActiveDirectory => "sAMAccountName",
    };
    let mut values = entry.strings(attr).filter(|v| !v.is_empty());
    let first = values.next();
    if let Some(same) = first
        .into_iter()
        .chain(values)
        .find(|v| v.eq_ignore_ascii_case(given))
    {
        return same.to_string();
    }
    first.unwrap_or(given).to_string()
}

/// The current time as an AD FILETIME.
fn now_filetime() -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    secs.saturating_add(FILETIME_UNIX_OFFSET_SECS)
        .saturating_mul(10_000_000)
}

/// Active Directory's account state from the user entry: disabled, expired, locked.
/// Unreadable values fail closed.
fn ad_account_state(entry: &Entry, now: u64) -> Result<(), AuthFailure> {
    let number = |attr: &str| -> Result<Option<i64>, AuthFailure> {
        match entry.first(attr) {
            None => Ok(None),
            Some(s) => s.trim().parse::<i64>().map(Some).map_err(|_| {
                AuthFailure::DirectoryError(format!("unreadable {attr} of {}", entry.dn))
            }),
        }
    };
    // userAccountControl is a 32-bit flag set; AD may show it signed.
    let uac = number("userAccountControl")?.map(|v| v as u32 as u64);
    let computed = number("msDS-User-Account-Control-Computed")?.map(|v| v as u32 as u64);
    if uac.is_some_and(|u| u & UF_ACCOUNTDISABLE != 0) {
        return Err(AuthFailure::AccountDisabled);
    }
    if let Some(expires) = number("accountExpires")? {
        // 0 and 0x7FFFFFFFFFFFFFFF: never.
        if expires != 0 && expires != i64::MAX && (expires < 0 || (expires as u64) <= now) {
            return Err(AuthFailure::AccountExpired);
        }
    }
    if uac.is_some_and(|u| u & UF_LOCKOUT != 0) || computed.is_some_and(|c| c & UF_LOCKOUT != 0) {
        return Err(AuthFailure::AccountLocked);
    }
    Ok(())
}

/// One group: its name, DN and (AD) SID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Group {
    name: Option<String>,
    dn: String,
    sid: Option<String>,
}

fn flatten(groups: Vec<Group>) -> Vec<String> {
    let mut all = BTreeSet::new();
    for g in groups.into_iter().take(MAX_GROUPS) {
        if let Some(n) = g.name.filter(|n| !n.is_empty()) {
            all.insert(n);
        }
        if !g.dn.is_empty() {
            all.insert(g.dn);
        }
        if let Some(s) = g.sid {
            all.insert(s);
        }
    }
    all.into_iter().collect()
}

async fn read_groups(
    inner: &Inner,
    ldap: &mut Ldap,
    user: &Entry,
) -> Result<Vec<String>, LdapError> {
    let groups = match inner.groups {
        GroupMode::Memberof => user
            .strings("memberOf")
            .take(MAX_GROUPS)
            .map(|dn| Group {
                name: first_rdn_value(dn),
                dn: dn.to_string(),
                sid: None,
            })
            .collect(),
        GroupMode::AdNested => {
            let filter = format!(
                "(&(objectClass=group)(member:1.2.840.113556.1.4.1941:={}))",
                ldap_escape(user.dn.as_str())
            );
            let (entries, more) = bounded_search(
                ldap,
                &inner.base_dn,
                &filter,
                &["cn", "objectSid"],
                MAX_GROUPS,
            )
            .await?;
            if more {
                warn!(user = %user.dn, "more than {MAX_GROUPS} groups: the rest is ignored");
            }
            entries
                .into_iter()
                .map(|e| {
                    let sid = e.values("objectsid").find_map(sid_to_string);
                    let name = e
                        .first("cn")
                        .map(str::to_string)
                        .or_else(|| first_rdn_value(&e.dn));
                    Group {
                        name,
                        dn: e.dn,
                        sid,
                    }
                })
                .collect()
        }
        GroupMode::Groupofnames => group_of_names(inner, ldap, &user.dn).await?,
    };
    Ok(flatten(groups))
}

/// `groupOfNames` entries with the user as member, then groups with those as members, level
/// by level: at most [`MAX_GROUP_DEPTH`] levels and [`MAX_GROUPS`] groups; each DN is followed
/// once (cycles end).
async fn group_of_names(
    inner: &Inner,
    ldap: &mut Ldap,
    user_dn: &str,
) -> Result<Vec<Group>, LdapError> {
    let mut seen: HashSet<String> = HashSet::new();
    seen.insert(user_dn.to_ascii_lowercase());
    let mut found: Vec<Group> = Vec::new();
    let mut frontier = vec![user_dn.to_string()];
    for _depth in 0..MAX_GROUP_DEPTH {
        let mut next = Vec::new();
        for batch in frontier.chunks(MEMBER_BATCH) {
            let members: String = batch
                .iter()
                .map(|dn| format!("(member={})", ldap_escape(dn.as_str())))
                .collect();
            let filter = format!("(&(objectClass=groupOfNames)(|{members}))");
            let room = MAX_GROUPS.saturating_sub(found.len());
            if room == 0 {
                break;
            }
            let (entries, _) = bounded_search(ldap, &inner.base_dn, &filter, &["cn"], room).await?;
            for e in entries {
                if !seen.insert(e.dn.to_ascii_lowercase()) {
                    continue;
                }
                next.push(e.dn.clone());
                found.push(Group {
                    name: e
                        .first("cn")
                        .map(str::to_string)
                        .or_else(|| first_rdn_value(&e.dn)),
                    dn: e.dn,
                    sid: None,
                });
            }
        }
        if next.is_empty() || found.len() >= MAX_GROUPS {
            if found.len() >= MAX_GROUPS {
                warn!(user = %user_dn, "more than {MAX_GROUPS} groups: the rest is ignored");
            }
            break;
        }
        frontier = next;
    }
    Ok(found)
}

/// The value of a DN's first RDN (`cn=devs,ou=groups,…` → `devs`), RFC 4514 escapes
/// undone. `None` when there is none.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    let bytes = dn.as_bytes();
    let eq = bytes.iter().position(|&b| b == b'=')?;
    let mut out: Vec<u8> = Vec::new();
    let mut i = eq + 1;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b',' | b'+' => break,
            b'\\' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                        let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                        out.push(v as u8);
                        i += 3;
                    }
                    (Some(&c), _) => {
                        out.push(c);
                        i += 2;
                    }
                    (None, _) => break,
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    let s = String::from_utf8_lossy(&out).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// A binary security identifier (MS-DTYP 2.4.2.2: revision 1, sub-authority count ≤ 15,
/// 48-bit big-endian authority, little-endian 32-bit sub-authorities) as `S-1-5-21-…`.
/// `None` unless the bytes are exactly one well-formed SID.
pub fn sid_to_string(bytes: &[u8]) -> Option<String> {
    let (&revision, rest) = bytes.split_first()?;
    let (&count, rest) = rest.split_first()?;
    if revision != 1 || count > 15 {
        return None;
    }
    let (authority, subs) = rest.split_at_checked(6)?;
    if subs.len() != usize::from(count) * 4 {
        return None;
    }
    let authority = authority
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let mut s = if authority >= 1 << 32 {
        format!("S-1-0x{authority:012X}")
    } else {
        format!("S-1-{authority}")
    };
    for chunk in subs.chunks_exact(4) {
        let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        s.push('-');
        s.push_str(&v.to_string());
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_sid(authority: u64, subs: &[u32]) -> Vec<u8> {
        let mut b = vec![1u8, subs.len() as u8];
        b.extend_from_slice(&authority.to_be_bytes()[2..]);
        for s in subs {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    #[test]
    fn sids() {
        // Domain Users of a domain, as AD stores it.
        let b = encode_sid(5, &[21, 3575277710, 2921322277, 4195519089, 513]);
        assert_eq!(
            sid_to_string(&b).as_deref(),
            Some("S-1-5-21-3575277710-2921322277-4195519089-513")
        );
        assert_eq!(
            sid_to_string(&encode_sid(1, &[0])).as_deref(),
            Some("S-1-1-0")
        );
        assert_eq!(sid_to_string(&encode_sid(5, &[])).as_deref(), Some("S-1-5"));
        assert_eq!(
            sid_to_string(&encode_sid(0x0000_1234_5678_9abc, &[1])).as_deref(),
            Some("S-1-0x123456789ABC-1")
        );
        assert_eq!(sid_to_string(&[]), None);
        assert_eq!(sid_to_string(&[1]), None);
        assert_eq!(sid_to_string(&[1, 0, 0, 0, 0, 0, 0]), None);
        let mut bad_rev = encode_sid(5, &[21]);
        bad_rev[0] = 2;
        assert_eq!(sid_to_string(&bad_rev), None);
        let mut trailing = encode_sid(5, &[21]);
        trailing.push(0);
        assert_eq!(sid_to_string(&trailing), None);
        let mut short = encode_sid(5, &[21, 22]);
        short.pop();
        assert_eq!(sid_to_string(&short), None);
        assert_eq!(sid_to_string(&encode_sid(5, &[7; 16])), None);
    }

    proptest! {
        #[test]
        fn sid_round_trip(authority in 0u64..(1 << 48), subs in proptest::collection::vec(any::<u32>(), 0..=15)) {
            let text = sid_to_string(&encode_sid(authority, &subs)).expect("well-formed SID");
            let mut parts = text.split('-');
            prop_assert_eq!(parts.next(), Some("S"));
            prop_assert_eq!(parts.next(), Some("1"));
            let a = parts.next().expect("authority");
            let a = match a.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).expect("hex"),
                None => a.parse::<u64>().expect("decimal"),
            };
            prop_assert_eq!(a, authority);
            let back: Vec<u32> = parts.map(|p| p.parse().expect("sub-authority")).collect();
            prop_assert_eq!(back, subs);
        }

        #[test]
        fn sid_total(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Some(s) = sid_to_string(&bytes) {
                prop_assert!(s.starts_with("S-1-"));
                prop_assert_eq!(bytes.len(), 8 + 4 * usize::from(bytes[1]));
                prop_assert_eq!(bytes[0], 1);
            }
        }

        #[test]
        fn first_rdn_total(dn in ".{0,80}") {
            let _ = first_rdn_value(&dn);
        }
    }

    #[test]
    fn rdn_values() {
        assert_eq!(
            first_rdn_value("cn=devs,ou=groups,dc=example,dc=test").as_deref(),
            Some("devs")
        );
        assert_eq!(
            first_rdn_value("CN=Smith\\, John,CN=Users,DC=x").as_deref(),
            Some("Smith, John")
        );
        assert_eq!(
            first_rdn_value("cn=a\\2Cb+sn=c,dc=x").as_deref(),
            Some("a,b")
        );
        assert_eq!(first_rdn_value("cn=\\e2\\82\\ac").as_deref(), Some("€"));
        assert_eq!(first_rdn_value("no equals"), None);
        assert_eq!(first_rdn_value("cn=,dc=x"), None);
        assert_eq!(first_rdn_value("cn=x\\"), Some("x".into()));
    }

    #[test]
    fn ad_bind_codes() {
        let r = |text: &str| ldap3::LdapResult {
            rc: 49,
            matched: String::new(),
            text: text.into(),
            refs: vec![],
            ctrls: vec![],
        };
        let ad = |d: &str| {
            format!("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data {d}, v1db1")
        };
        assert_eq!(bind_failure("u", &r(&ad("52e"))), AuthFailure::BadPassword);
        assert_eq!(
            bind_failure("u", &r(&ad("533"))),
            AuthFailure::AccountDisabled
        );
        assert_eq!(
            bind_failure("u", &r(&ad("532"))),
            AuthFailure::PasswordExpired
        );
        assert_eq!(
            bind_failure("u", &r(&ad("701"))),
            AuthFailure::AccountExpired
        );
        assert_eq!(
            bind_failure("u", &r(&ad("775"))),
            AuthFailure::AccountLocked
        );
        assert_eq!(bind_failure("u", &r("")), AuthFailure::BadPassword);
        let mut other = r("no");
        other.rc = 50;
        assert!(matches!(
            bind_failure("u", &other),
            AuthFailure::DirectoryError(m) if m.contains("insufficientAccessRights")
        ));
    }

    fn entry(attrs: &[(&str, &str)]) -> Entry {
        Entry {
            dn: "CN=u,DC=x".into(),
            attrs: attrs
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), vec![v.as_bytes().to_vec()]))
                .collect(),
        }
    }

    #[test]
    fn ad_states() {
        let now = 134_000_000_000_000_000u64;
        assert_eq!(
            ad_account_state(&entry(&[("userAccountControl", "512")]), now),
            Ok(())
        );
        assert_eq!(
            ad_account_state(&entry(&[("userAccountControl", "514")]), now),
            Err(AuthFailure::AccountDisabled)
        );
        assert_eq!(
            ad_account_state(&entry(&[("userAccountControl", "528")]), now),
            Err(AuthFailure::AccountLocked)
        );
        assert_eq!(
            ad_account_state(
                &entry(&[
                    ("userAccountControl", "512"),
                    ("msDS-User-Account-Control-Computed", "16")
                ]),
                now
            ),
            Err(AuthFailure::AccountLocked)
        );
        for never in ["0", "9223372036854775807"] {
            assert_eq!(
                ad_account_state(&entry(&[("accountExpires", never)]), now),
                Ok(())
            );
        }
        assert_eq!(
            ad_account_state(&entry(&[("accountExpires", &(now - 1).to_string())]), now),
            Err(AuthFailure::AccountExpired)
        );
        assert_eq!(
            ad_account_state(&entry(&[("accountExpires", &(now + 10).to_string())]), now),
            Ok(())
        );
        assert!(matches!(
            ad_account_state(&entry(&[("accountExpires", "soon")]), now),
            Err(AuthFailure::DirectoryError(_))
        ));
        // Disabled wins over expired.
        assert_eq!(
            ad_account_state(
                &entry(&[("userAccountControl", "2"), ("accountExpires", "1")]),
                now
            ),
            Err(AuthFailure::AccountDisabled)
        );
    }

    #[test]
    fn hostile_names() {
        for bad in ["", "a\0b", "a\nb", "\u{7f}", &"x".repeat(257)] {
            assert_eq!(
                check_username(bad),
                Err(AuthFailure::UnknownUser),
                "{bad:?}"
            );
        }
        assert_eq!(check_username(&"x".repeat(256)), Ok(()));
        assert_eq!(check_username("alice)(uid=*"), Ok(()));
    }

    fn dir(preset: DirectoryPreset) -> Directory {
        Directory {
            directory_id: "cvpn-directory-0".into(),
            name: "d".into(),
            description: None,
            urls: vec!["ldaps://dc1.example.test".into()],
            base_dn: "dc=example,dc=test".into(),
            bind_dn: None,
            bind_password_set: false,
            preset,
            user_filter: preset.default_user_filter().into(),
            groups: preset.default_groups(),
            ca_pem: None,
            allow_plaintext: false,
            realm: Some("EXAMPLE.TEST".into()),
            timeout_ms: 1000,
            recheck_seconds: 300,
            mfa: cvpn_core::model::directory::MfaMode::None,
            radius_server: None,
            radius_timeout_ms: 3000,
            radius_retries: 3,
            radius_secret_set: false,
            creation_time: cvpn_core::model::Timestamp(0),
        }
    }

    fn with_ca(mut d: Directory) -> Directory {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        d.ca_pem = Some(cert.pem());
        d
    }

    #[test]
    fn filters() {
        let ad = LdapDirectory::new(
            &with_ca(dir(DirectoryPreset::ActiveDirectory)),
            &DirectorySecrets::default(),
        )
        .expect("valid");
        assert_eq!(
            user_filter(&ad.inner, "bob@example.test"),
            "(&(objectClass=user)(objectCategory=person)(sAMAccountName=bob))"
        );
        assert_eq!(
            user_filter(&ad.inner, "bob@other.test"),
            "(&(objectClass=user)(objectCategory=person)(userPrincipalName=bob@other.test))"
        );
        assert_eq!(
            user_filter(&ad.inner, "a*)(x=*"),
            "(&(objectClass=user)(objectCategory=person)(sAMAccountName=a\\2a\\29\\28x=\\2a))"
        );
        let ol = LdapDirectory::new(
            &with_ca(dir(DirectoryPreset::Openldap)),
            &DirectorySecrets::default(),
        )
        .expect("valid");
        assert_eq!(
            user_filter(&ol.inner, "bob@example.test"),
            "(&(objectClass=inetOrgPerson)(uid=bob@example.test))"
        );
    }

    #[test]
    fn config_errors() {
        let s = DirectorySecrets::default();
        let ok = with_ca(dir(DirectoryPreset::Openldap));
        let mut d = ok.clone();
        d.urls = vec![];
        assert!(matches!(
            LdapDirectory::new(&d, &s),
            Err(LdapConfigError::NoUrl)
        ));
        for bad in [
            "http://x",
            "ldap//x",
            "ldaps://",
            "ldaps://u:p@x",
            "ldaps://x/dc=x??sub",
            "ldaps://[::1]",
        ] {
            let mut d = ok.clone();
            d.urls = vec![bad.into()];
            assert!(
                matches!(
                    LdapDirectory::new(&d, &s),
                    Err(LdapConfigError::BadUrl { .. })
                ),
                "{bad}"
            );
        }
        // ldap:// is StartTLS, or plain with allow_plaintext (then no CA is needed).
        let mut d = ok.clone();
        d.urls = vec!["ldap://dc1.example.test".into()];
        let l = LdapDirectory::new(&d, &s).expect("valid");
        assert_eq!(l.inner.targets[0].security, Security::StartTls);
        d.allow_plaintext = true;
        d.ca_pem = Some("not used".into());
        let l = LdapDirectory::new(&d, &s).expect("valid");
        assert_eq!(l.inner.targets[0].security, Security::Plain);
        assert!(l.inner.tls.is_none());
        let mut d = ok.clone();
        d.ca_pem =
            Some("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into());
        assert!(matches!(
            LdapDirectory::new(&d, &s),
            Err(LdapConfigError::BadCaPem(_))
        ));
        d.ca_pem = Some("nothing".into());
        assert!(matches!(
            LdapDirectory::new(&d, &s),
            Err(LdapConfigError::BadCaPem(_))
        ));
        let mut d = ok.clone();
        d.user_filter = "(uid=alice)".into();
        assert!(matches!(
            LdapDirectory::new(&d, &s),
            Err(LdapConfigError::BadUserFilter(..))
        ));
        d.user_filter = "(uid={username}".into();
        assert!(matches!(
            LdapDirectory::new(&d, &s),
            Err(LdapConfigError::BadUserFilter(..))
        ));
        let mut d = ok.clone();
        d.bind_dn = Some("cn=reader".into());
        assert!(matches!(
            LdapDirectory::new(&d, &s),
            Err(LdapConfigError::NoBindPassword)
        ));
        let secrets = DirectorySecrets {
            bind_password: Some("hunter2".into()),
            radius_secret: None,
        };
        let l = LdapDirectory::new(&d, &secrets).expect("valid");
        let shown = format!("{l:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn entries_parse_without_trust() {
        use ldap3::asn1::TagClass;
        let p = |b: &[u8]| StructureTag {
            class: TagClass::Universal,
            id: 4,
            payload: PL::P(b.to_vec()),
        };
        let c = |id: u64, v: Vec<StructureTag>| StructureTag {
            class: TagClass::Universal,
            id,
            payload: PL::C(v),
        };
        let good = c(
            4,
            vec![
                p(b"cn=a"),
                c(
                    16,
                    vec![
                        c(
                            16,
                            vec![p(b"objectSid"), c(17, vec![p(&[1, 0, 0, 0, 0, 0, 0, 5])])],
                        ),
                        c(16, vec![p(b"cn"), c(17, vec![p(b"a"), p(&[b'x'; 2000])])]),
                        p(b"junk"),
                    ],
                ),
            ],
        );
        let e = parse_entry(good).expect("entry");
        assert_eq!(e.dn, "cn=a");
        assert_eq!(
            e.values("objectsid").find_map(sid_to_string).as_deref(),
            Some("S-1-5")
        );
        assert_eq!(e.strings("CN").collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(parse_entry(p(b"x")), None);
        assert_eq!(parse_entry(c(4, vec![])), None);
        assert_eq!(parse_entry(c(4, vec![c(4, vec![])])), None);
        assert_eq!(parse_entry(c(5, vec![p(b"cn=a"), c(16, vec![])])), None);
    }
}
