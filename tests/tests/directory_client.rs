//! The directory client (`gateway::auth::ldap::LdapDirectory`) against real directories, no
//! mocks: OpenLDAP's slapd on loopback (one per test) and a Samba Active Directory DC in a
//! namespace of its own (one per test binary, see `cvpn_tests::directory_servers`).
//!
//! The only stand-ins are two kinds of broken server for failover and deadlines: a port
//! nothing listens on, and a TCP listener that accepts and never answers (or records what it
//! is sent first).

use std::{
    future::Future,
    time::{Duration, Instant},
};

use cvpn_tests::{
    directory_servers::{free_port, SambaAd, Slapd},
    is_root,
};
use gateway::{
    auth::{
        ldap::{LdapConfigError, LdapDirectory},
        AuthFailure, DirectoryUser,
    },
    model::{
        directory::{Directory, DirectoryPreset, DirectorySecrets, GroupMode, MfaMode},
        Timestamp,
    },
};
use tokio::{io::AsyncReadExt, net::TcpListener};

const ALICE_PW: &str = "alice secret";
const BOB_PW: &str = "bob secret";

fn directory(preset: DirectoryPreset, urls: Vec<String>, base_dn: &str) -> Directory {
    Directory {
        directory_id: "cvpn-directory-0123456789abcdef0".into(),
        name: "test".into(),
        description: None,
        urls,
        base_dn: base_dn.into(),
        bind_dn: None,
        bind_password_set: false,
        preset,
        user_filter: preset.default_user_filter().into(),
        groups: preset.default_groups(),
        ca_pem: None,
        allow_plaintext: false,
        realm: None,
        timeout_ms: 5_000,
        recheck_seconds: 300,
        mfa: MfaMode::None,
        radius_server: None,
        radius_timeout_ms: 3_000,
        radius_retries: 3,
        radius_secret_set: false,
        creation_time: Timestamp(0),
    }
}

fn secrets(pw: &str) -> DirectorySecrets {
    DirectorySecrets {
        bind_password: Some(pw.into()),
        radius_secret: None,
    }
}

/// The slapd directory with the service account, over `urls`.
fn openldap(s: &Slapd, urls: Vec<String>, groups: GroupMode) -> (Directory, DirectorySecrets) {
    let mut d = directory(DirectoryPreset::Openldap, urls, s.base_dn());
    d.bind_dn = Some(s.bind_dn().into());
    d.bind_password_set = true;
    d.ca_pem = Some(s.ca_pem().into());
    d.groups = groups;
    (d, secrets(s.bind_password()))
}

fn client(d: &Directory, s: &DirectorySecrets) -> LdapDirectory {
    LdapDirectory::new(d, s).expect("valid directory settings")
}

/// alice in devs, devs in eng (nested); bob in nothing.
fn populate(s: &Slapd) -> (String, String, String) {
    let alice = s.add_user("alice", ALICE_PW).expect("add alice");
    s.add_user("bob", BOB_PW).expect("add bob");
    let devs = s.add_group("devs", &[&alice]).expect("devs");
    let eng = s.add_group("eng", &[&devs]).expect("eng");
    (alice, devs, eng)
}

fn assert_groups(user: &DirectoryUser, expected: &[&str]) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(user.groups, want, "groups of {}", user.username);
}

/// slapd's stats log lines that bind as `dn`.
fn binds_as(s: &Slapd, dn: &str) -> usize {
    let needle = format!("BIND dn=\"{dn}\"");
    s.log().lines().filter(|l| l.contains(&needle)).count()
}

/// A listener on 127.0.0.1 that accepts connections and never answers; returns its URL.
async fn silent_server(scheme: &str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = l.accept().await {
            held.push(conn);
        }
    });
    format!("{scheme}://127.0.0.1:{port}")
}

async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let r = f.await;
    (r, t.elapsed())
}

#[tokio::test]
async fn openldap_sign_in_with_nested_groups_in_both_group_modes() {
    let s = Slapd::start().expect("slapd");
    let (alice, devs, eng) = populate(&s);
    let all = ["devs", devs.as_str(), "eng", eng.as_str()];

    // groupOfNames searched recursively by the client, over StartTLS.
    let (d, sec) = openldap(&s, vec![s.url()], GroupMode::Groupofnames);
    let user = client(&d, &sec)
        .authenticate("alice", ALICE_PW)
        .await
        .expect("alice signs in");
    assert_eq!(user.username, "alice");
    assert_eq!(user.dn, alice);
    assert_groups(&user, &all);
    // The directory's spelling is the canonical name.
    let user = client(&d, &sec)
        .authenticate("ALICE", ALICE_PW)
        .await
        .expect("names match case-insensitively");
    assert_eq!(user.username, "alice");

    // memberOf computed by slapd's dynlist overlay (nested included), over LDAPS.
    let (d, sec) = openldap(&s, vec![s.ldaps_url()], GroupMode::Memberof);
    let user = client(&d, &sec)
        .authenticate("alice", ALICE_PW)
        .await
        .expect("alice signs in");
    assert_groups(&user, &all);
    let bob = client(&d, &sec)
        .authenticate("bob", BOB_PW)
        .await
        .expect("bob signs in");
    assert_eq!(bob.groups, Vec::<String>::new());

    // No service account: anonymous search (this slapd lets anyone read).
    let mut anon = d.clone();
    anon.bind_dn = None;
    anon.bind_password_set = false;
    let user = client(&anon, &DirectorySecrets::default())
        .authenticate("alice", ALICE_PW)
        .await
        .expect("alice signs in after an anonymous search");
    assert_groups(&user, &all);
}

#[tokio::test]
async fn openldap_refusals_and_hostile_names() {
    let s = Slapd::start().expect("slapd");
    let (alice, _, _) = populate(&s);
    let (d, sec) = openldap(&s, vec![s.ldaps_url()], GroupMode::Groupofnames);
    let dir = client(&d, &sec);

    // Empty password: refused before any network I/O (no connection, no bind).
    let accepts = s.log().matches("ACCEPT from").count();
    let (r, took) = timed(dir.authenticate("alice", "")).await;
    assert_eq!(r, Err(AuthFailure::EmptyPassword));
    assert!(took < Duration::from_millis(50), "took {took:?}");

    assert_eq!(
        dir.authenticate("alice", "wrong").await,
        Err(AuthFailure::BadPassword)
    );
    assert_eq!(
        dir.authenticate("nobody", "whatever").await,
        Err(AuthFailure::UnknownUser)
    );
    assert_eq!(dir.lookup("nobody").await, Err(AuthFailure::UnknownUser));
    // The wrong password's bind is in the log, and it is the only bind as alice: the empty
    // one never reached the server.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(binds_as(&s, &alice), 1, "{}", s.log());
    assert!(s.log().matches("ACCEPT from").count() > accepts);

    // Filter injection: escaped, so these match nobody (unescaped, `*` would match both users
    // and the sign-in would be ambiguous or worse).
    for name in [
        "*",
        "a*",
        "alice)(uid=*",
        "*)(|(uid=*",
        "alice\\2a",
        "alice)(|(objectClass=*",
    ] {
        assert_eq!(
            dir.authenticate(name, ALICE_PW).await,
            Err(AuthFailure::UnknownUser),
            "{name:?}"
        );
        assert_eq!(
            dir.lookup(name).await,
            Err(AuthFailure::UnknownUser),
            "{name:?}"
        );
    }
    // Control characters and overlong names: refused without a query.
    for name in ["a\0b", "alice\0", "alice\n", &"a".repeat(257)] {
        assert_eq!(
            dir.authenticate(name, ALICE_PW).await,
            Err(AuthFailure::UnknownUser),
            "{name:?}"
        );
    }

    // A wrong service-account password is the directory's problem, not the user's.
    let bad_service = client(&d, &secrets("not the reader's password"));
    match bad_service.authenticate("alice", ALICE_PW).await {
        Err(AuthFailure::DirectoryError(m)) => {
            assert!(
                m.contains("service account bind") && m.contains("49"),
                "{m}"
            )
        }
        other => panic!("expected DirectoryError, got {other:?}"),
    }
    // A filter matching several entries is ambiguous.
    let mut loose = d.clone();
    loose.user_filter = "(|(uid={username})(objectClass=inetOrgPerson))".into();
    match client(&loose, &sec).authenticate("alice", ALICE_PW).await {
        Err(AuthFailure::DirectoryError(m)) => assert!(m.contains("more than one"), "{m}"),
        other => panic!("expected DirectoryError, got {other:?}"),
    }
}

#[tokio::test]
async fn openldap_tls_is_verified() {
    let s = Slapd::start().expect("slapd");
    populate(&s);
    let foreign = cvpn_tests::pki::Ca::new("some other CA")
        .expect("ca")
        .cert_pem();
    for url in [s.url(), s.ldaps_url()] {
        let (d, sec) = openldap(&s, vec![url.clone()], GroupMode::Memberof);
        client(&d, &sec)
            .authenticate("alice", ALICE_PW)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut wrong = d.clone();
        wrong.ca_pem = Some(foreign.clone());
        match client(&wrong, &sec).authenticate("alice", ALICE_PW).await {
            Err(AuthFailure::DirectoryUnreachable(m)) => {
                assert!(m.contains(&url) && m.contains("certificate"), "{m}")
            }
            other => panic!("{url} with a foreign CA: {other:?}"),
        }
        // No CA bundle: the system's roots do not know the test CA either.
        let mut system = d.clone();
        system.ca_pem = None;
        if let Ok(dir) = LdapDirectory::new(&system, &sec) {
            assert!(matches!(
                dir.authenticate("alice", ALICE_PW).await,
                Err(AuthFailure::DirectoryUnreachable(_))
            ));
        }
    }
    // A CA bundle that is not PEM is refused up front.
    let (mut d, sec) = openldap(&s, vec![s.ldaps_url()], GroupMode::Memberof);
    d.ca_pem = Some("not a certificate".into());
    assert!(matches!(
        LdapDirectory::new(&d, &sec),
        Err(LdapConfigError::BadCaPem(_))
    ));
}

/// What a client sends first to `url`'s listener (which then hangs up).
async fn first_message(
    d: Directory,
    sec: DirectorySecrets,
    l: TcpListener,
) -> (Vec<u8>, AuthFailure) {
    let reader = tokio::spawn(async move {
        let (mut conn, _) = l.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf))
            .await
            .expect("the client sends something")
            .expect("read");
        buf.truncate(n);
        buf
    });
    let r = client(&d, &sec).authenticate("alice", ALICE_PW).await;
    let first = reader.await.expect("reader");
    (first, r.expect_err("the listener never answers"))
}

#[tokio::test]
async fn plain_ldap_only_when_allowed() {
    let s = Slapd::start().expect("slapd");
    populate(&s);
    const STARTTLS_OID: &[u8] = b"1.3.6.1.4.1.1466.20037";

    // ldap:// without allow_plaintext: StartTLS is the first thing on the wire; no bind (no
    // DN, no password) in clear, and no falling back to plain when StartTLS fails.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ldap://127.0.0.1:{}", l.local_addr().expect("addr").port());
    let (d, sec) = openldap(&s, vec![url.clone()], GroupMode::Memberof);
    let (first, failure) = first_message(d.clone(), sec.clone(), l).await;
    assert!(
        first.windows(STARTTLS_OID.len()).any(|w| w == STARTTLS_OID),
        "{first:?}"
    );
    assert!(!first.windows(6).any(|w| w == b"reader"), "{first:?}");
    assert!(
        matches!(failure, AuthFailure::DirectoryUnreachable(_)),
        "{failure:?}"
    );

    // With allow_plaintext, the same URL speaks plain LDAP: the service bind comes first.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut plain = d.clone();
    plain.urls = vec![format!(
        "ldap://127.0.0.1:{}",
        l.local_addr().expect("addr").port()
    )];
    plain.allow_plaintext = true;
    let (first, _) = first_message(plain, sec.clone(), l).await;
    assert!(!first.windows(STARTTLS_OID.len()).any(|w| w == STARTTLS_OID));
    assert!(first.windows(6).any(|w| w == b"reader"), "{first:?}");

    // And against slapd: StartTLS without allow_plaintext, plain with it; both sign in.
    let (d, sec) = openldap(&s, vec![s.url()], GroupMode::Memberof);
    client(&d, &sec)
        .authenticate("alice", ALICE_PW)
        .await
        .expect("StartTLS");
    let mut plain = d.clone();
    plain.allow_plaintext = true;
    plain.ca_pem = None;
    client(&plain, &sec)
        .authenticate("alice", ALICE_PW)
        .await
        .expect("plain LDAP when allowed");
    // Unsupported URLs are refused up front, saying what to write.
    let mut bad = d.clone();
    bad.urls = vec!["ldapi:///run/slapd/ldapi".into()];
    let e = LdapDirectory::new(&bad, &sec).expect_err("ldapi refused");
    assert!(e.to_string().contains("ldaps://"), "{e}");
}

/// A server that answers every request with `reply` (plain LDAP); returns its URL.
async fn answering_server(reply: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("ldap://127.0.0.1:{port}")
}

#[tokio::test]
async fn malformed_answers_are_errors_not_panics() {
    // Each answers message 1 (the service bind): a BindResponse without its fields, one whose
    // result code is not an ENUMERATED, and a search entry instead of a bind response.
    for reply in [
        &[0x30, 0x05, 0x02, 0x01, 0x01, 0x61, 0x00][..],
        &[
            0x30, 0x0c, 0x02, 0x01, 0x01, 0x61, 0x07, 0x04, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
        ],
        &[
            0x30, 0x09, 0x02, 0x01, 0x01, 0x64, 0x04, 0x04, 0x00, 0x30, 0x00,
        ],
    ] {
        let mut d = directory(
            DirectoryPreset::Openldap,
            vec![answering_server(reply).await],
            "dc=example,dc=test",
        );
        d.allow_plaintext = true;
        d.bind_dn = Some("cn=reader,dc=example,dc=test".into());
        d.timeout_ms = 1_000;
        let (r, took) = timed(client(&d, &secrets("x")).authenticate("alice", ALICE_PW)).await;
        // (ldap3 panics on these; the client's attempt task turns that into an error.)
        assert!(
            matches!(&r, Err(AuthFailure::DirectoryError(m)) if m.contains("malformed")),
            "{reply:02x?}: {r:?}"
        );
        assert!(took < Duration::from_millis(1_300), "{took:?}");
    }
}

#[tokio::test]
async fn failover_to_the_next_server_within_the_deadline() {
    let s = Slapd::start().expect("slapd");
    populate(&s);
    let dead = format!("ldaps://127.0.0.1:{}", free_port().expect("port"));
    let silent = silent_server("ldaps").await;
    for first in [dead.clone(), silent.clone()] {
        let (mut d, sec) = openldap(&s, vec![first.clone(), s.ldaps_url()], GroupMode::Memberof);
        d.timeout_ms = 2_000;
        let (r, took) = timed(client(&d, &sec).authenticate("alice", ALICE_PW)).await;
        let user = r.unwrap_or_else(|e| panic!("first {first}: {e}"));
        assert_eq!(user.username, "alice");
        assert!(
            took < Duration::from_millis(2_000),
            "{first}: took {took:?}"
        );
        let (r, _) = timed(client(&d, &sec).lookup("alice")).await;
        assert!(r.is_ok(), "lookup after {first}: {r:?}");
    }
    // Both dead: unreachable, naming both.
    let (mut d, sec) = openldap(&s, vec![dead.clone(), silent.clone()], GroupMode::Memberof);
    d.timeout_ms = 1_000;
    match client(&d, &sec).authenticate("alice", ALICE_PW).await {
        Err(AuthFailure::DirectoryUnreachable(m)) => {
            assert!(m.contains(&dead) && m.contains(&silent), "{m}")
        }
        other => panic!("{other:?}"),
    }

    // A refused bind is an answer: the second server is not asked.
    let s2 = Slapd::start().expect("second slapd");
    populate(&s2);
    let (d, sec) = openldap(&s, vec![s.ldaps_url(), s2.ldaps_url()], GroupMode::Memberof);
    let before = s2.log().matches("ACCEPT from").count();
    assert_eq!(
        client(&d, &sec).authenticate("alice", "wrong").await,
        Err(AuthFailure::BadPassword)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s2.log().matches("ACCEPT from").count(),
        before,
        "{}",
        s2.log()
    );
}

#[tokio::test]
async fn a_silent_directory_fails_at_the_deadline_without_blocking_others() {
    let s = Slapd::start().expect("slapd");
    populate(&s);
    let silent = silent_server("ldaps").await;
    let (mut hanging, sec) = openldap(&s, vec![silent.clone()], GroupMode::Memberof);
    hanging.timeout_ms = 800;
    let (good, _) = openldap(&s, vec![s.ldaps_url()], GroupMode::Memberof);
    let hanging = client(&hanging, &sec);
    let good = client(&good, &sec);
    let started = Instant::now();
    let (stuck, fine) = tokio::join!(timed(hanging.authenticate("alice", ALICE_PW)), async {
        let r = good.authenticate("alice", ALICE_PW).await;
        (r, started.elapsed())
    });
    match &stuck.0 {
        Err(AuthFailure::DirectoryUnreachable(m)) => {
            assert_eq!(m, &format!("{silent}: no answer within 800 ms"))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        stuck.1 >= Duration::from_millis(780) && stuck.1 < Duration::from_millis(1_300),
        "took {:?}",
        stuck.1
    );
    assert!(fine.0.is_ok(), "{:?}", fine.0);
    assert!(
        fine.1 < Duration::from_millis(600),
        "the other sign-in waited {:?}",
        fine.1
    );
    // A silent StartTLS server (the StartTLS request is never answered) too.
    let (mut st, sec) = openldap(&s, vec![silent_server("ldap").await], GroupMode::Memberof);
    st.timeout_ms = 300;
    let (r, took) = timed(client(&st, &sec).lookup("alice")).await;
    assert!(
        matches!(r, Err(AuthFailure::DirectoryUnreachable(_))),
        "{r:?}"
    );
    assert!(took < Duration::from_millis(800), "{took:?}");
}

#[tokio::test]
async fn lookup_sees_group_changes_and_deletion() {
    let s = Slapd::start().expect("slapd");
    let (alice, devs, eng) = populate(&s);
    let carol = s.add_user("carol", "carol secret").expect("carol");
    s.add_member("devs", &carol).expect("carol in devs");
    let ops = s.add_group("ops", &[&alice, &carol]).expect("ops");
    // A cycle: ops in loop1, loop1 in ops... via loop1 ↔ loop2.
    let loop1 = s.add_group("loop1", &[&ops]).expect("loop1");
    let loop2 = s.add_group("loop2", &[&loop1]).expect("loop2");
    s.add_member("loop1", &loop2).expect("cycle");
    let (d, sec) = openldap(&s, vec![s.ldaps_url()], GroupMode::Groupofnames);
    let dir = client(&d, &sec);
    let user = dir.lookup("alice").await.expect("lookup");
    assert_groups(
        &user,
        &[
            "devs", &devs, "eng", &eng, "ops", &ops, "loop1", &loop1, "loop2", &loop2,
        ],
    );
    // Out of ops: ops and what it led to are gone; devs/eng stay.
    s.remove_member("ops", &alice).expect("remove");
    assert_groups(
        &dir.lookup("alice").await.expect("lookup"),
        &["devs", &devs, "eng", &eng],
    );
    let (m, _) = openldap(&s, vec![s.ldaps_url()], GroupMode::Memberof);
    let memberof = client(&m, &sec);
    assert_groups(
        &memberof.lookup("alice").await.expect("lookup"),
        &["devs", &devs, "eng", &eng],
    );
    s.remove_member("devs", &alice).expect("remove");
    assert_groups(&dir.lookup("alice").await.expect("lookup"), &[]);
    assert_groups(&memberof.lookup("alice").await.expect("lookup"), &[]);
    // Deleted: unknown, for checks and sign-ins alike.
    s.delete_user("alice").expect("delete");
    assert_eq!(dir.lookup("alice").await, Err(AuthFailure::UnknownUser));
    assert_eq!(
        dir.authenticate("alice", ALICE_PW).await,
        Err(AuthFailure::UnknownUser)
    );
}

// ---- Samba Active Directory ----

fn require_root() {
    assert!(
        is_root(),
        "the Active Directory tests need root (network namespaces): run `cargo xtask test` as root"
    );
}

fn ad() -> &'static SambaAd {
    require_root();
    SambaAd::shared().expect("Samba AD DC")
}

fn active_directory(ad: &SambaAd, urls: Vec<String>) -> (Directory, DirectorySecrets) {
    let mut d = directory(DirectoryPreset::ActiveDirectory, urls, ad.base_dn());
    d.bind_dn = Some(ad.bind_dn());
    d.bind_password_set = true;
    d.ca_pem = Some(ad.ca_pem().into());
    d.realm = Some(ad.realm().into());
    (d, secrets(ad.bind_password()))
}

#[test]
fn ad_sign_in_by_sam_account_name_and_upn_with_nested_groups_and_sids() {
    let ad = ad();
    let pw = "Pw-for-Ad-42!";
    ad.create_user("nina", pw).expect("user");
    ad.create_group("vpn-g1").expect("g1");
    ad.create_group("vpn-g2").expect("g2");
    ad.add_members("vpn-g1", &["nina"]).expect("nina in g1");
    ad.add_members("vpn-g2", &["vpn-g1"]).expect("g1 in g2");
    let sid1 = ad.sid_of("vpn-g1").expect("sid");
    let sid2 = ad.sid_of("vpn-g2").expect("sid");
    assert!(sid1.starts_with("S-1-5-21-"), "{sid1}");
    let (d, sec) = active_directory(ad, vec![ad.ldaps_url()]);
    let nina_dn = SambaAd::user_dn("nina");
    let mut expected = vec![
        "vpn-g1".to_string(),
        SambaAd::group_dn("vpn-g1"),
        sid1,
        "vpn-g2".to_string(),
        SambaAd::group_dn("vpn-g2"),
        sid2,
        // Every user is in Domain Users (its primary group is not a `member` link, so the
        // in-chain rule does not return it).
    ];
    expected.sort();
    let upn_only = {
        let mut d = d.clone();
        d.realm = None;
        d
    };
    let results = ad
        .block_on(move || async move {
            let dir = LdapDirectory::new(&d, &sec).expect("valid");
            let by_upn = LdapDirectory::new(&upn_only, &sec).expect("valid");
            (
                dir.authenticate("nina", pw).await,
                dir.authenticate("nina@EXAMPLE.TEST", pw).await,
                by_upn.authenticate("nina@example.test", pw).await,
                dir.authenticate("nina", "Wrong-Pw-42!").await,
                dir.authenticate("nobody", pw).await,
                dir.lookup("NINA").await,
                dir.authenticate("nina*", pw).await,
            )
        })
        .expect("in the DC's namespace");
    for (what, r) in [
        ("sAMAccountName", &results.0),
        ("user@REALM", &results.1),
        ("userPrincipalName", &results.2),
        ("lookup", &results.5),
    ] {
        let user = r.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(user.username, "nina", "{what}");
        assert!(
            user.dn.eq_ignore_ascii_case(&nina_dn),
            "{what}: {}",
            user.dn
        );
        assert_eq!(user.groups, expected, "{what}");
    }
    assert_eq!(results.3, Err(AuthFailure::BadPassword));
    assert_eq!(results.4, Err(AuthFailure::UnknownUser));
    assert_eq!(results.6, Err(AuthFailure::UnknownUser));
}

#[test]
fn ad_disabled_account_is_refused() {
    let ad = ad();
    let pw = "Pw-for-Ad-43!";
    ad.create_user("olaf", pw).expect("user");
    ad.disable_user("olaf").expect("disable");
    let (d, sec) = active_directory(ad, vec![ad.ldaps_url()]);
    let (auth, look) = ad
        .block_on(move || async move {
            let dir = LdapDirectory::new(&d, &sec).expect("valid");
            (dir.authenticate("olaf", pw).await, dir.lookup("olaf").await)
        })
        .expect("in the DC's namespace");
    assert_eq!(auth, Err(AuthFailure::AccountDisabled));
    assert_eq!(look, Err(AuthFailure::AccountDisabled));
}

#[test]
fn ad_failover_starttls_and_tls_verification() {
    let ad = ad();
    let pw = "Pw-for-Ad-44!";
    ad.create_user("pia", pw).expect("user");
    let (d, sec) = active_directory(ad, vec!["ldaps://127.0.0.1:1".into(), ad.ldaps_url()]);
    let starttls = {
        let mut d = d.clone();
        d.urls = vec![ad.url()];
        d
    };
    let foreign = {
        let mut d = d.clone();
        d.urls = vec![ad.ldaps_url()];
        d.ca_pem = Some(
            cvpn_tests::pki::Ca::new("not the DC's CA")
                .expect("ca")
                .cert_pem(),
        );
        d
    };
    let (failover, st, wrong_ca) = ad
        .block_on(move || async move {
            let t = Instant::now();
            let failover = LdapDirectory::new(&d, &sec)
                .expect("valid")
                .authenticate("pia", pw)
                .await
                .map(|u| (u, t.elapsed()));
            let st = LdapDirectory::new(&starttls, &sec)
                .expect("valid")
                .authenticate("pia@example.test", pw)
                .await;
            let wrong = LdapDirectory::new(&foreign, &sec)
                .expect("valid")
                .authenticate("pia", pw)
                .await;
            (failover, st, wrong)
        })
        .expect("in the DC's namespace");
    let (user, took) = failover.expect("failover to the DC");
    assert_eq!(user.username, "pia");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(st.expect("StartTLS").username, "pia");
    match wrong_ca {
        Err(AuthFailure::DirectoryUnreachable(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!("{other:?}"),
    }
}
