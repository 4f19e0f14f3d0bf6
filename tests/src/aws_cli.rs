//! The real `aws` CLI and boto3, from PyPI, in a virtualenv of the test run
//! (`<target>/aws-venv`, made once and reused), run inside a test's namespace against cvpn's
//! AWS-compatible listener. Their environment points only at that listener: no credentials or
//! configuration files of the machine, no instance metadata lookups.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

use crate::Netns;

/// What pip installs: the AWS CLI v1 and boto3 (DESIGN.md §10 verified 1.46 / 1.44).
const PACKAGES: &[&str] = &["awscli>=1.40,<2", "boto3>=1.40,<2"];

fn venv_dir() -> PathBuf {
    crate::browser::artifacts_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("aws-venv")
}

/// The virtualenv's directory, made (and the packages installed) the first time.
pub fn venv() -> Result<PathBuf> {
    static MADE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MADE.get_or_init(|| make_venv().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn make_venv() -> Result<PathBuf> {
    let dir = venv_dir();
    let ready = dir.join(".cvpn-ready");
    if ready.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .context("running python3 -m venv")?;
    if !out.status.success() {
        bail!(
            "python3 -m venv {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PACKAGES)
        .output()
        .context("running pip")?;
    if !out.status.success() {
        bail!(
            "pip install {} failed: {}",
            PACKAGES.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&ready, PACKAGES.join("\n"))?;
    Ok(dir)
}

/// Credentials and the listener a client uses.
#[derive(Clone, Debug)]
pub struct AwsClient {
    pub endpoint_url: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    /// Where the (empty) config and credentials files are pointed.
    pub home: PathBuf,
}

/// What a command printed.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl AwsClient {
    fn env(&self, c: &mut Command) {
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.home)
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_access_key)
            .env("AWS_DEFAULT_REGION", &self.region)
            .env("AWS_CONFIG_FILE", self.home.join("aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.home.join("aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_PAGER", "")
            .env("CVPN_ENDPOINT_URL", &self.endpoint_url);
    }

    fn output(c: &mut Command) -> Result<Ran> {
        let out: Output = c.output().context("running the AWS client")?;
        Ok(Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `aws ARGS --endpoint-url URL --output json` in `ns`.
    pub fn aws(&self, ns: &Netns, args: &[&str]) -> Result<Ran> {
        let bin = venv()?.join("bin/aws");
        let mut c = ns.command(bin.to_str().context("venv path")?);
        self.env(&mut c);
        c.args(args)
            .args(["--endpoint-url", &self.endpoint_url, "--output", "json"]);
        Self::output(&mut c)
    }

    /// `aws ARGS`, which must succeed; its JSON output.
    pub fn aws_json(&self, ns: &Netns, args: &[&str]) -> Result<serde_json::Value> {
        let r = self.aws(ns, args)?;
        if r.code != 0 {
            bail!(
                "aws {} exited {}: {}{}",
                args.join(" "),
                r.code,
                r.stderr,
                r.stdout
            );
        }
        if r.stdout.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&r.stdout)
            .with_context(|| format!("aws {} printed no JSON: {}", args.join(" "), r.stdout))
    }

    /// A Python program run with boto3 in `ns`; `ENDPOINT_URL` is in its environment as
    /// `CVPN_ENDPOINT_URL`.
    pub fn python(&self, ns: &Netns, program: &str) -> Result<Ran> {
        let bin = venv()?.join("bin/python");
        let mut c = ns.command(bin.to_str().context("venv path")?);
        self.env(&mut c);
        c.args(["-c", program]);
        Self::output(&mut c)
    }
}
