//! Feeds arbitrary bytes to the AWS-compatible API's request parsers: the EC2 Query form body
//! (`aws::query::Params`: every accessor on it, then `finish`) and SigV4 (`aws::sigv4`: the
//! input split into an `Authorization` header, an `X-Amz-Date` and a body). Checks that nothing
//! panics, that every accessor's answer stays within the parser's bounds, and that no request
//! verifies unless it is what `sign` makes for the same parts (the fuzzer cannot forge an
//! HMAC-SHA256, so a request that verifies must have been re-signed here).
#![no_main]

use gateway::aws::query::{Params, MAX_LIST_ITEMS};
use gateway::aws::sigv4::{prepare, sign, SignedRequest};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z

fuzz_target!(|data: &[u8]| {
    // The form body.
    if let Ok(p) = Params::parse(data) {
        for name in ["Action", "Version", "ClientVpnEndpointId", "DryRun", "MaxResults"] {
            let _ = p.get(name);
        }
        let _ = p.bool("DryRun");
        let _ = p.int("MaxResults");
        if let Ok(l) = p.list("ClientVpnEndpointId") {
            assert!(l.len() <= MAX_LIST_ITEMS);
        }
        if let Ok(filters) = p.structs("Filter") {
            assert!(filters.len() <= MAX_LIST_ITEMS);
            for f in filters {
                let _ = p.get(&format!("{f}.Name"));
                let _ = p.list(&format!("{f}.Value"));
            }
        }
        let _ = p.finish();
        let _ = p.canonical_without(&["ClientToken"]);
    }

    // SigV4: the input as Authorization header | X-Amz-Date | body.
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let auth = parts.next().unwrap_or_default();
    let date = parts.next().unwrap_or(b"20150830T123600Z");
    let body = parts.next().unwrap_or_default();
    let headers: Vec<(&str, &[u8])> = vec![
        ("host", b"127.0.0.1:8780"),
        ("x-amz-date", date),
        ("authorization", auth),
    ];
    let req = SignedRequest {
        method: "POST",
        path: "/",
        query: "",
        headers: headers.clone(),
        body,
    };
    if let Ok(pending) = prepare(&req, "ec2", NOW) {
        if pending.verify(Some(SECRET)).is_ok() {
            // Only what sign() makes for these very parts may verify.
            let unsigned = SignedRequest {
                headers: headers[..2].to_vec(),
                ..req.clone()
            };
            let id = pending.access_key_id().to_string();
            let made = std::str::from_utf8(auth).ok().and_then(|a| {
                let region = a.split('/').nth(2)?;
                let signed: Vec<&str> = a.split("SignedHeaders=").nth(1)?.split(',').next()?.split(';').collect();
                sign(&unsigned, &id, SECRET, region, "ec2", &signed).ok()
            });
            assert_eq!(made.as_deref().map(str::as_bytes), Some(auth), "a request verified that sign() did not make");
        }
    }
});
