//! A small HTTP/1.1 client: hyper's connection-level client over a Unix socket (Tokio's
//! `UnixStream`), over TCP + TLS (tokio-rustls) or plain TCP, one connection per request, with a
//! bound on the answer's size. Used by the CLI (`cli::client`, the management API's client) and
//! by the client connect handler's webhook calls (`connect_handler`); it depends only on the
//! model (for the API's error body, which turns an error status into [`ClientError::Api`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{header, Method, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

use crate::model::ErrorBody;

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the system's CA bundle usually is (Debian, Ubuntu, Alpine, Arch).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API refused the request: its error code and message.
    #[error("{code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// AWS-style code, e.g. `InvalidParameterValue`.
        code: String,
        /// The API's message.
        message: String,
    },
    /// The API could not be reached.
    #[error(
        "cannot reach the cvpn API at {target} ({cause}): {}",
        connect_hint(cause)
    )]
    Connect {
        /// The socket path or URL.
        target: String,
        /// The cause (part of the message, so it is printed once).
        cause: io::Error,
    },
    /// The `--api` URL is not `https://host[:port]`.
    #[error("--api {0:?}: expected https://HOST[:PORT]")]
    BadUrl(String),
    /// The TLS client could not be set up (CA file, server name).
    #[error("TLS: {0}")]
    Tls(String),
    /// HTTP failed (connection reset, malformed response).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("HTTP request: {0}")]
    Request(#[from] hyper::http::Error),
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("the cvpn API did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    /// An error status without our error body (not a cvpn API?).
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A success whose body is not what the operation answers.
    #[error("unexpected answer from the cvpn API: {0}")]
    Decode(String),
    /// The answer's body is longer than the request's [`Request::max_body`]; reading
    /// stopped there.
    #[error("the answer is larger than {limit} bytes (reading stopped there)")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// What to do when the API cannot be reached.
fn connect_hint(cause: &io::Error) -> &'static str {
    match cause.kind() {
        io::ErrorKind::PermissionDenied => "the API socket is for root only: run the command as root (sudo)",
        _ => "is `cvpn serve` running? (`systemctl status cvpn`; another socket: --socket PATH or CVPN_SOCKET)",
    }
}

/// Where the API is.
#[derive(Clone)]
pub enum Target {
    /// The daemon's Unix socket.
    Unix(PathBuf),
    /// The TLS listener.
    Https {
        /// Host name or address (the TLS server name).
        host: String,
        /// TCP port.
        port: u16,
        /// Client TLS settings (the CAs that verify the listener).
        tls: Arc<rustls::ClientConfig>,
        /// Bearer token.
        token: Option<String>,
    },
    /// Plain HTTP over TCP (the client connect webhook on a trusted network; never the API).
    Http {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Target {
    /// The TLS listener at `url` (`https://host[:port]`, port 443 by default), verified with
    /// the CA certificates of `ca_file` (PEM) or else the system's bundle.
    pub fn https(
        url: &str,
        ca_file: Option<&Path>,
        token: Option<String>,
    ) -> Result<Target, ClientError> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::BadUrl(url.to_string()))?;
        let (host, port) = host_port(url, rest.trim_end_matches('/'), 443)?;
        let ca_path = match ca_file {
            Some(p) => p.to_path_buf(),
            None => PathBuf::from(SYSTEM_CA_BUNDLE),
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&ca_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                ClientError::Tls(format!(
                    "CA certificates {}: {e} (give --ca-cert FILE)",
                    ca_path.display()
                ))
            })?;
        for c in certs {
            roots.add(c).map_err(|e| {
                ClientError::Tls(format!("CA certificate in {}: {e}", ca_path.display()))
            })?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls(format!(
                "{} holds no CA certificate",
                ca_path.display()
            )));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Target::Https {
            host,
            port,
            tls: Arc::new(config),
            token,
        })
    }

    /// Plain HTTP to `authority` (`host[:port]`, port 80 by default).
    pub fn http(authority: &str) -> Result<Target, ClientError> {
        let (host, port) = host_port(authority, authority, 80)?;
        Ok(Target::Http { host, port })
    }

    /// For messages: the socket path or the URL.
    pub fn describe(&self) -> String {
        match self {
            Target::Unix(p) => p.display().to_string(),
            Target::Https { host, port, .. } if host.contains(':') => {
                format!("https://[{host}]:{port}")
            }
            Target::Https { host, port, .. } => format!("https://{host}:{port}"),
            Target::Http { host, port } if host.contains(':') => format!("http://[{host}]:{port}"),
            Target::Http { host, port } => format!("http://{host}:{port}"),
        }
    }
}

/// A request.
#[derive(Clone, Debug)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// Path and query, e.g. `/v1/endpoints?client-vpn-endpoint-ids=…` (already encoded).
    pub path: String,
    /// The body and its content type.
    pub body: Option<(&'static str, Vec<u8>)>,
    /// The `Accept` header, if any.
    pub accept: Option<&'static str>,
    /// The most bytes of the answer's body to read: at most one more is read, then the
    /// request fails with [`ClientError::TooLarge`]. `None`: no limit (the API's own answers).
    pub max_body: Option<usize>,
}

impl Request {
    /// A request without a body.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Request {
            method,
            path: path.into(),
            body: None,
            accept: None,
            max_body: None,
        }
    }

    /// With a limit on the answer's body ([`Request::max_body`]).
    pub fn max_body(mut self, limit: usize) -> Self {
        self.max_body = Some(limit);
        self
    }

    /// With a JSON body.
    pub fn json(mut self, v: &serde_json::Value) -> Self {
        self.body = Some(("application/json", v.to_string().into_bytes()));
        self
    }
}

/// A successful answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status (2xx).
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON of type `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// The body as text.
    pub fn text(&self) -> Result<String, ClientError> {
        String::from_utf8(self.body.to_vec())
            .map_err(|_| ClientError::Decode("the answer is not UTF-8".into()))
    }
}

/// Sends one request and reads the answer; an error status becomes [`ClientError::Api`].
pub async fn send(target: &Target, req: Request) -> Result<Reply, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, send_inner(target, req))
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn send_inner(target: &Target, req: Request) -> Result<Reply, ClientError> {
    let connect_err = |cause| ClientError::Connect {
        target: target.describe(),
        cause,
    };
    match target {
        Target::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect_err)?;
            exchange(TokioIo::new(stream), "localhost", None, req).await
        }
        Target::Https {
            host,
            port,
            tls,
            token,
        } => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(connect_err)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| ClientError::Tls(format!("server name {host:?}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name, tcp)
                .await
                .map_err(connect_err)?;
            exchange(
                TokioIo::new(stream),
                &authority(host, *port),
                token.as_deref(),
                req,
            )
            .await
        }
        Target::Http { host, port } => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(connect_err)?;
            exchange(TokioIo::new(tcp), &authority(host, *port), None, req).await
        }
    }
}

/// Splits `host[:port]` (IPv6 hosts in brackets); `url` names the whole thing in errors.
fn host_port(url: &str, authority: &str, default_port: u16) -> Result<(String, u16), ClientError> {
    let bad = || ClientError::BadUrl(url.to_string());
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

/// Reads a body frame by frame, keeping at most `limit + 1` bytes: past `limit` it stops
/// reading (the connection is dropped) and fails, whatever the peer announced or goes on
/// sending.
async fn read_limited(mut body: hyper::body::Incoming, limit: usize) -> Result<Bytes, ClientError> {
    let mut out: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        let room = (limit + 1).saturating_sub(out.len());
        out.extend_from_slice(&data[..data.len().min(room)]);
        if out.len() > limit {
            return Err(ClientError::TooLarge { limit });
        }
    }
    Ok(Bytes::from(out))
}

/// `host:port` for the Host header (IPv6 addresses in brackets).
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn exchange<IO>(
    io: IO,
    authority: &str,
    token: Option<&str>,
    req: Request,
) -> Result<Reply, ClientError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::Request::builder()
        .method(req.method)
        .uri(req.path)
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("cvpn/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(t) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(a) = req.accept {
        builder = builder.header(header::ACCEPT, a);
    }
    let body = match req.body {
        Some((content_type, bytes)) => {
            builder = builder.header(header::CONTENT_TYPE, content_type);
            Full::new(Bytes::from(bytes))
        }
        None => Full::new(Bytes::new()),
    };
    let response = round_trip(io, builder.body(body)?, req.max_body).await?;
    let status = response.status();
    let body = Bytes::from(response.into_body());
    if status.is_success() {
        return Ok(Reply { status, body });
    }
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => Err(ClientError::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
        }),
        Err(_) => Err(ClientError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        }),
    }
}

/// One request on a fresh HTTP/1 connection over `io`; the answer's body read whole, or up to
/// `max_body` bytes.
async fn round_trip<IO>(
    io: IO,
    req: hyper::Request<Full<Bytes>>,
    max_body: Option<usize>,
) -> Result<hyper::Response<Vec<u8>>, ClientError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    });
    let response = sender.send_request(req).await?;
    let (parts, body) = response.into_parts();
    let body = match max_body {
        None => body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(ClientError::from),
        Some(limit) => read_limited(body, limit).await,
    };
    drop(sender);
    driver.abort();
    Ok(hyper::Response::from_parts(parts, body?.to_vec()))
}

/// Sends one request to an absolute `https://` URL (`http://` only to a loopback address: a
/// test identity provider on this host) and returns the answer whatever its status, its body
/// read up to `max_body` bytes. No redirects are followed (a redirect could point a server-side
/// request anywhere). For protocol clients that judge the status themselves (OIDC).
pub async fn fetch(
    tls: &Arc<rustls::ClientConfig>,
    request: hyper::Request<Vec<u8>>,
    max_body: usize,
) -> Result<hyper::Response<Vec<u8>>, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fetch_inner(tls, request, max_body))
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn fetch_inner(
    tls: &Arc<rustls::ClientConfig>,
    request: hyper::Request<Vec<u8>>,
    max_body: usize,
) -> Result<hyper::Response<Vec<u8>>, ClientError> {
    let url = request.uri().clone();
    let bad = || ClientError::BadUrl(url.to_string());
    let host = url
        .host()
        .ok_or_else(bad)?
        .trim_matches(['[', ']'])
        .to_string();
    let secure = match url.scheme_str() {
        Some("https") => true,
        Some("http") if is_loopback(&host) => false,
        _ => return Err(bad()),
    };
    let port = url.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let target = if secure {
        Target::Https {
            host: host.clone(),
            port,
            tls: Arc::clone(tls),
            token: None,
        }
    } else {
        Target::Http {
            host: host.clone(),
            port,
        }
    };
    let connect_err = |cause| ClientError::Connect {
        target: target.describe(),
        cause,
    };
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(connect_err)?;
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let mut builder = hyper::Request::builder()
        .method(parts.method)
        .uri(path)
        .header(header::HOST, authority(&host, port))
        .header(
            header::USER_AGENT,
            concat!("cvpn/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &parts.headers {
        if name != header::HOST {
            builder = builder.header(name, value);
        }
    }
    let req = builder.body(Full::new(Bytes::from(body)))?;
    if secure {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| ClientError::Tls(format!("server name {host:?}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(connect_err)?;
        round_trip(TokioIo::new(stream), req, Some(max_body)).await
    } else {
        round_trip(TokioIo::new(tcp), req, Some(max_body)).await
    }
}

/// True for `localhost` and loopback addresses.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// TLS client settings that trust the system's CA bundle, plus the PEM certificates of
/// `extra_ca` if given.
pub fn client_tls(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut paths = vec![PathBuf::from(SYSTEM_CA_BUNDLE)];
    paths.extend(extra_ca.map(Path::to_path_buf));
    for path in &paths {
        let Ok(certs) = CertificateDer::pem_file_iter(path) else {
            continue;
        };
        for c in certs.flatten() {
            let _ = roots.add(c);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// RFC 3986 percent-encoding of everything but the unreserved characters (`A-Z a-z 0-9 - . _
/// ~`): path segments, query values, `otpauth://` labels.
pub fn percent_encode(s: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}
