//! Reads arbitrary bytes as JSON (the claims of an ID token or of the UserInfo answer, which
//! the identity provider — or whoever answers for it — writes) and takes the groups claim with
//! `auth::oidc::groups_of`, under the usual name and under each of the object's own keys.
//! Checks that it never panics, and that what it returns is bounded and clean: at most
//! `MAX_GROUPS` names, each non-empty, at most `MAX_NAME` bytes, without control characters,
//! sorted and without duplicates — and exactly the claim's strings (nothing invented or lost).
#![no_main]

use std::collections::BTreeSet;

use gateway::auth::oidc::{groups_of, MAX_GROUPS, MAX_NAME};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fn check(claims: &Map<String, Value>, name: &str) {
    let Ok(groups) = groups_of(claims, name) else {
        return;
    };
    assert!(groups.len() <= MAX_GROUPS, "{} groups", groups.len());
    for g in &groups {
        assert!(!g.is_empty(), "an empty group name");
        assert!(g.len() <= MAX_NAME, "a group name of {} bytes", g.len());
        assert!(
            !g.chars().any(char::is_control),
            "control character in {g:?}"
        );
    }
    assert!(
        groups.windows(2).all(|w| w[0] < w[1]),
        "not sorted and deduplicated: {groups:?}"
    );
    let given: BTreeSet<&str> = match claims.get(name) {
        None | Some(Value::Null) => BTreeSet::new(),
        Some(Value::String(s)) => BTreeSet::from([s.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().expect("a non-string accepted"))
            .collect(),
        Some(other) => panic!("accepted a claim that is neither a string nor a list: {other}"),
    };
    let got: BTreeSet<&str> = groups.iter().map(String::as_str).collect();
    assert_eq!(got, given, "the groups are not the claim's strings");
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    check(&claims, "groups");
    for name in claims.keys().take(8) {
        check(&claims, name);
    }
});
