//! Decodes arbitrary bytes as an OpenVPN packet. Checks that decoding never panics, that it is
//! exact (an accepted packet encodes back to the same bytes), and that the header peek and the
//! wrapped-packet split agree with the full decoder.
#![no_main]

use gateway::protocol::packet::{decode_wrapped, Header, Packet, SESSION_ID_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = Header::peek(data);
    if let Ok(wrapped) = decode_wrapped(data) {
        assert_eq!(wrapped.wrapped.len() + 1 + SESSION_ID_LEN, data.len());
        assert_eq!(header.as_ref().ok().map(|h| h.opcode), Some(wrapped.opcode));
    }
    if let Ok(packet) = Packet::decode(data) {
        assert_eq!(
            header.map(|h| (h.opcode, h.key_id)),
            Ok((packet.opcode(), packet.key_id()))
        );
        assert_eq!(packet.encoded_len(), data.len());
        let bytes = packet.to_vec();
        assert_eq!(bytes, data, "encode(decode(x)) != x");
        let again = Packet::decode(&bytes).expect("a re-encoded packet decodes");
        assert_eq!(again, packet);
    }
});
