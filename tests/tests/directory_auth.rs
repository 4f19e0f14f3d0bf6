//! Directory sign-in end to end: stock `openvpn` 2.6 clients in their namespaces, the daemon
//! (`cvpn serve`) on its database, a real OpenLDAP `slapd`, TOTP codes from `oathtool` and
//! FreeRADIUS for RADIUS MFA. Everything is set up through the CLI, as an administrator does.
//!
//! The directory runs inside the gateway's namespace (on its loopback), where the daemon
//! reaches it; the test thread enters that namespace to drive it.

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use cvpn_tests::{
    directory_servers::{SambaAd, Slapd},
    echo::{probe_loop, UdpEcho},
    gateway::{CliOutput, EndpointNet, StoreDaemon, TempDir},
    is_root,
    openvpn::{Management, OpenVpnClient},
    pki::write,
    radius_server::FreeRadius,
    Netns,
};
use serde_json::Value;

const STAFF_HOST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const OPS_HOST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 20);
const ECHO_PORT: u16 = 7000;

fn ok(out: CliOutput, what: &str) -> String {
    assert_eq!(out.code, 0, "{what} failed: {}{}", out.stderr, out.stdout);
    out.stdout
}

/// A gateway whose endpoint signs users in against a directory.
struct Dx {
    net: EndpointNet,
    daemon: StoreDaemon,
    endpoint: String,
    _echo: Vec<UdpEcho>,
    _data: TempDir,
}

impl Dx {
    /// The daemon, an endpoint on `directory create ARGS` (directory only: no client
    /// certificates), echo servers on both private hosts; staff may reach .10, ops .20.
    /// `servers` starts the directory (and MFA) servers once the test thread is in the
    /// gateway's namespace, and returns the `directory create` arguments; it gets that
    /// namespace and the test's file directory.
    fn new(clients: usize, servers: impl FnOnce(&Netns, &Path) -> Vec<String>) -> Dx {
        assert!(
            is_root(),
            "the directory tests need root: run `cargo xtask test`"
        );
        let mut net = EndpointNet::new(clients).unwrap();
        // The directory servers this test starts listen on the gateway's loopback.
        net.gateway.enter().unwrap();
        let directory_args = servers(&net.gateway, &net.dir.0);
        let data = TempDir::new("dir").unwrap();
        let daemon = StoreDaemon::start(&net.gateway, &data.0).unwrap();
        let mut args = vec!["directory", "create", "--name", "corp"];
        args.extend(directory_args.iter().map(String::as_str));
        let directory = ok(daemon.cli(&args).unwrap(), "directory create")
            .trim()
            .to_string();
        assert!(directory.starts_with("cvpn-directory-"), "{directory}");
        // No client CA here: the server certificate chain carries its CA, which exported
        // profiles give clients to verify the server.
        let (cert, key, _) = net.write_server_chain().unwrap();
        let created = daemon
            .json(&[
                "endpoint",
                "create",
                "--client-cidr",
                "10.77.0.0/22",
                "--server-cert",
                cert.to_str().unwrap(),
                "--server-key",
                key.to_str().unwrap(),
                "--directory",
                "corp",
                "--split-tunnel",
            ])
            .unwrap();
        let endpoint = created["client-vpn-endpoint-id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            created["authentication-options"],
            serde_json::json!([{"type": "directory-service-authentication", "directory-id": directory}])
        );
        daemon
            .associate_and_authorize(&endpoint, &[(STAFF_HOST, "staff"), (OPS_HOST, "ops")])
            .unwrap();
        let echo = [STAFF_HOST, OPS_HOST]
            .into_iter()
            .map(|h| UdpEcho::start(&net.private, h, ECHO_PORT).unwrap())
            .collect();
        Dx {
            net,
            daemon,
            endpoint,
            _echo: echo,
            _data: data,
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        ok(self.daemon.cli(args).unwrap(), &args.join(" "))
    }

    /// The exported profile, made to fail fast, with `extra` lines.
    fn profile(&self, i: usize, extra: &str) -> String {
        let remote = EndpointNet::server_addr(i);
        let p = self.cli(&["config", "export", &self.endpoint, "--remote-host", &remote]);
        format!("{p}\nconnect-retry 1\nconnect-retry-max 2\nserver-poll-timeout 5\n{extra}\n")
    }

    /// A stock client from namespace `i` signing in with a credentials file.
    fn start_client(&self, i: usize, user: &str, password: &str) -> OpenVpnClient {
        let dir = &self.net.dir.0;
        let file = write(
            dir,
            &format!("{user}-{i}.pass"),
            &format!("{user}\n{password}\n"),
        )
        .unwrap();
        let p = self.profile(i, "");
        assert!(p.contains("\nauth-user-pass\n"), "{p}");
        let p = p.replace(
            "\nauth-user-pass\n",
            &format!("\nauth-user-pass {}\n", file.display()),
        );
        OpenVpnClient::start_with_text(&self.net.clients[i], &p, dir, &format!("{user}-{i}"))
            .unwrap()
    }

    /// A stock client from namespace `i` driven through its management interface (as a GUI
    /// does): `extra` profile lines.
    fn start_managed(&self, i: usize, name: &str, extra: &str) -> (OpenVpnClient, Management) {
        self.start_managed_with(i, name, extra, |p| p)
    }

    /// [`Dx::start_managed`] with the profile text edited by `edit`.
    fn start_managed_with(
        &self,
        i: usize,
        name: &str,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> (OpenVpnClient, Management) {
        let port = 7505 + i as u16;
        let p = edit(self.profile(
            i,
            &format!(
                "management 127.0.0.1 {port}\nmanagement-hold\nmanagement-query-passwords\nauth-retry none\n{extra}"
            ),
        ));
        let c = OpenVpnClient::start_with_text(&self.net.clients[i], &p, &self.net.dir.0, name)
            .unwrap();
        let m = Management::connect(&self.net.clients[i], port, Duration::from_secs(10)).unwrap();
        (c, m)
    }

    fn connections(&self) -> Vec<Value> {
        self.daemon
            .json(&["connection", "list", &self.endpoint])
            .unwrap()["connections"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn active(&self) -> Vec<Value> {
        self.connections()
            .into_iter()
            .filter(|c| c["status"] == "active")
            .collect()
    }

    /// The connection log's failed attempts: (username, reason).
    fn failures(&self) -> Vec<(String, String)> {
        read_log(&self.daemon.data_dir)
            .into_iter()
            .filter(|e| e["connection-attempt-status"] == "failed")
            .map(|e| {
                (
                    e["username"].as_str().unwrap_or("").to_string(),
                    e["connection-attempt-failure-reason"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    }

    /// Whether client namespace `i` gets echoes from `host` (about half a second of probes).
    fn reaches(&self, i: usize, host: Ipv4Addr) -> bool {
        self.net.clients[i]
            .run(move || probe_loop((host, ECHO_PORT), Duration::from_millis(400)))
            .unwrap()
            .iter()
            .any(|(_, answered)| *answered)
    }

    fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Dx) -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what}: not within {timeout:?}\nconnections: {:#?}\ndaemon log (tail):\n{}",
            self.connections(),
            tail(&self.daemon.daemon.log(), 40)
        );
    }
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn read_log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("connection.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// slapd with alice and dave in eng (eng nested in staff), bob in ops, carol in staff directly,
/// alice in vpn-users too.
fn directory() -> Slapd {
    let s = Slapd::start().unwrap();
    s.add_user("alice", "alice-pw").unwrap();
    s.add_user("bob", "bob-pw").unwrap();
    s.add_user("carol", "carol-pw").unwrap();
    s.add_user("dave", "dave-pw").unwrap();
    // groupOfNames needs a member: dave stays when alice leaves.
    s.add_group("eng", &[&Slapd::user_dn("alice"), &Slapd::user_dn("dave")])
        .unwrap();
    s.add_group(
        "staff",
        &[&Slapd::group_dn("eng"), &Slapd::user_dn("carol")],
    )
    .unwrap();
    s.add_group("ops", &[&Slapd::user_dn("bob")]).unwrap();
    // A group no rule names (users in no group at all are refused).
    s.add_group("vpn-users", &[&Slapd::user_dn("alice")])
        .unwrap();
    s
}

fn directory_args(s: &Slapd, dir: &Path) -> Vec<String> {
    let pw = write(dir, "bind.pw", &format!("{}\n", s.bind_password())).unwrap();
    let ca = write(dir, "ldap-ca.pem", s.ca_pem()).unwrap();
    vec![
        "--url".into(),
        s.url(),
        "--base-dn".into(),
        s.base_dn().into(),
        "--bind-dn".into(),
        s.bind_dn().into(),
        "--bind-password-file".into(),
        pw.display().to_string(),
        "--ca-file".into(),
        ca.display().to_string(),
        "--timeout-ms".into(),
        "2000".into(),
        "--recheck-seconds".into(),
        "10".into(),
    ]
}

#[test]
fn directory_users_sign_in_and_groups_decide_access_as_the_directory_changes() {
    let mut servers = None;
    let dx = Dx::new(4, |_, dir| {
        let s = directory();
        let args = directory_args(&s, dir);
        servers = Some(s);
        args
    });
    let slapd = servers.take().unwrap();

    // alice (eng, nested in staff) reaches what staff may, and nothing else.
    let mut alice = dx.start_client(0, "alice", "alice-pw");
    alice.wait_connected(Duration::from_secs(20)).unwrap();
    assert!(dx.reaches(0, STAFF_HOST), "alice reaches the staff host");
    assert!(!dx.reaches(0, OPS_HOST), "but not the ops host");
    let active = dx.active();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["username"], "alice", "{active:?}");

    // Wrong password, unknown user, empty password: refused, told, and logged with reasons.
    for (i, user, pw) in [(1, "alice", "guess"), (2, "mallory", "x")] {
        let mut c = dx.start_client(i, user, pw);
        c.wait_for("AUTH_FAILED", Duration::from_secs(20)).unwrap();
        dx.wait(
            "the refused client gives up",
            Duration::from_secs(15),
            |_| c.exited().is_some(),
        );
    }
    // The stock client will not read an empty password from a file; a GUI (the management
    // interface) sends one.
    let (mut c, mut m) = dx.start_managed(3, "carol-empty", "");
    m.sign_in("carol", "", None).unwrap();
    c.wait_for("AUTH_FAILED", Duration::from_secs(20)).unwrap();
    let failures = dx.failures();
    for (user, reason) in [
        ("alice", "bad-password"),
        ("mallory", "unknown-user"),
        ("carol", "empty-password"),
    ] {
        assert!(
            failures.iter().any(|(u, r)| u == user && r == reason),
            "{user}: {reason} in {failures:?}"
        );
    }
    assert_eq!(dx.active().len(), 1, "only alice is in");

    // alice leaves eng: within the re-check interval her access to staff ends, the tunnel
    // (the same connection) stays.
    let connection = dx.active()[0]["connection-id"].clone();
    slapd
        .remove_member("eng", &Slapd::user_dn("alice"))
        .unwrap();
    let removed = Instant::now();
    dx.wait("alice loses the staff host", Duration::from_secs(20), |d| {
        !d.reaches(0, STAFF_HOST)
    });
    let took = removed.elapsed();
    assert!(took <= Duration::from_secs(15), "took {took:?}");
    let active = dx.active();
    assert_eq!(active.len(), 1, "the tunnel stays up: {active:?}");
    assert_eq!(
        active[0]["connection-id"], connection,
        "the same connection"
    );
    // Back in a group: access returns the same way.
    slapd.add_member("staff", &Slapd::user_dn("alice")).unwrap();
    dx.wait(
        "alice regains the staff host",
        Duration::from_secs(20),
        |d| d.reaches(0, STAFF_HOST),
    );

    // alice is deleted: her session ends (the client is told to exit).
    slapd.delete_user("alice").unwrap();
    dx.wait("alice's session ends", Duration::from_secs(20), |d| {
        d.active().is_empty()
    });
    dx.wait("alice's openvpn exits", Duration::from_secs(10), |_| {
        alice.exited().is_some()
    });

    // The directory stops: a running session keeps its access (chosen: a directory outage
    // must not cut everyone off; the session timeout still bounds it), new sign-ins fail
    // closed with their own reason.
    let mut bob = dx.start_client(1, "bob", "bob-pw");
    bob.wait_connected(Duration::from_secs(20)).unwrap();
    assert!(dx.reaches(1, OPS_HOST));
    drop(slapd);
    let mut carol = dx.start_client(2, "carol", "carol-pw");
    carol
        .wait_for("AUTH_FAILED", Duration::from_secs(20))
        .unwrap();
    assert!(
        carol
            .log()
            .iter()
            .any(|l| l.contains("the directory is not answering")),
        "{:?}",
        carol.log()
    );
    assert!(dx
        .failures()
        .iter()
        .any(|(u, r)| u == "carol" && r == "directory-unreachable"));
    // Two re-check intervals later bob still reaches ops.
    std::thread::sleep(Duration::from_secs(12));
    assert!(dx.reaches(1, OPS_HOST), "bob keeps his access");
    assert_eq!(dx.active().len(), 1);
}

/// `oathtool --totp -b SECRET` now.
fn totp_now(secret: &str) -> String {
    let out = std::process::Command::new("oathtool")
        .args(["--totp", "-b", secret])
        .output()
        .expect("oathtool (apt-get install oathtool)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn totp_through_the_static_challenge_once_per_code_and_renegotiation_needs_no_new_code() {
    let mut servers = None;
    let dx = Dx::new(4, |_, dir| {
        let s = directory();
        let mut args = directory_args(&s, dir);
        args.extend(["--mfa".into(), "totp".into()]);
        servers = Some(s);
        args
    });
    let _slapd = servers.take().unwrap();
    // The profile asks for the code.
    let p = dx.profile(0, "");
    assert!(p.contains("static-challenge \"Enter MFA code\" 1"), "{p}");

    // Enrolment shows the secret once; describe never shows it.
    let enrolled: Value = serde_json::from_str(&dx.cli(&[
        "mfa",
        "enroll",
        "--directory",
        "corp",
        "--username",
        "carol",
        "--output",
        "json",
    ]))
    .unwrap();
    let secret = enrolled["secret"].as_str().unwrap().to_string();
    assert!(enrolled["otpauth-uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/"));
    assert!(!dx
        .cli(&["directory", "describe", "corp", "--output", "json"])
        .contains(&secret));

    // carol signs in with her password and the current code; the client renegotiates every
    // 5 seconds and never asks for a code again (the auth-token stands in).
    let code = totp_now(&secret);
    let (mut carol, mut m) = dx.start_managed(0, "carol", "reneg-sec 5");
    let prompt = m.sign_in("carol", "carol-pw", Some(&code)).unwrap();
    assert!(prompt.contains("SC:1,Enter MFA code"), "{prompt}");
    carol.wait_connected(Duration::from_secs(20)).unwrap();
    assert!(dx.reaches(0, STAFF_HOST));
    let connection = dx.active()[0]["connection-id"].clone();
    std::thread::sleep(Duration::from_secs(12));
    let renegotiations = carol
        .log()
        .iter()
        .filter(|l| l.contains("TLS: soft reset"))
        .count();
    assert!(
        renegotiations >= 2,
        "{renegotiations} renegotiations:\n{}",
        carol.log().join("\n")
    );
    assert!(
        dx.reaches(0, STAFF_HOST),
        "data flows after the renegotiations"
    );
    let prompts = m
        .drain()
        .iter()
        .filter(|l| l.starts_with(">PASSWORD:Need"))
        .count();
    assert_eq!(prompts, 1, "asked again: {:?}", m.seen);
    let active = dx.active();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["connection-id"], connection, "the same session");

    // The same code again (another device, same 30 seconds): refused as replayed.
    let (mut replay, mut m2) = dx.start_managed(1, "carol-replay", "");
    m2.sign_in("carol", "carol-pw", Some(&code)).unwrap();
    replay
        .wait_for("AUTH_FAILED", Duration::from_secs(20))
        .unwrap();
    // A wrong code.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (mut bad, mut m3) = dx.start_managed(2, "carol-wrong", "");
    m3.sign_in("carol", "carol-pw", Some(wrong)).unwrap();
    bad.wait_for("AUTH_FAILED", Duration::from_secs(20))
        .unwrap();
    let failures = dx.failures();
    for reason in ["mfa-code-replayed", "mfa-code-wrong"] {
        assert!(
            failures.iter().any(|(u, r)| u == "carol" && r == reason),
            "{reason} in {failures:?}"
        );
    }
    assert_eq!(dx.active().len(), 1);

    // A client that can answer a question in the session (GUIs announce IV_SSO crtext) may
    // send its plain password: it is asked for the code with CR_TEXT.
    let enrolled: Value = serde_json::from_str(&dx.cli(&[
        "mfa",
        "enroll",
        "--directory",
        "corp",
        "--username",
        "dave",
        "--output",
        "json",
    ]))
    .unwrap();
    let dave_secret = enrolled["secret"].as_str().unwrap().to_string();
    let (mut dave, mut m4) = dx.start_managed_with(3, "dave", "setenv IV_SSO crtext", |p| {
        p.replace("static-challenge \"Enter MFA code\" 1\n", "")
    });
    m4.sign_in("dave", "dave-pw", None).unwrap();
    let question = m4
        .wait_for(">INFOMSG:CR_TEXT:", Duration::from_secs(20))
        .unwrap();
    assert!(question.contains("Enter MFA code"), "{question}");
    use base64::{engine::general_purpose::STANDARD, Engine};
    m4.send(&format!(
        "cr-response {}",
        STANDARD.encode(totp_now(&dave_secret))
    ))
    .unwrap();
    dave.wait_connected(Duration::from_secs(20)).unwrap();
    assert!(dx.reaches(3, STAFF_HOST));
    assert_eq!(dx.active().len(), 2);
}

#[test]
fn radius_mfa_against_freeradius() {
    let mut servers = None;
    let dx = Dx::new(2, |_, dir| {
        let s = directory();
        let r = FreeRadius::start(&[("bob", "424242")]).unwrap();
        let mut args = directory_args(&s, dir);
        let secret = write(dir, "radius.secret", &format!("{}\n", r.secret())).unwrap();
        args.extend([
            "--mfa".into(),
            "radius".into(),
            "--radius-server".into(),
            r.addr().to_string(),
            "--radius-secret-file".into(),
            secret.display().to_string(),
            "--radius-timeout-ms".into(),
            "500".into(),
        ]);
        servers = Some((s, r));
        args
    });
    let _servers = servers.take().unwrap();
    let (mut bob, mut m) = dx.start_managed(0, "bob", "");
    m.sign_in("bob", "bob-pw", Some("424242")).unwrap();
    bob.wait_connected(Duration::from_secs(20)).unwrap();
    assert!(dx.reaches(0, OPS_HOST));
    let (mut wrong, mut m2) = dx.start_managed(1, "bob-wrong", "");
    m2.sign_in("bob", "bob-pw", Some("111111")).unwrap();
    wrong
        .wait_for("AUTH_FAILED", Duration::from_secs(20))
        .unwrap();
    assert!(dx
        .failures()
        .iter()
        .any(|(u, r)| u == "bob" && r == "mfa-code-wrong"));
    assert_eq!(dx.active().len(), 1);
}

#[test]
fn active_directory_users_sign_in_by_upn_and_rules_name_groups_by_sid() {
    // One DC for this binary (provisioning takes seconds), reached from the gateway's
    // namespace through a loopback bridge; the first URL is dead (failover).
    let ad = SambaAd::shared().unwrap();
    ad.create_user("nina", "Nina-Secret-42!").unwrap();
    ad.create_user("otto", "Otto-Secret-42!").unwrap();
    ad.create_group("vpn-eng").unwrap();
    ad.create_group("vpn-staff").unwrap();
    ad.add_members("vpn-eng", &["nina", "otto"]).unwrap();
    ad.add_members("vpn-staff", &["vpn-eng"]).unwrap();
    ad.disable_user("otto").unwrap();
    let staff_sid = ad.sid_of("vpn-staff").unwrap();
    let mut bridge = None;
    let dx = Dx::new(2, |gateway, dir| {
        let b = ad.ldaps_bridge_into(gateway).unwrap();
        let pw = write(dir, "ad-bind.pw", ad.bind_password()).unwrap();
        let ca = write(dir, "ad-ca.pem", ad.ca_pem()).unwrap();
        let args = vec![
            "--preset".into(),
            "active-directory".into(),
            "--realm".into(),
            ad.realm().into(),
            "--url".into(),
            "ldaps://127.0.0.1:1".into(),
            "--url".into(),
            format!("ldaps://127.0.0.1:{}", b.port()),
            "--base-dn".into(),
            ad.base_dn().into(),
            "--bind-dn".into(),
            ad.bind_dn(),
            "--bind-password-file".into(),
            pw.display().to_string(),
            "--ca-file".into(),
            ca.display().to_string(),
        ];
        bridge = Some(b);
        args
    });
    let _bridge = bridge.take().unwrap();
    // The rule names the nested group by its SID, as rules written for AWS do.
    dx.cli(&[
        "rule",
        "authorize",
        &dx.endpoint,
        "--destination",
        &format!("{OPS_HOST}/32"),
        "--group",
        &staff_sid,
    ]);
    let mut nina = dx.start_client(0, "nina@EXAMPLE.TEST", "Nina-Secret-42!");
    nina.wait_connected(Duration::from_secs(30)).unwrap();
    assert!(dx.reaches(0, OPS_HOST), "the SID rule lets nina in");
    assert!(
        !dx.reaches(0, STAFF_HOST),
        "the name rule names no group of hers"
    );
    assert_eq!(dx.active()[0]["username"], "nina");
    let mut otto = dx.start_client(1, "otto", "Otto-Secret-42!");
    otto.wait_for("AUTH_FAILED", Duration::from_secs(30))
        .unwrap();
    assert!(
        otto.log()
            .iter()
            .any(|l| l.contains("your account is disabled")),
        "{:?}",
        otto.log()
    );
    assert!(dx
        .failures()
        .iter()
        .any(|(u, r)| u == "otto" && r == "account-disabled"));
}
