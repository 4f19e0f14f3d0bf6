//! The configuration file of `cvpn serve --config FILE`: one endpoint, its target networks,
//! routes and authorization rules, in TOML.
//!
//! ```toml
//! [endpoint]
//! client_cidr = "10.2.0.0/22"     # required; /12 .. /22
//! transport = "udp"               # "udp" (default) | "tcp"
//! port = 443                      # default 443
//! listen = "0.0.0.0"              # default "0.0.0.0"; any IPv4 or IPv6 address
//! server_cert = "/etc/cvpn/server.crt"   # required
//! server_key = "/etc/cvpn/server.key"    # required
//! client_ca = "/etc/cvpn/ca.crt"         # required, unless `directory` is given (cvpn apply)
//! directory = "corp-ad"                  # optional (cvpn apply): users also sign in against it
//! idp = "corp-sso"                       # optional (cvpn apply): single sign-on; not with directory
//! self_service_portal = false            # default false; true needs idp (cvpn apply)
//! crl = "/etc/cvpn/crl.pem"              # optional
//! split_tunnel = false            # default false
//! dns_servers = ["10.88.0.2"]     # at most 2, default []
//! key_derivation = "tls-ekm"      # default; "tls-prf" forces OpenVPN's legacy TLS-PRF
//! ping = 10                       # keepalive: seconds between pings on an idle tunnel
//! ping_restart = 60               # seconds of silence before a client restarts (server: 2x)
//! reneg_sec = 3600                # server-initiated key renegotiation; 0 = off
//! offloads = true                 # TUN checksum/TCP segmentation offloads (serve --config only)
//!
//! [[target_network]]
//! interface = "eth1"              # a gateway-host interface traffic leaves through
//! snat_address = "10.88.0.5"      # optional: source address on that network
//!
//! [[route]]
//! destination = "10.88.0.0/24"
//! target = "eth1"                 # the interface of a [[target_network]]
//!
//! [[authorization_rule]]
//! destination = "10.88.0.0/24"
//! all_groups = true               # exactly one of all_groups = true ...
//! # group = "engineering"         # ... or group = "name"
//! description = "everyone"        # optional
//! ```
//!
//! Loading is two steps: serde reads the TOML into raw structs (unknown keys are refused), then
//! a validation pass checks values and turns them into the typed [`EndpointConfig`]. Every error
//! names the table (and, for arrays of tables, the 1-based index `#n`) and the key.
//!
//! # What validation can and cannot check
//!
//! The client CIDR must not overlap any route destination (a `0.0.0.0/0` route, the usual
//! full-tunnel internet route, is the one exception: longest-prefix matching keeps the client
//! CIDR's own addresses out of it). The subnets of the target networks are not written in the
//! file (a target network is named by its interface), so overlap with them is checked by the
//! daemon once it has read the interfaces' addresses, not here; likewise the route the daemon
//! adds for each target network's own subnet. Certificate and key paths are not read here
//! either: the TLS layer loads them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;
use thiserror::Error;

use crate::dataplane::policy::{Access, AuthorizationRule, Policy, Route};

use crate::model::validate::{self, overlaps};
pub use crate::model::{MAX_CLIENT_PREFIX, MAX_DNS_SERVERS, MIN_CLIENT_PREFIX};
/// Default listening port.
pub const DEFAULT_PORT: u16 = 443;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but its contents are refused.
    #[error("config file {}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong inside it.
        source: Box<ConfigError>,
    },
    /// Not TOML, or a value of the wrong TOML type.
    #[error("invalid TOML: {0}")]
    Toml(String),
    /// A key or table this format does not have.
    #[error("unknown key {key:?} in {table}{hint}")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it was: `[endpoint]`, `[[route]] #2`, or `the top level`.
        table: String,
        /// A suggestion (`; did you mean "client_cidr"?`) or the list of known keys.
        hint: String,
    },
    /// A value is missing or invalid.
    #[error("{at}: {message}")]
    Invalid {
        /// Table and key, e.g. `[endpoint] client_cidr` or `[[authorization_rule]] #2`.
        at: String,
        /// What is wrong and what to write instead.
        message: String,
    },
}

fn invalid(at: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        at: at.into(),
        message: message.into(),
    }
}

/// The transport the endpoint listens on (the API's type: one spelling everywhere).
pub use crate::model::TransportProtocol as Transport;

/// A target network: a gateway-host interface that client traffic leaves through.
///
/// An `[[target_network]]` entry of the endpoint file. The same concept at other layers: the API
/// resource [`crate::model::TargetNetwork`] (an association), the data plane's
/// [`crate::model::TargetSpec`] (what both are turned into) and the kernel map value
/// `gateway_common::TargetNetwork`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetNetwork {
    /// The interface name, e.g. `eth1`.
    pub interface: String,
    /// The source address for SNAT on that network; `None` lets the daemon use the interface's
    /// own address.
    pub snat_address: Option<Ipv4Addr>,
}

/// A route: traffic to `destination` leaves through the target network on `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// The destination network.
    pub destination: Ipv4Net,
    /// The interface of a declared [`TargetNetwork`].
    pub target: String,
}

/// An authorization rule: who may reach `destination`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationRuleConfig {
    /// The destination network.
    pub destination: Ipv4Net,
    /// All groups, or one named group.
    pub access: Access,
    /// Free text for the operator.
    pub description: Option<String>,
}

/// A validated endpoint configuration: everything `cvpn serve` needs from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The client CIDR (network address, /12../22).
    pub client_cidr: Ipv4Net,
    /// UDP or TCP.
    pub transport: Transport,
    /// The listening port (1..=65535).
    pub port: u16,
    /// The listening address.
    pub listen: IpAddr,
    /// PEM server certificate (chain).
    pub server_cert: PathBuf,
    /// PEM server private key.
    pub server_key: PathBuf,
    /// PEM CA that client certificates must chain to; `None` only with [`Self::directory`]
    /// (a directory-only endpoint, for `cvpn apply`).
    pub client_ca: Option<PathBuf>,
    /// PEM certificate revocation list, if any.
    pub crl: Option<PathBuf>,
    /// A directory (id or name) users also sign in against (`cvpn apply` only; both the
    /// certificate and the directory must pass).
    pub directory: Option<String>,
    /// An identity provider (id or name) users sign in at (`cvpn apply` only; with
    /// `client_ca` both must pass). Not with [`Self::directory`].
    pub idp: Option<String>,
    /// The self-service portal (needs [`Self::idp`]).
    pub self_service_portal: bool,
    /// Split tunnel: push the routes instead of `redirect-gateway`.
    pub split_tunnel: bool,
    /// DNS servers pushed to clients (at most [`MAX_DNS_SERVERS`]).
    pub dns_servers: Vec<Ipv4Addr>,
    /// How data-channel keys are derived: TLS-EKM where the client supports it (default), or
    /// always OpenVPN's legacy TLS-PRF (`key_derivation = "tls-prf"`).
    pub key_derivation: KeyDerivation,
    /// Keepalive: seconds between pings on an idle tunnel (pushed as `ping`), and of silence
    /// after which a client restarts (pushed as `ping-restart`; the server waits twice as
    /// long before it drops the client, as OpenVPN's `keepalive` does).
    pub ping: u32,
    pub ping_restart: u32,
    /// Seconds after which the server renegotiates a session's data keys (OpenVPN's
    /// `reneg-sec`, default 3600); 0 leaves it to the clients.
    pub reneg_sec: u32,
    /// TUN offloads (`offloads`, default true): TCP super-packets between the TUN and the
    /// data channel, cut and joined in userspace. Only `cvpn serve --config` reads it.
    pub offloads: bool,
    /// Target networks, in file order (interfaces unique).
    pub target_networks: Vec<TargetNetwork>,
    /// Routes, in file order (destinations unique).
    pub routes: Vec<RouteConfig>,
    /// Authorization rules, in file order.
    pub authorization_rules: Vec<AuthorizationRuleConfig>,
}

/// How data-channel keys are derived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyDerivation {
    /// TLS-EKM for clients that support it (OpenVPN 2.5.4+), the legacy TLS-PRF for others.
    #[default]
    Auto,
    /// Always the legacy TLS-PRF.
    TlsPrf,
}

// ---- raw (serde) layer ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    endpoint: RawEndpoint,
    #[serde(default)]
    target_network: Vec<RawTargetNetwork>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    authorization_rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    client_cidr: String,
    transport: Option<String>,
    /// Wide, so that out-of-range ports get our message rather than a type error.
    port: Option<i64>,
    listen: Option<String>,
    server_cert: String,
    server_key: String,
    client_ca: Option<String>,
    crl: Option<String>,
    directory: Option<String>,
    idp: Option<String>,
    #[serde(default)]
    self_service_portal: bool,
    #[serde(default)]
    split_tunnel: bool,
    #[serde(default)]
    dns_servers: Vec<String>,
    key_derivation: Option<String>,
    ping: Option<i64>,
    ping_restart: Option<i64>,
    reneg_sec: Option<i64>,
    offloads: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargetNetwork {
    interface: String,
    snat_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    destination: String,
    target: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    destination: String,
    all_groups: Option<bool>,
    group: Option<String>,
    description: Option<String>,
}

/// Keys of each table: (name, required). Checked before serde so that errors name the table
/// and index (serde alone reports only a line and column).
const ENDPOINT_KEYS: &[(&str, bool)] = &[
    ("client_cidr", true),
    ("transport", false),
    ("port", false),
    ("listen", false),
    ("server_cert", true),
    ("server_key", true),
    ("client_ca", false),
    ("crl", false),
    ("directory", false),
    ("idp", false),
    ("self_service_portal", false),
    ("split_tunnel", false),
    ("dns_servers", false),
    ("key_derivation", false),
    ("ping", false),
    ("ping_restart", false),
    ("reneg_sec", false),
    ("offloads", false),
];
const TARGET_NETWORK_KEYS: &[(&str, bool)] = &[("interface", true), ("snat_address", false)];
const ROUTE_KEYS: &[(&str, bool)] = &[("destination", true), ("target", true)];
const RULE_KEYS: &[(&str, bool)] = &[
    ("destination", true),
    ("all_groups", false),
    ("group", false),
    ("description", false),
];
const ARRAYS: &[(&str, &[(&str, bool)])] = &[
    ("target_network", TARGET_NETWORK_KEYS),
    ("route", ROUTE_KEYS),
    ("authorization_rule", RULE_KEYS),
];

fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// True if `typed` looks like a misspelling of `known`: same letters ignoring case, `_` and `-`,
/// or a plural `s` too many or too few.
fn similar(known: &str, typed: &str) -> bool {
    let (k, t) = (squash(known), squash(typed));
    k == t || format!("{k}s") == t || format!("{t}s") == k
}

fn unknown_key(key: &str, table: &str, known: &[&str]) -> ConfigError {
    let hint = match known.iter().find(|k| similar(k, key)) {
        Some(k) => format!("; did you mean {k:?}?"),
        None => format!("; known keys: {}", known.join(", ")),
    };
    ConfigError::UnknownKey {
        key: key.to_string(),
        table: table.to_string(),
        hint,
    }
}

fn check_keys(table: &toml::Table, name: &str, keys: &[(&str, bool)]) -> Result<(), ConfigError> {
    let known: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
    if let Some(k) = table.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(unknown_key(k, name, &known));
    }
    if let Some((k, _)) = keys.iter().find(|(k, req)| *req && !table.contains_key(*k)) {
        return Err(invalid(
            format!("{name} {k}"),
            "missing; this key is required",
        ));
    }
    Ok(())
}

/// Checks table structure, key names and required keys, so that the messages say where.
fn check_structure(doc: &toml::Table) -> Result<(), ConfigError> {
    let top: Vec<&str> = ["endpoint"]
        .into_iter()
        .chain(ARRAYS.iter().map(|(n, _)| *n))
        .collect();
    for (key, value) in doc {
        if !top.contains(&key.as_str()) {
            let what = if value.is_table() || value.is_array() {
                "table"
            } else {
                "key"
            };
            let hint = match top.iter().find(|k| similar(k, key)) {
                Some(k) => format!("; did you mean {k:?}?"),
                None => "; known tables: [endpoint], [[target_network]], [[route]], \
                         [[authorization_rule]]"
                    .to_string(),
            };
            return Err(ConfigError::UnknownKey {
                key: key.clone(),
                table: format!("the top level ({what})"),
                hint,
            });
        }
    }
    match doc.get("endpoint") {
        None => {
            return Err(invalid(
                "[endpoint]",
                "missing; the file must have an [endpoint] table",
            ))
        }
        Some(toml::Value::Table(t)) => check_keys(t, "[endpoint]", ENDPOINT_KEYS)?,
        Some(_) => return Err(invalid("endpoint", "must be a table: write [endpoint]")),
    }
    for (name, keys) in ARRAYS {
        let Some(value) = doc.get(*name) else {
            continue;
        };
        let items = match value {
            toml::Value::Array(items) => items,
            _ => {
                return Err(invalid(
                    *name,
                    format!("must be an array of tables: write [[{name}]]"),
                ))
            }
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("[[{name}]] #{}", i + 1);
            match item {
                toml::Value::Table(t) => check_keys(t, &at, keys)?,
                _ => return Err(invalid(at, format!("must be a table: write [[{name}]]"))),
            }
        }
    }
    Ok(())
}

// ---- validation -------------------------------------------------------------------------------

// The rules are the API's ([`validate`]); only the error type differs.

fn cidr(at: &str, s: &str) -> Result<Ipv4Net, ConfigError> {
    validate::check_cidr(s).map_err(|d| invalid(at, d))
}

fn ipv4(at: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    validate::check_ipv4(s).map_err(|d| invalid(at, d))
}

fn path(at: &str, s: &str) -> Result<PathBuf, ConfigError> {
    if s.trim().is_empty() {
        return Err(invalid(at, "is empty; give the path of a PEM file"));
    }
    Ok(PathBuf::from(s))
}

fn interface_name(at: &str, s: &str) -> Result<String, ConfigError> {
    validate::check_interface_name(s).map_err(|d| invalid(at, d))
}

fn validate(raw: RawConfig) -> Result<EndpointConfig, ConfigError> {
    let e = raw.endpoint;
    const EP: &str = "[endpoint]";
    let at = |k: &str| format!("{EP} {k}");

    let client_cidr =
        validate::check_client_cidr(&e.client_cidr).map_err(|d| invalid(at("client_cidr"), d))?;
    let transport = match e.transport.as_deref().unwrap_or("udp") {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        other => {
            return Err(invalid(
                at("transport"),
                format!("{other:?} is not one of \"udp\", \"tcp\""),
            ))
        }
    };
    let port = match e.port {
        None => DEFAULT_PORT,
        Some(n) => u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(at("port"), format!("{n} is not a port number (1..=65535)")))?,
    };
    let listen = match e.listen.as_deref() {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(s) => s.trim().parse().map_err(|_| {
            invalid(
                at("listen"),
                format!("{s:?} is not an IP address (e.g. \"0.0.0.0\" or \"::\")"),
            )
        })?,
    };
    let server_cert = path(&at("server_cert"), &e.server_cert)?;
    let server_key = path(&at("server_key"), &e.server_key)?;
    if e.directory.is_some() && e.idp.is_some() {
        return Err(invalid(
            at("idp"),
            "directory and idp cannot be combined: users sign in with one or the other",
        ));
    }
    if e.self_service_portal && e.idp.is_none() {
        return Err(invalid(
            at("self_service_portal"),
            "the self-service portal needs single sign-on: give `idp = \"NAME\"` too",
        ));
    }
    let client_ca = match (&e.client_ca, e.directory.is_some() || e.idp.is_some()) {
        (Some(s), _) => Some(path(&at("client_ca"), s)?),
        (None, true) => None,
        (None, false) => {
            return Err(invalid(
                at("client_ca"),
                "required: the CA client certificates chain to (or `directory = \"NAME\"` or \
                 `idp = \"NAME\"` for an endpoint whose users sign in with a directory or an \
                 identity provider only, through `cvpn apply`)"
                    .to_string(),
            ))
        }
    };
    let crl = e.crl.as_deref().map(|s| path(&at("crl"), s)).transpose()?;
    let dns_servers =
        validate::check_dns_servers(&e.dns_servers).map_err(|d| invalid(at("dns_servers"), d))?;

    let mut target_networks: Vec<TargetNetwork> = Vec::new();
    for (i, t) in raw.target_network.into_iter().enumerate() {
        let at = |k: &str| format!("[[target_network]] #{} {k}", i + 1);
        let interface = interface_name(&at("interface"), &t.interface)?;
        if let Some(j) = target_networks
            .iter()
            .position(|x| x.interface == interface)
        {
            return Err(invalid(
                at("interface"),
                format!(
                    "{interface:?} is already declared by [[target_network]] #{}",
                    j + 1
                ),
            ));
        }
        let snat_address = t
            .snat_address
            .as_deref()
            .map(|s| ipv4(&at("snat_address"), s))
            .transpose()?;
        target_networks.push(TargetNetwork {
            interface,
            snat_address,
        });
    }

    let mut routes: Vec<RouteConfig> = Vec::new();
    for (i, r) in raw.route.into_iter().enumerate() {
        let at = |k: &str| format!("[[route]] #{} {k}", i + 1);
        let destination = cidr(&at("destination"), &r.destination)?;
        if destination.prefix_len() != 0 && overlaps(&destination, &client_cidr) {
            return Err(invalid(
                at("destination"),
                format!(
                    "{destination} overlaps the client CIDR {client_cidr}; routes must not \
                     cover client addresses (only 0.0.0.0/0 may)"
                ),
            ));
        }
        if !target_networks.iter().any(|t| t.interface == r.target) {
            let declared: Vec<String> = target_networks
                .iter()
                .map(|t| format!("{:?}", t.interface))
                .collect();
            let declared = if declared.is_empty() {
                "none".to_string()
            } else {
                declared.join(", ")
            };
            return Err(invalid(
                at("target"),
                format!(
                    "{:?} is not the interface of a [[target_network]] (declared: {declared})",
                    r.target
                ),
            ));
        }
        if let Some(j) = routes.iter().position(|x| x.destination == destination) {
            return Err(invalid(
                format!("[[route]] #{}", i + 1),
                format!(
                    "duplicate route: [[route]] #{} already routes {destination}; a destination \
                     can have only one target",
                    j + 1
                ),
            ));
        }
        routes.push(RouteConfig {
            destination,
            target: r.target,
        });
    }

    let mut authorization_rules: Vec<AuthorizationRuleConfig> = Vec::new();
    for (i, r) in raw.authorization_rule.into_iter().enumerate() {
        let here = format!("[[authorization_rule]] #{}", i + 1);
        let destination = cidr(&format!("{here} destination"), &r.destination)?;
        let access = match (r.all_groups.unwrap_or(false), r.group) {
            (true, None) => Access::AllGroups,
            (false, Some(g)) => {
                if g.trim().is_empty() {
                    return Err(invalid(
                        format!("{here} group"),
                        "is empty; give a group name",
                    ));
                }
                Access::Group(g)
            }
            _ => {
                return Err(invalid(
                    here,
                    "set exactly one of all_groups = true or group = \"...\"",
                ));
            }
        };
        if let Some(j) = authorization_rules
            .iter()
            .position(|x| x.destination == destination && x.access == access)
        {
            return Err(invalid(
                here,
                format!(
                    "duplicate of [[authorization_rule]] #{} (same destination and access)",
                    j + 1
                ),
            ));
        }
        authorization_rules.push(AuthorizationRuleConfig {
            destination,
            access,
            description: r.description,
        });
    }

    let key_derivation = match e.key_derivation.as_deref() {
        None | Some("auto") | Some("tls-ekm") => KeyDerivation::Auto,
        Some("tls-prf") => KeyDerivation::TlsPrf,
        Some(other) => {
            return Err(invalid(
                "[endpoint] key_derivation".to_string(),
                format!("{other:?} is not a key derivation: use \"tls-ekm\" (default: TLS-EKM where the client supports it) or \"tls-prf\" (always the legacy TLS-PRF)"),
            ))
        }
    };

    let ping = e.ping.unwrap_or(10);
    let ping_restart = e.ping_restart.unwrap_or(60);
    if !(1..=3600).contains(&ping) {
        return Err(invalid(
            "[endpoint] ping".to_string(),
            format!("{ping} is out of range: seconds between keepalive pings, 1 to 3600"),
        ));
    }
    if !(2..=86400).contains(&ping_restart) || ping_restart <= ping {
        return Err(invalid(
            "[endpoint] ping_restart".to_string(),
            format!("{ping_restart} must be more than ping ({ping}) and at most 86400 seconds"),
        ));
    }
    let (ping, ping_restart) = (ping as u32, ping_restart as u32);
    let reneg_sec = e.reneg_sec.unwrap_or(3600);
    if !(0..=7 * 86400).contains(&reneg_sec) {
        return Err(invalid(
            "[endpoint] reneg_sec".to_string(),
            format!("{reneg_sec} is out of range: seconds between key renegotiations, 0 (off) to 604800"),
        ));
    }
    let reneg_sec = reneg_sec as u32;

    Ok(EndpointConfig {
        client_cidr,
        transport,
        port,
        listen,
        server_cert,
        server_key,
        client_ca,
        crl,
        directory: e.directory.clone(),
        idp: e.idp.clone(),
        self_service_portal: e.self_service_portal,
        split_tunnel: e.split_tunnel,
        dns_servers,
        key_derivation,
        ping,
        ping_restart,
        reneg_sec,
        offloads: e.offloads.unwrap_or(true),
        target_networks,
        routes,
        authorization_rules,
    })
}

impl EndpointConfig {
    /// Parses and validates a configuration from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))?;
        check_structure(&doc)?;
        // Second pass with serde on the text (not the table) so that type errors carry a line
        // and column.
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        validate(raw)
    }

    /// Reads, parses and validates a configuration file. Errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// The data plane's [`Policy`] for this configuration: every authorization rule, and every
    /// route with its target network's interface mapped to a data-plane target id by
    /// `target_id`. The route for each target network's own subnet is not included: the daemon
    /// adds it once it knows the interface's address.
    pub fn policy(&self, target_id: impl Fn(&str) -> u32) -> Policy {
        Policy {
            rules: self
                .authorization_rules
                .iter()
                .map(|r| AuthorizationRule {
                    destination: r.destination,
                    access: r.access.clone(),
                    ports: None,
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| Route {
                    destination: r.destination,
                    target: target_id(&r.target),
                })
                .collect(),
        }
    }

    /// The target network on `interface`, if declared.
    pub fn target_network(&self, interface: &str) -> Option<&TargetNetwork> {
        self.target_networks
            .iter()
            .find(|t| t.interface == interface)
    }

    /// The route destinations pushed to split-tunnel clients, in file order.
    pub fn route_destinations(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.routes.iter().map(|r| r.destination)
    }

    /// The distinct group names the authorization rules mention, sorted.
    pub fn groups(&self) -> BTreeSet<&str> {
        self.authorization_rules
            .iter()
            .filter_map(|r| match &r.access {
                Access::Group(g) => Some(g.as_str()),
                Access::AllGroups => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[endpoint]
client_cidr = "10.2.0.0/22"
transport = "tcp"
port = 1194
listen = "192.0.2.10"
server_cert = "/etc/cvpn/server.crt"
server_key = "/etc/cvpn/server.key"
client_ca = "/etc/cvpn/ca.crt"
crl = "/etc/cvpn/crl.pem"
split_tunnel = true
dns_servers = ["10.88.0.2", "10.88.0.3"]

[[target_network]]
interface = "eth1"
snat_address = "10.88.0.5"

[[target_network]]
interface = "veth-b"

[[route]]
destination = "10.88.0.0/24"
target = "eth1"

[[route]]
destination = "0.0.0.0/0"
target = "veth-b"

[[authorization_rule]]
destination = "10.88.0.0/24"
group = "engineering"
description = "eng only"

[[authorization_rule]]
destination = "0.0.0.0/0"
all_groups = true
"#;

    const MINIMAL: &str = r#"
[endpoint]
client_cidr = "10.2.0.0/22"
server_cert = "a.crt"
server_key = "a.key"
client_ca = "ca.crt"
"#;

    fn err(text: &str) -> String {
        EndpointConfig::from_toml_str(text).unwrap_err().to_string()
    }

    /// MINIMAL with `extra` appended, and the endpoint line `replace.0` replaced by `replace.1`.
    fn with(replace: (&str, &str), extra: &str) -> String {
        let base = if replace.0.is_empty() {
            MINIMAL.to_string()
        } else {
            MINIMAL.replace(replace.0, replace.1)
        };
        format!("{base}{extra}")
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn full_file() {
        let c = EndpointConfig::from_toml_str(FULL).unwrap();
        assert_eq!(c.client_cidr, net("10.2.0.0/22"));
        assert_eq!(c.transport, Transport::Tcp);
        assert_eq!(c.port, 1194);
        assert_eq!(c.listen, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(c.server_cert, PathBuf::from("/etc/cvpn/server.crt"));
        assert_eq!(c.crl, Some(PathBuf::from("/etc/cvpn/crl.pem")));
        assert!(c.split_tunnel);
        assert_eq!(
            c.dns_servers,
            [
                "10.88.0.2".parse::<Ipv4Addr>().unwrap(),
                "10.88.0.3".parse().unwrap()
            ]
        );
        assert_eq!(c.target_networks.len(), 2);
        assert_eq!(
            c.target_network("eth1").unwrap().snat_address,
            Some("10.88.0.5".parse().unwrap())
        );
        assert_eq!(c.target_network("veth-b").unwrap().snat_address, None);
        assert_eq!(
            c.routes[1],
            RouteConfig {
                destination: net("0.0.0.0/0"),
                target: "veth-b".into()
            }
        );
        assert_eq!(
            c.authorization_rules[0].access,
            Access::Group("engineering".into())
        );
        assert_eq!(
            c.authorization_rules[0].description.as_deref(),
            Some("eng only")
        );
        assert_eq!(c.authorization_rules[1].access, Access::AllGroups);
        assert_eq!(c.groups().into_iter().collect::<Vec<_>>(), ["engineering"]);
        assert_eq!(
            c.route_destinations().collect::<Vec<_>>(),
            [net("10.88.0.0/24"), net("0.0.0.0/0")]
        );
    }

    #[test]
    fn defaults() {
        let c = EndpointConfig::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.transport, Transport::Udp);
        assert_eq!(c.transport.to_string(), "udp");
        assert_eq!(c.port, 443);
        assert_eq!(c.listen, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(!c.split_tunnel);
        assert!(c.dns_servers.is_empty());
        assert_eq!(c.crl, None);
        assert!(
            c.target_networks.is_empty() && c.routes.is_empty() && c.authorization_rules.is_empty()
        );
        let ipv6 = with(("", ""), "").replace("[endpoint]", "[endpoint]\nlisten = \"::\"");
        assert_eq!(
            EndpointConfig::from_toml_str(&ipv6).unwrap().listen,
            "::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn policy_conversion() {
        let c = EndpointConfig::from_toml_str(FULL).unwrap();
        let policy = c.policy(|iface| match iface {
            "eth1" => 7,
            "veth-b" => 9,
            _ => 0,
        });
        assert_eq!(
            policy.routes,
            [
                Route {
                    destination: net("10.88.0.0/24"),
                    target: 7
                },
                Route {
                    destination: net("0.0.0.0/0"),
                    target: 9
                },
            ]
        );
        assert_eq!(
            policy.rules,
            [
                AuthorizationRule {
                    destination: net("10.88.0.0/24"),
                    access: Access::Group("engineering".into()),
                    ports: None,
                },
                AuthorizationRule {
                    destination: net("0.0.0.0/0"),
                    access: Access::AllGroups,
                    ports: None,
                },
            ]
        );
    }

    #[test]
    fn unknown_keys_and_tables() {
        let e = err(&MINIMAL.replace("client_cidr", "clientcidr"));
        assert!(
            e.starts_with("unknown key \"clientcidr\" in [endpoint]"),
            "{e}"
        );
        assert!(e.contains("did you mean \"client_cidr\""), "{e}");
        let e = err(&with(
            ("", ""),
            "\n[[route]]\ndestination = \"10.88.0.0/24\"\ntarget = \"eth1\"\nvia = \"x\"\n",
        ));
        assert!(e.starts_with("unknown key \"via\" in [[route]] #1"), "{e}");
        assert!(e.contains("known keys: destination, target"), "{e}");
        let e = err(&with(
            ("", ""),
            "\n[[routes]]\ndestination = \"10.88.0.0/24\"\n",
        ));
        assert!(
            e.contains("unknown key \"routes\" in the top level (table)")
                && e.contains("did you mean \"route\""),
            "{e}"
        );
        let e = err(&format!("debug = true\n{MINIMAL}"));
        assert!(
            e.contains("unknown key \"debug\" in the top level (key)"),
            "{e}"
        );
        let e = err(&with(("", ""), "\n[[target_network]]\ninterface = \"eth1\"\n[[target_network]]\ninterface = \"eth2\"\nmtu = 1500\n"));
        assert!(
            e.starts_with("unknown key \"mtu\" in [[target_network]] #2"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_misshapen_tables() {
        let e = err("");
        assert!(e.contains("[endpoint]: missing"), "{e}");
        let e = err(&MINIMAL.replace("server_key = \"a.key\"", ""));
        assert_eq!(e, "[endpoint] server_key: missing; this key is required");
        let e = err(&with(
            ("", ""),
            "\n[route]\ndestination = \"10.88.0.0/24\"\n",
        ));
        assert!(
            e.contains("route: must be an array of tables: write [[route]]"),
            "{e}"
        );
        let e = err("endpoint = 3\n");
        assert!(e.contains("endpoint: must be a table"), "{e}");
        let e = err(&with(
            ("", ""),
            "\n[[authorization_rule]]\ndestination = \"10.0.0.0/8\"\n",
        ));
        assert_eq!(
            e,
            "[[authorization_rule]] #1: set exactly one of all_groups = true or group = \"...\""
        );
    }

    #[test]
    fn syntax_and_type_errors() {
        let e = err("[endpoint\n");
        assert!(e.starts_with("invalid TOML"), "{e}");
        let e = err(&MINIMAL.replace("[endpoint]", "[endpoint]\nport = \"443\""));
        assert!(e.starts_with("invalid TOML") && e.contains("port"), "{e}");
        let e = err(&MINIMAL.replace("[endpoint]", "[endpoint]\nsplit_tunnel = \"yes\""));
        assert!(e.contains("split_tunnel"), "{e}");
    }

    #[test]
    fn client_cidr_rules() {
        let e = err(&MINIMAL.replace("10.2.0.0/22", "10.0.0.0/33"));
        assert!(
            e.starts_with("[endpoint] client_cidr: \"10.0.0.0/33\" is not an IPv4 CIDR"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("10.2.0.0/22", "10.2.0.0"));
        assert!(e.contains("is not an IPv4 CIDR"), "{e}");
        let e = err(&MINIMAL.replace("10.2.0.0/22", "10.2.0.0/24"));
        assert!(
            e.contains("/24") && e.contains("between /12 and /22"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("10.2.0.0/22", "10.0.0.0/8"));
        assert!(e.contains("between /12 and /22"), "{e}");
        let e = err(&MINIMAL.replace("10.2.0.0/22", "10.2.1.0/22"));
        assert!(e.contains("host bits") && e.contains("10.2.0.0/22"), "{e}");
        for ok in ["172.16.0.0/12", "10.2.0.0/22", "100.64.0.0/16"] {
            assert!(
                EndpointConfig::from_toml_str(&MINIMAL.replace("10.2.0.0/22", ok)).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn endpoint_value_errors() {
        let set = |line: &str| MINIMAL.replace("[endpoint]", &format!("[endpoint]\n{line}"));
        assert_eq!(
            err(&set("transport = \"sctp\"")),
            "[endpoint] transport: \"sctp\" is not one of \"udp\", \"tcp\""
        );
        assert_eq!(
            err(&set("transport = \"UDP\"")),
            "[endpoint] transport: \"UDP\" is not one of \"udp\", \"tcp\""
        );
        assert_eq!(
            err(&set("port = 0")),
            "[endpoint] port: 0 is not a port number (1..=65535)"
        );
        assert_eq!(
            err(&set("port = 70000")),
            "[endpoint] port: 70000 is not a port number (1..=65535)"
        );
        assert_eq!(
            err(&set("port = -1")),
            "[endpoint] port: -1 is not a port number (1..=65535)"
        );
        assert!(EndpointConfig::from_toml_str(&set("port = 65535")).is_ok());
        assert!(err(&set("listen = \"eth0\""))
            .starts_with("[endpoint] listen: \"eth0\" is not an IP address"));
        assert!(err(&set(
            "dns_servers = [\"1.1.1.1\", \"8.8.8.8\", \"9.9.9.9\"]"
        ))
        .contains("at most 2"));
        assert!(err(&set("dns_servers = [\"::1\"]"))
            .starts_with("[endpoint] dns_servers: \"::1\" is not an IPv4 address"));
        assert!(err(&set("dns_servers = [\"1.1.1.1\", \"1.1.1.1\"]")).contains("listed twice"));
        assert_eq!(
            err(&MINIMAL.replace("\"a.crt\"", "\"\"")),
            "[endpoint] server_cert: is empty; give the path of a PEM file"
        );
        assert!(err(&set("crl = \"  \"")).starts_with("[endpoint] crl: is empty"));
    }

    #[test]
    fn target_network_errors() {
        let tn = |name: &str| format!("\n[[target_network]]\ninterface = \"{name}\"\n");
        let e = err(&with(("", ""), &format!("{}{}", tn("eth1"), tn("eth1"))));
        assert!(e.starts_with("[[target_network]] #2 interface: \"eth1\" is already declared by [[target_network]] #1"), "{e}");
        for bad in ["", "a/b", "has space", "sixteen-chars-xx", "..", "a:b"] {
            let e = err(&with(("", ""), &tn(bad)));
            assert!(e.contains("is not a network interface name"), "{bad}: {e}");
        }
        let e = err(&with(
            ("", ""),
            "\n[[target_network]]\ninterface = \"eth1\"\nsnat_address = \"10.0.0.256\"\n",
        ));
        assert!(
            e.starts_with(
                "[[target_network]] #1 snat_address: \"10.0.0.256\" is not an IPv4 address"
            ),
            "{e}"
        );
    }

    #[test]
    fn route_errors() {
        let tn = "\n[[target_network]]\ninterface = \"eth1\"\n";
        let route = |dst: &str, target: &str| {
            format!("\n[[route]]\ndestination = \"{dst}\"\ntarget = \"{target}\"\n")
        };
        let e = err(&with(
            ("", ""),
            &format!("{tn}{}", route("10.88.0.0/24", "eth9")),
        ));
        assert_eq!(e, "[[route]] #1 target: \"eth9\" is not the interface of a [[target_network]] (declared: \"eth1\")");
        let e = err(&with(("", ""), &route("10.88.0.0/24", "eth1")));
        assert!(e.contains("(declared: none)"), "{e}");
        let e = err(&with(
            ("", ""),
            &format!(
                "{tn}{}{}",
                route("10.88.0.0/24", "eth1"),
                route("10.88.0.0/24", "eth1")
            ),
        ));
        assert!(
            e.starts_with(
                "[[route]] #2: duplicate route: [[route]] #1 already routes 10.88.0.0/24"
            ),
            "{e}"
        );
        // Same destination, another target: also refused (the data plane has one target per prefix).
        let two = "\n[[target_network]]\ninterface = \"eth1\"\n[[target_network]]\ninterface = \"eth2\"\n";
        let e = err(&with(
            ("", ""),
            &format!(
                "{two}{}{}",
                route("10.88.0.0/24", "eth1"),
                route("10.88.0.0/24", "eth2")
            ),
        ));
        assert!(e.contains("duplicate route"), "{e}");
        // Overlap with the client CIDR, either way round.
        for dst in ["10.2.1.0/24", "10.0.0.0/8", "10.2.0.0/22"] {
            let e = err(&with(("", ""), &format!("{tn}{}", route(dst, "eth1"))));
            assert!(
                e.starts_with("[[route]] #1 destination:")
                    && e.contains("overlaps the client CIDR 10.2.0.0/22"),
                "{dst}: {e}"
            );
        }
        let e = err(&with(
            ("", ""),
            &format!("{tn}{}", route("10.88.0.9/24", "eth1")),
        ));
        assert!(e.contains("host bits set; write 10.88.0.0/24"), "{e}");
        // The default route is allowed; an adjacent network is fine.
        assert!(EndpointConfig::from_toml_str(&with(
            ("", ""),
            &format!(
                "{tn}{}{}",
                route("0.0.0.0/0", "eth1"),
                route("10.2.4.0/22", "eth1")
            )
        ))
        .is_ok());
    }

    #[test]
    fn authorization_rule_errors() {
        let rule = |body: &str| {
            format!("\n[[authorization_rule]]\ndestination = \"10.88.0.0/24\"\n{body}\n")
        };
        let ok = rule("all_groups = true");
        let e = err(&with(
            ("", ""),
            &format!("{ok}{}", rule("all_groups = true\ngroup = \"a\"")),
        ));
        assert_eq!(
            e,
            "[[authorization_rule]] #2: set exactly one of all_groups = true or group = \"...\""
        );
        let e = err(&with(("", ""), &rule("all_groups = false")));
        assert_eq!(
            e,
            "[[authorization_rule]] #1: set exactly one of all_groups = true or group = \"...\""
        );
        let e = err(&with(("", ""), &rule("group = \" \"")));
        assert_eq!(
            e,
            "[[authorization_rule]] #1 group: is empty; give a group name"
        );
        let e = err(&with(("", ""), &format!("{ok}{ok}")));
        assert!(
            e.starts_with("[[authorization_rule]] #2: duplicate of [[authorization_rule]] #1"),
            "{e}"
        );
        let e = err(&with(
            ("", ""),
            "\n[[authorization_rule]]\ndestination = \"10.88.0.0/40\"\nall_groups = true\n",
        ));
        assert!(
            e.starts_with(
                "[[authorization_rule]] #1 destination: \"10.88.0.0/40\" is not an IPv4 CIDR"
            ),
            "{e}"
        );
        // all_groups = false next to a group is just the group.
        let c = EndpointConfig::from_toml_str(&with(
            ("", ""),
            &rule("all_groups = false\ngroup = \"ops\""),
        ))
        .unwrap();
        assert_eq!(c.authorization_rules[0].access, Access::Group("ops".into()));
        // Rules may overlap the client CIDR (they only ever match destinations).
        let c = EndpointConfig::from_toml_str(&with(("", ""), &rule("group = \"a\"\n[[authorization_rule]]\ndestination = \"10.88.0.0/24\"\ngroup = \"b\""))).unwrap();
        assert_eq!(c.groups().len(), 2);
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("cvpn-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, FULL).unwrap();
        assert_eq!(
            EndpointConfig::load(&good).unwrap(),
            EndpointConfig::from_toml_str(FULL).unwrap()
        );
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, MINIMAL.replace("client_cidr", "clientcidr")).unwrap();
        let e = EndpointConfig::load(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "config file {}: unknown key \"clientcidr\"",
                bad.display()
            )),
            "{e}"
        );
        let missing = dir.join("missing.toml");
        let e = EndpointConfig::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read config file {}:", missing.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
