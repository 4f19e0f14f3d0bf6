//! A real browser for the single sign-on tests: Debian's headless Chromium (`/usr/bin/chromium`,
//! `cargo xtask setup` installs it) driven by `tests/idp/browser.mjs` (playwright-core, pinned
//! in `tests/idp/package-lock.json`) through a list of [`Step`]s.
//!
//! ```ignore
//! let r = Browser::run(&[
//!     Step::goto(&login_url),
//!     Step::fill("input[name=login]", "alice"),
//!     Step::fill("input[name=password]", "pw"),
//!     Step::click("button[type=submit]"),
//!     Step::wait_url(r"^http://127\.0\.0\.1:\d+/cb\?"),
//! ])?;
//! let code = r.query_param("code");
//! ```
//!
//! Every wait is bounded ([`BrowserOptions::timeout`] per step, 20 s by default; the whole run
//! by the steps' bounds plus a margin, after which the process is killed by its PID). The
//! browser reaches loopback only (and names mapped with [`BrowserOptions::resolve`], hosts
//! allowed with [`BrowserOptions::allow_hosts`]; it may run in a namespace): other
//! requests are aborted and listed in [`BrowserResult::blocked`]. A failed step comes back as
//! an error with the step, the URL, the page's text and a screenshot path. Screenshots go to
//! `<target>/test-artifacts/browser/` ([`artifacts_dir`]), where they outlive the test.
//!
//! HTTPS: Chromium trusts only the system store. [`BrowserOptions::ca_file`] trusts the public
//! keys of the certificates in a PEM file (`--ignore-certificate-errors-spki-list`: put the
//! server's certificate in it, as Chromium matches the keys of the chain the server sent: the
//! CA alone fails with `ERR_CERT_AUTHORITY_INVALID` when the server sends only its leaf);
//! [`BrowserOptions::ignore_https_errors`] ignores all certificate errors, acceptable for a
//! gateway on loopback with a test CA.

use std::{
    fs::{self, File},
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    gateway::TempDir,
    oidc_idp::{ensure_node_modules, node_command, query_param},
    terminate, unique_tag,
};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// One thing the browser does; each waits at most [`BrowserOptions::timeout`].
#[derive(Clone, Debug)]
pub enum Step {
    /// Load a URL (until its load event).
    Goto(String),
    /// Type `value` into the element `selector` (CSS or Playwright selector).
    Fill { selector: String, value: String },
    /// Click the first element matching a selector.
    Click(String),
    /// Click the first element showing a text.
    ClickText(String),
    /// Wait until the page URL matches a regular expression (JavaScript syntax).
    WaitUrl(String),
    /// Wait until the page shows a text.
    WaitText(String),
    /// The page shows a text now (it may take up to 2 s to appear).
    ExpectText(String),
    /// The page does not show a text now.
    ExpectNoText(String),
    /// The page URL matches a regular expression now.
    ExpectUrl(String),
    /// A full-page PNG; a relative path is under the run's artifacts directory.
    Screenshot(String),
    /// Add the page's visible text to [`BrowserResult::texts`].
    PrintText,
    /// Click a link that downloads a file, and save the file to `path`.
    Download { selector: String, path: PathBuf },
    /// Keep an element's text as `name` ([`BrowserResult::remembered`]).
    Remember { selector: String, name: String },
    /// Type the TOTP code of the base32 secret remembered as `secret`, `offset` 30-second
    /// steps from now (what an authenticator app that scanned it shows).
    FillTotp {
        selector: String,
        secret: String,
        offset: i64,
    },
}

impl Step {
    pub fn goto(url: &str) -> Step {
        Step::Goto(url.into())
    }
    pub fn fill(selector: &str, value: &str) -> Step {
        Step::Fill {
            selector: selector.into(),
            value: value.into(),
        }
    }
    pub fn click(selector: &str) -> Step {
        Step::Click(selector.into())
    }
    pub fn click_text(text: &str) -> Step {
        Step::ClickText(text.into())
    }
    pub fn wait_url(regex: &str) -> Step {
        Step::WaitUrl(regex.into())
    }
    pub fn wait_text(text: &str) -> Step {
        Step::WaitText(text.into())
    }
    pub fn expect_text(text: &str) -> Step {
        Step::ExpectText(text.into())
    }
    pub fn expect_no_text(text: &str) -> Step {
        Step::ExpectNoText(text.into())
    }
    pub fn expect_url(regex: &str) -> Step {
        Step::ExpectUrl(regex.into())
    }
    pub fn screenshot(path: &str) -> Step {
        Step::Screenshot(path.into())
    }
    pub fn remember(selector: &str, name: &str) -> Step {
        Step::Remember {
            selector: selector.into(),
            name: name.into(),
        }
    }
    pub fn fill_totp(selector: &str, secret: &str, offset: i64) -> Step {
        Step::FillTotp {
            selector: selector.into(),
            secret: secret.into(),
            offset,
        }
    }
    pub fn download(selector: &str, path: &Path) -> Step {
        Step::Download {
            selector: selector.into(),
            path: path.to_path_buf(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Step::Goto(u) => json!({ "goto": u }),
            Step::Fill { selector, value } => json!({ "fill": selector, "value": value }),
            Step::Click(s) => json!({ "click": s }),
            Step::ClickText(t) => json!({ "click_text": t }),
            Step::WaitUrl(r) => json!({ "wait_url": r }),
            Step::WaitText(t) => json!({ "wait_text": t }),
            Step::ExpectText(t) => json!({ "expect_text": t }),
            Step::ExpectNoText(t) => json!({ "expect_no_text": t }),
            Step::ExpectUrl(r) => json!({ "expect_url": r }),
            Step::Screenshot(p) => json!({ "screenshot": p }),
            Step::PrintText => json!({ "print_text": true }),
            Step::Download { selector, path } => json!({ "download": selector, "path": path }),
            Step::Remember { selector, name } => json!({ "remember": selector, "as": name }),
            Step::FillTotp {
                selector,
                secret,
                offset,
            } => json!({ "fill_totp": selector, "secret": secret, "offset": offset }),
        }
    }
}

/// How the browser runs.
#[derive(Clone, Debug)]
pub struct BrowserOptions {
    /// The bound of each step.
    pub timeout: Duration,
    /// Trust the public keys of the certificates in this PEM file (see the module docs).
    pub ca_file: Option<PathBuf>,
    /// Ignore every certificate error.
    pub ignore_https_errors: bool,
    /// Host names Chromium resolves to these addresses (and may reach).
    pub resolve: Vec<(String, IpAddr)>,
    /// Hosts the browser may reach besides loopback: test hosts' addresses in namespaces the
    /// test made.
    pub allow_hosts: Vec<String>,
    /// Run the browser inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Where screenshots go; by default a new directory under [`artifacts_dir`].
    pub screenshot_dir: Option<PathBuf>,
    /// Keep the browser's profile (cookies) here across runs; by default each run starts
    /// with a fresh profile that is removed after it.
    pub user_data_dir: Option<PathBuf>,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions {
            timeout: Duration::from_secs(20),
            ca_file: None,
            ignore_https_errors: false,
            resolve: Vec::new(),
            allow_hosts: Vec::new(),
            netns: None,
            screenshot_dir: None,
            user_data_dir: None,
        }
    }
}

/// What a successful run saw.
#[derive(Clone, Debug, Default)]
pub struct BrowserResult {
    /// The page's URL after the last step.
    pub final_url: String,
    /// The texts of the [`Step::PrintText`] steps, in order.
    pub texts: Vec<String>,
    /// Every URL the page showed, in order (redirects the browser followed within one load do
    /// not show; the page a redirect ends on does).
    pub navigations: Vec<String>,
    /// Screenshots taken.
    pub screenshots: Vec<PathBuf>,
    /// The pages' console errors (failed loads among them).
    pub console_errors: Vec<String>,
    /// Requests refused because they would have left the machine.
    pub blocked: Vec<String>,
    /// Where this run's screenshots go.
    pub screenshot_dir: PathBuf,
    /// What [`Step::Remember`] steps kept, by name.
    pub remembered: std::collections::BTreeMap<String, String>,
    /// Steps that had to be done again because the browser gave up on them (a download it
    /// cancelled), one line each.
    pub retries: Vec<String>,
}

impl BrowserResult {
    /// A query parameter of the final URL (decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.final_url, name)
    }
}

/// `<target>/test-artifacts`: the cargo target directory's (`CARGO_TARGET_DIR`, else the
/// workspace's `target/`), kept after the tests for a person to look at.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts")
}

/// Headless Chromium, driven by `browser.mjs`.
pub struct Browser;

impl Browser {
    /// Runs `steps` in a fresh browser with the default options.
    pub fn run(steps: &[Step]) -> Result<BrowserResult> {
        Self::run_with(&BrowserOptions::default(), steps)
    }

    /// Runs `steps` in a fresh browser (a new profile each time: no cookies carried over).
    pub fn run_with(options: &BrowserOptions, steps: &[Step]) -> Result<BrowserResult> {
        if !Path::new(CHROMIUM).exists() {
            bail!("{CHROMIUM} is missing: apt-get install chromium (`cargo xtask setup` does)");
        }
        let idp_dir = ensure_node_modules()?;
        let work = TempDir::new("browser")?;
        let shots = match &options.screenshot_dir {
            Some(d) => d.clone(),
            None => artifacts_dir().join("browser").join(format!(
                "{}-{}",
                std::process::id(),
                unique_tag()
            )),
        };
        fs::create_dir_all(&shots).with_context(|| format!("create {}", shots.display()))?;
        let script = work.0.join("script.json");
        fs::write(
            &script,
            serde_json::to_vec(&steps.iter().map(Step::to_json).collect::<Vec<_>>())?,
        )?;
        let mut cmd = node_command(options.netns.as_deref())?;
        cmd.arg(idp_dir.join("browser.mjs"))
            .arg("--timeout-ms")
            .arg(options.timeout.as_millis().to_string())
            .arg("--screenshot-dir")
            .arg(&shots)
            .arg("--chromium")
            .arg(CHROMIUM);
        if let Some(ca) = &options.ca_file {
            cmd.arg("--ca").arg(ca);
        }
        if options.ignore_https_errors {
            cmd.arg("--ignore-https-errors");
        }
        if let Some(d) = &options.user_data_dir {
            cmd.arg("--user-data-dir").arg(d);
        }
        for (host, ip) in &options.resolve {
            cmd.arg("--resolve").arg(format!("{host}={ip}"));
        }
        for host in &options.allow_hosts {
            cmd.arg("--allow-host").arg(host);
        }
        cmd.arg(&script);
        let out_path = work.0.join("stdout");
        let err_path = work.0.join("stderr");
        let mut child = cmd
            .current_dir(&idp_dir)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?)
            .spawn()
            .context("cannot start node browser.mjs")?;
        // browser.mjs bounds itself; this bound is for a node that hangs anyway.
        let limit = options.timeout * (steps.len() as u32 + 2) + Duration::from_secs(30);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if start.elapsed() > limit {
                terminate(&mut child, Duration::from_secs(3));
                bail!(
                    "the browser did not finish within {limit:?}:\n{}",
                    fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let v: Value = match stdout.lines().rev().find(|l| l.starts_with('{')) {
            Some(line) => serde_json::from_str(line)
                .with_context(|| format!("browser.mjs printed no result: {stdout}\n{stderr}"))?,
            None => bail!("browser.mjs ({status}) printed no result:\n{stdout}\n{stderr}"),
        };
        let strings = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let result = BrowserResult {
            final_url: v["final_url"].as_str().unwrap_or_default().to_owned(),
            texts: strings("texts"),
            navigations: strings("navigations"),
            screenshots: strings("screenshots")
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            console_errors: strings("console_errors"),
            blocked: strings("blocked"),
            retries: strings("retries"),
            screenshot_dir: shots,
            remembered: v["remembered"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if !status.success() || v["ok"] != json!(true) {
            bail!(
                "browser: {}\npages seen: {:?}\nscreenshots: {:?}\n(browser.mjs {status})",
                v["error"].as_str().unwrap_or("failed"),
                result.navigations,
                result.screenshots,
            );
        }
        Ok(result)
    }
}
