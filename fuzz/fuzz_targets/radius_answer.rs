//! Feeds arbitrary datagrams to `auth::radius::check_answer` as answers to a fixed
//! Access-Request. Checks that it never panics; that nothing is taken as an answer unless its
//! Response Authenticator verifies (a datagram is taken only if its bytes, re-signed with the
//! secret, are the same bytes); and, with the input re-signed (right identifier, length and
//! Response Authenticator) so that the fuzzer reaches the attribute and Message-Authenticator
//! checks, that a flipped authenticator bit always makes it ignored.
#![no_main]

use gateway::auth::radius::{access_request, check_answer, Answer, HEADER_LEN, MAX_DATAGRAM};
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};

const SECRET: &[u8] = b"fuzz-shared-secret";

fn request() -> Vec<u8> {
    access_request("alice", "123456", SECRET, 7, b"0123456789abcdef").expect("request")
}

/// `datagram` with its header made right: identifier, length, Response Authenticator.
fn resign(request: &[u8], datagram: &[u8]) -> Vec<u8> {
    let mut d = datagram.to_vec();
    if d.len() < HEADER_LEN {
        d.resize(HEADER_LEN, 0);
    }
    d.truncate(MAX_DATAGRAM);
    d[1] = request[1];
    let len = d.len() as u16;
    d[2..4].copy_from_slice(&len.to_be_bytes());
    let mut md5 = Md5::new();
    md5.update(&d[..4]);
    md5.update(&request[4..HEADER_LEN]);
    md5.update(&d[HEADER_LEN..]);
    md5.update(SECRET);
    let auth = md5.finalize();
    d[4..HEADER_LEN].copy_from_slice(&auth);
    d
}

fn taken(a: Answer) -> bool {
    !matches!(a, Answer::Ignore(_))
}

fuzz_target!(|data: &[u8]| {
    let req = request();

    // As it came.
    let got = check_answer(&req, SECRET, data);
    let _ = format!("{got:?}");
    if taken(got) {
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        assert_eq!(
            resign(&req, &data[..len]),
            &data[..len],
            "taken without a valid Response Authenticator"
        );
    }

    // Re-signed: past the authenticator check.
    let signed = resign(&req, data);
    let got = check_answer(&req, SECRET, &signed);
    let _ = format!("{got:?}");
    if taken(got) {
        assert!(
            matches!(signed[0], 2 | 3 | 11),
            "{got:?} for code {}",
            signed[0]
        );
    }
    let mut forged = signed.clone();
    forged[4 + usize::from(data.first().copied().unwrap_or(0) % 16)] ^= 1;
    assert!(
        !taken(check_answer(&req, SECRET, &forged)),
        "forged authenticator taken"
    );
    // Another secret never verifies.
    assert!(!taken(check_answer(&req, b"other secret", &signed)));
});
