//! SAML sign-in works for real: the gateway's `auth::saml` makes the AuthnRequest, a headless
//! Chromium signs in on SimpleSAMLphp's own login page, SimpleSAMLphp's HTTP-POST page posts
//! the signed SAMLResponse to an ACS (a listener here), and `verify_response` accepts it: user
//! name and groups from the `memberOf` attribute; the same response is refused a second time,
//! and for another request. A wrong password stays on the login page.

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use cvpn_tests::{
    browser::{Browser, Step},
    oidc_idp::{form_decode, query_param},
    saml_idp::{SamlIdp, SamlIdpConfig, SamlIdpUser, SamlSp},
};
use gateway::auth::saml::{SamlError, SamlServiceProvider, SamlSpSettings};

/// Our ACS: answers `POST /saml/acs` with a page saying so and hands each posted form body on.
/// Serves for at most a minute.
struct Acs {
    port: u16,
    rx: mpsc::Receiver<String>,
}

impl Acs {
    fn start() -> Result<Acs> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
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
                let mut buf = [0u8; 16384];
                let head_end = loop {
                    if let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(p + 4);
                    }
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0)
                    .min(1 << 20);
                while req.len() < head_end + length {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = if head.starts_with("POST /saml/acs ") {
                    let _ = tx.send(String::from_utf8_lossy(&req[head_end..]).into_owned());
                    ("200 OK", "SAML response received")
                } else {
                    ("404 Not Found", "not here")
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(Acs { port, rx })
    }

    fn public_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn start(acs: &Acs) -> Result<(SamlIdp, SamlSpSettings)> {
    let public_url = acs.public_url();
    let idp = SamlIdp::start(SamlIdpConfig {
        sps: vec![SamlSp {
            entity_id: format!("{public_url}/saml/metadata"),
            acs_url: format!("{public_url}/saml/acs"),
        }],
        users: vec![
            SamlIdpUser::new("alice", "alice-pw", &["vpn-users", "engineering"]),
            SamlIdpUser::new("bob", "bob-pw", &["sales"]),
        ],
        ..Default::default()
    })?;
    let settings = SamlSpSettings::new(
        &idp.entity_id(),
        &idp.sso_url(),
        idp.cert_pem().as_bytes(),
        &public_url,
    )?;
    Ok((idp, settings))
}

fn sign_in(user: &str, password: &str) -> [Step; 3] {
    [
        Step::fill("input[name=username]", user),
        Step::fill("input[name=password]", password),
        Step::click("#submit_button"),
    ]
}

#[test]
fn browser_signs_in_and_the_signed_response_verifies() -> Result<()> {
    let started = Instant::now();
    let acs = Acs::start()?;
    let (idp, settings) = start(&acs)?;
    let metadata = idp.metadata_xml()?;
    assert!(metadata.contains("IDPSSODescriptor"), "{metadata}");
    let cert_b64: String = idp
        .cert_pem()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(metadata.contains(&cert_b64[..64]), "{metadata}");

    let sp = SamlServiceProvider::new(settings.clone())?;
    let request = sp.authn_request("relay-42")?;
    let mut steps = vec![
        Step::goto(&request.url),
        Step::wait_url(r"/module\.php/core/loginuserpass\.php"),
    ];
    steps.extend(sign_in("alice", "alice-pw"));
    steps.extend([
        Step::wait_url(&format!("^{}/saml/acs$", regex_escape(&acs.public_url()))),
        Step::expect_text("SAML response received"),
    ]);
    let r = Browser::run(&steps).with_context(|| idp.log())?;
    assert!(r.blocked.is_empty(), "{:?}", r.blocked);

    let form = acs
        .rx
        .recv_timeout(Duration::from_secs(5))
        .context("nothing posted to the ACS")?;
    assert_eq!(
        query_param(&form, "RelayState").as_deref(),
        Some("relay-42")
    );
    let response = query_param(&form, "SAMLResponse").context("no SAMLResponse")?;
    let xml = String::from_utf8(base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        &response,
    )?)?;
    // SimpleSAMLphp signed both, as configured.
    assert_eq!(xml.matches("SignatureValue>").count(), 4, "{xml}");

    // Another request's answer is not this one's (checked before it counts as used).
    assert_eq!(
        sp.verify_response(&response, "_another-request", SystemTime::now()),
        Err(SamlError::WrongInResponseTo {
            found: request.id.clone()
        })
    );
    let identity = sp
        .verify_response(&response, &request.id, SystemTime::now())
        .with_context(|| xml.clone())?;
    assert_eq!(identity.username, "alice");
    assert_eq!(identity.name_id, "alice");
    assert_eq!(identity.groups, ["engineering", "vpn-users"]);
    assert!(identity.session_not_on_or_after.is_some());
    assert_eq!(
        sp.verify_response(&response, &request.id, SystemTime::now()),
        Err(SamlError::Replayed(identity.assertion_id.clone()))
    );

    // An SP that trusts another certificate refuses it.
    let other_pem = rcgen::generate_simple_self_signed(vec!["stranger.test".into()])?
        .cert
        .pem();
    let mut s = settings.clone();
    s.idp_certificates = gateway::auth::saml::parse_certificates(other_pem.as_bytes())?;
    let stranger = SamlServiceProvider::new(s)?;
    assert_eq!(
        stranger.verify_response(&response, &request.id, SystemTime::now()),
        Err(SamlError::BadSignature)
    );
    // Expired once the assertion's window (SimpleSAMLphp: 5 minutes) and our skew are over.
    let fresh = SamlServiceProvider::new(settings)?;
    assert!(matches!(
        fresh.verify_response(
            &response,
            &request.id,
            SystemTime::now() + Duration::from_secs(3600)
        ),
        Err(SamlError::Expired(_))
    ));
    eprintln!("took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn wrong_password_stays_on_the_login_page() -> Result<()> {
    let acs = Acs::start()?;
    let (idp, settings) = start(&acs)?;
    let sp = SamlServiceProvider::new(settings)?;
    let request = sp.authn_request("")?;
    let mut steps = vec![
        Step::goto(&request.url),
        Step::wait_url(r"/module\.php/core/loginuserpass\.php"),
    ];
    steps.extend(sign_in("alice", "not-her-password"));
    steps.extend([
        Step::wait_text("Incorrect username or password"),
        Step::expect_url(r"/module\.php/core/loginuserpass\.php"),
    ]);
    let r = Browser::run(&steps).with_context(|| idp.log())?;
    assert!(!r.final_url.contains("/saml/acs"), "{r:?}");
    if let Ok(form) = acs.rx.try_recv() {
        bail!("a refused sign-in reached the ACS: {}", form_decode(&form));
    }
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
