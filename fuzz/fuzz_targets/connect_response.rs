//! Parses arbitrary bytes as a client connect handler's answer (the handler is another
//! program: its output is untrusted). Checks that parsing never panics, and that every answer
//! it accepts keeps the contract's limits (a denial message of at most 255 characters, at most
//! 10 posture statuses), which the server relies on when it forwards them.
#![no_main]

use gateway::connect_handler::{parse_response, MAX_DENIAL_MESSAGE, MAX_POSTURE_STATUSES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_response(data) {
        Ok(r) => {
            assert!(r
                .error_msg_on_denied_connection
                .as_ref()
                .is_none_or(|m| m.chars().count() <= MAX_DENIAL_MESSAGE));
            assert!(r.posture_compliance_statuses.len() <= MAX_POSTURE_STATUSES);
        }
        Err(e) => {
            let _ = e.reason().to_string();
        }
    }
});
