//! Parses arbitrary bytes as key-method 2 records (client and server) and as peer-info text.
//! Checks that parsing never panics, that an accepted record writes back (`to_bytes` cannot
//! refuse what `parse` accepted) and parses again to an equal value, and that the written form
//! is canonical (writing the re-parsed record gives the same bytes).
//!
//! The input is tried as it is, and also behind a valid header (zero prefix, key method 2 and
//! the fixed-size key material) so that the fuzzer reaches the string fields at once.
#![no_main]

use gateway::protocol::keymethod::{
    ClientKeyRecord, PeerInfo, ServerKeyRecord, KEY_METHOD_2, PRE_MASTER_LEN, RANDOM_LEN,
};
use libfuzzer_sys::fuzz_target;

fn with_header(fixed: usize, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0, KEY_METHOD_2];
    v.extend((0..fixed).map(|i| i as u8));
    v.extend_from_slice(data);
    v
}

fn check_client(bytes: &[u8]) {
    let Ok(rec) = ClientKeyRecord::parse(bytes) else {
        return;
    };
    let _ = rec.peer_info();
    let _ = format!("{rec:?}");
    let out = rec.to_bytes().expect("a parsed client record writes back");
    let again = ClientKeyRecord::parse(&out).expect("a written client record parses");
    assert_eq!(again, rec, "client record round trip");
    assert_eq!(
        again.to_bytes().unwrap(),
        out,
        "client record: written form not canonical"
    );
    assert!(out.len() <= bytes.len(), "writing grew the record");
}

fn check_server(bytes: &[u8]) {
    let Ok(rec) = ServerKeyRecord::parse(bytes) else {
        return;
    };
    let _ = format!("{rec:?}");
    let out = rec.to_bytes().expect("a parsed server record writes back");
    let again = ServerKeyRecord::parse(&out).expect("a written server record parses");
    assert_eq!(again, rec, "server record round trip");
    assert_eq!(
        again.to_bytes().unwrap(),
        out,
        "server record: written form not canonical"
    );
}

fuzz_target!(|data: &[u8]| {
    check_client(data);
    check_server(data);
    check_client(&with_header(PRE_MASTER_LEN + 2 * RANDOM_LEN, data));
    check_server(&with_header(2 * RANDOM_LEN, data));

    let text = String::from_utf8_lossy(data);
    let pi = PeerInfo::parse(&text);
    // Parsing is total and deterministic.
    assert_eq!(PeerInfo::parse(&text), pi);
});
