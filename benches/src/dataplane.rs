//! `cargo xtask bench dataplane [--seconds N] [--rules 10,200,1000]`
//!
//! The cvpn kernel data plane against the kernel's own path doing the same job, in one run, on
//! the same namespaces and veths:
//!
//! ```text
//!  client ns eth0 10.77.0.11 ──veth── cl0 [gateway ns] tgt0 10.88.0.1 ──veth── eth0 10.88.0.10 private ns
//! ```
//!
//! * cvpn: `client_ingress` on cl0 (Ethernet mode), `target_ingress` on tgt0; N authorization
//!   rules (one LPM lookup per packet), SNAT; `ip_forward` off.
//! * kernel: `ip_forward` on, iptables FORWARD with policy DROP, N rules evaluated per packet
//!   for the client direction (the matching rule last, as an authorization check that sees
//!   every packet must be), return traffic accepted by conntrack, MASQUERADE on tgt0.
//!
//! Measures TCP throughput (iperf3, 1 stream), small-packet rate (iperf3 UDP, 64-byte
//! payloads, unlimited rate, packets received per second), and `BPF_PROG_TEST_RUN` ns/packet
//! for the client program. Prints ratios (cvpn / kernel). A benchmark, not a test: it asserts
//! nothing.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use cvpn_tests::{is_root, packets, sh, veth, Netns};
use gateway::dataplane::{
    policy::{Access, AuthorizationRule, Policy, PortMatch, Route},
    ClientLink, DataPlane, DataPlaneConfig, ProgramKind, TargetSpec,
};

const CLIENT: &str = "10.77.0.11";
const SERVER: &str = "10.88.0.10";

struct Net {
    client: Netns,
    gw: Netns,
    private: Netns,
}

fn topology() -> Result<Net> {
    let client = Netns::new("bc")?;
    let gw = Netns::new("bg")?;
    let private = Netns::new("bp")?;
    veth(&client, "eth0", &gw, "cl0")?;
    veth(&gw, "tgt0", &private, "eth0")?;
    client.ip(&format!("addr add {CLIENT}/24 dev eth0"))?;
    client.ip("route add 10.88.0.0/24 via 10.77.0.1")?;
    gw.ip("addr add 10.77.0.1/24 dev cl0")?;
    gw.ip("addr add 10.88.0.1/24 dev tgt0")?;
    private.ip(&format!("addr add {SERVER}/24 dev eth0"))?;
    // No route back to the clients: without SNAT nothing would return.
    Ok(Net {
        client,
        gw,
        private,
    })
}

/// N rules: N-1 that do not match the benchmark's destination, then the one that does.
fn policy(n: usize) -> Policy {
    let mut rules: Vec<AuthorizationRule> = (0..n.saturating_sub(1))
        .map(|i| AuthorizationRule {
            destination: format!("10.{}.{}.0/24", 100 + i / 250, i % 250)
                .parse()
                .expect("cidr"),
            access: Access::Group(format!("team{}", i % 50)),
            ports: None,
        })
        .collect();
    rules.push(AuthorizationRule {
        destination: "10.88.0.0/24".parse().expect("cidr"),
        access: Access::Group("eng".into()),
        ports: None,
    });
    Policy {
        rules,
        routes: vec![Route {
            destination: "0.0.0.0/0".parse().expect("cidr"),
            target: 1,
        }],
    }
}

/// [`policy`] with every rule limited to a protocol and port range (cvpn's port-level rules):
/// the benchmark's destination then passes through the prefix's port set, the slow path.
fn ported_policy(n: usize) -> Policy {
    let mut p = policy(n);
    let last = p.rules.len() - 1;
    for (i, r) in p.rules.iter_mut().enumerate() {
        r.ports = Some(PortMatch {
            protocol: 6,
            from_port: if i == last { 1 } else { 1000 + (i % 7) as u16 },
            to_port: if i == last { 65535 } else { 2000 },
        });
    }
    // A few more ranges at the benchmark's prefix, which its packets pass over first.
    for k in 0..6u16 {
        p.rules.push(AuthorizationRule {
            destination: "10.88.0.0/24".parse().expect("cidr"),
            access: Access::Group("eng".into()),
            ports: Some(PortMatch {
                protocol: 17,
                from_port: 10 + k,
                to_port: 10 + k,
            }),
        });
    }
    p
}

fn iptables_setup(gw: &Netns, n: usize) -> Result<()> {
    let mut script =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    script.push_str("-A FORWARD -i tgt0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for i in 0..n.saturating_sub(1) {
        script.push_str(&format!(
            "-A FORWARD -i cl0 -s {CLIENT} -d 10.{}.{}.0/24 -j ACCEPT\n",
            100 + i / 250,
            i % 250
        ));
    }
    script.push_str(&format!(
        "-A FORWARD -i cl0 -s {CLIENT} -d 10.88.0.0/24 -j ACCEPT\nCOMMIT\n"
    ));
    script.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o tgt0 -j MASQUERADE\nCOMMIT\n");
    let mut child = gw
        .command("iptables-restore")
        .stdin(Stdio::piped())
        .spawn()
        .context("iptables-restore")?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    if !child.wait()?.success() {
        bail!("iptables-restore failed");
    }
    sh(gw.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
    Ok(())
}

fn iptables_clear(gw: &Netns) -> Result<()> {
    sh(gw.command("sysctl").args(["-qw", "net.ipv4.ip_forward=0"]))?;
    sh(gw.command("iptables").args(["-F"]))?;
    sh(gw.command("iptables").args(["-t", "nat", "-F"]))?;
    sh(gw.command("iptables").args(["-P", "FORWARD", "ACCEPT"]))?;
    Ok(())
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf(net: &Net, args: &[&str], seconds: u32) -> Result<serde_json::Value> {
    let server = Server(
        net.private
            .command("iperf3")
            .args(["-s", "-1", "-B", SERVER, "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 server")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let secs = seconds.to_string();
    let out = net
        .client
        .command("iperf3")
        .args(["-c", SERVER, "-p", "5201", "-J", "-t", &secs])
        .args(args)
        .output()
        .context("iperf3 client")?;
    drop(server);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

#[derive(Default, Clone, Copy)]
struct Sample {
    tcp_mbps: f64,
    udp_pps: f64,
}

fn measure(net: &Net, seconds: u32) -> Result<Sample> {
    let tcp = iperf(net, &[], seconds)?;
    let tcp_bps = tcp["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let udp = iperf(net, &["-u", "-b", "0", "-l", "64"], seconds)?;
    let sum = &udp["end"]["sum"];
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(seconds as f64).max(0.001);
    Ok(Sample {
        tcp_mbps: tcp_bps / 1e6,
        udp_pps: (packets - lost).max(0.0) / secs,
    })
}

fn load_cvpn(net: &Net, n: usize) -> Result<DataPlane> {
    let mut dp = DataPlane::load(DataPlaneConfig {
        client_interface: Some("cl0".into()),
        client_link: ClientLink::Ethernet,
        ..DataPlaneConfig::default()
    })?;
    dp.add_target_network(TargetSpec {
        id: 1,
        interface: "tgt0".into(),
        snat_addr: None,
        egress: None,
    })?;
    dp.add_session(CLIENT.parse()?, 1, &["eng".to_string()])?;
    dp.replace_policy(policy(n))?;
    let _ = net;
    Ok(dp)
}

/// Average ns per run of `client_ingress` on a TCP packet that is allowed by the last rule.
fn test_run_ns(dp: &mut DataPlane) -> Result<f64> {
    let pkt = packets::build(
        CLIENT.parse()?,
        SERVER.parse()?,
        packets::L4::Tcp {
            sport: 40000,
            dport: 80,
            fin: false,
        },
        &[0u8; 64],
    );
    // The kernel repeats a run on the same buffer, and SNAT rewrites it in place: repeat=1, many
    // times, averaging the kernel's own per-run timing.
    const RUNS: u32 = 20_000;
    let mut total = Duration::ZERO;
    for _ in 0..RUNS {
        let out = dp.test_run(ProgramKind::ClientIngress, &pkt, 1)?;
        if out.verdict != 7 {
            bail!(
                "benchmark packet was not forwarded (verdict {}); counters: {:?}",
                out.verdict,
                dp.global_counters()?
            );
        }
        total += out.duration;
    }
    Ok(total.as_nanos() as f64 / RUNS as f64)
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("the benchmark creates namespaces and loads eBPF programs: run it as root");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seconds = 4u32;
    let mut counts = vec![10usize, 200, 1000];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().context("--seconds N")?.parse()?,
            "--rules" => {
                counts = it
                    .next()
                    .context("--rules 10,200,1000")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => bail!("unknown argument {other:?}; use --seconds N and --rules A,B,C"),
        }
    }
    let net = topology()?;
    net.gw.enter()?;
    println!("cvpn data plane vs kernel forwarding + iptables + MASQUERADE ({seconds} s per measurement, one 2-core host)");
    println!(
        "{:>6} | {:>12} {:>12} {:>6} | {:>12} {:>12} {:>6} | {:>10} {:>12}",
        "rules",
        "cvpn Mbit/s",
        "kernel",
        "ratio",
        "cvpn pkt/s",
        "kernel",
        "ratio",
        "ns/pkt",
        "ported ns/pkt"
    );
    let mut rows = Vec::new();
    for &n in &counts {
        let mut dp = load_cvpn(&net, n)?;
        let ours = measure(&net, seconds)?;
        drop(dp);
        // ns/packet under BPF_PROG_TEST_RUN (Ethernet mode, not attached).
        dp = {
            let mut d = DataPlane::load(DataPlaneConfig {
                client_link: ClientLink::Ethernet,
                ..DataPlaneConfig::default()
            })?;
            d.add_target_network(TargetSpec {
                id: 1,
                interface: "tgt0".into(),
                snat_addr: None,
                egress: None,
            })?;
            d.add_session(CLIENT.parse()?, 1, &["eng".to_string()])?;
            d.replace_policy(policy(n))?;
            d
        };
        let ns = test_run_ns(&mut dp)?;
        dp.replace_policy(ported_policy(n))?;
        let ns_ported = test_run_ns(&mut dp)?;
        drop(dp);
        iptables_setup(&net.gw, n)?;
        let theirs = measure(&net, seconds);
        iptables_clear(&net.gw)?;
        let theirs = theirs?;
        println!(
            "{:>6} | {:>12.0} {:>12.0} {:>5.2}x | {:>12.0} {:>12.0} {:>5.2}x | {:>10.1} {:>12.1}",
            n,
            ours.tcp_mbps,
            theirs.tcp_mbps,
            ours.tcp_mbps / theirs.tcp_mbps.max(1e-9),
            ours.udp_pps,
            theirs.udp_pps,
            ours.udp_pps / theirs.udp_pps.max(1e-9),
            ns,
            ns_ported
        );
        rows.push((n, ours, theirs, ns, ns_ported));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "\nflatness from {} to {} rules: cvpn pkt/s x{:.2}, kernel pkt/s x{:.2}; ns/pkt {:.1} -> {:.1}; with port rules {:.1} -> {:.1}",
            first.0,
            last.0,
            last.1.udp_pps / first.1.udp_pps.max(1e-9),
            last.2.udp_pps / first.2.udp_pps.max(1e-9),
            first.3,
            last.3,
            first.4,
            last.4
        );
    }
    Ok(())
}
