//! Splits arbitrary strings as OpenVPN static-challenge answers (`SCRV1:<b64>:<b64>`) with
//! `auth::challenge::split_static_challenge`. Checks that it never panics, that a field without
//! the prefix is a plain password, and that an accepted answer's parts, encoded again with
//! `static_challenge_password`, split back to the same parts.
#![no_main]

use gateway::auth::challenge::{
    split_static_challenge, static_challenge_password, STATIC_CHALLENGE_PREFIX,
};
use libfuzzer_sys::fuzz_target;

fn check(s: &str) {
    match split_static_challenge(s) {
        Ok(None) => assert!(!s.starts_with(STATIC_CHALLENGE_PREFIX)),
        Ok(Some((password, response))) => {
            let field = static_challenge_password(password.expose(), response.expose());
            let (p2, r2) = split_static_challenge(&field)
                .expect("an encoded answer splits")
                .expect("an encoded answer is a challenge answer");
            assert_eq!(p2, password);
            assert_eq!(r2, response);
        }
        Err(e) => {
            assert!(s.starts_with(STATIC_CHALLENGE_PREFIX));
            let _ = format!("{e} {e:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    check(&s);
    // Behind the prefix, so the fuzzer reaches the base64 at once.
    check(&format!("{STATIC_CHALLENGE_PREFIX}{s}"));
});
