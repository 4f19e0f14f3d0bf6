//! The OpenVPN packet codec: parses and writes the packets of the OpenVPN wire protocol, and the
//! 16-bit length framing that carries them over TCP. No I/O, no crypto, no state beyond the TCP
//! reassembly buffer.
//!
//! # Layout
//!
//! Every packet starts with one byte, `opcode << 3 | key_id` (5-bit [`Opcode`], 3-bit
//! [`KeyId`]). What follows depends on the opcode:
//!
//! ```text
//! control  (1-4, 7, 8, 10, 11)  session id (8) · ack count (1) · acked packet ids (4 each, ≤ 8)
//!                               · remote session id (8, only if ack count > 0) · packet id (4)
//!                               · payload (TLS records, or early-negotiation TLVs in resets)
//! P_ACK_V1 (5)                  session id (8) · ack count (1, ≥ 1) · acked packet ids
//!                               · remote session id (8)
//! P_DATA_V1 (6)                 payload (packet id, tag, ciphertext: parsed by the data channel)
//! P_DATA_V2 (9)                 peer id (3) · payload (same as V1)
//! ```
//!
//! All integers are big-endian. This is the layout *without* `tls-auth`/`tls-crypt`: those
//! insert an HMAC or encrypt everything after the session id, so the ack fields of a wrapped
//! packet are not in clear. The wrap layer uses [`decode_wrapped`] to read the clear prefix,
//! unwraps, and then hands the plaintext control packet to [`Packet::decode`].
//! `P_CONTROL_HARD_RESET_CLIENT_V3` and `P_CONTROL_WKC_V1` only ever occur with tls-crypt-v2
//! (they additionally carry the client's wrapped key after the wrapped packet); this codec treats
//! them structurally like any other control packet.
//!
//! # Guarantees
//!
//! Decoding never panics, whatever the input; every rejection is a [`PacketError`] that says
//! which field was wrong. Decoding is exact: for every `bytes` that [`Packet::decode`] accepts,
//! [`Packet::encode`] writes `bytes` back unchanged (there are no ignored bits or trailing bytes).
//! Data packets (the hot path) are decoded without copying: [`DataPacket`] borrows its payload.

use std::fmt;

use thiserror::Error;

/// Most packet ids one control or ack packet may acknowledge (`RELIABLE_ACK_SIZE` in OpenVPN,
/// which rejects packets that carry more).
pub const MAX_ACKS: usize = 8;

/// Length of an OpenVPN session id, in bytes.
pub const SESSION_ID_LEN: usize = 8;

/// Length of the peer id in a `P_DATA_V2` packet, in bytes.
pub const PEER_ID_LEN: usize = 3;

/// Why bytes are not a valid OpenVPN packet (or why packet fields cannot be put together).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    /// The datagram or frame had no bytes at all.
    #[error("empty packet: no opcode byte")]
    Empty,
    /// The top five bits of the first byte are not an opcode OpenVPN defines (1..=11).
    #[error("unknown opcode {0} (OpenVPN defines opcodes 1 to 11)")]
    UnknownOpcode(u8),
    /// The packet ended inside a field.
    #[error("packet truncated in the {what}: it needs {need} bytes, only {have} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left in the packet.
        have: usize,
    },
    /// A packet acknowledges more packet ids than OpenVPN allows ([`MAX_ACKS`]).
    #[error("{0} acknowledgements in one packet, at most {MAX_ACKS} are allowed")]
    TooManyAcks(usize),
    /// A `P_ACK_V1` acknowledges nothing (or an ack block was built from no packet ids).
    #[error("P_ACK_V1 with no acknowledgements (its ack count must be at least 1)")]
    NoAcks,
    /// Bytes follow the last field of a packet type that has no payload.
    #[error("{extra} unexpected bytes after the end of a {what} packet")]
    TrailingBytes {
        /// The packet type.
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// [`decode_wrapped`] was given a data packet, which has no session id.
    #[error("{0} is a data packet, not a control-channel packet")]
    NotControl(Opcode),
}

/// Why a TCP stream cannot be split into packets, or a packet cannot be framed for TCP.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A length prefix of zero: OpenVPN never sends empty packets, so the stream is corrupt.
    #[error("TCP frame with length 0: the stream is corrupt or not OpenVPN")]
    ZeroLength,
    /// A length prefix above the configured maximum (or a packet too long for a 16-bit prefix).
    #[error("TCP frame of {len} bytes exceeds the maximum of {max}: the stream is corrupt, not OpenVPN, or the peer's MTU settings differ")]
    TooLong {
        /// The announced (or attempted) frame length.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
}

/// The 5-bit packet type in the top bits of a packet's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// `P_CONTROL_HARD_RESET_CLIENT_V1`: a client's first packet, key-method 1 (obsolete).
    HardResetClientV1 = 1,
    /// `P_CONTROL_HARD_RESET_SERVER_V1`: the server's answer to it (obsolete).
    HardResetServerV1 = 2,
    /// `P_CONTROL_SOFT_RESET_V1`: starts a renegotiation on a new key id.
    SoftResetV1 = 3,
    /// `P_CONTROL_V1`: a control-channel message (TLS records).
    ControlV1 = 4,
    /// `P_ACK_V1`: acknowledges control packets, carries nothing else.
    AckV1 = 5,
    /// `P_DATA_V1`: a data-channel packet without a peer id.
    DataV1 = 6,
    /// `P_CONTROL_HARD_RESET_CLIENT_V2`: a client's first packet, key-method 2.
    HardResetClientV2 = 7,
    /// `P_CONTROL_HARD_RESET_SERVER_V2`: the server's answer to it.
    HardResetServerV2 = 8,
    /// `P_DATA_V2`: a data-channel packet with a 24-bit peer id.
    DataV2 = 9,
    /// `P_CONTROL_HARD_RESET_CLIENT_V3`: a client's first packet with tls-crypt-v2 (carries the
    /// wrapped client key after the wrapped packet).
    HardResetClientV3 = 10,
    /// `P_CONTROL_WKC_V1`: a control message that also carries the tls-crypt-v2 wrapped client
    /// key (sent when the server answered the first reset statelessly).
    ControlWkcV1 = 11,
}

impl Opcode {
    /// Every opcode, in numeric order.
    pub const ALL: [Opcode; 11] = [
        Opcode::HardResetClientV1,
        Opcode::HardResetServerV1,
        Opcode::SoftResetV1,
        Opcode::ControlV1,
        Opcode::AckV1,
        Opcode::DataV1,
        Opcode::HardResetClientV2,
        Opcode::HardResetServerV2,
        Opcode::DataV2,
        Opcode::HardResetClientV3,
        Opcode::ControlWkcV1,
    ];

    /// The opcode's number (1..=11).
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The name OpenVPN uses for this opcode, e.g. `P_CONTROL_HARD_RESET_CLIENT_V2`.
    pub const fn name(self) -> &'static str {
        match self {
            Opcode::HardResetClientV1 => "P_CONTROL_HARD_RESET_CLIENT_V1",
            Opcode::HardResetServerV1 => "P_CONTROL_HARD_RESET_SERVER_V1",
            Opcode::SoftResetV1 => "P_CONTROL_SOFT_RESET_V1",
            Opcode::ControlV1 => "P_CONTROL_V1",
            Opcode::AckV1 => "P_ACK_V1",
            Opcode::DataV1 => "P_DATA_V1",
            Opcode::HardResetClientV2 => "P_CONTROL_HARD_RESET_CLIENT_V2",
            Opcode::HardResetServerV2 => "P_CONTROL_HARD_RESET_SERVER_V2",
            Opcode::DataV2 => "P_DATA_V2",
            Opcode::HardResetClientV3 => "P_CONTROL_HARD_RESET_CLIENT_V3",
            Opcode::ControlWkcV1 => "P_CONTROL_WKC_V1",
        }
    }

    /// Whether packets of this opcode belong to the data channel (`P_DATA_V1`, `P_DATA_V2`).
    pub const fn is_data(self) -> bool {
        matches!(self, Opcode::DataV1 | Opcode::DataV2)
    }
}

impl TryFrom<u8> for Opcode {
    type Error = PacketError;

    /// Maps an opcode number (the first byte shifted right by 3, not the first byte itself).
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => Opcode::HardResetClientV1,
            2 => Opcode::HardResetServerV1,
            3 => Opcode::SoftResetV1,
            4 => Opcode::ControlV1,
            5 => Opcode::AckV1,
            6 => Opcode::DataV1,
            7 => Opcode::HardResetClientV2,
            8 => Opcode::HardResetServerV2,
            9 => Opcode::DataV2,
            10 => Opcode::HardResetClientV3,
            11 => Opcode::ControlWkcV1,
            other => return Err(PacketError::UnknownOpcode(other)),
        })
    }
}

impl From<Opcode> for u8 {
    fn from(op: Opcode) -> u8 {
        op.as_u8()
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The opcodes of packets with the full control layout (session id, acks, packet id, payload):
/// every opcode except `P_ACK_V1` and the two data opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlOpcode {
    /// `P_CONTROL_HARD_RESET_CLIENT_V1`.
    HardResetClientV1,
    /// `P_CONTROL_HARD_RESET_SERVER_V1`.
    HardResetServerV1,
    /// `P_CONTROL_SOFT_RESET_V1`.
    SoftResetV1,
    /// `P_CONTROL_V1`.
    ControlV1,
    /// `P_CONTROL_HARD_RESET_CLIENT_V2`.
    HardResetClientV2,
    /// `P_CONTROL_HARD_RESET_SERVER_V2`.
    HardResetServerV2,
    /// `P_CONTROL_HARD_RESET_CLIENT_V3`.
    HardResetClientV3,
    /// `P_CONTROL_WKC_V1`.
    ControlWkcV1,
}

impl ControlOpcode {
    /// Every control opcode, in numeric order.
    pub const ALL: [ControlOpcode; 8] = [
        ControlOpcode::HardResetClientV1,
        ControlOpcode::HardResetServerV1,
        ControlOpcode::SoftResetV1,
        ControlOpcode::ControlV1,
        ControlOpcode::HardResetClientV2,
        ControlOpcode::HardResetServerV2,
        ControlOpcode::HardResetClientV3,
        ControlOpcode::ControlWkcV1,
    ];

    /// The general opcode this control opcode is.
    pub const fn opcode(self) -> Opcode {
        match self {
            ControlOpcode::HardResetClientV1 => Opcode::HardResetClientV1,
            ControlOpcode::HardResetServerV1 => Opcode::HardResetServerV1,
            ControlOpcode::SoftResetV1 => Opcode::SoftResetV1,
            ControlOpcode::ControlV1 => Opcode::ControlV1,
            ControlOpcode::HardResetClientV2 => Opcode::HardResetClientV2,
            ControlOpcode::HardResetServerV2 => Opcode::HardResetServerV2,
            ControlOpcode::HardResetClientV3 => Opcode::HardResetClientV3,
            ControlOpcode::ControlWkcV1 => Opcode::ControlWkcV1,
        }
    }

    /// The control opcode for `op`, or `None` for `P_ACK_V1` and the data opcodes.
    pub const fn from_opcode(op: Opcode) -> Option<Self> {
        Some(match op {
            Opcode::HardResetClientV1 => ControlOpcode::HardResetClientV1,
            Opcode::HardResetServerV1 => ControlOpcode::HardResetServerV1,
            Opcode::SoftResetV1 => ControlOpcode::SoftResetV1,
            Opcode::ControlV1 => ControlOpcode::ControlV1,
            Opcode::HardResetClientV2 => ControlOpcode::HardResetClientV2,
            Opcode::HardResetServerV2 => ControlOpcode::HardResetServerV2,
            Opcode::HardResetClientV3 => ControlOpcode::HardResetClientV3,
            Opcode::ControlWkcV1 => ControlOpcode::ControlWkcV1,
            Opcode::AckV1 | Opcode::DataV1 | Opcode::DataV2 => return None,
        })
    }
}

impl From<ControlOpcode> for Opcode {
    fn from(op: ControlOpcode) -> Opcode {
        op.opcode()
    }
}

impl fmt::Display for ControlOpcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.opcode().name())
    }
}

/// The 3-bit key id in the low bits of a packet's first byte: which of the (up to eight)
/// negotiated key sets a packet belongs to. 0 for the first session, then 1..=7 cycling on
/// renegotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct KeyId(u8);

impl KeyId {
    /// The largest key id.
    pub const MAX: u8 = 7;

    /// A key id, or `None` if `id` does not fit in 3 bits.
    pub const fn new(id: u8) -> Option<Self> {
        if id <= Self::MAX {
            Some(KeyId(id))
        } else {
            None
        }
    }

    /// The key id as a number (0..=7).
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The key id that follows this one on renegotiation: 1..=7 cycle, 0 is never reused.
    pub const fn next(self) -> Self {
        if self.0 >= Self::MAX {
            KeyId(1)
        } else {
            KeyId(self.0 + 1)
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The 24-bit peer id of a `P_DATA_V2` packet: the server-assigned number that identifies a
/// client independently of its (possibly changing) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PeerId(u32);

impl PeerId {
    /// The largest peer id.
    pub const MAX: u32 = 0x00FF_FFFF;

    /// A peer id, or `None` if `id` does not fit in 24 bits.
    pub const fn new(id: u32) -> Option<Self> {
        if id <= Self::MAX {
            Some(PeerId(id))
        } else {
            None
        }
    }

    /// The peer id as a number (0..=0xFF_FFFF).
    pub const fn get(self) -> u32 {
        self.0
    }

    const fn from_be_bytes(b: [u8; PEER_ID_LEN]) -> Self {
        PeerId(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    const fn to_be_bytes(self) -> [u8; PEER_ID_LEN] {
        let [_, a, b, c] = self.0.to_be_bytes();
        [a, b, c]
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An 8-byte OpenVPN session id, chosen at random by each side of a control channel. Kept as
/// bytes: it is an opaque token (the stateless-reset cookie, for one, is computed over it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SessionId(pub [u8; SESSION_ID_LEN]);

impl SessionId {
    /// The session id's bytes, in wire order.
    pub const fn as_bytes(&self) -> &[u8; SESSION_ID_LEN] {
        &self.0
    }
}

impl From<[u8; SESSION_ID_LEN]> for SessionId {
    fn from(b: [u8; SESSION_ID_LEN]) -> Self {
        SessionId(b)
    }
}

impl fmt::Display for SessionId {
    /// Lower-case hex, as OpenVPN logs it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The first byte of every packet, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The packet type.
    pub opcode: Opcode,
    /// The key set the packet belongs to.
    pub key_id: KeyId,
}

impl Header {
    /// Decodes a first byte (`opcode << 3 | key_id`).
    pub fn from_byte(b: u8) -> Result<Self, PacketError> {
        Ok(Header {
            opcode: Opcode::try_from(b >> 3)?,
            key_id: KeyId(b & KeyId::MAX),
        })
    }

    /// Reads the header of a packet without decoding the rest: enough to route a datagram to
    /// the data or control path.
    pub fn peek(packet: &[u8]) -> Result<Self, PacketError> {
        let first = packet.first().ok_or(PacketError::Empty)?;
        Self::from_byte(*first)
    }

    /// The header as its wire byte.
    pub const fn to_byte(self) -> u8 {
        self.opcode.as_u8() << 3 | self.key_id.get()
    }
}

/// The acknowledgement block of a control or ack packet: between 1 and [`MAX_ACKS`] packet ids,
/// and the session id of the peer whose packets they acknowledge. A packet that acknowledges
/// nothing has no block at all (ack count 0 and no remote session id on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AckBlock {
    ids: Vec<u32>,
    remote_session_id: SessionId,
}

impl AckBlock {
    /// An ack block for `ids` (in the order they go on the wire), acknowledging packets of the
    /// session `remote_session_id`. Fails if there are no ids or more than [`MAX_ACKS`].
    pub fn new(ids: Vec<u32>, remote_session_id: SessionId) -> Result<Self, PacketError> {
        if ids.is_empty() {
            return Err(PacketError::NoAcks);
        }
        if ids.len() > MAX_ACKS {
            return Err(PacketError::TooManyAcks(ids.len()));
        }
        Ok(AckBlock {
            ids,
            remote_session_id,
        })
    }

    /// The acknowledged packet ids, in wire order (not necessarily sorted, may repeat).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The session id of the peer whose packets are acknowledged.
    pub fn remote_session_id(&self) -> SessionId {
        self.remote_session_id
    }

    /// The ids and the remote session id.
    pub fn into_parts(self) -> (Vec<u32>, SessionId) {
        (self.ids, self.remote_session_id)
    }

    /// Bytes this block takes on the wire, not counting the ack-count byte.
    fn body_len(&self) -> usize {
        self.ids.len() * 4 + SESSION_ID_LEN
    }

    /// Reads an ack count and, when it is not zero, the block it announces.
    fn read(r: &mut Reader<'_>) -> Result<Option<Self>, PacketError> {
        let count = r.u8("ack count")?;
        if count == 0 {
            return Ok(None);
        }
        if usize::from(count) > MAX_ACKS {
            return Err(PacketError::TooManyAcks(usize::from(count)));
        }
        let mut ids = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            ids.push(r.u32("acknowledged packet id")?);
        }
        let remote_session_id = SessionId(r.array("remote session id")?);
        Ok(Some(AckBlock {
            ids,
            remote_session_id,
        }))
    }

    /// Writes the ack count (0 for `None`) and the block.
    fn write(block: Option<&Self>, out: &mut Vec<u8>) {
        match block {
            None => out.push(0),
            Some(b) => {
                // `new` and `read` bound the length by MAX_ACKS, so it fits in the count byte.
                out.push(b.ids.len() as u8);
                for id in &b.ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
                out.extend_from_slice(&b.remote_session_id.0);
            }
        }
    }
}

/// A control-channel packet with the full layout: resets, `P_CONTROL_V1` and the tls-crypt-v2
/// variants (see the module documentation for those).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ControlPacket {
    /// The packet type.
    pub opcode: ControlOpcode,
    /// The key set this packet negotiates or belongs to.
    pub key_id: KeyId,
    /// The sender's session id.
    pub session_id: SessionId,
    /// Acknowledgements piggy-backed on this packet, if any.
    pub acks: Option<AckBlock>,
    /// This packet's id in the sender's reliability sequence.
    pub packet_id: u32,
    /// The payload: TLS records for `P_CONTROL_V1`; empty or early-negotiation TLVs in resets.
    pub payload: Vec<u8>,
}

impl ControlPacket {
    fn encoded_len(&self) -> usize {
        1 + SESSION_ID_LEN
            + 1
            + self.acks.as_ref().map_or(0, AckBlock::body_len)
            + 4
            + self.payload.len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(
            Header {
                opcode: self.opcode.opcode(),
                key_id: self.key_id,
            }
            .to_byte(),
        );
        out.extend_from_slice(&self.session_id.0);
        AckBlock::write(self.acks.as_ref(), out);
        out.extend_from_slice(&self.packet_id.to_be_bytes());
        out.extend_from_slice(&self.payload);
    }
}

/// A `P_ACK_V1` packet: acknowledgements only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AckPacket {
    /// The key set whose control packets are acknowledged.
    pub key_id: KeyId,
    /// The sender's session id.
    pub session_id: SessionId,
    /// The acknowledgements (an ack packet always carries at least one).
    pub acks: AckBlock,
}

impl AckPacket {
    fn encoded_len(&self) -> usize {
        1 + SESSION_ID_LEN + 1 + self.acks.body_len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(
            Header {
                opcode: Opcode::AckV1,
                key_id: self.key_id,
            }
            .to_byte(),
        );
        out.extend_from_slice(&self.session_id.0);
        AckBlock::write(Some(&self.acks), out);
    }
}

/// A data-channel packet, borrowing its payload from the buffer it was decoded from.
///
/// `P_DATA_V2` when `peer_id` is `Some`, `P_DATA_V1` when it is `None`. The payload is
/// everything after the opcode byte and peer id: packet id, AEAD tag and ciphertext, which the
/// data channel's crypto parses (its AAD is the first 8 bytes of the *whole* packet for V2, so
/// it needs the original buffer, not just this payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataPacket<'a> {
    /// The key set that encrypted the payload.
    pub key_id: KeyId,
    /// The sender's peer id (`P_DATA_V2` only).
    pub peer_id: Option<PeerId>,
    /// Packet id, tag and ciphertext, still encrypted.
    pub payload: &'a [u8],
}

impl DataPacket<'_> {
    /// `P_DATA_V2` or `P_DATA_V1`.
    pub const fn opcode(&self) -> Opcode {
        if self.peer_id.is_some() {
            Opcode::DataV2
        } else {
            Opcode::DataV1
        }
    }

    /// Length of the header before the payload: 4 for `P_DATA_V2`, 1 for `P_DATA_V1`.
    pub const fn header_len(&self) -> usize {
        if self.peer_id.is_some() {
            1 + PEER_ID_LEN
        } else {
            1
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(
            Header {
                opcode: self.opcode(),
                key_id: self.key_id,
            }
            .to_byte(),
        );
        if let Some(peer_id) = self.peer_id {
            out.extend_from_slice(&peer_id.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
    }
}

/// The 4-byte header of a `P_DATA_V2` packet (opcode/key id byte and peer id), for writing
/// data packets in place without building a [`DataPacket`].
pub const fn data_v2_header(key_id: KeyId, peer_id: PeerId) -> [u8; 1 + PEER_ID_LEN] {
    let [a, b, c] = peer_id.to_be_bytes();
    [
        Header {
            opcode: Opcode::DataV2,
            key_id,
        }
        .to_byte(),
        a,
        b,
        c,
    ]
}

/// A decoded OpenVPN packet (plaintext layout: no tls-auth/tls-crypt wrapping).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Packet<'a> {
    /// Resets, `P_CONTROL_V1` and the tls-crypt-v2 control opcodes.
    Control(ControlPacket),
    /// `P_ACK_V1`.
    Ack(AckPacket),
    /// `P_DATA_V1` and `P_DATA_V2` (zero-copy).
    Data(DataPacket<'a>),
}

impl<'a> Packet<'a> {
    /// Decodes one packet (a UDP datagram's payload, or one TCP frame without its length).
    ///
    /// Data packets borrow `buf`; control and ack packets copy what they need. Never panics.
    pub fn decode(buf: &'a [u8]) -> Result<Self, PacketError> {
        let (&first, rest) = buf.split_first().ok_or(PacketError::Empty)?;
        let Header { opcode, key_id } = Header::from_byte(first)?;
        let mut r = Reader { rest };
        match opcode {
            Opcode::DataV1 => Ok(Packet::Data(DataPacket {
                key_id,
                peer_id: None,
                payload: rest,
            })),
            Opcode::DataV2 => {
                let peer_id = PeerId::from_be_bytes(r.array("peer id")?);
                Ok(Packet::Data(DataPacket {
                    key_id,
                    peer_id: Some(peer_id),
                    payload: r.rest,
                }))
            }
            Opcode::AckV1 => {
                let session_id = SessionId(r.array("session id")?);
                let acks = AckBlock::read(&mut r)?.ok_or(PacketError::NoAcks)?;
                if !r.rest.is_empty() {
                    return Err(PacketError::TrailingBytes {
                        what: "P_ACK_V1",
                        extra: r.rest.len(),
                    });
                }
                Ok(Packet::Ack(AckPacket {
                    key_id,
                    session_id,
                    acks,
                }))
            }
            Opcode::HardResetClientV1
            | Opcode::HardResetServerV1
            | Opcode::SoftResetV1
            | Opcode::ControlV1
            | Opcode::HardResetClientV2
            | Opcode::HardResetServerV2
            | Opcode::HardResetClientV3
            | Opcode::ControlWkcV1 => {
                let Some(opcode) = ControlOpcode::from_opcode(opcode) else {
                    // Unreachable: the arm lists exactly the control opcodes.
                    return Err(PacketError::UnknownOpcode(opcode.as_u8()));
                };
                let session_id = SessionId(r.array("session id")?);
                let acks = AckBlock::read(&mut r)?;
                let packet_id = r.u32("packet id")?;
                Ok(Packet::Control(ControlPacket {
                    opcode,
                    key_id,
                    session_id,
                    acks,
                    packet_id,
                    payload: r.rest.to_vec(),
                }))
            }
        }
    }

    /// The packet's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Packet::Control(c) => c.opcode.opcode(),
            Packet::Ack(_) => Opcode::AckV1,
            Packet::Data(d) => d.opcode(),
        }
    }

    /// The packet's key id.
    pub fn key_id(&self) -> KeyId {
        match self {
            Packet::Control(c) => c.key_id,
            Packet::Ack(a) => a.key_id,
            Packet::Data(d) => d.key_id,
        }
    }

    /// How many bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Packet::Control(c) => c.encoded_len(),
            Packet::Ack(a) => a.encoded_len(),
            Packet::Data(d) => d.header_len() + d.payload.len(),
        }
    }

    /// Appends the packet's wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match self {
            Packet::Control(c) => c.encode(out),
            Packet::Ack(a) => a.encode(out),
            Packet::Data(d) => d.encode(out),
        }
    }

    /// The packet's wire form.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }
}

impl From<ControlPacket> for Packet<'_> {
    fn from(p: ControlPacket) -> Self {
        Packet::Control(p)
    }
}

impl From<AckPacket> for Packet<'_> {
    fn from(p: AckPacket) -> Self {
        Packet::Ack(p)
    }
}

impl<'a> From<DataPacket<'a>> for Packet<'a> {
    fn from(p: DataPacket<'a>) -> Self {
        Packet::Data(p)
    }
}

/// The clear prefix of a control-channel packet protected by tls-auth or tls-crypt(-v2): the
/// opcode byte and session id, and everything after them still wrapped (HMAC or ciphertext,
/// then for tls-crypt-v2 resets the wrapped client key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WrappedPacket<'a> {
    /// The packet type (never a data opcode).
    pub opcode: Opcode,
    /// The key set the packet belongs to.
    pub key_id: KeyId,
    /// The sender's session id.
    pub session_id: SessionId,
    /// The bytes after the session id, as received.
    pub wrapped: &'a [u8],
}

/// Splits a wrapped control-channel packet into its clear prefix and the wrapped rest.
///
/// Fails on data packets (which have no session id) and on packets too short for a session id.
/// The wrap layer authenticates or decrypts [`WrappedPacket::wrapped`] and feeds the
/// reassembled plaintext packet to [`Packet::decode`].
pub fn decode_wrapped(buf: &[u8]) -> Result<WrappedPacket<'_>, PacketError> {
    let (&first, rest) = buf.split_first().ok_or(PacketError::Empty)?;
    let Header { opcode, key_id } = Header::from_byte(first)?;
    if opcode.is_data() {
        return Err(PacketError::NotControl(opcode));
    }
    let mut r = Reader { rest };
    let session_id = SessionId(r.array("session id")?);
    Ok(WrappedPacket {
        opcode,
        key_id,
        session_id,
        wrapped: r.rest,
    })
}

/// A cursor over packet bytes whose reads fail, rather than panic, past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], PacketError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(PacketError::Truncated {
                what,
                need: N,
                have: self.rest.len(),
            })?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, PacketError> {
        self.array::<1>(what).map(|[b]| b)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, PacketError> {
        self.array(what).map(u32::from_be_bytes)
    }
}

/// Length of the TCP frame prefix, in bytes.
pub const FRAME_PREFIX_LEN: usize = 2;

/// Frames `packet` for a TCP stream: a 16-bit big-endian length, then the packet.
///
/// Fails for an empty packet and for packets longer than 65535 bytes, which the prefix cannot
/// express.
pub fn frame(packet: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(FRAME_PREFIX_LEN + packet.len());
    frame_into(packet, &mut out)?;
    Ok(out)
}

/// Appends `packet` framed for a TCP stream to `out` (see [`frame`]); on error `out` is left
/// unchanged.
pub fn frame_into(packet: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if packet.is_empty() {
        return Err(FrameError::ZeroLength);
    }
    let len = u16::try_from(packet.len()).map_err(|_| FrameError::TooLong {
        len: packet.len(),
        max: usize::from(u16::MAX),
    })?;
    out.reserve(FRAME_PREFIX_LEN + packet.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

/// Splits an OpenVPN TCP byte stream into packets: feed it whatever the socket returned with
/// [`push`](Self::push), then call [`next_frame`](Self::next_frame) until it returns `Ok(None)`.
/// Frames split across reads and several frames in one read are both handled.
///
/// A frame length of 0 or above the maximum means the stream is corrupt (or not OpenVPN) and
/// cannot be resynchronised: the framer then returns that error for good, ignores further
/// input, and the connection should be closed. The length is checked as soon as its two bytes
/// arrive, so a peer cannot make the framer buffer more than one maximum-size frame beyond what
/// the caller pushes at once.
#[derive(Debug, Clone)]
pub struct TcpFramer {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf` (frames already returned come before it).
    start: usize,
    max_frame_len: usize,
    failed: Option<FrameError>,
}

impl TcpFramer {
    /// The default largest frame accepted: 4096 bytes.
    ///
    /// The largest packets a stock OpenVPN 2.6 peer sends are data packets of a tun MTU up to
    /// 1600 (what clients advertise in `IV_MTU`) plus 24 bytes of AEAD overhead, and
    /// tls-crypt-v2 control packets: a control packet of up to `tls-mtu` (1250 by default) plus
    /// a wrapped client key of up to 1024 bytes. 4096 covers both with room to spare, and still
    /// bounds what a hostile peer can make us buffer per connection.
    pub const DEFAULT_MAX_FRAME_LEN: usize = 4096;

    /// A framer accepting frames up to [`DEFAULT_MAX_FRAME_LEN`](Self::DEFAULT_MAX_FRAME_LEN).
    pub fn new() -> Self {
        Self::with_max_frame_len(Self::DEFAULT_MAX_FRAME_LEN)
    }

    /// A framer accepting frames up to `max` bytes, clamped to 1..=65535 (the largest length
    /// the 16-bit prefix can express).
    pub fn with_max_frame_len(max: usize) -> Self {
        TcpFramer {
            buf: Vec::new(),
            start: 0,
            max_frame_len: max.clamp(1, usize::from(u16::MAX)),
            failed: None,
        }
    }

    /// The largest frame this framer accepts.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// Whether the stream was found corrupt (see [`next_frame`](Self::next_frame)).
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Appends bytes read from the stream. Ignored once the stream was found corrupt.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            // Drop the frames already handed out; moves at most one partial frame.
            self.buf.drain(..self.start.min(self.buf.len()));
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete packet (without its length prefix), `Ok(None)` if more bytes are
    /// needed, or the reason the stream is corrupt (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail = self.buf.get(self.start..).unwrap_or_default();
        let Some((prefix, body)) = avail.split_first_chunk::<FRAME_PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        let have = body.len();
        let error = if len == 0 {
            Some(FrameError::ZeroLength)
        } else if len > self.max_frame_len {
            Some(FrameError::TooLong {
                len,
                max: self.max_frame_len,
            })
        } else {
            None
        };
        if let Some(e) = error {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.start = 0;
            return Err(e);
        }
        if have < len {
            return Ok(None);
        }
        let from = self.start + FRAME_PREFIX_LEN;
        self.start = from + len;
        Ok(self.buf.get(from..from + len))
    }
}

impl Default for TcpFramer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SID: SessionId = SessionId([0x1c, 0x2b, 0x3a, 0x49, 0x58, 0x67, 0x76, 0x85]);
    const REMOTE: SessionId = SessionId([0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18]);

    fn key(id: u8) -> KeyId {
        KeyId::new(id).expect("test key ids are 0..=7")
    }

    fn decode(bytes: &[u8]) -> Packet<'_> {
        Packet::decode(bytes).unwrap_or_else(|e| panic!("{bytes:02x?} should decode: {e}"))
    }

    /// Asserts that `bytes` decodes to `expected` and encodes back to `bytes`.
    fn assert_wire(bytes: &[u8], expected: &Packet<'_>) {
        assert_eq!(&decode(bytes), expected);
        assert_eq!(expected.to_vec(), bytes);
        assert_eq!(expected.encoded_len(), bytes.len());
    }

    /// Every prefix of `bytes` decodes to an error or a packet that re-encodes to the prefix.
    fn assert_prefixes_safe(bytes: &[u8]) {
        for n in 0..=bytes.len() {
            let prefix = &bytes[..n];
            if let Ok(p) = Packet::decode(prefix) {
                assert_eq!(p.to_vec(), prefix, "prefix of {n} bytes");
            }
        }
    }

    /// A sample packet of every opcode.
    fn sample_of(op: Opcode) -> Packet<'static> {
        let acks = AckBlock::new(vec![0, 1, 0xdead_beef], REMOTE).unwrap();
        match op {
            Opcode::AckV1 => AckPacket {
                key_id: key(2),
                session_id: SID,
                acks,
            }
            .into(),
            Opcode::DataV1 => DataPacket {
                key_id: key(1),
                peer_id: None,
                payload: b"\x00\x00\x00\x01ciphertext",
            }
            .into(),
            Opcode::DataV2 => DataPacket {
                key_id: key(7),
                peer_id: PeerId::new(0x00ab_cdef),
                payload: b"\x00\x00\x00\x01tag-and-ciphertext",
            }
            .into(),
            other => ControlPacket {
                opcode: ControlOpcode::from_opcode(other).unwrap(),
                key_id: key(3),
                session_id: SID,
                acks: Some(acks),
                packet_id: 42,
                payload: b"\x16\x03\x01 tls record".to_vec(),
            }
            .into(),
        }
    }

    #[test]
    fn opcode_numbers_and_first_byte() {
        for v in 0..=u8::MAX {
            match Opcode::try_from(v) {
                Ok(op) => {
                    assert!((1..=11).contains(&v));
                    assert_eq!(op.as_u8(), v);
                    assert_eq!(Opcode::ALL[usize::from(v) - 1], op);
                }
                Err(e) => {
                    assert!(v == 0 || v > 11);
                    assert_eq!(e, PacketError::UnknownOpcode(v));
                }
            }
        }
        assert_eq!(
            Header {
                opcode: Opcode::HardResetClientV2,
                key_id: key(0)
            }
            .to_byte(),
            0x38
        );
        assert_eq!(
            Header {
                opcode: Opcode::AckV1,
                key_id: key(0)
            }
            .to_byte(),
            0x28
        );
        assert_eq!(
            Header {
                opcode: Opcode::DataV2,
                key_id: key(5)
            }
            .to_byte(),
            0x4d
        );
        assert_eq!(
            Header::peek(&[0x4d, 1, 2]).unwrap(),
            Header {
                opcode: Opcode::DataV2,
                key_id: key(5)
            }
        );
        assert_eq!(Header::peek(&[]), Err(PacketError::Empty));
        for op in ControlOpcode::ALL {
            assert_eq!(ControlOpcode::from_opcode(op.opcode()), Some(op));
        }
        for op in [Opcode::AckV1, Opcode::DataV1, Opcode::DataV2] {
            assert_eq!(ControlOpcode::from_opcode(op), None);
        }
    }

    #[test]
    fn every_opcode_round_trips() {
        for op in Opcode::ALL {
            let packet = sample_of(op);
            assert_eq!(packet.opcode(), op);
            let bytes = packet.to_vec();
            assert_eq!(bytes[0] >> 3, op.as_u8(), "{op}");
            assert_eq!(bytes[0] & 7, packet.key_id().get(), "{op}");
            assert_wire(&bytes, &packet);
            assert_prefixes_safe(&bytes);
        }
    }

    #[test]
    fn every_key_id_round_trips() {
        for k in 0..=KeyId::MAX {
            let p: Packet = ControlPacket {
                opcode: ControlOpcode::SoftResetV1,
                key_id: key(k),
                session_id: SID,
                acks: None,
                packet_id: 0,
                payload: vec![],
            }
            .into();
            assert_eq!(decode(&p.to_vec()).key_id(), key(k));
        }
        assert_eq!(KeyId::new(8), None);
        assert_eq!(key(7).next(), key(1));
        assert_eq!(key(0).next(), key(1));
        assert_eq!(key(3).next(), key(4));
    }

    /// A stock OpenVPN 2.6 client's first packet over UDP without tls-auth/tls-crypt:
    /// `P_CONTROL_HARD_RESET_CLIENT_V2`, key id 0, its random session id, no acks, packet id 0.
    #[rustfmt::skip]
    const CLIENT_HARD_RESET_V2: [u8; 14] = [
        0x38,                                           // opcode 7 << 3 | key id 0
        0x1c, 0x2b, 0x3a, 0x49, 0x58, 0x67, 0x76, 0x85, // client session id
        0x00,                                           // ack count
        0x00, 0x00, 0x00, 0x00,                         // packet id 0
    ];

    #[test]
    fn captured_client_hard_reset_v2() {
        let expected: Packet = ControlPacket {
            opcode: ControlOpcode::HardResetClientV2,
            key_id: key(0),
            session_id: SID,
            acks: None,
            packet_id: 0,
            payload: vec![],
        }
        .into();
        assert_wire(&CLIENT_HARD_RESET_V2, &expected);
        assert_prefixes_safe(&CLIENT_HARD_RESET_V2);
        // Cut short inside the packet id.
        assert_eq!(
            Packet::decode(&CLIENT_HARD_RESET_V2[..12]),
            Err(PacketError::Truncated {
                what: "packet id",
                need: 4,
                have: 2
            })
        );
        assert_eq!(
            Packet::decode(&CLIENT_HARD_RESET_V2[..5]),
            Err(PacketError::Truncated {
                what: "session id",
                need: 8,
                have: 4
            })
        );
    }

    /// The same reset followed by an early-negotiation TLV payload (type `EARLY_NEG_FLAGS` = 1,
    /// length 2, flags `RESEND_WKC` = 1): OpenVPN 2.6 puts these TLVs in the payload of resets;
    /// the codec carries them through as an opaque payload.
    #[test]
    fn hard_reset_with_early_negotiation_payload() {
        let tlv = [0x00, 0x01, 0x00, 0x02, 0x00, 0x01];
        let bytes = [&CLIENT_HARD_RESET_V2[..], &tlv].concat();
        let Packet::Control(c) = decode(&bytes) else {
            panic!("not a control packet")
        };
        assert_eq!(c.opcode, ControlOpcode::HardResetClientV2);
        assert_eq!(c.packet_id, 0);
        assert_eq!(c.payload, tlv);
        assert_eq!(Packet::Control(c).to_vec(), bytes);
        assert_prefixes_safe(&bytes);
    }

    /// The server's stateless answer: `P_CONTROL_HARD_RESET_SERVER_V2` acknowledging the
    /// client's packet 0, carrying the early-negotiation TLV.
    #[test]
    fn server_hard_reset_v2_with_ack() {
        #[rustfmt::skip]
        let bytes = [
            0x40,                                           // opcode 8 << 3 | key id 0
            0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18, // server session id
            0x01,                                           // 1 ack
            0x00, 0x00, 0x00, 0x00,                         // acks client packet 0
            0x1c, 0x2b, 0x3a, 0x49, 0x58, 0x67, 0x76, 0x85, // client session id
            0x00, 0x00, 0x00, 0x00,                         // packet id 0
            0x00, 0x01, 0x00, 0x02, 0x00, 0x01,             // EARLY_NEG_FLAGS: RESEND_WKC
        ];
        let expected: Packet = ControlPacket {
            opcode: ControlOpcode::HardResetServerV2,
            key_id: key(0),
            session_id: REMOTE,
            acks: Some(AckBlock::new(vec![0], SID).unwrap()),
            packet_id: 0,
            payload: vec![0x00, 0x01, 0x00, 0x02, 0x00, 0x01],
        }
        .into();
        assert_wire(&bytes, &expected);
        assert_prefixes_safe(&bytes);
    }

    /// `P_ACK_V1` acknowledging one packet, as the client sends after the server's reset.
    #[test]
    fn captured_ack_v1_one_ack() {
        #[rustfmt::skip]
        let bytes = [
            0x28,                                           // opcode 5 << 3 | key id 0
            0x1c, 0x2b, 0x3a, 0x49, 0x58, 0x67, 0x76, 0x85, // client session id
            0x01,                                           // 1 ack
            0x00, 0x00, 0x00, 0x00,                         // acks server packet 0
            0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18, // server session id
        ];
        let expected: Packet = AckPacket {
            key_id: key(0),
            session_id: SID,
            acks: AckBlock::new(vec![0], REMOTE).unwrap(),
        }
        .into();
        assert_wire(&bytes, &expected);
        assert_prefixes_safe(&bytes);
        assert_eq!(
            Packet::decode(&bytes[..bytes.len() - 1]),
            Err(PacketError::Truncated {
                what: "remote session id",
                need: 8,
                have: 7
            })
        );
        assert_eq!(
            Packet::decode(&[&bytes[..], &[0]].concat()),
            Err(PacketError::TrailingBytes {
                what: "P_ACK_V1",
                extra: 1
            })
        );
    }

    #[test]
    fn data_v2_borrows_its_payload() {
        #[rustfmt::skip]
        let bytes = [
            0x48 | 1,                   // opcode 9 << 3 | key id 1
            0x00, 0x00, 0x05,           // peer id 5
            0x00, 0x00, 0x00, 0x01,     // packet id (part of the payload for this codec)
            0xee, 0xee, 0xee, 0xee,     // tag and ciphertext ...
        ];
        let Packet::Data(d) = decode(&bytes) else {
            panic!("not a data packet")
        };
        assert_eq!(d.key_id, key(1));
        assert_eq!(d.peer_id, PeerId::new(5));
        assert_eq!(
            d.payload.as_ptr(),
            bytes[4..].as_ptr(),
            "payload must borrow the input"
        );
        assert_eq!(d.header_len(), 4);
        assert_eq!(data_v2_header(key(1), PeerId::new(5).unwrap()), bytes[..4]);
        assert_prefixes_safe(&bytes);
        assert_eq!(
            Packet::decode(&bytes[..3]),
            Err(PacketError::Truncated {
                what: "peer id",
                need: 3,
                have: 2
            })
        );
        assert_eq!(PeerId::new(0x0100_0000), None);
        assert_eq!(PeerId::new(PeerId::MAX).map(PeerId::get), Some(0xff_ffff));
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(Packet::decode(&[]), Err(PacketError::Empty));
        assert_eq!(Packet::decode(&[0x00]), Err(PacketError::UnknownOpcode(0)));
        assert_eq!(Packet::decode(&[0x07]), Err(PacketError::UnknownOpcode(0)));
        assert_eq!(
            Packet::decode(&[12 << 3, 1, 2, 3]),
            Err(PacketError::UnknownOpcode(12))
        );
        assert_eq!(Packet::decode(&[0xff]), Err(PacketError::UnknownOpcode(31)));

        // Nine acks.
        let mut nine = vec![0x20];
        nine.extend_from_slice(&SID.0);
        nine.push(9);
        nine.extend(std::iter::repeat_n(0u8, 9 * 4 + 8 + 4));
        assert_eq!(Packet::decode(&nine), Err(PacketError::TooManyAcks(9)));
        nine[0] = 0x28;
        assert_eq!(Packet::decode(&nine), Err(PacketError::TooManyAcks(9)));
        // Eight is fine.
        nine[9] = 8;
        nine.truncate(1 + 8 + 1 + 8 * 4 + 8);
        assert!(matches!(decode(&nine), Packet::Ack(a) if a.acks.ids().len() == 8));

        // An ack packet acknowledging nothing.
        let mut empty_ack = vec![0x28];
        empty_ack.extend_from_slice(&SID.0);
        empty_ack.push(0);
        assert_eq!(Packet::decode(&empty_ack), Err(PacketError::NoAcks));

        assert_eq!(AckBlock::new(vec![], REMOTE), Err(PacketError::NoAcks));
        assert_eq!(
            AckBlock::new(vec![0; 9], REMOTE),
            Err(PacketError::TooManyAcks(9))
        );
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(
            PacketError::Truncated {
                what: "session id",
                need: 8,
                have: 3
            }
            .to_string(),
            "packet truncated in the session id: it needs 8 bytes, only 3 left"
        );
        assert_eq!(
            PacketError::TooManyAcks(9).to_string(),
            "9 acknowledgements in one packet, at most 8 are allowed"
        );
        assert_eq!(
            PacketError::NotControl(Opcode::DataV2).to_string(),
            "P_DATA_V2 is a data packet, not a control-channel packet"
        );
        assert_eq!(SID.to_string(), "1c2b3a4958677685");
    }

    #[test]
    fn wrapped_packets_split_after_the_session_id() {
        let mut bytes = vec![(10 << 3) | 2];
        bytes.extend_from_slice(&SID.0);
        bytes.extend_from_slice(b"opaque tls-crypt wrapped bytes and WKc");
        let w = decode_wrapped(&bytes).unwrap();
        assert_eq!(w.opcode, Opcode::HardResetClientV3);
        assert_eq!(w.key_id, key(2));
        assert_eq!(w.session_id, SID);
        assert_eq!(w.wrapped, &bytes[9..]);
        assert_eq!(
            decode_wrapped(&[0x48, 0, 0, 1]),
            Err(PacketError::NotControl(Opcode::DataV2))
        );
        for n in 0..bytes.len() {
            let _ = decode_wrapped(&bytes[..n]);
        }
        assert!(decode_wrapped(&bytes[..8]).is_err());
        assert!(decode_wrapped(&bytes[..9]).is_ok());
    }

    #[test]
    fn framer_handles_split_and_coalesced_frames() {
        let a = CLIENT_HARD_RESET_V2.to_vec();
        let b = vec![0x48, 0, 0, 1, 9, 9];
        let mut stream = frame(&a).unwrap();
        frame_into(&b, &mut stream).unwrap();
        assert_eq!(&stream[..2], &[0, 14]);

        // Everything at once.
        let mut f = TcpFramer::new();
        f.push(&stream);
        assert_eq!(f.next_frame().unwrap(), Some(&a[..]));
        assert_eq!(f.next_frame().unwrap(), Some(&b[..]));
        assert_eq!(f.next_frame().unwrap(), None);
        assert_eq!(f.buffered_len(), 0);

        // One byte at a time.
        let mut f = TcpFramer::new();
        let mut got = Vec::new();
        for byte in &stream {
            f.push(std::slice::from_ref(byte));
            while let Some(p) = f.next_frame().unwrap() {
                got.push(p.to_vec());
            }
        }
        assert_eq!(got, vec![a.clone(), b.clone()]);

        // A frame and a half, then the rest.
        let mut f = TcpFramer::new();
        f.push(&stream[..stream.len() - 3]);
        assert_eq!(f.next_frame().unwrap(), Some(&a[..]));
        assert_eq!(f.next_frame().unwrap(), None);
        assert_eq!(f.buffered_len(), 2 + b.len() - 3);
        f.push(&stream[stream.len() - 3..]);
        assert_eq!(f.next_frame().unwrap(), Some(&b[..]));
        assert_eq!(f.next_frame().unwrap(), None);
    }

    #[test]
    fn framer_rejects_bad_lengths_for_good() {
        let mut f = TcpFramer::new();
        f.push(&[0, 0, 0x38]);
        assert_eq!(f.next_frame(), Err(FrameError::ZeroLength));
        assert!(f.is_failed());
        f.push(&frame(&CLIENT_HARD_RESET_V2).unwrap());
        assert_eq!(f.next_frame(), Err(FrameError::ZeroLength));

        let mut f = TcpFramer::with_max_frame_len(100);
        f.push(&frame(&[0x30; 100]).unwrap());
        assert_eq!(f.next_frame().unwrap().map(<[u8]>::len), Some(100));
        // Rejected on the prefix alone, before the body arrives.
        f.push(&[0, 101]);
        assert_eq!(
            f.next_frame(),
            Err(FrameError::TooLong { len: 101, max: 100 })
        );

        let mut f = TcpFramer::new();
        f.push(&[0xff, 0xff]);
        assert_eq!(
            f.next_frame(),
            Err(FrameError::TooLong {
                len: 65535,
                max: TcpFramer::DEFAULT_MAX_FRAME_LEN
            })
        );

        assert_eq!(TcpFramer::with_max_frame_len(0).max_frame_len(), 1);
        assert_eq!(
            TcpFramer::with_max_frame_len(1 << 20).max_frame_len(),
            65535
        );
        let mut f = TcpFramer::with_max_frame_len(usize::MAX);
        let big = vec![0x30; 65535];
        f.push(&frame(&big).unwrap());
        assert_eq!(f.next_frame().unwrap(), Some(&big[..]));

        assert_eq!(frame(&[]), Err(FrameError::ZeroLength));
        assert_eq!(
            frame(&vec![0; 65536]),
            Err(FrameError::TooLong {
                len: 65536,
                max: 65535
            })
        );
        let mut out = vec![1];
        assert!(frame_into(&vec![0; 65536], &mut out).is_err());
        assert_eq!(out, [1]);
    }

    fn arb_session_id() -> impl Strategy<Value = SessionId> {
        any::<[u8; 8]>().prop_map(SessionId)
    }

    fn arb_key_id() -> impl Strategy<Value = KeyId> {
        (0..=KeyId::MAX).prop_map(KeyId)
    }

    fn arb_ack_block() -> impl Strategy<Value = AckBlock> {
        (
            prop::collection::vec(any::<u32>(), 1..=MAX_ACKS),
            arb_session_id(),
        )
            .prop_map(|(ids, sid)| AckBlock::new(ids, sid).expect("1..=8 ids"))
    }

    fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..200)
    }

    /// A valid packet of any kind; data payloads are owned by the strategy and leaked into
    /// `'static` (a few KB per test run).
    fn arb_packet() -> impl Strategy<Value = Packet<'static>> {
        let control = (
            prop::sample::select(ControlOpcode::ALL.to_vec()),
            arb_key_id(),
            arb_session_id(),
            prop::option::of(arb_ack_block()),
            any::<u32>(),
            arb_payload(),
        )
            .prop_map(|(opcode, key_id, session_id, acks, packet_id, payload)| {
                Packet::Control(ControlPacket {
                    opcode,
                    key_id,
                    session_id,
                    acks,
                    packet_id,
                    payload,
                })
            });
        let ack = (arb_key_id(), arb_session_id(), arb_ack_block()).prop_map(
            |(key_id, session_id, acks)| {
                Packet::Ack(AckPacket {
                    key_id,
                    session_id,
                    acks,
                })
            },
        );
        let data = (
            arb_key_id(),
            prop::option::of((0..=PeerId::MAX).prop_map(PeerId)),
            arb_payload(),
        )
            .prop_map(|(key_id, peer_id, payload)| {
                let payload: &'static [u8] = Box::leak(payload.into_boxed_slice());
                Packet::Data(DataPacket {
                    key_id,
                    peer_id,
                    payload,
                })
            });
        prop_oneof![control, ack, data]
    }

    proptest! {
        #[test]
        fn valid_packets_round_trip(packet in arb_packet()) {
            let bytes = packet.to_vec();
            prop_assert_eq!(bytes.len(), packet.encoded_len());
            let decoded = Packet::decode(&bytes);
            prop_assert_eq!(decoded.as_ref(), Ok(&packet));
            for n in 0..bytes.len() {
                if let Ok(p) = Packet::decode(&bytes[..n]) {
                    prop_assert_eq!(p.to_vec(), &bytes[..n]);
                }
            }
        }

        #[test]
        fn decode_never_panics_and_is_exact(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(p) = Packet::decode(&bytes) {
                prop_assert_eq!(p.to_vec(), bytes.clone());
                prop_assert_eq!(Header::peek(&bytes).map(|h| h.opcode), Ok(p.opcode()));
            }
            if let Ok(w) = decode_wrapped(&bytes) {
                prop_assert_eq!(w.wrapped.len() + 1 + SESSION_ID_LEN, bytes.len());
            }
        }

        #[test]
        fn decode_never_panics_on_plausible_headers(
            first in prop::sample::select(Opcode::ALL.to_vec()),
            key_id in 0u8..8,
            rest in prop::collection::vec(prop_oneof![Just(0u8), Just(1), Just(8), Just(9), any::<u8>()], 0..120),
        ) {
            let mut bytes = vec![first.as_u8() << 3 | key_id];
            bytes.extend_from_slice(&rest);
            if let Ok(p) = Packet::decode(&bytes) {
                prop_assert_eq!(p.to_vec(), bytes);
            }
        }

        #[test]
        fn framer_is_independent_of_read_boundaries(
            packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..12),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut stream = Vec::new();
            for p in &packets {
                frame_into(p, &mut stream).unwrap();
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();

            let mut framer = TcpFramer::new();
            let mut got = Vec::new();
            for w in cuts.windows(2) {
                framer.push(&stream[w[0]..w[1]]);
                while let Some(p) = framer.next_frame().unwrap() {
                    got.push(p.to_vec());
                }
            }
            prop_assert_eq!(got, packets);
            prop_assert_eq!(framer.buffered_len(), 0);
        }

        #[test]
        fn framer_never_panics_on_arbitrary_streams(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16),
            max in 0usize..70_000,
        ) {
            let mut framer = TcpFramer::with_max_frame_len(max);
            for c in &chunks {
                framer.push(c);
                loop {
                    match framer.next_frame() {
                        Ok(Some(p)) => prop_assert!(!p.is_empty() && p.len() <= framer.max_frame_len()),
                        Ok(None) => break,
                        Err(_) => { prop_assert!(framer.is_failed()); break; }
                    }
                }
            }
        }
    }
}
