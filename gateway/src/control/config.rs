//! The daemon's own configuration: where its data lives, where the API listens, how it logs.
//! Endpoints are not here: they live in the database and are managed through the API, the
//! CLI or `cvpn apply -f`.
//!
//! ```toml
//! # /etc/cvpn/cvpn.toml — every key is optional
//! data_dir = "/var/lib/cvpn"         # database (cvpn.db), connection.log, flow.log
//! listen_address = "0.0.0.0"         # address the endpoints' VPN listeners bind
//! public_host = "vpn.example.com"    # `remote` of exported client profiles
//! # database = "postgres://cvpn@db.example.com/cvpn?sslmode=require"
//! #                                  # a PostgreSQL database shared by a cluster's nodes,
//! #                                  # instead of SQLite in data_dir (the logs stay there)
//! # database_ca = "/etc/cvpn/db-ca.pem"  # roots for the database's TLS certificate
//! # node_name = "gw-a"               # this host's name among the database's nodes
//! #                                  # [default: the host name]
//!
//! [api]
//! socket = "/run/cvpn/api.sock"      # local API (root only: mode 0600)
//! # tcp_listen = "0.0.0.0:8443"      # optional remote API: TLS + bearer token
//! # tls_cert = "/etc/cvpn/api.crt"
//! # tls_key = "/etc/cvpn/api.key"
//! # token_file = "/etc/cvpn/api.token" # mode 0600, >= 32 characters (openssl rand -hex 32)
//!
//! [web]                              # sign-in pages and the self-service portal (HTTPS)
//! # listen = "0.0.0.0:8443"
//! # certificate = "/etc/cvpn/web.crt"  # PEM chain, the name in public_url
//! # key = "/etc/cvpn/web.key"
//! # public_url = "https://vpn.example.com:8443"   # what users' browsers open
//! # sign_in_timeout_seconds = 300    # a web sign-in must be finished within this
//!
//! [aws_api]                          # the AWS-compatible API: aws ec2 … --endpoint-url, boto3
//! # listen = "127.0.0.1:8780"        # plain HTTP only on a loopback address
//! # certificate = "/etc/cvpn/aws.crt" # with key: HTTPS (needed on any other address)
//! # key = "/etc/cvpn/aws.key"
//! # region = "us-east-1"             # the region of ARNs made here
//!
//! [log]
//! stdout = false                     # also print connection- and flow-log lines on stdout
//! max_file_bytes = 10485760          # rotate connection.log / flow.log at this size
//! keep_files = 5                     # rotated generations kept
//!
//! [connections]
//! retention_minutes = 60             # ended connections stay listed this long (AWS: 60)
//! counters_seconds = 5               # how often live counters are written to the database
//!
//! [tunnel]
//! ping = 10                          # keepalive: seconds between pings
//! ping_restart = 60                  # seconds of silence before a client restarts
//! reneg_sec = 3600                   # server-initiated key renegotiation; 0 = off
//! offloads = true                    # TUN checksum and TCP segmentation offloads
//!
//! [quotas]                           # AWS's limits by default
//! authorization_rules_per_endpoint = 200   # at most 10000
//! routes_per_association = 100             # at most 1000
//! crl_entries = 20000                      # at most 1000000
//!
//! [connect_handler]                  # which client connect handlers endpoints may name
//! # executable_dir = "/etc/cvpn/handlers"  # executables only from here (none without it)
//! # allow_http = false               # plain http:// webhooks (https:// always allowed)
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a daemon configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum DaemonConfigError {
    /// The file could not be read.
    #[error("reading the daemon configuration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type.
    #[error("daemon configuration {path}: {detail}")]
    Parse {
        /// The file.
        path: String,
        /// What toml said, with the line and key.
        detail: String,
    },
    /// A value outside its range, or keys that only make sense together.
    #[error("daemon configuration {path}: {key}: {detail}")]
    Invalid {
        /// The file.
        path: String,
        /// The key, e.g. `[api] tls_cert`.
        key: String,
        /// What is wrong and what to do.
        detail: String,
    },
}

/// The daemon configuration. See the [module documentation](self) for the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The data directory: database, connection log, flow log.
    pub data_dir: PathBuf,
    /// Address the VPN listeners bind.
    pub listen_address: IpAddr,
    /// `remote` of exported client profiles when the request names none.
    pub public_host: Option<String>,
    /// The management API.
    pub api: ApiListen,
    /// Connection- and flow-log files.
    pub log: crate::connlog::LogOptions,
    /// How long ended connections stay listed.
    pub retention: Duration,
    /// How often live counters are written to the database.
    pub counters_every: Duration,
    /// Keepalive and key renegotiation of every endpoint's sessions.
    pub ping: u32,
    /// Seconds of silence before a client restarts.
    pub ping_restart: u32,
    /// Server-initiated renegotiation; 0 = off.
    pub reneg_sec: u32,
    /// TUN offloads: TCP super-packets between the TUN and the data channel.
    pub offloads: bool,
    /// Resource limits.
    pub quotas: crate::storage::Quotas,
    /// Which client connect handlers endpoints may name (`[connect_handler]`).
    pub connect_handler: crate::storage::HandlerPolicy,
    /// The web listener (`[web]`): single sign-on and the self-service portal.
    pub web: Option<WebListen>,
    /// The AWS-compatible API's listener (`[aws_api]`), if any.
    pub aws_api: Option<AwsApiListen>,
    /// A shared PostgreSQL database (`database`, `database_ca`) instead of SQLite in
    /// `data_dir`.
    pub database: Option<DatabaseConfig>,
    /// This daemon's name among the nodes of its database (`node_name`; the host name by
    /// default). See [`crate::storage::nodes`].
    pub node_name: String,
}

/// The host name as a node name (letters, digits, `-`, `_`, `.`; others become `-`), or
/// `cvpn` when there is none.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(crate::storage::nodes::MAX_NODE_NAME)
        .collect();
    if name.is_empty() {
        "cvpn".into()
    } else {
        name
    }
}

/// Where the shared PostgreSQL database is (`database = "postgres://…"`).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// `postgres://user[:password]@host[:port]/dbname[?sslmode=disable|prefer|require]`.
    pub url: String,
    /// Extra roots for the server's TLS certificate (the system's are always trusted).
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::storage::sql::redact(&self.url))
            .field("ca", &self.ca)
            .finish()
    }
}

impl DatabaseConfig {
    /// Checks a `database` value: a PostgreSQL URL the driver accepts.
    pub fn parse(url: &str, ca: Option<PathBuf>) -> Result<DatabaseConfig, String> {
        let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !scheme_ok {
            return Err(format!(
                "{} is not a PostgreSQL URL; write postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME                  (leave database out for SQLite in data_dir)",
                crate::storage::sql::redact(url)
            ));
        }
        url.parse::<tokio_postgres::Config>()
            .map_err(|e| format!("{}: {e}", crate::storage::sql::redact(url)))?;
        Ok(DatabaseConfig {
            url: url.to_string(),
            ca,
        })
    }

    /// The store's view of it: the URL and, unless `sslmode=disable`, TLS verified against
    /// the system's roots and `ca`.
    pub fn store_options(&self) -> Result<crate::storage::PostgresOptions, String> {
        let config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| format!("{}: {e}", crate::storage::sql::redact(&self.url)))?;
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => None,
            _ => Some(
                crate::http_client::client_tls(self.ca.as_deref())
                    .map_err(|e| format!("TLS to the database: {e}"))?,
            ),
        };
        Ok(crate::storage::PostgresOptions {
            url: self.url.clone(),
            tls,
        })
    }
}

/// Where the web listener serves, and the URL users reach it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebListen {
    pub listen: SocketAddr,
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// `https://host[:port]`, without a trailing `/`.
    pub public_url: String,
    /// How long a user has to finish a web sign-in.
    pub sign_in_timeout: Duration,
}

/// Where the AWS-compatible API listens (`[aws_api]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsApiListen {
    pub listen: SocketAddr,
    /// Certificate chain and key (PEM files) for HTTPS; none: plain HTTP on loopback.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The region of the ARNs made here.
    pub region: String,
}

/// Where the management API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiListen {
    /// The local Unix socket.
    pub socket: PathBuf,
    /// The optional TLS listener.
    pub tcp: Option<TcpApi>,
}

/// The API's TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpApi {
    /// Address and port.
    pub listen: SocketAddr,
    /// Certificate chain, PEM.
    pub tls_cert: PathBuf,
    /// Private key, PEM.
    pub tls_key: PathBuf,
    /// A file holding the bearer token (one line).
    pub token_file: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            data_dir: PathBuf::from(crate::storage::DEFAULT_DATA_DIR),
            listen_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            public_host: None,
            api: ApiListen {
                socket: PathBuf::from(crate::api::DEFAULT_SOCKET_PATH),
                tcp: None,
            },
            log: crate::connlog::LogOptions::default(),
            retention: crate::storage::DEFAULT_RETENTION,
            counters_every: Duration::from_secs(5),
            ping: 10,
            ping_restart: 60,
            reneg_sec: 3600,
            offloads: true,
            quotas: crate::storage::Quotas::default(),
            connect_handler: crate::storage::HandlerPolicy::default(),
            web: None,
            aws_api: None,
            database: None,
            node_name: default_node_name(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    data_dir: Option<PathBuf>,
    listen_address: Option<IpAddr>,
    public_host: Option<String>,
    database: Option<String>,
    database_ca: Option<PathBuf>,
    node_name: Option<String>,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    connections: RawConnections,
    #[serde(default)]
    tunnel: RawTunnel,
    #[serde(default)]
    quotas: RawQuotas,
    #[serde(default)]
    connect_handler: RawConnectHandler,
    #[serde(default)]
    web: RawWeb,
    #[serde(default)]
    aws_api: RawAwsApi,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAwsApi {
    listen: Option<SocketAddr>,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    region: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Option<SocketAddr>,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    public_url: Option<String>,
    sign_in_timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConnectHandler {
    executable_dir: Option<PathBuf>,
    allow_http: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQuotas {
    authorization_rules_per_endpoint: Option<usize>,
    routes_per_association: Option<usize>,
    crl_entries: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    socket: Option<PathBuf>,
    tcp_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    stdout: Option<bool>,
    max_file_bytes: Option<u64>,
    keep_files: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConnections {
    retention_minutes: Option<u64>,
    counters_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    ping: Option<u32>,
    ping_restart: Option<u32>,
    reneg_sec: Option<u32>,
    offloads: Option<bool>,
}

impl DaemonConfig {
    /// How the store opens: SQLite in `data_dir`, or the shared PostgreSQL database; with the
    /// configuration's retention, quotas and connect-handler policy.
    pub fn store_options(&self) -> Result<crate::storage::StoreOptions, String> {
        Ok(crate::storage::StoreOptions {
            retention: self.retention,
            quotas: self.quotas,
            handler_policy: self.connect_handler.clone(),
            postgres: self
                .database
                .as_ref()
                .map(DatabaseConfig::store_options)
                .transpose()?,
            node: Some(self.node_name.clone()),
            ..crate::storage::StoreOptions::in_dir(&self.data_dir)
        })
    }

    /// Where the store's data lives, for messages: the data directory, or the database URL
    /// without its password.
    pub fn store_location(&self) -> String {
        match &self.database {
            Some(db) => crate::storage::sql::redact(&db.url),
            None => self.data_dir.display().to_string(),
        }
    }

    /// Reads and checks a daemon configuration file.
    pub fn load(path: &Path) -> Result<Self, DaemonConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| DaemonConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a daemon configuration (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Self, DaemonConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| DaemonConfigError::Parse {
            path: origin.to_string(),
            detail: e.to_string(),
        })?;
        let invalid = |key: &str, detail: String| DaemonConfigError::Invalid {
            path: origin.to_string(),
            key: key.to_string(),
            detail,
        };
        let d = DaemonConfig::default();
        let tcp = match (
            raw.api.tcp_listen,
            raw.api.tls_cert,
            raw.api.tls_key,
            raw.api.token_file,
        ) {
            (None, None, None, None) => None,
            (Some(listen), Some(tls_cert), Some(tls_key), Some(token_file)) => Some(TcpApi {
                listen,
                tls_cert,
                tls_key,
                token_file,
            }),
            _ => return Err(invalid(
                "[api] tcp_listen",
                "the TLS listener needs all four of tcp_listen, tls_cert, tls_key and token_file; \
                     give all of them, or none for the Unix socket only"
                    .into(),
            )),
        };
        let retention = raw.connections.retention_minutes.unwrap_or(60);
        if !(1..=10_080).contains(&retention) {
            return Err(invalid(
                "[connections] retention_minutes",
                format!("{retention} is out of range: minutes ended connections stay listed, 1 to 10080 (a week)"),
            ));
        }
        let counters = raw.connections.counters_seconds.unwrap_or(5);
        if !(1..=3600).contains(&counters) {
            return Err(invalid(
                "[connections] counters_seconds",
                format!("{counters} is out of range: seconds between counter updates, 1 to 3600"),
            ));
        }
        let ping = raw.tunnel.ping.unwrap_or(d.ping);
        let ping_restart = raw.tunnel.ping_restart.unwrap_or(d.ping_restart);
        if !(1..=3600).contains(&ping) {
            return Err(invalid(
                "[tunnel] ping",
                format!("{ping} is out of range: seconds between keepalive pings, 1 to 3600"),
            ));
        }
        if ping_restart < 2 * ping || ping_restart > 86_400 {
            return Err(invalid(
                "[tunnel] ping_restart",
                format!(
                    "{ping_restart} must be at least twice ping ({ping}) and at most 86400 seconds"
                ),
            ));
        }
        if let Some(host) = &raw.public_host {
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "public_host",
                    format!("{host:?} is not a host name or address"),
                ));
            }
        }
        let quota = |key: &str, v: Option<usize>, default: usize, max: usize| match v {
            None => Ok(default),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err(invalid(
                &format!("[quotas] {key}"),
                format!("{n} is out of range: 1 to {max}"),
            )),
        };
        // The upper bounds keep the compiled policy inside the kernel maps.
        let quotas = crate::storage::Quotas {
            authorization_rules_per_endpoint: quota(
                "authorization_rules_per_endpoint",
                raw.quotas.authorization_rules_per_endpoint,
                d.quotas.authorization_rules_per_endpoint,
                10_000,
            )?,
            routes_per_association: quota(
                "routes_per_association",
                raw.quotas.routes_per_association,
                d.quotas.routes_per_association,
                1000,
            )?,
            crl_entries: quota(
                "crl_entries",
                raw.quotas.crl_entries,
                d.quotas.crl_entries,
                1_000_000,
            )?,
        };
        if let Some(dir) = &raw.connect_handler.executable_dir {
            if !dir.is_absolute() {
                return Err(invalid(
                    "[connect_handler] executable_dir",
                    format!(
                        "{} is not an absolute path; name the directory from / (e.g. \"/etc/cvpn/handlers\")",
                        dir.display()
                    ),
                ));
            }
        }
        let web = match (
            raw.web.listen,
            raw.web.certificate,
            raw.web.key,
            raw.web.public_url,
        ) {
            (None, None, None, None) => None,
            (Some(listen), Some(certificate), Some(key), Some(public_url)) => {
                let public_url = public_url.trim_end_matches('/').to_string();
                let parsed = url::Url::parse(&public_url).ok();
                let ok = parsed.as_ref().is_some_and(|u| {
                    u.scheme() == "https"
                        && u.host_str().is_some()
                        && u.path() == "/"
                        && u.query().is_none()
                        && u.username().is_empty()
                });
                if !ok {
                    return Err(invalid(
                        "[web] public_url",
                        format!(
                            "{public_url:?} is not https://HOST[:PORT]: the URL users' browsers \
                             open (no path)"
                        ),
                    ));
                }
                let timeout = raw.web.sign_in_timeout_seconds.unwrap_or(300);
                if !(30..=3600).contains(&timeout) {
                    return Err(invalid(
                        "[web] sign_in_timeout_seconds",
                        format!("{timeout} is out of range: 30 to 3600 seconds"),
                    ));
                }
                Some(WebListen {
                    listen,
                    certificate,
                    key,
                    public_url,
                    sign_in_timeout: Duration::from_secs(timeout),
                })
            }
            _ => {
                return Err(invalid(
                    "[web] listen",
                    "the web listener needs listen, certificate, key and public_url; give all \
                     four (single sign-on and the portal need it), or none"
                        .into(),
                ))
            }
        };
        let aws_api = match (raw.aws_api.listen, raw.aws_api.certificate, raw.aws_api.key) {
            (None, None, None) => {
                if raw.aws_api.region.is_some() {
                    return Err(invalid(
                        "[aws_api] region",
                        "names the region of a listener that is not configured: add [aws_api] \
                         listen, or remove region"
                            .into(),
                    ));
                }
                None
            }
            (Some(listen), cert, key) => {
                let tls = match (cert, key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => {
                        return Err(invalid(
                            "[aws_api] certificate",
                            "HTTPS needs both certificate and key; give both, or neither for \
                             plain HTTP on loopback"
                                .into(),
                        ))
                    }
                };
                if tls.is_none() && !listen.ip().is_loopback() {
                    return Err(invalid(
                        "[aws_api] listen",
                        format!(
                            "{listen} is not a loopback address: signed requests are not \
                             encrypted, and answers carry client configurations and CRLs; give \
                             certificate and key for HTTPS, or listen on 127.0.0.1"
                        ),
                    ));
                }
                let region = raw
                    .aws_api
                    .region
                    .unwrap_or_else(|| crate::aws::DEFAULT_REGION.to_string());
                let ok = !region.is_empty()
                    && region.len() <= 32
                    && region
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    return Err(invalid(
                        "[aws_api] region",
                        format!("{region:?} is not a region name like us-east-1"),
                    ));
                }
                Some(AwsApiListen {
                    listen,
                    tls,
                    region,
                })
            }
            (None, _, _) => {
                return Err(invalid(
                    "[aws_api] listen",
                    "certificate and key are given but not where to listen: add listen".into(),
                ))
            }
        };
        let database = match (raw.database, raw.database_ca) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    "database_ca",
                    "names the roots of the database's TLS certificate, but there is no \
                     database; add database = \"postgres://…\", or remove database_ca"
                        .into(),
                ))
            }
            (Some(url), ca) => {
                Some(DatabaseConfig::parse(&url, ca).map_err(|e| invalid("database", e))?)
            }
        };
        let node_name = raw.node_name.unwrap_or(d.node_name);
        crate::storage::nodes::validate_node_name(&node_name)
            .map_err(|e| invalid("node_name", e.message))?;
        let max_file_bytes = raw.log.max_file_bytes.unwrap_or(d.log.max_file_bytes);
        if max_file_bytes < 4096 {
            return Err(invalid(
                "[log] max_file_bytes",
                format!("{max_file_bytes} is too small: at least 4096 bytes"),
            ));
        }
        Ok(DaemonConfig {
            data_dir: raw.data_dir.unwrap_or(d.data_dir),
            listen_address: raw.listen_address.unwrap_or(d.listen_address),
            public_host: raw.public_host,
            api: ApiListen {
                socket: raw.api.socket.unwrap_or(d.api.socket),
                tcp,
            },
            log: crate::connlog::LogOptions {
                max_file_bytes,
                keep_files: raw.log.keep_files.unwrap_or(d.log.keep_files),
                stdout: raw.log.stdout.unwrap_or(false),
            },
            retention: Duration::from_secs(retention * 60),
            counters_every: Duration::from_secs(counters),
            ping,
            ping_restart,
            reneg_sec: raw.tunnel.reneg_sec.unwrap_or(d.reneg_sec),
            offloads: raw.tunnel.offloads.unwrap_or(d.offloads),
            quotas,
            connect_handler: crate::storage::HandlerPolicy {
                executable_dir: raw.connect_handler.executable_dir,
                allow_http: raw.connect_handler.allow_http.unwrap_or(false),
            },
            web,
            aws_api,
            database,
            node_name,
        })
    }
}

/// True when a TOML file declares an endpoint (`[endpoint]`): the file form `cvpn serve
/// --config` took before the daemon configuration existed.
pub fn is_endpoint_file(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("endpoint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_web_listener_needs_all_its_keys_and_an_https_public_url() {
        let c = DaemonConfig::parse(
            "[web]\nlisten = \"127.0.0.1:8443\"\ncertificate = \"/c\"\nkey = \"/k\"\npublic_url = \"https://vpn.example.test:8443/\"\n",
            "t",
        )
        .unwrap();
        let w = c.web.expect("web");
        assert_eq!(w.public_url, "https://vpn.example.test:8443");
        assert_eq!(w.sign_in_timeout, Duration::from_secs(300));
        let e = DaemonConfig::parse("[web]\nlisten = \"127.0.0.1:8443\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("all"), "{e}");
        let e = DaemonConfig::parse(
            "[web]\nlisten = \"127.0.0.1:8443\"\ncertificate = \"/c\"\nkey = \"/k\"\npublic_url = \"http://vpn/x\"\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("https://HOST"), "{e}");
    }

    #[test]
    fn database_is_a_postgres_url_whose_password_stays_out_of_messages() {
        let c = DaemonConfig::parse(
            "database = \"postgres://cvpn:s3cret@127.0.0.1:5433/cvpn?sslmode=disable\"\n",
            "t",
        )
        .unwrap();
        let db = c.database.clone().expect("database");
        assert_eq!(
            db.url,
            "postgres://cvpn:s3cret@127.0.0.1:5433/cvpn?sslmode=disable"
        );
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert!(
            db.store_options().unwrap().tls.is_none(),
            "sslmode=disable: no TLS"
        );
        let tls = DaemonConfig::parse("database = \"postgres://cvpn@db/cvpn\"\n", "t")
            .unwrap()
            .database
            .unwrap()
            .store_options()
            .unwrap();
        assert!(
            tls.tls.is_some(),
            "TLS unless disabled (sslmode=prefer by default)"
        );
        for (text, needle) in [
            ("database = \"mysql://u:pw@h/db\"", "not a PostgreSQL URL"),
            (
                "database = \"postgres://u:pw@h/db?sslmode=bogus\"",
                "database",
            ),
            ("database_ca = \"/ca.pem\"", "there is no database"),
        ] {
            let e = DaemonConfig::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(
            DaemonConfig::parse("", "t").unwrap(),
            DaemonConfig::default()
        );
    }

    #[test]
    fn every_key() {
        let c = DaemonConfig::parse(
            r#"
data_dir = "/srv/cvpn"
listen_address = "192.0.2.1"
public_host = "vpn.example.com"
[api]
socket = "/tmp/x.sock"
tcp_listen = "127.0.0.1:8443"
tls_cert = "c.pem"
tls_key = "k.pem"
token_file = "t"
[log]
stdout = true
max_file_bytes = 65536
keep_files = 2
[connections]
retention_minutes = 5
counters_seconds = 1
[tunnel]
ping = 5
ping_restart = 30
reneg_sec = 0
[quotas]
authorization_rules_per_endpoint = 500
routes_per_association = 20
crl_entries = 100
[connect_handler]
executable_dir = "/etc/cvpn/handlers"
allow_http = true
"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/cvpn"));
        assert_eq!(c.api.tcp.as_ref().unwrap().listen.port(), 8443);
        assert_eq!(c.retention, Duration::from_secs(300));
        assert_eq!(c.counters_every, Duration::from_secs(1));
        assert!(c.log.stdout);
        assert_eq!((c.ping, c.ping_restart, c.reneg_sec), (5, 30, 0));
        assert_eq!(c.quotas.authorization_rules_per_endpoint, 500);
        assert_eq!(
            (c.quotas.routes_per_association, c.quotas.crl_entries),
            (20, 100)
        );
        assert_eq!(
            c.connect_handler,
            crate::storage::HandlerPolicy {
                executable_dir: Some(PathBuf::from("/etc/cvpn/handlers")),
                allow_http: true
            }
        );
    }

    #[test]
    fn errors_name_the_key() {
        for (text, needle) in [
            ("datadir = \"/x\"", "unknown field `datadir`"),
            ("[api]\ntcp_listen = \"127.0.0.1:1\"", "[api] tcp_listen"),
            ("[connections]\nretention_minutes = 0", "retention_minutes"),
            ("[tunnel]\nping = 10\nping_restart = 5", "ping_restart"),
            ("listen_address = \"nope\"", "listen_address"),
            ("[log]\nmax_file_bytes = 10", "max_file_bytes"),
            ("node_name = \"gw a\"", "node_name"),
            (
                "[quotas]\nauthorization_rules_per_endpoint = 20000",
                "[quotas] authorization_rules_per_endpoint",
            ),
            (
                "[quotas]\nroutes_per_association = 0",
                "[quotas] routes_per_association",
            ),
            (
                "[connect_handler]\nexecutable_dir = \"handlers\"",
                "[connect_handler] executable_dir",
            ),
            ("[connect_handler]\nallow_https = true", "allow_https"),
        ] {
            let e = DaemonConfig::parse(text, "f.toml").unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("f.toml"), "{text:?}: {e}");
        }
    }

    #[test]
    fn endpoint_files_are_told_apart() {
        assert!(is_endpoint_file(
            "[endpoint]\nclient_cidr = \"10.0.0.0/22\""
        ));
        assert!(!is_endpoint_file("data_dir = \"/x\""));
        assert!(!is_endpoint_file(""));
    }

    #[test]
    fn the_aws_api_listens_in_clear_only_on_loopback() {
        let c = DaemonConfig::parse("[aws_api]\nlisten = \"127.0.0.1:8780\"\n", "t").unwrap();
        let a = c.aws_api.unwrap();
        assert_eq!((a.tls, a.region.as_str()), (None, "us-east-1"));
        let c = DaemonConfig::parse(
            "[aws_api]\nlisten = \"0.0.0.0:8780\"\ncertificate = \"/c\"\nkey = \"/k\"\nregion = \"eu-west-3\"\n",
            "t",
        )
        .unwrap();
        assert!(c.aws_api.unwrap().tls.is_some());
        for (text, says) in [
            ("[aws_api]\nlisten = \"0.0.0.0:8780\"\n", "not a loopback"),
            (
                "[aws_api]\nlisten = \"127.0.0.1:8780\"\ncertificate = \"/c\"\n",
                "both",
            ),
            (
                "[aws_api]\ncertificate = \"/c\"\nkey = \"/k\"\n",
                "add listen",
            ),
            ("[aws_api]\nregion = \"us-east-1\"\n", "not configured"),
            (
                "[aws_api]\nlisten = \"127.0.0.1:8780\"\nregion = \"US East\"\n",
                "region name",
            ),
            ("[aws_api]\nlisten = \"127.0.0.1:8780\"\nport = 1\n", "port"),
        ] {
            let e = DaemonConfig::parse(text, "t").unwrap_err();
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }
}
