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

use std::time::Duration;

use hyper::Method;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connlog::FailureReason;
use crate::http_client::{send, ClientError, Request, Target};
use crate::model::validate::{self, HandlerTarget};
use crate::model::HandlerPolicy;

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
    /// The daemon configuration does not allow this handler (`[connect_handler]`).
    #[error("the client connect handler is not allowed: {0}")]
    NotAllowed(String),
}

impl HandlerError {
    /// The connection-log failure reason (AWS's names), with this error as the detail.
    pub fn reason(&self) -> FailureReason {
        let code = match self {
            HandlerError::TimedOut(_) => FailureReason::CLIENT_CONNECT_HANDLER_TIMED_OUT,
            HandlerError::Execution(_) | HandlerError::NotAllowed(_) => {
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
    /// The path as configured: checked against the policy again before every call, since
    /// the file system may have changed since (a symbolic link replaced, a mode changed).
    Executable { spec: String, policy: HandlerPolicy },
    /// Where to POST (TLS verified with the system's CA bundle for https), and the path.
    Webhook { target: Target, path: String },
}

/// A configured handler (the endpoint's `client-connect-options.handler`).
#[derive(Clone, Debug)]
pub struct ConnectHandler {
    kind: Kind,
    timeout: Duration,
}

impl ConnectHandler {
    /// An `http(s)://host[:port]/path` URL or the absolute path of an executable, if the
    /// daemon configuration's `policy` allows it (see [`validate::check_handler`]).
    pub fn new(spec: &str, policy: &HandlerPolicy) -> Result<ConnectHandler, HandlerError> {
        let kind = match validate::check_handler(spec, policy).map_err(HandlerError::NotAllowed)? {
            HandlerTarget::Executable(_) => Kind::Executable {
                spec: spec.to_string(),
                policy: policy.clone(),
            },
            HandlerTarget::Webhook { https, rest } => {
                let (authority, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], rest[i..].to_string()),
                    None => (rest.as_str(), "/".to_string()),
                };
                let target = if https {
                    Target::https(&format!("https://{authority}"), None, None)
                } else {
                    Target::http(authority)
                }
                .map_err(|e| HandlerError::Service(e.to_string()))?;
                Kind::Webhook { target, path }
            }
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
            Kind::Executable { spec, policy } => {
                let path = match validate::check_handler(spec, policy) {
                    Ok(HandlerTarget::Executable(p)) => p,
                    Ok(HandlerTarget::Webhook { .. }) => {
                        return Err(HandlerError::NotAllowed(format!(
                            "{spec:?} is not an executable"
                        )))
                    }
                    Err(e) => return Err(HandlerError::NotAllowed(e)),
                };
                let mut child = tokio::process::Command::new(&path)
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
                // At most one byte past the limit: a handler that writes more is refused at
                // once (and killed when `child` drops), not read to its end.
                let mut out = Vec::new();
                if let Some(stdout) = child.stdout.take() {
                    stdout
                        .take(MAX_RESPONSE_BYTES as u64 + 1)
                        .read_to_end(&mut out)
                        .await
                        .map_err(|e| HandlerError::Execution(format!("reading its answer: {e}")))?;
                }
                if out.len() > MAX_RESPONSE_BYTES {
                    return Err(too_large());
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
                let req = Request::new(Method::POST, path.clone())
                    .json(body)
                    .max_body(MAX_RESPONSE_BYTES);
                match send(target, req).await {
                    Ok(reply) => Ok(reply.body.to_vec()),
                    Err(ClientError::Timeout) => Err(HandlerError::TimedOut(self.timeout)),
                    Err(ClientError::TooLarge { .. }) => Err(too_large()),
                    Err(e) => Err(HandlerError::Service(e.to_string())),
                }
            }
        }
    }
}

fn too_large() -> HandlerError {
    HandlerError::InvalidResponse(format!(
        "larger than {MAX_RESPONSE_BYTES} bytes (reading stopped there); answer with the \
         contract's small JSON object"
    ))
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

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cvpn-hook-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn exe_policy(dir: &std::path::Path) -> HandlerPolicy {
        HandlerPolicy {
            executable_dir: Some(dir.to_path_buf()),
            allow_http: false,
        }
    }

    fn allow_http() -> HandlerPolicy {
        HandlerPolicy {
            executable_dir: None,
            allow_http: true,
        }
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
        let dir = temp_dir("exe");
        // Allows members of engineering only, reading the request from stdin.
        let allow = script(
            &dir,
            "allow.sh",
            r#"if grep -q '"engineering"'; then echo '{"allow": true, "posture-compliance-statuses": ["ok"]}'; else echo '{"allow": false, "error-msg-on-denied-connection": "no"}'; fi"#,
        );
        let policy = exe_policy(&dir);
        let h = ConnectHandler::new(&allow, &policy).unwrap();
        let r = rt().block_on(h.call(&request())).unwrap();
        assert!(r.allow);
        assert_eq!(r.posture_compliance_statuses, ["ok"]);
        let mut other = request();
        other.groups = vec!["finance".into()];
        assert!(!rt().block_on(h.call(&other)).unwrap().allow);

        let failing = script(&dir, "fail.sh", "exit 3");
        let e = rt()
            .block_on(
                ConnectHandler::new(&failing, &policy)
                    .unwrap()
                    .call(&request()),
            )
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
                ConnectHandler::new(&slow, &policy)
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
        let e = ConnectHandler::new(&format!("{}/missing.sh", dir.display()), &policy).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
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
        let h = ConnectHandler::new(
            &format!("http://127.0.0.1:{port}/hooks/connect"),
            &allow_http(),
        )
        .unwrap();
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
        let dir = temp_dir("specs");
        let exe = script(&dir, "x", "true");
        assert!(matches!(
            ConnectHandler::new(&exe, &exe_policy(&dir)).unwrap().kind,
            Kind::Executable { .. }
        ));
        match ConnectHandler::new("http://10.0.0.1:8080", &allow_http())
            .unwrap()
            .kind
        {
            Kind::Webhook { target, path } => {
                assert_eq!(
                    (target.describe().as_str(), path.as_str()),
                    ("http://10.0.0.1:8080", "/")
                );
            }
            k => panic!("{k:?}"),
        }
        match ConnectHandler::new("http://[fd00::1]/hooks/connect", &allow_http())
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
        match ConnectHandler::new(
            "https://hooks.example.com/connect",
            &HandlerPolicy::default(),
        ) {
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
        assert!(ConnectHandler::new("ftp://x", &allow_http()).is_err());
        assert!(ConnectHandler::new("http://:80/x", &allow_http()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn executables_are_refused_without_executable_dir() {
        let dir = temp_dir("nodir");
        let exe = script(&dir, "allow.sh", r#"echo '{"allow": true}'"#);
        let e = ConnectHandler::new(&exe, &HandlerPolicy::default()).unwrap_err();
        assert_eq!(
            e.reason().code,
            FailureReason::CLIENT_CONNECT_HANDLER_OTHER_EXECUTION_ERROR
        );
        let text = e.to_string();
        assert!(
            text.contains("[connect_handler]") && text.contains("executable_dir"),
            "the error names the key to set: {text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn executables_outside_the_directory_are_refused_dotdot_and_symlinks_included() {
        let root = temp_dir("escape");
        let allowed = root.join("handlers");
        std::fs::create_dir_all(&allowed).unwrap();
        let outside = script(&root, "outside.sh", r#"echo '{"allow": true}'"#);
        let policy = exe_policy(&allowed);
        let refused = |spec: &str| {
            let e = ConnectHandler::new(spec, &policy).unwrap_err();
            assert!(matches!(e, HandlerError::NotAllowed(_)), "{spec}: {e}");
            e.to_string()
        };
        // Straight outside, through `..`, through a symbolic link inside the directory, and a
        // sibling directory whose name starts with the allowed one's.
        assert!(refused(&outside).contains("outside the handler directory"));
        refused(&format!("{}/../outside.sh", allowed.display()));
        let link = allowed.join("link.sh");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        refused(link.to_str().unwrap());
        let sibling = root.join("handlers2");
        std::fs::create_dir_all(&sibling).unwrap();
        refused(&script(&sibling, "s.sh", "true"));
        // Inside, but writable by others, or not executable.
        let writable = script(&allowed, "w.sh", "true");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(refused(&writable).contains("chmod go-w"));
        let plain = allowed.join("plain.sh");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(refused(plain.to_str().unwrap()).contains("not an executable"));

        // Allowed when configured, and checked again on use: a handler later replaced by a
        // link leading out is refused then (the connection fails closed).
        let inside = script(&allowed, "inside.sh", r#"echo '{"allow": true}'"#);
        let h = ConnectHandler::new(&inside, &policy).unwrap();
        assert!(rt().block_on(h.call(&request())).unwrap().allow);
        std::fs::remove_file(&inside).unwrap();
        std::os::unix::fs::symlink(&outside, &inside).unwrap();
        let e = rt().block_on(h.call(&request())).unwrap_err();
        assert!(matches!(e, HandlerError::NotAllowed(_)), "{e}");
        assert_eq!(
            e.reason().code,
            FailureReason::CLIENT_CONNECT_HANDLER_OTHER_EXECUTION_ERROR
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn http_webhooks_need_allow_http_and_https_is_always_allowed() {
        let e = ConnectHandler::new("http://127.0.0.1:8080/hook", &HandlerPolicy::default())
            .unwrap_err();
        assert!(matches!(e, HandlerError::NotAllowed(_)), "{e}");
        assert!(e.to_string().contains("allow_http = true"), "{e}");
        assert!(ConnectHandler::new("http://127.0.0.1:8080/hook", &allow_http()).is_ok());
        // https: allowed without any key (it may still fail on a host without a CA bundle).
        if let Err(e) =
            ConnectHandler::new("https://hooks.example.com/c", &HandlerPolicy::default())
        {
            assert!(!matches!(e, HandlerError::NotAllowed(_)), "{e}");
        }
    }

    #[test]
    fn an_executable_answer_over_the_limit_fails_at_once_without_reading_it_all() {
        let dir = temp_dir("big");
        // 2 MB and then nothing: reading the whole answer (or waiting for the handler to exit
        // while it is blocked on a full pipe) would run into the time limit instead.
        let big = script(&dir, "big.sh", "exec head -c 2000000 /dev/zero");
        let h = ConnectHandler::new(&big, &exe_policy(&dir))
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        let started = std::time::Instant::now();
        let e = rt().block_on(h.call(&request())).unwrap_err();
        assert_eq!(
            e.reason().code,
            FailureReason::CLIENT_CONNECT_HANDLER_INVALID_RESPONSE,
            "{e}"
        );
        assert!(e.to_string().contains("larger than 65536 bytes"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Just over the limit and then a valid answer: still refused (not cut to a prefix).
        let padded = script(
            &dir,
            "padded.sh",
            r#"head -c 65600 /dev/zero | tr '\0' ' '; echo '{"allow": true}'"#,
        );
        let e = rt()
            .block_on(
                ConnectHandler::new(&padded, &exe_policy(&dir))
                    .unwrap()
                    .call(&request()),
            )
            .unwrap_err();
        assert!(e.to_string().contains("larger than 65536 bytes"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_webhook_answer_over_the_limit_fails_at_once_without_reading_it_all() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf);
            // Announces 16 MB, sends 1 MB of it, then waits for the client to hang up.
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16777216\r\n\r\n",
            );
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..16 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        });
        let h = ConnectHandler::new(&format!("http://127.0.0.1:{port}/hook"), &allow_http())
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        let started = std::time::Instant::now();
        let e = rt().block_on(h.call(&request())).unwrap_err();
        assert_eq!(
            e.reason().code,
            FailureReason::CLIENT_CONNECT_HANDLER_INVALID_RESPONSE,
            "{e}"
        );
        assert!(e.to_string().contains("larger than 65536 bytes"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        server.join().unwrap();
    }
}
