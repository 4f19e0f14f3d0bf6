//! The SSO test harness works for real: a headless Chromium signs in through the OIDC IdP's own
//! login page, the IdP redirects to a relying party's callback (a listener here), the code is
//! exchanged with PKCE, the id_token carries email and groups, refresh works across a live key
//! rotation and stops working once the user is disabled; a wrong password stays on the login
//! page and a disabled user cannot sign in.

use std::{
    io::{Read, Write},
    net::{IpAddr, TcpListener},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use cvpn_tests::{
    browser::{Browser, BrowserOptions, Step},
    oidc_idp::{
        form_encode, http_get, http_post_form, in_netns, jwt_claims, jwt_header, query_param,
        random_hex, IdpClient, IdpUser, OidcIdp, OidcIdpConfig,
    },
    Netns,
};
use serde_json::Value;

const CLIENT_ID: &str = "cvpn-gateway";
const CLIENT_SECRET: &str = "gateway-secret-0123456789";

/// A relying party's redirect target: answers `GET /cb?…` with a page saying so, and hands
/// each callback's query on. Serves for at most a minute.
struct Callback {
    host: IpAddr,
    port: u16,
    rx: mpsc::Receiver<String>,
}

impl Callback {
    fn start() -> Result<Callback> {
        Self::serve(TcpListener::bind("127.0.0.1:0")?)
    }

    fn serve(listener: TcpListener) -> Result<Callback> {
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let host = listener.local_addr()?.ip();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                let mut s = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req);
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let (status, body) = match target.strip_prefix("/cb?") {
                    Some(query) => {
                        let _ = tx.send(query.to_owned());
                        ("200 OK", "callback received")
                    }
                    None => ("404 Not Found", "not here"),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(Callback { host, port, rx })
    }

    fn redirect_uri(&self) -> String {
        format!("http://{}:{}/cb", self.host, self.port)
    }
}

fn idp(callback: &Callback) -> Result<OidcIdp> {
    idp_with(callback, None, None)
}

fn idp_with(callback: &Callback, netns: Option<&str>, listen: Option<IpAddr>) -> Result<OidcIdp> {
    let mut carol = IdpUser::new("carol", "carol@example.test", "carol-pw", &["vpn-users"]);
    carol.disabled = true;
    OidcIdp::start(OidcIdpConfig {
        clients: vec![IdpClient::new(
            CLIENT_ID,
            CLIENT_SECRET,
            &callback.redirect_uri(),
        )],
        users: vec![
            IdpUser::new(
                "alice",
                "alice@example.test",
                "alice-pw",
                &["vpn-users", "engineering"],
            ),
            carol,
        ],
        netns: netns.map(str::to_owned),
        listen,
        ..Default::default()
    })
}

/// (code_verifier, code_challenge) for S256.
fn pkce() -> Result<(String, String)> {
    let verifier = random_hex(32)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    Ok((verifier, challenge))
}

fn auth_url(
    idp: &OidcIdp,
    callback: &Callback,
    state: &str,
    nonce: &str,
    challenge: &str,
) -> String {
    format!(
        "{}?client_id={}&response_type=code&scope={}&redirect_uri={}&state={state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
        idp.authorization_endpoint(),
        CLIENT_ID,
        form_encode("openid email profile groups"),
        form_encode(&callback.redirect_uri()),
    )
}

fn token(idp: &OidcIdp, form: &[(&str, &str)]) -> Result<(u16, Value)> {
    http_post_form(
        &idp.token_endpoint(),
        Some((CLIENT_ID, CLIENT_SECRET)),
        form,
    )
}

fn refresh(idp: &OidcIdp, refresh_token: &str) -> Result<(u16, Value)> {
    token(
        idp,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
}

/// The login page's form, as oidc-provider's development interaction draws it.
fn sign_in(login: &str, password: &str) -> Vec<Step> {
    vec![
        Step::fill("input[name=login]", login),
        Step::fill("input[name=password]", password),
        Step::click("button[type=submit]"),
    ]
}

#[test]
fn browser_signs_in_code_exchanged_with_pkce_refresh_until_disabled() -> Result<()> {
    let started = Instant::now();
    let callback = Callback::start()?;
    let idp = idp(&callback)?;
    let (verifier, challenge) = pkce()?;
    let state = random_hex(8)?;
    let nonce = random_hex(8)?;

    let mut steps = vec![
        Step::goto(&auth_url(&idp, &callback, &state, &nonce, &challenge)),
        Step::wait_text("Sign-in"),
        Step::screenshot("login.png"),
    ];
    steps.extend(sign_in("alice@example.test", "alice-pw"));
    steps.extend([
        Step::wait_url(&format!("^{}\\?", regex_escape(&callback.redirect_uri()))),
        Step::expect_text("callback received"),
    ]);
    let r = Browser::run(&steps).with_context(|| idp.log())?;
    assert!(
        r.blocked.iter().all(|u| !u.contains("127.0.0.1")),
        "{:?}",
        r.blocked
    );
    assert!(r.screenshots[0].exists(), "{:?}", r.screenshots);

    let query = callback
        .rx
        .recv_timeout(Duration::from_secs(5))
        .context("no callback")?;
    assert_eq!(query_param(&query, "state").as_deref(), Some(&*state));
    assert_eq!(query_param(&query, "iss").as_deref(), Some(idp.issuer()));
    let code = query_param(&query, "code").context("no code in the callback")?;
    assert_eq!(r.query_param("code").as_deref(), Some(&*code));

    let redirect_uri = callback.redirect_uri();
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", &*code),
        ("redirect_uri", &*redirect_uri),
        ("code_verifier", &*verifier),
    ];
    let (status, tokens) = token(&idp, &exchange)?;
    assert_eq!(status, 200, "{tokens}\n{}", idp.log());
    let id_token = tokens["id_token"].as_str().context("no id_token")?;
    let claims = jwt_claims(id_token)?;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(
        claims["groups"],
        serde_json::json!(["vpn-users", "engineering"])
    );
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["nonce"], nonce);
    let first_kid = jwt_header(id_token)?["kid"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let refresh_token = tokens["refresh_token"]
        .as_str()
        .context("no refresh_token")?
        .to_owned();

    let (status, refreshed) = refresh(&idp, &refresh_token)?;
    assert_eq!(status, 200, "{refreshed}\n{}", idp.log());
    let claims = jwt_claims(refreshed["id_token"].as_str().context("no id_token")?)?;
    assert_eq!(claims["groups"][0], "vpn-users");

    // Live key rotation: the new key signs, JWKS serves both, refresh tokens stay good.
    let new_kid = idp.rotate_keys()?;
    assert_ne!(new_kid, first_kid);
    let (_, jwks) = http_get(&idp.jwks_uri())?;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .context("no keys")?
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids, [&*new_kid, &*first_kid]);
    let (status, refreshed) = refresh(&idp, &refresh_token)?;
    assert_eq!(status, 200, "{refreshed}\n{}", idp.log());
    let header = jwt_header(refreshed["id_token"].as_str().context("no id_token")?)?;
    assert_eq!(header["kid"], new_kid.as_str());

    idp.disable_user("alice")?;
    let (status, refused) = refresh(&idp, &refresh_token)?;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], "invalid_grant");
    assert!(
        idp.log().contains("referenced account not found"),
        "{}",
        idp.log()
    );
    // A code is good once (a replay also revokes what it gave: oidc-provider does, as RFC 6749
    // §4.1.2 advises; so this comes last).
    let (status, again) = token(&idp, &exchange)?;
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        idp.log().contains("authorization code already consumed"),
        "{}",
        idp.log()
    );
    eprintln!("took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn wrong_password_and_disabled_user_stay_on_the_login_page() -> Result<()> {
    let callback = Callback::start()?;
    let idp = idp(&callback)?;
    let (_, challenge) = pkce()?;
    let url = auth_url(&idp, &callback, "s1", "n1", &challenge);
    let on_login_page = format!(r"^{}/interaction/", regex_escape(idp.issuer()));

    let mut steps = vec![Step::goto(&url), Step::wait_text("Sign-in")];
    steps.extend(sign_in("alice", "not-her-password"));
    steps.extend([
        Step::wait_text("Invalid login or password"),
        Step::expect_url(&on_login_page),
        Step::screenshot("wrong-password.png"),
    ]);
    // carol's password is right, but she is disabled.
    steps.extend(sign_in("carol", "carol-pw"));
    steps.extend([
        Step::wait_text("Invalid login or password"),
        Step::expect_url(&on_login_page),
    ]);
    let r = Browser::run(&steps).with_context(|| idp.log())?;
    assert!(!r.final_url.contains("/cb"), "{r:?}");
    if let Ok(q) = callback.rx.try_recv() {
        bail!("a refused sign-in reached the callback: {q}");
    }
    let log = idp.log();
    assert!(log.contains(r#"sign-in refused for "alice""#), "{log}");
    assert!(log.contains(r#"sign-in refused for "carol""#), "{log}");
    Ok(())
}

/// The IdP, the relying party's callback and the browser in a network namespace of the test's,
/// on a test host's address there (not loopback), as the gateway's tests will place them.
#[test]
fn in_a_namespace_on_a_test_host_address() -> Result<()> {
    if !cvpn_tests::is_root() {
        eprintln!("skipped: needs root for a network namespace");
        return Ok(());
    }
    let ns = Netns::new("idp")?;
    // (No dummy interfaces on this kernel: a veth pair inside the namespace.)
    ns.ip("link add d0 type veth peer name d0peer")?;
    ns.ip("link set d0peer up")?;
    ns.ip("addr add 10.77.0.1/24 dev d0")?;
    ns.ip("link set d0 up")?;
    let addr: IpAddr = "10.77.0.1".parse()?;
    let callback = Callback::serve(ns.run(move || Ok(TcpListener::bind((addr, 0))?))?)?;
    let idp = idp_with(&callback, Some(ns.name()), Some(addr))?;
    assert!(
        idp.issuer().starts_with("http://10.77.0.1:"),
        "{}",
        idp.issuer()
    );
    let (verifier, challenge) = pkce()?;
    let mut steps = vec![
        Step::goto(&auth_url(&idp, &callback, "s2", "n2", &challenge)),
        Step::wait_text("Sign-in"),
    ];
    steps.extend(sign_in("alice", "alice-pw"));
    steps.push(Step::expect_text("callback received"));
    let options = BrowserOptions {
        netns: Some(ns.name().to_owned()),
        allow_hosts: vec!["10.77.0.1".into()],
        ..Default::default()
    };
    Browser::run_with(&options, &steps).with_context(|| idp.log())?;
    let query = callback.rx.recv_timeout(Duration::from_secs(5))?;
    let code = query_param(&query, "code").context("no code")?;
    let (token_url, redirect_uri) = (idp.token_endpoint(), callback.redirect_uri());
    let (status, tokens) = in_netns(Some(ns.name()), move || {
        http_post_form(
            &token_url,
            Some((CLIENT_ID, CLIENT_SECRET)),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &verifier),
            ],
        )
    })?;
    assert_eq!(status, 200, "{tokens}\n{}", idp.log());
    assert_eq!(
        jwt_claims(tokens["id_token"].as_str().unwrap_or(""))?["email"],
        "alice@example.test"
    );
    // Admin calls reach it inside the namespace.
    idp.disable_user("alice")?;
    idp.rotate_keys()?;
    Ok(())
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = ".^$*+?()[]{}|\\/".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}
