//! The server's control channel end to end without sockets: a rustls client drives the
//! stateless reset exchange, TLS over control packets, and key-method 2 against
//! `ServerSession`, with certificates made by the test (good, expired, revoked, foreign CA).

use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use cvpn_tests::pki::{write, Ca, Pem};
use gateway::protocol::{
    cookie::CookieJar,
    keymethod::{ClientKeyRecord, ServerKeyRecord},
    packet::{AckBlock, ControlOpcode, ControlPacket, KeyId, Packet, SessionId},
    session::{Event, ServerSession, SessionConfig, EKM_LABEL, EKM_LEN},
    tls::TlsMaterial,
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, ClientConnection, RootCertStore,
};

const PEER_INFO: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n";

struct Pki {
    dir: tempdir::Dir,
    ca: Ca,
    config: Arc<SessionConfig>,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "cvpn-cc-{}-{}",
                std::process::id(),
                cvpn_tests::unique_tag()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn pki() -> Pki {
    let dir = tempdir::Dir::new();
    let mut ca = Ca::new("cvpn test CA").unwrap();
    let server = ca.server("vpn.example.test").unwrap();
    // Revoke one certificate before writing the CRL.
    let _ = ca.revoked_client("mallory").unwrap();
    let material = TlsMaterial::load(
        &write(&dir.0, "server.crt", &server.cert).unwrap(),
        &write(&dir.0, "server.key", &server.key).unwrap(),
        &write(&dir.0, "ca.crt", &ca.cert_pem()).unwrap(),
        Some(&write(&dir.0, "crl.pem", &ca.crl_pem().unwrap()).unwrap()),
    )
    .unwrap();
    let config = Arc::new(SessionConfig::new(material.server_config().unwrap()));
    Pki { dir, ca, config }
}

fn client_config(ca_pem: &str, client: &Pem, tls12: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(client.cert.as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// What a run of the handshake produced.
struct Outcome {
    events: Vec<Event>,
    client_ekm: Option<[u8; EKM_LEN]>,
    server_record: Option<ServerKeyRecord>,
    packets: usize,
}

/// Drives a full handshake; the client side is a minimal in-order, lossless implementation.
fn handshake(config: Arc<SessionConfig>, client_cfg: Arc<ClientConfig>) -> Outcome {
    let jar = CookieJar::with_key(b"test cookie key");
    let peer: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    let unix = Duration::from_secs(1_800_000_000);
    let now = Instant::now();
    let client_sid = SessionId([7; 8]);
    let reset = ControlPacket {
        opcode: ControlOpcode::HardResetClientV2,
        key_id: KeyId::default(),
        session_id: client_sid,
        acks: None,
        packet_id: 0,
        payload: vec![],
    };
    let answer = jar.answer(&reset, peer, unix).expect("reset answered");
    let server_sid = answer.session_id;
    assert!(jar.verify(client_sid, peer, server_sid, unix));
    let mut session = ServerSession::after_reset(config, server_sid, client_sid, now).unwrap();

    let mut tls = ClientConnection::new(
        client_cfg,
        ServerName::try_from("vpn.example.test").unwrap(),
    )
    .unwrap();
    let mut next_id = 1u32;
    let mut to_ack: Vec<u32> = vec![0];
    let mut events = Vec::new();
    let mut sent_km = false;
    let mut plaintext = Vec::new();
    let mut server_record = None;
    let mut packets = 0;
    for _round in 0..50 {
        // Client -> server.
        let mut out = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut out).unwrap();
        }
        for chunk in out.chunks(1100) {
            let acks = if to_ack.is_empty() {
                None
            } else {
                Some(AckBlock::new(std::mem::take(&mut to_ack), server_sid).unwrap())
            };
            let p = Packet::Control(ControlPacket {
                opcode: ControlOpcode::ControlV1,
                key_id: KeyId::default(),
                session_id: client_sid,
                acks,
                packet_id: next_id,
                payload: chunk.to_vec(),
            })
            .to_vec();
            next_id += 1;
            packets += 1;
            session.handle(now, &Packet::decode(&p).unwrap()).unwrap();
        }
        // Server -> client.
        while let Some(bytes) = session.poll_transmit(now) {
            packets += 1;
            match Packet::decode(&bytes).unwrap() {
                Packet::Control(c) => {
                    assert_eq!(c.session_id, server_sid);
                    to_ack.push(c.packet_id);
                    let mut data = &c.payload[..];
                    while !data.is_empty() {
                        tls.read_tls(&mut data).unwrap();
                    }
                    if tls.process_new_packets().is_err() {
                        break;
                    }
                }
                Packet::Ack(a) => assert_eq!(a.acks.remote_session_id(), client_sid),
                Packet::Data(_) => panic!("no data packets on the control channel"),
            }
        }
        while let Some(e) = session.poll_event() {
            events.push(e);
        }
        if session.is_failed() {
            break;
        }
        if !tls.is_handshaking() && !sent_km {
            let record = ClientKeyRecord {
                pre_master: [1; 48],
                random1: [2; 32],
                random2: [3; 32],
                options: "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client".into(),
                credentials: None,
                peer_info: Some(PEER_INFO.into()),
            };
            tls.writer().write_all(&record.to_bytes().unwrap()).unwrap();
            sent_km = true;
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = tls.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            plaintext.extend_from_slice(&buf[..n]);
        }
        if server_record.is_none() && !plaintext.is_empty() {
            if let Ok(r) = ServerKeyRecord::parse(&plaintext) {
                server_record = Some(r);
                plaintext.clear();
                break;
            }
        }
    }
    let client_ekm = server_record.as_ref().map(|_| {
        tls.export_keying_material([0u8; EKM_LEN], EKM_LABEL, None)
            .unwrap()
    });
    Outcome {
        events,
        client_ekm,
        server_record,
        packets,
    }
}

fn refusal(o: &Outcome) -> Option<String> {
    o.events.iter().find_map(|e| match e {
        Event::Refused { reason } => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn tls13_and_tls12_handshakes_authenticate_and_agree_on_keys() {
    let mut p = pki();
    let alice = p.ca.client("alice", &["engineering"]).unwrap();
    for tls12 in [false, true] {
        let o = handshake(
            p.config.clone(),
            client_config(&p.ca.cert_pem(), &alice, tls12),
        );
        assert_eq!(refusal(&o), None);
        let auth = o.events.iter().find_map(|e| match e {
            Event::Authenticated {
                identity,
                peer_info,
                tls_version,
                ..
            } => Some((identity.clone(), peer_info.clone(), tls_version.clone())),
            _ => None,
        });
        let (identity, peer_info, version) = auth.expect("Authenticated event");
        assert_eq!(identity.common_name, "alice");
        assert_eq!(identity.groups, vec!["engineering".to_string()]);
        assert_eq!(peer_info.version.as_deref(), Some("2.6.14"));
        assert_eq!(version, if tls12 { "TLSv1.2" } else { "TLSv1.3" });
        let server_ekm = o.events.iter().find_map(|e| match e {
            Event::KeysReady { material, .. } => Some(**material),
            _ => None,
        });
        assert_eq!(
            server_ekm, o.client_ekm,
            "both ends must export the same data-channel keys"
        );
        assert!(o.server_record.is_some());
        assert!(o.packets < 30, "handshake took {} packets", o.packets);
    }
    drop(p.dir);
}

#[test]
fn expired_revoked_and_foreign_certificates_are_refused_with_a_reason() {
    let mut p = pki();
    let expired = p.ca.expired_client("old").unwrap();
    let o = handshake(
        p.config.clone(),
        client_config(&p.ca.cert_pem(), &expired, false),
    );
    assert_eq!(refusal(&o).as_deref(), Some("certificate-expired"));

    let revoked = p.ca.revoked_client("eve").unwrap();
    // The CRL loaded at start lists "mallory", not "eve": eve still gets in until a CRL naming her is
    // loaded. Reload with the current CRL.
    let material = TlsMaterial::load(
        &p.dir.0.join("server.crt"),
        &p.dir.0.join("server.key"),
        &p.dir.0.join("ca.crt"),
        Some(&write(&p.dir.0, "crl2.pem", &p.ca.crl_pem().unwrap()).unwrap()),
    )
    .unwrap();
    let config = Arc::new(SessionConfig::new(material.server_config().unwrap()));
    let o = handshake(config, client_config(&p.ca.cert_pem(), &revoked, false));
    assert_eq!(refusal(&o).as_deref(), Some("certificate-revoked"));

    let mut other = Ca::new("someone else's CA").unwrap();
    let stranger = other.client("stranger", &[]).unwrap();
    let o = handshake(
        p.config.clone(),
        client_config(&p.ca.cert_pem(), &stranger, false),
    );
    assert_eq!(refusal(&o).as_deref(), Some("certificate-unknown-ca"));
    assert!(!o
        .events
        .iter()
        .any(|e| matches!(e, Event::Authenticated { .. })));
}
