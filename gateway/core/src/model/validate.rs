//! Validation of user input: each function checks one field and names it (kebab-case, as in the
//! request) and the rule in its error. Pure: no database access here.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::error::ApiError;
use super::ids::*;
use super::resources::*;

// The rules themselves, without an error type: the API ([`ApiError`]) and the endpoint file
// (`config::ConfigError`) wrap the same checks, so both refuse the same values with the same
// words.

/// An IPv4 CIDR in network form (`10.88.0.0/24`; host bits refused); `Err` says what is wrong.
pub fn check_cidr(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s.trim().parse().map_err(|_| {
        format!("{s:?} is not an IPv4 CIDR (write a.b.c.d/n, e.g. \"10.88.0.0/24\")")
    })?;
    if net != net.trunc() {
        return Err(format!("{s:?} has host bits set; write {}", net.trunc()));
    }
    Ok(net)
}

/// A client CIDR: a network, prefix /12../22.
pub fn check_client_cidr(s: &str) -> Result<Ipv4Net, String> {
    let net = check_cidr(s)?;
    let p = net.prefix_len();
    if !(MIN_CLIENT_PREFIX..=MAX_CLIENT_PREFIX).contains(&p) {
        return Err(format!(
            "{net} has prefix /{p}; the client CIDR must be between /{MIN_CLIENT_PREFIX} and \
             /{MAX_CLIENT_PREFIX} (1 024 to 1 048 576 addresses)"
        ));
    }
    Ok(net)
}

/// An IPv4 address.
pub fn check_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address (write a.b.c.d)"))
}

/// At most two distinct IPv4 addresses.
pub fn check_dns_servers(list: &[String]) -> Result<Vec<Ipv4Addr>, String> {
    if list.len() > MAX_DNS_SERVERS {
        return Err(format!(
            "{} servers given; at most {MAX_DNS_SERVERS} are allowed",
            list.len()
        ));
    }
    let mut out = Vec::new();
    for s in list {
        let a = check_ipv4(s)?;
        if out.contains(&a) {
            return Err(format!("{a} is listed twice"));
        }
        out.push(a);
    }
    Ok(out)
}

/// Linux interface name rules (`dev_valid_name`): 1..=15 bytes, not `.`/`..`, no `/`, `:` or
/// whitespace.
pub fn check_interface_name(s: &str) -> Result<String, String> {
    let bad = s.is_empty()
        || s.len() > 15
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(format!(
            "{s:?} is not a network interface name (1 to 15 characters, no '/', ':' or spaces)"
        ));
    }
    Ok(s.to_string())
}

/// Parses an IPv4 CIDR in network form (`10.88.0.0/24`; host bits refused).
pub fn cidr(field: &str, s: &str) -> Result<Ipv4Net, ApiError> {
    check_cidr(s).map_err(|d| ApiError::invalid(field, d))
}

/// The client CIDR: a network, prefix /12../22.
pub fn client_cidr(field: &str, s: &str) -> Result<Ipv4Net, ApiError> {
    check_client_cidr(s).map_err(|d| ApiError::invalid(field, d))
}

/// True if the two networks share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses an IPv4 address.
pub fn ipv4(field: &str, s: &str) -> Result<Ipv4Addr, ApiError> {
    check_ipv4(s).map_err(|d| ApiError::invalid(field, d))
}

/// `udp` or `tcp`.
pub fn transport(field: &str, s: &str) -> Result<TransportProtocol, ApiError> {
    TransportProtocol::parse(s.trim())
        .ok_or_else(|| ApiError::invalid(field, format!("{s:?} is not one of \"udp\", \"tcp\"")))
}

/// 443 or 1194.
pub fn port(field: &str, n: i64) -> Result<u16, ApiError> {
    u16::try_from(n)
        .ok()
        .filter(|p| ALLOWED_PORTS.contains(p))
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!("{n} is not an allowed port; use 443 or 1194"),
            )
        })
}

/// 8, 10, 12 or 24.
pub fn session_timeout(field: &str, n: i64) -> Result<u8, ApiError> {
    u8::try_from(n)
        .ok()
        .filter(|h| ALLOWED_SESSION_TIMEOUT_HOURS.contains(h))
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!("{n} hours is not allowed; use 8, 10, 12 or 24"),
            )
        })
}

/// At most two distinct IPv4 addresses.
pub fn dns_servers(field: &str, list: &[String]) -> Result<Vec<Ipv4Addr>, ApiError> {
    check_dns_servers(list).map_err(|d| ApiError::invalid(field, d))
}

/// Free text of at most `max` characters, no control characters; empty means none.
pub fn text(field: &str, s: &str, max: usize) -> Result<Option<String>, ApiError> {
    let n = s.chars().count();
    if n > max {
        return Err(ApiError::invalid(
            field,
            format!("{n} characters; at most {max} are allowed"),
        ));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(field, "contains control characters"));
    }
    Ok(if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    })
}

/// A description: at most 255 characters.
pub fn description(field: &str, s: Option<&str>) -> Result<Option<String>, ApiError> {
    match s {
        None => Ok(None),
        Some(s) => text(field, s, MAX_DESCRIPTION_CHARS),
    }
}

/// The banner: text required when enabled, at most 1400 characters.
pub fn banner(
    field: &str,
    b: &ClientLoginBannerOptions,
) -> Result<ClientLoginBannerOptions, ApiError> {
    let sub = format!("{field}.banner-text");
    let text_value = match &b.banner_text {
        None => None,
        Some(t) => text(&sub, t, MAX_BANNER_CHARS)?,
    };
    if b.enabled && text_value.is_none() {
        return Err(ApiError::missing(
            &sub,
            "required when the banner is enabled",
        ));
    }
    Ok(ClientLoginBannerOptions {
        enabled: b.enabled,
        banner_text: text_value,
    })
}

/// Where a client connect handler is, once the daemon's [`HandlerPolicy`] allows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerTarget {
    /// The executable's canonical path: inside the allowed directory.
    Executable(std::path::PathBuf),
    /// A webhook: `https`, and what follows `scheme://` (`host[:port][/path]`).
    Webhook {
        /// `https://` (else `http://`, allowed by `[connect_handler] allow_http`).
        https: bool,
        /// Authority and path.
        rest: String,
    },
}

/// A client connect handler the daemon configuration allows: an `https://` URL, an `http://`
/// URL when `allow_http` is set, or an executable file inside `executable_dir` (after resolving
/// `..` and symbolic links, so neither can lead out of it), not writable by group or others.
/// Reads the file system (the executable's path and mode); `Err` says what is wrong and what
/// to do.
pub fn check_handler(h: &str, policy: &HandlerPolicy) -> Result<HandlerTarget, String> {
    if h.chars().any(char::is_whitespace) {
        return Err(format!("{h:?} contains white space"));
    }
    let url = |https: bool, rest: &str| {
        if rest.is_empty() || rest.starts_with('/') {
            Err(format!(
                "{h:?} names no host (write {}://HOST[:PORT]/PATH)",
                if https { "https" } else { "http" }
            ))
        } else {
            Ok(HandlerTarget::Webhook {
                https,
                rest: rest.to_string(),
            })
        }
    };
    if let Some(rest) = h.strip_prefix("https://") {
        return url(true, rest);
    }
    if let Some(rest) = h.strip_prefix("http://") {
        if !policy.allow_http {
            return Err(format!(
                "{h:?} is a plain http:// webhook: the request and the answer that admits the \
                 client would cross the network unprotected; use https://, or allow http \
                 explicitly with `allow_http = true` in the daemon configuration's \
                 [connect_handler] table"
            ));
        }
        return url(false, rest);
    }
    if h.starts_with('/') {
        return check_executable(std::path::Path::new(h), policy).map(HandlerTarget::Executable);
    }
    Err(format!(
        "{h:?} is neither an http(s) URL nor the absolute path of an executable"
    ))
}

/// An executable handler inside the policy's directory: its canonical path.
fn check_executable(
    path: &std::path::Path,
    policy: &HandlerPolicy,
) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = &policy.executable_dir else {
        return Err(format!(
            "{} is an executable, and the daemon configuration allows none: set \
             `executable_dir = \"DIR\"` in its [connect_handler] table (e.g. \
             \"/etc/cvpn/handlers\"), install the handler in DIR and restart the daemon; or use \
             an https:// webhook",
            path.display()
        ));
    };
    let canonical_dir = dir.canonicalize().map_err(|e| {
        format!(
            "the handler directory {} ([connect_handler] executable_dir): {e}; create it or fix \
             the daemon configuration",
            dir.display()
        )
    })?;
    let canonical = path.canonicalize().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{} does not exist; install the handler in {} first",
                path.display(),
                canonical_dir.display()
            )
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    if !canonical.starts_with(&canonical_dir) {
        return Err(format!(
            "{} resolves to {}, outside the handler directory {} ([connect_handler] \
             executable_dir); install the handler in that directory",
            path.display(),
            canonical.display(),
            canonical_dir.display()
        ));
    }
    let meta =
        std::fs::metadata(&canonical).map_err(|e| format!("{}: {e}", canonical.display()))?;
    let mode = meta.permissions().mode();
    if !meta.is_file() || mode & 0o111 == 0 {
        return Err(format!(
            "{} is not an executable file (chmod 755 it)",
            canonical.display()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others, who could then decide who connects: chmod go-w it",
            canonical.display()
        ));
    }
    Ok(canonical)
}

/// The client connect handler: one [`check_handler`] allows; required if enabled.
pub fn client_connect(
    field: &str,
    c: &ClientConnectOptions,
    policy: &HandlerPolicy,
) -> Result<ClientConnectOptions, ApiError> {
    let sub = format!("{field}.handler");
    let handler = match c.handler.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(h) => {
            check_handler(h, policy).map_err(|e| ApiError::invalid(&sub, e))?;
            Some(h.to_string())
        }
    };
    if c.enabled && handler.is_none() {
        return Err(ApiError::missing(
            &sub,
            "required when the client connect handler is enabled",
        ));
    }
    Ok(ClientConnectOptions {
        enabled: c.enabled,
        handler,
    })
}

/// Tags: at most 50, keys 1..=128 characters and unique, values at most 256 characters.
pub fn tags(field: &str, tags: &[Tag]) -> Result<Vec<Tag>, ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            field,
            format!("{} tags; at most {MAX_TAGS} are allowed", tags.len()),
        ));
    }
    for (i, t) in tags.iter().enumerate() {
        let n = t.key.chars().count();
        if n == 0 || n > 128 {
            return Err(ApiError::invalid(
                field,
                format!("key {:?} must be 1 to 128 characters", t.key),
            ));
        }
        if t.value.chars().count() > 256 {
            return Err(ApiError::invalid(
                field,
                format!("value of {:?} is longer than 256 characters", t.key),
            ));
        }
        if tags[..i].iter().any(|u| u.key == t.key) {
            return Err(ApiError::invalid(
                field,
                format!("key {:?} is given twice", t.key),
            ));
        }
    }
    Ok(tags.to_vec())
}

/// A network interface name ([`check_interface_name`]).
pub fn interface_name(field: &str, s: &str) -> Result<String, ApiError> {
    check_interface_name(s).map_err(|d| ApiError::invalid(field, d))
}

/// A group name: 1..=255 characters.
pub fn group(field: &str, s: &str) -> Result<String, ApiError> {
    let n = s.chars().count();
    if s.trim().is_empty() || n > MAX_GROUP_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("group names are 1 to {MAX_GROUP_CHARS} characters, not blank"),
        ));
    }
    Ok(s.to_string())
}

/// An id of the given kind, well-formed (an unknown one is refused later, with NotFound).
pub fn id(field: &str, prefix: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() {
        return Err(ApiError::missing(field, "required"));
    }
    if !is_valid_id(prefix, s) {
        return Err(ApiError::invalid(
            field,
            format!("{s:?} is not an id of the form {prefix}<17 lowercase hex digits>"),
        ));
    }
    Ok(())
}

/// A rule's protocol and port range (`tcp` + `443` or `8000-8100`, `udp` + ..., `icmp`
/// alone): `None` when neither is given. `field` names the protocol's field in errors.
pub fn port_match(
    field: &str,
    protocol: Option<&str>,
    ports: Option<&str>,
) -> Result<Option<super::policy::PortMatch>, ApiError> {
    use super::policy::PortMatch;
    let protocol = match protocol.map(str::trim) {
        None | Some("") => {
            return match ports {
                None => Ok(None),
                Some(_) => Err(ApiError::missing(
                    field,
                    "a port range needs its protocol: give protocol tcp or udp",
                )),
            }
        }
        Some(p) => match p.to_ascii_lowercase().as_str() {
            "tcp" | "6" => PortMatch::TCP,
            "udp" | "17" => PortMatch::UDP,
            "icmp" | "1" => PortMatch::ICMP,
            _ => {
                return Err(ApiError::invalid(
                    field,
                    format!("{p:?} is not tcp, udp or icmp"),
                ))
            }
        },
    };
    let (from_port, to_port) = match ports.map(str::trim) {
        None | Some("") if protocol == PortMatch::ICMP => (0, 0),
        None | Some("") => (1, 65535),
        Some(r) if protocol == PortMatch::ICMP => {
            return Err(ApiError::combination(format!(
                "icmp has no ports: remove the port range {r:?}"
            )))
        }
        Some(r) => {
            let parse = |t: &str| {
                t.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "port-range",
                            format!("{r:?}: ports are 1 to 65535, as `443` or `8000-8100`"),
                        )
                    })
            };
            let (a, b) = match r.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => {
                    let p = parse(r)?;
                    (p, p)
                }
            };
            if a > b {
                return Err(ApiError::invalid(
                    "port-range",
                    format!("{r:?}: the first port is above the last"),
                ));
            }
            (a, b)
        }
    };
    Ok(Some(PortMatch {
        protocol,
        from_port,
        to_port,
    }))
}

// ---- PEM material -------------------------------------------------------------------------------

/// Parses a certificate chain (one or more `CERTIFICATE` blocks, each a valid X.509).
pub fn certificates(field: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, ApiError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::invalid(field, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(ApiError::invalid(
            field,
            "no certificate found (expected -----BEGIN CERTIFICATE----- blocks)",
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c.as_ref()).map_err(|e| {
            ApiError::invalid(field, format!("certificate #{} does not parse: {e}", i + 1))
        })?;
    }
    Ok(certs)
}

/// Checks a server certificate chain and private key: both parse, the key type is one the TLS
/// layer can sign with, and the key belongs to the first certificate.
pub fn server_identity(
    cert_field: &str,
    cert_pem: &str,
    key_field: &str,
    key_pem: &str,
) -> Result<(), ApiError> {
    let chain = certificates(cert_field, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        ApiError::invalid(
            key_field,
            format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| ApiError::invalid(key_field, format!("unusable private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(chain, Arc::clone(&signing));
    match certified.keys_match() {
        Ok(()) => Ok(()),
        // The key cannot tell its public key: nothing to compare (the TLS layer decides).
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(_) => Err(ApiError::combination(format!(
            "{key_field} does not match {cert_field}: the private key belongs to another \
             certificate"
        ))),
    }
}

/// Checks a client CA bundle: PEM certificates a TLS root store accepts.
pub fn client_ca(field: &str, pem: &str) -> Result<(), ApiError> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certificates(field, pem)?.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            ApiError::invalid(
                field,
                format!("certificate #{} is not a usable CA: {e}", i + 1),
            )
        })?;
    }
    Ok(())
}

/// The authentication an endpoint uses, as the store keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckedAuthentication {
    /// The client CA bundle (certificate authentication), PEM.
    pub client_ca: Option<String>,
    /// The directory (directory-service authentication).
    pub directory_id: Option<String>,
    /// The identity provider (federated authentication), `idp-…`.
    pub idp_id: Option<String>,
}

impl CheckedAuthentication {
    /// What an endpoint's (stored, already checked) options say.
    pub fn of(opts: &[AuthenticationOption]) -> CheckedAuthentication {
        let mut c = CheckedAuthentication::default();
        for o in opts {
            match o {
                AuthenticationOption::CertificateAuthentication {
                    client_root_certificate_chain,
                } => c.client_ca = Some(client_root_certificate_chain.clone()),
                AuthenticationOption::DirectoryServiceAuthentication { directory_id } => {
                    c.directory_id = Some(directory_id.clone())
                }
                AuthenticationOption::FederatedAuthentication {
                    saml_provider_arn, ..
                } => c.idp_id = Some(idp_of_arn(saml_provider_arn).to_string()),
            }
        }
        c
    }
}

/// The identity provider id an ARN names: `idp-…` itself, or what follows the last `/` of
/// an ARN (`arn:aws:iam::123456789012:saml-provider/idp-…`).
fn idp_of_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// An identity provider named by AWS's `SAMLProviderArn` (an id, or an ARN ending in
/// `/idp-…`): its id.
pub fn idp_arn(field: &str, arn: &str) -> Result<String, ApiError> {
    let id = idp_of_arn(arn.trim());
    if id.is_empty() {
        return Err(ApiError::missing(
            field,
            "required: an identity provider id (idp-…)",
        ));
    }
    if !is_valid_id(IDP_ID_PREFIX, id) {
        return Err(ApiError::invalid(
            field,
            format!(
                "{arn:?} names no identity provider: give its id ({IDP_ID_PREFIX}<17 lowercase \
                 hex digits>, see `cvpn idp list`) or an ARN ending in /{IDP_ID_PREFIX}…"
            ),
        ));
    }
    Ok(id.to_string())
}

/// Checks the authentication options: certificate authentication (with a valid client CA),
/// directory authentication (a well-formed directory id; the store checks it exists),
/// federated authentication (an identity provider id or ARN; the store checks it exists), or
/// certificate authentication with one of the other two (both must pass). Directory and
/// federated authentication do not combine.
pub fn authentication_options(
    field: &str,
    opts: &[AuthenticationOption],
) -> Result<CheckedAuthentication, ApiError> {
    if opts.is_empty() {
        return Err(ApiError::missing(
            field,
            "give an option of type \"certificate-authentication\" with the client CA, \
             \"directory-service-authentication\" with a directory id, \
             \"federated-authentication\" with an identity provider id, or certificate \
             authentication with one of the other two",
        ));
    }
    if opts.len() > 2 {
        return Err(ApiError::invalid(
            field,
            format!(
                "{} options given; at most 2 (certificate plus one user-based)",
                opts.len()
            ),
        ));
    }
    let has = |f: fn(&AuthenticationOption) -> bool| opts.iter().any(f);
    if has(|o| {
        matches!(
            o,
            AuthenticationOption::DirectoryServiceAuthentication { .. }
        )
    }) && has(|o| matches!(o, AuthenticationOption::FederatedAuthentication { .. }))
    {
        return Err(ApiError::combination(format!(
            "{field}: directory-service-authentication and federated-authentication cannot be combined"
        )));
    }
    let mut checked = CheckedAuthentication::default();
    for o in opts {
        match o {
            AuthenticationOption::CertificateAuthentication {
                client_root_certificate_chain,
            } => {
                if checked.client_ca.is_some() {
                    return Err(ApiError::combination(format!(
                        "{field}: certificate-authentication is given twice"
                    )));
                }
                client_ca(
                    &format!("{field}.client-root-certificate-chain"),
                    client_root_certificate_chain,
                )?;
                checked.client_ca = Some(client_root_certificate_chain.clone());
            }
            AuthenticationOption::DirectoryServiceAuthentication { directory_id } => {
                if checked.directory_id.is_some() {
                    return Err(ApiError::combination(format!(
                        "{field}: directory-service-authentication is given twice"
                    )));
                }
                id(
                    &format!("{field}.directory-id"),
                    super::ids::DIRECTORY_ID_PREFIX,
                    directory_id,
                )?;
                checked.directory_id = Some(directory_id.clone());
            }
            AuthenticationOption::FederatedAuthentication {
                saml_provider_arn,
                self_service_saml_provider_arn,
            } => {
                if checked.idp_id.is_some() {
                    return Err(ApiError::combination(format!(
                        "{field}: federated-authentication is given twice"
                    )));
                }
                let idp = idp_arn(&format!("{field}.saml-provider-arn"), saml_provider_arn)?;
                if let Some(ss) = self_service_saml_provider_arn {
                    let sub = format!("{field}.self-service-saml-provider-arn");
                    let other = idp_arn(&sub, ss)?;
                    if other != idp {
                        return Err(ApiError::combination(format!(
                            "{sub}: {other} differs from saml-provider-arn ({idp}); the \
                             self-service portal signs users in with the endpoint's own \
                             identity provider: leave it out or give the same one"
                        )));
                    }
                }
                checked.idp_id = Some(idp);
            }
        }
    }
    Ok(checked)
}

/// The self-service portal needs federated authentication (`federated`: the endpoint has it).
/// The portal signs people in the way the endpoint does: it needs an identity provider or a
/// directory (`signs_in_users`); certificates alone have no sign-in for it.
pub fn self_service_portal(field: &str, on: bool, signs_in_users: bool) -> Result<bool, ApiError> {
    if on && !signs_in_users {
        return Err(ApiError::combination(format!(
            "{field}: the self-service portal signs users in with the endpoint's identity \
             provider or directory: create the endpoint with --idp (`cvpn idp create`) or \
             --directory (`cvpn directory create`)"
        )));
    }
    Ok(on)
}

/// A parsed CRL bundle.
pub struct ParsedCrl {
    /// Number of CRLs.
    pub crls: usize,
    /// Revoked serials over all of them.
    pub revoked_serials: Vec<String>,
}

/// Parses one or more `X509 CRL` PEM blocks, checks that each is issued by one of the client CA
/// certificates (by name), and counts the revoked entries against `cap`.
pub fn crl(field: &str, pem: &str, client_ca_pem: &str, cap: usize) -> Result<ParsedCrl, ApiError> {
    let ca_subjects: Vec<Vec<u8>> = certificates("client CA", client_ca_pem)?
        .iter()
        .filter_map(|c| {
            x509_parser::parse_x509_certificate(c.as_ref())
                .ok()
                .map(|(_, x)| x.subject().as_raw().to_vec())
        })
        .collect();
    let mut crls = 0;
    let mut revoked_serials = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| ApiError::invalid(field, format!("not PEM: {e}")))?;
        if block.label != "X509 CRL" {
            return Err(ApiError::invalid(
                field,
                format!(
                    "found a {:?} PEM block; expected -----BEGIN X509 CRL----- blocks only",
                    block.label
                ),
            ));
        }
        crls += 1;
        let (_, list) = x509_parser::parse_x509_crl(&block.contents)
            .map_err(|e| ApiError::invalid(field, format!("CRL #{crls} does not parse: {e}")))?;
        if !ca_subjects
            .iter()
            .any(|s| s.as_slice() == list.issuer().as_raw())
        {
            return Err(ApiError::invalid(
                field,
                format!(
                    "CRL #{crls} is issued by \"{}\", which is not the endpoint's client CA",
                    list.issuer()
                ),
            ));
        }
        for r in list.iter_revoked_certificates() {
            revoked_serials.push(r.raw_serial_as_string());
            if revoked_serials.len() > cap {
                return Err(ApiError::new(
                    super::error::codes::CRL_LIMIT_EXCEEDED,
                    format!(
                        "{field}: more than {cap} revoked certificates; a CRL may list at most \
                         {cap} entries"
                    ),
                ));
            }
        }
    }
    if crls == 0 {
        return Err(ApiError::invalid(
            field,
            "no CRL found (expected -----BEGIN X509 CRL----- blocks)",
        ));
    }
    Ok(ParsedCrl {
        crls,
        revoked_serials,
    })
}

// ---- directories --------------------------------------------------------------------------------

/// Directory URLs: 1 to 8, each `ldap://HOST[:PORT]` or `ldaps://HOST[:PORT]`, nothing after
/// the port.
pub fn directory_urls(field: &str, urls: &[String]) -> Result<Vec<String>, ApiError> {
    if urls.is_empty() {
        return Err(ApiError::missing(
            field,
            "give at least one URL, e.g. ldaps://dc1.example.com (several: tried in order)",
        ));
    }
    if urls.len() > 8 {
        return Err(ApiError::invalid(field, "at most 8 URLs"));
    }
    for u in urls {
        let rest = u
            .strip_prefix("ldaps://")
            .or_else(|| u.strip_prefix("ldap://"))
            .ok_or_else(|| {
                ApiError::invalid(
                    field,
                    format!("{u:?}: use ldaps://HOST[:PORT] or ldap://HOST[:PORT] (StartTLS)"),
                )
            })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
            _ => (rest, None),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
        if !host_ok || !port_ok {
            return Err(ApiError::invalid(
                field,
                format!("{u:?}: not HOST[:PORT] after the scheme"),
            ));
        }
    }
    Ok(urls.to_vec())
}

/// A distinguished name: 1..=1024 characters, with `=`, no control characters.
pub fn dn(field: &str, s: &str) -> Result<String, ApiError> {
    if s.trim().is_empty() || !s.contains('=') || s.chars().count() > 1024 {
        return Err(ApiError::invalid(
            field,
            format!("{s:?} is not a DN (e.g. dc=example,dc=com)"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, "contains control characters"));
    }
    Ok(s.to_string())
}

/// A user search filter: parenthesized, with `{username}`, at most 1024 characters.
pub fn user_filter(field: &str, s: &str) -> Result<String, ApiError> {
    let balanced = s.chars().try_fold(0i32, |depth, c| {
        let d = match c {
            '(' => depth + 1,
            ')' => depth - 1,
            _ => depth,
        };
        (d >= 0).then_some(d)
    }) == Some(0);
    if !s.starts_with('(') || !balanced || !s.contains("{username}") || s.len() > 1024 {
        return Err(ApiError::invalid(
            field,
            format!(
                "{s:?}: give an LDAP filter in parentheses with {{username}} where the user \
                 name goes, e.g. (uid={{username}})"
            ),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, "contains control characters"));
    }
    Ok(s.to_string())
}

/// A directory's name: 1..=64 of `A-Z a-z 0-9 . _ -`.
pub fn directory_name(field: &str, s: &str) -> Result<String, ApiError> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ApiError::invalid(
            field,
            format!("{s:?}: 1 to 64 letters, digits, '.', '_' or '-'"),
        ));
    }
    Ok(s.to_string())
}

/// A number within bounds.
pub fn bounded(field: &str, n: i64, min: i64, max: i64, unit: &str) -> Result<u32, ApiError> {
    if n < min || n > max {
        return Err(ApiError::invalid(
            field,
            format!("{n}: give {min} to {max} {unit}"),
        ));
    }
    u32::try_from(n).map_err(|_| ApiError::invalid(field, "out of range"))
}

/// A secret (bind password, RADIUS secret): 1..=1024 bytes, no NUL or line breaks.
pub fn secret(field: &str, s: &str) -> Result<String, ApiError> {
    if s.is_empty() || s.len() > 1024 || s.contains(['\0', '\n', '\r']) {
        return Err(ApiError::invalid(
            field,
            "1 to 1024 bytes without NUL or line breaks (a trailing newline of a file is removed)",
        ));
    }
    Ok(s.to_string())
}

/// `ADDRESS:PORT` of a RADIUS server: an IP address (RADIUS shared secrets are per client
/// address; AWS takes addresses too), port 1..=65535.
pub fn host_port(field: &str, s: &str) -> Result<String, ApiError> {
    match s.parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a.to_string()),
        _ => Err(ApiError::invalid(
            field,
            format!("{s:?}: give ADDRESS:PORT, e.g. 10.0.0.5:1812 or [2001:db8::5]:1812"),
        )),
    }
}

/// A user name for MFA enrolment: 1..=256 characters, no control characters.
pub fn username(field: &str, s: &str) -> Result<String, ApiError> {
    if s.trim().is_empty() || s.chars().count() > 256 || s.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "1 to 256 characters, no control characters",
        ));
    }
    Ok(s.to_string())
}

// ---- identity providers -------------------------------------------------------------------------

/// True for the hosts plain `http://` is allowed to: the loopback ones.
fn is_loopback_host(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1")
}

/// An `https://HOST[:PORT][/PATH]` URL, or `http://` to a loopback host (`127.0.0.1`,
/// `localhost`, `[::1]`: a provider on the gateway itself, e.g. in tests). No query, fragment,
/// user info or white space.
pub fn https_url(field: &str, s: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid(field, format!("{s:?}: {why}"));
    if s.len() > 2048 {
        return Err(bad("longer than 2048 characters"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains white space"));
    }
    let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("give an https:// URL"));
    };
    if s.contains(['?', '#']) {
        return Err(bad("a query or fragment is not allowed here"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad("user information (user@host) is not allowed"));
    }
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[..=i],
            None => return Err(bad("unclosed [ in the host")),
        }
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let port = &authority[host.len()..];
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    let host_ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !host_ok || !port_ok {
        return Err(bad("not scheme://HOST[:PORT][/PATH]"));
    }
    if !https && !is_loopback_host(host) {
        return Err(bad(
            "plain http:// is allowed only to a loopback host (127.0.0.1, localhost, [::1]); \
             use https://",
        ));
    }
    Ok(s.to_string())
}

/// An OIDC claim or SAML attribute name, or an OIDC client id: 1..=256 characters, no white
/// space or control characters.
pub fn token_name(field: &str, s: &str) -> Result<String, ApiError> {
    if s.is_empty()
        || s.chars().count() > 256
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::invalid(
            field,
            format!("{s:?}: 1 to 256 characters without white space"),
        ));
    }
    Ok(s.to_string())
}

/// OIDC scopes: at most 20, each an RFC 6749 scope token; duplicates dropped, `openid` put
/// first when missing.
pub fn oidc_scopes(field: &str, list: &[String]) -> Result<Vec<String>, ApiError> {
    if list.len() > 20 {
        return Err(ApiError::invalid(field, "at most 20 scopes"));
    }
    let mut out: Vec<String> = vec!["openid".to_string()];
    for s in list {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E));
        if !ok {
            return Err(ApiError::invalid(
                field,
                format!("{s:?} is not a scope (printable ASCII, no spaces, quotes or backslashes)"),
            ));
        }
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    Ok(out)
}

/// Reads a SAML 2.0 metadata document: its size (at most
/// [`MAX_SAML_METADATA_BYTES`](super::identity_provider::MAX_SAML_METADATA_BYTES)), its
/// form (XML without a DTD), the `EntityDescriptor`'s `entityID`, the `IDPSSODescriptor`'s
/// `SingleSignOnService` for HTTP-Redirect (preferred) or HTTP-POST, whose `Location` must be
/// an [`https_url`], and its signing certificates (X.509, at least one). Signatures are not
/// checked here.
pub fn saml_metadata(
    field: &str,
    xml: &str,
) -> Result<super::identity_provider::SamlMetadata, ApiError> {
    use super::identity_provider::*;
    const MD: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
    const DS: &str = "http://www.w3.org/2000/09/xmldsig#";
    if xml.len() > MAX_SAML_METADATA_BYTES {
        return Err(ApiError::invalid(
            field,
            format!(
                "{} bytes; metadata may be at most {MAX_SAML_METADATA_BYTES} bytes",
                xml.len()
            ),
        ));
    }
    let doc = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 100_000,
        },
    )
    .map_err(|e| ApiError::invalid(field, format!("not an XML document: {e}")))?;
    let is = |n: &roxmltree::Node<'_, '_>, ns: &str, name: &str| {
        n.is_element() && n.tag_name().name() == name && n.tag_name().namespace() == Some(ns)
    };
    let entity = doc
        .descendants()
        .find(|n| {
            is(n, MD, "EntityDescriptor") && n.children().any(|c| is(&c, MD, "IDPSSODescriptor"))
        })
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                "no md:EntityDescriptor with an md:IDPSSODescriptor (namespace \
                 urn:oasis:names:tc:SAML:2.0:metadata): give the identity provider's metadata, \
                 not a service provider's",
            )
        })?;
    let entity_id = entity
        .attribute("entityID")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid(field, "the EntityDescriptor has no entityID"))?
        .to_string();
    if entity_id.len() > 1024 {
        return Err(ApiError::invalid(
            field,
            "the entityID is longer than 1024 characters",
        ));
    }
    let idp = entity
        .children()
        .find(|c| is(c, MD, "IDPSSODescriptor"))
        .expect("found above");
    let sso = |binding: &str| {
        idp.children()
            .filter(|c| is(c, MD, "SingleSignOnService"))
            .find(|c| c.attribute("Binding") == Some(binding))
            .and_then(|c| c.attribute("Location"))
            .map(str::trim)
    };
    let (sso_url, sso_binding) =
        match (sso(SAML_BINDING_HTTP_REDIRECT), sso(SAML_BINDING_HTTP_POST)) {
            (Some(u), _) => (u, SamlBinding::HttpRedirect),
            (None, Some(u)) => (u, SamlBinding::HttpPost),
            (None, None) => {
                return Err(ApiError::invalid(
                    field,
                    "the IDPSSODescriptor has no SingleSignOnService with the HTTP-Redirect or \
                 HTTP-POST binding and a Location",
                ))
            }
        };
    let sso_url = https_url(&format!("{field} SingleSignOnService Location"), sso_url)?;
    let mut signing_certificates = Vec::new();
    for kd in idp.children().filter(|c| is(c, MD, "KeyDescriptor")) {
        if !matches!(kd.attribute("use"), None | Some("signing")) {
            continue;
        }
        for cert in kd.descendants().filter(|c| is(c, DS, "X509Certificate")) {
            let b64: String = cert
                .text()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            use base64::Engine as _;
            let der = base64::engine::general_purpose::STANDARD
                .decode(&b64)
                .map_err(|e| {
                    ApiError::invalid(
                        field,
                        format!(
                            "signing certificate #{} is not base64: {e}",
                            signing_certificates.len() + 1
                        ),
                    )
                })?;
            x509_parser::parse_x509_certificate(&der).map_err(|e| {
                ApiError::invalid(
                    field,
                    format!(
                        "signing certificate #{} is not an X.509 certificate: {e}",
                        signing_certificates.len() + 1
                    ),
                )
            })?;
            if !signing_certificates.contains(&b64) {
                signing_certificates.push(b64);
            }
        }
    }
    if signing_certificates.is_empty() {
        return Err(ApiError::invalid(
            field,
            "the IDPSSODescriptor has no signing certificate (KeyDescriptor use=\"signing\" \
             with ds:X509Certificate): responses could not be verified",
        ));
    }
    Ok(SamlMetadata {
        entity_id,
        sso_url,
        sso_binding,
        signing_certificates,
    })
}
