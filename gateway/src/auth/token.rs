//! The auth-token: after a directory sign-in the server pushes `auth-token-user <user>` and
//! `auth-token <token>`; the client then sends the token as its password at every
//! renegotiation and reconnect, so neither the password nor a one-time code is asked again.
//!
//! A token names the session it was issued to (its first connection's id), when it was
//! issued and when it expires (the session timeout), and carries an HMAC-SHA256 over those and
//! the user name under a key of the running endpoint (random, never stored: a restarted daemon
//! asks everyone to sign in again). Nothing else is in it; the groups and account state come
//! from the directory again at each use.
//!
//! ```text
//! CVPN1.<base64url: issued u64 BE | expires u64 BE | session id (17 hex) | HMAC-SHA256 (32 bytes)>
//! ```
//!
//! 6 + 87 bytes: under the 127 bytes OpenVPN clients keep.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ring::hmac;

use super::AuthFailure;

/// What every token starts with: passwords that do not are never taken for a token.
pub const TOKEN_PREFIX: &str = "CVPN1.";
const SESSION_LEN: usize = 17;
const MAC_LEN: usize = 32;
const BODY_LEN: usize = 8 + 8 + SESSION_LEN;

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// The 17 hex digits of the session's first connection id.
    pub session: String,
    pub issued_unix: u64,
    pub expires_unix: u64,
}

/// The endpoint's token key.
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// The 17 hex digits of a connection id (`cvpn-connection-<17 hex>`).
pub fn session_of(connection_id: &str) -> &str {
    connection_id.rsplit('-').next().unwrap_or(connection_id)
}

impl TokenKey {
    /// A fresh random key. `None` without system randomness.
    pub fn random() -> Option<Self> {
        let rng = ring::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .ok()
            .map(TokenKey)
    }

    /// A key from fixed bytes (tests).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// What the MAC covers: the token's body and the user name, case-folded (directories
    /// match names without case).
    fn signed(body: &[u8], username: &str) -> Vec<u8> {
        let mut m = body.to_vec();
        m.extend_from_slice(username.to_lowercase().as_bytes());
        m
    }

    /// A token for `username`'s session. `session` is [`session_of`] the first connection id
    /// (17 hex digits; anything else makes no token).
    pub fn issue(&self, username: &str, claims: &TokenClaims) -> Option<String> {
        let session = claims.session.as_bytes();
        if session.len() != SESSION_LEN || !session.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut raw = Vec::with_capacity(BODY_LEN + MAC_LEN);
        raw.extend_from_slice(&claims.issued_unix.to_be_bytes());
        raw.extend_from_slice(&claims.expires_unix.to_be_bytes());
        raw.extend_from_slice(session);
        let tag = hmac::sign(&self.0, &Self::signed(&raw, username));
        raw.extend_from_slice(tag.as_ref());
        Some(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw)))
    }

    /// Checks a token the client sent as its password with `username`: its MAC, and that it
    /// has not expired at `now_unix`. Every other outcome is [`AuthFailure::BadToken`].
    pub fn verify(
        &self,
        token: &str,
        username: &str,
        now_unix: u64,
    ) -> Result<TokenClaims, AuthFailure> {
        let encoded = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(AuthFailure::BadToken)?;
        // Bounded before decoding: a real token is 87 characters.
        if encoded.len() > 128 {
            return Err(AuthFailure::BadToken);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| AuthFailure::BadToken)?;
        if raw.len() != BODY_LEN + MAC_LEN {
            return Err(AuthFailure::BadToken);
        }
        let (body, tag) = raw.split_at(BODY_LEN);
        hmac::verify(&self.0, &Self::signed(body, username), tag)
            .map_err(|_| AuthFailure::BadToken)?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let claims = TokenClaims {
            issued_unix: word(0),
            expires_unix: word(8),
            session: String::from_utf8_lossy(&body[16..]).into_owned(),
        };
        if now_unix >= claims.expires_unix || claims.issued_unix > now_unix.saturating_add(60) {
            return Err(AuthFailure::BadToken);
        }
        Ok(claims)
    }
}

/// True when a password field carries a token rather than a password.
pub fn is_token(password: &str) -> bool {
    password.starts_with(TOKEN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TokenClaims {
        TokenClaims {
            session: "0123456789abcdef0".into(),
            issued_unix: 1_000,
            expires_unix: 1_000 + 8 * 3600,
        }
    }

    #[test]
    fn a_token_verifies_for_its_user_until_it_expires() {
        let key = TokenKey::from_bytes(b"k");
        let t = key.issue("Alice", &claims()).expect("token");
        assert!(t.len() <= 127, "{} bytes", t.len());
        assert!(is_token(&t));
        assert_eq!(key.verify(&t, "alice", 2_000), Ok(claims()));
        assert_eq!(key.verify(&t, "bob", 2_000), Err(AuthFailure::BadToken));
        assert_eq!(
            key.verify(&t, "alice", 1_000 + 8 * 3600),
            Err(AuthFailure::BadToken)
        );
        // Another endpoint's (or a restarted daemon's) key.
        assert_eq!(
            TokenKey::from_bytes(b"other").verify(&t, "alice", 2_000),
            Err(AuthFailure::BadToken)
        );
    }

    #[test]
    fn altered_or_malformed_tokens_are_refused() {
        let key = TokenKey::from_bytes(b"k");
        let t = key.issue("alice", &claims()).expect("token");
        // Flip each character of the encoded part in turn.
        for i in TOKEN_PREFIX.len()..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(b).expect("ascii");
            if s != t {
                assert_eq!(
                    key.verify(&s, "alice", 2_000),
                    Err(AuthFailure::BadToken),
                    "{i}"
                );
            }
        }
        for bad in [
            "",
            "CVPN1.",
            "CVPN1.!!!!",
            "hunter2",
            &format!("{TOKEN_PREFIX}{}", "A".repeat(500)),
        ] {
            assert_eq!(key.verify(bad, "alice", 2_000), Err(AuthFailure::BadToken));
        }
        assert!(key
            .issue(
                "alice",
                &TokenClaims {
                    session: "short".into(),
                    ..claims()
                }
            )
            .is_none());
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics(s in ".{0,200}", user in ".{0,40}") {
            let key = TokenKey::from_bytes(b"k");
            let _ = key.verify(&s, &user, 5);
            let _ = key.verify(&format!("{TOKEN_PREFIX}{s}"), &user, 5);
        }
    }
}
