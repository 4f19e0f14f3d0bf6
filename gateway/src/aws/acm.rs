//! ACM's certificate calls, JSON 1.1 (`X-Amz-Target: CertificateManager.<Op>`,
//! `application/x-amz-json-1.1`): `ImportCertificate`, `DescribeCertificate`,
//! `ListCertificates`, `DeleteCertificate`. The EC2 calls name what is imported here by its ARN.
//! Blobs (`Certificate`, `PrivateKey`, `CertificateChain`) arrive base64-encoded, as botocore
//! sends them.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AwsError, Caller};
use crate::model::{AccessKeyPermission, ImportedCertificate};

/// Largest certificate, key or chain accepted, each (a long chain of RSA-4096 certificates
/// fits).
pub const MAX_BLOB_BYTES: usize = 64 * 1024;

/// ACM's error answer: `{"__type": code, "message": …}`.
pub fn error_response(e: &AwsError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [
            (header::CONTENT_TYPE, "application/x-amz-json-1.1"),
            (
                header::HeaderName::from_static("x-amzn-requestid"),
                request_id,
            ),
        ],
        json!({"__type": e.code, "message": e.message}).to_string(),
    )
        .into_response()
}

fn ok(v: Value, request_id: &str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-amz-json-1.1"),
            (
                header::HeaderName::from_static("x-amzn-requestid"),
                request_id,
            ),
        ],
        v.to_string(),
    )
        .into_response()
}

fn validation(message: impl Into<String>) -> AwsError {
    AwsError::new(400, "ValidationException", message)
}

/// A blob member: base64 of PEM text.
fn blob(field: &str, v: Option<&str>) -> Result<Option<String>, AwsError> {
    let Some(v) = v else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v)
        .map_err(|e| validation(format!("{field} is not base64: {e}")))?;
    if bytes.len() > MAX_BLOB_BYTES {
        return Err(validation(format!(
            "{field} is longer than {MAX_BLOB_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| validation(format!("{field} is not PEM text")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ImportRequest {
    certificate: Option<String>,
    private_key: Option<String>,
    certificate_chain: Option<String>,
    certificate_arn: Option<String>,
    #[serde(default)]
    tags: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ArnRequest {
    certificate_arn: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ListRequest {
    max_items: Option<i64>,
    next_token: Option<String>,
    #[serde(default)]
    certificate_statuses: Vec<String>,
    includes: Option<Value>,
    sort_by: Option<String>,
    sort_order: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AwsError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| validation(format!("the request body: {e}")))
}

/// Seconds since 1970, as ACM's timestamps are (botocore reads numbers).
fn epoch(t: crate::model::Timestamp) -> Value {
    json!(t.0)
}

fn detail(c: &ImportedCertificate, in_use_by: &[String], region: &str) -> Value {
    json!({
        "CertificateArn": c.certificate_arn,
        "DomainName": c.domain_name,
        "SubjectAlternativeNames": [c.domain_name],
        "Serial": c.serial,
        "Subject": c.subject,
        "Issuer": c.issuer,
        "ImportedAt": epoch(c.imported_at),
        "NotBefore": epoch(c.not_before),
        "NotAfter": epoch(c.not_after),
        "Status": "ISSUED",
        "Type": "IMPORTED",
        "KeyAlgorithm": c.key_algorithm,
        "InUseBy": in_use_by
            .iter()
            .map(|id| format!("arn:aws:ec2:{region}:000000000000:client-vpn-endpoint/{id}"))
            .collect::<Vec<_>>(),
        "RenewalEligibility": "INELIGIBLE",
    })
}

/// Runs one ACM operation.
pub async fn run(caller: &Caller, op: &str, body: &[u8]) -> Response {
    match run_op(caller, op, body).await {
        Ok(v) => ok(v, &caller.request_id),
        Err(e) => error_response(&e, &caller.request_id),
    }
}

async fn run_op(caller: &Caller, op: &str, body: &[u8]) -> Result<Value, AwsError> {
    let writes = matches!(op, "ImportCertificate" | "DeleteCertificate");
    if writes && caller.permission == AccessKeyPermission::ReadOnly {
        return Err(AwsError::new(
            400,
            "AccessDeniedException",
            format!(
                "access key {} is read-only: {op} needs a key made with --permission full",
                caller.access_key_id
            ),
        ));
    }
    let region = caller.region.clone();
    match op {
        "ImportCertificate" => {
            let r: ImportRequest = parse(body)?;
            let _ = r.tags;
            let cert = blob("Certificate", r.certificate.as_deref())?
                .ok_or_else(|| validation("Certificate is required"))?;
            let key = blob("PrivateKey", r.private_key.as_deref())?;
            let chain =
                blob("CertificateChain", r.certificate_chain.as_deref())?.unwrap_or_default();
            let c = caller
                .api
                .blocking(move |s| {
                    s.import_certificate(
                        r.certificate_arn.as_deref(),
                        &region,
                        &cert,
                        key.as_deref(),
                        &chain,
                    )
                })
                .await
                .map_err(acm_error)?;
            Ok(json!({"CertificateArn": c.certificate_arn}))
        }
        "DescribeCertificate" => {
            let r: ArnRequest = parse(body)?;
            let arn = r.certificate_arn;
            let (c, users) = caller
                .api
                .blocking(move |s| Ok((s.describe_certificate(&arn)?, s.certificate_users(&arn)?)))
                .await
                .map_err(acm_error)?;
            Ok(json!({"Certificate": detail(&c, &users, &caller.region)}))
        }
        "ListCertificates" => {
            let r: ListRequest = parse(body)?;
            let _ = (r.certificate_statuses, r.includes, r.sort_by, r.sort_order);
            let all = caller
                .api
                .blocking(|s| s.list_certificates())
                .await
                .map_err(acm_error)?;
            let max = match r.max_items {
                None => 1000,
                Some(n) if (1..=1000).contains(&n) => usize::try_from(n).unwrap_or(1000),
                Some(n) => {
                    return Err(validation(format!(
                        "MaxItems {n} is out of range: 1 to 1000"
                    )))
                }
            };
            let start = match r.next_token {
                None => 0,
                Some(t) => super::page_offset(&t, all.len()).ok_or_else(|| {
                    AwsError::new(
                        400,
                        "InvalidArgsException",
                        format!("NextToken {t:?} was not given by this API"),
                    )
                })?,
            };
            let total = all.len();
            let page: Vec<Value> = all
                .iter()
                .skip(start)
                .take(max)
                .map(|c| {
                    json!({
                        "CertificateArn": c.certificate_arn,
                        "DomainName": c.domain_name,
                        "Type": "IMPORTED",
                        "Status": "ISSUED",
                        "KeyAlgorithm": c.key_algorithm,
                        "ImportedAt": epoch(c.imported_at),
                        "NotBefore": epoch(c.not_before),
                        "NotAfter": epoch(c.not_after),
                    })
                })
                .collect();
            let mut out = json!({"CertificateSummaryList": page});
            if start + max < total {
                out["NextToken"] = json!(super::page_token(start + max));
            }
            Ok(out)
        }
        "DeleteCertificate" => {
            let r: ArnRequest = parse(body)?;
            let arn = r.certificate_arn;
            caller
                .api
                .blocking(move |s| s.delete_certificate(&arn))
                .await
                .map_err(acm_error)?;
            Ok(json!({}))
        }
        other => Err(AwsError::new(
            400,
            "UnknownOperationException",
            format!(
                "CertificateManager.{other} is not served here: ImportCertificate, \
                 DescribeCertificate, ListCertificates and DeleteCertificate are"
            ),
        )),
    }
}

/// The store's errors in ACM's terms.
fn acm_error(e: crate::model::ApiError) -> AwsError {
    use crate::model::codes;
    let code = match e.code {
        codes::CERTIFICATE_NOT_FOUND => "ResourceNotFoundException",
        codes::CERTIFICATE_IN_USE => "ResourceInUseException",
        codes::LIMIT_EXCEEDED => "LimitExceededException",
        codes::INTERNAL_ERROR | codes::SERVICE_UNAVAILABLE => {
            return AwsError::from(e);
        }
        _ => "ValidationException",
    };
    AwsError::new(400, code, e.message)
}
