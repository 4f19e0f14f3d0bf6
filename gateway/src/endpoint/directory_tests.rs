//! Directory sign-in in virtual time: what the endpoint asks the directory, what it does with
//! the answers, the auth-token on renegotiations and reconnects, re-checks, the throttle.

use std::time::Duration;

use super::*;
use crate::{
    auth::{
        challenge::static_challenge_password as challenge_password, AuthFailure, AuthRequest,
        DirectoryUser,
    },
    endpoint::DirectoryPolicy,
    model::MfaMode,
    protocol::keymethod::{Credentials, Password},
};

fn policy(mfa: MfaMode) -> LiveSettings {
    LiveSettings {
        session_timeout: Some(Duration::from_secs(8 * 3600)),
        directory: Some(DirectoryPolicy {
            directory_id: "cvpn-directory-0123456789abcdef0".into(),
            mfa,
            recheck: Duration::from_secs(300),
        }),
        ..LiveSettings::default()
    }
}

fn creds(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials {
        username: user.into(),
        password: Password::new(password),
    })
}

fn user(name: &str, groups: &[&str]) -> DirectoryUser {
    DirectoryUser {
        username: name.into(),
        dn: format!("uid={name},ou=people,dc=example,dc=test"),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

impl World {
    /// A new client session from the same host (another source port), with the same
    /// credentials as the last one.
    pub(super) fn reconnect(&mut self, n: u8) {
        let credentials = self.client.credentials.clone();
        self.client = TestClient::new(self.client_tls.clone(), "vpn.example.com", [n; 8]).unwrap();
        self.client.credentials = credentials;
        self.addr.set_port(40000 + u16::from(n));
        self.peer = Peer::Udp(self.addr);
    }

    /// A directory endpoint (no certificates) and a client with these credentials.
    fn directory(mfa: MfaMode, credentials: Option<Credentials>) -> World {
        let mut w = World::build(policy(mfa), false);
        w.client.credentials = credentials;
        w
    }

    /// The checks asked of the directory so far (each once), oldest first.
    fn asked(&mut self) -> Vec<(ConnId, AuthRequest)> {
        let mut out = Vec::new();
        self.seen.retain(|o| match o {
            Output::Authenticate { conn, request } => {
                out.push((*conn, request.clone()));
                false
            }
            _ => true,
        });
        out
    }

    /// Keeps the admitted client alive (a packet a minute) for `minutes`, answering every
    /// re-check with `groups`; returns the re-checks asked.
    fn live_for(&mut self, minutes: u32, groups: &[&str]) -> Vec<AuthRequest> {
        let ip = self.admitted().expect("admitted");
        let peer_id = self.peer_id();
        let mut asked = Vec::new();
        for _ in 0..minutes {
            self.data(peer_id, &ipv4_udp(ip));
            self.advance(Duration::from_secs(60));
            for (conn, r) in self.asked() {
                if let AuthRequest::Lookup { username } = &r {
                    self.answer(conn, Ok(user(username, groups)));
                }
                asked.push(r);
            }
        }
        asked
    }

    fn answer(&mut self, conn: ConnId, answer: Result<DirectoryUser, AuthFailure>) {
        self.endpoint.handle_auth_answer(self.clock, conn, answer);
        self.exchange();
    }

    fn failure_reasons(&self) -> Vec<String> {
        self.seen
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

    fn groups_changed(&self) -> Vec<Vec<String>> {
        self.seen
            .iter()
            .filter_map(|o| match o {
                Output::GroupsChanged { groups, .. } => Some(groups.clone()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_directory_user_is_admitted_with_the_directorys_name_and_groups_and_gets_a_token() {
    let mut w = World::directory(MfaMode::None, creds("Alice", "s3cret"));
    w.exchange();
    let asked = w.asked();
    let [(
        conn,
        AuthRequest::Login {
            username,
            password,
            code,
        },
    )] = asked.as_slice()
    else {
        panic!("one sign-in asked: {asked:?}");
    };
    assert_eq!(
        (username.as_str(), password.expose(), code),
        ("Alice", "s3cret", &None)
    );
    // Nothing is admitted, nor pushed, before the directory answers.
    assert!(w.admitted().is_none());
    assert!(w.client.message("PUSH_REPLY").is_none());
    w.answer(
        *conn,
        Ok(user("alice", &["cn=eng,dc=example,dc=test", "eng"])),
    );
    let admitted = w.seen.iter().find_map(|o| match o {
        Output::Admitted { groups, record, .. } => Some((groups.clone(), record.clone())),
        _ => None,
    });
    let (groups, record) = admitted.expect("admitted");
    assert_eq!(groups, vec!["cn=eng,dc=example,dc=test", "eng"]);
    assert_eq!(
        record.username.as_deref(),
        Some("alice"),
        "the directory's name"
    );
    let reply = w.client.message("PUSH_REPLY").expect("PUSH_REPLY");
    assert!(reply.contains("auth-token-user YWxpY2U="), "{reply}");
    assert!(reply.contains("auth-token CVPN1."), "{reply}");
}

#[test]
fn missing_or_empty_credentials_are_refused_without_asking_the_directory() {
    for (credentials, reason) in [
        (None, "no-credentials"),
        (creds("alice", ""), "empty-password"),
        (creds("", "x"), "no-credentials"),
    ] {
        let mut w = World::directory(MfaMode::None, credentials);
        w.exchange();
        assert!(w.asked().is_empty(), "{reason}: nothing asked");
        assert!(
            w.client
                .message("AUTH_FAILED")
                .is_some_and(|m| m.len() > "AUTH_FAILED,".len()),
            "{reason}: {:?}",
            w.client.messages
        );
        assert!(
            w.failure_reasons().iter().any(|l| l.contains(reason)),
            "{reason}: {:?}",
            w.failure_reasons()
        );
        assert!(w.admitted().is_none());
    }
}

#[test]
fn with_mfa_the_code_comes_from_the_static_challenge_answer() {
    let mut w = World::directory(MfaMode::Totp, creds("alice", "s3cret"));
    w.exchange();
    assert!(w.asked().is_empty(), "no code: not asked");
    assert!(w.failure_reasons()[0].contains("mfa-code-missing"));

    let mut w = World::directory(
        MfaMode::Totp,
        creds("alice", &challenge_password("s3cret", "123456")),
    );
    w.exchange();
    let asked = w.asked();
    let [(_, AuthRequest::Login { password, code, .. })] = asked.as_slice() else {
        panic!("{asked:?}");
    };
    assert_eq!(password.expose(), "s3cret");
    assert_eq!(code.as_deref(), Some("123456"));
}

#[test]
fn a_refusal_says_why_and_repeated_guesses_are_throttled_without_asking() {
    // The same endpoint, new clients (sessions) from one address.
    let mut w = World::directory(MfaMode::None, creds("alice", "guess"));
    let mut asked_total = 0;
    for i in 0..7u8 {
        if i > 0 {
            w.reconnect(i);
        }
        w.exchange();
        let asked = w.asked();
        asked_total += asked.len();
        for (conn, _) in asked {
            w.answer(conn, Err(AuthFailure::BadPassword));
        }
        let m = w
            .client
            .message("AUTH_FAILED")
            .expect("refused")
            .to_string();
        if i < 5 {
            assert_eq!(m, "AUTH_FAILED,wrong user name or password", "try {i}");
        }
    }
    // Five free failures, the sixth starts the delay: the seventh is not asked at all.
    assert_eq!(asked_total, 6);
    assert!(
        w.failure_reasons()
            .last()
            .is_some_and(|l| l.contains("throttled")),
        "{:?}",
        w.failure_reasons()
    );
    // After the delay, it may try again.
    w.clock.now += Duration::from_secs(2);
    w.clock.wall += Duration::from_secs(2);
    w.reconnect(9);
    w.exchange();
    assert_eq!(w.asked().len(), 1);
}

#[test]
fn renegotiation_uses_the_token_and_rechecks_without_the_password() {
    let mut w = World::directory(MfaMode::None, creds("alice", "s3cret"));
    w.exchange();
    let (conn, _) = w.asked().remove(0);
    // The directory answers after 90 s: re-checks fall at 6.5, 11.5, ... 56.5, 61.5 minutes.
    w.clock.now += Duration::from_secs(90);
    w.clock.wall += Duration::from_secs(90);
    w.answer(conn, Ok(user("alice", &["eng"])));
    assert!(w.admitted().is_some());
    // Minute by minute to the renegotiation at 60 minutes; the client sends its token.
    let mut lookups_when_rekeyed = None;
    for _ in 0..60 {
        let before = w.client.key_id();
        let asked = w.live_for(1, &["eng"]);
        assert!(
            asked
                .iter()
                .all(|r| matches!(r, AuthRequest::Lookup { username } if username == "alice")),
            "only lookups, never the password again: {asked:?}"
        );
        if before != w.client.key_id() {
            lookups_when_rekeyed = Some(asked.len());
        }
    }
    assert_eq!(w.client.key_id(), Some(1), "renegotiated: {:?}", w.seen);
    assert!(w.ended().is_none(), "{:?}", w.seen);
    assert_eq!(w.keyed.len(), 2, "the new keys are installed");
    // The minute of the renegotiation (59.5 to 60.5) has no periodic check: its lookup is
    // the renegotiation's.
    assert_eq!(lookups_when_rekeyed, Some(1));
}

#[test]
fn a_renegotiation_without_this_sessions_token_ends_the_session() {
    let mut w = World::directory(MfaMode::None, creds("alice", "s3cret"));
    w.exchange();
    let (conn, _) = w.asked().remove(0);
    w.answer(conn, Ok(user("alice", &["eng"])));
    // The client forgets the token and presents a (right) password instead: a password at a
    // renegotiation is not checked, so it does not count.
    w.client.credentials = creds("alice", "s3cret");
    w.live_for(61, &["eng"]);
    assert_eq!(w.ended(), Some("auth-token-invalid"), "{:?}", w.seen);
    assert_eq!(w.keyed.len(), 1, "the new keys were never installed");
}

#[test]
fn rechecks_narrow_groups_end_deleted_users_and_survive_an_unreachable_directory() {
    let mut w = World::directory(MfaMode::None, creds("alice", "s3cret"));
    w.exchange();
    let (conn, _) = w.asked().remove(0);
    w.answer(conn, Ok(user("alice", &["eng", "ops"])));
    // Five minutes on: a lookup, no password; the directory dropped a group.
    let asked = w.live_for(5, &["eng"]);
    assert!(
        matches!(asked.as_slice(), [AuthRequest::Lookup { username }] if username == "alice"),
        "{asked:?}"
    );
    assert_eq!(w.groups_changed(), vec![vec!["eng".to_string()]]);
    // Nothing changes: nothing is written.
    w.live_for(5, &["eng"]);
    assert_eq!(w.groups_changed().len(), 1);
    // The directory does not answer: the session keeps its access.
    let ip = w.admitted().unwrap();
    let peer_id = w.peer_id();
    for _ in 0..5 {
        w.data(peer_id, &ipv4_udp(ip));
        w.advance(Duration::from_secs(60));
    }
    assert_eq!(w.asked().len(), 1);
    w.answer(
        conn,
        Err(AuthFailure::DirectoryUnreachable("timeout".into())),
    );
    assert!(w.ended().is_none());
    assert_eq!(w.groups_changed().len(), 1);
    // The user is deleted: the session ends and the client is told.
    for _ in 0..5 {
        w.data(peer_id, &ipv4_udp(ip));
        w.advance(Duration::from_secs(60));
    }
    assert_eq!(w.asked().len(), 1);
    w.answer(conn, Err(AuthFailure::UnknownUser));
    assert_eq!(w.ended(), Some("unknown-user"));
    assert!(w.client.message("HALT").is_some());
}

#[test]
fn a_reconnect_with_the_token_skips_the_password_but_not_the_directory() {
    let mut w = World::directory(
        MfaMode::Totp,
        creds("alice", &challenge_password("s3cret", "123456")),
    );
    w.exchange();
    let (conn, _) = w.asked().remove(0);
    w.answer(conn, Ok(user("alice", &["eng"])));
    let token = w.client.credentials.clone().expect("token from the push");
    assert!(token.password.expose().starts_with("CVPN1."));
    // The network drops; the client comes back (new session) with its token.
    w.reconnect(2);
    w.client.credentials = Some(token.clone());
    w.exchange();
    let asked = w.asked();
    assert!(
        matches!(asked.as_slice(), [(_, AuthRequest::Lookup { username })] if username == "alice"),
        "a lookup, no code asked again: {asked:?}"
    );
    let (c2, _) = asked[0].clone();
    w.answer(c2, Ok(user("alice", &["eng"])));
    assert!(w.client.message("PUSH_REPLY").is_some());
    // A token presented for another user name is refused.
    w.reconnect(3);
    w.client.credentials = Some(Credentials {
        username: "mallory".into(),
        password: token.password.clone(),
    });
    w.exchange();
    assert!(w.asked().is_empty());
    assert!(w
        .failure_reasons()
        .iter()
        .any(|l| l.contains("auth-token-invalid")));
}

#[test]
fn a_terminated_sessions_token_no_longer_signs_in() {
    let mut w = World::directory(MfaMode::None, creds("alice", "s3cret"));
    w.exchange();
    let (conn, _) = w.asked().remove(0);
    w.answer(conn, Ok(user("alice", &["eng"])));
    let token = w.client.credentials.clone().expect("token");
    w.endpoint.handle_command(
        w.clock,
        Command::Terminate {
            connection_ids: vec![],
            usernames: vec!["alice".into()],
        },
    );
    w.exchange();
    assert_eq!(w.ended(), Some("terminated"));
    w.reconnect(4);
    w.client.credentials = Some(token);
    w.exchange();
    assert!(w.asked().is_empty(), "refused before any lookup");
    assert!(w
        .failure_reasons()
        .iter()
        .any(|l| l.contains("auth-token-invalid")));
}

#[test]
fn certificate_and_directory_both_must_pass() {
    let mut w = World::build(policy(MfaMode::None), true);
    w.client.credentials = creds("alice", "s3cret");
    w.exchange();
    let (conn, _) = w.asked().remove(0);
    w.answer(conn, Err(AuthFailure::AccountDisabled));
    assert_eq!(
        w.client.message("AUTH_FAILED"),
        Some("AUTH_FAILED,your account is disabled: ask your administrator")
    );
    assert!(w.admitted().is_none());
    // With a good answer the session's groups are the certificate's and the directory's.
    let mut w = World::build(policy(MfaMode::None), true);
    w.client.credentials = creds("alice", "s3cret");
    w.exchange();
    let (conn, _) = w.asked().remove(0);
    w.answer(conn, Ok(user("alice", &["eng-ad"])));
    let groups = w.seen.iter().find_map(|o| match o {
        Output::Admitted { groups, .. } => Some(groups.clone()),
        _ => None,
    });
    assert_eq!(
        groups,
        Some(vec!["eng-ad".to_string(), "engineering".to_string()])
    );
}

#[test]
fn clients_that_can_answer_cr_text_are_asked_for_their_code_in_the_same_session() {
    let mut w = World::directory(MfaMode::Totp, creds("alice", "s3cret"));
    w.client.peer_info.push_str("IV_SSO=webauth,crtext\n");
    w.exchange();
    // Not refused: asked, and nothing goes to the directory before the code.
    assert!(w.asked().is_empty());
    assert!(
        w.client.message("AUTH_PENDING").is_some(),
        "{:?}",
        w.client.messages
    );
    assert_eq!(
        w.client.message("INFO_PRE"),
        Some("INFO_PRE,CR_TEXT:R,E:Enter MFA code")
    );
    // An answer that is not base64 would be a wrong code; this one is right.
    w.client
        .send_control_text(b"CR_RESPONSE,MTIzNDU2\0")
        .unwrap();
    w.exchange();
    let asked = w.asked();
    let [(
        conn,
        AuthRequest::Login {
            username,
            password,
            code,
        },
    )] = asked.as_slice()
    else {
        panic!("{asked:?}");
    };
    assert_eq!(
        (username.as_str(), password.expose(), code.as_deref()),
        ("alice", "s3cret", Some("123456"))
    );
    w.answer(*conn, Ok(user("alice", &["eng"])));
    assert!(w.client.message("PUSH_REPLY").is_some());
    // A second answer changes nothing.
    w.client
        .send_control_text(b"CR_RESPONSE,OTk5OTk5\0")
        .unwrap();
    w.exchange();
    assert!(w.asked().is_empty());
}

#[test]
fn an_unanswered_cr_text_question_ends_the_attempt_after_its_timeout() {
    let mut w = World::directory(MfaMode::Totp, creds("alice", "s3cret"));
    w.client.peer_info.push_str("IV_SSO=crtext\n");
    w.exchange();
    assert!(w.client.message("INFO_PRE").is_some());
    w.advance(super::super::CODE_ANSWER_TIMEOUT - Duration::from_secs(1));
    assert!(w.failure_reasons().is_empty(), "not yet");
    w.advance(Duration::from_secs(1));
    assert!(
        w.failure_reasons()
            .iter()
            .any(|l| l.contains("mfa-code-missing")),
        "{:?}",
        w.failure_reasons()
    );
    assert!(w.client.message("AUTH_FAILED").is_some());
    assert!(
        w.asked().is_empty(),
        "the password never went to the directory"
    );
}
