//! Builds a `PUSH_REPLY` from fuzzer-chosen fields and packs it into messages of a
//! fuzzer-chosen size. Checks that packing never panics; that when it succeeds every message is
//! a `PUSH_REPLY` of at most `max_len` bytes with its NUL, a single message carries no
//! `push-continuation` and split messages end with `push-continuation 2` (all but the last) or
//! `push-continuation 1` (the last); and that the options of all messages, without the
//! `PUSH_REPLY` prefix and the `push-continuation` options, are exactly `options()`. When it
//! fails, the error is one the options explain. Also negotiates a cipher between a fuzzer-chosen
//! server list and fuzzer-chosen peer-info, and checks the choice against a plain model.
#![no_main]

use std::net::Ipv4Addr;

use arbitrary::Arbitrary;
use gateway::protocol::keymethod::PeerInfo;
use gateway::protocol::push::{
    control_bytes, negotiate_cipher, pack_options, CipherError, ControlMessage, KeySignalling,
    ProtocolFlags, PushError, PushReply, Tunnel, NCP2_IMPLIED_CIPHERS,
};
use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Signalling {
    None,
    KeyDerivationTlsEkm,
    ProtocolFlags {
        cc_exit: bool,
        tls_ekm: bool,
        dyn_tls_crypt: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    address: [u8; 4],
    netmask: [u8; 4],
    route_gateway: [u8; 4],
    /// `None`: full tunnel; else split-tunnel routes as (address, prefix length).
    routes: Option<Vec<([u8; 4], u8)>>,
    dns_servers: Vec<[u8; 4]>,
    ping: Option<u32>,
    ping_restart: Option<u32>,
    peer_id: Option<u32>,
    cipher: Option<String>,
    signalling: Signalling,
    tun_mtu: Option<u32>,
    extra: Vec<String>,
    max_len: u16,
    server_ciphers: Vec<String>,
    peer_info: String,
}

/// True if the option's first word (split at C `isspace`, as OpenVPN splits an option line) is
/// `push-continuation`.
fn is_continuation(option: &str) -> bool {
    option
        .split(|c: char| c.is_ascii_whitespace() || c == '\x0b')
        .find(|w| !w.is_empty())
        == Some("push-continuation")
}

fn check_messages(reply: &PushReply, max_len: usize) {
    let options = reply.options();
    let result = reply.to_messages(max_len);
    assert_eq!(result, pack_options(&options, max_len));
    let msgs = match result {
        Ok(msgs) => msgs,
        Err(PushError::InvalidOption(o)) => {
            assert!(options.contains(&o));
            assert!(o.contains([',', '\0', '\n', '\r']), "{o:?}");
            return;
        }
        Err(PushError::ReservedOption(o)) => {
            assert!(options.contains(&o));
            assert!(is_continuation(&o), "{o:?}");
            return;
        }
        Err(PushError::OptionTooLong { len, max }) => {
            assert_eq!(max, max_len);
            assert!(options.iter().any(|o| o.len() == len));
            return;
        }
        Err(PushError::LimitTooSmall { max }) => {
            assert_eq!(max, max_len);
            return;
        }
    };
    assert!(!msgs.is_empty());
    let mut joined: Vec<String> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let wire = control_bytes(m);
        assert!(
            wire.len() <= max_len,
            "message {i} is {} bytes, limit {max_len}",
            wire.len()
        );
        assert!(matches!(
            ControlMessage::parse(&wire),
            ControlMessage::PushReply(_)
        ));
        let rest = m
            .strip_prefix("PUSH_REPLY")
            .expect("starts with PUSH_REPLY");
        let mut opts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.strip_prefix(',')
                .expect("a comma after PUSH_REPLY")
                .split(',')
                .collect()
        };
        if msgs.len() > 1 {
            let want = if i + 1 == msgs.len() {
                "push-continuation 1"
            } else {
                "push-continuation 2"
            };
            assert_eq!(opts.pop(), Some(want), "message {i} of {}", msgs.len());
        }
        for o in opts {
            // A client takes any option named push-continuation as the continuation flag.
            assert!(!is_continuation(o), "message {i} carries {o:?}");
            joined.push(o.to_string());
        }
    }
    assert_eq!(joined, options, "options lost, added or reordered");
}

fn check_cipher(server: &[String], peer_info: &str) {
    let pi = PeerInfo::parse(peer_info);
    let client: Option<Vec<String>> = match (&pi.ciphers, pi.ncp) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(n)) if n >= 2 => {
            Some(NCP2_IMPLIED_CIPHERS.iter().map(|s| s.to_string()).collect())
        }
        _ => None,
    };
    let offered = |s: &str| client.iter().flatten().any(|c| c.eq_ignore_ascii_case(s));
    match negotiate_cipher(server, &pi) {
        Ok(chosen) => {
            let first = server
                .iter()
                .position(|s| offered(s))
                .expect("a common cipher");
            assert!(
                std::ptr::eq(chosen, server[first].as_str()),
                "not the server's first match"
            );
        }
        Err(CipherError::NoClientCiphers { server: list }) => {
            assert!(client.is_none());
            assert_eq!(list, server.join(":"));
        }
        Err(CipherError::NoCommonCipher {
            server: list,
            client: offered_list,
        }) => {
            assert!(client.is_some());
            assert!(!server.iter().any(|s| offered(s)));
            assert_eq!(list, server.join(":"));
            assert_eq!(offered_list, client.unwrap().join(":"));
        }
    }
}

fuzz_target!(|input: Input| {
    let tunnel = match &input.routes {
        None => Tunnel::Full,
        Some(routes) => Tunnel::Split(
            routes
                .iter()
                .map(|(a, p)| Ipv4Net::new(Ipv4Addr::from(*a), p % 33).expect("prefix <= 32"))
                .collect(),
        ),
    };
    let key_signalling = match input.signalling {
        Signalling::None => KeySignalling::None,
        Signalling::KeyDerivationTlsEkm => KeySignalling::KeyDerivationTlsEkm,
        Signalling::ProtocolFlags {
            cc_exit,
            tls_ekm,
            dyn_tls_crypt,
        } => KeySignalling::ProtocolFlags(ProtocolFlags {
            cc_exit,
            tls_ekm,
            dyn_tls_crypt,
        }),
    };
    let reply = PushReply {
        address: Ipv4Addr::from(input.address),
        netmask: Ipv4Addr::from(input.netmask),
        route_gateway: Ipv4Addr::from(input.route_gateway),
        tunnel,
        dns_servers: input
            .dns_servers
            .iter()
            .map(|a| Ipv4Addr::from(*a))
            .collect(),
        ping: input.ping,
        ping_restart: input.ping_restart,
        peer_id: input.peer_id,
        cipher: input.cipher.clone(),
        key_signalling,
        tun_mtu: input.tun_mtu,
        extra: input.extra.clone(),
    };
    check_messages(&reply, usize::from(input.max_len));
    check_cipher(&input.server_ciphers, &input.peer_info);
});
