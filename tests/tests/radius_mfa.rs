//! MFA codes checked by RADIUS (`gateway::auth::radius`): against a real FreeRADIUS 3.2 (right
//! code, wrong code, unknown user, a changed code, answers with and without a
//! Message-Authenticator, a wrong shared secret), and against UDP sockets of the test that never
//! answer, answer from elsewhere, or answer with garbage and forged packets.
//!
//! Needs `freeradius` (`cargo xtask setup` installs it). No root, no namespaces: everything on
//! 127.0.0.1, random ports.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use cvpn_tests::radius_server::{FreeRadius, FreeRadiusOptions};
use gateway::{
    auth::{
        radius::{RadiusClient, MAX_DATAGRAM},
        AuthFailure,
    },
    model::{
        directory::{Directory, DirectoryPreset, DirectorySecrets, GroupMode, MfaMode},
        resources::Timestamp,
    },
};
use radius::core::{code::Code, packet::Packet};

fn directory(server: SocketAddr, timeout_ms: u32, retries: u32) -> Directory {
    Directory {
        directory_id: "cvpn-directory-0123456789abcdef0".into(),
        name: "corp".into(),
        description: None,
        urls: vec!["ldaps://dc.example.test".into()],
        base_dn: "dc=example,dc=test".into(),
        bind_dn: None,
        bind_password_set: false,
        preset: DirectoryPreset::ActiveDirectory,
        user_filter: DirectoryPreset::ActiveDirectory
            .default_user_filter()
            .into(),
        groups: GroupMode::AdNested,
        ca_pem: None,
        allow_plaintext: false,
        realm: None,
        timeout_ms: 5000,
        recheck_seconds: 300,
        mfa: MfaMode::Radius,
        radius_server: Some(server.to_string()),
        radius_timeout_ms: timeout_ms,
        radius_retries: retries,
        radius_secret_set: true,
        creation_time: Timestamp(0),
    }
}

fn client(server: SocketAddr, secret: &str, timeout_ms: u32, retries: u32) -> RadiusClient {
    let secrets = DirectorySecrets {
        bind_password: None,
        radius_secret: Some(secret.into()),
    };
    RadiusClient::new(&directory(server, timeout_ms, retries), &secrets).unwrap()
}

fn unavailable(r: Result<(), AuthFailure>) -> String {
    match r {
        Err(AuthFailure::MfaUnavailable(msg)) => msg,
        other => panic!("expected MfaUnavailable, got {other:?}"),
    }
}

/// Asserts `elapsed` is `tries × timeout`, give or take scheduling.
fn assert_took(elapsed: Duration, timeout_ms: u64, tries: u64) {
    let expected = Duration::from_millis(timeout_ms * tries);
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_millis(600),
        "took {elapsed:?}, expected {expected:?}"
    );
}

#[tokio::test]
async fn freeradius_checks_codes() {
    let mut server = FreeRadius::start(&[("alice", "123456"), ("bob", "000042")]).unwrap();
    let c = client(server.addr(), server.secret(), 2000, 2);
    let started = Instant::now();
    assert_eq!(
        c.verify("alice", "123456").await,
        Ok(()),
        "{}",
        server.log()
    );
    assert_eq!(c.verify("bob", "000042").await, Ok(()));
    assert_eq!(
        c.verify("alice", "123457").await,
        Err(AuthFailure::MfaBadCode)
    );
    assert_eq!(
        c.verify("alice", "000042").await,
        Err(AuthFailure::MfaBadCode)
    );
    assert_eq!(
        c.verify("mallory", "123456").await,
        Err(AuthFailure::MfaBadCode)
    );
    // Answers come at once (no retransmission needed).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // FreeRADIUS requires a Message-Authenticator of this client: ours verified.
    assert!(
        !server.log().contains("invalid Message-Authenticator"),
        "{}",
        server.log()
    );

    // A new code: the old one is refused.
    server.set_code("alice", "654321").unwrap();
    assert_eq!(c.verify("alice", "654321").await, Ok(()));
    assert_eq!(
        c.verify("alice", "123456").await,
        Err(AuthFailure::MfaBadCode)
    );
}

#[tokio::test]
async fn freeradius_answers_with_message_authenticator() {
    let server = FreeRadius::start_with(FreeRadiusOptions {
        users: vec![("alice".into(), "123456".into())],
        reply_message_authenticator: true,
    })
    .unwrap();
    let c = client(server.addr(), server.secret(), 2000, 2);
    assert_eq!(
        c.verify("alice", "123456").await,
        Ok(()),
        "{}",
        server.log()
    );
    assert_eq!(
        c.verify("alice", "999999").await,
        Err(AuthFailure::MfaBadCode)
    );
    // Both answers carried one (so the check above verified FreeRADIUS's HMAC-MD5).
    let log = server.log();
    for sent in ["Sent Access-Accept", "Sent Access-Reject"] {
        let after = &log[log.find(sent).unwrap_or_else(|| panic!("{sent}: {log}"))..];
        let next = after.lines().nth(1).unwrap_or_default();
        assert!(next.contains("Message-Authenticator"), "{sent}: {next}");
    }
}

#[tokio::test]
async fn wrong_shared_secret_is_no_answer() {
    let server = FreeRadius::start(&[("alice", "123456")]).unwrap();
    let c = client(server.addr(), "not-the-secret", 300, 3);
    let started = Instant::now();
    let msg = unavailable(c.verify("alice", "123456").await);
    assert_took(started.elapsed(), 300, 3);
    assert!(
        msg.starts_with(&format!("{}: no answer after 3 tries", server.addr())),
        "{msg}"
    );
    // FreeRADIUS dropped the request: the Message-Authenticator did not verify with its
    // secret (the retransmissions, identical, it takes for duplicates of that one).
    let log = server.log();
    assert!(log.contains("invalid Message-Authenticator"), "{log}");
    assert!(!log.contains("Sent Access-"), "{log}");
    // The message says nothing of the code or the secret.
    assert!(!msg.contains("123456") && !msg.contains("not-the-secret"));
}

/// A UDP socket of the test that hands each datagram it gets to `answer`, which returns what
/// to send back (from the same socket, or from `other` when `from_other` is set).
struct FakeServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(
        from_other: bool,
        answer: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) -> FakeServer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rx, st) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = buf[..n].to_vec();
                rx.lock().unwrap().push(req.clone());
                for d in answer(&req) {
                    let s = if from_other { &other } else { &sock };
                    let _ = s.send_to(&d, peer);
                }
            }
        });
        FakeServer {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const SECRET: &str = "fake-server-secret";

/// An authentic answer to `req` (the radius crate computes the Response Authenticator).
fn authentic(req: &[u8], code: Code) -> Vec<u8> {
    Packet::decode(req, SECRET.as_bytes())
        .unwrap()
        .make_response_packet(code)
        .encode()
        .unwrap()
}

/// Everything a hostile or confused peer might send instead of an answer.
fn forgeries(req: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![
        vec![],
        b"garbage".to_vec(),
        vec![2; 19],
        vec![0xff; MAX_DATAGRAM + 100],
        // Access-Accept with the right identifier and a made-up authenticator.
        {
            let mut a = vec![2, req[1], 0, 20];
            a.extend([0x5a; 16]);
            a
        },
        // Access-Accept echoing the Request Authenticator (what a naive client would take).
        {
            let mut a = vec![2, req[1], 0, 20];
            a.extend(&req[4..20]);
            a
        },
        // The request itself, sent back.
        req.to_vec(),
    ];
    // Authentic answers spoiled: another identifier, another secret, another length.
    let mut other_id = authentic(req, Code::AccessAccept);
    other_id[1] = other_id[1].wrapping_add(1);
    out.push(other_id);
    out.push(
        Packet::decode(req, b"wrong secret")
            .unwrap()
            .make_response_packet(Code::AccessAccept)
            .encode()
            .unwrap(),
    );
    let mut long = authentic(req, Code::AccessAccept);
    long[3] = 40;
    out.push(long);
    out
}

#[tokio::test]
async fn dead_server_is_unavailable_after_the_tries() {
    let server = FakeServer::start(false, |_| vec![]);
    let c = client(server.addr, SECRET, 200, 3);
    let started = Instant::now();
    let msg = unavailable(c.verify("alice", "123456").await);
    assert_took(started.elapsed(), 200, 3);
    assert_eq!(msg, format!("{}: no answer after 3 tries", server.addr));
    // Three tries, each the identical packet (RFC 5080 retransmission).
    let got = server.received();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|d| d == &got[0]));
}

#[tokio::test]
async fn closed_port_is_unavailable() {
    let port = cvpn_tests::radius_server::free_udp_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let c = client(addr, SECRET, 150, 2);
    let started = Instant::now();
    let msg = unavailable(c.verify("alice", "123456").await);
    assert_took(started.elapsed(), 150, 2);
    assert!(
        msg.starts_with(&format!("{addr}: no answer after 2 tries")),
        "{msg}"
    );
}

#[tokio::test]
async fn hostile_server_is_never_believed() {
    let server = FakeServer::start(false, forgeries);
    let c = client(server.addr, SECRET, 200, 2);
    let started = Instant::now();
    let msg = unavailable(c.verify("alice", "123456").await);
    assert_took(started.elapsed(), 200, 2);
    assert!(msg.contains("datagrams ignored"), "{msg}");
    assert_eq!(server.received().len(), 2);
}

#[tokio::test]
async fn authentic_answers_after_forgeries_count() {
    for (code, expected) in [
        (Code::AccessAccept, Ok(())),
        (Code::AccessReject, Err(AuthFailure::MfaBadCode)),
        // No RADIUS challenges: refused as a wrong code.
        (Code::AccessChallenge, Err(AuthFailure::MfaBadCode)),
    ] {
        let server = FakeServer::start(false, move |req| {
            let mut out = forgeries(req);
            out.push(authentic(req, code));
            out
        });
        let c = client(server.addr, SECRET, 2000, 1);
        let started = Instant::now();
        assert_eq!(c.verify("alice", "123456").await, expected, "{code:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[tokio::test]
async fn answers_from_another_address_are_not_read() {
    // An authentic Access-Accept, but sent from another port than the server's.
    let server = FakeServer::start(true, |req| vec![authentic(req, Code::AccessAccept)]);
    let c = client(server.addr, SECRET, 200, 2);
    let started = Instant::now();
    let msg = unavailable(c.verify("alice", "123456").await);
    assert_took(started.elapsed(), 200, 2);
    assert_eq!(msg, format!("{}: no answer after 2 tries", server.addr));
}
