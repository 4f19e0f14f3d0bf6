//! Web sign-in (single sign-on) in virtual time: `AUTH_PENDING` and the `WEB_AUTH` URL, the
//! answer pushed at once, abandoned sign-ins, clients that cannot sign in through a browser,
//! the auth-token on reconnects, and refreshes at the identity provider.

use std::time::Duration;

use super::*;
use crate::{
    auth::{AuthFailure, AuthRequest, DirectoryUser},
    endpoint::SsoPolicy,
    protocol::keymethod::{Credentials, Password},
};

const BASE: &str = "https://vpn.example.test:8443";

fn sso(certificates: bool) -> World {
    let live = LiveSettings {
        session_timeout: Some(Duration::from_secs(8 * 3600)),
        sso: Some(SsoPolicy {
            idp_id: "idp-0123456789abcdef0".into(),
            sign_in_base: BASE.into(),
            sign_in_timeout: Duration::from_secs(300),
            recheck: Duration::from_secs(900),
        }),
        ..LiveSettings::default()
    };
    let mut w = World::build(live, certificates);
    w.client.peer_info = format!(
        "{}IV_SSO=webauth,crtext\n",
        crate::endpoint::test_client::PEER_INFO
    );
    // What a profile for clients without a certificate carries: placeholders, not an identity.
    if !certificates {
        w.client.credentials = Some(Credentials {
            username: "sso".into(),
            password: Password::new("sso"),
        });
    }
    w
}

fn asked(w: &mut World) -> Vec<(ConnId, AuthRequest)> {
    let mut out = Vec::new();
    w.seen.retain(|o| match o {
        Output::Authenticate { conn, request } => {
            out.push((*conn, request.clone()));
            false
        }
        _ => true,
    });
    out
}

fn user(name: &str, groups: &[&str]) -> DirectoryUser {
    DirectoryUser {
        username: name.into(),
        dn: "subject-1".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn answer(w: &mut World, conn: ConnId, a: Result<DirectoryUser, AuthFailure>) {
    w.endpoint.handle_auth_answer(w.clock, conn, a);
    w.exchange();
}

fn failures(w: &World) -> Vec<String> {
    w.seen
        .iter()
        .filter_map(|o| match o {
            Output::Log(e) => {
                let line = e.to_json_line();
                line.contains("\"failed\"").then_some(line)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_web_sign_in_tells_the_url_and_pushes_at_once_when_the_idp_answers() {
    let mut w = sso(false);
    w.exchange();
    let pending = w.client.message("AUTH_PENDING").expect("AUTH_PENDING");
    assert_eq!(pending, "AUTH_PENDING,timeout 300");
    let url = w
        .client
        .message("INFO_PRE,WEB_AUTH::")
        .expect("WEB_AUTH")
        .trim_start_matches("INFO_PRE,WEB_AUTH::")
        .to_string();
    let asked = asked(&mut w);
    let [(conn, AuthRequest::WebSignIn(s))] = asked.as_slice() else {
        panic!("one web sign-in asked: {asked:?}");
    };
    assert_eq!(url, format!("{BASE}/s/{}", s.id));
    assert_eq!(s.id.len(), 22, "128 bits, base64url");
    assert!(url.len() < 200, "the 2.6 client's buffer is 256 bytes");
    assert_eq!(s.platform.as_deref(), Some("linux"));
    assert_eq!(s.common_name, None, "no certificate");
    // Nothing is admitted before the user signs in, however often the client asks.
    w.advance(Duration::from_secs(20));
    assert!(w.admitted().is_none());
    assert!(w.client.message("PUSH_REPLY").is_none());
    answer(&mut w, *conn, Ok(user("alice@example.test", &["eng"])));
    let groups = w.seen.iter().find_map(|o| match o {
        Output::Admitted { groups, record, .. } => Some((groups.clone(), record.username.clone())),
        _ => None,
    });
    assert_eq!(
        groups,
        Some((
            vec!["eng".to_string()],
            Some("alice@example.test".to_string())
        ))
    );
    let reply = w.client.message("PUSH_REPLY").expect("pushed at once");
    assert!(reply.contains("auth-token CVPN1."), "{reply}");
}

#[test]
fn the_approval_page_learns_the_certificate_name_of_a_certificate_and_sso_client() {
    let mut w = sso(true);
    w.exchange();
    let asked = asked(&mut w);
    let [(_, AuthRequest::WebSignIn(s))] = asked.as_slice() else {
        panic!("{asked:?}");
    };
    assert!(s.common_name.as_deref().is_some_and(|c| !c.is_empty()));
}

#[test]
fn a_client_without_web_sign_in_is_told_what_to_add() {
    let mut w = sso(false);
    w.client.peer_info = crate::endpoint::test_client::PEER_INFO.to_string();
    w.exchange();
    assert!(asked(&mut w).is_empty());
    let m = w
        .client
        .message("AUTH_FAILED")
        .expect("refused")
        .to_string();
    assert!(m.contains("setenv IV_SSO webauth"), "{m}");
    assert!(failures(&w)[0].contains("web-sign-in-unsupported"));
}

#[test]
fn an_abandoned_sign_in_ends_at_its_deadline_with_its_reason() {
    let mut w = sso(false);
    w.exchange();
    let (conn, _) = asked(&mut w).remove(0);
    // The client asks for its configuration every 5 s meanwhile (as 2.6 clients do).
    for _ in 0..59 {
        w.advance(Duration::from_secs(5));
        w.client.send_control_text(b"PUSH_REQUEST\0").unwrap();
        w.exchange();
    }
    assert!(
        w.client.message("AUTH_FAILED").is_none(),
        "{:?}",
        failures(&w)
    );
    w.advance(Duration::from_secs(6));
    let m = w
        .client
        .message("AUTH_FAILED")
        .expect("refused")
        .to_string();
    assert!(m.contains("not finished in time"), "{m}");
    assert!(failures(&w)
        .iter()
        .any(|l| l.contains("web-sign-in-timeout")));
    // A late answer changes nothing.
    answer(&mut w, conn, Ok(user("alice", &["eng"])));
    assert!(w.admitted().is_none());
}

#[test]
fn an_idp_refusal_is_an_auth_failed_with_its_reason() {
    let mut w = sso(false);
    w.exchange();
    let (conn, _) = asked(&mut w).remove(0);
    answer(
        &mut w,
        conn,
        Err(AuthFailure::IdpRefused("access_denied".into())),
    );
    assert!(w.client.message("AUTH_FAILED").is_some());
    assert!(failures(&w).iter().any(|l| l.contains("idp-refused")));
    assert!(w.admitted().is_none());
}

#[test]
fn a_reconnect_with_the_token_resumes_without_a_browser_and_a_refusal_at_refresh_ends_it() {
    let mut w = sso(false);
    w.exchange();
    let (conn, _) = asked(&mut w).remove(0);
    answer(&mut w, conn, Ok(user("alice@example.test", &["eng"])));
    assert!(w.admitted().is_some());
    // The client reconnects (its token replaced the placeholder password).
    w.reconnect(3);
    w.exchange();
    assert!(
        w.client.message("INFO_PRE,WEB_AUTH").is_none(),
        "no second sign-in"
    );
    let asked_now = asked(&mut w);
    let [(conn, AuthRequest::SsoSession { username, session })] = asked_now.as_slice() else {
        panic!("{asked_now:?}");
    };
    assert_eq!(username, "alice@example.test");
    assert!(!session.is_empty());
    answer(
        &mut w,
        *conn,
        Ok(user("alice@example.test", &["eng", "ops"])),
    );
    assert!(w.client.message("PUSH_REPLY").is_some());
    // At the re-check the provider refuses (user disabled): the session ends.
    w.advance(Duration::from_secs(60));
    let ip = w.admitted().expect("admitted");
    let peer_id = w.peer_id();
    let mut refused = false;
    for _ in 0..20 {
        w.data(peer_id, &ipv4_udp(ip));
        w.advance(Duration::from_secs(60));
        for (c, r) in asked(&mut w) {
            assert!(matches!(r, AuthRequest::SsoSession { .. }), "{r:?}");
            answer(
                &mut w,
                c,
                Err(AuthFailure::IdpRefused("invalid_grant".into())),
            );
            refused = true;
        }
        if refused {
            break;
        }
    }
    assert!(refused, "re-checked within the interval");
    assert!(w.client.message("HALT").is_some() || w.client.message("AUTH_FAILED").is_some());
}

#[test]
fn a_forged_or_foreign_token_does_not_skip_the_browser() {
    let mut w = sso(false);
    w.client.credentials = Some(Credentials {
        username: "alice".into(),
        password: Password::new(
            "CVPN1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
    });
    w.exchange();
    assert!(asked(&mut w).is_empty());
    assert!(w.client.message("AUTH_FAILED").is_some());
    assert!(w.admitted().is_none());
}
