//! AWS Signature Version 4, the server's side: checks that a request was signed with the
//! secret of the access key it names. Sans-IO: the request's parts and the current time in, the
//! key's id and the scope out. HMAC-SHA256 and SHA-256 are ring's; the comparison is ring's
//! constant-time `hmac::verify`.
//!
//! What is checked, in order (each refusal says which):
//! 1. `Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
//!    SignedHeaders=…, Signature=<64 hex>` parses; presigned URLs and session tokens
//!    (`X-Amz-Security-Token`) are refused: cvpn issues long-term keys only.
//! 2. `X-Amz-Date` is within [`MAX_CLOCK_SKEW`] of now (`RequestExpired` otherwise) and on the
//!    credential's date; the service is the one this listener serves.
//! 3. `host` and `x-amz-date` are among the signed headers and every signed header is present.
//! 4. The key exists (the caller's lookup), and the signature over the canonical request
//!    (method, path, sorted query, signed headers, SHA-256 of the body) verifies.

use std::fmt::Write as _;

use ring::{digest, hmac};

/// How far a request's `X-Amz-Date` may be from the server's clock (AWS's 15 minutes).
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;
/// Longest `Authorization` header considered (a few dozen signed headers fit).
pub const MAX_AUTHORIZATION_LEN: usize = 4096;

/// A request as signed: its parts as they came on the wire.
#[derive(Clone, Debug)]
pub struct SignedRequest<'a> {
    /// `POST`, `GET`, …
    pub method: &'a str,
    /// The path as sent (percent-encoded), e.g. `/`.
    pub path: &'a str,
    /// The query string as sent, without `?` (may be empty).
    pub query: &'a str,
    /// Every header, names in any case, in the order received.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The body.
    pub body: &'a [u8],
}

/// Who signed an accepted request, and for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The access key id.
    pub access_key_id: String,
    /// The region the client signed for (any: cvpn has one region per listener).
    pub region: String,
}

/// Why a request's signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// No `Authorization` header.
    #[error("the request is not signed: sign it with an access key from `cvpn access-key create` (AWS Signature Version 4)")]
    Unsigned,
    /// The header or a part of it does not parse.
    #[error("the Authorization header is malformed: {0}")]
    Malformed(String),
    /// Something cvpn does not accept (session tokens, presigned URLs, other algorithms).
    #[error("{0}")]
    Unsupported(String),
    /// The request's time is too far from the server's.
    #[error("the request's X-Amz-Date {date} is {skew_secs} s from the server's time, more than the 900 s allowed: check the client's clock")]
    Expired {
        /// The date the client sent.
        date: String,
        /// How far off it is.
        skew_secs: i64,
    },
    /// No key with that id.
    #[error("access key {0} does not exist (`cvpn access-key list` shows the keys)")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the request signature does not match: check the secret access key and that nothing changed the request on its way")]
    BadSignature,
}

impl SigV4Error {
    /// EC2's error code for it.
    pub fn code(&self) -> &'static str {
        match self {
            SigV4Error::Expired { .. } => "RequestExpired",
            SigV4Error::Unsigned => "MissingAuthenticationToken",
            _ => "AuthFailure",
        }
    }
}

/// The parts of an `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: Vec<u8>,
}

fn malformed(what: impl Into<String>) -> SigV4Error {
    SigV4Error::Malformed(what.into())
}

fn parse_authorization(v: &str) -> Result<Authorization<'_>, SigV4Error> {
    if v.len() > MAX_AUTHORIZATION_LEN {
        return Err(malformed("longer than 4096 characters"));
    }
    let rest = v.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        SigV4Error::Unsupported(
            "only AWS4-HMAC-SHA256 signatures (Signature Version 4) are accepted".into(),
        )
    })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("Credential", c)) => credential = Some(c),
            Some(("SignedHeaders", s)) => signed = Some(s),
            Some(("Signature", s)) => signature = Some(s),
            _ => return Err(malformed(format!("unexpected part {part:?}"))),
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let signed = signed.ok_or_else(|| malformed("no SignedHeaders"))?;
    let signature = signature.ok_or_else(|| malformed("no Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminal] = scope[..] else {
        return Err(malformed(
            "Credential is not KEY/YYYYMMDD/REGION/SERVICE/aws4_request",
        ));
    };
    if terminal != "aws4_request"
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || access_key_id.is_empty()
        || region.is_empty()
    {
        return Err(malformed(
            "Credential is not KEY/YYYYMMDD/REGION/SERVICE/aws4_request",
        ));
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(malformed(
            "SignedHeaders must be lowercase names separated by ;",
        ));
    }
    if signature.len() != 64 {
        return Err(malformed("Signature is not 64 hex digits"));
    }
    let signature = (0..32)
        .map(|i| u8::from_str_radix(&signature[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| malformed("Signature is not 64 hex digits"))?;
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// `YYYYMMDDTHHMMSSZ` → seconds since 1970 (UTC).
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (H. Hinnant), as the model's Timestamp does.
    let (yy, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters kept, the rest `%XX`
/// upper-case.
fn uri_encode(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded_pairs(query)
        .map(|(k, v)| {
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(&mut ek, &k);
            uri_encode(&mut ev, &v);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A query string's pairs, percent-decoded (`+` is a literal plus in a URL query as AWS
/// signs it, unlike a form body).
fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (
            percent_encoding::percent_decode_str(k).collect(),
            percent_encoding::percent_decode_str(v).collect(),
        )
    })
}

fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        uri_encode(&mut out, seg.as_bytes());
    }
    out
}

/// A header's value as SigV4 canonicalises it: trimmed, runs of spaces made one.
fn trim_all(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn header<'a>(req: &SignedRequest<'a>, name: &str) -> Vec<&'a [u8]> {
    req.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .collect()
}

/// The signing key of `secret` for one day, region and service.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// The string a request's signature is over.
fn string_to_sign(
    req: &SignedRequest<'_>,
    auth: &Authorization<'_>,
    amz_date: &str,
) -> Result<String, SigV4Error> {
    let mut canonical = String::new();
    canonical.push_str(req.method);
    canonical.push('\n');
    canonical.push_str(&canonical_path(req.path));
    canonical.push('\n');
    canonical.push_str(&canonical_query(req.query));
    canonical.push('\n');
    for name in &auth.signed_headers {
        let values = header(req, name);
        if values.is_empty() {
            return Err(malformed(format!(
                "signed header {name} is not in the request"
            )));
        }
        let joined: Vec<String> = values.iter().map(|v| trim_all(v)).collect();
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&joined.join(","));
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&auth.signed_headers.join(";"));
    canonical.push('\n');
    canonical.push_str(&hex(digest::digest(&digest::SHA256, req.body).as_ref()));
    Ok(format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        auth.date,
        auth.region,
        auth.service,
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    ))
}

/// A well-formed, fresh request whose signature is still to be checked against its key's
/// secret ([`Pending::verify`]): the key lookup happens between the two steps, so a malformed or
/// stale flood costs no lookup.
#[derive(Clone, Debug)]
pub struct Pending {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    string_to_sign: String,
    signature: Vec<u8>,
}

impl Pending {
    /// The access key the request names.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// Checks the signature with the key's secret (None: no such key).
    pub fn verify(&self, secret: Option<&str>) -> Result<Signer, SigV4Error> {
        let Some(secret) = secret else {
            return Err(SigV4Error::UnknownKey(self.access_key_id.clone()));
        };
        let key = signing_key(secret, &self.date, &self.region, &self.service);
        match hmac::verify(&key, self.string_to_sign.as_bytes(), &self.signature) {
            Ok(()) => Ok(Signer {
                access_key_id: self.access_key_id.clone(),
                region: self.region.clone(),
            }),
            Err(_) => Err(SigV4Error::BadSignature),
        }
    }
}

/// Checks everything about `req` but the signature itself, for `service` at time `now`
/// (seconds since 1970): steps 1 to 3 of the [module documentation](self).
pub fn prepare(req: &SignedRequest<'_>, service: &str, now: i64) -> Result<Pending, SigV4Error> {
    let auth = header(req, "authorization");
    let [auth] = auth[..] else {
        return Err(if !auth.is_empty() {
            malformed("more than one Authorization header")
        } else if req.query.contains("X-Amz-Signature=") {
            SigV4Error::Unsupported(
                "presigned URLs are not accepted: sign the request's Authorization header".into(),
            )
        } else {
            SigV4Error::Unsigned
        });
    };
    let auth = std::str::from_utf8(auth).map_err(|_| malformed("not text"))?;
    let auth = parse_authorization(auth)?;
    if !header(req, "x-amz-security-token").is_empty() {
        return Err(SigV4Error::Unsupported(
            "temporary (session) credentials are not accepted: sign with an access key from \
             `cvpn access-key create`"
                .into(),
        ));
    }
    if auth.service != service {
        return Err(malformed(format!(
            "the request is signed for service {:?}; this listener is {service:?}",
            auth.service
        )));
    }
    for needed in ["host", "x-amz-date"] {
        if !auth.signed_headers.contains(&needed) {
            return Err(malformed(format!("{needed} must be a signed header")));
        }
    }
    let dates = header(req, "x-amz-date");
    let [date] = dates[..] else {
        return Err(malformed("exactly one X-Amz-Date header is needed"));
    };
    let date = std::str::from_utf8(date).map_err(|_| malformed("X-Amz-Date is not text"))?;
    let t = parse_amz_date(date).ok_or_else(|| malformed("X-Amz-Date is not YYYYMMDDTHHMMSSZ"))?;
    let skew = (now - t).abs();
    if skew > MAX_CLOCK_SKEW_SECS {
        return Err(SigV4Error::Expired {
            date: date.to_string(),
            skew_secs: skew,
        });
    }
    if !date.starts_with(auth.date) {
        return Err(malformed(
            "the Credential's date is not the day of X-Amz-Date",
        ));
    }
    let string_to_sign = string_to_sign(req, &auth, date)?;
    Ok(Pending {
        access_key_id: auth.access_key_id.to_string(),
        date: auth.date.to_string(),
        region: auth.region.to_string(),
        service: auth.service.to_string(),
        string_to_sign,
        signature: auth.signature,
    })
}

/// [`prepare`] and [`Pending::verify`] with a synchronous key lookup.
pub fn verify<E>(
    req: &SignedRequest<'_>,
    service: &str,
    now: i64,
    secret_of: impl FnOnce(&str) -> Result<Option<String>, E>,
) -> Result<Result<Signer, SigV4Error>, E> {
    let pending = match prepare(req, service, now) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let secret = secret_of(pending.access_key_id())?;
    Ok(pending.verify(secret.as_deref()))
}

/// Signs a request as a client would (`Authorization` header value): for tests and tools that
/// talk to the listener without an AWS SDK.
pub fn sign(
    req: &SignedRequest<'_>,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    signed_headers: &[&str],
) -> Result<String, SigV4Error> {
    let dates = header(req, "x-amz-date");
    let date = dates
        .first()
        .and_then(|d| std::str::from_utf8(d).ok())
        .ok_or_else(|| malformed("no X-Amz-Date"))?;
    let day = date.get(..8).ok_or_else(|| malformed("short X-Amz-Date"))?;
    let auth = Authorization {
        access_key_id,
        date: day,
        region,
        service,
        signed_headers: signed_headers.to_vec(),
        signature: Vec::new(),
    };
    let sts = string_to_sign(req, &auth, date)?;
    let key = signing_key(secret, day, region, service);
    Ok(format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{day}/{region}/{service}/aws4_request, \
         SignedHeaders={}, Signature={}",
        signed_headers.join(";"),
        hex(hmac::sign(&key, sts.as_bytes()).as_ref())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's Signature Version 4 test suite (docs.aws.amazon.com, "signature-v4-test-suite"):
    // its credentials, time and scope, and the expected signature of each request below.
    const KEY: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";
    const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z

    struct Case {
        name: &'static str,
        method: &'static str,
        query: &'static str,
        content_type: Option<&'static str>,
        body: &'static str,
        signature: &'static str,
    }

    const SUITE: &[Case] = &[
        Case {
            name: "get-vanilla",
            method: "GET",
            query: "",
            content_type: None,
            body: "",
            signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        },
        Case {
            name: "post-vanilla-query",
            method: "POST",
            query: "Param1=value1",
            content_type: None,
            body: "",
            signature: "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        },
        Case {
            name: "post-x-www-form-urlencoded",
            method: "POST",
            query: "",
            content_type: Some("application/x-www-form-urlencoded"),
            body: "Param1=value1",
            signature: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        },
        Case {
            name: "post-x-www-form-urlencoded-parameters",
            method: "POST",
            query: "",
            content_type: Some("application/x-www-form-urlencoded; charset=utf8"),
            body: "Param1=value1",
            signature: "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe",
        },
    ];

    fn request<'a>(c: &'a Case, auth: &'a str) -> SignedRequest<'a> {
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if let Some(ct) = c.content_type {
            headers.push(("Content-Type", ct.as_bytes()));
        }
        headers.push(("Host", b"example.amazonaws.com"));
        headers.push(("X-Amz-Date", DATE.as_bytes()));
        if !auth.is_empty() {
            headers.push(("Authorization", auth.as_bytes()));
        }
        SignedRequest {
            method: c.method,
            path: "/",
            query: c.query,
            headers,
            body: c.body.as_bytes(),
        }
    }

    fn signed_headers(c: &Case) -> &'static str {
        if c.content_type.is_some() {
            "content-type;host;x-amz-date"
        } else {
            "host;x-amz-date"
        }
    }

    fn authorization(c: &Case, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={KEY}/20150830/us-east-1/service/aws4_request, \
             SignedHeaders={}, Signature={signature}",
            signed_headers(c)
        )
    }

    fn check(req: &SignedRequest<'_>, now: i64, secret: &str) -> Result<Signer, SigV4Error> {
        verify::<()>(req, "service", now, |id| {
            Ok((id == KEY).then(|| secret.to_string()))
        })
        .unwrap()
    }

    #[test]
    fn the_aws_test_suite_signatures_verify_and_are_what_sign_makes() {
        for c in SUITE {
            let auth = authorization(c, c.signature);
            let req = request(c, &auth);
            assert_eq!(
                check(&req, NOW, SECRET),
                Ok(Signer {
                    access_key_id: KEY.into(),
                    region: "us-east-1".into()
                }),
                "{}",
                c.name
            );
            let unsigned = request(c, "");
            let headers: Vec<&str> = signed_headers(c).split(';').collect();
            assert_eq!(
                sign(&unsigned, KEY, SECRET, "us-east-1", "service", &headers).unwrap(),
                auth,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn a_wrong_secret_a_changed_body_or_a_flipped_bit_is_refused() {
        let c = &SUITE[2];
        let auth = authorization(c, c.signature);
        let req = request(c, &auth);
        assert_eq!(
            check(&req, NOW, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ"),
            Err(SigV4Error::BadSignature)
        );
        let mut changed = req.clone();
        changed.body = b"Param1=value2";
        assert_eq!(check(&changed, NOW, SECRET), Err(SigV4Error::BadSignature));
        let mut flipped = c.signature.to_string();
        flipped.replace_range(0..1, "6");
        let auth = authorization(c, &flipped);
        assert_eq!(
            check(&request(c, &auth), NOW, SECRET),
            Err(SigV4Error::BadSignature)
        );
        // Another header value than the one signed.
        let auth = authorization(c, c.signature);
        let mut other_host = request(c, &auth);
        other_host.headers[1] = ("Host", b"evil.example.com");
        assert_eq!(
            check(&other_host, NOW, SECRET),
            Err(SigV4Error::BadSignature)
        );
    }

    #[test]
    fn the_clock_may_be_off_by_fifteen_minutes_and_no_more() {
        let c = &SUITE[0];
        let auth = authorization(c, c.signature);
        let req = request(c, &auth);
        assert!(check(&req, NOW + MAX_CLOCK_SKEW_SECS, SECRET).is_ok());
        assert!(check(&req, NOW - MAX_CLOCK_SKEW_SECS, SECRET).is_ok());
        let e = check(&req, NOW + MAX_CLOCK_SKEW_SECS + 1, SECRET).unwrap_err();
        assert_eq!(e.code(), "RequestExpired", "{e}");
        let e = check(&req, NOW - MAX_CLOCK_SKEW_SECS - 1, SECRET).unwrap_err();
        assert_eq!(e.code(), "RequestExpired", "{e}");
    }

    #[test]
    fn malformed_unknown_and_unsupported_requests_are_refused_with_the_reason() {
        let c = &SUITE[0];
        let unsigned = request(c, "");
        assert_eq!(check(&unsigned, NOW, SECRET), Err(SigV4Error::Unsigned));
        let other_key = authorization(c, c.signature).replace(KEY, "AKIAOTHERKEY");
        assert_eq!(
            check(&request(c, &other_key), NOW, SECRET),
            Err(SigV4Error::UnknownKey("AKIAOTHERKEY".into()))
        );
        let cases = [
            ("AWS AKIDEXAMPLE:abc", "AWS4-HMAC-SHA256"),
            ("AWS4-HMAC-SHA256 Credential=a/b", "no SignedHeaders"),
            (
                "AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                "Credential is not",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                "x-amz-date must be a signed header",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                "signed for service \"s3\"",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150831/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                "day of X-Amz-Date",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-missing, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                "x-missing is not in the request",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=zz",
                "64 hex",
            ),
        ];
        for (auth, says) in cases {
            let e = check(&request(c, auth), NOW, SECRET).unwrap_err();
            assert!(e.to_string().contains(says), "{auth}: {e}");
            assert_eq!(e.code(), "AuthFailure", "{auth}");
        }
        let auth = authorization(c, c.signature);
        let mut with_token = request(c, &auth);
        with_token
            .headers
            .push(("X-Amz-Security-Token", b"session"));
        assert!(matches!(
            check(&with_token, NOW, SECRET),
            Err(SigV4Error::Unsupported(_))
        ));
    }

    #[test]
    fn amz_dates_parse_strictly() {
        assert_eq!(parse_amz_date(DATE), Some(NOW));
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        for bad in [
            "20150830T123600",
            "2015083OT123600Z",
            "20151330T123600Z",
            "",
            "20150830T12360 Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// Nothing a client sends makes verification panic, and nothing but the right
        /// signature passes.
        #[test]
        fn arbitrary_authorization_headers_never_pass(auth in "\\PC{0,300}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let c = &SUITE[2];
            let mut req = request(c, &auth);
            req.body = &body;
            proptest::prop_assert!(check(&req, NOW, SECRET).is_err());
        }
    }
}
