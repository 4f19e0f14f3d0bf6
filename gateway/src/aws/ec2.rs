//! The EC2 Query API's Client VPN operations, each turned into a call of the management API
//! (`crate::api`, driven in-process through its router) and its answer into EC2's XML. The
//! management API stays the one place that validates, writes and tells the daemon: a change
//! made here takes effect exactly as one made with `cvpn` or `curl`.
//!
//! # AWS identifiers and what they name here
//!
//! | AWS | cvpn |
//! |---|---|
//! | `SubnetId`, `TargetVpcSubnetId` | a target network: `INTERFACE` of the node the request reaches, or `NODE:INTERFACE` |
//! | `VpcId` (target networks, `ApplySecurityGroupsToClientVpnTargetNetwork`) | the node |
//! | `SecurityGroupId` | a security group (`cvpn security-group create`), `sg-…` |
//! | `ServerCertificateArn` | a certificate imported with its key (and chain) by `aws acm import-certificate` (`acm.rs`) |
//! | `ClientRootCertificateChainArn` | an imported certificate: its chain is the client CA (AWS's meaning), or the certificate itself when imported without a chain |
//! | `ActiveDirectory.DirectoryId` | a directory (`cvpn directory create`): its id or name |
//! | `SAMLProviderArn`, `SelfServiceSAMLProviderArn` | an identity provider: `idp-…` or an ARN ending in `/idp-…` |
//! | `LambdaFunctionArn` | a connect handler: `arn:aws:lambda:…:function:NAME` runs `NAME` in `[connect_handler] executable_dir`; an `https://` URL or an absolute path is taken as it is |
//! | `CloudwatchLogGroup` / `CloudwatchLogStream` | described as `cvpn` / `connection.log`: the JSON-lines log in the data directory |

use std::sync::Arc;

use axum::body::Body as AxumBody;
use axum::http::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::query::Params;
use super::xml::Xml;
use super::{AwsError, Caller};
use crate::api::types::{
    AuthorizationRuleList, ClientConfigExport, ConnectionList, CrlExport, EndpointList, RouteList,
    TargetNetworkList, TerminateResult,
};
use crate::model::{
    AccessKeyPermission, AssociateResult, AuthenticationOption, AuthorizationRule, Connection,
    DisassociateResult, Endpoint, ErrorBody, ModifyEndpointResult, Route, TargetNetwork, Timestamp,
};

/// The API version the protocol names.
pub const API_VERSION: &str = "2016-11-15";

/// The operations, with whether a read-only key may call them.
pub const OPERATIONS: &[(&str, bool)] = &[
    ("CreateClientVpnEndpoint", false),
    ("DescribeClientVpnEndpoints", true),
    ("ModifyClientVpnEndpoint", false),
    ("DeleteClientVpnEndpoint", false),
    ("AssociateClientVpnTargetNetwork", false),
    ("DisassociateClientVpnTargetNetwork", false),
    ("DescribeClientVpnTargetNetworks", true),
    ("CreateClientVpnRoute", false),
    ("DeleteClientVpnRoute", false),
    ("DescribeClientVpnRoutes", true),
    ("AuthorizeClientVpnIngress", false),
    ("RevokeClientVpnIngress", false),
    ("DescribeClientVpnAuthorizationRules", true),
    ("DescribeClientVpnConnections", true),
    ("TerminateClientVpnConnections", false),
    ("ExportClientVpnClientConfiguration", true),
    ("ImportClientVpnClientCertificateRevocationList", false),
    ("ExportClientVpnClientCertificateRevocationList", true),
    ("ApplySecurityGroupsToClientVpnTargetNetwork", false),
];

/// The operations whose `ClientToken` makes them idempotent.
const IDEMPOTENT: &[&str] = &[
    "CreateClientVpnEndpoint",
    "AssociateClientVpnTargetNetwork",
    "AuthorizeClientVpnIngress",
    "CreateClientVpnRoute",
];

/// Runs one EC2 action for an authenticated caller: the XML answer, or an error.
pub async fn run(caller: &Caller, action: &str, p: &Params) -> Result<String, AwsError> {
    let Some(&(_, read_only_ok)) = OPERATIONS.iter().find(|(a, _)| *a == action) else {
        return Err(AwsError::new(
            400,
            "InvalidAction",
            format!(
                "the action {action} is not valid for this web service; cvpn serves the Client \
                 VPN actions of EC2 API version {API_VERSION}"
            ),
        ));
    };
    if caller.permission == AccessKeyPermission::ReadOnly && !read_only_ok {
        return Err(AwsError::new(
            403,
            "UnauthorizedOperation",
            format!(
                "You are not authorized to perform this operation: access key {} is read-only \
                 ({action} changes things); use a key made with --permission full",
                caller.access_key_id
            ),
        ));
    }
    let dry_run = p.bool("DryRun")?.unwrap_or(false);
    let token = if IDEMPOTENT.contains(&action) {
        p.get("ClientToken")
    } else {
        None
    };
    if dry_run {
        // Only the caller's right to act is checked, as AWS does.
        p.mark_all();
        return Err(AwsError::new(
            412,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    let Some(token) = token else {
        return dispatch(caller, action, p).await;
    };
    let hash = {
        let text = p.canonical_without(&["ClientToken", "DryRun"]);
        let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (t, a, h) = (token.clone(), action.to_string(), hash);
    let claim = caller
        .api
        .blocking(move |s| s.claim_client_token(&t, &a, &h))
        .await?;
    use crate::storage::client_tokens::TokenClaim;
    match claim {
        TokenClaim::Answered(xml) => {
            // Every parameter was part of the first call: nothing is unknown now.
            p.mark_all();
            Ok(xml)
        }
        TokenClaim::Mismatch => Err(AwsError::new(
            400,
            "IdempotentParameterMismatch",
            format!(
                "the ClientToken {token:?} was used before for {action} with other parameters: \
                 use a new token for a new request"
            ),
        )),
        TokenClaim::Running => Err(AwsError::new(
            409,
            "IncorrectState",
            format!(
                "a {action} call with ClientToken {token:?} is still running: retry in a moment"
            ),
        )),
        TokenClaim::Fresh => {
            let out = dispatch(caller, action, p).await;
            let (t, a) = (token.clone(), action.to_string());
            let answer = out.as_ref().ok().cloned();
            let _ = caller
                .api
                .blocking(move |s| s.finish_client_token(&t, &a, answer.as_deref()))
                .await;
            out
        }
    }
}

async fn dispatch(caller: &Caller, action: &str, p: &Params) -> Result<String, AwsError> {
    let x = Xml::response(action, &caller.request_id);
    let x = match action {
        "CreateClientVpnEndpoint" => create_endpoint(caller, p, x).await?,
        "DescribeClientVpnEndpoints" => describe_endpoints(caller, p, x).await?,
        "ModifyClientVpnEndpoint" => modify_endpoint(caller, p, x).await?,
        "DeleteClientVpnEndpoint" => delete_endpoint(caller, p, x).await?,
        "AssociateClientVpnTargetNetwork" => associate(caller, p, x).await?,
        "DisassociateClientVpnTargetNetwork" => disassociate(caller, p, x).await?,
        "DescribeClientVpnTargetNetworks" => describe_networks(caller, p, x).await?,
        "CreateClientVpnRoute" => create_route(caller, p, x).await?,
        "DeleteClientVpnRoute" => delete_route(caller, p, x).await?,
        "DescribeClientVpnRoutes" => describe_routes(caller, p, x).await?,
        "AuthorizeClientVpnIngress" => authorize(caller, p, x).await?,
        "RevokeClientVpnIngress" => revoke(caller, p, x).await?,
        "DescribeClientVpnAuthorizationRules" => describe_rules(caller, p, x).await?,
        "DescribeClientVpnConnections" => describe_connections(caller, p, x).await?,
        "TerminateClientVpnConnections" => terminate(caller, p, x).await?,
        "ExportClientVpnClientConfiguration" => export_config(caller, p, x).await?,
        "ImportClientVpnClientCertificateRevocationList" => import_crl(caller, p, x).await?,
        "ExportClientVpnClientCertificateRevocationList" => export_crl(caller, p, x).await?,
        "ApplySecurityGroupsToClientVpnTargetNetwork" => {
            apply_security_groups(caller, p, x).await?
        }
        _ => unreachable!("OPERATIONS lists every action dispatched"),
    };
    Ok(x.finish(action))
}

// ---- the management API, in-process ------------------------------------------------------------

/// Calls the management API's `method path` with a JSON body, and reads its JSON answer.
async fn call<T: DeserializeOwned>(
    caller: &Caller,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<T, AwsError> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(match body {
            Some(b) => AxumBody::from(b.to_string()),
            None => AxumBody::empty(),
        })
        .map_err(|e| AwsError::internal(format!("building an API request: {e}")))?;
    let resp = crate::api::router(Arc::clone(&caller.api))
        .oneshot(req)
        .await
        .map_err(|e| AwsError::internal(format!("API call: {e}")))?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), crate::api::MAX_BODY_BYTES * 2)
        .await
        .map_err(|e| AwsError::internal(format!("API answer: {e}")))?;
    if !status.is_success() {
        let err: ErrorBody = serde_json::from_slice(&bytes).map_err(|e| {
            AwsError::internal(format!("API error answer ({status}) does not parse: {e}"))
        })?;
        return Err(AwsError::new(
            if status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT {
                400
            } else {
                status.as_u16()
            },
            err.error.code,
            ec2_field_names(&err.error.message),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| AwsError::internal(format!("API answer does not parse: {e}")))
}

/// The management API's messages name its kebab-case fields; a caller of EC2 knows them by
/// their EC2 names.
fn ec2_field_names(message: &str) -> String {
    const NAMES: &[(&str, &str)] = &[
        ("client-vpn-endpoint-id", "ClientVpnEndpointId"),
        ("client-cidr-block", "ClientCidrBlock"),
        ("target-network-cidr", "TargetNetworkCidr"),
        ("destination-cidr-block", "DestinationCidrBlock"),
        ("target-network-id", "SubnetId"),
        ("access-group-id", "AccessGroupId"),
        ("transport-protocol", "TransportProtocol"),
        ("vpn-port", "VpnPort"),
        ("dns-servers", "DnsServers"),
        ("session-timeout-hours", "SessionTimeoutHours"),
        ("certificate-revocation-list", "CertificateRevocationList"),
        ("authentication-options", "AuthenticationOptions"),
    ];
    let mut m = message.to_string();
    for (k, v) in NAMES {
        m = m.replace(k, v);
    }
    m
}

fn path_id(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn endpoint_path(p: &Params) -> Result<(String, String), AwsError> {
    let id = p.required("ClientVpnEndpointId")?;
    let path = format!("/v1/endpoints/{}", path_id(&id));
    Ok((id, path))
}

// ---- shared shapes ------------------------------------------------------------------------------

/// `2020-11-13T11:37:27`: how EC2 writes an endpoint's times.
fn iso(t: Timestamp) -> String {
    t.to_string().replace(' ', "T")
}

fn status(x: &mut Xml, name: &str, code: &str, message: Option<&str>) {
    x.open(name);
    x.leaf("code", code);
    if let Some(m) = message {
        x.leaf("message", m);
    }
    x.close(name);
}

fn bool_text(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// A target network's name in EC2's terms: `NODE:INTERFACE`, or the interface alone.
fn subnet_id(t: &TargetNetwork) -> String {
    match &t.node {
        Some(n) => format!("{n}:{}", t.target_network_id),
        None => t.target_network_id.clone(),
    }
}

/// `Filter.N.Name` / `Filter.N.Value.M`: the filters, checked against the names the action
/// takes.
fn filters(p: &Params, allowed: &[&str]) -> Result<Vec<(String, Vec<String>)>, AwsError> {
    let mut out = Vec::new();
    for f in p.structs("Filter")? {
        let name = p.required(&format!("{f}.Name"))?;
        if !allowed.contains(&name.as_str()) {
            return Err(AwsError::new(
                400,
                "InvalidParameterValue",
                format!(
                    "the filter {name:?} is invalid here; this action filters by {}",
                    allowed.join(", ")
                ),
            ));
        }
        out.push((name, p.list(&format!("{f}.Value"))?));
    }
    Ok(out)
}

/// Whether an item passes every filter: `value_of(name)` gives the item's values for a filter.
fn passes(filters: &[(String, Vec<String>)], value_of: impl Fn(&str) -> Vec<String>) -> bool {
    filters
        .iter()
        .all(|(name, wanted)| value_of(name).iter().any(|v| wanted.contains(v)))
}

/// `MaxResults` / `NextToken`: the page of `items` to answer, and the token of the next one.
fn page<T>(p: &Params, items: Vec<T>) -> Result<(Vec<T>, Option<String>), AwsError> {
    let max = match p.int("MaxResults")? {
        None => 1000,
        Some(n) if (5..=1000).contains(&n) => usize::try_from(n).unwrap_or(1000),
        Some(n) => {
            return Err(AwsError::new(
                400,
                "InvalidParameterValue",
                format!("MaxResults {n} is out of range: 5 to 1000"),
            ))
        }
    };
    let start = match p.get("NextToken") {
        None => 0,
        Some(t) => super::page_offset(&t, items.len()).ok_or_else(|| {
            AwsError::new(
                400,
                "InvalidParameterValue",
                format!(
                    "NextToken {t:?} is not a token this API gave, or the list has \
                         shrunk since: describe again from the start"
                ),
            )
        })?,
    };
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(start).take(max).collect();
    let next = (start + page.len() < total).then(|| super::page_token(start + page.len()));
    Ok((page, next))
}

fn next_token(x: &mut Xml, next: Option<String>) {
    if let Some(t) = next {
        x.leaf("nextToken", &t);
    }
}

// ---- endpoints ----------------------------------------------------------------------------------

async fn certificate_pem(
    caller: &Caller,
    arn: String,
) -> Result<(String, Option<String>), AwsError> {
    Ok(caller
        .api
        .blocking(move |s| s.certificate_material(&arn))
        .await?)
}

/// `Authentication.N.*` → the management API's authentication options.
async fn authentication_options(caller: &Caller, p: &Params) -> Result<Vec<Value>, AwsError> {
    let mut out = Vec::new();
    for a in p.structs("Authentication")? {
        let kind = p.required(&format!("{a}.Type"))?;
        match kind.as_str() {
            "certificate-authentication" => {
                let arn = p.required(&format!(
                    "{a}.MutualAuthentication.ClientRootCertificateChainArn"
                ))?;
                let pem = caller
                    .api
                    .blocking(move |s| s.client_ca_material(&arn))
                    .await?;
                out.push(json!({"type": kind, "client-root-certificate-chain": pem}));
            }
            "directory-service-authentication" => {
                let id = p.required(&format!("{a}.ActiveDirectory.DirectoryId"))?;
                out.push(json!({"type": kind, "directory-id": id}));
            }
            "federated-authentication" => {
                let arn = p.required(&format!("{a}.FederatedAuthentication.SAMLProviderArn"))?;
                let mut o = json!({"type": kind, "saml-provider-arn": arn});
                if let Some(s) = p.get(&format!(
                    "{a}.FederatedAuthentication.SelfServiceSAMLProviderArn"
                )) {
                    o["self-service-saml-provider-arn"] = json!(s);
                }
                out.push(o);
            }
            other => {
                return Err(AwsError::new(
                    400,
                    "InvalidParameterValue",
                    format!(
                        "{a}.Type {other:?} is not certificate-authentication, \
                         directory-service-authentication or federated-authentication"
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// `LambdaFunctionArn` → a connect handler (see the module's table).
fn connect_handler(caller: &Caller, arn: &str) -> Result<String, AwsError> {
    if let Some(rest) = arn.strip_prefix("arn:aws:lambda:") {
        let name = rest.split(":function:").nth(1).unwrap_or_default();
        let name = name.split(':').next().unwrap_or_default();
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        let dir = caller.api.store.handler_policy().executable_dir.clone();
        return match (ok, dir) {
            (true, Some(dir)) => Ok(dir.join(name).display().to_string()),
            (false, _) => Err(AwsError::new(
                400,
                "InvalidParameterValue",
                format!(
                    "LambdaFunctionArn {arn:?} is not arn:aws:lambda:REGION:ACCOUNT:function:NAME"
                ),
            )),
            (true, None) => Err(AwsError::new(
                400,
                "InvalidParameterValue",
                format!(
                    "LambdaFunctionArn {arn:?} names the executable {name:?} of [connect_handler] \
                     executable_dir, but the daemon's configuration has none: set it, or give \
                     the handler's https:// URL"
                ),
            )),
        };
    }
    Ok(arn.to_string())
}

/// The options both create and modify take, as management API fields.
fn common_endpoint_fields(caller: &Caller, p: &Params, body: &mut Value) -> Result<(), AwsError> {
    if let Some(v) = p.int("VpnPort")? {
        body["vpn-port"] = json!(v);
    }
    if let Some(v) = p.get("Description") {
        body["description"] = json!(v);
    }
    if let Some(v) = p.bool("SplitTunnel")? {
        body["split-tunnel"] = json!(v);
    }
    if let Some(v) = p.int("SessionTimeoutHours")? {
        body["session-timeout-hours"] = json!(v);
    }
    if let Some(v) = p.bool("DisconnectOnSessionTimeout")? {
        body["disconnect-on-session-timeout"] = json!(v);
    }
    if let Some(v) = p.get("SelfServicePortal") {
        body["self-service-portal"] = json!(match v.as_str() {
            "enabled" => true,
            "disabled" => false,
            other =>
                return Err(AwsError::new(
                    400,
                    "InvalidParameterValue",
                    format!("SelfServicePortal {other:?} is not enabled or disabled"),
                )),
        });
    }
    if p.has_struct("ConnectionLogOptions") {
        let enabled = p.bool("ConnectionLogOptions.Enabled")?.unwrap_or(false);
        // The log group and stream name cvpn's own log file; any names are accepted.
        let _ = p.get("ConnectionLogOptions.CloudwatchLogGroup");
        let _ = p.get("ConnectionLogOptions.CloudwatchLogStream");
        body["connection-log-options"] = json!({"enabled": enabled});
    }
    if p.has_struct("ClientConnectOptions") {
        let enabled = p.bool("ClientConnectOptions.Enabled")?.unwrap_or(false);
        let mut o = json!({"enabled": enabled});
        if let Some(arn) = p.get("ClientConnectOptions.LambdaFunctionArn") {
            o["handler"] = json!(connect_handler(caller, &arn)?);
        }
        body["client-connect-options"] = o;
    }
    if p.has_struct("ClientLoginBannerOptions") {
        let enabled = p.bool("ClientLoginBannerOptions.Enabled")?.unwrap_or(false);
        let mut o = json!({"enabled": enabled});
        if let Some(t) = p.get("ClientLoginBannerOptions.BannerText") {
            o["banner-text"] = json!(t);
        }
        body["client-login-banner-options"] = o;
    }
    // Accepted for compatibility and ignored: AWS-only placement (one VPC, AZs) and client
    // route enforcement (cvpn pushes routes; the kernel enforces policy whatever the client's
    // table says).
    let _ = p.get("VpcId");
    let _ = p.bool("ClientRouteEnforcementOptions.Enforced")?;
    let _ = p.list("SecurityGroupId")?;
    Ok(())
}

async fn create_endpoint(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let mut body = json!({});
    body["client-cidr-block"] = json!(p.required("ClientCidrBlock")?);
    let (cert, key) = certificate_pem(caller, p.required("ServerCertificateArn")?).await?;
    let Some(key) = key else {
        return Err(AwsError::new(
            400,
            "InvalidParameterValue",
            "ServerCertificateArn names a certificate imported without its private key: \
             import it again with --private-key",
        ));
    };
    body["server-certificate"] = json!(cert);
    body["server-private-key"] = json!(key);
    body["authentication-options"] = json!(authentication_options(caller, p).await?);
    if let Some(t) = p.get("TransportProtocol") {
        body["transport-protocol"] = json!(t);
    }
    let dns = p.list("DnsServers")?;
    if !dns.is_empty() {
        body["dns-servers"] = json!(dns);
    }
    let mut tags = Vec::new();
    for spec in p.structs("TagSpecification")? {
        let _ = p.get(&format!("{spec}.ResourceType"));
        for t in p.structs(&format!("{spec}.Tag"))? {
            tags.push(json!({
                "key": p.required(&format!("{t}.Key"))?,
                "value": p.get(&format!("{t}.Value")).unwrap_or_default(),
            }));
        }
    }
    if !tags.is_empty() {
        body["tags"] = json!(tags);
    }
    common_endpoint_fields(caller, p, &mut body)?;
    let _ = p.get("EndpointIpAddressType");
    let _ = p.get("TrafficIpAddressType");
    p.finish()?;
    let ep: Endpoint = call(caller, Method::POST, "/v1/endpoints", Some(body)).await?;
    x.leaf("clientVpnEndpointId", &ep.client_vpn_endpoint_id);
    status(&mut x, "status", ep.status.as_str(), None);
    x.leaf("dnsName", &dns_name(caller, &ep));
    Ok(x)
}

fn dns_name(caller: &Caller, ep: &Endpoint) -> String {
    match &caller.api.settings.remote_host {
        Some(h) => format!("*.{}.{h}", ep.client_vpn_endpoint_id),
        None => format!("*.{}.cvpn.invalid", ep.client_vpn_endpoint_id),
    }
}

async fn describe_endpoints(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let ids = p.list("ClientVpnEndpointId")?;
    let filters = filters(p, &["endpoint-id", "transport-protocol"])?;
    let mut path = "/v1/endpoints".to_string();
    if !ids.is_empty() {
        let joined: Vec<String> = ids.iter().map(|i| path_id(i)).collect();
        path = format!("{path}?client-vpn-endpoint-ids={}", joined.join(","));
    }
    let list: EndpointList = call(caller, Method::GET, &path, None).await?;
    let items: Vec<Endpoint> = list
        .client_vpn_endpoints
        .into_iter()
        .filter(|e| {
            passes(&filters, |f| match f {
                "endpoint-id" => vec![e.client_vpn_endpoint_id.clone()],
                _ => vec![e.transport_protocol.as_str().to_string()],
            })
        })
        .collect();
    let (items, next) = page(p, items)?;
    p.finish()?;
    let arns = {
        let eps = items.clone();
        caller
            .api
            .blocking(move |s| {
                eps.iter()
                    .map(|e| {
                        Ok((
                            s.certificate_arn_of(&e.server_certificate, false)?,
                            e.client_ca()
                                .map(|ca| s.certificate_arn_of(ca, true))
                                .transpose()?
                                .flatten(),
                        ))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?
    };
    x.open("clientVpnEndpoint");
    for (ep, (server_arn, ca_arn)) in items.iter().zip(arns) {
        endpoint_item(caller, &mut x, ep, server_arn, ca_arn);
    }
    x.close("clientVpnEndpoint");
    next_token(&mut x, next);
    Ok(x)
}

fn endpoint_item(
    caller: &Caller,
    x: &mut Xml,
    ep: &Endpoint,
    server_arn: Option<String>,
    ca_arn: Option<String>,
) {
    x.open("item");
    x.leaf("clientVpnEndpointId", &ep.client_vpn_endpoint_id);
    if let Some(d) = &ep.description {
        x.leaf("description", d);
    }
    let message = ep.listener.as_ref().and_then(|l| {
        l.message
            .clone()
            .or_else(|| Some(format!("listener {}", l.state)))
    });
    status(x, "status", ep.status.as_str(), message.as_deref());
    x.leaf("creationTime", &iso(ep.creation_time));
    if let Some(t) = ep.deletion_time {
        x.leaf("deletionTime", &iso(t));
    }
    x.leaf("dnsName", &dns_name(caller, ep));
    x.leaf("clientCidrBlock", &ep.client_cidr_block.to_string());
    x.open("dnsServer");
    for d in &ep.dns_servers {
        x.leaf("item", &d.to_string());
    }
    x.close("dnsServer");
    x.leaf("splitTunnel", bool_text(ep.split_tunnel));
    x.leaf("vpnProtocol", "openvpn");
    x.leaf("transportProtocol", ep.transport_protocol.as_str());
    x.leaf("vpnPort", &ep.vpn_port.to_string());
    if let Some(a) = server_arn {
        x.leaf("serverCertificateArn", &a);
    }
    x.open("authenticationOptions");
    for o in &ep.authentication_options {
        x.open("item");
        match o {
            AuthenticationOption::CertificateAuthentication { .. } => {
                x.leaf("type", "certificate-authentication");
                x.open("mutualAuthentication");
                if let Some(a) = &ca_arn {
                    x.leaf("clientRootCertificateChain", a);
                }
                x.close("mutualAuthentication");
            }
            AuthenticationOption::DirectoryServiceAuthentication { directory_id } => {
                x.leaf("type", "directory-service-authentication");
                x.open("activeDirectory");
                x.leaf("directoryId", directory_id);
                x.close("activeDirectory");
            }
            AuthenticationOption::FederatedAuthentication {
                saml_provider_arn,
                self_service_saml_provider_arn,
            } => {
                x.leaf("type", "federated-authentication");
                x.open("federatedAuthentication");
                x.leaf("samlProviderArn", saml_provider_arn);
                if let Some(s) = self_service_saml_provider_arn {
                    x.leaf("selfServiceSamlProviderArn", s);
                }
                x.close("federatedAuthentication");
            }
        }
        x.close("item");
    }
    x.close("authenticationOptions");
    x.open("connectionLogOptions");
    x.leaf("Enabled", bool_text(ep.connection_log_options.enabled));
    if ep.connection_log_options.enabled {
        x.leaf("CloudwatchLogGroup", "cvpn");
        x.leaf("CloudwatchLogStream", "connection.log");
    }
    x.close("connectionLogOptions");
    x.open("tagSet");
    for t in &ep.tags {
        x.open("item");
        x.leaf("key", &t.key);
        x.leaf("value", &t.value);
        x.close("item");
    }
    x.close("tagSet");
    x.open("securityGroupIdSet");
    x.close("securityGroupIdSet");
    if let Some(u) = &ep.self_service_portal_url {
        x.leaf("selfServicePortalUrl", u);
    }
    x.open("clientConnectOptions");
    x.leaf("enabled", bool_text(ep.client_connect_options.enabled));
    if let Some(h) = &ep.client_connect_options.handler {
        x.leaf("lambdaFunctionArn", h);
    }
    status(x, "status", "applied", None);
    x.close("clientConnectOptions");
    x.leaf("sessionTimeoutHours", &ep.session_timeout_hours.to_string());
    x.open("clientLoginBannerOptions");
    x.leaf("enabled", bool_text(ep.client_login_banner_options.enabled));
    if let Some(t) = &ep.client_login_banner_options.banner_text {
        x.leaf("bannerText", t);
    }
    x.close("clientLoginBannerOptions");
    x.leaf(
        "disconnectOnSessionTimeout",
        bool_text(ep.disconnect_on_session_timeout),
    );
    x.close("item");
}

async fn modify_endpoint(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let mut body = json!({});
    if let Some(arn) = p.get("ServerCertificateArn") {
        let (cert, key) = certificate_pem(caller, arn).await?;
        body["server-certificate"] = json!(cert);
        if let Some(k) = key {
            body["server-private-key"] = json!(k);
        }
    }
    if p.has_struct("DnsServers") {
        let on = p.bool("DnsServers.Enabled")?.unwrap_or(true);
        let list = p.list("DnsServers.CustomDnsServers")?;
        body["dns-servers"] = json!(if on { list } else { Vec::new() });
    }
    common_endpoint_fields(caller, p, &mut body)?;
    p.finish()?;
    let _: ModifyEndpointResult = call(caller, Method::PATCH, &path, Some(body)).await?;
    x.leaf("return", "true");
    Ok(x)
}

async fn delete_endpoint(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    p.finish()?;
    let r: crate::model::DeleteEndpointResult = call(caller, Method::DELETE, &path, None).await?;
    status(&mut x, "status", r.endpoint.status.as_str(), None);
    Ok(x)
}

// ---- target networks ----------------------------------------------------------------------------

async fn associate(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let subnet = p.required("SubnetId")?;
    let _ = p.get("AvailabilityZone");
    let _ = p.get("AvailabilityZoneId");
    p.finish()?;
    let body = match subnet.split_once(':') {
        Some((node, iface)) => json!({"target-network-id": iface, "node": node}),
        None => json!({"target-network-id": subnet}),
    };
    let r: AssociateResult = call(
        caller,
        Method::POST,
        &format!("{path}/target-networks"),
        Some(body),
    )
    .await?;
    x.leaf("associationId", &r.association.association_id);
    status(&mut x, "status", r.association.status.as_str(), None);
    Ok(x)
}

async fn disassociate(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let assoc = p.required("AssociationId")?;
    p.finish()?;
    let r: DisassociateResult = call(
        caller,
        Method::DELETE,
        &format!("{path}/target-networks/{}", path_id(&assoc)),
        None,
    )
    .await?;
    x.leaf("associationId", &r.association.association_id);
    status(&mut x, "status", r.association.status.as_str(), None);
    Ok(x)
}

async fn describe_networks(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let ids = p.list("AssociationIds")?;
    let filters = filters(p, &["association-id", "target-network-id", "vpc-id"])?;
    let list: TargetNetworkList = call(
        caller,
        Method::GET,
        &format!("{path}/target-networks"),
        None,
    )
    .await?;
    let items: Vec<TargetNetwork> = list
        .client_vpn_target_networks
        .into_iter()
        .filter(|t| ids.is_empty() || ids.contains(&t.association_id))
        .filter(|t| {
            passes(&filters, |f| match f {
                "association-id" => vec![t.association_id.clone()],
                "target-network-id" => vec![subnet_id(t), t.target_network_id.clone()],
                _ => t.node.iter().cloned().collect(),
            })
        })
        .collect();
    let (items, next) = page(p, items)?;
    p.finish()?;
    x.open("clientVpnTargetNetworks");
    for t in &items {
        x.open("item");
        x.leaf("associationId", &t.association_id);
        if let Some(n) = &t.node {
            x.leaf("vpcId", n);
        }
        x.leaf("targetNetworkId", &subnet_id(t));
        x.leaf("clientVpnEndpointId", &t.client_vpn_endpoint_id);
        status(&mut x, "status", t.status.as_str(), None);
        x.open("securityGroups");
        for g in &t.security_group_ids {
            x.leaf("item", g);
        }
        x.close("securityGroups");
        x.close("item");
    }
    x.close("clientVpnTargetNetworks");
    next_token(&mut x, next);
    Ok(x)
}

/// `VpcId` names the node whose target networks take the groups (module table).
async fn apply_security_groups(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let vpc = p.required("VpcId")?;
    let ids = p.list("SecurityGroupId")?;
    p.finish()?;
    let r: crate::model::ApplySecurityGroupsResult = call(
        caller,
        Method::POST,
        &format!("{path}/security-groups"),
        Some(json!({"vpc-id": vpc, "security-group-ids": ids})),
    )
    .await?;
    x.open("securityGroupIds");
    for g in &r.security_group_ids {
        x.leaf("item", g);
    }
    x.close("securityGroupIds");
    Ok(x)
}

// ---- routes -------------------------------------------------------------------------------------

async fn create_route(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let mut body = json!({
        "destination-cidr-block": p.required("DestinationCidrBlock")?,
        "target-network-id": p.required("TargetVpcSubnetId")?,
    });
    if let Some(d) = p.get("Description") {
        body["description"] = json!(d);
    }
    p.finish()?;
    let r: Route = call(caller, Method::POST, &format!("{path}/routes"), Some(body)).await?;
    status(&mut x, "status", r.status.as_str(), None);
    Ok(x)
}

async fn delete_route(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let mut body = json!({"destination-cidr-block": p.required("DestinationCidrBlock")?});
    if let Some(s) = p.get("TargetVpcSubnetId") {
        body["target-network-id"] = json!(s);
    }
    p.finish()?;
    let _: Route = call(
        caller,
        Method::DELETE,
        &format!("{path}/routes"),
        Some(body),
    )
    .await?;
    status(&mut x, "status", "deleting", None);
    Ok(x)
}

async fn describe_routes(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let filters = filters(p, &["destination-cidr", "origin", "target-subnet"])?;
    let list: RouteList = call(caller, Method::GET, &format!("{path}/routes"), None).await?;
    let items: Vec<Route> = list
        .routes
        .into_iter()
        .filter(|r| {
            passes(&filters, |f| match f {
                "destination-cidr" => vec![r.destination_cidr.to_string()],
                "origin" => vec![r.origin.as_str().to_string()],
                _ => vec![r.target_subnet.clone()],
            })
        })
        .collect();
    let (items, next) = page(p, items)?;
    p.finish()?;
    x.open("routes");
    for r in &items {
        x.open("item");
        x.leaf("clientVpnEndpointId", &r.client_vpn_endpoint_id);
        x.leaf("destinationCidr", &r.destination_cidr.to_string());
        x.leaf("targetSubnet", &r.target_subnet);
        x.leaf("type", "Nat");
        x.leaf("origin", r.origin.as_str());
        status(&mut x, "status", r.status.as_str(), None);
        if let Some(d) = &r.description {
            x.leaf("description", d);
        }
        x.close("item");
    }
    x.close("routes");
    next_token(&mut x, next);
    Ok(x)
}

// ---- authorization rules ------------------------------------------------------------------------

async fn authorize(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let mut body = json!({"target-network-cidr": p.required("TargetNetworkCidr")?});
    if let Some(g) = p.get("AccessGroupId") {
        body["access-group-id"] = json!(g);
    }
    if let Some(a) = p.bool("AuthorizeAllGroups")? {
        body["authorize-all-groups"] = json!(a);
    }
    if let Some(d) = p.get("Description") {
        body["description"] = json!(d);
    }
    p.finish()?;
    let _: AuthorizationRule = call(
        caller,
        Method::POST,
        &format!("{path}/authorization-rules"),
        Some(body),
    )
    .await?;
    status(&mut x, "status", "active", None);
    Ok(x)
}

async fn revoke(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let mut body = json!({"target-network-cidr": p.required("TargetNetworkCidr")?});
    if let Some(g) = p.get("AccessGroupId") {
        body["access-group-id"] = json!(g);
    }
    if let Some(a) = p.bool("RevokeAllGroups")? {
        body["revoke-all-groups"] = json!(a);
    }
    p.finish()?;
    let _: Value = call(
        caller,
        Method::DELETE,
        &format!("{path}/authorization-rules"),
        Some(body),
    )
    .await?;
    status(&mut x, "status", "revoking", None);
    Ok(x)
}

async fn describe_rules(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let filters = filters(p, &["description", "destination-cidr", "group-id"])?;
    let list: AuthorizationRuleList = call(
        caller,
        Method::GET,
        &format!("{path}/authorization-rules"),
        None,
    )
    .await?;
    let items: Vec<AuthorizationRule> = list
        .authorization_rules
        .into_iter()
        .filter(|r| {
            passes(&filters, |f| match f {
                "description" => r.description.iter().cloned().collect(),
                "destination-cidr" => vec![r.destination_cidr.to_string()],
                _ => r.group_id.iter().cloned().collect(),
            })
        })
        .collect();
    let (items, next) = page(p, items)?;
    p.finish()?;
    x.open("authorizationRule");
    for r in &items {
        x.open("item");
        x.leaf("clientVpnEndpointId", &r.client_vpn_endpoint_id);
        if let Some(d) = &r.description {
            x.leaf("description", d);
        }
        if let Some(g) = &r.group_id {
            x.leaf("groupId", g);
        }
        x.leaf("accessAll", bool_text(r.access_all));
        x.leaf("destinationCidr", &r.destination_cidr.to_string());
        status(&mut x, "status", "active", None);
        x.close("item");
    }
    x.close("authorizationRule");
    next_token(&mut x, next);
    Ok(x)
}

// ---- connections --------------------------------------------------------------------------------

async fn describe_connections(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let filters = filters(p, &["connection-id", "username"])?;
    let list: ConnectionList =
        call(caller, Method::GET, &format!("{path}/connections"), None).await?;
    let items: Vec<Connection> = list
        .connections
        .into_iter()
        .filter(|c| {
            passes(&filters, |f| match f {
                "connection-id" => vec![c.connection_id.clone()],
                _ => c.username.iter().cloned().collect(),
            })
        })
        .collect();
    let (items, next) = page(p, items)?;
    p.finish()?;
    x.open("connections");
    for c in &items {
        x.open("item");
        x.leaf("clientVpnEndpointId", &c.client_vpn_endpoint_id);
        x.leaf("timestamp", &c.connection_last_update_time.to_string());
        x.leaf("connectionId", &c.connection_id);
        if let Some(u) = &c.username {
            x.leaf("username", u);
        }
        x.leaf(
            "connectionEstablishedTime",
            &c.connection_start_time.to_string(),
        );
        x.leaf("ingressBytes", &c.ingress_bytes.to_string());
        x.leaf("egressBytes", &c.egress_bytes.to_string());
        x.leaf("ingressPackets", &c.ingress_packets.to_string());
        x.leaf("egressPackets", &c.egress_packets.to_string());
        x.leaf("clientIp", &c.client_ip.to_string());
        x.leaf("commonName", &c.common_name);
        status(&mut x, "status", c.status.as_str(), None);
        x.leaf(
            "connectionEndTime",
            &c.connection_end_time
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
        );
        x.close("item");
    }
    x.close("connections");
    next_token(&mut x, next);
    Ok(x)
}

async fn terminate(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let mut body = json!({});
    if let Some(c) = p.get("ConnectionId") {
        body["connection-id"] = json!(c);
    }
    if let Some(u) = p.get("Username") {
        body["username"] = json!(u);
    }
    p.finish()?;
    let r: TerminateResult = call(
        caller,
        Method::POST,
        &format!("{path}/connections/terminate"),
        Some(body),
    )
    .await?;
    x.leaf("clientVpnEndpointId", &r.client_vpn_endpoint_id);
    if let Some(u) = &r.username {
        x.leaf("username", u);
    }
    x.open("connectionStatuses");
    for s in &r.connection_statuses {
        x.open("item");
        x.leaf("connectionId", &s.connection_id);
        status(&mut x, "previousStatus", s.previous_status.as_str(), None);
        status(&mut x, "currentStatus", s.current_status.as_str(), None);
        x.close("item");
    }
    x.close("connectionStatuses");
    Ok(x)
}

// ---- client configuration and CRL ---------------------------------------------------------------

async fn export_config(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    p.finish()?;
    let r: ClientConfigExport =
        call(caller, Method::GET, &format!("{path}/client-config"), None).await?;
    x.leaf("clientConfiguration", &r.client_configuration);
    Ok(x)
}

async fn import_crl(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    let crl = p.required("CertificateRevocationList")?;
    p.finish()?;
    let _: Value = call(
        caller,
        Method::PUT,
        &format!("{path}/crl"),
        Some(json!({"certificate-revocation-list": crl})),
    )
    .await?;
    x.leaf("return", "true");
    Ok(x)
}

async fn export_crl(caller: &Caller, p: &Params, mut x: Xml) -> Result<Xml, AwsError> {
    let (_, path) = endpoint_path(p)?;
    p.finish()?;
    let r: CrlExport = call(caller, Method::GET, &format!("{path}/crl"), None).await?;
    match &r.certificate_revocation_list {
        Some(c) => {
            x.leaf("certificateRevocationList", c);
            status(&mut x, "status", "active", None);
        }
        None => status(&mut x, "status", "pending", Some("no CRL was imported")),
    }
    Ok(x)
}
