//! The API's own request and response bodies (the resources and most requests are the
//! model's, [`crate::model`]). Lists are wrapped in an object named after them, as
//! AWS's describe calls answer, so that fields can be added without breaking clients.

use serde::{Deserialize, Serialize};

use crate::model::{
    AuthorizationRule, Connection, Endpoint, PortalCertificate, Route, TargetNetwork,
    TerminatedConnection,
};

/// `GET /v1/endpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointList {
    /// The endpoints, oldest first.
    pub client_vpn_endpoints: Vec<Endpoint>,
}

/// `GET /v1/endpoints/{id}/target-networks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TargetNetworkList {
    /// The associations, oldest first (disassociated ones within the retention period too).
    pub client_vpn_target_networks: Vec<TargetNetwork>,
}

/// `GET /v1/endpoints/{id}/routes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RouteList {
    /// The routes, oldest first.
    pub routes: Vec<Route>,
}

/// `GET /v1/endpoints/{id}/authorization-rules`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AuthorizationRuleList {
    /// The rules, oldest first.
    pub authorization_rules: Vec<AuthorizationRule>,
}

/// `GET /v1/endpoints/{id}/connections`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConnectionList {
    /// Active connections and those ended within the retention period, oldest first.
    pub connections: Vec<Connection>,
}

/// `POST /v1/endpoints/{id}/connections/terminate`: exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TerminateRequest {
    /// The endpoint (taken from the path; a body may repeat it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_vpn_endpoint_id: Option<String>,
    /// One connection, `cvpn-connection-…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// Every active connection of this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// The answer to a terminate call (AWS's `TerminateClientVpnConnections` output).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TerminateResult {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The user, when terminating by user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Each connection the call changed.
    pub connection_statuses: Vec<TerminatedConnection>,
}

/// `PUT /v1/endpoints/{id}/crl` with a JSON body (a PEM body is taken as is).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CrlImportRequest {
    /// The endpoint (taken from the path; a body may repeat it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_vpn_endpoint_id: Option<String>,
    /// One or more `X509 CRL` PEM blocks issued by the endpoint's client CA.
    pub certificate_revocation_list: String,
}

/// `GET /v1/endpoints/{id}/crl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CrlExport {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The CRL as imported (PEM); absent when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_revocation_list: Option<String>,
}

/// `GET /v1/endpoints/{id}/client-config` with `Accept: application/json` (the default answer
/// is the profile itself, `text/plain`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientConfigExport {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The OpenVPN client profile.
    pub client_configuration: String,
}

/// `POST /v1/endpoints/{id}/revoke-user`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RevokeUserRequest {
    /// The endpoint (taken from the path; a body may repeat it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_vpn_endpoint_id: Option<String>,
    /// The user whose access ends.
    pub username: String,
}

/// The answer to a revoke-user call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RevokeUserResult {
    /// The endpoint.
    pub client_vpn_endpoint_id: String,
    /// The user.
    pub username: String,
    /// Serials of the portal-issued certificates newly revoked (the endpoint's CRL lists them).
    pub revoked_serials: Vec<String>,
    /// The user's connections being terminated.
    pub connection_statuses: Vec<TerminatedConnection>,
    /// What was done, in words.
    pub message: String,
}

/// `GET /v1/endpoints/{id}/issued-certificates`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IssuedCertificateList {
    /// The certificates, oldest first.
    pub issued_certificates: Vec<PortalCertificate>,
}
