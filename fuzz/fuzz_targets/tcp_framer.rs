//! Feeds an arbitrary byte stream, cut into arbitrary chunks, to the TCP framer. Checks that it
//! never panics, never yields an empty or over-long frame, and yields the same frames and the
//! same error as when the whole stream arrives in one read.
//!
//! Input layout: 2 bytes of maximum frame length (big-endian), then repeated
//! `chunk length (1 byte) · chunk`.
#![no_main]

use gateway::protocol::packet::{frame_into, FrameError, Packet, TcpFramer};
use libfuzzer_sys::fuzz_target;

/// Takes every complete frame out of `framer`, stopping at the first error.
fn drain(framer: &mut TcpFramer, frames: &mut Vec<Vec<u8>>, error: &mut Option<FrameError>) {
    if error.is_some() {
        return;
    }
    let max = framer.max_frame_len();
    loop {
        match framer.next_frame() {
            Ok(Some(frame)) => {
                assert!(
                    !frame.is_empty() && frame.len() <= max,
                    "frame of {} bytes",
                    frame.len()
                );
                let _ = Packet::decode(frame);
                frames.push(frame.to_vec());
            }
            Ok(None) => return,
            Err(e) => {
                assert!(framer.is_failed());
                *error = Some(e);
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((max, mut rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes(*max));

    let mut framer = TcpFramer::with_max_frame_len(max);
    let (mut frames, mut error, mut stream) = (Vec::new(), None, Vec::new());
    while let Some((&len, tail)) = rest.split_first() {
        let (chunk, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        stream.extend_from_slice(chunk);
        framer.push(chunk);
        drain(&mut framer, &mut frames, &mut error);
    }

    let mut whole = TcpFramer::with_max_frame_len(max);
    whole.push(&stream);
    let (mut whole_frames, mut whole_error) = (Vec::new(), None);
    drain(&mut whole, &mut whole_frames, &mut whole_error);
    assert_eq!(frames, whole_frames);
    assert_eq!(error, whole_error);

    let mut reframed = Vec::new();
    for f in &frames {
        frame_into(f, &mut reframed).expect("a received frame can be framed again");
    }
    assert!(stream.starts_with(&reframed));
    if error.is_none() {
        assert_eq!(reframed.len() + framer.buffered_len(), stream.len());
    }
});
