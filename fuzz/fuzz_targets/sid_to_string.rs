//! Reads arbitrary bytes as a binary security identifier (Active Directory's `objectSid`,
//! which a directory server sends and the directory client turns into `S-1-5-21-…` group
//! names). Checks that it never panics, accepts exactly the well-formed SIDs (revision 1, at
//! most 15 sub-authorities, nothing after them), and that the text it gives encodes back to
//! the same bytes. Also feeds the input, as text, to the DN helper that names groups.
#![no_main]

use gateway::auth::ldap::{first_rdn_value, sid_to_string};
use libfuzzer_sys::fuzz_target;

/// `S-1-<authority>-<sub>…` back to bytes.
fn encode(text: &str) -> Option<Vec<u8>> {
    let mut parts = text.strip_prefix("S-1-")?.split('-');
    let authority = parts.next()?;
    let authority = match authority.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => authority.parse::<u64>().ok()?,
    };
    let subs = parts
        .map(|p| p.parse::<u32>().ok())
        .collect::<Option<Vec<u32>>>()?;
    let mut out = vec![1u8, u8::try_from(subs.len()).ok()?];
    out.extend_from_slice(&authority.to_be_bytes()[2..]);
    for s in subs {
        out.extend_from_slice(&s.to_le_bytes());
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let well_formed = data.len() >= 8
        && data[0] == 1
        && data[1] <= 15
        && data.len() == 8 + 4 * usize::from(data[1]);
    match sid_to_string(data) {
        Some(text) => {
            assert!(well_formed, "accepted a malformed SID: {data:?}");
            assert_eq!(encode(&text).as_deref(), Some(data), "{text}");
        }
        None => assert!(!well_formed, "refused a well-formed SID: {data:?}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(v) = first_rdn_value(text) {
            assert!(!v.is_empty() && v.len() <= text.len());
        }
    }
});
