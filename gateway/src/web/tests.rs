//! The web listener's sign-in pages over HTTP, against a provider in this process: what the
//! approval page shows, the browser binding, `state`, one-time use, and the answers the
//! endpoint gets.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::sso::{SignInTarget, SsoIdp, SsoService};
use super::{router, WebSettings, WebState};
use crate::auth::oidc_tests::{start, Idp, Key};
use crate::auth::{AuthFailure, DirectoryUser, WebSignIn};
use crate::endpoint::ConnId;

type Answer = (ConnId, Result<DirectoryUser, AuthFailure>);

struct Site {
    base: String,
    web: Arc<WebState>,
    events: mpsc::UnboundedReceiver<crate::api::ControlEvent>,
    dir: std::path::PathBuf,
    sso: Arc<SsoService>,
    idp: Idp,
    idp_link: Arc<SsoIdp>,
    answers: mpsc::UnboundedReceiver<Answer>,
    tx: mpsc::UnboundedSender<Answer>,
    key: Key,
}

async fn site() -> Site {
    let idp = start().await;
    let key = Key::new("k1");
    idp.shared.lock().unwrap().jwks = vec![key.jwk()];
    let sso = Arc::new(SsoService::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let dir = std::env::temp_dir().join(format!(
        "cvpn-web-test-{}-{}",
        std::process::id(),
        base.rsplit(':').next().unwrap()
    ));
    let store =
        Arc::new(crate::storage::Store::open(crate::storage::StoreOptions::in_dir(&dir)).unwrap());
    let (events_tx, events) = mpsc::unbounded_channel();
    let state = Arc::new(WebState {
        settings: WebSettings {
            public_url: base.clone(),
        },
        sso: sso.clone(),
        portal: Arc::new(super::Portal::new()),
        api: crate::api::ApiState::new(store, events_tx),
    });
    let web = state.clone();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    // The relying party of the provider in this process (its redirect URL does not matter
    // here: the test plays the browser).
    let rp = crate::auth::oidc::OidcRelyingParty::new(
        idp.rp.settings().clone(),
        crate::http_client::client_tls(None).unwrap(),
    );
    let (tx, answers) = mpsc::unbounded_channel();
    Site {
        base,
        web,
        events,
        dir,
        sso,
        idp,
        idp_link: Arc::new(SsoIdp::Oidc(rp)),
        answers,
        tx,
        key,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Reply {
    status: u16,
    location: Option<String>,
    cookie: Option<String>,
    body: String,
}

async fn request(method: &str, url: &str, cookie: Option<&str>) -> Reply {
    send(method, url, cookie, None).await
}

async fn post_form(url: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Reply {
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::http_client::percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    send("POST", url, cookie, Some(body)).await
}

async fn send(method: &str, url: &str, cookie: Option<&str>, form: Option<String>) -> Reply {
    let mut b = http::Request::builder().method(method).uri(url);
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    if form.is_some() {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    let r = crate::http_client::fetch(
        &crate::http_client::client_tls(None).unwrap(),
        b.body(form.unwrap_or_default().into_bytes()).unwrap(),
        1 << 20,
    )
    .await
    .unwrap();
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Reply {
        status: r.status().as_u16(),
        location: h("location"),
        cookie: h("set-cookie").map(|c| c.split(';').next().unwrap().to_string()),
        body: String::from_utf8_lossy(r.body()).into_owned(),
    }
}

fn param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

impl Site {
    fn begin(&self, id: &str, conn: ConnId) {
        self.begin_until(id, conn, now() + 300);
    }

    /// [`Site::begin`] with a sign-in that expires at `expires_unix`.
    fn begin_until(&self, id: &str, conn: ConnId, expires_unix: u64) {
        self.sso.begin(
            SignInTarget {
                endpoint_id: "cvpn-endpoint-0123456789abcdef0".into(),
                endpoint_name: "<b>Corp</b> VPN".into(),
                conn,
                idp: self.idp_link.clone(),
                answers: self.tx.clone(),
            },
            WebSignIn {
                id: id.into(),
                session: format!("sess-{conn}"),
                connection_id: format!("cvpn-connection-{conn:017x}"),
                client_addr: SocketAddr::from(([198, 51, 100, 7], 40001)),
                platform: Some("linux".into()),
                client_version: Some("2.6.14".into()),
                common_name: Some("alice-laptop".into()),
                expires_unix,
                session_expires_unix: now() + 3600,
            },
        );
    }

    /// Approves sign-in `id`: the IdP URL it redirects to and the binding cookie.
    async fn approve(&self, id: &str) -> (String, String) {
        let r = request("POST", &format!("{}/s/{id}", self.base), None).await;
        assert_eq!(r.status, 303, "{}", r.body);
        (r.location.unwrap(), r.cookie.unwrap())
    }

    fn token_for(&self, authorize_url: &str) {
        let nonce = param(authorize_url, "nonce");
        self.idp
            .answer_with(&self.key.token(&self.idp.claims(&nonce)));
    }
}

#[tokio::test]
async fn the_approval_page_shows_the_connection_and_a_get_signs_nobody_in() {
    let mut s = site().await;
    s.begin("id-approval-000000000", 1);
    let r = request("GET", &format!("{}/s/id-approval-000000000", s.base), None).await;
    assert_eq!(r.status, 200);
    for shown in [
        "198.51.100.7",
        "linux",
        "2.6.14",
        "alice-laptop",
        "&lt;b&gt;Corp&lt;/b&gt; VPN",
    ] {
        assert!(r.body.contains(shown), "{shown} in {}", r.body);
    }
    assert!(!r.body.contains("<b>Corp</b>"), "escaped");
    assert!(r.body.contains("method=\"post\""));
    assert!(!r.body.contains("<script"), "no scripts");
    assert!(s.answers.try_recv().is_err(), "a GET answers nothing");
    let r = request("GET", &format!("{}/s/unknown", s.base), None).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("Connect again"));
}

#[tokio::test]
async fn a_completed_sign_in_answers_the_endpoint_once() {
    let mut s = site().await;
    s.begin("id-complete-000000000", 7);
    let (url, cookie) = s.approve("id-complete-000000000").await;
    assert!(url.starts_with(&s.idp.issuer), "{url}");
    assert!(cookie.starts_with("cvpn_sso="));
    s.token_for(&url);
    let callback = format!(
        "{}/oidc/callback?code=c1&state={}",
        s.base,
        param(&url, "state")
    );
    let r = request("GET", &callback, Some(&cookie)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("alice@example.test"));
    let (conn, answer) = s.answers.recv().await.unwrap();
    assert_eq!(conn, 7);
    let user = answer.unwrap();
    assert_eq!(user.username, "alice@example.test");
    assert_eq!(user.groups, vec!["eng", "ops"]);
    // Replayed: the sign-in is gone.
    let r = request("GET", &callback, Some(&cookie)).await;
    assert_eq!(r.status, 404);
    assert!(s.answers.try_recv().is_err(), "answered once");
    // The session is remembered for re-checks and reconnects (refreshed at the IdP).
    let refreshed = s
        .sso
        .check_session(
            "cvpn-endpoint-0123456789abcdef0",
            "sess-7",
            "alice@example.test",
        )
        .await;
    assert_eq!(refreshed.unwrap().groups, vec!["eng", "ops"]);
    // Another user name with this session's token is not this session.
    let other = s
        .sso
        .check_session("cvpn-endpoint-0123456789abcdef0", "sess-7", "mallory")
        .await;
    assert!(matches!(other, Err(AuthFailure::BadToken)));
    // The provider refuses the refresh (user disabled): the session is forgotten.
    s.idp.shared.lock().unwrap().token_answer =
        Some((400, serde_json::json!({"error": "invalid_grant"})));
    let refused = s
        .sso
        .check_session(
            "cvpn-endpoint-0123456789abcdef0",
            "sess-7",
            "alice@example.test",
        )
        .await;
    assert!(refused.unwrap_err().ends_session());
    let gone = s
        .sso
        .check_session(
            "cvpn-endpoint-0123456789abcdef0",
            "sess-7",
            "alice@example.test",
        )
        .await;
    assert!(matches!(gone, Err(AuthFailure::SsoSessionUnknown)));
}

/// Sign-ins taken to the IdP and never brought back must not leave their `state` behind for
/// ever: an attacker who connects and opens the link again and again would fill memory.
#[tokio::test]
async fn sign_ins_abandoned_at_the_idp_leave_no_state_behind() {
    let s = site().await;
    for i in 0..3 {
        let id = format!("id-abandon-{i:010}");
        s.begin_until(&id, 40 + i, now() + 2);
        s.approve(&id).await;
    }
    assert_eq!(s.sso.sizes(), (3, 3, 0));
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    // The next sign-in's arrival sweeps the expired ones, their IdP states with them.
    s.begin("id-abandon-next000000", 50);
    assert_eq!(s.sso.sizes(), (1, 0, 0));
    s.sso.forget_endpoint("cvpn-endpoint-0123456789abcdef0");
    assert_eq!(s.sso.sizes(), (0, 0, 0));
}

#[tokio::test]
async fn a_callback_without_the_approving_browsers_cookie_or_with_a_wrong_state_is_refused() {
    let mut s = site().await;
    s.begin("id-cookie-00000000000", 3);
    let (url, _cookie) = s.approve("id-cookie-00000000000").await;
    s.token_for(&url);
    let callback = format!(
        "{}/oidc/callback?code=c1&state={}",
        s.base,
        param(&url, "state")
    );
    let r = request("GET", &callback, Some("cvpn_sso=someone-elses")).await;
    assert_eq!(r.status, 403);
    let (conn, answer) = s.answers.recv().await.unwrap();
    assert_eq!(conn, 3);
    assert!(matches!(answer, Err(AuthFailure::IdpRefused(_))));
    // Wrong state: nothing is found, nothing answered.
    s.begin("id-state-000000000000", 4);
    let (url, cookie) = s.approve("id-state-000000000000").await;
    let _ = url;
    let r = request(
        "GET",
        &format!("{}/oidc/callback?code=c1&state=forged", s.base),
        Some(&cookie),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(s.answers.try_recv().is_err());
    // Approving twice is refused (the first browser owns it).
    let r = request("POST", &format!("{}/s/id-state-000000000000", s.base), None).await;
    assert_eq!(r.status, 409);
}

#[tokio::test]
async fn an_idp_error_or_a_forged_token_at_the_callback_refuses_the_connection() {
    let mut s = site().await;
    s.begin("id-error-000000000000", 5);
    let (url, cookie) = s.approve("id-error-000000000000").await;
    let r = request(
        "GET",
        &format!(
            "{}/oidc/callback?error=access_denied&state={}",
            s.base,
            param(&url, "state")
        ),
        Some(&cookie),
    )
    .await;
    assert_eq!(r.status, 403);
    let (_, answer) = s.answers.recv().await.unwrap();
    assert!(matches!(answer, Err(AuthFailure::IdpRefused(d)) if d.contains("access_denied")));

    s.begin("id-forged-00000000000", 6);
    let (url, cookie) = s.approve("id-forged-00000000000").await;
    let stranger = Key::new("k1");
    s.idp
        .answer_with(&stranger.token(&s.idp.claims(&param(&url, "nonce"))));
    let r = request(
        "GET",
        &format!(
            "{}/oidc/callback?code=c&state={}",
            s.base,
            param(&url, "state")
        ),
        Some(&cookie),
    )
    .await;
    assert_eq!(r.status, 403);
    let (_, answer) = s.answers.recv().await.unwrap();
    assert!(answer.is_err());
}

#[tokio::test]
async fn every_page_forbids_framing_scripts_and_caching() {
    let s = site().await;
    let r = crate::http_client::fetch(
        &crate::http_client::client_tls(None).unwrap(),
        http::Request::get(format!("{}/", s.base))
            .body(Vec::new())
            .unwrap(),
        1 << 20,
    )
    .await
    .unwrap();
    let h = r.headers();
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
}

impl Site {
    /// An identity provider (the one in this process) and an endpoint with the portal on, in
    /// the store; the portal signs in there. Returns the endpoint id.
    fn portal_endpoint(&self, portal: bool) -> String {
        let idp = self.new_idp();
        let ep = self.endpoint_of(&idp, portal, "");
        // Everyone may use it.
        self.web
            .api
            .store
            .authorize_rule(&crate::model::AuthorizeRequest {
                protocol: None,
                port_range: None,
                client_vpn_endpoint_id: ep.clone(),
                target_network_cidr: "10.88.0.0/24".into(),
                access_group_id: None,
                authorize_all_groups: Some(true),
                description: None,
            })
            .unwrap();
        ep
    }

    /// An identity provider resource for the provider in this process: its id.
    fn new_idp(&self) -> String {
        let store = &self.web.api.store;
        store
            .create_identity_provider(&crate::model::CreateIdentityProviderRequest {
                name: Some(format!(
                    "idp-{}",
                    store.describe_identity_providers().unwrap().len()
                )),
                issuer: Some(self.idp.issuer.clone()),
                client_id: Some("cvpn-test".into()),
                client_secret: Some("client-secret-0123456789".into()),
                ..Default::default()
            })
            .unwrap()
            .id
    }

    /// An endpoint of identity provider `idp` (with its portal on or off, described as
    /// `description`): its id.
    fn endpoint_of(&self, idp: &str, portal: bool, description: &str) -> String {
        let store = &self.web.api.store;
        let pki = crate::test_support::ServerPki::new("web test CA");
        let ep = store
            .create_endpoint(&crate::model::CreateEndpointRequest {
                client_cidr_block: Some("10.9.0.0/22".into()),
                server_certificate: Some(format!("{}{}", pki.server_cert, pki.ca_pem)),
                server_private_key: Some(pki.server_key.clone()),
                authentication_options: vec![
                    crate::model::AuthenticationOption::FederatedAuthentication {
                        saml_provider_arn: idp.into(),
                        self_service_saml_provider_arn: None,
                    },
                ],
                self_service_portal: Some(portal),
                description: Some(description.into()).filter(|d: &String| !d.is_empty()),
                ..Default::default()
            })
            .unwrap();
        let id = ep.client_vpn_endpoint_id;
        // Associated: the endpoint is available (connections may be recorded).
        store
            .associate_target_network(&crate::model::AssociateTargetNetworkRequest {
                client_vpn_endpoint_id: id.clone(),
                target_network_id: "lo".into(),
                subnet_cidr: Some("10.250.0.0/24".into()),
                snat_address: None,
                node: None,
            })
            .unwrap();
        self.web.portal.set_access(
            &id,
            Some(super::PortalAccess {
                authenticator: None,
                idp: Some(self.idp_link.clone()),
            }),
        );
        id
    }

    fn connection(&self, endpoint: &str, user: &str, ip: [u8; 4]) -> String {
        self.web
            .api
            .store
            .record_connection_start(&crate::model::NewConnection {
                client_vpn_endpoint_id: endpoint.into(),
                client_ip: ip.into(),
                common_name: String::new(),
                username: Some(user.into()),
                device_ip: std::net::IpAddr::from([198, 51, 100, 9]),
                device_port: 40000,
                transport_protocol: crate::model::TransportProtocol::Udp,
            })
            .unwrap()
            .connection_id
    }

    /// Signs in to the endpoint's portal at the IdP: the portal session cookie.
    async fn portal_session(&self, endpoint: &str) -> String {
        let r = request(
            "POST",
            &format!("{}/portal/{endpoint}/sso", self.base),
            None,
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.body);
        let url = r.location.unwrap();
        self.token_for(&url);
        let binding = r.cookie.unwrap();
        let r = request(
            "GET",
            &format!(
                "{}/oidc/callback?code=c&state={}",
                self.base,
                param(&url, "state")
            ),
            Some(&binding),
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(
            r.location.as_deref(),
            Some(format!("/portal/{endpoint}").as_str())
        );
        r.cookie.unwrap()
    }
}

fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = page.find(marker).expect("a form with a CSRF token") + marker.len();
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn portal_pages_need_a_session_forms_need_its_csrf_token_and_users_end_only_their_sessions() {
    let mut s = site().await;
    let ep = s.portal_endpoint(true);
    let portal = format!("{}/portal/{ep}", s.base);
    // No session: the sign-in page; nothing else.
    let r = request("GET", &portal, None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("Sign in with your organization"),
        "{}",
        r.body
    );
    let r = request("GET", &format!("{portal}/profile.ovpn"), None).await;
    assert_eq!(r.status, 303, "no profile without a session");
    let r = post_form(
        &format!("{portal}/disconnect"),
        None,
        &[("csrf", "x"), ("connection_id", "y")],
    )
    .await;
    assert_eq!(r.status, 303);
    // A forged session cookie is no session.
    let r = request("GET", &portal, Some("cvpn_portal=forged")).await;
    assert!(r.body.contains("Sign in with your organization"));

    let cookie = s.portal_session(&ep).await;
    assert!(cookie.starts_with("cvpn_portal="));
    let mine = s.connection(&ep, "alice@example.test", [10, 9, 0, 2]);
    let theirs = s.connection(&ep, "bob@example.test", [10, 9, 0, 3]);
    let page = request("GET", &portal, Some(&cookie)).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Your VPNs") && page.body.contains("10.9.0.2"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("10.9.0.3"), "only her own sessions");
    let csrf = csrf_of(&page.body);

    // Without the page's token: refused, nothing ended.
    let r = post_form(
        &format!("{portal}/disconnect"),
        Some(&cookie),
        &[("csrf", "wrong"), ("connection_id", &mine)],
    )
    .await;
    assert_eq!(r.status, 403);
    // Someone else's session: refused.
    let r = post_form(
        &format!("{portal}/disconnect"),
        Some(&cookie),
        &[("csrf", &csrf), ("connection_id", &theirs)],
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(s.events.try_recv().is_err(), "nothing terminated");
    // Her own: ended.
    let r = post_form(
        &format!("{portal}/disconnect"),
        Some(&cookie),
        &[("csrf", &csrf), ("connection_id", &mine)],
    )
    .await;
    assert_eq!(r.status, 303);
    match s.events.try_recv() {
        Ok(crate::api::ControlEvent::Terminate { connection_ids, .. }) => {
            assert_eq!(connection_ids, vec![mine.clone()])
        }
        other => panic!("{other:?}"),
    }

    // The profile: only through the page's own link, which carries the session's token (a
    // download issues a certificate; another site's link must not).
    assert!(
        page.body
            .contains(&format!("profile.ovpn?endpoint={ep}&amp;csrf={csrf}")),
        "{}",
        page.body
    );
    for forged in ["", "?csrf=wrong"] {
        let r = request(
            "GET",
            &format!("{portal}/profile.ovpn{forged}"),
            Some(&cookie),
        )
        .await;
        assert_eq!(r.status, 403, "{forged}: {}", r.body);
    }
    assert_eq!(s.web.api.store.portal_downloads(&ep).unwrap(), 0);
    // With it: a download, counted.
    let download = format!("{portal}/profile.ovpn?csrf={csrf}");
    let r = request("GET", &download, Some(&cookie)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("setenv IV_SSO webauth") && r.body.contains("<ca>"),
        "{}",
        r.body
    );
    assert_eq!(s.web.api.store.portal_downloads(&ep).unwrap(), 1);

    // The cookie is this portal's only.
    let other = s.portal_endpoint(true);
    let r = request("GET", &format!("{}/portal/{other}", s.base), Some(&cookie)).await;
    assert!(r.body.contains("Sign in with your organization"));

    // Signing out without the token does nothing; with it, the session is gone.
    let r = post_form(
        &format!("{portal}/logout"),
        Some(&cookie),
        &[("csrf", "wrong")],
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(request("GET", &portal, Some(&cookie))
        .await
        .body
        .contains("Your VPNs"));
    post_form(
        &format!("{portal}/logout"),
        Some(&cookie),
        &[("csrf", &csrf)],
    )
    .await;
    assert!(request("GET", &portal, Some(&cookie))
        .await
        .body
        .contains("Sign in with your organization"));

    // An administrator's revoke-user ends the right of sessions begun before it to new
    // profiles (else a revoked user would download a fresh certificate at once).
    let cookie = s.portal_session(&ep).await;
    let page = request("GET", &portal, Some(&cookie)).await;
    let download = format!("{portal}/profile.ovpn?csrf={}", csrf_of(&page.body));
    assert_eq!(request("GET", &download, Some(&cookie)).await.status, 200);
    s.web
        .api
        .store
        .revoke_user_certificates(&ep, "ALICE@example.test")
        .unwrap();
    let r = request("GET", &download, Some(&cookie)).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("ended your access"), "{}", r.body);
    assert_eq!(s.web.api.store.portal_downloads(&ep).unwrap(), 2);
    // The session is over; signing in again is possible (the IdP decides).
    assert!(request("GET", &portal, Some(&cookie))
        .await
        .body
        .contains("Sign in with your organization"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let cookie = s.portal_session(&ep).await;
    let page = request("GET", &portal, Some(&cookie)).await;
    let download = format!("{portal}/profile.ovpn?csrf={}", csrf_of(&page.body));
    assert_eq!(request("GET", &download, Some(&cookie)).await.status, 200);
}

#[tokio::test]
async fn an_endpoint_without_the_portal_has_none() {
    let s = site().await;
    let ep = s.portal_endpoint(false);
    let r = request("GET", &format!("{}/portal/{ep}", s.base), None).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("No self-service portal here"));
    let r = request("POST", &format!("{}/portal/{ep}/sso", s.base), None).await;
    assert_eq!(r.status, 404);
    let r = request(
        "GET",
        &format!("{}/portal/cvpn-endpoint-00000000000000000", s.base),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_portal_sign_in_answer_in_another_browser_is_refused() {
    let s = site().await;
    let ep = s.portal_endpoint(true);
    let r = request("POST", &format!("{}/portal/{ep}/sso", s.base), None).await;
    let url = r.location.unwrap();
    s.token_for(&url);
    let r = request(
        "GET",
        &format!(
            "{}/oidc/callback?code=c&state={}",
            s.base,
            param(&url, "state")
        ),
        Some("cvpn_portal_sso=someone-elses"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.cookie.is_none(), "no session");
    assert_eq!(s.web.portal.session_count(), 0);
}

#[tokio::test]
async fn saml_sp_metadata_is_served_for_the_idp_administrator() {
    let s = site().await;
    let r = request("GET", &format!("{}/saml/metadata", s.base), None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains(&format!("entityID=\"{}/saml/metadata\"", s.base)),
        "{}",
        r.body
    );
    assert!(r
        .body
        .contains(&format!("Location=\"{}/saml/acs\"", s.base)));
}

#[tokio::test]
async fn the_portal_lists_the_vpns_of_the_same_provider_that_the_users_groups_may_use() {
    let s = site().await;
    let idp = s.new_idp();
    let home = s.endpoint_of(&idp, true, "Home VPN");
    let eng = s.endpoint_of(&idp, true, "Engineering VPN");
    let finance = s.endpoint_of(&idp, true, "Finance VPN");
    let hidden = s.endpoint_of(&idp, false, "No-portal VPN");
    let elsewhere = s.endpoint_of(&s.new_idp(), true, "Other IdP VPN");
    let store = &s.web.api.store;
    let rule = |ep: &str, group: Option<&str>| {
        store
            .authorize_rule(&crate::model::AuthorizeRequest {
                protocol: None,
                port_range: None,
                client_vpn_endpoint_id: ep.into(),
                target_network_cidr: "10.88.0.0/24".into(),
                access_group_id: group.map(Into::into),
                authorize_all_groups: group.is_none().then_some(true),
                description: None,
            })
            .unwrap();
    };
    // alice's token says groups eng and ops.
    rule(&home, None);
    rule(&eng, Some("eng"));
    rule(&finance, Some("finance"));
    rule(&hidden, Some("eng"));
    rule(&elsewhere, Some("eng"));
    let cookie = s.portal_session(&home).await;
    let page = request("GET", &format!("{}/portal/{home}", s.base), Some(&cookie)).await;
    assert!(page.body.contains("Home VPN"), "{}", page.body);
    assert!(page.body.contains("Engineering VPN"));
    for absent in ["Finance VPN", "No-portal VPN", "Other IdP VPN"] {
        assert!(
            !page.body.contains(absent),
            "{absent} listed: {}",
            page.body
        );
    }
    // The listed VPN's profile comes from this portal; the others' do not.
    let csrf = csrf_of(&page.body);
    let get = |ep: &str| {
        let url = format!(
            "{}/portal/{home}/profile.ovpn?endpoint={ep}&csrf={csrf}",
            s.base
        );
        let cookie = cookie.clone();
        async move { request("GET", &url, Some(&cookie)).await.status }
    };
    assert_eq!(get(&eng).await, 200);
    assert_eq!(store.portal_downloads(&eng).unwrap(), 1);
    for ep in [&finance, &hidden, &elsewhere] {
        assert_eq!(get(ep).await, 404, "{ep}");
    }
}
