//! OpenVPN's static challenge: a profile with `static-challenge "<text>" <echo>` makes the
//! client ask for a second answer (an MFA code) and send it with the password, in the password
//! field, as `SCRV1:<base64 password>:<base64 response>` (standard base64 with padding).
//!
//! [`split_static_challenge`] takes the field apart; [`static_challenge_password`] builds it
//! (for test clients). The dynamic challenge (`CRV1:`) and `CR_TEXT` are not handled here.
//!
//! A plain password that happens to begin with `SCRV1:` is read as a static-challenge answer:
//! OpenVPN has the same ambiguity.

use base64::{engine::general_purpose::STANDARD, Engine as _};

use crate::protocol::keymethod::Password;

/// The prefix of a static-challenge answer.
pub const STATIC_CHALLENGE_PREFIX: &str = "SCRV1:";

/// The longest password field taken apart (bytes, prefix included).
pub const MAX_STATIC_CHALLENGE_LEN: usize = 4096;

/// The longest decoded password (bytes).
pub const MAX_CHALLENGE_PASSWORD_LEN: usize = 3072;

/// The longest decoded response (bytes): an MFA code is a few digits.
pub const MAX_CHALLENGE_RESPONSE_LEN: usize = 256;

/// Why a password field that begins with `SCRV1:` is not a valid static-challenge answer.
/// The messages never quote the field (it holds the password).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("the static-challenge answer is {0} bytes long (at most {MAX_STATIC_CHALLENGE_LEN})")]
    TooLong(usize),
    #[error("the static-challenge answer has {0} parts after SCRV1: (2 expected)")]
    WrongParts(usize),
    #[error("the static-challenge {0} is not valid base64")]
    BadBase64(&'static str),
    #[error("the static-challenge {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("the static-challenge {part} is {len} bytes long (at most {max})")]
    PartTooLong {
        part: &'static str,
        len: usize,
        max: usize,
    },
}

/// Splits a password field into the password and the challenge response.
///
/// `Ok(None)`: the field does not begin with `SCRV1:` (a plain password). `Ok(Some((password,
/// response)))`: both parts decoded (either may be empty: the caller refuses empty ones).
/// `Err`: a malformed answer (too long, not two parts, bad base64, not UTF-8, a part too long).
pub fn split_static_challenge(
    password: &str,
) -> Result<Option<(Password, Password)>, ChallengeError> {
    let Some(rest) = password.strip_prefix(STATIC_CHALLENGE_PREFIX) else {
        return Ok(None);
    };
    if password.len() > MAX_STATIC_CHALLENGE_LEN {
        return Err(ChallengeError::TooLong(password.len()));
    }
    let parts: Vec<&str> = rest.split(':').collect();
    let [pw, response] = parts[..] else {
        return Err(ChallengeError::WrongParts(parts.len()));
    };
    let pw = decode_part(pw, "password", MAX_CHALLENGE_PASSWORD_LEN)?;
    let response = decode_part(response, "response", MAX_CHALLENGE_RESPONSE_LEN)?;
    Ok(Some((pw, response)))
}

fn decode_part(b64: &str, part: &'static str, max: usize) -> Result<Password, ChallengeError> {
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| ChallengeError::BadBase64(part))?;
    if bytes.len() > max {
        return Err(ChallengeError::PartTooLong {
            part,
            len: bytes.len(),
            max,
        });
    }
    String::from_utf8(bytes)
        .map(Password::new)
        .map_err(|_| ChallengeError::NotUtf8(part))
}

/// The password field an OpenVPN client sends for `password` and the challenge `response`
/// (`SCRV1:<base64>:<base64>`). For test clients and tools.
pub fn static_challenge_password(password: &str, response: &str) -> String {
    format!(
        "{STATIC_CHALLENGE_PREFIX}{}:{}",
        STANDARD.encode(password),
        STANDARD.encode(response)
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn split(s: &str) -> Result<Option<(String, String)>, ChallengeError> {
        split_static_challenge(s)
            .map(|o| o.map(|(p, r)| (p.expose().to_owned(), r.expose().to_owned())))
    }

    #[test]
    fn plain_passwords_are_not_challenges() {
        assert_eq!(split("hunter2"), Ok(None));
        assert_eq!(split(""), Ok(None));
        assert_eq!(
            split("scrv1:aGk=:MTIz"),
            Ok(None),
            "the prefix is case-sensitive"
        );
        assert_eq!(split("SCRV1"), Ok(None));
        assert_eq!(split("CRV1::state::123456"), Ok(None));
    }

    #[test]
    fn what_openvpn_sends() {
        // `SCRV1:` + base64("secret") + `:` + base64("123456"), as openvpn 2.6 builds it.
        assert_eq!(
            split("SCRV1:c2VjcmV0:MTIzNDU2"),
            Ok(Some(("secret".into(), "123456".into())))
        );
        assert_eq!(
            static_challenge_password("secret", "123456"),
            "SCRV1:c2VjcmV0:MTIzNDU2"
        );
        // Empty parts decode (the caller refuses an empty password or code).
        assert_eq!(split("SCRV1::"), Ok(Some((String::new(), String::new()))));
        assert_eq!(
            split("SCRV1:cMOkc3M6d8O2cnQ=:MDA3"),
            Ok(Some(("päss:wört".into(), "007".into())))
        );
    }

    #[test]
    fn malformed_answers_are_refused() {
        assert_eq!(split("SCRV1:"), Err(ChallengeError::WrongParts(1)));
        assert_eq!(split("SCRV1:c2VjcmV0"), Err(ChallengeError::WrongParts(1)));
        assert_eq!(
            split("SCRV1:c2VjcmV0:MTIz:MTIz"),
            Err(ChallengeError::WrongParts(3))
        );
        assert_eq!(
            split("SCRV1:c2Vjc*V0:MTIz"),
            Err(ChallengeError::BadBase64("password"))
        );
        assert_eq!(
            split("SCRV1:c2VjcmV0:MTI"),
            Err(ChallengeError::BadBase64("response")),
            "missing padding"
        );
        assert_eq!(
            split("SCRV1:c2VjcmV0:MTIzNDU2 "),
            Err(ChallengeError::BadBase64("response"))
        );
        // 0xff 0xfe is not UTF-8.
        assert_eq!(
            split("SCRV1://4=:MTIz"),
            Err(ChallengeError::NotUtf8("password"))
        );
        let long = static_challenge_password("p", &"1".repeat(MAX_CHALLENGE_RESPONSE_LEN + 1));
        assert_eq!(
            split(&long),
            Err(ChallengeError::PartTooLong {
                part: "response",
                len: MAX_CHALLENGE_RESPONSE_LEN + 1,
                max: MAX_CHALLENGE_RESPONSE_LEN
            })
        );
        let long = static_challenge_password(&"p".repeat(MAX_CHALLENGE_PASSWORD_LEN + 1), "1");
        assert!(matches!(
            split(&long),
            Err(ChallengeError::TooLong(_) | ChallengeError::PartTooLong { .. })
        ));
        let huge = format!("SCRV1:{}:MTIz", "A".repeat(MAX_STATIC_CHALLENGE_LEN));
        assert_eq!(split(&huge), Err(ChallengeError::TooLong(huge.len())));
    }

    #[test]
    fn secrets_are_not_printed() {
        let out = split_static_challenge("SCRV1:c2VjcmV0:MTIzNDU2").unwrap();
        let shown = format!("{out:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("123456"),
            "{shown}"
        );
        for input in ["SCRV1:c2VjcmV0:MTIzNDU2:eA==", "SCRV1:c2VjcmV0:MTIz*"] {
            let err = split_static_challenge(input).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("c2VjcmV0"), "{shown}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(
            password in ".{0,200}",
            response in "[0-9]{0,8}|.{0,64}",
        ) {
            let field = static_challenge_password(&password, &response);
            prop_assert_eq!(split(&field), Ok(Some((password, response))));
        }

        #[test]
        fn never_panics(s in "(SCRV1:)?[A-Za-z0-9+/=:]{0,64}|.{0,64}") {
            let _ = split_static_challenge(&s);
        }

        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let s = format!("SCRV1:{}", String::from_utf8_lossy(&bytes));
            let _ = split_static_challenge(&s);
        }
    }
}
