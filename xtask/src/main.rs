//! `cargo xtask <command>`: the project's runners. Every command that needs the toolchain runs
//! `setup` first, so each works on a fresh machine.
//!
//! * `setup`      — Debian packages, nightly rust-src, bpf-linker (idempotent; fast when done)
//! * `build-ebpf` — the kernel programs (nightly, bpfel-unknown-none)
//! * `build`      — kernel programs, then the daemon
//! * `test`       — the whole suite (unit, fixture and network-namespace tests)
//! * `demo`       — the main job on an embedded default
//! * `bench dataplane` — data plane vs the kernel's forwarding + iptables path
//! * `bench tunnel` — `cvpn serve` vs the stock OpenVPN 2.6 server, same namespaces and client
//! * `bench logins` — 200 logins at once (certificate, directory + TOTP) vs the stock server
//! * `bench cluster` — three nodes on one PostgreSQL: change propagation, failover, connects/s
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{bail, Context, Result};

mod setup;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits in the root")
        .to_path_buf()
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn build_ebpf() -> Result<()> {
    let root = root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("gateway-ebpf"))
        .env("RUSTUP_AUTO_INSTALL", "0")
        // The host's flags (coverage, sanitizers) must not leak into the BPF target.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["+nightly", "build", "--release", "--target-dir"])
        .arg(root.join("target/ebpf"));
    run(&mut cmd).context("building the kernel programs (gateway-ebpf)")
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args(args))
}

fn help() {
    eprintln!(
        "usage: cargo xtask <setup | build-ebpf | build | test | demo | bench dataplane|tunnel|logins|cluster>\n\
         \n  setup        install what the build and tests need (idempotent)\
         \n  build-ebpf   build the kernel programs\
         \n  build        kernel programs, then the cvpn binary (release)\
         \n  test         set up, build, and run the whole test suite\
         \n  demo         set up, build, and run the demo\
         \n  bench dataplane   benchmark the data plane against the kernel's own path\
         \n  bench tunnel      benchmark cvpn serve against the stock OpenVPN 2.6 server [--seconds N]\
         \n  bench logins      many logins at once (certificate, directory + TOTP) against the stock server\
         \n  bench cluster     three nodes on one PostgreSQL: change propagation, failover, connects/s\
         \n                    [--clients N] [--sources N] [--openvpn-default-limits]"
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::setup(),
        Some("build-ebpf") => setup::setup().and_then(|_| build_ebpf()),
        Some("build") => setup::setup()
            .and_then(|_| build_ebpf())
            .and_then(|_| cargo(&["build", "--release", "-p", "gateway"])),
        Some("test") => setup::setup()
            .and_then(|_| build_ebpf())
            .and_then(|_| test(&args[1..])),
        Some("demo") => setup::setup()
            .and_then(|_| build_ebpf())
            .and_then(|_| cargo(&["run", "--release", "-p", "cvpn-tests", "--bin", "cvpn-demo"])),
        Some("bench") => setup::setup()
            .and_then(|_| build_ebpf())
            .and_then(|_| bench(&args[1..])),
        _ => {
            help();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The ecosystem's habits, checked before the suite: rustfmt's style and no clippy warning.
fn lint() -> Result<()> {
    let run = |args: &[&str], what: &str| -> Result<()> {
        let status = Command::new("cargo")
            .current_dir(root())
            .args(args)
            .status()
            .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
        if !status.success() {
            bail!("{what}");
        }
        Ok(())
    };
    run(
        &["fmt", "--all", "--", "--check"],
        "the code is not formatted: run `cargo fmt --all` and commit the result",
    )?;
    run(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ],
        "clippy has warnings (above): fix them, or allow one with a comment saying why",
    )
}

fn test(extra: &[String]) -> Result<()> {
    lint()?;
    let mut args: Vec<&str> = vec!["test", "--workspace", "--exclude", "xtask"];
    // Network-namespace tests share the host's kernel; they use unique names, but keep the
    // load moderate on a 2-core machine.
    args.extend(["--", "--test-threads=2"]);
    args.extend(extra.iter().map(String::as_str));
    let mut total = counted_cargo(&args)?;
    // The storage suite again, on PostgreSQL (issue 11: one storage API, two backends, both
    // under the same tests): `with-postgres` starts a server on loopback and stops it after.
    // Skipped when the caller filtered the run to something else.
    if extra
        .iter()
        .all(|a| a.starts_with('-') || a.starts_with("storage"))
    {
        let mut pg: Vec<&str> = vec![
            "run",
            "--quiet",
            "-p",
            "cvpn-tests",
            "--bin",
            "with-postgres",
            "--",
            "cargo",
            "test",
            "-p",
            "gateway",
            "--lib",
            "storage::",
            "--",
            "--test-threads=2",
        ];
        pg.extend(extra.iter().map(String::as_str));
        println!("storage suite on PostgreSQL:");
        let on_pg = counted_cargo(&pg)?;
        total.add(&on_pg);
    }
    println!(
        "suite: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    if let Some(status) = total.failure {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

/// What one or more `cargo test` runs reported.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    failure: Option<std::process::ExitStatus>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.failure = self.failure.or(other.failure);
    }
}

/// Runs cargo with `args`, streaming its output, and adds up its per-binary results, so the run
/// ends with the whole suite's count rather than the last (often empty) doc-test run.
fn counted_cargo(args: &[&str]) -> Result<Tally> {
    let mut child = Command::new("cargo")
        .current_dir(root())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let mut tally = Tally::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split([';', '.']) {
                    let mut words = part.split_whitespace();
                    if let (Some(n), Some(what)) = (words.next(), words.next()) {
                        let n: u64 = n.parse().unwrap_or(0);
                        match what {
                            "passed" => tally.passed += n,
                            "failed" => tally.failed += n,
                            "ignored" => tally.ignored += n,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        tally.failure = Some(status);
    }
    Ok(tally)
}

fn bench(args: &[String]) -> Result<()> {
    let name = args.first().map_or("dataplane", String::as_str);
    match name {
        // In-process or fixture benchmarks: no daemon.
        "dataplane" | "session-memory" => {}
        "tunnel" | "logins" | "cluster" | "scale" | "flood" => {
            // The benchmark runs target/release/cvpn: build it first, so a stale daemon never
            // gets measured, and name it, so the benchmark uses it as it is (see
            // `cvpn_tests::gateway::cvpn_binary`).
            cargo(&["build", "--release", "-p", "gateway", "--bin", "cvpn"])?;
            std::env::set_var("CVPN_PREBUILT_BINARY", root().join("target/release/cvpn"));
        }
        other => bail!(
            "unknown benchmark {other:?}; available: dataplane, tunnel, logins, cluster, scale, flood, session-memory"
        ),
    }
    let bin = format!("cvpn-bench-{name}");
    let mut a = vec![
        "run",
        "--release",
        "-p",
        "cvpn-benches",
        "--bin",
        &bin,
        "--",
    ];
    a.extend(args.iter().skip(1).map(String::as_str));
    cargo(&a)
}
