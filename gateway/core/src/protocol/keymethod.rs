//! OpenVPN key-method 2: the first record each side sends through the TLS tunnel, and the
//! client's peer-info that rides in it.
//!
//! # Record layout
//!
//! ```text
//! u32 0                      four zero bytes (a literal-zero "key method 1" length field)
//! u8  2                      key method
//! [48 bytes]                 pre-master secret: CLIENT RECORD ONLY
//! 32 bytes                   random1
//! 32 bytes                   random2
//! string                     options string (the peer's "occ" options summary)
//! string, string             username, password          } optional: older peers stop after
//! string                     peer-info                   } the options string
//! ```
//!
//! Each `string` is a big-endian u16 length followed by that many bytes; the length counts a
//! terminating NUL, which the bytes end with. A length of 0 is an empty (absent) string. The
//! server's record has **no** pre-master secret: only the client contributes one.
//!
//! Username and password come as a pair: a client without `auth-user-pass` sends two empty
//! strings when it has peer-info to send after them. Peer-info is newline-separated
//! `KEY=value` lines ([`PeerInfo`]).
//!
//! # Guarantees
//!
//! Parsing never panics; every rejection is a [`KeyMethodError`] naming the field. The password
//! and the key material never appear in `Debug` output.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

/// The key method this module speaks (the only one OpenVPN 2.4+ supports).
pub const KEY_METHOD_2: u8 = 2;
/// Length of the client's pre-master secret.
pub const PRE_MASTER_LEN: usize = 48;
/// Length of each of the two random values of a record.
pub const RANDOM_LEN: usize = 32;
/// Longest string a record can carry: a u16 length including the NUL.
pub const MAX_STRING_LEN: usize = u16::MAX as usize - 1;

/// Why bytes are not a valid key-method 2 record (or why a record cannot be written).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyMethodError {
    /// The record ended inside a field.
    #[error(
        "key-method 2 record truncated in the {field}: it needs {need} bytes, only {have} left"
    )]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// The first four bytes are not zero.
    #[error(
        "key-method record does not start with four zero bytes (got {0:02x?}): not key method 2"
    )]
    BadPrefix([u8; 4]),
    /// The key method byte is not 2.
    #[error(
        "unsupported key method {0}: only key method 2 is supported (OpenVPN 2.4+ clients use it)"
    )]
    UnsupportedKeyMethod(u8),
    /// A string's bytes do not end with the NUL its length counts.
    #[error("the {field} string is not NUL-terminated")]
    NotTerminated {
        /// The string field.
        field: &'static str,
    },
    /// A string contains a NUL before its end.
    #[error("the {field} string contains a NUL byte before its end")]
    EmbeddedNul {
        /// The string field.
        field: &'static str,
    },
    /// A string is not UTF-8.
    #[error("the {field} string is not valid UTF-8")]
    NotUtf8 {
        /// The string field.
        field: &'static str,
    },
    /// A username came without the password that must follow it.
    #[error("key-method 2 record has a username but no password field after it")]
    MissingPassword,
    /// Bytes follow the last field (peer-info).
    #[error("{0} unexpected bytes after the peer-info string of a key-method 2 record")]
    TrailingBytes(usize),
    /// A string to write is longer than a record can carry.
    #[error("the {field} string is {len} bytes long; a key-method 2 string holds at most {MAX_STRING_LEN}")]
    TooLong {
        /// The string field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

/// A password. Its `Debug` output is redacted and it has no `Display`: read it with
/// [`Password::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The password itself: pass it only to the authenticator.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True if the password is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Password(\"\")"
        } else {
            "Password(<redacted>)"
        })
    }
}

/// Username and password from `auth-user-pass`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The username, as typed by the user.
    pub username: String,
    /// The password (redacted in `Debug`).
    pub password: Password,
}

/// The client's key-method 2 record.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKeyRecord {
    /// The client's 48-byte pre-master secret (used by the legacy TLS-PRF key derivation).
    pub pre_master: [u8; PRE_MASTER_LEN],
    /// First random value.
    pub random1: [u8; RANDOM_LEN],
    /// Second random value.
    pub random2: [u8; RANDOM_LEN],
    /// The client's options string (e.g. `V4,dev-type tun,link-mtu 1559,...`).
    pub options: String,
    /// `None` if the record had no username/password fields or both were empty.
    pub credentials: Option<Credentials>,
    /// The raw peer-info text, if the record carried a non-empty one. Parse it with
    /// [`PeerInfo::parse`].
    pub peer_info: Option<String>,
}

/// The server's key-method 2 record: like the client's, without a pre-master secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerKeyRecord {
    /// First random value.
    pub random1: [u8; RANDOM_LEN],
    /// Second random value.
    pub random2: [u8; RANDOM_LEN],
    /// The server's options string.
    pub options: String,
    /// Peer-info the server sends, if any (stock servers send none to clients).
    pub peer_info: Option<String>,
}

impl fmt::Debug for ClientKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKeyRecord")
            .field("pre_master", &"<redacted>")
            .field("random1", &"<redacted>")
            .field("random2", &"<redacted>")
            .field("options", &self.options)
            .field("credentials", &self.credentials)
            .field("peer_info", &self.peer_info)
            .finish()
    }
}

impl fmt::Debug for ServerKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKeyRecord")
            .field("random1", &"<redacted>")
            .field("random2", &"<redacted>")
            .field("options", &self.options)
            .field("peer_info", &self.peer_info)
            .finish()
    }
}

/// A cursor over the record bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], KeyMethodError> {
        if self.buf.len() < n {
            return Err(KeyMethodError::Truncated {
                field,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], KeyMethodError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn string(&mut self, field: &'static str) -> Result<String, KeyMethodError> {
        let len = self.array::<2>(field)?;
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 {
            return Ok(String::new());
        }
        let bytes = self.take(len, field)?;
        let (last, body) = bytes
            .split_last()
            .ok_or(KeyMethodError::NotTerminated { field })?;
        if *last != 0 {
            return Err(KeyMethodError::NotTerminated { field });
        }
        if body.contains(&0) {
            return Err(KeyMethodError::EmbeddedNul { field });
        }
        String::from_utf8(body.to_vec()).map_err(|_| KeyMethodError::NotUtf8 { field })
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn write_string(out: &mut Vec<u8>, s: &str, field: &'static str) -> Result<(), KeyMethodError> {
    if s.as_bytes().contains(&0) {
        return Err(KeyMethodError::EmbeddedNul { field });
    }
    if s.len() > MAX_STRING_LEN {
        return Err(KeyMethodError::TooLong {
            field,
            len: s.len(),
        });
    }
    if s.is_empty() {
        out.extend_from_slice(&0u16.to_be_bytes());
        return Ok(());
    }
    // Fits: s.len() + 1 <= u16::MAX.
    let len = u16::try_from(s.len() + 1).map_err(|_| KeyMethodError::TooLong {
        field,
        len: s.len(),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

/// Reads the header (zero prefix and key method byte).
fn read_header(r: &mut Reader<'_>) -> Result<(), KeyMethodError> {
    let prefix = r.array::<4>("leading zero bytes")?;
    if prefix != [0; 4] {
        return Err(KeyMethodError::BadPrefix(prefix));
    }
    let [method] = r.array::<1>("key method")?;
    if method != KEY_METHOD_2 {
        return Err(KeyMethodError::UnsupportedKeyMethod(method));
    }
    Ok(())
}

/// Reads the optional tail: username, password, peer-info.
fn read_tail(r: &mut Reader<'_>) -> Result<(Option<Credentials>, Option<String>), KeyMethodError> {
    if r.is_empty() {
        return Ok((None, None));
    }
    let username = r.string("username")?;
    if r.is_empty() {
        return Err(KeyMethodError::MissingPassword);
    }
    let password = r.string("password")?;
    let credentials = (!username.is_empty() || !password.is_empty()).then_some(Credentials {
        username,
        password: Password(password),
    });
    if r.is_empty() {
        return Ok((credentials, None));
    }
    let peer_info = r.string("peer-info")?;
    if !r.is_empty() {
        return Err(KeyMethodError::TrailingBytes(r.buf.len()));
    }
    Ok((credentials, (!peer_info.is_empty()).then_some(peer_info)))
}

/// Writes the optional tail. Username/password fields are written when there are credentials or
/// peer-info to follow them.
fn write_tail(
    out: &mut Vec<u8>,
    credentials: Option<&Credentials>,
    peer_info: Option<&str>,
) -> Result<(), KeyMethodError> {
    if credentials.is_none() && peer_info.is_none() {
        return Ok(());
    }
    let (user, pass) = credentials.map_or(("", ""), |c| (c.username.as_str(), c.password.expose()));
    write_string(out, user, "username")?;
    write_string(out, pass, "password")?;
    if let Some(pi) = peer_info {
        write_string(out, pi, "peer-info")?;
    }
    Ok(())
}

impl ClientKeyRecord {
    /// Parses the client's record (the plaintext the server reads from the TLS tunnel first).
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyMethodError> {
        let mut r = Reader { buf: bytes };
        read_header(&mut r)?;
        let pre_master = r.array::<PRE_MASTER_LEN>("pre-master secret")?;
        let random1 = r.array::<RANDOM_LEN>("random1")?;
        let random2 = r.array::<RANDOM_LEN>("random2")?;
        let options = r.string("options")?;
        let (credentials, peer_info) = read_tail(&mut r)?;
        Ok(Self {
            pre_master,
            random1,
            random2,
            options,
            credentials,
            peer_info,
        })
    }

    /// Writes the record as a client would (used by tests and test clients).
    pub fn to_bytes(&self) -> Result<Vec<u8>, KeyMethodError> {
        let mut out =
            Vec::with_capacity(5 + PRE_MASTER_LEN + 2 * RANDOM_LEN + 8 + self.options.len());
        out.extend_from_slice(&[0, 0, 0, 0, KEY_METHOD_2]);
        out.extend_from_slice(&self.pre_master);
        out.extend_from_slice(&self.random1);
        out.extend_from_slice(&self.random2);
        write_string(&mut out, &self.options, "options")?;
        write_tail(
            &mut out,
            self.credentials.as_ref(),
            self.peer_info.as_deref(),
        )?;
        Ok(out)
    }

    /// The parsed peer-info (empty if the client sent none).
    pub fn peer_info(&self) -> PeerInfo {
        self.peer_info
            .as_deref()
            .map(PeerInfo::parse)
            .unwrap_or_default()
    }
}

impl ServerKeyRecord {
    /// Writes the server's record: no pre-master secret, and no username/password fields unless
    /// peer-info follows (then two empty strings hold their places).
    pub fn to_bytes(&self) -> Result<Vec<u8>, KeyMethodError> {
        let mut out = Vec::with_capacity(5 + 2 * RANDOM_LEN + 8 + self.options.len());
        out.extend_from_slice(&[0, 0, 0, 0, KEY_METHOD_2]);
        out.extend_from_slice(&self.random1);
        out.extend_from_slice(&self.random2);
        write_string(&mut out, &self.options, "options")?;
        write_tail(&mut out, None, self.peer_info.as_deref())?;
        Ok(out)
    }

    /// Parses a server's record (what a client reads; used by tests and test clients). Empty
    /// username/password placeholders are accepted and dropped.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyMethodError> {
        let mut r = Reader { buf: bytes };
        read_header(&mut r)?;
        let random1 = r.array::<RANDOM_LEN>("random1")?;
        let random2 = r.array::<RANDOM_LEN>("random2")?;
        let options = r.string("options")?;
        let (_, peer_info) = read_tail(&mut r)?;
        Ok(Self {
            random1,
            random2,
            options,
            peer_info,
        })
    }
}

/// The `IV_PROTO` bit field: protocol features a peer supports.
///
/// Bit meanings as defined by OpenVPN 2.6 (`IV_PROTO_*` in its `ssl.h`); bit 0 is reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IvProto(pub u32);

impl IvProto {
    /// Bit 1: the peer accepts `P_DATA_V2` packets (with a peer id).
    pub const DATA_V2: u32 = 1 << 1;
    /// Bit 2: the client sends no `PUSH_REQUEST`; the server pushes as soon as it is ready.
    pub const REQUEST_PUSH: u32 = 1 << 2;
    /// Bit 3: the peer can derive data-channel keys with the TLS keying-material exporter (EKM).
    pub const TLS_KEY_EXPORT: u32 = 1 << 3;
    /// Bit 4: the client understands `AUTH_PENDING` with the keyword list (timeout etc.).
    pub const AUTH_PENDING_KW: u32 = 1 << 4;
    /// Bit 5: NCP in peer-to-peer mode (not used by client/server setups).
    pub const NCP_P2P: u32 = 1 << 5;
    /// Bit 6: the client understands the pushed `dns` option.
    pub const DNS_OPTION: u32 = 1 << 6;
    /// Bit 7: explicit exit notification over the control channel (`EXIT` message,
    /// `protocol-flags cc-exit`).
    pub const CC_EXIT_NOTIFY: u32 = 1 << 7;
    /// Bit 8: the client understands `AUTH_FAILED,TEMP` (temporary failure, retry).
    pub const AUTH_FAIL_TEMP: u32 = 1 << 8;
    /// Bit 9: dynamic tls-crypt (`protocol-flags dyn-tls-crypt`).
    pub const DYN_TLS_CRYPT: u32 = 1 << 9;
    /// Bit 10: data channel epoch keys (OpenVPN 2.7).
    pub const DATA_EPOCH: u32 = 1 << 10;
    /// Bit 11: the client understands the extended `dns` option format (OpenVPN 2.7).
    pub const DNS_OPTION_V2: u32 = 1 << 11;

    /// True if every bit of `mask` is set.
    pub fn has(self, mask: u32) -> bool {
        self.0 & mask == mask
    }
    /// See [`IvProto::DATA_V2`].
    pub fn data_v2(self) -> bool {
        self.has(Self::DATA_V2)
    }
    /// See [`IvProto::REQUEST_PUSH`].
    pub fn request_push(self) -> bool {
        self.has(Self::REQUEST_PUSH)
    }
    /// See [`IvProto::TLS_KEY_EXPORT`].
    pub fn tls_key_export(self) -> bool {
        self.has(Self::TLS_KEY_EXPORT)
    }
    /// See [`IvProto::AUTH_PENDING_KW`].
    pub fn auth_pending_kw(self) -> bool {
        self.has(Self::AUTH_PENDING_KW)
    }
    /// See [`IvProto::DNS_OPTION`].
    pub fn dns_option(self) -> bool {
        self.has(Self::DNS_OPTION)
    }
    /// See [`IvProto::CC_EXIT_NOTIFY`].
    pub fn cc_exit_notify(self) -> bool {
        self.has(Self::CC_EXIT_NOTIFY)
    }
    /// See [`IvProto::AUTH_FAIL_TEMP`].
    pub fn auth_fail_temp(self) -> bool {
        self.has(Self::AUTH_FAIL_TEMP)
    }
    /// See [`IvProto::DYN_TLS_CRYPT`].
    pub fn dyn_tls_crypt(self) -> bool {
        self.has(Self::DYN_TLS_CRYPT)
    }
    /// See [`IvProto::DATA_EPOCH`].
    pub fn data_epoch(self) -> bool {
        self.has(Self::DATA_EPOCH)
    }
}

/// The client's peer-info, parsed from newline-separated `KEY=value` lines.
///
/// Parsing is lenient and total: peers send what they like. Known keys fill the typed fields;
/// `UV_*` keys (user-defined, from `setenv UV_...`) go to [`user_vars`](Self::user_vars);
/// everything else, including a known key whose value does not parse (e.g. `IV_MTU=abc`) and
/// lines without `=` (value `""`), goes to [`other`](Self::other). A key that repeats keeps its
/// last value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// `IV_VER`: the client's version, e.g. `2.6.14`.
    pub version: Option<String>,
    /// `IV_PLAT`: `linux`, `win`, `mac`, `ios`, `android`, ...
    pub platform: Option<String>,
    /// `IV_PLAT_VER`: the platform's version.
    pub platform_version: Option<String>,
    /// `IV_PROTO`: protocol feature bits (0 when absent).
    pub proto: IvProto,
    /// `IV_CIPHERS`: the data ciphers the client accepts, in its order of preference.
    pub ciphers: Option<Vec<String>>,
    /// `IV_MTU`: the largest tun MTU the client accepts.
    pub mtu: Option<u32>,
    /// `IV_TCPNL`: the client supports TCP non-linear mode.
    pub tcpnl: Option<bool>,
    /// `IV_NCP`: negotiable-crypto level (2 = can switch to AES-GCM ciphers on push).
    pub ncp: Option<u32>,
    /// `IV_GUI_VER`: the GUI that drives the client, e.g. `OpenVPN_GUI_11`.
    pub gui_version: Option<String>,
    /// `UV_*` keys, with the `UV_` prefix kept.
    pub user_vars: BTreeMap<String, String>,
    /// Every other key (and known keys with unparseable values).
    pub other: BTreeMap<String, String>,
}

impl PeerInfo {
    /// True when the client's `IV_SSO` (comma-separated methods a GUI or a `setenv IV_SSO`
    /// announces: `webauth`, `openurl`, `crtext`) names `method`.
    pub fn sso(&self, method: &str) -> bool {
        self.other
            .get("IV_SSO")
            .is_some_and(|v| v.split(',').any(|m| m.trim() == method))
    }

    /// Parses peer-info text. Never fails; see the type docs for what goes where.
    pub fn parse(text: &str) -> Self {
        let mut pi = PeerInfo::default();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            pi.set(key, value);
        }
        pi
    }

    fn set(&mut self, key: &str, value: &str) {
        let owned = || Some(value.to_string());
        let parsed = match key {
            "IV_VER" => {
                self.version = owned();
                true
            }
            "IV_PLAT" => {
                self.platform = owned();
                true
            }
            "IV_PLAT_VER" => {
                self.platform_version = owned();
                true
            }
            "IV_GUI_VER" => {
                self.gui_version = owned();
                true
            }
            "IV_PROTO" => value.parse().map(|v| self.proto = IvProto(v)).is_ok(),
            "IV_MTU" => value.parse().map(|v| self.mtu = Some(v)).is_ok(),
            "IV_NCP" => value.parse().map(|v| self.ncp = Some(v)).is_ok(),
            "IV_TCPNL" => match value {
                "0" => {
                    self.tcpnl = Some(false);
                    true
                }
                "1" => {
                    self.tcpnl = Some(true);
                    true
                }
                _ => false,
            },
            "IV_CIPHERS" => {
                self.ciphers = Some(
                    value
                        .split(':')
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
                true
            }
            k if k.starts_with("UV_") => {
                self.user_vars.insert(k.to_string(), value.to_string());
                true
            }
            _ => false,
        };
        if !parsed {
            self.other.insert(key.to_string(), value.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sso_methods_come_from_iv_sso() {
        let pi = PeerInfo::parse("IV_VER=2.6.14\nIV_SSO=webauth,crtext\n");
        assert!(pi.sso("crtext") && pi.sso("webauth"));
        assert!(!pi.sso("openurl") && !pi.sso("crt"));
        assert!(!PeerInfo::parse("IV_VER=2.6.14\n").sso("crtext"));
    }

    use proptest::prelude::*;

    use super::*;

    /// Peer-info as a stock OpenVPN 2.6.14 Linux client sent it (captured).
    const PEER_INFO_2_6_14: &str =
        "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n\
        IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n";

    fn client_record() -> ClientKeyRecord {
        ClientKeyRecord {
            pre_master: [0x11; PRE_MASTER_LEN],
            random1: [0x22; RANDOM_LEN],
            random2: [0x33; RANDOM_LEN],
            options: "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,\
                      auth [null-digest],keysize 256,key-method 2,tls-client"
                .into(),
            credentials: None,
            peer_info: Some(PEER_INFO_2_6_14.into()),
        }
    }

    #[test]
    fn captured_2_6_14_peer_info() {
        let pi = PeerInfo::parse(PEER_INFO_2_6_14);
        assert_eq!(pi.version.as_deref(), Some("2.6.14"));
        assert_eq!(pi.platform.as_deref(), Some("linux"));
        assert_eq!(pi.tcpnl, Some(true));
        assert_eq!(pi.mtu, Some(1600));
        assert_eq!(pi.ncp, Some(2));
        assert_eq!(
            pi.ciphers.as_deref(),
            Some(
                &[
                    "AES-256-GCM".to_string(),
                    "AES-128-GCM".into(),
                    "CHACHA20-POLY1305".into()
                ][..]
            )
        );
        assert_eq!(pi.proto, IvProto(990));
        // 990 = bits 1,2,3,4,6,7,8,9.
        let p = pi.proto;
        assert!(p.data_v2() && p.request_push() && p.tls_key_export() && p.auth_pending_kw());
        assert!(p.dns_option() && p.cc_exit_notify() && p.auth_fail_temp() && p.dyn_tls_crypt());
        assert!(!p.has(IvProto::NCP_P2P) && !p.data_epoch() && !p.has(1));
        assert!(pi.other.is_empty() && pi.user_vars.is_empty());
        assert_eq!(pi.gui_version, None);
    }

    #[test]
    fn peer_info_keeps_user_vars_unknown_keys_and_bad_values() {
        let pi = PeerInfo::parse(
            "IV_GUI_VER=OpenVPN_GUI_11\r\nUV_ROLE=admin\nIV_SSO=webauth,openurl\nIV_MTU=big\n\
             NOEQUALS\nIV_PLAT_VER=6.1\nIV_TCPNL=2\nIV_CIPHERS=\nIV_VER=2.5.0\nIV_VER=2.6.0",
        );
        assert_eq!(pi.gui_version.as_deref(), Some("OpenVPN_GUI_11"));
        assert_eq!(
            pi.user_vars.get("UV_ROLE").map(String::as_str),
            Some("admin")
        );
        assert_eq!(
            pi.other.get("IV_SSO").map(String::as_str),
            Some("webauth,openurl")
        );
        assert_eq!(pi.other.get("IV_MTU").map(String::as_str), Some("big"));
        assert_eq!(pi.mtu, None);
        assert_eq!(pi.other.get("IV_TCPNL").map(String::as_str), Some("2"));
        assert_eq!(pi.other.get("NOEQUALS").map(String::as_str), Some(""));
        assert_eq!(pi.platform_version.as_deref(), Some("6.1"));
        assert_eq!(pi.ciphers, Some(vec![]));
        assert_eq!(pi.version.as_deref(), Some("2.6.0"), "last value wins");
        assert_eq!(PeerInfo::parse(""), PeerInfo::default());
    }

    #[test]
    fn client_record_layout_and_round_trip() {
        let rec = client_record();
        let bytes = rec.to_bytes().unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 2]);
        assert_eq!(&bytes[5..53], &[0x11; 48]);
        assert_eq!(&bytes[53..85], &[0x22; 32]);
        assert_eq!(&bytes[85..117], &[0x33; 32]);
        let opt_len = u16::from_be_bytes([bytes[117], bytes[118]]) as usize;
        assert_eq!(opt_len, rec.options.len() + 1, "length counts the NUL");
        assert_eq!(bytes[119 + opt_len - 1], 0);
        // No credentials: two empty strings hold their places before the peer-info.
        let after = 119 + opt_len;
        assert_eq!(&bytes[after..after + 4], &[0, 0, 0, 0]);
        assert_eq!(ClientKeyRecord::parse(&bytes).unwrap(), rec);
        assert_eq!(
            ClientKeyRecord::parse(&bytes).unwrap().peer_info().ncp,
            Some(2)
        );
    }

    #[test]
    fn server_record_has_no_pre_master() {
        let rec = ServerKeyRecord {
            random1: [7; RANDOM_LEN],
            random2: [8; RANDOM_LEN],
            options: "V4,dev-type tun,tls-server".into(),
            peer_info: None,
        };
        let bytes = rec.to_bytes().unwrap();
        assert_eq!(bytes.len(), 5 + 64 + 2 + rec.options.len() + 1);
        assert_eq!(&bytes[5..37], &[7; 32]);
        assert_eq!(&bytes[37..69], &[8; 32]);
        assert_eq!(ServerKeyRecord::parse(&bytes).unwrap(), rec);
        // A client parser must not read it as a client record.
        assert!(ClientKeyRecord::parse(&bytes).is_err());

        let with_pi = ServerKeyRecord {
            peer_info: Some("IV_PROTO=2\n".into()),
            ..rec
        };
        let bytes = with_pi.to_bytes().unwrap();
        assert_eq!(ServerKeyRecord::parse(&bytes).unwrap(), with_pi);
    }

    #[test]
    fn older_clients_without_trailing_fields() {
        let rec = ClientKeyRecord {
            credentials: None,
            peer_info: None,
            ..client_record()
        };
        let bytes = rec.to_bytes().unwrap();
        assert_eq!(bytes.len(), 5 + 48 + 64 + 2 + rec.options.len() + 1);
        let parsed = ClientKeyRecord::parse(&bytes).unwrap();
        assert_eq!(parsed, rec);
        assert_eq!(parsed.peer_info(), PeerInfo::default());
    }

    #[test]
    fn credentials_round_trip_and_stay_out_of_debug() {
        let rec = ClientKeyRecord {
            credentials: Some(Credentials {
                username: "alice".into(),
                password: Password::new("hunter2-s3cret"),
            }),
            ..client_record()
        };
        let bytes = rec.to_bytes().unwrap();
        let parsed = ClientKeyRecord::parse(&bytes).unwrap();
        assert_eq!(parsed, rec);
        let creds = parsed.credentials.as_ref().unwrap();
        assert_eq!(creds.username, "alice");
        assert_eq!(creds.password.expose(), "hunter2-s3cret");
        let dbg = format!("{parsed:?} {creds:?} {:#?}", parsed);
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("alice") && dbg.contains("<redacted>"));
        // Key material is not printed either.
        assert!(!dbg.contains("17, 17"), "{dbg}");
    }

    #[test]
    fn empty_strings_may_be_length_zero_or_a_lone_nul() {
        let mut bytes = vec![0, 0, 0, 0, 2];
        bytes.extend_from_slice(&[1; 48 + 64]);
        bytes.extend_from_slice(&[0, 1, 0]); // options: just the NUL
        bytes.extend_from_slice(&[0, 0]); // username: length 0
        bytes.extend_from_slice(&[0, 1, 0]); // password: NUL
        bytes.extend_from_slice(&[0, 0]); // peer-info: length 0
        let rec = ClientKeyRecord::parse(&bytes).unwrap();
        assert_eq!(rec.options, "");
        assert_eq!(rec.credentials, None);
        assert_eq!(rec.peer_info, None);
    }

    #[test]
    fn specific_errors() {
        let good = client_record().to_bytes().unwrap();
        let err = |b: &[u8]| ClientKeyRecord::parse(b).unwrap_err();

        assert!(matches!(
            err(&[]),
            KeyMethodError::Truncated {
                field: "leading zero bytes",
                ..
            }
        ));
        let mut b = good.clone();
        b[2] = 1;
        assert_eq!(err(&b), KeyMethodError::BadPrefix([0, 0, 1, 0]));
        let mut b = good.clone();
        b[4] = 1;
        assert_eq!(err(&b), KeyMethodError::UnsupportedKeyMethod(1));
        assert!(err(&b).to_string().contains("only key method 2"));
        assert!(matches!(
            err(&good[..30]),
            KeyMethodError::Truncated {
                field: "pre-master secret",
                need: 48,
                have: 25
            }
        ));
        assert!(matches!(
            err(&good[..100]),
            KeyMethodError::Truncated {
                field: "random2",
                ..
            }
        ));
        assert!(matches!(
            err(&good[..118]),
            KeyMethodError::Truncated {
                field: "options",
                ..
            }
        ));
        assert!(matches!(
            err(&good[..130]),
            KeyMethodError::Truncated {
                field: "options",
                ..
            }
        ));

        // Options not NUL-terminated.
        let mut b = good[..117].to_vec();
        b.extend_from_slice(&[0, 2, b'a', b'b']);
        assert_eq!(err(&b), KeyMethodError::NotTerminated { field: "options" });
        // Embedded NUL.
        let mut b = good[..117].to_vec();
        b.extend_from_slice(&[0, 3, b'a', 0, 0]);
        assert_eq!(err(&b), KeyMethodError::EmbeddedNul { field: "options" });
        // Not UTF-8.
        let mut b = good[..117].to_vec();
        b.extend_from_slice(&[0, 2, 0xff, 0]);
        assert_eq!(err(&b), KeyMethodError::NotUtf8 { field: "options" });
        // Username without password.
        let mut b = good[..117].to_vec();
        b.extend_from_slice(&[0, 1, 0, 0, 2, b'u', 0]);
        assert_eq!(err(&b), KeyMethodError::MissingPassword);
        // Trailing bytes after peer-info.
        let mut b = good.clone();
        b.push(9);
        assert_eq!(err(&b), KeyMethodError::TrailingBytes(1));
    }

    #[test]
    fn writing_refuses_nul_and_oversized_strings() {
        let rec = ClientKeyRecord {
            options: "a\0b".into(),
            ..client_record()
        };
        assert_eq!(
            rec.to_bytes().unwrap_err(),
            KeyMethodError::EmbeddedNul { field: "options" }
        );
        let rec = ClientKeyRecord {
            peer_info: Some("x".repeat(MAX_STRING_LEN + 1)),
            ..client_record()
        };
        assert!(matches!(
            rec.to_bytes().unwrap_err(),
            KeyMethodError::TooLong {
                field: "peer-info",
                ..
            }
        ));
        let rec = ClientKeyRecord {
            peer_info: Some("x".repeat(MAX_STRING_LEN)),
            ..client_record()
        };
        assert_eq!(
            ClientKeyRecord::parse(&rec.to_bytes().unwrap()).unwrap(),
            rec
        );
    }

    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,40}"
    }

    proptest! {
        #[test]
        fn client_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = ClientKeyRecord::parse(&bytes);
            let _ = ServerKeyRecord::parse(&bytes);
        }

        #[test]
        fn parser_never_panics_on_a_valid_prefix_with_junk(
            cut in 0usize..300,
            junk in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut b = client_record().to_bytes().unwrap();
            b.truncate(cut);
            b.extend_from_slice(&junk);
            let _ = ClientKeyRecord::parse(&b);
        }

        #[test]
        fn peer_info_parser_never_panics(s in any::<String>()) {
            let _ = PeerInfo::parse(&s);
        }

        #[test]
        fn client_records_round_trip(
            pre in any::<[u8; 32]>(),
            options in text(),
            user in text(),
            pass in text(),
            peer_info in proptest::option::of("[^\u{0}]{1,40}"),
        ) {
            let mut pre_master = [0u8; PRE_MASTER_LEN];
            pre_master[..32].copy_from_slice(&pre);
            let credentials = (!user.is_empty() || !pass.is_empty())
                .then(|| Credentials { username: user, password: Password::new(pass) });
            let rec = ClientKeyRecord {
                pre_master, random1: pre, random2: [5; 32], options, credentials, peer_info,
            };
            let bytes = rec.to_bytes().unwrap();
            prop_assert_eq!(ClientKeyRecord::parse(&bytes).unwrap(), rec);
        }
    }
}
