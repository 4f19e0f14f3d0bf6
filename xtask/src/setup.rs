//! `cargo xtask setup`: installs what building and testing need, and nothing twice. A second
//! run only checks (one dpkg query, one sysroot look-up, one version call, one file compare):
//! well under a second.
use std::{fs, path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context, Result};

use crate::run;

/// Debian packages: LLVM 22 for bpf-linker (built below with `--features llvm-22`; it must match
/// the LLVM of the nightly that compiles the kernel programs), and the real tools the tests and
/// benchmarks drive (FreeRADIUS for the RADIUS MFA tests, oathtool to cross-check TOTP codes).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "iptables",
    "iperf3",
    "openvpn",
    "procps",
    "iputils-ping",
    "ethtool",
    "conntrack",
    "systemd",
    // The directory client's tests: OpenLDAP's server and tools, a Samba AD DC.
    "slapd",
    "ldap-utils",
    "samba-ad-dc",
    "samba-ad-provision",
    // MFA: FreeRADIUS for the RADIUS tests, oathtool for TOTP codes.
    "freeradius",
    "freeradius-utils",
    "oathtool",
    // Single sign-on (OIDC, issue 10): the tests sign in through a real headless browser,
    // Debian's Chromium (driven by playwright-core from tests/idp; chromium-driver is its
    // WebDriver, for tools that want one). The IdP and the driver run on the machine's Node.js.
    "chromium",
    "chromium-driver",
    // SAML single sign-on (issue 10): the gateway verifies XML signatures with the system's
    // xmlsec1 (libxmlsec1 over libxml2 and OpenSSL, linked through the samael crate, whose
    // build generates bindings with bindgen: libclang plus clang's builtin headers, the
    // version of the llvm-22 above; pkg-config finds xmlsec1). The tests run Debian's
    // SimpleSAMLphp under PHP's built-in server; it needs php-xml (an undeclared dependency).
    // xmlsec1 (the CLI) checks signed responses by hand.
    "libxmlsec1-dev",
    "libxml2-dev",
    "libssl-dev",
    "pkg-config",
    "libclang1-22",
    "libclang-common-22-dev",
    "simplesamlphp",
    "php-cli",
    "php-xml",
    "xmlsec1",
    // High availability (issue 11): the storage tests run against a real PostgreSQL server too,
    // Debian's, started by the tests with a data directory of their own.
    "postgresql",
    // The AWS API (issue 12): a real Prometheus scrapes the daemon's metrics in a test
    // (started by the test in the gateway's namespace; the package's own service is not used).
    "prometheus",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn missing_packages() -> Vec<&'static str> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(PACKAGES)
        .output();
    let text = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(_) => String::new(),
    };
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{p} ")) && l.ends_with("install ok installed"))
        })
        .collect()
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn nightly_has_rust_src() -> Result<bool> {
    let out = Command::new("rustc")
        .env("RUSTUP_AUTO_INSTALL", "0")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running `rustc +nightly`: is the nightly toolchain installed? (`rustup toolchain list`)")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing ({}); cvpn builds its kernel programs with the machine's preinstalled nightly",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(sysroot.join("lib/rustlib/src/rust/library/core").is_dir())
}

fn bpf_linker_ok() -> bool {
    let bin = cargo_home().join("bin/bpf-linker");
    Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

/// The SSO tests' Node packages (tests/idp: oidc-provider, playwright-core): `npm ci` unless
/// node_modules already holds what package-lock.json says. The stamp is the one the tests'
/// own lazy install (tests/src/oidc_idp.rs) reads and writes: a copy of the lock file.
fn node_packages() -> Result<()> {
    let dir = crate::root().join("tests/idp");
    let lock = dir.join("package-lock.json");
    let stamp = dir.join("node_modules/.cvpn-installed-package-lock.json");
    let want = fs::read(&lock).with_context(|| format!("read {}", lock.display()))?;
    if fs::read(&stamp).is_ok_and(|have| have == want) {
        return Ok(());
    }
    if Command::new("npm").arg("--version").output().is_err() {
        bail!("npm is missing: the SSO tests need the machine's Node.js (20 or later) and npm");
    }
    eprintln!("setup: npm ci in tests/idp (the OIDC IdP and browser driver)");
    run(Command::new("npm").current_dir(&dir).args([
        "ci",
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
    ]))
    .context("npm ci in tests/idp")?;
    fs::copy(&lock, &stamp).with_context(|| format!("write {}", stamp.display()))?;
    Ok(())
}

pub fn setup() -> Result<()> {
    let started = Instant::now();
    let missing = missing_packages();
    if !missing.is_empty() {
        eprintln!("setup: installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-q"))
            .context("apt-get update (setup needs root and the Debian mirror)")?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))
        .context("installing Debian packages")?;
    }
    if !nightly_has_rust_src()? {
        eprintln!("setup: adding rust-src to the nightly toolchain");
        run(Command::new("rustup")
            .env("RUSTUP_AUTO_INSTALL", "0")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    if !bpf_linker_ok() {
        eprintln!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .env("PATH", path)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env_remove("RUSTFLAGS")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"]))
        .context("building bpf-linker")?;
    }
    node_packages()?;
    let took = started.elapsed();
    if std::env::var_os("CVPN_SETUP_QUIET").is_none() {
        eprintln!("setup: toolchain ready ({} ms)", took.as_millis());
    }
    Ok(())
}
