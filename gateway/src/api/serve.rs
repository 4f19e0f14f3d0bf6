//! Serving the API: on a Unix socket (the default; the socket's mode 0600 is the access
//! control) or on TCP with TLS (rustls) and a bearer token checked on every request.
//!
//! Both come in two forms: `serve_*` binds and serves until the process ends; `bind_unix` /
//! `serve_*_listener` let the daemon bind first (and fail early, before it starts anything
//! else) and stop serving when a shutdown future completes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use super::{error_response, router, ApiState, AUTH_FAILURE};

/// Where the daemon serves the API by default.
pub const DEFAULT_SOCKET_PATH: &str = "/run/cvpn/api.sock";

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket (or its directory) could not be created or bound.
    #[error("API socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another process serves on the socket.
    #[error("API socket {0} is in use (is another cvpn daemon running?)")]
    SocketInUse(PathBuf),
    /// The path exists and is not a socket: it is not ours to remove.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The TCP listener could not be bound.
    #[error("API listener {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The TLS listener needs a non-empty bearer token.
    #[error("the API bearer token must not be empty")]
    EmptyToken,
    /// The listener's certificate and key do not make a TLS server identity.
    #[error("API TLS certificate and key: {0}")]
    Tls(String),
    /// Serving failed.
    #[error("API server: {0}")]
    Io(#[from] io::Error),
}

// ---- Unix socket --------------------------------------------------------------------------------

/// Binds the API socket at `path`: creates its directory (0700) if missing, removes a stale
/// socket left by a daemon that died (but refuses a socket someone answers on, and a path
/// that is not a socket), and makes the socket 0600. Needs a Tokio runtime.
pub fn bind_unix(path: impl AsRef<Path>) -> Result<UnixListener, ServeError> {
    let path = path.as_ref();
    let sock_err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(sock_err)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::SocketInUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(sock_err)?;
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    Ok(listener)
}

/// Serves the API on the Unix socket `path` (see [`bind_unix`]) until the process ends.
pub async fn serve_unix(path: impl AsRef<Path>, state: Arc<ApiState>) -> Result<(), ServeError> {
    let listener = bind_unix(path.as_ref())?;
    serve_unix_listener(listener, state, std::future::pending()).await
}

/// Serves the API on a bound socket until `shutdown` completes, lets requests in progress
/// finish, and removes the socket file.
pub async fn serve_unix_listener(
    listener: UnixListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
    Ok(served?)
}

// ---- TCP + TLS ----------------------------------------------------------------------------------

/// The TLS listener's server configuration (rustls' safe defaults, no client certificates) for
/// the certificate chain `chain` and its key.
pub fn tls_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServeError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| ServeError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Serves the API on TCP `addr` with TLS (`config`) and a bearer token until the process ends.
/// Every request must carry `Authorization: Bearer <bearer_token>`; others get 401
/// `AuthFailure`.
pub async fn serve_tls(
    addr: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    bearer_token: String,
    state: Arc<ApiState>,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    serve_tls_listener(
        listener,
        config,
        bearer_token,
        state,
        std::future::pending(),
    )
    .await
}

/// Serves the API with TLS on a bound TCP listener until `shutdown` completes (connections in
/// progress go on until they end).
pub async fn serve_tls_listener(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    bearer_token: String,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if bearer_token.is_empty() {
        return Err(ServeError::EmptyToken);
    }
    let token = Arc::new(BearerToken::new(&bearer_token));
    let app = router(state).layer(middleware::from_fn_with_state(token, require_bearer));
    let acceptor = TlsAcceptor::from(config);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "API: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "API: TLS handshake timed out");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "API: connection ended with an error");
            }
        });
    }
}

/// The expected bearer token, kept as its SHA-256 digest so that comparing takes the same
/// time whatever the presented token's length and content.
struct BearerToken([u8; 32]);

impl BearerToken {
    fn new(token: &str) -> Self {
        BearerToken(digest(token))
    }

    /// Constant-time comparison of the digests.
    fn matches(&self, presented: &str) -> bool {
        let other = digest(presented);
        let diff = self
            .0
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

fn digest(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn require_bearer(
    State(token): State<Arc<BearerToken>>,
    req: Request,
    next: Next,
) -> Response {
    let ok = bearer(&req).is_some_and(|t| token.matches(t));
    if !ok {
        let mut resp = error_response(
            StatusCode::UNAUTHORIZED,
            AUTH_FAILURE,
            "missing or wrong bearer token (send Authorization: Bearer <token>)",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"cvpn\""),
        );
        return resp.into_response();
    }
    next.run(req).await
}
