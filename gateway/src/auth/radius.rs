//! MFA codes checked by a RADIUS server (RFC 2865), as AWS's Active Directory MFA does: an
//! Access-Request with `User-Name` and the code as `User-Password` (PAP, hidden with the shared
//! secret), answered by Access-Accept (right code) or Access-Reject (wrong code).
//!
//! Packets are encoded and decoded with the `radius` crate; the UDP exchange is ours, so that
//! timeouts and tries are the directory's: one socket on an ephemeral port, `connect`ed to the
//! server (the kernel drops datagrams from anyone else), the same request sent up to `retries`
//! times (RFC 5080 §2.2.1: a retransmission is the identical packet), each try waiting
//! `timeout`.
//!
//! Every datagram is hostile until [`check_answer`] says otherwise: one that does not parse,
//! answers another identifier, or whose Response Authenticator (or Message-Authenticator, when
//! present) does not verify with the shared secret is ignored, and the wait goes on. Requests
//! carry a Message-Authenticator (RFC 3579, placed first: the BlastRADIUS mitigation), so a
//! server set to require one accepts them. An answer without a Message-Authenticator is still
//! taken (servers before FreeRADIUS 3.2.5 send none): requiring it would need a per-directory
//! setting.
//!
//! Access-Challenge (a RADIUS-level second prompt) is not supported: it counts as a wrong code.
//! The code and the secret are never logged.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use radius::core::{
    code::Code,
    packet::Packet,
    rfc2865::{add_nas_identifier, add_user_name, add_user_password},
    rfc2869::{add_message_authenticator, MESSAGE_AUTHENTICATOR_TYPE},
};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use tokio::{net::UdpSocket, time::Instant};

use super::AuthFailure;
use crate::model::directory::{Directory, DirectorySecrets};

/// The largest RADIUS packet (RFC 2865 §3); larger datagrams are ignored.
pub const MAX_DATAGRAM: usize = 4096;
/// Code, identifier, length, authenticator.
pub const HEADER_LEN: usize = 20;
/// The longest `User-Password` RFC 2865 allows (bytes).
pub const MAX_CODE_LEN: usize = 128;
/// The longest attribute value (bytes).
pub const MAX_USERNAME_LEN: usize = 253;
/// The `NAS-Identifier` of our requests.
pub const NAS_IDENTIFIER: &str = "cvpn";

/// Why a directory's RADIUS settings cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RadiusConfigError {
    #[error("the directory has no RADIUS server (HOST:PORT)")]
    NoServer,
    #[error("the RADIUS server {0:?} is not an IP address and port (e.g. 10.0.0.5:1812 or [2001:db8::5]:1812)")]
    BadServer(String),
    #[error("no RADIUS shared secret is stored for the directory")]
    NoSecret,
    #[error("the RADIUS timeout and number of tries must be at least 1 (got {timeout_ms} ms, {retries} tries)")]
    BadTiming { timeout_ms: u32, retries: u32 },
}

/// A RADIUS server to check codes with. `Debug` does not show the secret.
#[derive(Clone)]
pub struct RadiusClient {
    server: SocketAddr,
    secret: Vec<u8>,
    timeout: Duration,
    retries: u32,
}

impl fmt::Debug for RadiusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RadiusClient")
            .field("server", &self.server)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

/// What a datagram received while waiting for an answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An authentic Access-Accept.
    Accept,
    /// An authentic Access-Reject.
    Reject,
    /// An authentic Access-Challenge.
    Challenge,
    /// Not an answer to our request: keep waiting.
    Ignore(Ignored),
}

/// Why a datagram was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("the request is shorter than a RADIUS header")]
    NoRequest,
    #[error("shorter than a RADIUS header")]
    TooShort,
    #[error("longer than {MAX_DATAGRAM} bytes")]
    TooLong,
    #[error("its length field does not fit the datagram")]
    BadLength,
    #[error("it answers another identifier")]
    OtherIdentifier,
    #[error("code {0} is not an answer to an Access-Request")]
    UnexpectedCode(u8),
    #[error("its Response Authenticator does not verify (wrong shared secret?)")]
    BadAuthenticator,
    #[error("its attributes are malformed")]
    Malformed,
    #[error("its Message-Authenticator does not verify")]
    BadMessageAuthenticator,
}

impl RadiusClient {
    /// The client of a directory's RADIUS settings: `radius_server` (`IP:PORT`),
    /// `radius_timeout_ms`, `radius_retries` (tries in all, at least 1) and the shared secret.
    pub fn new(dir: &Directory, secrets: &DirectorySecrets) -> Result<Self, RadiusConfigError> {
        let server = dir
            .radius_server
            .as_deref()
            .ok_or(RadiusConfigError::NoServer)?;
        let server: SocketAddr = server
            .trim()
            .parse()
            .map_err(|_| RadiusConfigError::BadServer(server.to_owned()))?;
        let secret = secrets
            .radius_secret
            .as_deref()
            .ok_or(RadiusConfigError::NoSecret)?;
        if dir.radius_timeout_ms == 0 || dir.radius_retries == 0 {
            return Err(RadiusConfigError::BadTiming {
                timeout_ms: dir.radius_timeout_ms,
                retries: dir.radius_retries,
            });
        }
        Self::with_settings(
            server,
            secret.as_bytes(),
            Duration::from_millis(dir.radius_timeout_ms.into()),
            dir.radius_retries,
        )
    }

    /// A client from its settings (tests, tools).
    pub fn with_settings(
        server: SocketAddr,
        secret: &[u8],
        timeout: Duration,
        retries: u32,
    ) -> Result<Self, RadiusConfigError> {
        if secret.is_empty() {
            return Err(RadiusConfigError::NoSecret);
        }
        if timeout.is_zero() || retries == 0 {
            return Err(RadiusConfigError::BadTiming {
                timeout_ms: timeout.as_millis().try_into().unwrap_or(u32::MAX),
                retries,
            });
        }
        Ok(Self {
            server,
            secret: secret.to_vec(),
            timeout,
            retries,
        })
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Asks the server whether `code` is `username`'s code.
    ///
    /// Ok on Access-Accept; [`AuthFailure::MfaBadCode`] on Access-Reject or Access-Challenge
    /// (or a code longer than PAP carries); [`AuthFailure::MfaMissing`] for an empty code;
    /// [`AuthFailure::UnknownUser`] for a user name RADIUS cannot carry;
    /// [`AuthFailure::MfaUnavailable`] (`"<server>: no answer after N tries"`, and why answers
    /// were ignored) when no authentic answer came within `retries` × `timeout`.
    pub async fn verify(&self, username: &str, code: &str) -> Result<(), AuthFailure> {
        let mut random = [0u8; 17];
        SystemRandom::new().fill(&mut random).map_err(|_| {
            AuthFailure::MfaUnavailable(format!("{}: the random generator failed", self.server))
        })?;
        let mut authenticator = [0u8; 16];
        authenticator.copy_from_slice(&random[1..]);
        let request = access_request(username, code, &self.secret, random[0], &authenticator)?;

        let unavailable = |what: &str, e: std::io::Error| {
            AuthFailure::MfaUnavailable(format!("{}: {what}: {e}", self.server))
        };
        let local: SocketAddr = if self.server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| unavailable("cannot open a UDP socket", e))?;
        socket
            .connect(self.server)
            .await
            .map_err(|e| unavailable("cannot reach", e))?;

        // One byte more than the largest packet: a longer datagram shows as too long.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut ignored = 0usize;
        let mut last_ignored: Option<Ignored> = None;
        let mut last_error: Option<String> = None;
        for _ in 0..self.retries {
            let deadline = Instant::now() + self.timeout;
            if let Err(e) = socket.send(&request).await {
                last_error = Some(e.to_string());
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            loop {
                let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => {
                        // E.g. an ICMP port unreachable: wait out the try, then send again.
                        last_error = Some(e.to_string());
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                };
                match check_answer(&request, &self.secret, &buf[..n]) {
                    Answer::Accept => return Ok(()),
                    Answer::Reject => return Err(AuthFailure::MfaBadCode),
                    Answer::Challenge => {
                        tracing::warn!(
                            server = %self.server,
                            "RADIUS Access-Challenge refused: cvpn does not answer RADIUS challenges"
                        );
                        return Err(AuthFailure::MfaBadCode);
                    }
                    Answer::Ignore(why) => {
                        tracing::debug!(server = %self.server, reason = %why, bytes = n, "RADIUS datagram ignored");
                        ignored += 1;
                        last_ignored = Some(why);
                    }
                }
            }
        }
        let mut msg = format!("{}: no answer after {} tries", self.server, self.retries);
        if let Some(why) = last_ignored {
            msg.push_str(&format!(" ({ignored} datagrams ignored, the last: {why})"));
        }
        if let Some(e) = last_error {
            msg.push_str(&format!(" (last error: {e})"));
        }
        Err(AuthFailure::MfaUnavailable(msg))
    }
}

type HmacMd5 = Hmac<Md5>;

/// The Access-Request for `username` and `code` (`User-Password`, hidden with `secret` and
/// `authenticator`), with a `NAS-Identifier` and, first, its Message-Authenticator.
pub fn access_request(
    username: &str,
    code: &str,
    secret: &[u8],
    identifier: u8,
    authenticator: &[u8; 16],
) -> Result<Vec<u8>, AuthFailure> {
    if code.is_empty() {
        return Err(AuthFailure::MfaMissing);
    }
    if code.len() > MAX_CODE_LEN {
        return Err(AuthFailure::MfaBadCode);
    }
    if username.is_empty() || username.len() > MAX_USERNAME_LEN {
        return Err(AuthFailure::UnknownUser);
    }
    let encoding = |what: &str| {
        AuthFailure::MfaUnavailable(format!("cannot encode the RADIUS request: {what}"))
    };
    // The crate draws identifiers and authenticators from `rand::thread_rng`; ours come from
    // the system's generator: a header decoded into a packet carries them.
    let mut header = [0u8; HEADER_LEN];
    header[0] = Code::AccessRequest as u8;
    header[1] = identifier;
    header[2..4].copy_from_slice(&(HEADER_LEN as u16).to_be_bytes());
    header[4..].copy_from_slice(authenticator);
    let mut packet = Packet::decode(&header, secret).map_err(|_| encoding("header"))?;
    add_message_authenticator(&mut packet, &[0u8; 16]);
    add_user_name(&mut packet, username);
    add_user_password(&mut packet, code.as_bytes()).map_err(|_| encoding("User-Password"))?;
    add_nas_identifier(&mut packet, NAS_IDENTIFIER);
    let mut bytes = packet.encode().map_err(|_| encoding("packet"))?;
    // The Message-Authenticator is the first attribute: HMAC-MD5 of the packet with it zeroed.
    if bytes.len() < HEADER_LEN + 18
        || bytes[HEADER_LEN] != MESSAGE_AUTHENTICATOR_TYPE
        || bytes[HEADER_LEN + 1] != 18
    {
        return Err(encoding("Message-Authenticator"));
    }
    let mac = hmac_md5(secret, &[&bytes]);
    bytes[HEADER_LEN + 2..HEADER_LEN + 18].copy_from_slice(&mac);
    Ok(bytes)
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <HmacMd5 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Checks a datagram received after sending `request` (the bytes sent) to a server sharing
/// `secret`: the length, the identifier, the code, the Response Authenticator
/// (`MD5(Code+ID+Length+RequestAuth+Attributes+Secret)`, RFC 2865 §3), the attributes, and the
/// Message-Authenticator if there is one (RFC 3579 §3.2; at most one). Bytes past the length
/// field are padding (RFC 2865 §3) and not read. Pure: the fuzz target `radius_answer` feeds it.
pub fn check_answer(request: &[u8], secret: &[u8], datagram: &[u8]) -> Answer {
    use Answer::Ignore;
    if request.len() < HEADER_LEN {
        return Ignore(Ignored::NoRequest);
    }
    if datagram.len() > MAX_DATAGRAM {
        return Ignore(Ignored::TooLong);
    }
    if datagram.len() < HEADER_LEN {
        return Ignore(Ignored::TooShort);
    }
    let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if len < HEADER_LEN || len > datagram.len() {
        return Ignore(Ignored::BadLength);
    }
    let answer = &datagram[..len];
    if answer[1] != request[1] {
        return Ignore(Ignored::OtherIdentifier);
    }
    if !matches!(answer[0], 2 | 3 | 11) {
        return Ignore(Ignored::UnexpectedCode(answer[0]));
    }
    let request_authenticator = &request[4..HEADER_LEN];
    let mut md5 = Md5::new();
    md5.update(&answer[..4]);
    md5.update(request_authenticator);
    md5.update(&answer[HEADER_LEN..]);
    md5.update(secret);
    let expected = md5.finalize();
    if !bool::from(expected.as_slice().ct_eq(&answer[4..HEADER_LEN])) {
        return Ignore(Ignored::BadAuthenticator);
    }
    let Ok(packet) = Packet::decode(answer, secret) else {
        return Ignore(Ignored::Malformed);
    };
    match packet.lookup_all(MESSAGE_AUTHENTICATOR_TYPE).len() {
        0 => {}
        1 => {
            if !message_authenticator_verifies(answer, request_authenticator, secret) {
                return Ignore(Ignored::BadMessageAuthenticator);
            }
        }
        _ => return Ignore(Ignored::BadMessageAuthenticator),
    }
    match packet.get_code() {
        Code::AccessAccept => Answer::Accept,
        Code::AccessReject => Answer::Reject,
        Code::AccessChallenge => Answer::Challenge,
        other => Ignore(Ignored::UnexpectedCode(other as u8)),
    }
}

/// The one Message-Authenticator of `answer` (attributes already decoded) is 16 bytes and equals
/// HMAC-MD5(secret, Code+ID+Length+RequestAuth+Attributes with its value zeroed).
fn message_authenticator_verifies(
    answer: &[u8],
    request_authenticator: &[u8],
    secret: &[u8],
) -> bool {
    let mut i = HEADER_LEN;
    while i + 2 <= answer.len() {
        let (typ, alen) = (answer[i], usize::from(answer[i + 1]));
        if alen < 2 || i + alen > answer.len() {
            return false;
        }
        if typ == MESSAGE_AUTHENTICATOR_TYPE {
            if alen != 18 {
                return false;
            }
            let value = &answer[i + 2..i + 18];
            let mac = hmac_md5(
                secret,
                &[
                    &answer[..4],
                    request_authenticator,
                    &answer[HEADER_LEN..i + 2],
                    &[0u8; 16],
                    &answer[i + 18..],
                ],
            );
            return bool::from(mac.ct_eq(value));
        }
        i += alen;
    }
    false
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use radius::core::rfc2865::{lookup_nas_identifier, lookup_user_name, lookup_user_password};

    use super::*;
    use crate::model::directory::{DirectoryPreset, GroupMode, MfaMode};
    use crate::model::resources::Timestamp;

    const SECRET: &[u8] = b"s3cr3t-shared";
    const AUTH: [u8; 16] = *b"ABCDEFGHIJKLMNOP";

    fn request() -> Vec<u8> {
        access_request("alice", "123456", SECRET, 42, &AUTH).unwrap()
    }

    /// An answer made by the radius crate (its own Response Authenticator code).
    fn crate_answer(code: Code, secret: &[u8], request: &[u8]) -> Vec<u8> {
        let req = Packet::decode(request, secret).unwrap();
        req.make_response_packet(code).encode().unwrap()
    }

    /// An answer with the given attributes whose Response Authenticator is right.
    fn signed_answer(code: u8, id: u8, attrs: &[u8], secret: &[u8]) -> Vec<u8> {
        let mut a = vec![code, id];
        a.extend(((HEADER_LEN + attrs.len()) as u16).to_be_bytes());
        a.extend(AUTH);
        a.extend(attrs);
        let mut md5 = Md5::new();
        md5.update(&a);
        md5.update(secret);
        let d = md5.finalize();
        a[4..HEADER_LEN].copy_from_slice(&d);
        a
    }

    /// An answer with a Message-Authenticator keyed with `ma_secret`.
    fn answer_with_ma(code: u8, ma_secret: &[u8]) -> Vec<u8> {
        let mut attrs = vec![18, 7, b'h', b'e', b'l', b'l', b'o'];
        attrs.extend([80, 18]);
        attrs.extend([0u8; 16]);
        let mut a = vec![code, 42];
        a.extend(((HEADER_LEN + attrs.len()) as u16).to_be_bytes());
        a.extend(AUTH);
        a.extend(&attrs);
        let mac = hmac_md5(ma_secret, &[&a]);
        let at = a.len() - 16;
        a[at..].copy_from_slice(&mac);
        signed_answer(code, 42, &a[HEADER_LEN..], SECRET)
    }

    #[test]
    fn the_request() {
        let req = request();
        assert_eq!(req[0], 1);
        assert_eq!(req[1], 42);
        assert_eq!(&req[4..20], &AUTH);
        assert_eq!(usize::from(u16::from_be_bytes([req[2], req[3]])), req.len());
        let p = Packet::decode(&req, SECRET).unwrap();
        assert_eq!(lookup_user_name(&p).unwrap().unwrap(), "alice");
        assert_eq!(lookup_user_password(&p).unwrap().unwrap(), b"123456");
        assert_eq!(lookup_nas_identifier(&p).unwrap().unwrap(), NAS_IDENTIFIER);
        // The password is hidden.
        assert!(!req.windows(6).any(|w| w == b"123456"));
        // The Message-Authenticator comes first and verifies.
        assert_eq!(&req[20..22], &[80, 18]);
        let mut zeroed = req.clone();
        zeroed[22..38].fill(0);
        assert_eq!(hmac_md5(SECRET, &[&zeroed]), req[22..38]);
        // Codes as long as PAP carries.
        let long = "9".repeat(MAX_CODE_LEN);
        let p = Packet::decode(
            &access_request("bob", &long, SECRET, 1, &AUTH).unwrap(),
            SECRET,
        )
        .unwrap();
        assert_eq!(lookup_user_password(&p).unwrap().unwrap(), long.as_bytes());
    }

    #[test]
    fn request_limits() {
        let r = |u: &str, c: &str| access_request(u, c, SECRET, 1, &AUTH).err();
        assert_eq!(r("alice", ""), Some(AuthFailure::MfaMissing));
        assert_eq!(r("alice", &"1".repeat(129)), Some(AuthFailure::MfaBadCode));
        assert_eq!(r("", "1"), Some(AuthFailure::UnknownUser));
        assert_eq!(r(&"a".repeat(254), "1"), Some(AuthFailure::UnknownUser));
        assert_eq!(r(&"a".repeat(253), "1"), None);
    }

    #[test]
    fn authentic_answers() {
        let req = request();
        assert_eq!(
            check_answer(
                &req,
                SECRET,
                &crate_answer(Code::AccessAccept, SECRET, &req)
            ),
            Answer::Accept
        );
        assert_eq!(
            check_answer(
                &req,
                SECRET,
                &crate_answer(Code::AccessReject, SECRET, &req)
            ),
            Answer::Reject
        );
        assert_eq!(
            check_answer(
                &req,
                SECRET,
                &crate_answer(Code::AccessChallenge, SECRET, &req)
            ),
            Answer::Challenge
        );
        // Padding past the length field is not read.
        let mut padded = crate_answer(Code::AccessAccept, SECRET, &req);
        padded.extend([0xee; 10]);
        assert_eq!(check_answer(&req, SECRET, &padded), Answer::Accept);
        // A Message-Authenticator that verifies.
        assert_eq!(
            check_answer(&req, SECRET, &answer_with_ma(2, SECRET)),
            Answer::Accept
        );
        assert_eq!(
            check_answer(&req, SECRET, &answer_with_ma(3, SECRET)),
            Answer::Reject
        );
    }

    #[test]
    fn hostile_answers_are_ignored() {
        let req = request();
        let ig = |d: &[u8]| match check_answer(&req, SECRET, d) {
            Answer::Ignore(why) => why,
            other => panic!("{other:?} for {d:?}"),
        };
        let accept = crate_answer(Code::AccessAccept, SECRET, &req);
        assert_eq!(
            ig(&crate_answer(Code::AccessAccept, b"other secret", &req)),
            Ignored::BadAuthenticator
        );
        // Each byte of the answer is covered by the authenticator.
        for i in [0usize, 4, 10, 19] {
            let mut bad = accept.clone();
            bad[i] ^= 1;
            assert!(
                matches!(check_answer(&req, SECRET, &bad), Answer::Ignore(_)),
                "byte {i}"
            );
        }
        let mut other_id = accept.clone();
        other_id[1] = 43;
        assert_eq!(ig(&other_id), Ignored::OtherIdentifier);
        // An answer to another request (other authenticator, same identifier).
        let other_req = access_request("alice", "123456", SECRET, 42, b"fedcba9876543210").unwrap();
        assert_eq!(
            ig(&crate_answer(Code::AccessAccept, SECRET, &other_req)),
            Ignored::BadAuthenticator
        );
        assert_eq!(ig(&[]), Ignored::TooShort);
        assert_eq!(ig(&accept[..19]), Ignored::TooShort);
        assert_eq!(ig(&[2u8; MAX_DATAGRAM + 1]), Ignored::TooLong);
        let mut long_len = accept.clone();
        long_len[3] += 1;
        assert_eq!(ig(&long_len), Ignored::BadLength);
        let mut short_len = accept.clone();
        short_len[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(ig(&short_len), Ignored::BadLength);
        // Authentic but not an answer to an Access-Request (an Access-Request echoed back, an
        // Accounting-Response).
        assert_eq!(
            ig(&signed_answer(1, 42, &[], SECRET)),
            Ignored::UnexpectedCode(1)
        );
        assert_eq!(
            ig(&signed_answer(5, 42, &[], SECRET)),
            Ignored::UnexpectedCode(5)
        );
        // Authentic but with malformed attributes.
        assert_eq!(
            ig(&signed_answer(2, 42, &[18, 9, b'x'], SECRET)),
            Ignored::Malformed
        );
        assert_eq!(
            ig(&signed_answer(2, 42, &[18, 1], SECRET)),
            Ignored::Malformed
        );
        assert_eq!(ig(&signed_answer(2, 42, &[18], SECRET)), Ignored::Malformed);
        // Message-Authenticator: wrong key, wrong size, two of them.
        assert_eq!(
            ig(&answer_with_ma(2, b"not the secret")),
            Ignored::BadMessageAuthenticator
        );
        let mut ma_short = vec![80, 17];
        ma_short.extend([0u8; 15]);
        assert_eq!(
            ig(&signed_answer(2, 42, &ma_short, SECRET)),
            Ignored::BadMessageAuthenticator
        );
        let good = answer_with_ma(2, SECRET);
        let mut two = good[HEADER_LEN..].to_vec();
        two.extend_from_slice(&good[good.len() - 18..]);
        assert_eq!(
            ig(&signed_answer(2, 42, &two, SECRET)),
            Ignored::BadMessageAuthenticator
        );
        // No request to check against.
        assert_eq!(
            check_answer(&req[..19], SECRET, &accept),
            Answer::Ignore(Ignored::NoRequest)
        );
    }

    fn directory(server: Option<&str>, timeout_ms: u32, retries: u32) -> Directory {
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
            radius_server: server.map(Into::into),
            radius_timeout_ms: timeout_ms,
            radius_retries: retries,
            radius_secret_set: true,
            creation_time: Timestamp(0),
        }
    }

    #[test]
    fn settings() {
        let secrets = DirectorySecrets {
            bind_password: None,
            radius_secret: Some("hunter2".into()),
        };
        let c = RadiusClient::new(&directory(Some("10.0.0.5:1812"), 3000, 3), &secrets).unwrap();
        assert_eq!(c.server(), "10.0.0.5:1812".parse().unwrap());
        assert_eq!(c.timeout(), Duration::from_secs(3));
        assert_eq!(c.retries(), 3);
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = RadiusClient::new(&directory(Some("[2001:db8::5]:1645"), 1, 1), &secrets).unwrap();
        assert!(c.server().is_ipv6());

        let err = |d: Directory, s: &DirectorySecrets| RadiusClient::new(&d, s).unwrap_err();
        assert_eq!(
            err(directory(None, 1, 1), &secrets),
            RadiusConfigError::NoServer
        );
        for bad in ["radius.example.test:1812", "10.0.0.5", "10.0.0.5:99999", ""] {
            assert_eq!(
                err(directory(Some(bad), 1, 1), &secrets),
                RadiusConfigError::BadServer(bad.into())
            );
        }
        assert_eq!(
            err(
                directory(Some("10.0.0.5:1812"), 1, 1),
                &DirectorySecrets::default()
            ),
            RadiusConfigError::NoSecret
        );
        let empty = DirectorySecrets {
            bind_password: None,
            radius_secret: Some(String::new()),
        };
        assert_eq!(
            err(directory(Some("10.0.0.5:1812"), 1, 1), &empty),
            RadiusConfigError::NoSecret
        );
        assert!(matches!(
            err(directory(Some("10.0.0.5:1812"), 0, 1), &secrets),
            RadiusConfigError::BadTiming { .. }
        ));
        assert!(matches!(
            err(directory(Some("10.0.0.5:1812"), 1, 0), &secrets),
            RadiusConfigError::BadTiming { .. }
        ));
    }

    proptest! {
        #[test]
        fn never_panics_nor_accepts_garbage(datagram in proptest::collection::vec(any::<u8>(), 0..300)) {
            let req = request();
            let got = check_answer(&req, SECRET, &datagram);
            prop_assert!(matches!(got, Answer::Ignore(_)), "{:?}", got);
        }

        #[test]
        fn authenticated_garbage_never_panics(code in prop_oneof![Just(2u8), Just(3), Just(11), any::<u8>()],
                                              attrs in proptest::collection::vec(any::<u8>(), 0..300)) {
            let req = request();
            let _ = check_answer(&req, SECRET, &signed_answer(code, 42, &attrs, SECRET));
        }
    }
}
