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
    /// The bearer token file could not be read.
    #[error("reading the API token file {path}: {source}")]
    TokenRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The bearer token file is open to group or others.
    #[error(
        "the API token file {} is readable or writable by group or others (mode {mode:04o}); \
         whoever reads it administers every endpoint: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TokenExposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The bearer token is too short to resist guessing.
    #[error(
        "the API token in {} has {chars} characters; at least {MIN_TOKEN_CHARS} are needed: \
         generate one with `openssl rand -hex 32 > {}` (then `chmod 600` it)",
        path.display(),
        path.display()
    )]
    TokenTooShort {
        /// The file.
        path: PathBuf,
        /// Characters after trimming.
        chars: usize,
    },
    /// The listener's certificate and key do not make a TLS server identity.
    #[error("API TLS certificate and key: {0}")]
    Tls(String),
    /// Serving failed.
    #[error("API server: {0}")]
    Io(#[from] io::Error),
}

/// The fewest characters a bearer token may have (after trimming white space).
pub const MIN_TOKEN_CHARS: usize = 32;

/// Reads the bearer token of the TLS listener from `path` (one line, trimmed): refused when
/// the file is open to group or others (mode `& 0o077`) or the token is shorter than
/// [`MIN_TOKEN_CHARS`].
pub fn read_token_file(path: &Path) -> Result<String, ServeError> {
    let read_err = |source| ServeError::TokenRead {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ServeError::TokenExposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let token = text.trim();
    let chars = token.chars().count();
    if chars < MIN_TOKEN_CHARS {
        return Err(ServeError::TokenTooShort {
            path: path.to_path_buf(),
            chars,
        });
    }
    Ok(token.to_string())
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
    serve_router_tls(listener, config, app, "API", usize::MAX, shutdown).await;
    Ok(())
}

/// Serves `app` with TLS on a bound TCP listener until `shutdown` completes (connections in
/// progress go on until they end): the API's TLS listener and the web listener. At most
/// `max_connections` at once; beyond it new connections wait in the kernel's backlog.
pub async fn serve_router_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: axum::Router,
    what: &'static str,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_router(listener, Some(config), app, what, max_connections, shutdown).await
}

/// [`serve_router_tls`], or plain HTTP without a TLS configuration (the AWS-compatible API's
/// loopback default), with the same bounds: connections at once, header read time.
pub async fn serve_router(
    listener: TcpListener,
    config: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    what: &'static str,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = config.map(TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        max_connections.min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper_util::service::TowerToHyperService::new(
                app.layer(axum::Extension(ClientAddr(peer))),
            );
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .clone();
            let Some(acceptor) = acceptor else {
                if let Err(e) = http.serve_connection(TokioIo::new(tcp), service).await {
                    tracing::debug!(listener = what, %peer, error = %e, "connection ended with an error");
                }
                return;
            };
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(listener = what, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = what, %peer, "TLS handshake timed out");
                    return;
                }
            };
            if let Err(e) = http.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(listener = what, %peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// The TCP peer of a request on a TLS listener (an axum extension).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

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

#[cfg(test)]
mod token_tests {
    use super::*;

    fn file(name: &str, text: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cvpn-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_token_file_readable_by_others_is_refused_with_the_chmod_to_run() {
        let good = "3f9a1c".repeat(11);
        for mode in [0o644, 0o640, 0o604, 0o620] {
            let p = file(&format!("open-{mode:o}"), &good, mode);
            let e = read_token_file(&p).unwrap_err().to_string();
            assert!(
                e.contains(&format!("chmod 600 {}", p.display())),
                "{mode:o}: {e}"
            );
        }
        let p = file("private", &format!("{good}\n"), 0o600);
        assert_eq!(read_token_file(&p).unwrap(), good);
        let p = file("owner-read-only", &good, 0o400);
        assert_eq!(read_token_file(&p).unwrap(), good);
    }

    #[test]
    fn a_short_token_is_refused_with_how_to_generate_one() {
        for short in ["", "tok-3f9a1c\n", &format!("  {}  \n", "x".repeat(31))] {
            let p = file("short", short, 0o600);
            let e = read_token_file(&p).unwrap_err().to_string();
            assert!(
                e.contains("at least 32") && e.contains("openssl rand -hex 32"),
                "{short:?}: {e}"
            );
        }
        let p = file("exact", &"x".repeat(32), 0o600);
        assert!(read_token_file(&p).is_ok());
        let e = read_token_file(Path::new("/nonexistent/cvpn/token")).unwrap_err();
        assert!(matches!(e, ServeError::TokenRead { .. }), "{e}");
    }
}
