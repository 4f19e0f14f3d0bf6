//! Single sign-on end to end: OpenID Connect with the npm `oidc-provider`, SAML 2.0 with
//! Debian's SimpleSAMLphp, headless Chromium as the user's browser, stock `openvpn` 2.6
//! clients with the exported profile, the daemon (`cvpn serve`) with its web listener. Set up
//! through the CLI, as an administrator does.
//!
//! The IdP, the web listener and the browser run in the gateway's namespace (on its
//! loopback), where the daemon reaches the IdP and the browser reaches both; the clients are
//! in their own namespaces and report the `WEB_AUTH` link on their management sockets, as a
//! GUI would see it.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use cvpn_tests::{
    browser::{Browser, BrowserOptions, BrowserResult, Step},
    directory_servers::free_port,
    echo::{probe_loop, UdpEcho},
    gateway::{CliOutput, EndpointNet, StoreDaemon, TempDir},
    is_root,
    oidc_idp::{IdpClient, IdpUser, OidcIdp, OidcIdpConfig},
    openvpn::{Management, OpenVpnClient},
    pki::write,
    saml_idp::{SamlIdp, SamlIdpConfig, SamlIdpUser, SamlSp},
};
use serde_json::Value;

const STAFF_HOST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const OPS_HOST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 20);
const ECHO_PORT: u16 = 7000;

fn ok(out: CliOutput, what: &str) -> String {
    assert_eq!(out.code, 0, "{what} failed: {}{}", out.stderr, out.stdout);
    out.stdout
}

/// The test's identity provider: alice in staff, bob in ops.
enum TestIdp {
    Oidc(OidcIdp),
    Saml(SamlIdp),
}

#[derive(Clone, Copy)]
enum Protocol {
    Oidc,
    Saml,
}

impl TestIdp {
    fn start(protocol: Protocol, public_url: &str) -> TestIdp {
        match protocol {
            Protocol::Oidc => TestIdp::Oidc(
                OidcIdp::start(OidcIdpConfig {
                    clients: vec![IdpClient::new(
                        "cvpn-gateway",
                        "gateway-secret-0123456789",
                        &format!("{public_url}/oidc/callback"),
                    )],
                    users: vec![
                        IdpUser::new("alice", "alice@example.test", "alice-pw", &["staff"]),
                        IdpUser::new("bob", "bob@example.test", "bob-pw", &["ops"]),
                    ],
                    ..Default::default()
                })
                .unwrap(),
            ),
            Protocol::Saml => TestIdp::Saml(
                SamlIdp::start(SamlIdpConfig {
                    sps: vec![SamlSp {
                        entity_id: format!("{public_url}/saml/metadata"),
                        acs_url: format!("{public_url}/saml/acs"),
                    }],
                    users: vec![
                        SamlIdpUser::new("alice", "alice-pw", &["staff"]),
                        SamlIdpUser::new("bob", "bob-pw", &["ops"]),
                    ],
                    sign_response: true,
                    sign_assertion: true,
                })
                .unwrap(),
            ),
        }
    }

    /// `cvpn idp create` arguments after the name.
    fn create_args(&self, dir: &std::path::Path) -> Vec<String> {
        match self {
            TestIdp::Oidc(idp) => {
                let secret = write(dir, "client.secret", "gateway-secret-0123456789\n").unwrap();
                [
                    "--oidc-issuer",
                    idp.issuer(),
                    "--client-id",
                    "cvpn-gateway",
                    "--client-secret-file",
                    secret.to_str().unwrap(),
                    "--scope",
                    "email",
                    "--scope",
                    "groups",
                    "--recheck-seconds",
                    "10",
                ]
                .map(String::from)
                .to_vec()
            }
            TestIdp::Saml(idp) => {
                let metadata =
                    write(dir, "idp-metadata.xml", &idp.metadata_xml().unwrap()).unwrap();
                vec![
                    "--saml-metadata".into(),
                    metadata.display().to_string(),
                    "--groups-attribute".into(),
                    "memberOf".into(),
                ]
            }
        }
    }

    /// The user name the gateway records for a user of this provider.
    fn username(&self, user: &str) -> String {
        match self {
            TestIdp::Oidc(_) => format!("{user}@example.test"),
            TestIdp::Saml(_) => user.to_string(),
        }
    }

    /// The provider's own login page, filled in.
    fn login_steps(&self, user: &str, password: &str) -> Vec<Step> {
        match self {
            TestIdp::Oidc(idp) => vec![
                Step::wait_url(&format!("^{}", regex_escape(idp.issuer()))),
                Step::fill("input[name=login]", user),
                Step::fill("input[name=password]", password),
                Step::click("button[type=submit]"),
            ],
            TestIdp::Saml(_) => vec![
                Step::wait_url(r"/module\.php/core/loginuserpass\.php"),
                Step::fill("input[name=username]", user),
                Step::fill("input[name=password]", password),
                Step::click("#submit_button"),
            ],
        }
    }
}

/// A gateway whose endpoint signs users in at an identity provider.
struct Sx {
    net: EndpointNet,
    idp: TestIdp,
    daemon: StoreDaemon,
    endpoint: String,
    public_url: String,
    _echo: Vec<UdpEcho>,
    _data: TempDir,
}

impl Sx {
    fn new(clients: usize, protocol: Protocol) -> Sx {
        Self::with_client_ca(clients, protocol, false)
    }

    /// With `client_ca`: certificate AND single sign-on, the endpoint holding its client CA's
    /// key (the portal issues users their certificates).
    fn with_client_ca(clients: usize, protocol: Protocol, client_ca: bool) -> Sx {
        assert!(is_root(), "the SSO tests need root: run `cargo xtask test`");
        let mut net = EndpointNet::new(clients).unwrap();
        net.gateway.enter().unwrap();
        let web_port = free_port().unwrap();
        let public_url = format!("https://127.0.0.1:{web_port}");
        let idp = TestIdp::start(protocol, &public_url);
        let dir = net.dir.0.clone();
        let web = net.ca.server("127.0.0.1").unwrap();
        let web_cert = write(&dir, "web.crt", &web.cert).unwrap();
        let web_key = write(&dir, "web.key", &web.key).unwrap();
        let config = write(
            &dir,
            "cvpn.toml",
            &format!(
                "public_host = \"{}\"\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n\
                 certificate = \"{}\"\nkey = \"{}\"\npublic_url = \"{public_url}\"\n\
                 sign_in_timeout_seconds = 60\n",
                EndpointNet::server_addr(0),
                web_cert.display(),
                web_key.display()
            ),
        )
        .unwrap();
        let data = TempDir::new("sso").unwrap();
        let daemon = StoreDaemon::start_with_config(&net.gateway, &data.0, Some(&config)).unwrap();
        let mut args = vec!["idp", "create", "--name", "corp-sso"];
        let idp_args = idp.create_args(&dir);
        args.extend(idp_args.iter().map(String::as_str));
        let idp_id = ok(daemon.cli(&args).unwrap(), "idp create")
            .trim()
            .to_string();
        assert!(idp_id.starts_with("idp-"), "{idp_id}");
        let (cert, key, ca) = net.write_server_chain().unwrap();
        let mut args = vec![
            "endpoint",
            "create",
            "--client-cidr",
            "10.77.0.0/22",
            "--server-cert",
            cert.to_str().unwrap(),
            "--server-key",
            key.to_str().unwrap(),
            "--idp",
            "corp-sso",
            "--split-tunnel",
            "--self-service-portal",
            "enabled",
        ];
        let ca_key = write(&dir, "ca.key", &net.ca.key_pem()).unwrap();
        if client_ca {
            args.extend(["--client-ca", ca.to_str().unwrap()]);
        }
        let created = daemon.json(&args).unwrap();
        let endpoint = created["client-vpn-endpoint-id"]
            .as_str()
            .unwrap()
            .to_string();
        if client_ca {
            ok(
                daemon
                    .cli(&[
                        "endpoint",
                        "modify",
                        &endpoint,
                        "--client-ca-key",
                        ca_key.to_str().unwrap(),
                    ])
                    .unwrap(),
                "endpoint modify --client-ca-key",
            );
        }
        daemon
            .associate_and_authorize(&endpoint, &[(STAFF_HOST, "staff"), (OPS_HOST, "ops")])
            .unwrap();
        let echo = [STAFF_HOST, OPS_HOST]
            .into_iter()
            .map(|h| UdpEcho::start(&net.private, h, ECHO_PORT).unwrap())
            .collect();
        Sx {
            net,
            idp,
            daemon,
            endpoint,
            public_url,
            _echo: echo,
            _data: data,
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        ok(self.daemon.cli(args).unwrap(), &args.join(" "))
    }

    /// The exported profile of client `i`, exactly, plus `extra` lines.
    fn profile(&self, i: usize, extra: &str) -> String {
        let remote = EndpointNet::server_addr(i);
        let p = self.cli(&["config", "export", &self.endpoint, "--remote-host", &remote]);
        format!("{p}\n{extra}\n")
    }

    /// A stock client from namespace `i` with its management socket (as a GUI has it).
    fn start_managed(&self, i: usize, name: &str, extra: &str) -> (OpenVpnClient, Management) {
        self.start_managed_with(i, name, extra, |p| p)
    }

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
            &format!("management 127.0.0.1 {port}\nmanagement-hold\n{extra}"),
        ));
        let c = OpenVpnClient::start_with_text(&self.net.clients[i], &p, &self.net.dir.0, name)
            .unwrap();
        let mut m =
            Management::connect(&self.net.clients[i], port, Duration::from_secs(10)).unwrap();
        m.wait_for(">HOLD:", Duration::from_secs(10)).unwrap();
        m.send("hold release").unwrap();
        (c, m)
    }

    /// Signs in at the link the client reported: approve, the IdP's own login page, back.
    fn browser_sign_in(&self, url: &str, user: &str, password: &str, tag: &str) -> BrowserResult {
        let opts = BrowserOptions {
            ignore_https_errors: true,
            ..BrowserOptions::default()
        };
        let mut steps = vec![
            Step::goto(url),
            Step::wait_text("Approve this VPN connection"),
            Step::screenshot(&format!("{tag}-1-approve.png")),
            Step::click("button[type=submit]"),
        ];
        steps.extend(self.idp.login_steps(user, password));
        steps.extend([
            Step::wait_text("You are signed in"),
            Step::screenshot(&format!("{tag}-2-signed-in.png")),
        ]);
        Browser::run_with(&opts, &steps).unwrap()
    }

    /// A stock client in namespace `i` with exactly the profile file `profile` (its management
    /// socket on the command line), signed in through the browser as `user`; connected.
    fn connect_with_file(
        &self,
        i: usize,
        profile: &std::path::Path,
        user: &str,
        password: &str,
        tag: &str,
    ) -> OpenVpnClient {
        let port = (7505 + i).to_string();
        let mut client = OpenVpnClient::start_with_args(
            &self.net.clients[i],
            profile,
            &["--management", "127.0.0.1", &port, "--management-hold"],
            tag,
        )
        .unwrap();
        let mut m = Management::connect(
            &self.net.clients[i],
            7505 + i as u16,
            Duration::from_secs(10),
        )
        .unwrap();
        m.wait_for(">HOLD:", Duration::from_secs(10)).unwrap();
        m.send("hold release").unwrap();
        let url = web_auth_url(
            &m.wait_for(">INFOMSG:WEB_AUTH::", Duration::from_secs(20))
                .unwrap(),
        );
        self.browser_sign_in(&url, user, password, tag);
        client.wait_connected(Duration::from_secs(10)).unwrap();
        client
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

    fn reaches(&self, i: usize, host: Ipv4Addr) -> bool {
        // While the client reconnects its tunnel is down: "network unreachable" is a no.
        self.net.clients[i]
            .run(move || probe_loop((host, ECHO_PORT), Duration::from_millis(400)))
            .is_ok_and(|r| r.iter().any(|(_, answered)| *answered))
    }

    fn wait_until(&self, timeout: Duration, mut f: impl FnMut(&Sx) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Sx) -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f(self) {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self.daemon.daemon.log();
        panic!(
            "{what}: not within {timeout:?}\nconnections: {:#?}\ndaemon log (tail):\n{}",
            self.connections(),
            log[log.len().saturating_sub(40)..].join("\n")
        );
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

fn web_auth_url(line: &str) -> String {
    line.trim_start_matches(">INFOMSG:WEB_AUTH::").to_string()
}

#[test]
fn oidc_stock_clients_sign_in_through_the_browser_and_idp_groups_decide_access() {
    let sx = Sx::new(3, Protocol::Oidc);

    // alice: the client reports the short sign-in link; she approves it in the browser and
    // signs in on the IdP's own page.
    let (mut alice, mut m) = sx.start_managed(0, "alice", "reneg-sec 12\n");
    let line = m
        .wait_for(">INFOMSG:WEB_AUTH::", Duration::from_secs(20))
        .unwrap();
    let url = web_auth_url(&line);
    assert!(url.starts_with(&format!("{}/s/", sx.public_url)), "{url}");
    assert!(
        line.len() < 200,
        "fits the client's 256-byte buffer: {line}"
    );
    let page = sx.browser_sign_in(&url, "alice", "alice-pw", "alice");
    assert!(
        page.texts.iter().any(|t| t.contains("10.99.0.2")) || page.final_url.contains("callback"),
        "{page:?}"
    );
    let signed_in = Instant::now();
    alice.wait_connected(Duration::from_secs(10)).unwrap();
    let push_delay = signed_in.elapsed();
    eprintln!("connected {push_delay:?} after the browser process (signed in) exited");
    // The reply is pushed as the sign-in completes, not at the client's next PUSH_REQUEST
    // (every 5 s).
    assert!(push_delay < Duration::from_secs(3), "{push_delay:?}");
    assert!(
        sx.reaches(0, STAFF_HOST),
        "alice (staff) reaches the staff host"
    );
    assert!(!sx.reaches(0, OPS_HOST), "but not the ops host");
    let active = sx.active();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["username"], sx.idp.username("alice"));

    // The IdP rotates its signing key: bob's ID token is signed with a key the gateway has
    // not seen; it fetches the provider's keys again, without a restart.
    let TestIdp::Oidc(oidc) = &sx.idp else {
        unreachable!()
    };
    oidc.rotate_keys().unwrap();
    // bob (ops) reaches only the ops host.
    let (mut bob, mut mb) = sx.start_managed(1, "bob", "");
    let url = web_auth_url(
        &mb.wait_for(">INFOMSG:WEB_AUTH::", Duration::from_secs(20))
            .unwrap(),
    );
    sx.browser_sign_in(&url, "bob", "bob-pw", "bob");
    bob.wait_connected(Duration::from_secs(10)).unwrap();
    assert!(sx.reaches(1, OPS_HOST));
    assert!(!sx.reaches(1, STAFF_HOST));
    assert!(
        sx.daemon
            .daemon
            .log()
            .iter()
            .any(|l| l.contains("identity provider keys fetched again")),
        "the rotated key was fetched"
    );

    // A client whose profile lacks web sign-in is told what to add.
    let (mut plain, _mp) =
        sx.start_managed_with(2, "plain", "", |p| p.replace("setenv IV_SSO webauth\n", ""));
    plain
        .wait_for("AUTH_FAILED", Duration::from_secs(20))
        .unwrap();
    assert!(
        plain
            .log()
            .iter()
            .any(|l| l.contains("setenv IV_SSO webauth")),
        "{:?}",
        plain.log()
    );

    // Renegotiation under traffic (the client renegotiates every 12 s): no second sign-in,
    // the auth-token carries it.
    let start = Instant::now();
    let mut renegotiated = false;
    while start.elapsed() < Duration::from_secs(30) {
        assert!(
            sx.reaches(0, STAFF_HOST),
            "traffic goes on during renegotiation"
        );
        if sx
            .daemon
            .daemon
            .log()
            .iter()
            .any(|l| l.contains("renegotiated"))
        {
            renegotiated = true;
            break;
        }
    }
    assert!(renegotiated, "the client renegotiated within 30 s");
    assert!(sx.reaches(0, STAFF_HOST));
    assert_eq!(
        m.drain()
            .iter()
            .filter(|l| l.starts_with(">INFOMSG:WEB_AUTH"))
            .count(),
        1,
        "one sign-in only: {:?}",
        m.seen
    );

    // A reconnect (SIGUSR1: the client restarts its connection) uses the auth-token: no
    // browser.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(alice.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    // The client holds again at its restart (`management-hold`), as a GUI sees it.
    m.wait_for(">HOLD:", Duration::from_secs(10)).unwrap();
    m.send("hold release").unwrap();
    let first = sx
        .active()
        .into_iter()
        .find(|c| c["username"] == sx.idp.username("alice"))
        .expect("alice is connected")["connection-id"]
        .clone();
    let back = sx.wait_until(Duration::from_secs(30), |s| {
        s.active()
            .iter()
            .any(|c| c["username"] == sx.idp.username("alice") && c["connection-id"] != first)
            && s.reaches(0, STAFF_HOST)
    });
    assert!(
        back,
        "alice back after her reconnect\nclient log:\n{}\ndaemon log:\n{}",
        alice.log()[alice.log().len().saturating_sub(40)..].join("\n"),
        sx.daemon.daemon.log()[sx.daemon.daemon.log().len().saturating_sub(30)..].join("\n")
    );
    assert_eq!(
        m.drain()
            .iter()
            .filter(|l| l.starts_with(">INFOMSG:WEB_AUTH"))
            .count(),
        1,
        "the reconnect needed no second sign-in: {:?}",
        m.seen
    );

    // The IdP disables bob: his next refresh (every 10 s) is refused and his session ends.
    oidc.disable_user("bob").unwrap();
    let took = sx.wait("bob's session ended", Duration::from_secs(40), |s| {
        !s.active()
            .iter()
            .any(|c| c["username"] == s.idp.username("bob"))
    });
    assert!(!sx.reaches(1, OPS_HOST), "bob's traffic no longer passes");
    eprintln!("bob's session ended {took:?} after the IdP disabled him");
    assert!(sx.reaches(0, STAFF_HOST), "alice is not affected");
}

#[test]
fn saml_stock_clients_sign_in_through_the_browser_and_assertion_groups_decide_access() {
    let sx = Sx::new(2, Protocol::Saml);
    let (mut alice, mut m) = sx.start_managed(0, "alice", "");
    let url = web_auth_url(
        &m.wait_for(">INFOMSG:WEB_AUTH::", Duration::from_secs(20))
            .unwrap(),
    );
    sx.browser_sign_in(&url, "alice", "alice-pw", "saml-alice");
    alice.wait_connected(Duration::from_secs(10)).unwrap();
    assert!(
        sx.reaches(0, STAFF_HOST),
        "alice (staff) reaches the staff host"
    );
    assert!(!sx.reaches(0, OPS_HOST), "but not the ops host");
    let active = sx.active();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["username"], "alice");

    // bob first types a wrong password: the IdP's page says so and he is not connected;
    // then he gets it right in the same browser.
    let (mut bob, mut mb) = sx.start_managed(1, "bob", "");
    let url = web_auth_url(
        &mb.wait_for(">INFOMSG:WEB_AUTH::", Duration::from_secs(20))
            .unwrap(),
    );
    let mut steps = vec![Step::goto(&url), Step::click("button[type=submit]")];
    steps.extend(sx.idp.login_steps("bob", "guess"));
    steps.push(Step::wait_text("Incorrect username or password"));
    steps.push(Step::screenshot("saml-bob-wrong-password.png"));
    steps.extend(sx.idp.login_steps("bob", "bob-pw"));
    steps.push(Step::wait_text("You are signed in"));
    let opts = BrowserOptions {
        ignore_https_errors: true,
        ..BrowserOptions::default()
    };
    Browser::run_with(&opts, &steps).unwrap();
    bob.wait_connected(Duration::from_secs(10)).unwrap();
    assert!(sx.reaches(1, OPS_HOST));
    assert!(!sx.reaches(1, STAFF_HOST));
    assert_eq!(sx.active().len(), 2);
}

#[test]
fn the_portal_signs_in_at_the_idp_hands_out_the_profile_and_disconnects_own_sessions() {
    let sx = Sx::new(1, Protocol::Oidc);
    let portal = format!("{}/portal/{}", sx.public_url, sx.endpoint);
    let described = sx
        .daemon
        .json(&["endpoint", "describe", &sx.endpoint])
        .unwrap();
    assert_eq!(
        described["client-vpn-endpoints"][0]["self-service-portal-url"],
        portal.as_str(),
        "{described}"
    );
    let opts = BrowserOptions {
        ignore_https_errors: true,
        ..BrowserOptions::default()
    };

    // alice signs in to the portal at the IdP and downloads her profile.
    let profile = sx.net.dir.0.join("from-portal.ovpn");
    let mut steps = vec![
        Step::goto(&portal),
        Step::wait_text("Self-service portal"),
        Step::screenshot("portal-1-sign-in.png"),
        Step::click("button[type=submit]"),
    ];
    steps.extend(sx.idp.login_steps("alice", "alice-pw"));
    steps.extend([
        Step::wait_text("Your VPNs"),
        Step::expect_text("No active session"),
        Step::screenshot("portal-2-vpns.png"),
        Step::download("a[download]", &profile),
    ]);
    Browser::run_with(&opts, &steps).unwrap();
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("setenv IV_SSO webauth"), "{text}");
    assert!(
        text.contains(&format!("remote {} ", EndpointNet::server_addr(0))),
        "{text}"
    );

    // A stock client connects with exactly that file (management on the command line).
    let _client = sx.connect_with_file(0, &profile, "alice", "alice-pw", "portal-alice");
    assert!(sx.reaches(0, STAFF_HOST));

    // Back in the portal she sees her session and disconnects it.
    let mut steps = vec![Step::goto(&portal), Step::click("button[type=submit]")];
    steps.extend(sx.idp.login_steps("alice", "alice-pw"));
    steps.extend([
        Step::wait_text("Your active sessions"),
        Step::expect_text("10.77.0."),
        Step::screenshot("portal-3-sessions.png"),
        Step::click("button[aria-label^=Disconnect]"),
        Step::wait_text("No active session"),
        Step::screenshot("portal-4-disconnected.png"),
    ]);
    Browser::run_with(&opts, &steps).unwrap();
    sx.wait("the session ended", Duration::from_secs(10), |s| {
        s.active().is_empty()
    });
    assert!(!sx.reaches(0, STAFF_HOST), "her traffic no longer passes");
}

#[test]
fn the_portal_issues_a_certificate_that_revoke_user_ends() {
    let sx = Sx::with_client_ca(1, Protocol::Oidc, true);
    let portal = format!("{}/portal/{}", sx.public_url, sx.endpoint);
    let opts = BrowserOptions {
        ignore_https_errors: true,
        ..BrowserOptions::default()
    };
    let profile = sx.net.dir.0.join("with-certificate.ovpn");
    let mut steps = vec![Step::goto(&portal), Step::click("main button[type=submit]")];
    steps.extend(sx.idp.login_steps("alice", "alice-pw"));
    steps.extend([
        Step::wait_text("Your VPNs"),
        Step::download("a[download]", &profile),
    ]);
    let run = Browser::run_with(&opts, &steps).unwrap();
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("<cert>") && text.contains("<key>"), "{text}");
    let issued = sx
        .daemon
        .json(&[
            "endpoint",
            "certificates",
            &sx.endpoint,
            "--username",
            "alice@example.test",
        ])
        .unwrap();
    let certs = issued.to_string();
    assert!(certs.contains("valid"), "{certs}");
    let described = sx
        .daemon
        .json(&["endpoint", "describe", &sx.endpoint])
        .unwrap();
    assert_eq!(
        described["client-vpn-endpoints"][0]["self-service-portal-downloads"],
        1 + run.retries.len(),
        "the download is counted (and each one the browser cancelled and made again: {:?}): \
         {described}",
        run.retries
    );

    // The certificate AND the sign-in: a stock client with exactly that file.
    let mut client = sx.connect_with_file(0, &profile, "alice", "alice-pw", "cert-alice");
    assert!(sx.reaches(0, STAFF_HOST));
    let active = sx.active();
    assert_eq!(active[0]["common-name"], "alice@example.test", "{active:?}");

    // The administrator removes her access: the certificate goes on the CRL and the session
    // ends; the client cannot come back with that file.
    let out = sx.cli(&[
        "endpoint",
        "revoke-user",
        &sx.endpoint,
        "--username",
        "alice@example.test",
    ]);
    assert!(out.contains("revoked 1"), "{out}");
    sx.wait("her session ended", Duration::from_secs(10), |s| {
        s.active().is_empty()
    });
    assert!(!sx.reaches(0, STAFF_HOST));
    client.stop();
    let refusals = |s: &Sx| {
        s.daemon
            .daemon
            .log()
            .iter()
            .filter(|l| l.contains("handshake refused") && l.contains("revoked"))
            .count()
    };
    let before = refusals(&sx);
    let mut again =
        OpenVpnClient::start_with_args(&sx.net.clients[0], &profile, &[], "again").unwrap();
    sx.wait(
        "the revoked certificate refused",
        Duration::from_secs(15),
        |s| refusals(s) > before,
    );
    assert!(
        sx.active().is_empty(),
        "the revoked certificate does not come back"
    );
    again.stop();
}

#[test]
fn an_sso_endpoint_on_a_daemon_without_a_web_listener_is_not_served_and_says_why() {
    assert!(is_root(), "the SSO tests need root: run `cargo xtask test`");
    let mut net = EndpointNet::new(0).unwrap();
    let data = TempDir::new("sso-noweb").unwrap();
    let daemon = StoreDaemon::start(&net.gateway, &data.0).unwrap();
    let secret = write(&net.dir.0, "client.secret", "gateway-secret-0123456789\n").unwrap();
    ok(
        daemon
            .cli(&[
                "idp",
                "create",
                "--name",
                "corp-sso",
                "--oidc-issuer",
                "https://login.example.test",
                "--client-id",
                "cvpn",
                "--client-secret-file",
                secret.to_str().unwrap(),
            ])
            .unwrap(),
        "idp create",
    );
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
            "--idp",
            "corp-sso",
        ])
        .unwrap();
    let endpoint = created["client-vpn-endpoint-id"]
        .as_str()
        .unwrap()
        .to_string();
    daemon.associate_and_authorize(&endpoint, &[]).unwrap();
    // Not served (fail closed: no sign-in could run), and the description says what to add.
    let start = Instant::now();
    let listener = loop {
        let d = daemon.json(&["endpoint", "describe", &endpoint]).unwrap();
        let l = d["client-vpn-endpoints"][0]["listener"].clone();
        if l["state"] == "failed" || start.elapsed() > Duration::from_secs(10) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listener["state"], "failed", "{listener}");
    let message = listener["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("[web]") && message.contains("public_url"),
        "{message}"
    );
}
