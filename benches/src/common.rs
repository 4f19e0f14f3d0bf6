//! What the benchmarks share: processes they start (output kept, stopped by PID), kernel
//! forwarding for the stock OpenVPN server, the counters they read (a process's CPU time,
//! UDP receive-buffer drops), and more source addresses for many clients. Each benchmark
//! binary uses part of it.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use cvpn_tests::{sh, terminate, Netns};

/// A child process started by this benchmark; its output lines kept with the instant each was
/// read; stopped (SIGTERM, then SIGKILL, by PID) on drop.
pub struct Logged {
    name: String,
    child: Child,
    /// (when read, from stderr, line)
    lines: Arc<Mutex<Vec<(Instant, bool, String)>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Logged {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let streams: [(bool, Option<Box<dyn Read + Send>>); 2] = [
            (
                false,
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
            ),
            (
                true,
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
            ),
        ];
        for (is_err, stream) in streams {
            let Some(stream) = stream else { continue };
            let lines = lines.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let now = Instant::now();
                    if let Ok(mut l) = lines.lock() {
                        l.push((now, is_err, line));
                    }
                }
            }));
        }
        Ok(Logged {
            name: name.into(),
            child,
            lines,
            readers,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.lines
            .lock()
            .map(|l| {
                l.iter()
                    .map(|(_, _, s)| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        self.lines
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(_, e, _)| !e)
                    .map(|(_, _, s)| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// The instant the first line containing `needle` was read.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Instant> {
        let start = Instant::now();
        loop {
            if let Some(t) = self.lines.lock().ok().and_then(|l| {
                l.iter()
                    .find(|(_, _, s)| s.contains(needle))
                    .map(|(t, _, _)| *t)
            }) {
                return Ok(t);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                bail!(
                    "{} exited ({status}) before {needle:?}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "no {needle:?} from {} within {timeout:?}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the process to exit (killing it after `timeout`) and for its output.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if start.elapsed() > timeout {
                terminate(&mut self.child, Duration::from_secs(2));
                bail!(
                    "{} still running after {timeout:?}: stopped; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(status)
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// `ip_forward` on and MASQUERADE on tgt0 in the gateway namespace, for the OpenVPN server;
/// both undone on drop.
pub struct Forwarding {
    ns: String,
    old: String,
}

/// `iptables -t nat <op> POSTROUTING -o tgt0 -j MASQUERADE` in namespace `ns`.
fn iptables_nat(ns: &str, op: &str) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "iptables",
        "-w",
        "-t",
        "nat",
        op,
        "POSTROUTING",
        "-o",
        "tgt0",
        "-j",
        "MASQUERADE",
    ]);
    c
}

impl Forwarding {
    pub fn enable(gw: &Netns) -> Result<Self> {
        let old = sh(gw.command("sysctl").args(["-n", "net.ipv4.ip_forward"]))?;
        let old = String::from_utf8_lossy(&old.stdout).trim().to_string();
        sh(gw.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        let f = Forwarding {
            ns: gw.name().to_string(),
            old,
        };
        sh(&mut iptables_nat(gw.name(), "-A"))?;
        Ok(f)
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let _ = iptables_nat(&self.ns, "-D").output();
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "sysctl",
                "-qw",
                &format!("net.ipv4.ip_forward={}", self.old),
            ])
            .output();
    }
}

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name start at field 3 (state); utime is field 14,
    // stime field 15.
    let rest = &s[s.rfind(')').context("malformed /proc/PID/stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks)
}

/// UDP receive-buffer drops (`Udp: RcvbufErrors` of /proc/net/snmp) in a namespace: datagrams
/// the kernel dropped because a socket's receive buffer was full.
pub fn udp_rcvbuf_errors(ns: &Netns) -> Result<u64> {
    let out = sh(ns.command("cat").arg("/proc/net/snmp"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp: lines in /proc/net/snmp")
    };
    let i = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .context("no RcvbufErrors")?;
    Ok(values
        .split_whitespace()
        .nth(i)
        .context("short Udp: line")?
        .parse()?)
}

/// Fails, naming the first of `tools` that is not on the PATH and how to get it.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    for tool in tools {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("{tool} is not installed (`cargo xtask setup` installs it)");
        }
    }
    Ok(())
}

/// "OpenVPN 2.6.14", from `openvpn --version` (just "OpenVPN" when it says nothing).
pub fn openvpn_version() -> String {
    std::process::Command::new("openvpn")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "OpenVPN".into())
}

/// Gives the first client namespace's veth (`c0`) the addresses `sources` (each a /32), and
/// the gateway a route back and a permanent neighbour entry for each, so no login waits for
/// ARP.
pub fn add_sources(
    net: &cvpn_tests::gateway::EndpointNet,
    sources: &[std::net::Ipv4Addr],
) -> Result<()> {
    let out = sh(net.clients[0]
        .command("ip")
        .args(["-j", "link", "show", "c0"]))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
    let mac = v[0]["address"]
        .as_str()
        .context("no MAC address on c0")?
        .to_string();
    let (mut client, mut gateway) = (String::new(), String::new());
    for a in sources {
        client.push_str(&format!("addr add {a}/32 dev c0\n"));
        gateway.push_str(&format!("route replace {a}/32 dev wan0\n"));
        gateway.push_str(&format!(
            "neigh replace {a} lladdr {mac} dev wan0 nud permanent\n"
        ));
    }
    for (ns, batch, name) in [
        (&net.clients[0], client, "client-addrs.batch"),
        (&net.gateway, gateway, "gateway-neigh.batch"),
    ] {
        let f = cvpn_tests::pki::write(&net.dir.0, name, &batch)?;
        sh(Command::new("ip").args(["-n", ns.name(), "-batch"]).arg(&f))?;
    }
    Ok(())
}

/// A process's resident memory (VmRSS), in kB.
pub fn rss_kb(pid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}
