//! A real OpenID Connect provider for the single sign-on tests: `tests/idp/oidc.mjs`, panva's
//! `oidc-provider` (npm, pinned in `tests/idp/package-lock.json`) on the machine's Node.js,
//! started by the test on 127.0.0.1 and a free port and stopped (by PID) on drop.
//!
//! What it does (see the script's header for all of it): authorization code flow with PKCE
//! required; sign-in on oidc-provider's own login page, the password checked against
//! [`IdpUser::password`]; no consent page for clients with `skip_consent`; the id_token carries
//! `email`, `email_verified`, `groups`, `name`, `preferred_username` (scopes `openid email
//! profile groups`); every code grant of a client allowed `refresh_token` gets a refresh token.
//! [`OidcIdp::disable_user`] makes her refresh grants fail (`invalid_grant`) and her sign-ins
//! fail; [`OidcIdp::rotate_keys`] makes a new key the signer, live, JWKS serving both.
//!
//! The Node packages are installed by `npm ci` into `tests/idp/node_modules` the first time
//! they are needed (`cargo xtask setup` does it too), under a file lock so tests running at
//! once do not race. The small HTTP/1.0 client here ([`http_post_form`], [`http_get`]) is
//! enough to talk to it over plain HTTP on loopback.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::{directory_servers::free_port, gateway::TempDir, terminate};

/// How long the IdP may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `npm ci` may take.
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);

/// `tests/idp`: the Node project of the IdP and the browser driver.
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

/// The machine's `node`, or an error saying what is missing.
pub fn node() -> Result<PathBuf> {
    find_program("node").context(
        "node is not installed: the OIDC and browser tests need the machine's Node.js (v20 or later)",
    )
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

static NPM_ONCE: Mutex<bool> = Mutex::new(false);

/// Installs `tests/idp/node_modules` with `npm ci` unless it already holds what
/// `package-lock.json` says (a copy of the lock file is kept there after each install). One
/// install at a time: a mutex in this process, an exclusive `flock` across processes.
pub fn ensure_node_modules() -> Result<PathBuf> {
    let dir = idp_dir();
    let mut done = NPM_ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(dir);
    }
    node()?;
    let lock_path = std::env::temp_dir().join("cvpn-tests-idp-npm.lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("flock {}: {e}", lock_path.display()))?;
    if !node_modules_current(&dir) {
        npm_ci(&dir)?;
    }
    *done = true;
    Ok(dir)
}

/// The stamp `npm ci` leaves (see [`ensure_node_modules`]); `cargo xtask setup` writes the same.
const STAMP: &str = "node_modules/.cvpn-installed-package-lock.json";

fn node_modules_current(dir: &Path) -> bool {
    match (
        fs::read(dir.join("package-lock.json")),
        fs::read(dir.join(STAMP)),
    ) {
        (Ok(lock), Ok(stamp)) => lock == stamp,
        _ => false,
    }
}

fn npm_ci(dir: &Path) -> Result<()> {
    let npm = find_program("npm")
        .context("npm is not installed: the OIDC and browser tests need the machine's npm")?;
    let log_path = std::env::temp_dir().join(format!("cvpn-npm-ci-{}.log", std::process::id()));
    let log = File::create(&log_path)?;
    eprintln!("oidc_idp: npm ci in {} (once)", dir.display());
    let mut child = Command::new(npm)
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start npm ci")?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > NPM_CI_TIMEOUT {
            terminate(&mut child, Duration::from_secs(2));
            bail!(
                "npm ci in {} took over {NPM_CI_TIMEOUT:?}:\n{}",
                dir.display(),
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = fs::read_to_string(&log_path).unwrap_or_default();
    let _ = fs::remove_file(&log_path);
    if !status.success() {
        bail!("npm ci in {} failed ({status}):\n{out}", dir.display());
    }
    fs::copy(dir.join("package-lock.json"), dir.join(STAMP))?;
    Ok(())
}

/// A relying party the IdP knows.
#[derive(Clone, Debug)]
pub struct IdpClient {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    /// Grant consent without showing a page (default in [`IdpClient::new`]).
    pub skip_consent: bool,
}

impl IdpClient {
    pub fn new(client_id: &str, client_secret: &str, redirect_uri: &str) -> Self {
        IdpClient {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uris: vec![redirect_uri.into()],
            skip_consent: true,
        }
    }
}

/// A user: `id` is the `sub`; she signs in with her id or her email and `password`.
#[derive(Clone, Debug)]
pub struct IdpUser {
    pub id: String,
    pub email: String,
    pub password: String,
    pub groups: Vec<String>,
    pub disabled: bool,
}

impl IdpUser {
    pub fn new(id: &str, email: &str, password: &str, groups: &[&str]) -> Self {
        IdpUser {
            id: id.into(),
            email: email.into(),
            password: password.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            disabled: false,
        }
    }
}

/// What the IdP knows.
#[derive(Clone, Debug, Default)]
pub struct OidcIdpConfig {
    pub clients: Vec<IdpClient>,
    pub users: Vec<IdpUser>,
    /// "RS256" (the default) or "ES256".
    pub key_alg: Option<String>,
    /// oidc-provider lifetimes in seconds by artifact (`{"IdToken": 60, "AccessToken": 60}`);
    /// defaults: codes 60, access and id tokens 600, refresh tokens and sessions a day.
    pub ttl: Option<Value>,
    /// Run inside this network namespace (`ip netns exec`; the name of a [`crate::Netns`] the
    /// test made and keeps): the admin calls are then made from inside it too.
    pub netns: Option<String>,
    /// The address to listen on and to name in the issuer (default 127.0.0.1): a test host's
    /// address in `netns` when the gateway or the browser reaches the IdP from another one.
    pub listen: Option<IpAddr>,
}

/// A running IdP; stopped (SIGTERM to its PID, then SIGKILL) and its directory removed on drop.
pub struct OidcIdp {
    child: Option<Child>,
    dir: TempDir,
    issuer: String,
    port: u16,
    admin_token: String,
    netns: Option<String>,
}

impl OidcIdp {
    /// Installs the Node packages if needed, starts the IdP on a free port and waits (bounded)
    /// until it serves.
    pub fn start(config: OidcIdpConfig) -> Result<Self> {
        let idp_dir = ensure_node_modules()?;
        let mut idp = OidcIdp {
            child: None,
            dir: TempDir::new("oidc-idp")?,
            issuer: String::new(),
            port: 0,
            admin_token: random_hex(16)?,
            netns: config.netns.clone(),
        };
        let listen = config.listen.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        // The free port is found by binding port 0 and closing the socket: another process
        // can take it in between. Try again with another port if the IdP fails to start.
        let mut last_err = None;
        for _ in 0..3 {
            idp.port = free_port()?;
            idp.issuer = format!("http://{}", SocketAddr::from((listen, idp.port)));
            match idp.launch(&idp_dir, &config) {
                Ok(()) => return Ok(idp),
                Err(e) => {
                    idp.stop();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap())
    }

    fn launch(&mut self, idp_dir: &Path, config: &OidcIdpConfig) -> Result<()> {
        let ready = self.dir.0.join("ready.json");
        let _ = fs::remove_file(&ready);
        let host = config
            .listen
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
            .to_string();
        let conf = json!({
            "port": self.port,
            "host": host,
            "issuer": self.issuer,
            "ready_file": ready,
            "admin_token": self.admin_token,
            "key_alg": config.key_alg.as_deref().unwrap_or("RS256"),
            "ttl": config.ttl.clone().unwrap_or_else(|| json!({})),
            "clients": config.clients.iter().map(|c| json!({
                "client_id": c.client_id,
                "client_secret": c.client_secret,
                "redirect_uris": c.redirect_uris,
                "skip_consent": c.skip_consent,
            })).collect::<Vec<_>>(),
            "users": config.users.iter().map(|u| json!({
                "id": u.id,
                "email": u.email,
                "password": u.password,
                "groups": u.groups,
                "disabled": u.disabled,
            })).collect::<Vec<_>>(),
        });
        let conf_path = self.dir.0.join("idp.json");
        fs::write(&conf_path, serde_json::to_vec_pretty(&conf)?)?;
        let log_path = self.log_path();
        let log = File::create(&log_path)?;
        let child = node_command(self.netns.as_deref())?
            .arg(idp_dir.join("oidc.mjs"))
            .arg(&conf_path)
            .current_dir(idp_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start node oidc.mjs")?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if ready.exists() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "the OIDC IdP exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "the OIDC IdP was not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("idp.log")
    }

    /// `http://<listen address>:<port>` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IdP's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// `<issuer>/auth`.
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    /// `<issuer>/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// `<issuer>/jwks`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// What the IdP has written so far (oidc-provider's warnings, refused sign-ins, grant
    /// errors with their reason, admin actions).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// From now on `user` cannot sign in and her refresh grants fail with `invalid_grant`.
    pub fn disable_user(&self, user: &str) -> Result<()> {
        self.admin(&format!("/admin/disable?user={}", form_encode(user)))
            .map(|_| ())
    }

    /// Undoes [`OidcIdp::disable_user`].
    pub fn enable_user(&self, user: &str) -> Result<()> {
        self.admin(&format!("/admin/enable?user={}", form_encode(user)))
            .map(|_| ())
    }

    /// A new signing key becomes the signer (its `kid` is returned); JWKS serves it and the old
    /// ones. Live: sessions, grants and tokens stay valid.
    pub fn rotate_keys(&self) -> Result<String> {
        self.rotate("/admin/rotate-keys")
    }

    /// Like [`OidcIdp::rotate_keys`], but JWKS drops the old keys.
    pub fn rotate_keys_retiring_old(&self) -> Result<String> {
        self.rotate("/admin/rotate-keys?retire=1")
    }

    fn rotate(&self, path: &str) -> Result<String> {
        let v = self.admin(path)?;
        v["signer"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("rotate-keys answered {v}"))
    }

    fn admin(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.issuer);
        let auth = format!("Bearer {}", self.admin_token);
        let (status, body) = in_netns(self.netns.as_deref(), {
            let url = url.clone();
            move || http_request("POST", &url, &[("Authorization", &auth)], "")
        })?;
        if status != 200 {
            bail!("{url}: {status} {body}\n{}", self.log());
        }
        Ok(serde_json::from_str(&body)?)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(3));
        }
    }
}

impl Drop for OidcIdp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `node`, or `ip netns exec <ns> node` (which execs node: the child's PID is node's).
pub fn node_command(netns: Option<&str>) -> Result<Command> {
    let node = node()?;
    Ok(match netns {
        None => Command::new(node),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(node);
            c
        }
    })
}

/// Runs `f` on a thread inside the network namespace `netns` (or here when None) and waits
/// for it: for requests to an IdP or a callback that listen in a namespace.
pub fn in_netns<T, F>(netns: Option<&str>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let Some(ns) = netns else { return f() };
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&file),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .with_context(|| format!("setns {path}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in netns {ns} panicked"))?
}

/// `application/x-www-form-urlencoded` / query encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes one form / query value (`+` is a space).
pub fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded value of `name` in a URL's query (or in a bare `a=b&c=d` string).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?').map_or(url, |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name).then(|| form_decode(v))
    })
}

/// One plain-HTTP request (HTTP/1.0, so no chunked answers) to `http://host:port/path`;
/// returns the status and the body. 10 s bound on connect and on each read.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// here"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("{url}: the host must be an IP address and port"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .with_context(|| format!("{method} {url}: reading the answer"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {url}: no complete answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{method} {url}: bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// POSTs a form (optionally with HTTP Basic client authentication, as `client_secret_basic`
/// wants it: id and secret form-encoded, then base64) and parses the JSON answer.
pub fn http_post_form(
    url: &str,
    basic_auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> Result<(u16, Value)> {
    use base64::Engine as _;
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let auth = basic_auth.map(|(id, secret)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                form_encode(id),
                form_encode(secret)
            ))
        )
    });
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let (status, text) = http_request("POST", url, &headers, &body)?;
    let v = serde_json::from_str(&text)
        .with_context(|| format!("POST {url}: not JSON ({status}): {text}"))?;
    Ok((status, v))
}

/// GETs a JSON document.
pub fn http_get(url: &str) -> Result<(u16, Value)> {
    let (status, text) = http_request("GET", url, &[], "")?;
    let v = serde_json::from_str(&text)
        .with_context(|| format!("GET {url}: not JSON ({status}): {text}"))?;
    Ok((status, v))
}

/// The claims of a JWT (its payload, base64url-decoded; the signature is not checked).
pub fn jwt_claims(jwt: &str) -> Result<Value> {
    jwt_part(jwt, 1)
}

/// The header of a JWT (`alg`, `kid`).
pub fn jwt_header(jwt: &str) -> Result<Value> {
    jwt_part(jwt, 0)
}

fn jwt_part(jwt: &str, i: usize) -> Result<Value> {
    use base64::Engine as _;
    let part = jwt
        .split('.')
        .nth(i)
        .ok_or_else(|| anyhow!("not a JWT: {jwt}"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .context("JWT part is not base64url")?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// `n` random bytes from the kernel, as hex.
pub fn random_hex(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
