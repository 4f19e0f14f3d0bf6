//! Opens arbitrary bytes as data channel packets, and drives a sealing client and an opening
//! server through an input-chosen sequence of sends, (re)deliveries, corruptions and
//! truncations. Checks that opening never panics, never accepts a corrupted or truncated
//! packet, never accepts a packet id twice, and accepts exactly what a 64-packet replay window
//! should (compared against a plain model).
//!
//! Input layout: byte 0 picks the cipher; the whole input is also tried as one packet; then
//! repeated 3-byte operations `kind · a · b`.
#![no_main]

use std::collections::BTreeSet;

use gateway::datachannel::{Cipher, DataChannel, DataError, Role, OVERHEAD};
use libfuzzer_sys::fuzz_target;

const KEY_ID: u8 = 1;
const PEER_ID: u32 = 0x00_1234;
const WINDOW: u32 = 64;

fn key_material() -> [u8; 256] {
    std::array::from_fn(|i| (i as u8).wrapping_mul(13).wrapping_add(1))
}

fn payload(len: u8, fill: u8) -> Vec<u8> {
    (0..len).map(|i| i ^ fill).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, ops)) = data.split_first() else {
        return;
    };
    let cipher = Cipher::ALL[usize::from(select) % Cipher::ALL.len()];
    let ekm = key_material();
    let mut server = DataChannel::from_ekm(&ekm, cipher, Role::Server, KEY_ID, PEER_ID).unwrap();
    let mut client = DataChannel::from_ekm(&ekm, cipher, Role::Client, KEY_ID, PEER_ID).unwrap();

    // Arbitrary bytes: always rejected (a forgery would need the key), never a panic.
    let mut raw = data.to_vec();
    assert!(server.open_in_place(&mut raw).is_err());
    let mut raw = data.to_vec();
    if raw.len() >= 4 {
        raw[..4].copy_from_slice(&[(9 << 3) | KEY_ID, 0x00, 0x12, 0x34]);
        assert!(server.open_in_place(&mut raw).is_err());
    }

    // Genuine packets: (packet id, payload, sealed bytes).
    let mut sent: Vec<(u32, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut accepted: BTreeSet<u32> = BTreeSet::new();
    for op in ops.chunks_exact(3) {
        let (kind, a, b) = (op[0], op[1], op[2]);
        if kind % 4 == 0 || sent.is_empty() {
            let plain = payload(a, b);
            let mut packet = Vec::new();
            client.seal(&plain, &mut packet).unwrap();
            assert_eq!(packet.len(), OVERHEAD + plain.len());
            let id = sent.len() as u32 + 1;
            sent.push((id, plain, packet));
            continue;
        }
        let (id, plain, packet) = &sent[usize::from(a) % sent.len()];
        let mut copy = packet.clone();
        match kind % 4 {
            1 => {
                // (Re)deliver: accepted exactly when the replay model says so.
                let highest = accepted.last().copied().unwrap_or(0);
                let fresh = !accepted.contains(id) && (*id > highest || highest - id < WINDOW);
                match server.open_in_place(&mut copy) {
                    Ok(opened) => {
                        assert!(fresh, "packet id {id} accepted but should not be");
                        assert_eq!(opened, &plain[..]);
                        accepted.insert(*id);
                    }
                    Err(e) => {
                        assert!(!fresh, "packet id {id} rejected: {e}");
                        assert!(
                            matches!(e, DataError::Replay { .. } | DataError::TooOld { .. }),
                            "{e}"
                        );
                    }
                }
            }
            2 => {
                // Corrupt one byte: never accepted.
                let at = usize::from(b) % copy.len();
                copy[at] ^= kind | 1;
                assert!(server.open_in_place(&mut copy).is_err());
            }
            _ => {
                // Truncate: never accepted.
                let len = usize::from(b) % copy.len();
                assert!(server.open_in_place(&mut copy[..len]).is_err());
            }
        }
    }
    assert_eq!(
        server.opener().highest_packet_id(),
        accepted.last().copied().unwrap_or(0)
    );
});
