//! The client connect handler: AWS Client VPN's Lambda contract (schema `v2`), called as an
//! HTTP(S) webhook (`POST`, JSON body) or as a local executable (JSON on standard input, JSON
//! answer on standard output), after the client's certificate is verified and before it gets an
//! address. At most 30 seconds; anything but a well-formed `"allow": true` refuses the
//! connection (it fails closed), with the AWS failure reason in the connection log.
//!
//! Request: `connection-id`, `endpoint-id`, `common-name`, `username`, `platform`,
//! `platform-version`, `public-ip`, `client-openvpn-version`, `groups`, `schema-version`.
//! Response: `allow` (required), `error-msg-on-denied-connection` (at most 255 characters, shown
//! to the user), `posture-compliance-statuses` (at most 10, written to the connection log),
//! `schema-version`.

use std::path::PathBuf;
use std::time::Duration;

use hyper::Method;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::client::{send, ApiRequest, ClientError, Target};
use crate::connlog::FailureReason;

/// The longest a handler may take (AWS's cap).
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `error-msg-on-denied-connection`.
pub const MAX_DENIAL_MESSAGE: usize = 255;
/// Most `posture-compliance-statuses`.
pub const MAX_POSTURE_STATUSES: usize = 10;
/// Largest answer read from a handler.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What the handler is asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConnectRequest {
    pub connection_id: String,
    pub endpoint_id: String,
    pub common_name: String,
    pub username: String,
    pub platform: String,
    pub platform_version: String,
    pub public_ip: String,
    pub client_openvpn_version: String,
    pub groups: Vec<String>,
    pub schema_version: String,
}

/// What the handler answers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConnectResponse {
    pub allow: bool,
    #[serde(default)]
    pub error_msg_on_denied_connection: Option<String>,
    #[serde(default)]
    pub posture_compliance_statuses: Vec<String>,
    #[serde(default)]
    pub schema_version: Option<String>,
}

/// Why a handler gave no usable answer; each maps to AWS's connection-log failure reason.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// It took longer than the cap.
    #[error("the client connect handler did not answer within {0:?}")]
    TimedOut(Duration),
    /// The executable could not run, or exited with a failure.
    #[error("the client connect handler failed: {0}")]
    Execution(String),
    /// The answer is not the contract's JSON.
    #[error("the client connect handler's answer is invalid: {0}")]
    InvalidResponse(String),
    /// The webhook could not be reached or answered with an HTTP error.
    #[error("the client connect webhook failed: {0}")]
    Service(String),
}

impl HandlerError {
    /// The connection-log failure reason (AWS's names), with this error as the detail.
    pub fn reason(&self) -> FailureReason {
        let code = match self {
            HandlerError::TimedOut(_) => FailureReason::CLIENT_CONNECT_HANDLER_TIMED_OUT,
            HandlerError::Execution(_) => {
                FailureReason::CLIENT_CONNECT_HANDLER_OTHER_EXECUTION_ERROR
            }
            HandlerError::InvalidResponse(_) => {
                FailureReason::CLIENT_CONNECT_HANDLER_INVALID_RESPONSE
            }
            HandlerError::Service(_) => FailureReason::CLIENT_CONNECT_HANDLER_SERVICE_ERROR,
        };
        FailureReason::with_detail(code, self.to_string())
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Executable(PathBuf),
    /// Where to POST (TLS verified with the system's CA bundle for https), and the path.
    Webhook {
        target: Target,
        path: String,
    },
}

/// A configured handler (the endpoint's `client-connect-options.handler`).
#[derive(Clone, Debug)]
pub struct ConnectHandler {
    kind: Kind,
    timeout: Duration,
}

impl ConnectHandler {
    /// An `http(s)://host[:port]/path` URL or the absolute path of an executable (the store has
    /// validated the form).
    pub fn new(spec: &str) -> Result<ConnectHandler, HandlerError> {
        let bad = || {
            HandlerError::Execution(format!(
                "{spec:?} is neither an http(s) URL nor an absolute path"
            ))
        };
        let kind = if spec.starts_with('/') {
            Kind::Executable(PathBuf::from(spec))
        } else {
            let (https, rest) = match (spec.strip_prefix("https://"), spec.strip_prefix("http://"))
            {
                (Some(r), _) => (true, r),
                (None, Some(r)) => (false, r),
                _ => return Err(bad()),
            };
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].to_string()),
                None => (rest, "/".to_string()),
            };
            let target = if https {
                Target::https(&format!("https://{authority}"), None, None)
            } else {
                Target::http(authority)
            }
            .map_err(|e| HandlerError::Service(e.to_string()))?;
            Kind::Webhook { target, path }
        };
        Ok(ConnectHandler {
            kind,
            timeout: HANDLER_TIMEOUT,
        })
    }

    /// The same handler with another time limit (tests).
    pub fn with_timeout(mut self, timeout: Duration) -> ConnectHandler {
        self.timeout = timeout;
        self
    }

    /// Asks the handler; `Ok` only for a well-formed answer (allowing or not).
    pub async fn call(&self, req: &ConnectRequest) -> Result<ConnectResponse, HandlerError> {
        let body = serde_json::to_value(req).map_err(|e| HandlerError::Execution(e.to_string()))?;
        let raw = match tokio::time::timeout(self.timeout, self.exchange(&body)).await {
            Ok(r) => r?,
            Err(_) => return Err(HandlerError::TimedOut(self.timeout)),
        };
        parse_response(&raw)
    }

    async fn exchange(&self, body: &serde_json::Value) -> Result<Vec<u8>, HandlerError> {
        match &self.kind {
            Kind::Executable(path) => {
                let mut child = tokio::process::Command::new(path)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| HandlerError::Execution(format!("{}: {e}", path.display())))?;
                if let Some(mut stdin) = child.stdin.take() {
                    // A handler that does not read its input is its own business.
                    let _ = stdin.write_all(body.to_string().as_bytes()).await;
                }
                let mut out = Vec::new();
                if let Some(stdout) = child.stdout.take() {
                    stdout
                        .take(MAX_RESPONSE_BYTES as u64)
                        .read_to_end(&mut out)
                        .await
                        .map_err(|e| HandlerError::Execution(format!("reading its answer: {e}")))?;
                }
                let status = child
                    .wait()
                    .await
                    .map_err(|e| HandlerError::Execution(e.to_string()))?;
                if !status.success() {
                    return Err(HandlerError::Execution(format!(
                        "{} exited with {status}",
                        path.display()
                    )));
                }
                Ok(out)
            }
            Kind::Webhook { target, path } => {
                let req = ApiRequest::new(Method::POST, path.clone()).json(body);
                match send(target, req).await {
                    Ok(reply) => Ok(reply.body.to_vec()),
                    Err(ClientError::Timeout) => Err(HandlerError::TimedOut(self.timeout)),
                    Err(e) => Err(HandlerError::Service(e.to_string())),
                }
            }
        }
    }
}

/// Checks an answer against the contract.
pub fn parse_response(raw: &[u8]) -> Result<ConnectResponse, HandlerError> {
    if raw.len() > MAX_RESPONSE_BYTES {
        return Err(HandlerError::InvalidResponse(format!(
            "larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    let r: ConnectResponse = serde_json::from_slice(raw).map_err(|e| {
        HandlerError::InvalidResponse(format!("{e} (expected {{\"allow\": true|false, ...}})"))
    })?;
    if let Some(m) = &r.error_msg_on_denied_connection {
        if m.chars().count() > MAX_DENIAL_MESSAGE {
            return Err(HandlerError::InvalidResponse(format!(
                "error-msg-on-denied-connection has {} characters; at most {MAX_DENIAL_MESSAGE}",
                m.chars().count()
            )));
        }
    }
    if r.posture_compliance_statuses.len() > MAX_POSTURE_STATUSES {
        return Err(HandlerError::InvalidResponse(format!(
            "posture-compliance-statuses has {} entries; at most {MAX_POSTURE_STATUSES}",
            r.posture_compliance_statuses.len()
        )));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ConnectRequest {
        ConnectRequest {
            connection_id: "cvpn-connection-0123456789abcdef0".into(),
            endpoint_id: "cvpn-endpoint-0123456789abcdef0".into(),
            common_name: "alice".into(),
            username: "NA".into(),
            platform: "linux".into(),
            platform_version: "6.1".into(),
            public_ip: "198.51.100.7".into(),
            client_openvpn_version: "2.6.14".into(),
            groups: vec!["engineering".into()],
            schema_version: "v2".into(),
        }
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_request_has_aws_field_names() {
        let v = serde_json::to_value(request()).unwrap();
        for k in [
            "connection-id",
            "endpoint-id",
            "common-name",
            "username",
            "platform",
            "platform-version",
            "public-ip",
            "client-openvpn-version",
            "groups",
            "schema-version",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
    }

    #[test]
    fn answers_are_checked_against_the_contract() {
        assert!(parse_response(br#"{"allow": true}"#).unwrap().allow);
        let r = parse_response(br#"{"allow": false, "error-msg-on-denied-connection": "patch first", "posture-compliance-statuses": ["a"], "schema-version": "v2"}"#).unwrap();
        assert_eq!(
            (r.allow, r.error_msg_on_denied_connection.as_deref()),
            (false, Some("patch first"))
        );
        for bad in [
            &b"yes"[..],
            br#"{"allowed": true}"#,
            br#"{"allow": "true"}"#,
            format!(r#"{{"allow": false, "error-msg-on-denied-connection": "{}"}}"#, "x".repeat(256)).as_bytes(),
            br#"{"allow": true, "posture-compliance-statuses": ["1","2","3","4","5","6","7","8","9","10","11"]}"#,
        ] {
            let e = parse_response(bad).unwrap_err();
            assert_eq!(e.reason().code, FailureReason::CLIENT_CONNECT_HANDLER_INVALID_RESPONSE, "{e}");
        }
    }

    #[test]
    fn an_executable_gets_the_request_and_its_answer_counts() {
        let dir = std::env::temp_dir().join(format!("cvpn-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Allows members of engineering only, reading the request from stdin.
        let allow = script(
            &dir,
            "allow.sh",
            r#"if grep -q '"engineering"'; then echo '{"allow": true, "posture-compliance-statuses": ["ok"]}'; else echo '{"allow": false, "error-msg-on-denied-connection": "no"}'; fi"#,
        );
        let h = ConnectHandler::new(&allow).unwrap();
        let r = rt().block_on(h.call(&request())).unwrap();
        assert!(r.allow);
        assert_eq!(r.posture_compliance_statuses, ["ok"]);
        let mut other = request();
        other.groups = vec!["finance".into()];
        assert!(!rt().block_on(h.call(&other)).unwrap().allow);

        let failing = script(&dir, "fail.sh", "exit 3");
        let e = rt()
            .block_on(ConnectHandler::new(&failing).unwrap().call(&request()))
            .unwrap_err();
        assert_eq!(
            e.reason().code,
            FailureReason::CLIENT_CONNECT_HANDLER_OTHER_EXECUTION_ERROR,
            "{e}"
        );
        let slow = script(&dir, "slow.sh", "sleep 5; echo '{\"allow\": true}'");
        let started = std::time::Instant::now();
        let e = rt()
            .block_on(
                ConnectHandler::new(&slow)
                    .unwrap()
                    .with_timeout(Duration::from_millis(300))
                    .call(&request()),
            )
            .unwrap_err();
        assert_eq!(
            e.reason().code,
            FailureReason::CLIENT_CONNECT_HANDLER_TIMED_OUT
        );
        assert!(started.elapsed() < Duration::from_secs(2), "the cap holds");
        let missing = ConnectHandler::new("/nonexistent/handler").unwrap();
        assert!(rt().block_on(missing.call(&request())).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_webhook_gets_a_post_and_http_errors_fail_closed() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answer in [r#"{"allow": true}"#, ""] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                // Read the head and the body (Content-Length).
                loop {
                    let n = s.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if got.len() >= i + 4 + len {
                            break;
                        }
                    }
                }
                seen.push(String::from_utf8_lossy(&got).to_string());
                let resp = if answer.is_empty() {
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".to_string()
                } else {
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}", answer.len())
                };
                s.write_all(resp.as_bytes()).unwrap();
            }
            seen
        });
        let h = ConnectHandler::new(&format!("http://127.0.0.1:{port}/hooks/connect")).unwrap();
        assert!(rt().block_on(h.call(&request())).unwrap().allow);
        let e = rt().block_on(h.call(&request())).unwrap_err();
        assert_eq!(
            e.reason().code,
            FailureReason::CLIENT_CONNECT_HANDLER_SERVICE_ERROR,
            "{e}"
        );
        let seen = server.join().unwrap();
        assert!(
            seen[0].starts_with("POST /hooks/connect HTTP/1.1"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("\"common-name\":\"alice\""), "{}", seen[0]);
    }

    #[test]
    fn handler_specs_parse() {
        assert!(matches!(
            ConnectHandler::new("/usr/bin/x").unwrap().kind,
            Kind::Executable(_)
        ));
        match ConnectHandler::new("http://10.0.0.1:8080").unwrap().kind {
            Kind::Webhook { target, path } => {
                assert_eq!(
                    (target.describe().as_str(), path.as_str()),
                    ("http://10.0.0.1:8080", "/")
                );
            }
            k => panic!("{k:?}"),
        }
        match ConnectHandler::new("http://[fd00::1]/hooks/connect")
            .unwrap()
            .kind
        {
            Kind::Webhook { target, path } => {
                assert_eq!(
                    (target.describe().as_str(), path.as_str()),
                    ("http://[fd00::1]:80", "/hooks/connect")
                );
            }
            k => panic!("{k:?}"),
        }
        // https verifies with the system's CA bundle, read once here.
        match ConnectHandler::new("https://hooks.example.com/connect") {
            Ok(ConnectHandler {
                kind: Kind::Webhook { target, path },
                ..
            }) => {
                assert_eq!(
                    (target.describe().as_str(), path.as_str()),
                    ("https://hooks.example.com:443", "/connect")
                );
            }
            Ok(h) => panic!("{h:?}"),
            Err(e) => assert!(e.to_string().contains("CA certificates"), "{e}"),
        }
        assert!(ConnectHandler::new("ftp://x").is_err());
        assert!(ConnectHandler::new("http://:80/x").is_err());
    }
}
