//! A `cvpn serve` daemon under test: the real binary, started in the gateway namespace with a
//! configuration file written by the test, its log kept for failure messages, stopped by PID.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    pki::{write, Ca, Pem},
    veth, Netns,
};

/// The `cvpn` binary of the profile that built the running executable, (re)built once per test process so a
/// test never runs a stale daemon (`cargo test -p cvpn-tests` alone does not build it).
pub fn cvpn_binary() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    // `cargo xtask bench` builds the daemon just before and names it here: another build with
    // this process's environment would only rebuild the same thing.
    if let Some(bin) = std::env::var_os("CVPN_PREBUILT_BINARY") {
        let bin = PathBuf::from(bin);
        if !bin.exists() {
            bail!(
                "CVPN_PREBUILT_BINARY names {}, which does not exist",
                bin.display()
            );
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe()?;
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let mut dir = exe.parent().context("executable has no parent directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps has no parent directory")?;
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "gateway", "--bin", "cvpn"]);
        crate::without_package_env(&mut cmd);
        if release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build -p gateway failed ({s})")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    if let Err(e) = built {
        bail!("building the cvpn binary: {e}");
    }
    let bin = dir.join("cvpn");
    if !bin.exists() {
        bail!(
            "{} is missing: run the suite with `cargo xtask test`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "cvpn-{tag}-{}-{}",
            std::process::id(),
            crate::unique_tag()
        ));
        fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `serve --config FILE --data-dir DIR`, the data directory being the file's.
fn serve_args(config: &Path) -> Vec<std::ffi::OsString> {
    let data_dir = config.parent().unwrap_or(Path::new(".")).to_path_buf();
    vec![
        "serve".into(),
        "--config".into(),
        config.as_os_str().to_owned(),
        "--data-dir".into(),
        data_dir.into(),
    ]
}

/// The running daemon; SIGTERM then SIGKILL on drop.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(ns: &Netns, config: &Path) -> Result<Self> {
        Self::start_with_log_level(ns, config, "debug")
    }

    /// Like [`Daemon::start`] with `CVPN_LOG` set to `level` (benchmarks run at "info").
    pub fn start_with_log_level(ns: &Netns, config: &Path, level: &str) -> Result<Self> {
        Self::spawn(ns, &serve_args(config), level, "serving")
    }

    /// Starts `cvpn ARGS` in `ns` and waits for `ready` in its log.
    pub fn spawn(
        ns: &Netns,
        args: &[std::ffi::OsString],
        level: &str,
        ready: &str,
    ) -> Result<Self> {
        Self::spawn_with_file_limit(ns, args, level, ready, None)
    }

    /// [`Daemon::start`] with the open-file limit (soft and hard) set to `nofile`, as a
    /// service manager would.
    pub fn start_with_file_limit(ns: &Netns, config: &Path, nofile: u64) -> Result<Self> {
        Self::spawn_with_file_limit(ns, &serve_args(config), "debug", "serving", Some(nofile))
    }

    fn spawn_with_file_limit(
        ns: &Netns,
        args: &[std::ffi::OsString],
        level: &str,
        ready: &str,
        nofile: Option<u64>,
    ) -> Result<Self> {
        let mut cmd = ns.command(cvpn_binary()?.to_str().context("binary path")?);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only an async-signal-safe setrlimit between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .args(args)
            .env("CVPN_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting cvpn serve")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        for s in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let mut d = Daemon { child, log };
        d.wait_for(ready, Duration::from_secs(10))?;
        Ok(d)
    }

    /// SIGKILL (a crash) and wait.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The daemon's process ID (`ip netns exec` execs it in place: the PID is cvpn's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().iter().any(|l| l.contains(needle)) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                bail!(
                    "cvpn exited ({status}) before {needle:?}; log:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "no {needle:?} in the cvpn log within {timeout:?}; log:\n{}",
            self.log().join("\n")
        )
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Endpoint test network:
///
/// ```text
///  client ns c0 10.99.0.2 ──veth── wan0 10.99.0.1 [gateway ns: cvpn serve] tgt0 10.88.0.1 ──veth── eth0 10.88.0.10, .20 private ns
/// ```
pub struct EndpointNet {
    pub clients: Vec<Netns>,
    pub private: Netns,
    pub gateway: Netns,
    pub dir: TempDir,
    pub ca: Ca,
    /// Give the server an RSA key instead of ECDSA.
    pub use_rsa_server_key: bool,
}

pub const SERVER_WAN: &str = "10.99.0.1";

impl EndpointNet {
    /// `clients` client namespaces, each on its own veth into the gateway (10.99.N.2).
    pub fn new(clients: usize) -> Result<Self> {
        let gateway = Netns::new("eg")?;
        let private = Netns::new("ep")?;
        veth(&gateway, "tgt0", &private, "eth0")?;
        gateway.ip("addr add 10.88.0.1/24 dev tgt0")?;
        private.ip("addr add 10.88.0.10/24 dev eth0")?;
        private.ip("addr add 10.88.0.20/24 dev eth0")?;
        let mut cs = Vec::new();
        for i in 0..clients {
            let c = Netns::new(&format!("ec{i}"))?;
            let gw_if = format!("wan{i}");
            veth(&c, "c0", &gateway, &gw_if)?;
            c.ip(&format!("addr add 10.99.{i}.2/24 dev c0"))?;
            gateway.ip(&format!("addr add 10.99.{i}.1/24 dev {gw_if}"))?;
            cs.push(c);
        }
        Ok(EndpointNet {
            clients: cs,
            private,
            gateway,
            dir: TempDir::new("ep")?,
            ca: Ca::new("cvpn test CA")?,
            use_rsa_server_key: false,
        })
    }

    /// The server address a client namespace reaches the gateway at.
    pub fn server_addr(i: usize) -> String {
        format!("10.99.{i}.1")
    }

    /// Writes server certificate, key, CA and CRL, and a config with `body` appended to the
    /// [endpoint] keys given in `endpoint`. Returns the config path.
    pub fn write_config(&mut self, endpoint: &str, body: &str) -> Result<PathBuf> {
        let server: Pem = if self.use_rsa_server_key {
            self.ca.server_rsa("vpn.example.test")?
        } else {
            self.ca.server("vpn.example.test")?
        };
        let d = &self.dir.0;
        let cert = write(d, "server.crt", &server.cert)?;
        let key = write(d, "server.key", &server.key)?;
        let ca = write(d, "ca.crt", &self.ca.cert_pem())?;
        let crl = write(d, "crl.pem", &self.ca.crl_pem()?)?;
        let text = format!(
            "[endpoint]\nserver_cert = {cert:?}\nserver_key = {key:?}\nclient_ca = {ca:?}\ncrl = {crl:?}\n{endpoint}\n{body}\n"
        );
        write(d, "cvpn.toml", &text)
    }
}

/// `cvpn serve` on its database: no endpoint file; endpoints come from the API.
pub struct StoreDaemon {
    pub daemon: Daemon,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
}

/// What a `cvpn` command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl StoreDaemon {
    /// Starts the daemon in `ns` with its data directory and API socket in `data_dir`.
    pub fn start(ns: &Netns, data_dir: &Path) -> Result<Self> {
        Self::start_with_config(ns, data_dir, None)
    }

    /// [`StoreDaemon::start`] with a daemon configuration file too (the flags override its
    /// data directory and socket).
    pub fn start_with_config(ns: &Netns, data_dir: &Path, config: Option<&Path>) -> Result<Self> {
        let socket = data_dir.join("api.sock");
        let mut args: Vec<std::ffi::OsString> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.as_os_str().to_owned(),
            "--api-socket".into(),
            socket.as_os_str().to_owned(),
        ];
        if let Some(c) = config {
            args.extend(["--config".into(), c.as_os_str().to_owned()]);
        }
        let daemon = Daemon::spawn(ns, &args, "debug", "API listening")?;
        Ok(StoreDaemon {
            daemon,
            data_dir: data_dir.to_path_buf(),
            socket,
        })
    }

    /// Runs `cvpn ARGS` against this daemon's socket (a Unix socket: reachable from any
    /// network namespace).
    pub fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        cli(&self.socket, args)
    }

    /// Runs `cvpn ARGS --output json`; fails unless it exits 0.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(&all)?;
        if out.code != 0 {
            bail!(
                "cvpn {} exited {}: {}{}",
                args.join(" "),
                out.code,
                out.stderr,
                out.stdout
            );
        }
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("cvpn {} printed no JSON: {}", args.join(" "), out.stdout))
    }
}

/// Runs `cvpn ARGS` with the API socket `socket`.
pub fn cli(socket: &Path, args: &[&str]) -> Result<CliOutput> {
    let out = std::process::Command::new(cvpn_binary()?)
        .args(args)
        .env("CVPN_SOCKET", socket)
        .env("CVPN_LOG", "warn")
        .output()
        .context("running cvpn")?;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

impl EndpointNet {
    /// Writes the server certificate, key and client CA as PEM files for `cvpn endpoint
    /// create`; returns their paths.
    pub fn write_server_files(&mut self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        self.ca.write_server_files(&self.dir.0)
    }

    /// [`EndpointNet::write_server_files`] with the CA appended to the server certificate, as
    /// endpoints without a client CA take it (exported profiles give clients that CA to verify
    /// the server).
    pub fn write_server_chain(&mut self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let (cert, key, ca) = self.write_server_files()?;
        let chain = std::fs::read_to_string(&cert)? + &std::fs::read_to_string(&ca)?;
        std::fs::write(&cert, chain)?;
        Ok((cert, key, ca))
    }
}

impl StoreDaemon {
    /// Associates `endpoint` with the private network (`tgt0`, 10.88.0.0/24) and authorizes
    /// each `(host, group)`: the group may reach that host.
    pub fn associate_and_authorize(
        &self,
        endpoint: &str,
        rules: &[(std::net::Ipv4Addr, &str)],
    ) -> Result<()> {
        self.json(&[
            "network",
            "associate",
            endpoint,
            "--interface",
            "tgt0",
            "--subnet",
            "10.88.0.0/24",
        ])?;
        for (host, group) in rules {
            self.json(&[
                "rule",
                "authorize",
                endpoint,
                "--destination",
                &format!("{host}/32"),
                "--group",
                group,
            ])?;
        }
        Ok(())
    }
}
