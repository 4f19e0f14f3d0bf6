//! The AWS-compatible API: the EC2 Query protocol's Client VPN actions ([`ec2`]) and ACM's
//! certificate import ([`acm`]) on one HTTP listener (`[aws_api] listen`), so that `aws ec2 …
//! --endpoint-url`, `aws acm import-certificate --endpoint-url …` and boto3 drive cvpn
//! unchanged.
//!
//! Every request is `POST /`, signed with AWS Signature Version 4 ([`sigv4`]) by an access
//! key that `cvpn access-key create` made; the key's permission (full or read-only) decides
//! what it may call. EC2 requests are form-encoded ([`query`]) and answered in EC2's XML
//! ([`xml`]); ACM requests are JSON 1.1 (`X-Amz-Target: CertificateManager.<Op>`).
//! `GET /metrics` serves the node's Prometheus metrics ([`crate::metrics`]) unsigned.
//!
//! ```text
//!  aws / boto3 ──POST /──▶ sigv4::verify ──▶ ec2::run ──(in-process)──▶ api::router ──▶ Store
//!                                         └─▶ acm::run ─────────────────────────────────▶ Store
//! ```

pub mod acm;
pub mod ec2;
pub mod query;
pub mod sigv4;
pub mod xml;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tracing::info;

use crate::api::ApiState;
use crate::model::{AccessKeyPermission, ApiError};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The region this listener answers for when the configuration names none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// What the listener shares.
#[derive(Debug)]
pub struct AwsState {
    /// The management API's state: its router does the work.
    pub api: Arc<ApiState>,
    /// The region of the ARNs made here (`[aws_api] region`).
    pub region: String,
    /// This node's metrics, served at `GET /metrics` (no signature: Prometheus does not sign).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// An authenticated request's caller.
#[derive(Debug)]
pub struct Caller {
    /// The management API's state.
    pub api: Arc<ApiState>,
    /// The key that signed the request.
    pub access_key_id: String,
    /// What the key may do.
    pub permission: AccessKeyPermission,
    /// This request's id (in the answer and the log).
    pub request_id: String,
    /// The listener's region.
    pub region: String,
}

/// An error answered to an AWS client: HTTP status, AWS code, message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AwsError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl AwsError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> AwsError {
        AwsError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> AwsError {
        AwsError::new(500, "InternalError", message)
    }
}

impl From<ApiError> for AwsError {
    fn from(e: ApiError) -> Self {
        // EC2 answers client errors with 400 whatever they are (not found included).
        let status = match e.http_status() {
            s @ (500 | 503) => s,
            _ => 400,
        };
        AwsError::new(status, e.code, e.message)
    }
}

/// The `NextToken` of the page that starts at `offset` of a listing.
pub(crate) fn page_token(offset: usize) -> String {
    format!("cvpn-page-{offset}")
}

/// Where the page named by `token` starts in a listing of `len` items: `None` for a token this
/// API did not give, or one past the listing's end (the listing shrank since).
pub(crate) fn page_offset(token: &str, len: usize) -> Option<usize> {
    token
        .strip_prefix("cvpn-page-")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n <= len)
}

fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn now_secs() -> i64 {
    crate::model::Timestamp::now().0
}

/// The listener's router: `POST /` only.
pub fn router(state: Arc<AwsState>) -> Router {
    Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::api::MAX_BODY_BYTES,
        ))
        .with_state(state)
}

/// Which protocol a request speaks.
enum Protocol {
    Ec2,
    /// ACM's JSON 1.1, with the operation from `X-Amz-Target`.
    Acm(String),
}

fn ec2_error(e: &AwsError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        xml::error_document(&e.code, &e.message, request_id),
    )
        .into_response()
}

async fn handle(
    State(state): State<Arc<AwsState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let rid = request_id();
    let protocol = match headers.get("x-amz-target").map(|v| v.to_str()) {
        None => Protocol::Ec2,
        Some(Ok(t)) => {
            match t.strip_prefix("CertificateManager.") {
                Some(op) => Protocol::Acm(op.to_string()),
                None => {
                    let e = AwsError::new(
                    400,
                    "UnknownOperationException",
                    format!("X-Amz-Target {t:?}: this listener serves EC2 and CertificateManager only"),
                );
                    return acm::error_response(&e, &rid);
                }
            }
        }
        Some(Err(_)) => {
            let e = AwsError::new(400, "UnknownOperationException", "X-Amz-Target is not text");
            return acm::error_response(&e, &rid);
        }
    };
    let fail = |e: &AwsError| match &protocol {
        Protocol::Ec2 => ec2_error(e, &rid),
        Protocol::Acm(_) => acm::error_response(e, &rid),
    };
    if method == Method::GET && uri.path() == "/metrics" {
        return metrics(&state).await;
    }
    if method != Method::POST || uri.path() != "/" {
        return fail(&AwsError::new(
            400,
            "InvalidAction",
            format!("{method} {}: the AWS API takes POST / only", uri.path()),
        ));
    }
    // Who signed it?
    let service = match protocol {
        Protocol::Ec2 => "ec2",
        Protocol::Acm(_) => "acm",
    };
    let caller = match authenticate(&state, &uri, &headers, &body, service, &rid).await {
        Ok(c) => c,
        Err(e) => {
            info!(request = %rid, service, code = %e.code, "AWS API: request refused");
            return fail(&e);
        }
    };
    let (answer, action) = match &protocol {
        Protocol::Ec2 => {
            let run = async {
                let p = query::Params::parse(&body)?;
                let action = p.required("Action")?;
                let version = p.required("Version")?;
                if version != ec2::API_VERSION {
                    tracing::debug!(request = %rid, %version, "AWS API: another EC2 API version named; answering as 2016-11-15");
                }
                let out = ec2::run(&caller, &action, &p).await;
                Ok::<_, AwsError>((out, action))
            };
            match run.await {
                Ok((Ok(xml), action)) => (
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
                        xml,
                    )
                        .into_response(),
                    action,
                ),
                Ok((Err(e), action)) => (ec2_error(&e, &rid), action),
                Err(e) => (ec2_error(&e, &rid), "-".into()),
            }
        }
        Protocol::Acm(op) => (acm::run(&caller, op, &body).await, op.clone()),
    };
    info!(
        request = %rid,
        key = %caller.access_key_id,
        service,
        action = %action,
        status = answer.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "AWS API request"
    );
    answer
}

async fn authenticate(
    state: &Arc<AwsState>,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    service: &str,
    rid: &str,
) -> Result<Caller, AwsError> {
    let req = sigv4::SignedRequest {
        method: "POST",
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect(),
        body,
    };
    let refused = |e: sigv4::SigV4Error| {
        let status = match &e {
            sigv4::SigV4Error::Expired { .. } => 400,
            _ => 401,
        };
        AwsError::new(status, e.code(), e.to_string())
    };
    let pending = sigv4::prepare(&req, service, now_secs()).map_err(refused)?;
    let id = pending.access_key_id().to_string();
    let found = state
        .api
        .blocking(move |s| s.access_key_secret(&id))
        .await?;
    let signer = pending
        .verify(found.as_ref().map(|(secret, _)| secret.as_str()))
        .map_err(refused)?;
    let permission = found.map(|(_, p)| p);
    let permission = permission.unwrap_or(AccessKeyPermission::ReadOnly);
    let id = signer.access_key_id.clone();
    let _ = state.api.blocking(move |s| s.access_key_used(&id)).await;
    Ok(Caller {
        api: Arc::clone(&state.api),
        access_key_id: signer.access_key_id,
        permission,
        request_id: rid.to_string(),
        region: state.region.clone(),
    })
}

/// `GET /metrics`: the node's metrics, Prometheus's text format (OpenMetrics).
async fn metrics(state: &Arc<AwsState>) -> Response {
    let Some(m) = state.metrics.clone() else {
        return (StatusCode::NOT_FOUND, "no metrics here\n").into_response();
    };
    let node = m.node().to_string();
    let now = now_secs();
    let stored = state
        .api
        .blocking(move |s| crate::metrics::stored_endpoints(s, &node, now))
        .await;
    match stored {
        Ok(stored) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            m.render(&stored),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("metrics: the database did not answer: {e}\n"),
        )
            .into_response(),
    }
}

/// Serves the AWS-compatible API on a bound listener (TLS with `tls`, plain HTTP without)
/// until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<AwsState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    crate::api::serve::serve_router(
        listener,
        tls,
        router(state),
        "aws-api",
        MAX_CONNECTIONS,
        shutdown,
    )
    .await;
}

/// Where the listener is, for logs.
pub fn describe(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

#[cfg(test)]
mod tests;
