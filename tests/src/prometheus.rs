//! A real Prometheus (Debian's package) for tests: started by the test inside a namespace with
//! a configuration that scrapes one target every second, its data in a directory of its own,
//! listening on that namespace's loopback; stopped (by PID) and removed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::gateway::TempDir;
use crate::Netns;

/// Where Debian installs it.
pub const BINARY: &str = "/usr/bin/prometheus";
/// The port it listens on (the namespace's loopback).
pub const PORT: u16 = 9090;

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    ns: String,
    _dir: TempDir,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `ns`, scraping `http://{target}/metrics` every second.
    pub fn start(ns: &Netns, target: &str) -> Result<Prometheus> {
        Self::start_with_tls(ns, target, None)
    }

    /// [`Prometheus::start`], scraping over HTTPS when `tls` gives the CA file that signs the
    /// target's certificate and the name in it.
    pub fn start_with_tls(
        ns: &Netns,
        target: &str,
        tls: Option<(&std::path::Path, &str)>,
    ) -> Result<Prometheus> {
        if !std::path::Path::new(BINARY).exists() {
            bail!("{BINARY} is missing: run `cargo xtask setup` (Debian's prometheus package)");
        }
        let dir = TempDir::new("prom")?;
        let config = dir.0.join("prometheus.yml");
        let scheme = match tls {
            None => String::new(),
            Some((ca, name)) => format!(
                "    scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: {name}\n",
                ca.display()
            ),
        };
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: cvpn\n    metrics_path: /metrics\n{scheme}    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let log = dir.0.join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let child = ns
            .command(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PORT}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting prometheus")?;
        let p = Prometheus {
            child,
            ns: ns.name().to_string(),
            _dir: dir,
            log,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if p.get(ns, "/-/ready").is_ok_and(|r| r.contains(" 200 ")) {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "prometheus in {} not ready within 20 s: {}",
            p.ns,
            std::fs::read_to_string(&p.log).unwrap_or_default()
        )
    }

    /// `GET path` on its HTTP API; the whole response.
    pub fn get(&self, ns: &Netns, path: &str) -> Result<String> {
        let path = path.to_string();
        ns.run(move || {
            let mut s = TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], PORT)),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
    }

    /// The value of an instant query's first sample, if it has one.
    pub fn query(&self, ns: &Netns, expr: &str) -> Result<Option<f64>> {
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let r = self.get(ns, &format!("/api/v1/query?query={q}"))?;
        let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // Chunked or not, the JSON object is between the first '{' and the last '}'.
        let json = match (body.find('{'), body.rfind('}')) {
            (Some(a), Some(b)) if a < b => &body[a..=b],
            _ => bail!("prometheus answered no JSON: {r}"),
        };
        let v: serde_json::Value =
            serde_json::from_str(json).with_context(|| format!("prometheus answered: {json}"))?;
        if v["status"] != "success" {
            bail!("prometheus query {expr:?} failed: {v}");
        }
        Ok(v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok()))
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
