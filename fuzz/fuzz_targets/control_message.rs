//! Classifies arbitrary bytes as a control-channel message. Checks that it never panics and
//! that the classification is stable: the wire form of a parsed message (`to_bytes`: its text
//! and one NUL) parses back to the same message, and its text has no NUL and no trailing CR/LF
//! (both would be lost on the way back).
#![no_main]

use gateway::protocol::push::{control_bytes, ControlMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let msg = ControlMessage::parse(data);
    let text = msg.to_text();
    assert_eq!(msg.to_string(), text);
    assert!(!text.contains('\0'), "text of {msg:?} contains a NUL");
    assert!(
        !text.ends_with(['\r', '\n']),
        "text of {msg:?} ends with CR/LF"
    );
    let bytes = msg.to_bytes();
    assert_eq!(bytes, control_bytes(&text));
    assert_eq!(bytes.last(), Some(&0));
    assert_eq!(
        ControlMessage::parse(&bytes),
        msg,
        "wire form does not parse back"
    );
    assert_eq!(
        ControlMessage::parse(text.as_bytes()),
        msg,
        "text does not parse back"
    );
    // What follows the first NUL is ignored.
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(data);
    assert_eq!(ControlMessage::parse(&trailing), msg);
});
