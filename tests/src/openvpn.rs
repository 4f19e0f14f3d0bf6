//! Debian's stock `openvpn` client, run in a test namespace with a plain client profile (the
//! kind `cvpn config export` produces), watched through its log, stopped by PID.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{pki::Pem, Netns};

/// How the profile connects.
#[derive(Clone, Debug)]
pub struct Profile {
    pub remote: String,
    pub port: u16,
    /// "udp" or "tcp".
    pub proto: String,
    pub ca_pem: String,
    pub client: Pem,
    /// `data-ciphers`, e.g. "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305".
    pub data_ciphers: String,
    /// e.g. Some("1.2") to force TLS 1.2.
    pub tls_version_max: Option<String>,
    /// Extra lines appended verbatim (e.g. "reneg-sec 5").
    pub extra: Vec<String>,
}

impl Profile {
    pub fn render(&self) -> String {
        let proto = if self.proto == "tcp" {
            "tcp-client"
        } else {
            "udp"
        };
        let mut s = format!(
            "client\ndev tun\nproto {proto}\nremote {} {}\nremote-cert-tls server\nnobind\nresolv-retry infinite\n\
             data-ciphers {}\nverb 3\nconnect-retry 1\nconnect-retry-max 3\nserver-poll-timeout 5\n",
            self.remote, self.port, self.data_ciphers
        );
        if let Some(v) = &self.tls_version_max {
            s.push_str(&format!("tls-version-max {v}\n"));
        }
        for l in &self.extra {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(&format!(
            "<ca>\n{}</ca>\n<cert>\n{}</cert>\n<key>\n{}</key>\n",
            self.ca_pem, self.client.cert, self.client.key
        ));
        s
    }
}

/// A running `openvpn` client; killed (by PID) on drop.
pub struct OpenVpnClient {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    pub profile_path: PathBuf,
}

impl OpenVpnClient {
    /// Starts the client in `ns` with `profile`, writing the profile to `dir`.
    pub fn start(ns: &Netns, profile: &Profile, dir: &Path, name: &str) -> Result<Self> {
        Self::start_with_text(ns, &profile.render(), dir, name)
    }

    /// Starts the client in `ns` with the profile text `text` (e.g. one `cvpn config export`
    /// printed), writing it to `dir`.
    pub fn start_with_text(ns: &Netns, text: &str, dir: &Path, name: &str) -> Result<Self> {
        let profile_path = dir.join(format!("{name}.ovpn"));
        fs::write(&profile_path, text)?;
        Self::start_with_args(ns, &profile_path, &[], name)
    }

    /// Starts the client in `ns` with the profile file `profile_path` as it is (e.g. one a
    /// user downloaded), and `args` on the command line.
    pub fn start_with_args(
        ns: &Netns,
        profile_path: &Path,
        args: &[&str],
        _name: &str,
    ) -> Result<Self> {
        let profile_path = profile_path.to_path_buf();
        let mut child = ns
            .command("openvpn")
            .arg("--config")
            .arg(&profile_path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting openvpn (is the openvpn package installed? `cargo xtask setup`)")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
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
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Ok(OpenVpnClient {
            child,
            log,
            profile_path,
        })
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until a log line contains `needle`; fails with the log on timeout or exit.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().iter().any(|l| l.contains(needle)) {
                return Ok(start.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                bail!(
                    "openvpn exited ({status}) before {needle:?}; log:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "no {needle:?} from openvpn within {timeout:?}; log:\n{}",
            self.log().join("\n")
        )
    }

    /// Waits for "Initialization Sequence Completed".
    pub fn wait_connected(&mut self, timeout: Duration) -> Result<Duration> {
        self.wait_for("Initialization Sequence Completed", timeout)
    }

    /// The exit status, once the client has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the client (SIGTERM, then SIGKILL), and waits for it.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OpenVpnClient {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The management interface of a client started with `--management 127.0.0.1 PORT
/// --management-hold --management-query-passwords`: how tests answer its prompts (the user
/// name, password and static-challenge code) the way a GUI does.
pub struct Management {
    writer: std::net::TcpStream,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Management {
    /// Connects to the client's management port inside `ns` (retrying while it starts).
    pub fn connect(ns: &Netns, port: u16, timeout: Duration) -> Result<Management> {
        let stream = ns.run(move || {
            let start = Instant::now();
            loop {
                match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => return Ok(s),
                    Err(e) if start.elapsed() > timeout => {
                        bail!("management port {port}: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
        let reader = stream.try_clone()?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Management {
            writer: stream,
            lines: rx,
            seen: Vec::new(),
        })
    }

    /// Every line so far, including those no wait asked for.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    pub fn send(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        Ok(())
    }

    /// Waits for a line starting with `prefix`.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return Ok(l);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => bail!("management closed before {prefix:?}; saw {:?}", self.seen),
            }
        }
        bail!("no {prefix:?} within {timeout:?}; saw {:?}", self.seen)
    }

    /// Releases the hold and answers the credentials prompt: `response` is the static
    /// challenge's answer (sent as `SCRV1:<b64 password>:<b64 response>`), or `None` for a
    /// plain password. Returns the prompt line.
    pub fn sign_in(
        &mut self,
        user: &str,
        password: &str,
        response: Option<&str>,
    ) -> Result<String> {
        use base64::{engine::general_purpose::STANDARD, Engine};
        self.wait_for(">HOLD:", Duration::from_secs(10))?;
        self.send("hold release")?;
        let prompt = self.wait_for(">PASSWORD:Need 'Auth'", Duration::from_secs(10))?;
        self.send(&format!("username \"Auth\" {user}"))?;
        let secret = match response {
            Some(r) => format!("SCRV1:{}:{}", STANDARD.encode(password), STANDARD.encode(r)),
            None => password.to_string(),
        };
        self.send(&format!("password \"Auth\" \"{secret}\""))?;
        Ok(prompt)
    }
}
