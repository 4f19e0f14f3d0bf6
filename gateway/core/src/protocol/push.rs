//! Control-channel text messages: classifying what a peer sends, building `PUSH_REPLY`, and
//! negotiating the data cipher.
//!
//! Once key-method 2 is done, the TLS tunnel carries NUL-terminated ASCII messages such as
//! `PUSH_REQUEST` (client), `PUSH_REPLY,<options>` (server), `EXIT` (client, explicit exit
//! notification), `AUTH_FAILED[,reason]`, `RESTART` and `INFO,...`. A command is the text up
//! to the first comma; what follows is its argument.
//!
//! # PUSH_REPLY
//!
//! [`PushReply`] holds the session's settings as types and writes them in the order a stock
//! OpenVPN 2.6 server does. A reply longer than one control message allows
//! ([`DEFAULT_MAX_PUSH_MESSAGE_LEN`]) is split over several `PUSH_REPLY` messages: every
//! message but the last ends with `push-continuation 2` ("more follows"), the last with
//! `push-continuation 1` ("this completes the reply"). A reply that fits in one message carries
//! no `push-continuation` at all.
//!
//! # Key-derivation signalling
//!
//! A client that advertises TLS-EKM (`IV_PROTO` bit 3) gets EKM-derived data keys only if the
//! server says so in the reply. OpenVPN 2.6 servers say it with `protocol-flags ... tls-ekm` to
//! clients that also advertise control-channel exit notification (bit 7), and with
//! `key-derivation tls-ekm` to the others ([`KeySignalling::for_client`]).

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use thiserror::Error;

use super::keymethod::{IvProto, PeerInfo};

/// Default limit of one pushed control message, in bytes on the wire: `PUSH_REPLY`, the
/// options, any `push-continuation` and the terminating NUL (OpenVPN's push bundle size).
pub const DEFAULT_MAX_PUSH_MESSAGE_LEN: usize = 1024;

/// The data ciphers the server accepts, best first (the default for [`negotiate_cipher`]).
pub const DEFAULT_SERVER_CIPHERS: &[&str] = &["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"];

/// What a client with `IV_NCP>=2` but no `IV_CIPHERS` (OpenVPN 2.4) can switch to.
pub const NCP2_IMPLIED_CIPHERS: &[&str] = &["AES-256-GCM", "AES-128-GCM"];

const PUSH_REPLY: &str = "PUSH_REPLY";
const CONTINUATION: &str = "push-continuation";
const CONTINUATION_MORE: &str = "push-continuation 2";
const CONTINUATION_LAST: &str = "push-continuation 1";

/// A control-channel message, classified by its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlMessage {
    /// `PUSH_REQUEST`: the client asks for its configuration.
    PushRequest,
    /// `PUSH_REPLY,<options>`: the server's configuration (the text after the first comma).
    PushReply(String),
    /// `EXIT`: the client is disconnecting (explicit exit notification over the control
    /// channel, `protocol-flags cc-exit`). Any argument is ignored.
    Exit,
    /// `RESTART[,reason]`: the server asks the client to reconnect (sent on server shutdown).
    Restart(Option<String>),
    /// `HALT[,reason]`: the server tells the client to stop and not reconnect.
    Halt(Option<String>),
    /// `AUTH_FAILED[,reason]`: authentication was refused.
    AuthFailed(Option<String>),
    /// `AUTH_PENDING[,keywords]`: authentication continues out of band (e.g. `timeout 60`).
    AuthPending(Option<String>),
    /// `INFO,<text>`: information for the user or the client's UI.
    Info(String),
    /// `INFO_PRE,<text>`: information sent before authentication completes (e.g.
    /// `WEB_AUTH::<url>`).
    InfoPre(String),
    /// `CR_RESPONSE,<base64>`: the client's answer to a challenge.
    CrResponse(String),
    /// Anything else, as text (invalid UTF-8 replaced by U+FFFD).
    Other(String),
}

impl ControlMessage {
    /// Classifies the plaintext of one control message. Everything from the first NUL on is
    /// ignored, as are trailing CR/LF. Never fails: unknown text is [`ControlMessage::Other`].
    pub fn parse(bytes: &[u8]) -> Self {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let text = text.trim_end_matches(['\r', '\n']);
        let (command, arg) = match text.split_once(',') {
            Some((c, a)) => (c, Some(a)),
            None => (text, None),
        };
        let owned = |a: Option<&str>| a.map(str::to_string);
        match (command, arg) {
            ("PUSH_REQUEST", None) => Self::PushRequest,
            ("PUSH_REPLY", a) => Self::PushReply(a.unwrap_or_default().to_string()),
            ("EXIT", _) => Self::Exit,
            ("RESTART", a) => Self::Restart(owned(a)),
            ("HALT", a) => Self::Halt(owned(a)),
            ("AUTH_FAILED", a) => Self::AuthFailed(owned(a)),
            ("AUTH_PENDING", a) => Self::AuthPending(owned(a)),
            ("INFO", Some(a)) => Self::Info(a.to_string()),
            ("INFO_PRE", Some(a)) => Self::InfoPre(a.to_string()),
            ("CR_RESPONSE", Some(a)) => Self::CrResponse(a.to_string()),
            _ => Self::Other(text.to_string()),
        }
    }

    /// The message text, without the NUL terminator.
    pub fn to_text(&self) -> String {
        let with = |cmd: &str, arg: &Option<String>| match arg {
            Some(a) => format!("{cmd},{a}"),
            None => cmd.to_string(),
        };
        match self {
            Self::PushRequest => "PUSH_REQUEST".into(),
            Self::PushReply(o) => format!("{PUSH_REPLY},{o}"),
            Self::Exit => "EXIT".into(),
            Self::Restart(a) => with("RESTART", a),
            Self::Halt(a) => with("HALT", a),
            Self::AuthFailed(a) => with("AUTH_FAILED", a),
            Self::AuthPending(a) => with("AUTH_PENDING", a),
            Self::Info(a) => format!("INFO,{a}"),
            Self::InfoPre(a) => format!("INFO_PRE,{a}"),
            Self::CrResponse(a) => format!("CR_RESPONSE,{a}"),
            Self::Other(t) => t.clone(),
        }
    }

    /// The message as sent through the TLS tunnel: text and a terminating NUL.
    pub fn to_bytes(&self) -> Vec<u8> {
        control_bytes(&self.to_text())
    }
}

/// Text as a control message on the wire: the bytes and a terminating NUL.
pub fn control_bytes(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 1);
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

/// Why a `PUSH_REPLY` cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PushError {
    /// An option contains a character that would break the comma-separated list.
    #[error("push option {0:?} contains a comma, NUL or line break; remove it from the option")]
    InvalidOption(String),
    /// An option is `push-continuation`, which only the packer may write: a client takes any
    /// option of that name as the continuation flag of the message it is in.
    #[error(
        "push option {0:?} is push-continuation, which the server adds itself when it splits a \
         reply; remove it from the options"
    )]
    ReservedOption(String),
    /// One option does not fit into a message even on its own.
    #[error(
        "push option of {len} bytes does not fit into one PUSH_REPLY message of at most {max} \
         bytes; shorten the option or raise the message limit"
    )]
    OptionTooLong {
        /// Length of the option.
        len: usize,
        /// The message limit.
        max: usize,
    },
    /// The message limit leaves no room for options next to `PUSH_REPLY` and
    /// `push-continuation`.
    #[error(
        "a PUSH_REPLY message limit of {max} bytes is too small to split a reply; use at least \
         100 (OpenVPN uses {DEFAULT_MAX_PUSH_MESSAGE_LEN})"
    )]
    LimitTooSmall {
        /// The message limit.
        max: usize,
    },
}

/// Whether the client sends all traffic or only the routed networks through the tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// Full tunnel: `redirect-gateway def1`.
    Full,
    /// Split tunnel: `route <net> <mask>` for each destination.
    Split(Vec<Ipv4Net>),
}

/// Flags of the `protocol-flags` push option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtocolFlags {
    /// `cc-exit`: the client announces its exit with `EXIT` on the control channel.
    pub cc_exit: bool,
    /// `tls-ekm`: data keys come from the TLS keying-material exporter.
    pub tls_ekm: bool,
    /// `dyn-tls-crypt`: renegotiations use a dynamic tls-crypt key (not implemented by this
    /// server; modelled so captured replies can be reproduced).
    pub dyn_tls_crypt: bool,
}

/// How the reply tells the client which key derivation to use (and what else it agreed to).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeySignalling {
    /// Nothing: legacy TLS-PRF key derivation.
    #[default]
    None,
    /// `key-derivation tls-ekm`.
    KeyDerivationTlsEkm,
    /// `protocol-flags ...` (2.6 clients with `IV_PROTO` bit 7).
    ProtocolFlags(ProtocolFlags),
}

impl KeySignalling {
    /// What a 2.6 server sends to a client with these `IV_PROTO` bits. EKM is used when the
    /// server wants it (`want_ekm`) and the client supports it; check the result with
    /// [`uses_ekm`](Self::uses_ekm) before deriving keys.
    pub fn for_client(proto: IvProto, want_ekm: bool) -> Self {
        let ekm = want_ekm && proto.tls_key_export();
        if proto.cc_exit_notify() {
            Self::ProtocolFlags(ProtocolFlags {
                cc_exit: true,
                tls_ekm: ekm,
                dyn_tls_crypt: false,
            })
        } else if ekm {
            Self::KeyDerivationTlsEkm
        } else {
            Self::None
        }
    }

    /// True if the data keys are to come from TLS-EKM.
    pub fn uses_ekm(self) -> bool {
        match self {
            Self::None => false,
            Self::KeyDerivationTlsEkm => true,
            Self::ProtocolFlags(f) => f.tls_ekm,
        }
    }

    fn option(self) -> Option<String> {
        match self {
            Self::None => None,
            Self::KeyDerivationTlsEkm => Some("key-derivation tls-ekm".into()),
            Self::ProtocolFlags(f) => {
                let mut s = String::from("protocol-flags");
                for (on, name) in [
                    (f.cc_exit, "cc-exit"),
                    (f.tls_ekm, "tls-ekm"),
                    (f.dyn_tls_crypt, "dyn-tls-crypt"),
                ] {
                    if on {
                        s.push(' ');
                        s.push_str(name);
                    }
                }
                (s.len() > "protocol-flags".len()).then_some(s)
            }
        }
    }
}

/// A client's configuration, as pushed in `PUSH_REPLY` (always `topology subnet`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReply {
    /// The client's tunnel address (from the address pool).
    pub address: Ipv4Addr,
    /// The client CIDR's netmask.
    pub netmask: Ipv4Addr,
    /// The gateway's tunnel address (`route-gateway`).
    pub route_gateway: Ipv4Addr,
    /// Full or split tunnel.
    pub tunnel: Tunnel,
    /// `dhcp-option DNS` servers, in order.
    pub dns_servers: Vec<Ipv4Addr>,
    /// `ping N` (seconds), if set.
    pub ping: Option<u32>,
    /// `ping-restart N` (seconds), if set.
    pub ping_restart: Option<u32>,
    /// `peer-id N` for `P_DATA_V2`, if the client supports it.
    pub peer_id: Option<u32>,
    /// `cipher NAME`: the negotiated data cipher.
    pub cipher: Option<String>,
    /// Key-derivation signalling.
    pub key_signalling: KeySignalling,
    /// `tun-mtu N`, if set.
    pub tun_mtu: Option<u32>,
    /// Further options, verbatim, pushed after the DNS servers.
    pub extra: Vec<String>,
}

impl PushReply {
    /// A full-tunnel reply with keepalive `ping 10` / `ping-restart 60` (what a stock server
    /// with `keepalive 10 120` pushes) and nothing else optional.
    pub fn new(address: Ipv4Addr, netmask: Ipv4Addr, route_gateway: Ipv4Addr) -> Self {
        Self {
            address,
            netmask,
            route_gateway,
            tunnel: Tunnel::Full,
            dns_servers: Vec::new(),
            ping: Some(10),
            ping_restart: Some(60),
            peer_id: None,
            cipher: None,
            key_signalling: KeySignalling::None,
            tun_mtu: None,
            extra: Vec::new(),
        }
    }

    /// The options, in the order a stock OpenVPN 2.6 server pushes them.
    pub fn options(&self) -> Vec<String> {
        let mut o = Vec::new();
        match &self.tunnel {
            Tunnel::Full => o.push("redirect-gateway def1".to_string()),
            Tunnel::Split(routes) => {
                for r in routes {
                    o.push(format!("route {} {}", r.network(), r.netmask()));
                }
            }
        }
        for dns in &self.dns_servers {
            o.push(format!("dhcp-option DNS {dns}"));
        }
        o.extend(self.extra.iter().cloned());
        o.push(format!("route-gateway {}", self.route_gateway));
        o.push("topology subnet".into());
        if let Some(p) = self.ping {
            o.push(format!("ping {p}"));
        }
        if let Some(p) = self.ping_restart {
            o.push(format!("ping-restart {p}"));
        }
        o.push(format!("ifconfig {} {}", self.address, self.netmask));
        if let Some(id) = self.peer_id {
            o.push(format!("peer-id {id}"));
        }
        if let Some(c) = &self.cipher {
            o.push(format!("cipher {c}"));
        }
        o.extend(self.key_signalling.option());
        if let Some(m) = self.tun_mtu {
            o.push(format!("tun-mtu {m}"));
        }
        o
    }

    /// The reply as control-message texts (without NUL; send each with [`control_bytes`]),
    /// each at most `max_len` bytes on the wire including the NUL. One message if it fits,
    /// else several linked with `push-continuation`.
    pub fn to_messages(&self, max_len: usize) -> Result<Vec<String>, PushError> {
        pack_options(&self.options(), max_len)
    }
}

/// Packs options into `PUSH_REPLY` messages of at most `max_len` bytes each (with NUL).
pub fn pack_options(options: &[String], max_len: usize) -> Result<Vec<String>, PushError> {
    for opt in options {
        if opt.contains([',', '\0', '\n', '\r']) {
            return Err(PushError::InvalidOption(opt.clone()));
        }
        // OpenVPN matches an option on its first word (split at C `isspace`); a
        // `push-continuation 2` among the options of a single message would leave the client
        // waiting for a message that never comes.
        if opt
            .split(|c: char| c.is_ascii_whitespace() || c == '\x0b')
            .find(|w| !w.is_empty())
            == Some(CONTINUATION)
        {
            return Err(PushError::ReservedOption(opt.clone()));
        }
    }
    // "PUSH_REPLY" + Σ("," + option) + NUL.
    let single = PUSH_REPLY.len() + options.iter().map(|o| o.len() + 1).sum::<usize>() + 1;
    if single <= max_len {
        return Ok(vec![join(options.iter().map(String::as_str))]);
    }
    // Room for options in a message that ends with ",push-continuation N" and the NUL.
    let room = max_len.saturating_sub(PUSH_REPLY.len() + 1 + CONTINUATION_MORE.len() + 1);
    if room < 2 {
        return Err(PushError::LimitTooSmall { max: max_len });
    }
    let mut messages: Vec<Vec<&str>> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut used = 0;
    for opt in options {
        let need = opt.len() + 1;
        if need > room {
            return Err(PushError::OptionTooLong {
                len: opt.len(),
                max: max_len,
            });
        }
        if used + need > room {
            messages.push(std::mem::take(&mut current));
            used = 0;
        }
        current.push(opt);
        used += need;
    }
    messages.push(current);
    let last = messages.len() - 1;
    Ok(messages
        .into_iter()
        .enumerate()
        .map(|(i, opts)| {
            let cont = if i == last {
                CONTINUATION_LAST
            } else {
                CONTINUATION_MORE
            };
            join(opts.into_iter().chain([cont]))
        })
        .collect())
}

fn join<'a>(options: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::from(PUSH_REPLY);
    for o in options {
        s.push(',');
        s.push_str(o);
    }
    s
}

/// Why no data cipher could be agreed on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CipherError {
    /// The lists have no cipher in common.
    #[error(
        "no data cipher in common: the server accepts {server}, the client offers {client}; \
         add one of the client's ciphers to the server's list or change the client's \
         data-ciphers"
    )]
    NoCommonCipher {
        /// The server's list, colon-separated.
        server: String,
        /// The client's list, colon-separated.
        client: String,
    },
    /// The client announced no ciphers at all.
    #[error(
        "the client announces no data ciphers (no IV_CIPHERS and IV_NCP below 2: OpenVPN older \
         than 2.4, or cipher negotiation disabled), and the server accepts {server}; upgrade \
         the client or enable data-ciphers negotiation on it"
    )]
    NoClientCiphers {
        /// The server's list, colon-separated.
        server: String,
    },
}

/// Chooses the data cipher: the first of the server's ciphers (best first) that the client
/// offers, compared case-insensitively and returned in the server's spelling.
///
/// The client's list is `IV_CIPHERS`; a client without it but with `IV_NCP>=2` (OpenVPN 2.4) is
/// taken to offer [`NCP2_IMPLIED_CIPHERS`].
pub fn negotiate_cipher<'a, S: AsRef<str>>(
    server: &'a [S],
    peer: &PeerInfo,
) -> Result<&'a str, CipherError> {
    let server_list = || {
        server
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(":")
    };
    let client: Vec<&str> = match (&peer.ciphers, peer.ncp) {
        (Some(c), _) => c.iter().map(String::as_str).collect(),
        (None, Some(n)) if n >= 2 => NCP2_IMPLIED_CIPHERS.to_vec(),
        (None, _) => {
            return Err(CipherError::NoClientCiphers {
                server: server_list(),
            })
        }
    };
    server
        .iter()
        .map(AsRef::as_ref)
        .find(|s| client.iter().any(|c| c.eq_ignore_ascii_case(s)))
        .ok_or_else(|| CipherError::NoCommonCipher {
            server: server_list(),
            client: client.join(":"),
        })
}

impl fmt::Display for ControlMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The peer-info a stock OpenVPN 2.6.14 client sent in a captured handshake.
    fn client_2_6_14() -> PeerInfo {
        PeerInfo::parse(
            "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n\
             IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n",
        )
    }

    #[test]
    fn reproduces_the_captured_2_6_server_reply() {
        let pi = client_2_6_14();
        let mut signalling = KeySignalling::for_client(pi.proto, true);
        assert_eq!(
            signalling,
            KeySignalling::ProtocolFlags(ProtocolFlags {
                cc_exit: true,
                tls_ekm: true,
                dyn_tls_crypt: false
            })
        );
        if let KeySignalling::ProtocolFlags(f) = &mut signalling {
            f.dyn_tls_crypt = true; // the captured server used tls-crypt; we model the flag
        }
        let reply = PushReply {
            address: ip("10.2.0.2"),
            netmask: ip("255.255.252.0"),
            route_gateway: ip("10.2.0.1"),
            tunnel: Tunnel::Split(vec!["10.88.0.0/24".parse().unwrap()]),
            dns_servers: vec![],
            ping: Some(10),
            ping_restart: Some(60),
            peer_id: Some(0),
            cipher: Some(
                negotiate_cipher(DEFAULT_SERVER_CIPHERS, &pi)
                    .unwrap()
                    .to_string(),
            ),
            key_signalling: signalling,
            tun_mtu: Some(1500),
            extra: vec![],
        };
        let msgs = reply.to_messages(DEFAULT_MAX_PUSH_MESSAGE_LEN).unwrap();
        assert_eq!(
            msgs,
            [
                "PUSH_REPLY,route 10.88.0.0 255.255.255.0,route-gateway 10.2.0.1,topology subnet,\
              ping 10,ping-restart 60,ifconfig 10.2.0.2 255.255.252.0,peer-id 0,cipher AES-256-GCM,\
              protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500"
            ]
        );
        // Without dyn-tls-crypt (what this server sends):
        let ours = PushReply {
            key_signalling: KeySignalling::for_client(pi.proto, true),
            ..reply
        };
        assert!(ours.to_messages(1024).unwrap()[0]
            .ends_with(",protocol-flags cc-exit tls-ekm,tun-mtu 1500"));
    }

    #[test]
    fn full_tunnel_dns_and_key_derivation() {
        let mut r = PushReply::new(ip("10.2.0.9"), ip("255.255.252.0"), ip("10.2.0.1"));
        r.dns_servers = vec![ip("10.88.0.2"), ip("1.1.1.1")];
        // A 2.5 client: EKM but no exit-notify bit.
        r.key_signalling =
            KeySignalling::for_client(IvProto(IvProto::DATA_V2 | IvProto::TLS_KEY_EXPORT), true);
        r.peer_id = Some(7);
        assert_eq!(
            r.to_messages(1024).unwrap(),
            ["PUSH_REPLY,redirect-gateway def1,dhcp-option DNS 10.88.0.2,dhcp-option DNS 1.1.1.1,\
              route-gateway 10.2.0.1,topology subnet,ping 10,ping-restart 60,\
              ifconfig 10.2.0.9 255.255.252.0,peer-id 7,key-derivation tls-ekm"]
        );
    }

    #[test]
    fn key_signalling_choices() {
        let p = |bits| IvProto(bits);
        assert_eq!(KeySignalling::for_client(p(0), true), KeySignalling::None);
        assert_eq!(
            KeySignalling::for_client(p(IvProto::TLS_KEY_EXPORT), false),
            KeySignalling::None
        );
        assert!(KeySignalling::for_client(p(IvProto::TLS_KEY_EXPORT), true).uses_ekm());
        // Exit-notify without EKM: protocol-flags cc-exit only, legacy keys.
        let s = KeySignalling::for_client(p(IvProto::CC_EXIT_NOTIFY), true);
        assert!(!s.uses_ekm());
        assert_eq!(s.option().as_deref(), Some("protocol-flags cc-exit"));
        assert_eq!(
            KeySignalling::ProtocolFlags(ProtocolFlags::default()).option(),
            None
        );
    }

    #[test]
    fn long_replies_are_split_with_push_continuation() {
        let routes: Vec<Ipv4Net> = (0..100u32)
            .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap())
            .collect();
        let mut r = PushReply::new(ip("10.200.0.2"), ip("255.255.252.0"), ip("10.200.0.1"));
        r.tunnel = Tunnel::Split(routes.clone());
        let msgs = r.to_messages(DEFAULT_MAX_PUSH_MESSAGE_LEN).unwrap();
        assert!(msgs.len() >= 3, "{} messages", msgs.len());
        let last = msgs.len() - 1;
        let mut joined = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            assert!(
                control_bytes(m).len() <= DEFAULT_MAX_PUSH_MESSAGE_LEN,
                "message {i} too long"
            );
            let ControlMessage::PushReply(opts) = ControlMessage::parse(&control_bytes(m)) else {
                panic!("not a PUSH_REPLY: {m}")
            };
            let mut opts: Vec<&str> = opts.split(',').collect();
            let cont = opts.pop().unwrap();
            assert_eq!(
                cont,
                if i == last {
                    "push-continuation 1"
                } else {
                    "push-continuation 2"
                }
            );
            assert!(!opts.iter().any(|o| o.starts_with("push-continuation")));
            joined.extend(opts.into_iter().map(str::to_string));
        }
        assert_eq!(joined, r.options(), "nothing lost, nothing reordered");
        assert_eq!(
            joined.iter().filter(|o| o.starts_with("route 10.")).count(),
            100
        );
    }

    #[test]
    fn the_limit_is_exact() {
        let opts: Vec<String> = vec!["a".repeat(10), "b".repeat(10), "c".repeat(10)];
        // "PUSH_REPLY,aaaaaaaaaa,bbbbbbbbbb,cccccccccc" + NUL = 44 bytes.
        assert_eq!(pack_options(&opts, 44).unwrap().len(), 1);
        // Split, each message is "PUSH_REPLY,<10 bytes>,push-continuation N" + NUL = 42 bytes.
        let split = pack_options(&opts, 43).unwrap();
        assert_eq!(split, pack_options(&opts, 42).unwrap());
        assert_eq!(
            split,
            [
                "PUSH_REPLY,aaaaaaaaaa,push-continuation 2",
                "PUSH_REPLY,bbbbbbbbbb,push-continuation 2",
                "PUSH_REPLY,cccccccccc,push-continuation 1"
            ]
        );
        // Two options per message once there is room for them.
        let four: Vec<String> = ["a", "b", "c", "d"].iter().map(|c| c.repeat(10)).collect();
        assert_eq!(pack_options(&four, 55).unwrap().len(), 1);
        assert_eq!(pack_options(&four, 53).unwrap().len(), 2);
        let err = pack_options(&opts, 41).unwrap_err();
        assert_eq!(err, PushError::OptionTooLong { len: 10, max: 41 });
        assert!(err.to_string().contains("raise the message limit"));
        // Degenerate limits are errors, not panics or oversized messages.
        assert_eq!(
            pack_options(&opts, 32).unwrap_err(),
            PushError::LimitTooSmall { max: 32 }
        );
        assert_eq!(
            pack_options(&[], 0).unwrap_err(),
            PushError::LimitTooSmall { max: 0 }
        );
        assert_eq!(pack_options(&[], 11).unwrap(), ["PUSH_REPLY"]);
    }

    #[test]
    fn options_that_would_break_the_list_are_refused() {
        let mut r = PushReply::new(ip("10.2.0.9"), ip("255.255.252.0"), ip("10.2.0.1"));
        r.extra = vec!["echo a,b".into()];
        assert_eq!(
            r.to_messages(1024).unwrap_err(),
            PushError::InvalidOption("echo a,b".into())
        );
        r.extra = vec!["x\0".into()];
        assert!(r.to_messages(1024).is_err());
        r.extra = vec!["block-outside-dns".into()];
        assert!(r.to_messages(1024).unwrap()[0]
            .contains("redirect-gateway def1,block-outside-dns,route-gateway"));
    }

    #[test]
    fn push_continuation_is_reserved_for_the_packer() {
        // Found by the push_options fuzz target: an extra option named push-continuation was
        // pushed verbatim, and a client takes any option of that name as the continuation flag.
        let mut r = PushReply::new(ip("10.2.0.9"), ip("255.255.252.0"), ip("10.2.0.1"));
        for o in [
            "push-continuation",
            "push-continuation 2",
            " push-continuation\t1",
            "\x0bpush-continuation 1",
        ] {
            r.extra = vec![o.into()];
            let err = r.to_messages(1024).unwrap_err();
            assert_eq!(err, PushError::ReservedOption(o.into()));
            assert!(err.to_string().contains("adds itself"), "{err}");
            assert_eq!(
                pack_options(&[o.to_string()], 1024).unwrap_err(),
                PushError::ReservedOption(o.into())
            );
        }
        // Only the option name is reserved.
        r.extra = vec![
            "setenv push-continuation 2".into(),
            "push-continuation-x 1".into(),
        ];
        assert!(r.to_messages(1024).is_ok());
    }

    #[test]
    fn classify_control_messages() {
        use ControlMessage::*;
        let c = |s: &[u8]| ControlMessage::parse(s);
        assert_eq!(c(b"PUSH_REQUEST\0"), PushRequest);
        assert_eq!(c(b"PUSH_REQUEST"), PushRequest);
        assert_eq!(c(b"EXIT\0"), Exit);
        assert_eq!(c(b"EXIT,whatever\0"), Exit);
        assert_eq!(c(b"RESTART\0"), Restart(None));
        assert_eq!(
            c(b"RESTART,[!]server shutting down\0"),
            Restart(Some("[!]server shutting down".into()))
        );
        assert_eq!(c(b"HALT,bye\0"), Halt(Some("bye".into())));
        assert_eq!(c(b"AUTH_FAILED\0"), AuthFailed(None));
        assert_eq!(
            c(b"AUTH_FAILED,TEMP[backoff 5]: try later\0"),
            AuthFailed(Some("TEMP[backoff 5]: try later".into()))
        );
        assert_eq!(
            c(b"AUTH_PENDING,timeout 60\0"),
            AuthPending(Some("timeout 60".into()))
        );
        assert_eq!(
            c(b"INFO_PRE,WEB_AUTH::https://sso.example/x\0"),
            InfoPre("WEB_AUTH::https://sso.example/x".into())
        );
        assert_eq!(c(b"INFO,hello\0"), Info("hello".into()));
        assert_eq!(c(b"CR_RESPONSE,aGVsbG8=\0"), CrResponse("aGVsbG8=".into()));
        assert_eq!(
            c(b"PUSH_REPLY,ping 10,ping-restart 60\0"),
            PushReply("ping 10,ping-restart 60".into())
        );
        assert_eq!(c(b"PUSH_REQUEST\0garbage after nul"), PushRequest);
        assert_eq!(c(b"PUSH_REQUEST\n"), PushRequest);
        assert_eq!(c(b"PUSH_REQUEST,x\0"), Other("PUSH_REQUEST,x".into()));
        assert_eq!(c(b"push_request\0"), Other("push_request".into()));
        assert_eq!(c(b"ACC,foo,bar\0"), Other("ACC,foo,bar".into()));
        assert_eq!(c(b"INFO\0"), Other("INFO".into()));
        assert_eq!(c(b""), Other(String::new()));
        assert_eq!(c(b"\xff\xfeEXIT"), Other("\u{fffd}\u{fffd}EXIT".into()));
    }

    #[test]
    fn control_messages_round_trip() {
        use ControlMessage::*;
        for m in [
            PushRequest,
            PushReply("ping 10".into()),
            Exit,
            Restart(None),
            Restart(Some("x".into())),
            Halt(None),
            AuthFailed(Some("denied".into())),
            AuthPending(None),
            Info("i".into()),
            InfoPre("WEB_AUTH::u".into()),
            CrResponse("b64".into()),
            Other("SOMETHING,else".into()),
        ] {
            let bytes = m.to_bytes();
            assert_eq!(bytes.last(), Some(&0));
            assert_eq!(ControlMessage::parse(&bytes), m, "{m}");
        }
    }

    #[test]
    fn cipher_negotiation() {
        let pi = client_2_6_14();
        assert_eq!(
            negotiate_cipher(DEFAULT_SERVER_CIPHERS, &pi).unwrap(),
            "AES-256-GCM"
        );
        // The server's preference wins over the client's order.
        let server = ["CHACHA20-POLY1305", "AES-256-GCM"];
        assert_eq!(negotiate_cipher(&server, &pi).unwrap(), "CHACHA20-POLY1305");
        // Case-insensitive, server spelling.
        let lower = PeerInfo::parse("IV_CIPHERS=aes-128-gcm");
        assert_eq!(
            negotiate_cipher(DEFAULT_SERVER_CIPHERS, &lower).unwrap(),
            "AES-128-GCM"
        );
        // 2.4 client: IV_NCP=2, no IV_CIPHERS.
        let old = PeerInfo::parse("IV_VER=2.4.12\nIV_NCP=2");
        assert_eq!(
            negotiate_cipher(&["CHACHA20-POLY1305", "AES-128-GCM"], &old).unwrap(),
            "AES-128-GCM"
        );
        // No match names both lists.
        let bf = PeerInfo::parse("IV_CIPHERS=BF-CBC:AES-256-CBC");
        let err = negotiate_cipher(DEFAULT_SERVER_CIPHERS, &bf)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"),
            "{err}"
        );
        assert!(err.contains("BF-CBC:AES-256-CBC"), "{err}");
        // No list at all.
        let ancient = PeerInfo::parse("IV_VER=2.3.18\nIV_NCP=1");
        let err = negotiate_cipher(DEFAULT_SERVER_CIPHERS, &ancient).unwrap_err();
        assert!(matches!(err, CipherError::NoClientCiphers { .. }));
        assert!(err.to_string().contains("AES-256-GCM"));
        // Owned server lists work too.
        let owned: Vec<String> = vec!["AES-128-GCM".into()];
        assert_eq!(negotiate_cipher(&owned, &pi).unwrap(), "AES-128-GCM");
    }

    proptest! {
        #[test]
        fn classifier_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let m = ControlMessage::parse(&bytes);
            // Whatever it is, it prints and re-parses to itself.
            prop_assert_eq!(ControlMessage::parse(&m.to_bytes()), m);
        }

        #[test]
        fn packing_keeps_every_option_in_order_within_the_limit(
            opts in proptest::collection::vec("[a-z0-9 .]{1,60}", 0..80),
            max in 100usize..1500,
        ) {
            let msgs = pack_options(&opts, max).unwrap();
            let mut joined = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                prop_assert!(m.len() < max, "message plus NUL exceeds {}", max);
                let rest = m.strip_prefix("PUSH_REPLY").unwrap();
                let mut parts: Vec<&str> = rest.split(',').skip(1).collect();
                if msgs.len() > 1 {
                    let cont = parts.pop().unwrap();
                    let want = if i + 1 == msgs.len() { "push-continuation 1" } else { "push-continuation 2" };
                    prop_assert_eq!(cont, want);
                }
                joined.extend(parts.into_iter().map(str::to_string));
            }
            prop_assert_eq!(joined, opts);
        }
    }
}
