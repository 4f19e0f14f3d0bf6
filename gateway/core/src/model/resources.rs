//! The resources of the control plane (AWS Client VPN's: endpoints, target networks, routes,
//! authorization rules, connections, CRLs), as the store returns them and as requests describe
//! them.
//!
//! * Resource structs ([`Endpoint`], [`TargetNetwork`], [`Route`], [`AuthorizationRule`],
//!   [`Connection`]) are what describe calls return: typed values, serialized with AWS-style
//!   kebab-case field names (`client-vpn-endpoint-id`, `destination-cidr`, ...).
//! * Request structs (`*Request`) carry user input as it arrives from the API or the CLI:
//!   addresses and CIDRs as strings, numbers wide, so that the store's validation — not a
//!   deserializer — refuses bad values, with an error that names the field and the rule.
//! * Connections are recorded by the daemon, whose input is already typed ([`NewConnection`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::policy::Access;

// ---- time ---------------------------------------------------------------------------------------

/// A point in time, whole seconds since the Unix epoch (UTC). Serialized as
/// `YYYY-MM-DD HH:MM:SS` (UTC), the format of AWS Client VPN's connection log and describe
/// output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time from the system clock.
    pub fn now() -> Self {
        let secs = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        Timestamp(secs)
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400);
        let secs = self.0.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

impl FromStr for Timestamp {
    type Err = String;

    /// Parses `YYYY-MM-DD HH:MM:SS` (UTC).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a time (write YYYY-MM-DD HH:MM:SS, UTC)");
        let b = s.as_bytes();
        if b.len() != 19
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b' '
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
            let part = s.get(r).ok_or_else(bad)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
            return Err(bad());
        }
        let days = days_from_civil(i64::from(y), mo, d);
        if civil_from_days(days) != (i64::from(y), mo, d) {
            return Err(bad());
        }
        Ok(Timestamp(
            days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se),
        ))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---- enumerations -------------------------------------------------------------------------------

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            /// Parses the wire spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// The transport an endpoint listens on.
    TransportProtocol {
        /// UDP (the default).
        Udp = "udp",
        /// TCP.
        Tcp = "tcp",
    }
);

string_enum!(
    /// The life cycle of an endpoint: `pending-associate` until its first target network is
    /// associated, `available` while it has one, back to `pending-associate` when the last one
    /// is disassociated; `deleting` from the delete call until the daemon has torn it down,
    /// then `deleted` (kept visible for the retention period).
    EndpointStatus {
        /// Created, no target network associated: accepts no connections.
        PendingAssociate = "pending-associate",
        /// At least one target network associated: serving.
        Available = "available",
        /// Deletion requested; the daemon is tearing it down.
        Deleting = "deleting",
        /// Deleted; only its description remains.
        Deleted = "deleted",
    }
);

string_enum!(
    /// The life cycle of a target network association. The store commits an association in
    /// one transaction, so it is `associated` as soon as the call returns and `disassociated`
    /// after the disassociate call; the transitional states exist for AWS compatibility.
    AssociationStatus {
        /// Being associated.
        Associating = "associating",
        /// Associated: carries traffic.
        Associated = "associated",
        /// Being disassociated.
        Disassociating = "disassociating",
        /// Disassociated (kept visible for the retention period).
        Disassociated = "disassociated",
    }
);

string_enum!(
    /// Where a route came from.
    RouteOrigin {
        /// Added automatically for an associated target network's own subnet; removed only
        /// by disassociating the network.
        Associate = "associate",
        /// Added by the operator; may be deleted.
        AddRoute = "add-route",
    }
);

string_enum!(
    /// The state of a route. Routes are committed in one transaction, so the store shows them
    /// `active`; `creating` and `deleting` exist for AWS compatibility.
    RouteStatus {
        /// Being created.
        Creating = "creating",
        /// In the route table.
        Active = "active",
        /// Being deleted.
        Deleting = "deleting",
    }
);

string_enum!(
    /// The state of a client connection.
    ConnectionStatus {
        /// Connected.
        Active = "active",
        /// Termination requested (by the operator, a CRL import or the last disassociation);
        /// the daemon is closing it.
        Terminating = "terminating",
        /// Ended.
        Terminated = "terminated",
        /// The daemon could not close it.
        FailedToTerminate = "failed-to-terminate",
    }
);

// ---- endpoint -----------------------------------------------------------------------------------

/// How clients authenticate: certificates (mutual TLS), a directory (LDAP / Active Directory),
/// an identity provider (federated single sign-on, OIDC or SAML), or certificates with one of
/// the other two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum AuthenticationOption {
    /// Mutual TLS: client certificates must chain to this CA (PEM, one or more certificates).
    CertificateAuthentication {
        /// The client CA bundle, PEM.
        client_root_certificate_chain: String,
    },
    /// Directory user authentication (LDAP / Active Directory).
    DirectoryServiceAuthentication {
        /// The directory's id.
        directory_id: String,
    },
    /// Federated authentication (single sign-on at an OIDC or SAML identity provider).
    FederatedAuthentication {
        /// The identity provider: its id (`idp-…`) or an ARN ending in `/idp-…` (AWS's
        /// `SAMLProviderArn`). The store keeps and returns the id.
        saml_provider_arn: String,
        /// The identity provider of the self-service portal: the same one, or none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        self_service_saml_provider_arn: Option<String>,
    },
}

/// Connection log settings: JSON lines with AWS's field names, in the data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConnectionLogOptions {
    /// Write the connection log.
    pub enabled: bool,
    /// Also write its entries to the daemon's standard output.
    #[serde(default)]
    pub stdout: bool,
}

impl Default for ConnectionLogOptions {
    fn default() -> Self {
        ConnectionLogOptions {
            enabled: true,
            stdout: false,
        }
    }
}

/// The client connect handler: AWS's Lambda contract, called as an HTTP(S) webhook or a local
/// executable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConnectOptions {
    /// Call the handler on every connection attempt.
    pub enabled: bool,
    /// `http://` or `https://` URL, or the absolute path of an executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
}

/// Which client connect handlers the daemon configuration allows (`[connect_handler]`). The
/// API refuses others when an endpoint is created or modified, and the daemon refuses them again
/// when it is about to call one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandlerPolicy {
    /// Executables are allowed only inside this directory (after resolving `..` and symbolic
    /// links); `None` refuses every executable.
    pub executable_dir: Option<std::path::PathBuf>,
    /// Plain `http://` webhooks are allowed (`https://` always is).
    pub allow_http: bool,
}

/// The banner clients show after connecting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientLoginBannerOptions {
    /// Show the banner.
    pub enabled: bool,
    /// The text, at most [`MAX_BANNER_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banner_text: Option<String>,
}

/// A tag on an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Tag {
    /// 1 to 128 characters, unique per endpoint.
    pub key: String,
    /// At most 256 characters.
    #[serde(default)]
    pub value: String,
}

/// Shortest client CIDR prefix (AWS's rule).
pub const MIN_CLIENT_PREFIX: u8 = 12;
/// Longest client CIDR prefix (AWS's rule).
pub const MAX_CLIENT_PREFIX: u8 = 22;
/// Ports an endpoint may listen on (AWS's rule).
pub const ALLOWED_PORTS: [u16; 2] = [443, 1194];
/// Default port.
pub const DEFAULT_PORT: u16 = 443;
/// Session timeouts an endpoint may have, hours (AWS's rule).
pub const ALLOWED_SESSION_TIMEOUT_HOURS: [u8; 4] = [8, 10, 12, 24];
/// Default session timeout, hours.
pub const DEFAULT_SESSION_TIMEOUT_HOURS: u8 = 24;
/// Most DNS servers an endpoint pushes.
pub const MAX_DNS_SERVERS: usize = 2;
/// Longest login banner, characters.
pub const MAX_BANNER_CHARS: usize = 1400;
/// Longest description, characters.
pub const MAX_DESCRIPTION_CHARS: usize = 255;
/// Longest group name in an authorization rule, characters (AWS's group id limit).
pub const MAX_GROUP_CHARS: usize = 255;
/// Most tags per endpoint.
pub const MAX_TAGS: usize = 50;

/// A Client VPN endpoint as described. The server's private key is never part of it (see
/// [`EndpointSecrets`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Endpoint {
    /// `cvpn-endpoint-<17 hex>`.
    pub client_vpn_endpoint_id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Life-cycle state.
    pub status: EndpointStatus,
    /// When it was created.
    pub creation_time: Timestamp,
    /// When it was deleted, once `deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_time: Option<Timestamp>,
    /// Addresses clients get (/12../22; immutable).
    pub client_cidr_block: Ipv4Net,
    /// DNS servers pushed to clients (at most 2).
    pub dns_servers: Vec<Ipv4Addr>,
    /// Push routes instead of redirecting all traffic.
    pub split_tunnel: bool,
    /// UDP or TCP (immutable).
    pub transport_protocol: TransportProtocol,
    /// 443 or 1194.
    pub vpn_port: u16,
    /// The server certificate chain, PEM.
    pub server_certificate: String,
    /// How clients authenticate (immutable).
    pub authentication_options: Vec<AuthenticationOption>,
    /// Connection log settings.
    pub connection_log_options: ConnectionLogOptions,
    /// Client connect handler settings.
    pub client_connect_options: ClientConnectOptions,
    /// Maximum session length, hours: 8, 10, 12 or 24.
    pub session_timeout_hours: u8,
    /// At the session timeout, disconnect (true) or let the client reconnect silently (false).
    pub disconnect_on_session_timeout: bool,
    /// Login banner settings.
    pub client_login_banner_options: ClientLoginBannerOptions,
    /// Self-service portal (AWS's `SelfServicePortal`; requires federated authentication):
    /// users sign in at the identity provider and download their client profile.
    pub self_service_portal: bool,
    /// Where the self-service portal is, `{public URL}/portal/{endpoint id}`: filled in by the
    /// API when the portal is enabled and the daemon has a public URL (not stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_service_portal_url: Option<String>,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Bumped in the same transaction as every change to the endpoint's rules, routes or
    /// target networks: the daemon recompiles the data-plane policy when it moves.
    pub policy_revision: u64,
    /// Revoked certificates in the imported CRL (0 without one).
    pub crl_entries: u64,
    /// Whether the endpoint holds its client CA's private key (write-only field
    /// `client-ca-key` of modify): then the self-service portal issues users short-lived
    /// client certificates, revoked through the endpoint's CRL.
    #[serde(default)]
    pub client_ca_key_set: bool,
    /// Profiles downloaded from the self-service portal.
    #[serde(default)]
    pub self_service_portal_downloads: u64,
    /// What the running daemon's listener for this endpoint is doing; filled in by the API of
    /// a running daemon, absent otherwise (not stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerStatus>,
}

/// The state of an endpoint's listener in the running daemon ([`Endpoint::listener`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ListenerStatus {
    /// `serving`, `stopped` or `failed`.
    pub state: String,
    /// Why it failed, and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Endpoint {
    /// The client CA bundle of the certificate authentication option, PEM.
    pub fn client_ca(&self) -> Option<&str> {
        self.authentication_options.iter().find_map(|o| match o {
            AuthenticationOption::CertificateAuthentication {
                client_root_certificate_chain,
            } => Some(client_root_certificate_chain.as_str()),
            _ => None,
        })
    }

    /// The identity provider of the federated authentication option, `idp-…`.
    pub fn idp_id(&self) -> Option<String> {
        super::validate::CheckedAuthentication::of(&self.authentication_options).idp_id
    }
}

/// The TLS material of an endpoint, PEM text, as the daemon needs it. Kept in the database so
/// that the daemon is self-contained (no certificate files to lose); `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSecrets {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// Server certificate chain.
    pub server_certificate_pem: String,
    /// Server private key.
    pub server_private_key_pem: String,
    /// Client CA bundle.
    pub client_ca_pem: String,
    /// Certificate revocation list(s), if imported.
    pub crl_pem: Option<String>,
}

impl fmt::Debug for EndpointSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSecrets")
            .field("client_vpn_endpoint_id", &self.client_vpn_endpoint_id)
            .field("server_certificate_pem", &self.server_certificate_pem)
            .field("server_private_key_pem", &"<redacted>")
            .field("client_ca_pem", &self.client_ca_pem)
            .field("crl_pem", &self.crl_pem)
            .finish()
    }
}

/// Create an endpoint. Required: `client-cidr-block`, `server-certificate`,
/// `server-private-key`, `authentication-options`; everything else has AWS's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CreateEndpointRequest {
    /// IPv4 CIDR, /12../22, e.g. `10.2.0.0/22`.
    pub client_cidr_block: Option<String>,
    /// Server certificate chain, PEM.
    pub server_certificate: Option<String>,
    /// Server private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub server_private_key: Option<String>,
    /// One certificate authentication option.
    #[serde(default)]
    pub authentication_options: Vec<AuthenticationOption>,
    /// `udp` (default) or `tcp`.
    pub transport_protocol: Option<String>,
    /// 443 (default) or 1194.
    pub vpn_port: Option<i64>,
    /// At most 2 IPv4 addresses.
    pub dns_servers: Option<Vec<String>>,
    /// Default false.
    pub split_tunnel: Option<bool>,
    /// 8, 10, 12 or 24 (default).
    pub session_timeout_hours: Option<i64>,
    /// Default false.
    pub disconnect_on_session_timeout: Option<bool>,
    /// Default: no banner.
    pub client_login_banner_options: Option<ClientLoginBannerOptions>,
    /// Default: no handler.
    pub client_connect_options: Option<ClientConnectOptions>,
    /// Default: enabled, not on stdout.
    pub connection_log_options: Option<ConnectionLogOptions>,
    /// Default false.
    pub self_service_portal: Option<bool>,
    /// At most 255 characters.
    pub description: Option<String>,
    /// At most 50.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// Modify an endpoint: every field is optional and only the given ones change. The immutable
/// fields (`client-cidr-block`, `transport-protocol`, `authentication-options`) may be given
/// with their current value (so that re-applying a declaration is a no-op) but not changed.
/// `description: ""` clears the description.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModifyEndpointRequest {
    /// Immutable.
    pub client_cidr_block: Option<String>,
    /// Immutable.
    pub transport_protocol: Option<String>,
    /// Immutable.
    pub authentication_options: Option<Vec<AuthenticationOption>>,
    /// A new server certificate chain (the key may stay if it matches).
    pub server_certificate: Option<String>,
    /// A new server key (must match the resulting certificate).
    pub server_private_key: Option<String>,
    /// 443 or 1194.
    pub vpn_port: Option<i64>,
    /// Replaces the list.
    pub dns_servers: Option<Vec<String>>,
    /// Split tunnel on or off.
    pub split_tunnel: Option<bool>,
    /// 8, 10, 12 or 24.
    pub session_timeout_hours: Option<i64>,
    /// Disconnect at the session timeout.
    pub disconnect_on_session_timeout: Option<bool>,
    /// Replaces the banner settings.
    pub client_login_banner_options: Option<ClientLoginBannerOptions>,
    /// Replaces the client connect settings.
    pub client_connect_options: Option<ClientConnectOptions>,
    /// Replaces the connection log settings.
    pub connection_log_options: Option<ConnectionLogOptions>,
    /// Self-service portal.
    pub self_service_portal: Option<bool>,
    /// New description; empty clears it.
    pub description: Option<String>,
    /// Replaces the tags.
    pub tags: Option<Vec<Tag>>,
    /// The client CA's private key, PEM (PKCS#8, PKCS#1 or SEC1), matching a certificate of
    /// the endpoint's client CA bundle: the self-service portal then issues client
    /// certificates. Write-only (descriptions show `client-ca-key-set`); `""` removes it.
    pub client_ca_key: Option<String>,
}

/// A field of an endpoint that a modify call can change (its request name on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointField {
    ServerCertificate,
    ServerPrivateKey,
    VpnPort,
    DnsServers,
    SplitTunnel,
    SessionTimeoutHours,
    DisconnectOnSessionTimeout,
    ClientLoginBannerOptions,
    ClientConnectOptions,
    ConnectionLogOptions,
    SelfServicePortal,
    Description,
    Tags,
    ClientCaKey,
}

/// How a running endpoint takes a change of one of its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldEffect {
    /// Nothing to do: the field only describes the endpoint.
    Descriptive,
    /// Applied to the running endpoint without a restart.
    Live,
    /// The listener restarts (its clients are told to reconnect).
    Restart,
}

impl EndpointField {
    /// The field's request name (`vpn-port`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointField::ServerCertificate => "server-certificate",
            EndpointField::ServerPrivateKey => "server-private-key",
            EndpointField::VpnPort => "vpn-port",
            EndpointField::DnsServers => "dns-servers",
            EndpointField::SplitTunnel => "split-tunnel",
            EndpointField::SessionTimeoutHours => "session-timeout-hours",
            EndpointField::DisconnectOnSessionTimeout => "disconnect-on-session-timeout",
            EndpointField::ClientLoginBannerOptions => "client-login-banner-options",
            EndpointField::ClientConnectOptions => "client-connect-options",
            EndpointField::ConnectionLogOptions => "connection-log-options",
            EndpointField::SelfServicePortal => "self-service-portal",
            EndpointField::Description => "description",
            EndpointField::Tags => "tags",
            EndpointField::ClientCaKey => "client-ca-key",
        }
    }

    /// What a change of this field does to a running endpoint.
    pub fn effect(self) -> FieldEffect {
        match self {
            EndpointField::Description
            | EndpointField::Tags
            | EndpointField::SelfServicePortal
            | EndpointField::ClientCaKey => FieldEffect::Descriptive,
            EndpointField::SessionTimeoutHours
            | EndpointField::DisconnectOnSessionTimeout
            | EndpointField::ClientConnectOptions => FieldEffect::Live,
            EndpointField::ServerCertificate
            | EndpointField::ServerPrivateKey
            | EndpointField::VpnPort
            | EndpointField::DnsServers
            | EndpointField::SplitTunnel
            | EndpointField::ClientLoginBannerOptions
            | EndpointField::ConnectionLogOptions => FieldEffect::Restart,
        }
    }
}

impl std::fmt::Display for EndpointField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for EndpointField {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What a modify call did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ModifyEndpointResult {
    /// The endpoint after the change.
    pub endpoint: Endpoint,
    /// The fields whose value changed; empty when the call was a no-op (nothing was written
    /// then).
    pub changed: Vec<EndpointField>,
}

/// What a delete call did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeleteEndpointResult {
    /// The endpoint, now `deleting` (after
    /// `gateway::storage::Store::delete_endpoint`) or `deleted` (after
    /// `gateway::storage::Store::finish_endpoint_deletion`).
    pub endpoint: Endpoint,
    /// Connections the daemon must close (marked `terminating`).
    pub terminate_connections: Vec<String>,
}

// ---- target networks ----------------------------------------------------------------------------

/// A target network association: a gateway-host interface that client traffic leaves through.
///
/// The API resource (AWS's `TargetNetwork`). The same concept at other layers: the endpoint
/// file's `config::TargetNetwork`, the data plane's [`TargetSpec`](super::TargetSpec) (what
/// both are turned into, keyed by [`target_id`](Self::target_id)) and the kernel map value
/// `gateway_common::TargetNetwork`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TargetNetwork {
    /// `cvpn-assoc-<17 hex>`.
    pub association_id: String,
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The interface name (AWS: the subnet id).
    pub target_network_id: String,
    /// The interface's IPv4 subnet, once known; its route is added automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_cidr: Option<Ipv4Net>,
    /// Source address for SNAT; `None`: the interface's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_address: Option<Ipv4Addr>,
    /// Life-cycle state.
    pub status: AssociationStatus,
    /// The data plane's id for this target network (stable, never reused).
    pub target_id: u32,
    /// The node (gateway host) whose interface this is: that node serves the endpoint and
    /// SNATs its traffic to this network. `None`: an association made before nodes existed,
    /// served by whichever node serves the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When it was associated.
    pub creation_time: Timestamp,
    /// When its state or subnet last changed.
    pub update_time: Timestamp,
    /// The security groups applied to it (none: AWS's default group, all traffic may leave).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
}

/// Associate a target network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AssociateTargetNetworkRequest {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The interface name, e.g. `eth1`.
    pub target_network_id: String,
    /// The interface's subnet, if known (network address, e.g. `10.88.0.0/24`).
    pub subnet_cidr: Option<String>,
    /// SNAT address on that network.
    pub snat_address: Option<String>,
    /// The node whose interface this is; `None`: the node the request is made through.
    #[serde(default)]
    pub node: Option<String>,
}

/// What an associate call did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AssociateResult {
    /// The new association.
    pub association: TargetNetwork,
    /// The route added for its subnet (origin `associate`), if the subnet is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// The endpoint's state after the call.
    pub endpoint_status: EndpointStatus,
}

/// What a disassociate call did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DisassociateResult {
    /// The association, now `disassociated`.
    pub association: TargetNetwork,
    /// The routes through it, removed (both origins).
    pub removed_routes: Vec<Route>,
    /// The endpoint's state after the call.
    pub endpoint_status: EndpointStatus,
    /// Connections the daemon must close: every connection of the endpoint when this was its
    /// last target network (they are marked `terminating`).
    pub terminate_connections: Vec<String>,
}

/// What an update of an association's subnet did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SubnetUpdateResult {
    /// The association after the change.
    pub association: TargetNetwork,
    /// The `associate` route removed, if the subnet changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_route: Option<Route>,
    /// The `associate` route added, if the subnet changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_route: Option<Route>,
}

// ---- security groups ----------------------------------------------------------------------------

/// Most security groups applied to one target network (AWS's limit).
pub const MAX_SECURITY_GROUPS_PER_NETWORK: usize = 5;
/// Most egress rules of the groups of one target network together (the kernel's bound).
pub const MAX_EGRESS_RULES: usize = 16;
/// Most security groups the store keeps.
pub const MAX_SECURITY_GROUPS: usize = 500;

/// A security group: egress rules for traffic leaving through the target networks it is
/// applied to (AWS's `ApplySecurityGroupsToClientVpnTargetNetwork`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SecurityGroup {
    /// `sg-<17 hex>`.
    pub security_group_id: String,
    /// Unique name.
    pub group_name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What may leave.
    pub egress: Vec<SecurityGroupRule>,
    /// When it was made.
    pub creation_time: Timestamp,
}

/// One egress rule: traffic of `protocol` (`all`, `tcp`, `udp`, `icmp`) to
/// `destination-cidr`, on `port-range` (tcp and udp; default every port), may leave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SecurityGroupRule {
    #[serde(default = "all_protocols")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<String>,
    pub destination_cidr: String,
}

fn all_protocols() -> String {
    "all".into()
}

impl SecurityGroupRule {
    /// The rule in the data plane's terms (it was checked when the group was made).
    pub fn egress(&self) -> Option<super::policy::EgressRule> {
        let destination = super::validate::check_cidr(&self.destination_cidr).ok()?;
        if self.protocol == "all" {
            return Some(super::policy::EgressRule {
                protocol: None,
                from_port: 0,
                to_port: 65535,
                destination,
            });
        }
        let m = super::validate::port_match(
            "protocol",
            Some(&self.protocol),
            self.port_range.as_deref(),
        )
        .ok()??;
        Some(super::policy::EgressRule {
            protocol: Some(m.protocol),
            from_port: m.from_port,
            to_port: m.to_port,
            destination,
        })
    }
}

/// Make a security group. Without `egress`, AWS's default: all traffic may leave.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CreateSecurityGroupRequest {
    pub group_name: String,
    pub description: Option<String>,
    pub egress: Option<Vec<SecurityGroupRule>>,
}

/// The security groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SecurityGroupList {
    pub security_groups: Vec<SecurityGroup>,
}

/// Apply security groups to an endpoint's target networks (those of node `vpc-id`, or all):
/// they replace the groups applied before. An empty list goes back to AWS's default group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApplySecurityGroupsRequest {
    /// The node whose target networks take the groups (AWS: the VPC); none: every node's.
    pub vpc_id: Option<String>,
    pub security_group_ids: Vec<String>,
}

/// What an apply call did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApplySecurityGroupsResult {
    pub security_group_ids: Vec<String>,
    /// The associations that took them.
    pub association_ids: Vec<String>,
}

// ---- routes -------------------------------------------------------------------------------------

/// A route: traffic to `destination-cidr` leaves through a target network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Route {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The destination.
    pub destination_cidr: Ipv4Net,
    /// The target network's interface (AWS: the subnet id).
    pub target_subnet: String,
    /// The target network's association.
    pub association_id: String,
    /// The data plane's id of the target network.
    pub target_id: u32,
    /// `associate` or `add-route`.
    pub origin: RouteOrigin,
    /// State.
    pub status: RouteStatus,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it was added.
    pub creation_time: Timestamp,
}

/// Add a route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CreateRouteRequest {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The destination, e.g. `10.99.0.0/16` or `0.0.0.0/0`.
    pub destination_cidr_block: String,
    /// The interface of an associated target network.
    pub target_network_id: String,
    /// Free text, at most 255 characters.
    pub description: Option<String>,
}

/// Delete a route. Without `target-network-id` the destination must identify one route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DeleteRouteRequest {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The destination.
    pub destination_cidr_block: String,
    /// The interface of the target network.
    pub target_network_id: Option<String>,
}

// ---- authorization rules ------------------------------------------------------------------------

/// An authorization rule: who may reach `destination-cidr`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AuthorizationRule {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The destination.
    pub destination_cidr: Ipv4Net,
    /// The group admitted (None when `access-all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// All groups admitted.
    pub access_all: bool,
    /// cvpn, beyond AWS: the only protocol admitted (`tcp`, `udp`, `icmp`); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// With `protocol` tcp or udp: the destination ports admitted, `443` or `8000-8100`;
    /// absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it was added.
    pub creation_time: Timestamp,
}

impl AuthorizationRule {
    /// Who the rule admits, in the data plane's terms.
    pub fn access(&self) -> Access {
        match (&self.group_id, self.access_all) {
            (Some(g), false) => Access::Group(g.clone()),
            _ => Access::AllGroups,
        }
    }

    /// The protocol and ports the rule is limited to, in the data plane's terms.
    pub fn ports(&self) -> Option<super::policy::PortMatch> {
        super::validate::port_match(
            "protocol",
            self.protocol.as_deref(),
            self.port_range.as_deref(),
        )
        .ok()
        .flatten()
    }
}

/// Add an authorization rule: exactly one of `access-group-id` and
/// `authorize-all-groups: true`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The destination, e.g. `10.88.0.0/24`.
    pub target_network_cidr: String,
    /// The group admitted.
    pub access_group_id: Option<String>,
    /// Admit all groups.
    pub authorize_all_groups: Option<bool>,
    /// cvpn, beyond AWS: admit only this protocol (`tcp`, `udp`, `icmp`).
    #[serde(default)]
    pub protocol: Option<String>,
    /// With `protocol` tcp or udp: only these destination ports, `443` or `8000-8100`.
    #[serde(default)]
    pub port_range: Option<String>,
    /// Free text, at most 255 characters.
    pub description: Option<String>,
}

/// Remove an authorization rule: exactly one of `access-group-id` and
/// `revoke-all-groups: true`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RevokeRequest {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The destination.
    pub target_network_cidr: String,
    /// The group of the rule.
    pub access_group_id: Option<String>,
    /// The all-groups rule.
    pub revoke_all_groups: Option<bool>,
    /// The rule's protocol, if it has one.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The rule's port range, if it has one.
    #[serde(default)]
    pub port_range: Option<String>,
}

// ---- connections --------------------------------------------------------------------------------

/// A client connection, with the connection log's field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Connection {
    /// `cvpn-connection-<17 hex>`.
    pub connection_id: String,
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// State.
    pub status: ConnectionStatus,
    /// The address the client got from the client CIDR.
    pub client_ip: Ipv4Addr,
    /// The client certificate's common name.
    pub common_name: String,
    /// The user name (directory or federated authentication; else the common name, or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The client device's public address.
    pub device_ip: IpAddr,
    /// The client device's source port.
    pub port: u16,
    /// UDP or TCP.
    pub transport_protocol: TransportProtocol,
    /// When the connection was established.
    pub connection_start_time: Timestamp,
    /// When counters were last recorded.
    pub connection_last_update_time: Timestamp,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_end_time: Option<Timestamp>,
    /// Bytes from the client.
    pub ingress_bytes: u64,
    /// Bytes to the client.
    pub egress_bytes: u64,
    /// Packets from the client.
    pub ingress_packets: u64,
    /// Packets to the client.
    pub egress_packets: u64,
    /// The gateway node that holds it (cvpn; not in AWS's shape). None: recorded before
    /// nodes existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A new connection, as the daemon records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewConnection {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// Address from the client CIDR.
    pub client_ip: Ipv4Addr,
    /// Certificate common name.
    pub common_name: String,
    /// User name, if any.
    pub username: Option<String>,
    /// Device address.
    pub device_ip: IpAddr,
    /// Device port.
    pub device_port: u16,
    /// Transport.
    pub transport_protocol: TransportProtocol,
}

/// Which connections to describe. Connections that ended more than the retention period ago
/// are never shown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConnectionFilter {
    /// Only this endpoint's.
    pub client_vpn_endpoint_id: Option<String>,
    /// Only this connection.
    pub connection_id: Option<String>,
    /// Only this user's.
    pub username: Option<String>,
    /// Only in this state.
    pub status: Option<ConnectionStatus>,
}

/// Which connections to terminate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TerminateTarget {
    /// One connection.
    ConnectionId(String),
    /// Every active connection of a user.
    Username(String),
}

/// One connection a terminate call changed (AWS's `TerminateConnectionStatus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TerminatedConnection {
    /// The connection.
    pub connection_id: String,
    /// Its state before.
    pub previous_status: ConnectionStatus,
    /// Its state now (`terminating`).
    pub current_status: ConnectionStatus,
}

// ---- CRL, quotas, housekeeping ------------------------------------------------------------------

/// A summary of an imported certificate revocation list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CrlSummary {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// Number of CRLs in the PEM text.
    pub crls: usize,
    /// Revoked certificates, all CRLs together.
    pub entries: usize,
    /// Their serial numbers, `aa:bb:..` hex (the format of the TLS layer's client identity),
    /// so that the daemon can terminate the sessions of revoked certificates.
    pub revoked_serials: Vec<String>,
}

/// A client certificate the self-service portal issued (the certificate itself and its key
/// are given to the user once and not kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PortalCertificate {
    /// Its serial, `aa:bb:…` hex (the TLS layer's client identity format).
    pub serial: String,
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The user it was issued to (its common name).
    pub username: String,
    /// When it was issued.
    pub issue_time: Timestamp,
    /// When it expires.
    pub not_after: Timestamp,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_time: Option<Timestamp>,
    /// `valid`, `revoked` or `expired` (at the time of the call).
    pub status: String,
}

/// Limits, AWS's defaults. Configurable for tests and larger deployments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Quotas {
    /// Authorization rules per endpoint (AWS: 200).
    pub authorization_rules_per_endpoint: usize,
    /// Routes per target network association, both origins (AWS: 100).
    pub routes_per_association: usize,
    /// Revoked certificates in an endpoint's CRL (AWS: 20 000).
    pub crl_entries: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            authorization_rules_per_endpoint: 200,
            routes_per_association: 100,
            crl_entries: 20_000,
        }
    }
}

/// What a prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PruneReport {
    /// Ended connections past the retention period.
    pub connections: usize,
    /// Disassociated associations past the retention period.
    pub associations: usize,
    /// Deleted endpoints past the retention period.
    pub endpoints: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_and_parse() {
        for (secs, text) in [
            (0, "1970-01-01 00:00:00"),
            (951_782_400, "2000-02-29 00:00:00"),
            (1_585_255_035, "2020-03-26 20:37:15"),
            (-1, "1969-12-31 23:59:59"),
            (4_102_444_799, "2099-12-31 23:59:59"),
        ] {
            assert_eq!(Timestamp(secs).to_string(), text);
            assert_eq!(text.parse::<Timestamp>(), Ok(Timestamp(secs)));
        }
        for bad in [
            "2020-02-30 00:00:00",
            "2020-13-01 00:00:00",
            "2020-01-01T00:00:00",
            "x",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
    }

    #[test]
    fn resources_serialize_with_kebab_case_names() {
        let opt = AuthenticationOption::CertificateAuthentication {
            client_root_certificate_chain: "PEM".into(),
        };
        let s = toml::to_string(&Quotas::default()).unwrap();
        assert!(s.contains("authorization-rules-per-endpoint = 200"), "{s}");
        #[derive(Serialize)]
        struct W {
            o: AuthenticationOption,
        }
        let s = toml::to_string(&W { o: opt }).unwrap();
        assert!(s.contains("type = \"certificate-authentication\""), "{s}");
        assert!(s.contains("client-root-certificate-chain = \"PEM\""), "{s}");
        assert_eq!(
            EndpointStatus::PendingAssociate.as_str(),
            "pending-associate"
        );
        assert_eq!(
            ConnectionStatus::parse("failed-to-terminate"),
            Some(ConnectionStatus::FailedToTerminate)
        );
        assert_eq!(RouteOrigin::parse("add-route"), Some(RouteOrigin::AddRoute));
    }
}
