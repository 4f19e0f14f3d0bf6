//! The self-service portal of a directory endpoint with TOTP, end to end: a real `slapd`, the
//! daemon with its web listener, headless Chromium, a stock `openvpn` client. The user signs in
//! with her password, enrols her authenticator app from the QR page (its key read off the page,
//! codes computed as an app would), signs in with a code, downloads her profile and connects
//! with exactly that file.

use std::{
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use cvpn_tests::{
    browser::{Browser, BrowserOptions, Step},
    directory_servers::{free_port, Slapd},
    echo::{probe_loop, UdpEcho},
    gateway::{CliOutput, EndpointNet, StoreDaemon, TempDir},
    is_root,
    openvpn::{Management, OpenVpnClient},
    pki::write,
};
use gateway::auth::totp::TotpSecret;

const STAFF_HOST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const ECHO_PORT: u16 = 7000;

fn ok(out: CliOutput, what: &str) -> String {
    assert_eq!(out.code, 0, "{what} failed: {}{}", out.stderr, out.stdout);
    out.stdout
}

/// The code an authenticator app shows `steps` 30-second steps from now.
fn code(secret: &TotpSecret, steps: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    secret.code(now + 30 * steps)
}

#[test]
fn directory_users_enrol_their_app_in_the_portal_and_connect_with_its_profile() {
    assert!(
        is_root(),
        "the portal tests need root: run `cargo xtask test`"
    );
    let mut net = EndpointNet::new(1).unwrap();
    net.gateway.enter().unwrap();
    let slapd = Slapd::start().unwrap();
    slapd.add_user("alice", "alice-pw").unwrap();
    slapd
        .add_group("staff", &[&Slapd::user_dn("alice")])
        .unwrap();
    let dir = net.dir.0.clone();
    let web_port = free_port().unwrap();
    let public_url = format!("https://127.0.0.1:{web_port}");
    let web = net.ca.server("127.0.0.1").unwrap();
    let config = write(
        &dir,
        "cvpn.toml",
        &format!(
            "public_host = \"{}\"\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n\
             certificate = \"{}\"\nkey = \"{}\"\npublic_url = \"{public_url}\"\n",
            EndpointNet::server_addr(0),
            write(&dir, "web.crt", &web.cert).unwrap().display(),
            write(&dir, "web.key", &web.key).unwrap().display(),
        ),
    )
    .unwrap();
    let data = TempDir::new("portal").unwrap();
    let daemon = StoreDaemon::start_with_config(&net.gateway, &data.0, Some(&config)).unwrap();
    let cli = |args: &[&str]| ok(daemon.cli(args).unwrap(), &args.join(" "));
    let pw = write(&dir, "bind.pw", &format!("{}\n", slapd.bind_password())).unwrap();
    let ca = write(&dir, "ldap-ca.pem", slapd.ca_pem()).unwrap();
    cli(&[
        "directory",
        "create",
        "--name",
        "corp",
        "--url",
        &slapd.url(),
        "--base-dn",
        slapd.base_dn(),
        "--bind-dn",
        slapd.bind_dn(),
        "--bind-password-file",
        pw.to_str().unwrap(),
        "--ca-file",
        ca.to_str().unwrap(),
        "--mfa",
        "totp",
    ]);
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
            "--self-service-portal",
            "enabled",
            "--description",
            "Corp VPN",
        ])
        .unwrap();
    let endpoint = created["client-vpn-endpoint-id"]
        .as_str()
        .unwrap()
        .to_string();
    daemon
        .associate_and_authorize(&endpoint, &[(STAFF_HOST, "staff")])
        .unwrap();
    let _echo = UdpEcho::start(&net.private, STAFF_HOST, ECHO_PORT).unwrap();
    let portal = format!("{public_url}/portal/{endpoint}");
    let profile_dir = TempDir::new("portal-browser").unwrap();
    let opts = BrowserOptions {
        ignore_https_errors: true,
        ..BrowserOptions::default()
    };
    let sign_in = |code: &str| {
        vec![
            Step::goto(&portal),
            Step::wait_text("Self-service portal"),
            Step::fill("#username", "alice"),
            Step::fill("#password", "alice-pw"),
            Step::fill("#code", code),
            Step::click("main button[type=submit]"),
        ]
    };

    // A wrong password: refused, said so.
    let mut steps = sign_in("");
    steps[3] = Step::fill("#password", "guess");
    steps.push(Step::wait_text("wrong user name or password"));
    Browser::run_with(&opts, &steps).unwrap();

    // First sign-in: password right, no app enrolled yet: only the enrolment page, with the
    // QR code and the key; the app (here: the browser computing its codes) confirms one code.
    // Then a sign-in with password and code, and the profile download.
    let downloaded = profile_dir.0.join("corp.ovpn");
    let mut steps = sign_in("");
    steps.splice(2..2, [Step::screenshot("portal-dir-1-sign-in.png")]);
    steps.extend([
        Step::wait_text("Scan the code below"),
        Step::screenshot("portal-dir-2-enrol.png"),
        Step::remember("#totp-key", "key"),
        // Nothing else is open to this session yet.
        Step::goto(&portal),
        Step::wait_text("Scan the code below"),
        Step::goto(&format!("{portal}/profile.ovpn")),
        Step::expect_no_text("client"),
        Step::goto(&format!("{portal}/mfa")),
        Step::fill_totp("#code", "key", 0),
        Step::click("main button[type=submit]"),
        Step::wait_text("Your authenticator app is set up"),
        Step::screenshot("portal-dir-3-enrolled.png"),
    ]);
    let mut again = sign_in("");
    again.push(Step::fill_totp("#code", "key", 0));
    again.swap(5, 6);
    steps.extend(again);
    steps.extend([
        Step::wait_text("Your VPNs"),
        Step::expect_text("Corp VPN"),
        Step::screenshot("portal-dir-4-vpns.png"),
        Step::download("a[download]", &downloaded),
    ]);
    let run = Browser::run_with(&opts, &steps);
    let run = match run {
        Ok(r) => r,
        Err(e) => panic!(
            "{e:#}\ndaemon log (web):\n{}",
            daemon
                .daemon
                .log()
                .into_iter()
                .filter(|l| l.contains("gateway::web"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    let secret = TotpSecret::from_base32(&run.remembered["key"]).unwrap();
    let text = std::fs::read_to_string(&downloaded).unwrap();
    assert!(
        text.contains("static-challenge \"Enter MFA code\" 1"),
        "{text}"
    );

    // A stock client connects with exactly that file: user name, password and the next code
    // (the portal's sign-in used this step's: a code counts once).
    let mut client = OpenVpnClient::start_with_args(
        &net.clients[0],
        &downloaded,
        &[
            "--management",
            "127.0.0.1",
            "7505",
            "--management-hold",
            "--management-query-passwords",
            "--auth-retry",
            "none",
        ],
        "portal-alice",
    )
    .unwrap();
    let mut m = Management::connect(&net.clients[0], 7505, Duration::from_secs(10)).unwrap();
    m.sign_in("alice", "alice-pw", Some(&code(&secret, 1)))
        .unwrap();
    let connected = client.wait_connected(Duration::from_secs(20));
    if connected.is_err() {
        panic!(
            "not connected: {connected:?}\ndaemon log:\n{}",
            daemon.daemon.log().join("\n")
        );
    }
    let reached = net.clients[0]
        .run(|| probe_loop((STAFF_HOST, ECHO_PORT), Duration::from_millis(400)))
        .unwrap()
        .iter()
        .any(|(_, answered)| *answered);
    assert!(reached, "alice reaches the staff host");
}
