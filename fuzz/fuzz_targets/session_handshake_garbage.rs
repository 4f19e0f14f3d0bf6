//! Drives a server control session (after the stateless reset exchange) with a sequence of
//! fuzzer-chosen packets, clock steps, renegotiations and control messages, draining
//! `poll_transmit` and `poll_event` after each step. Checks that the session never panics, that
//! everything it transmits decodes as a control or ack packet of its own session, and that
//! draining always ends.
//!
//! The TLS side is a real rustls server (the gateway's own configuration, client certificates
//! required) with a self-signed certificate generated once per process.
//!
//! Input layout: repeated `op · len · len bytes`. The low two bits of `op` choose the step:
//! 0, 1: decode the bytes as a packet and hand it over (bit 2 set: its session id is first
//! replaced by the client's, bit 3 set: its ack block's by ours, so that the fuzzer gets past
//! the session checks); 2: advance the clock by the bytes (big-endian milliseconds) and start
//! a renegotiation when bit 2 is set; 3: send the bytes as a control message.
#![no_main]

mod common;

use std::time::{Duration, Instant};

use gateway::protocol::packet::{AckBlock, Packet, SessionId};
use gateway::protocol::session::ServerSession;
use libfuzzer_sys::fuzz_target;

const LOCAL: SessionId = SessionId([0x4c; 8]);
const REMOTE: SessionId = SessionId([0x52; 8]);

fn drain(session: &mut ServerSession, now: Instant) {
    for _ in 0..10_000 {
        let Some(out) = session.poll_transmit(now) else {
            while let Some(event) = session.poll_event() {
                let _ = format!("{event:?}");
            }
            let _ = session.next_deadline();
            let _ = (
                session.is_established(),
                session.is_failed(),
                session.active_key(),
            );
            return;
        };
        match Packet::decode(&out).expect("the session's packets decode") {
            Packet::Control(c) => {
                assert_eq!(c.session_id, LOCAL);
                assert!(c.acks.is_none_or(|a| a.remote_session_id() == REMOTE));
            }
            Packet::Ack(a) => {
                assert_eq!(a.session_id, LOCAL);
                assert_eq!(a.acks.remote_session_id(), REMOTE);
            }
            Packet::Data(_) => panic!("the control session sent a data packet"),
        }
    }
    panic!("poll_transmit did not run dry");
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let mut session = ServerSession::after_reset(common::session_config(), LOCAL, REMOTE, now)
        .expect("a fresh session");
    let mut rest = data;
    while let Some((&[op, len], tail)) = rest.split_first_chunk::<2>() {
        let (chunk, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        match op & 3 {
            0 | 1 => {
                let Ok(mut packet) = Packet::decode(chunk) else {
                    continue;
                };
                match &mut packet {
                    Packet::Control(c) => {
                        if op & 4 != 0 {
                            c.session_id = REMOTE;
                        }
                        if op & 8 != 0 {
                            if let Some(a) = c.acks.take() {
                                c.acks = AckBlock::new(a.into_parts().0, LOCAL).ok();
                            }
                        }
                    }
                    Packet::Ack(a) => {
                        if op & 4 != 0 {
                            a.session_id = REMOTE;
                        }
                        if op & 8 != 0 {
                            a.acks = AckBlock::new(a.acks.ids().to_vec(), LOCAL).expect("same ids");
                        }
                    }
                    Packet::Data(_) => {}
                }
                let _ = session.handle(now, &packet);
            }
            2 => {
                let ms = chunk
                    .iter()
                    .take(4)
                    .fold(0u64, |acc, &b| acc << 8 | u64::from(b));
                now += Duration::from_millis(ms);
                if op & 4 != 0 {
                    let _ = session.start_renegotiation(now);
                }
            }
            _ => session.send_control(&String::from_utf8_lossy(chunk)),
        }
        drain(&mut session, now);
    }
});
