//! Test hosts for cvpn: network namespaces, veths and TUN devices made by the test itself, with
//! unique names, addresses only inside them, and teardown on drop (also when a test fails).
//!
//! * [`Netns`]: a named network namespace (`ip netns`), deleted on drop.
//! * [`Netns::run`]: runs a closure on a thread inside the namespace (sockets it makes stay
//!   there).
//! * [`Relay`]: a plain packet relay (no crypto) between client TUN devices and the gateway's
//!   TUN — the stand-in for the data channel in data-plane tests.
//! * [`Topology`]: clients → relay → gateway (kernel data plane) → private network.

pub mod aws_cli;
pub mod browser;
pub mod cluster;
pub mod directory_servers;
pub mod echo;
pub mod gateway;
pub mod http;
pub mod impair;
pub mod login_client;
pub mod oidc_idp;
pub mod openvpn;
pub mod packets;
pub mod pki;
pub mod postgres;
pub mod prometheus;
pub mod radius_server;
pub mod raw_client;
pub mod saml_idp;
pub mod topology;

use std::{
    fs::File,
    os::fd::AsFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

pub use topology::{Relay, Topology, TopologyOptions};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique tag for names (interface names are at most 15 bytes).
pub fn unique_tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{:x}{:x}", std::process::id() % 0xffff, n)
}

/// Removes the variables cargo gives a test process (or a `cargo run` program) about its own
/// package from `cmd`, a nested cargo: some build scripts (ring's) rerun when they change, so
/// the nested build would undo the outer one's and rebuild ring, rustls and the gateway.
pub fn without_package_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_BIN_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&k.as_str())
        {
            cmd.env_remove(k);
        }
    }
}

/// Runs a command; fails with its output when it fails.
pub fn sh(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `ip` with arguments split on whitespace.
pub fn ip(args: &str) -> Result<Output> {
    sh(Command::new("ip").args(args.split_whitespace()))
}

/// A network namespace of this test run; deleted (with everything in it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `cv<tag><role>`; loopback is brought up.
    pub fn new(role: &str) -> Result<Self> {
        let name = format!("cv{}{}", unique_tag(), role);
        ip(&format!("netns add {name}"))?;
        let ns = Netns { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &str) -> Result<Output> {
        sh(Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args.split_whitespace()))
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into the namespace. Only for threads that end with the test
    /// (libtest runs each test on its own thread).
    pub fn enter(&self) -> Result<()> {
        let f = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("open netns {}", self.name))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {}", self.name))?;
        Ok(())
    }

    /// Runs `f` on a new thread inside the namespace and returns its handle.
    pub fn spawn<T, F>(&self, f: F) -> std::thread::JoinHandle<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("open {path}"))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns {path}"))?;
            f()
        })
    }

    /// Runs `f` inside the namespace and waits for it.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        match self.spawn(f).join() {
            Ok(r) => r,
            Err(_) => bail!("thread in netns {} panicked", self.name),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair and brings both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    let tmp_a = format!("va{}", unique_tag());
    let tmp_b = format!("vb{}", unique_tag());
    ip(&format!("link add {tmp_a} type veth peer name {tmp_b}"))?;
    ip(&format!("link set {tmp_a} netns {} name {a_if}", a.name()))?;
    ip(&format!("link set {tmp_b} netns {} name {b_if}", b.name()))?;
    a.ip(&format!("link set {a_if} up"))?;
    b.ip(&format!("link set {b_if} up"))?;
    Ok(())
}

/// Stops a child this process started: SIGTERM to its PID, then SIGKILL after `grace`; waits
/// for it and returns its exit status.
pub fn terminate(
    child: &mut std::process::Child,
    grace: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = std::time::Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// For `BPF_PROG_TEST_RUN` fixtures: a namespace with a veth `tgt0` (10.88.0.1/24) to serve as
/// target interface, entered by the calling thread; and the data plane loaded there in
/// Ethernet mode (the test runner hands TC programs Ethernet frames), not attached to any
/// client device, with target network 1 on `tgt0`.
pub fn fixture_dataplane(
    role: &str,
    config: ::gateway::dataplane::DataPlaneConfig,
) -> Result<(Netns, ::gateway::dataplane::DataPlane)> {
    use ::gateway::dataplane::{ClientLink, DataPlane, DataPlaneConfig, TargetSpec};
    let ns = Netns::new(role)?;
    ns.ip("link add tgt0 type veth peer name tgt0peer")?;
    ns.ip("link set tgt0peer up")?;
    ns.ip("addr add 10.88.0.1/24 dev tgt0")?;
    ns.ip("link set tgt0 up")?;
    ns.enter()?;
    let mut dp = DataPlane::load(DataPlaneConfig {
        client_interface: None,
        client_link: ClientLink::Ethernet,
        ..config
    })?;
    dp.add_target_network(TargetSpec {
        id: 1,
        interface: "tgt0".into(),
        snat_addr: None,
        egress: None,
    })?;
    Ok((ns, dp))
}

/// True when this process may create namespaces and load BPF programs.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
