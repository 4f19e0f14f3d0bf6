//! The OpenVPN data channel's crypto, sans-IO: AEAD seal and open of `P_DATA_V2` packets.
//!
//! Wire format (OpenVPN 2.6, AEAD ciphers only):
//!
//! ```text
//! byte 0      opcode 9 (P_DATA_V2) << 3 | key_id
//! bytes 1..4  peer id (24 bits, big-endian)
//! bytes 4..8  packet id (32 bits, big-endian, from 1, never repeated for one key)
//! bytes 8..24 AEAD tag
//! bytes 24..  ciphertext (same length as the plaintext)
//! ```
//!
//! The AAD is bytes 0..8 (opcode byte, peer id, packet id); the 12-byte nonce is the packet id
//! (4 bytes, big-endian) followed by the 8-byte implicit IV. Ciphers: `AES-128-GCM`,
//! `AES-256-GCM`, `CHACHA20-POLY1305` ([`Cipher`]).
//!
//! Keys come from the 256 bytes of key material that the control channel derives (TLS-EKM,
//! label [`EKM_LABEL`], or OpenVPN's legacy TLS PRF, which produces the same layout): two
//! 128-byte halves, client→server then server→client, each a 64-byte cipher key followed by a
//! 64-byte HMAC key. A cipher uses the first [`Cipher::key_len`] bytes of its cipher key; the
//! implicit IV is the first 8 bytes of the matching HMAC key. The server seals with the
//! server→client half and opens with the client→server half; a client the other way round.
//!
//! Everything here works on caller-owned buffers and is built for batches: keys are expanded
//! once ([`DataChannel::from_ekm`]), and [`Sealer::seal_in_place`] / [`Opener::open_in_place`]
//! never allocate. Sealing expects [`OVERHEAD`] (24) bytes of headroom in front of the
//! plaintext and writes the header and tag there; opening decrypts in place and returns the
//! plaintext, which is `packet[OVERHEAD..]`.
//!
//! Replay protection ([`ReplayWindow`]) runs on the opening side and is updated only after the
//! tag verified. Packet ids for sealing run out at `u32::MAX`: from
//! [`RENEGOTIATE_AT_PACKET_ID`] on, [`DataChannel::needs_renegotiation`] says so, so the session
//! can start a soft reset in time; at the end [`Sealer::seal_in_place`] refuses with
//! [`DataError::PacketIdExhausted`].
//!
//! Nothing here panics on peer input. Not covered: `P_DATA_V1`, non-AEAD (CBC + HMAC) ciphers,
//! OpenVPN 2.7's epoch data keys, and the framing of the plaintext itself (compression stub
//! byte, OpenVPN's ping magic), which belongs to the session.

pub mod inner;
pub mod offload;
pub mod replay;

pub use replay::ReplayWindow;

use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

/// `P_DATA_V2`'s opcode.
pub const OPCODE_DATA_V2: u8 = 9;
/// Length of the authenticated header: opcode/key id (1), peer id (3), packet id (4).
pub const HEADER_LEN: usize = 8;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds in front of the plaintext (header and tag); the plaintext starts
/// at this offset in both sealed and opened packets.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Length of the implicit IV taken from the HMAC key.
pub const IMPLICIT_IV_LEN: usize = 8;
/// Length of the key material: two directions of (cipher key 64, HMAC key 64).
pub const KEY_MATERIAL_LEN: usize = 256;
/// The TLS keying-material exporter label OpenVPN uses for the data channel keys.
pub const EKM_LABEL: &str = "EXPORTER-OpenVPN-datakeys";
/// Largest key id (key ids are 3 bits).
pub const MAX_KEY_ID: u8 = 7;
/// Largest peer id (peer ids are 24 bits).
pub const MAX_PEER_ID: u32 = 0x00FF_FFFF;
/// Once a packet with this id or a higher one was sealed or opened,
/// [`DataChannel::needs_renegotiation`] is true: about 16.7 million packet ids remain.
pub const RENEGOTIATE_AT_PACKET_ID: u32 = 0xFF00_0000;

const HALF: usize = KEY_MATERIAL_LEN / 2;
const CIPHER_KEY_SLOT: usize = 64;

/// What went wrong sealing or opening a data packet, or setting a data channel up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Shorter than a header and a tag.
    #[error("data packet truncated: {len} bytes, a P_DATA_V2 AEAD packet has at least {OVERHEAD} (header {HEADER_LEN} + tag {TAG_LEN})")]
    Truncated {
        /// The packet's length.
        len: usize,
    },
    /// The first byte's opcode is not `P_DATA_V2`.
    #[error("not a P_DATA_V2 packet: opcode {opcode} (the data channel handles opcode {OPCODE_DATA_V2} only)")]
    WrongOpcode {
        /// The opcode found (first byte >> 3).
        opcode: u8,
    },
    /// The packet was sealed under another key id than this key's.
    #[error("data packet for key id {got}, but this data channel key has key id {expected}")]
    WrongKeyId {
        /// This key's id.
        expected: u8,
        /// The packet's key id.
        got: u8,
    },
    /// The packet carries another peer id than this session's.
    #[error("data packet carries peer id {got}, but this session's peer id is {expected}")]
    WrongPeerId {
        /// This session's peer id.
        expected: u32,
        /// The packet's peer id.
        got: u32,
    },
    /// The tag did not verify: the packet was forged, corrupted, or sealed with another key.
    #[error("data packet authentication failed (packet id {packet_id}): tag mismatch; forged, corrupted, or sealed with another key")]
    Authentication {
        /// The (unauthenticated) packet id the packet claimed.
        packet_id: u32,
    },
    /// Packet id 0 never appears on the wire: ids start at 1.
    #[error("data packet has packet id 0, which is invalid (packet ids start at 1)")]
    ZeroPacketId,
    /// This packet id was already received: a duplicate or a replay.
    #[error("replayed data packet: packet id {packet_id} was already received")]
    Replay {
        /// The repeated packet id.
        packet_id: u32,
    },
    /// The packet id is below the replay window, so a duplicate cannot be ruled out.
    #[error("data packet too old: packet id {packet_id} is {window} or more below the highest received ({highest}), outside the replay window of {window}")]
    TooOld {
        /// The packet's id.
        packet_id: u32,
        /// The highest packet id received so far.
        highest: u32,
        /// The replay window size.
        window: u32,
    },
    /// All packet ids of this key were used: no more packets can be sent with it.
    #[error("packet ids of data channel key {key_id} are exhausted: renegotiate (soft reset) to a new key before sending more")]
    PacketIdExhausted {
        /// The exhausted key's id.
        key_id: u8,
    },
    /// The buffer handed to [`Sealer::seal_in_place`] cannot hold headroom and payload.
    #[error("seal buffer too small: {len} bytes, needs {needed} ({OVERHEAD} bytes of headroom + payload)")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        len: usize,
    },
    /// The AEAD refused to seal (the payload is beyond what the cipher can take at once).
    #[error("cannot seal a {len}-byte payload with {cipher}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The cipher's OpenVPN name.
        cipher: &'static str,
    },
    /// Key ids are 3 bits.
    #[error("invalid key id {key_id}: key ids are 0..={MAX_KEY_ID}")]
    InvalidKeyId {
        /// The rejected key id.
        key_id: u8,
    },
    /// Peer ids are 24 bits.
    #[error("invalid peer id {peer_id}: peer ids are 24 bits (0..={MAX_PEER_ID})")]
    InvalidPeerId {
        /// The rejected peer id.
        peer_id: u32,
    },
    /// Replay windows are 1..=65536 packets.
    #[error("invalid replay window {size}: must be 1..={}", ReplayWindow::MAX_SIZE)]
    InvalidReplayWindow {
        /// The rejected size.
        size: u32,
    },
    /// The crypto library rejected the key (cannot happen with key material of the right size).
    #[error("could not set up the {cipher} key")]
    KeySetup {
        /// The cipher's OpenVPN name.
        cipher: &'static str,
    },
}

/// The data channel AEAD ciphers OpenVPN 2.6 negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// `AES-128-GCM`.
    Aes128Gcm,
    /// `AES-256-GCM`.
    Aes256Gcm,
    /// `CHACHA20-POLY1305`.
    ChaCha20Poly1305,
}

impl Cipher {
    /// Every supported cipher, in OpenVPN 2.6's default `data-ciphers` preference order.
    pub const ALL: [Cipher; 3] = [
        Cipher::Aes256Gcm,
        Cipher::Aes128Gcm,
        Cipher::ChaCha20Poly1305,
    ];

    /// The cipher with this OpenVPN name (`AES-256-GCM`, `AES-128-GCM`, `CHACHA20-POLY1305`;
    /// ASCII case is ignored, as OpenVPN does). `None` for anything else, including the
    /// non-AEAD ciphers this data channel does not implement.
    pub fn from_openvpn_name(name: &str) -> Option<Cipher> {
        Cipher::ALL
            .into_iter()
            .find(|c| c.openvpn_name().eq_ignore_ascii_case(name))
    }

    /// The canonical OpenVPN name (as in `data-ciphers`, `IV_CIPHERS` and `PUSH_REPLY`).
    pub const fn openvpn_name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::ChaCha20Poly1305 => "CHACHA20-POLY1305",
        }
    }

    /// Key length in bytes (16 or 32).
    pub const fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::ChaCha20Poly1305 => 32,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.openvpn_name())
    }
}

/// Which end of the tunnel this is: decides which half of the key material seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Seals with the server→client keys, opens with the client→server keys.
    Server,
    /// Seals with the client→server keys, opens with the server→client keys.
    Client,
}

/// The parsed, unauthenticated header of a `P_DATA_V2` packet (for demultiplexing by peer id
/// and key id before choosing a [`DataChannel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataHeader {
    /// Key id (0..=7).
    pub key_id: u8,
    /// Peer id (24 bits).
    pub peer_id: u32,
    /// Packet id.
    pub packet_id: u32,
}

impl DataHeader {
    /// Parses the header of a `P_DATA_V2` AEAD packet: the opcode must be 9 and the packet at
    /// least [`OVERHEAD`] bytes long. Nothing is authenticated yet.
    pub fn parse(packet: &[u8]) -> Result<DataHeader, DataError> {
        let &first = packet.first().ok_or(DataError::Truncated { len: 0 })?;
        let opcode = first >> 3;
        if opcode != OPCODE_DATA_V2 {
            return Err(DataError::WrongOpcode { opcode });
        }
        let Some((header, _)) = packet.split_first_chunk::<HEADER_LEN>() else {
            return Err(DataError::Truncated { len: packet.len() });
        };
        if packet.len() < OVERHEAD {
            return Err(DataError::Truncated { len: packet.len() });
        }
        Ok(DataHeader {
            key_id: first & MAX_KEY_ID,
            peer_id: u32::from_be_bytes([0, header[1], header[2], header[3]]),
            packet_id: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        })
    }
}

fn op_byte(key_id: u8) -> u8 {
    (OPCODE_DATA_V2 << 3) | key_id
}

fn prefix(key_id: u8, peer_id: u32) -> [u8; 4] {
    let [_, a, b, c] = peer_id.to_be_bytes();
    [op_byte(key_id), a, b, c]
}

fn nonce(packet_id: u32, implicit_iv: &[u8; IMPLICIT_IV_LEN]) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[..4].copy_from_slice(&packet_id.to_be_bytes());
    n[4..].copy_from_slice(implicit_iv);
    Nonce::assume_unique_for_key(n)
}

/// One direction's key and implicit IV, taken from a 128-byte half of the key material.
fn direction_key(
    half: &[u8],
    cipher: Cipher,
) -> Result<(LessSafeKey, [u8; IMPLICIT_IV_LEN]), DataError> {
    let key_setup = DataError::KeySetup {
        cipher: cipher.openvpn_name(),
    };
    let key_bytes = half.get(..cipher.key_len()).ok_or(key_setup.clone())?;
    let key = UnboundKey::new(cipher.algorithm(), key_bytes).map_err(|_| key_setup.clone())?;
    let mut iv = [0u8; IMPLICIT_IV_LEN];
    iv.copy_from_slice(
        half.get(CIPHER_KEY_SLOT..CIPHER_KEY_SLOT + IMPLICIT_IV_LEN)
            .ok_or(key_setup)?,
    );
    Ok((LessSafeKey::new(key), iv))
}

fn check_ids(key_id: u8, peer_id: u32) -> Result<(), DataError> {
    if key_id > MAX_KEY_ID {
        return Err(DataError::InvalidKeyId { key_id });
    }
    if peer_id > MAX_PEER_ID {
        return Err(DataError::InvalidPeerId { peer_id });
    }
    Ok(())
}

/// The sending side of one data channel key: numbers and seals packets.
pub struct Sealer {
    key: LessSafeKey,
    implicit_iv: [u8; IMPLICIT_IV_LEN],
    cipher: Cipher,
    key_id: u8,
    /// Opcode/key id byte and peer id, the same for every packet.
    prefix: [u8; 4],
    /// The packet id the next packet gets; `u32::MAX` means exhausted.
    next_packet_id: u32,
}

impl Sealer {
    /// Seals the `payload_len` bytes at `buf[OVERHEAD..OVERHEAD + payload_len]` in place and
    /// writes the header and tag into `buf[..OVERHEAD]`. Returns the packet length,
    /// `OVERHEAD + payload_len`; the packet is `buf[..that]`. Bytes after it are untouched.
    ///
    /// Each call uses the next packet id. Fails with [`DataError::PacketIdExhausted`] once the
    /// ids are used up (renegotiate), and with [`DataError::BufferTooSmall`] if `buf` is
    /// shorter than `OVERHEAD + payload_len` (no packet id is used then). Never allocates.
    pub fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, DataError> {
        let total = OVERHEAD.saturating_add(payload_len);
        if buf.len() < total {
            return Err(DataError::BufferTooSmall {
                needed: total,
                len: buf.len(),
            });
        }
        let packet_id = self.take_packet_id()?;
        let (head, body) = buf[..total].split_at_mut(OVERHEAD);
        let mut aad = [0u8; HEADER_LEN];
        aad[..4].copy_from_slice(&self.prefix);
        aad[4..].copy_from_slice(&packet_id.to_be_bytes());
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(packet_id, &self.implicit_iv), Aad::from(aad), body)
            .map_err(|_| DataError::PayloadTooLarge {
                len: payload_len,
                cipher: self.cipher.openvpn_name(),
            })?;
        head[..HEADER_LEN].copy_from_slice(&aad);
        head[HEADER_LEN..].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Seals `plaintext` and appends the packet to `out`. Returns the packet length. On error
    /// `out` is left as it was. Allocates only when `out` must grow.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<usize, DataError> {
        if self.is_exhausted() {
            return Err(DataError::PacketIdExhausted {
                key_id: self.key_id,
            });
        }
        let start = out.len();
        out.reserve(OVERHEAD + plaintext.len());
        out.resize(start + OVERHEAD, 0);
        out.extend_from_slice(plaintext);
        self.seal_in_place(&mut out[start..], plaintext.len())
            .inspect_err(|_| out.truncate(start))
    }

    /// The packet id the next sealed packet will carry (`u32::MAX` once exhausted).
    pub fn next_packet_id(&self) -> u32 {
        self.next_packet_id
    }

    /// Whether the packet ids are close enough to running out that the session should
    /// renegotiate now (a packet with id [`RENEGOTIATE_AT_PACKET_ID`] or higher was sealed).
    pub fn needs_renegotiation(&self) -> bool {
        self.next_packet_id > RENEGOTIATE_AT_PACKET_ID
    }

    /// Whether no more packets can be sealed with this key.
    pub fn is_exhausted(&self) -> bool {
        self.next_packet_id == u32::MAX
    }

    /// This key's cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// This key's key id.
    pub fn key_id(&self) -> u8 {
        self.key_id
    }

    fn take_packet_id(&mut self) -> Result<u32, DataError> {
        let id = self.next_packet_id;
        if id == u32::MAX {
            return Err(DataError::PacketIdExhausted {
                key_id: self.key_id,
            });
        }
        self.next_packet_id = id + 1;
        Ok(id)
    }

    /// Test hook: jump the packet id counter (to reach exhaustion without 4 billion seals).
    #[cfg(test)]
    fn set_next_packet_id(&mut self, id: u32) {
        self.next_packet_id = id;
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("cipher", &self.cipher)
            .field("key_id", &self.key_id)
            .field("next_packet_id", &self.next_packet_id)
            .finish_non_exhaustive()
    }
}

/// The receiving side of one data channel key: authenticates, decrypts and replay-checks.
pub struct Opener {
    key: LessSafeKey,
    implicit_iv: [u8; IMPLICIT_IV_LEN],
    cipher: Cipher,
    key_id: u8,
    peer_id: u32,
    replay: ReplayWindow,
}

impl Opener {
    /// Opens a `P_DATA_V2` packet in place: checks opcode, key id and peer id, pre-checks the
    /// packet id against the replay window, verifies the tag over header and ciphertext,
    /// decrypts, and only then records the packet id in the replay window. Returns the
    /// plaintext, `packet[OVERHEAD..]`.
    ///
    /// On error the window is unchanged, and the bytes after the header may have been
    /// overwritten. Never panics and never allocates.
    pub fn open_in_place<'a>(&mut self, packet: &'a mut [u8]) -> Result<&'a mut [u8], DataError> {
        let header = DataHeader::parse(packet)?;
        if header.key_id != self.key_id {
            return Err(DataError::WrongKeyId {
                expected: self.key_id,
                got: header.key_id,
            });
        }
        if header.peer_id != self.peer_id {
            return Err(DataError::WrongPeerId {
                expected: self.peer_id,
                got: header.peer_id,
            });
        }
        let packet_id = header.packet_id;
        self.replay.check(packet_id)?;
        let len = packet.len();
        let Some((head, body)) = packet.split_first_chunk_mut::<OVERHEAD>() else {
            return Err(DataError::Truncated { len }); // parse already checked the length
        };
        let mut aad = [0u8; HEADER_LEN];
        aad.copy_from_slice(&head[..HEADER_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&head[HEADER_LEN..]);
        let plaintext = self
            .key
            .open_in_place_separate_tag(
                nonce(packet_id, &self.implicit_iv),
                Aad::from(aad),
                Tag::from(tag),
                body,
                0..,
            )
            .map_err(|_| DataError::Authentication { packet_id })?;
        self.replay.commit(packet_id)?;
        Ok(plaintext)
    }

    /// The highest packet id received (authenticated) so far.
    pub fn highest_packet_id(&self) -> u32 {
        self.replay.highest()
    }

    /// Whether the peer's packet ids are close to running out (a packet with id
    /// [`RENEGOTIATE_AT_PACKET_ID`] or higher was opened): renegotiate soon.
    pub fn needs_renegotiation(&self) -> bool {
        self.replay.highest() >= RENEGOTIATE_AT_PACKET_ID
    }

    /// Replaces the replay window with an empty one of `size` packets (1..=65536; OpenVPN's
    /// `--replay-window`). Meant for setup, before the first packet.
    pub fn set_replay_window(&mut self, size: u32) -> Result<(), DataError> {
        self.replay = ReplayWindow::new(size)?;
        Ok(())
    }

    /// The replay window.
    pub fn replay_window(&self) -> &ReplayWindow {
        &self.replay
    }

    /// This key's cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// This key's key id.
    pub fn key_id(&self) -> u8 {
        self.key_id
    }

    /// The peer id packets must carry.
    pub fn peer_id(&self) -> u32 {
        self.peer_id
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("cipher", &self.cipher)
            .field("key_id", &self.key_id)
            .field("peer_id", &self.peer_id)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

/// Both directions of one data channel key (one key id of one session).
#[derive(Debug)]
pub struct DataChannel {
    sealer: Sealer,
    opener: Opener,
}

impl DataChannel {
    /// Builds both directions from the 256 bytes of key material (TLS-EKM under
    /// [`EKM_LABEL`], or the legacy PRF output: same layout). `key_id` is the key slot
    /// (0..=7) from the control channel, `peer_id` the 24-bit id the server assigned (pushed
    /// as `peer-id`); both ends put the same peer id in their packets. The replay window
    /// starts at the default 64 packets ([`Opener::set_replay_window`] changes it).
    pub fn from_ekm(
        key_material: &[u8; KEY_MATERIAL_LEN],
        cipher: Cipher,
        role: Role,
        key_id: u8,
        peer_id: u32,
    ) -> Result<DataChannel, DataError> {
        check_ids(key_id, peer_id)?;
        let (client_to_server, server_to_client) = key_material.split_at(HALF);
        let (seal_half, open_half) = match role {
            Role::Server => (server_to_client, client_to_server),
            Role::Client => (client_to_server, server_to_client),
        };
        let (seal_key, seal_iv) = direction_key(seal_half, cipher)?;
        let (open_key, open_iv) = direction_key(open_half, cipher)?;
        Ok(DataChannel {
            sealer: Sealer {
                key: seal_key,
                implicit_iv: seal_iv,
                cipher,
                key_id,
                prefix: prefix(key_id, peer_id),
                next_packet_id: 1,
            },
            opener: Opener {
                key: open_key,
                implicit_iv: open_iv,
                cipher,
                key_id,
                peer_id,
                replay: ReplayWindow::default(),
            },
        })
    }

    /// Like [`DataChannel::from_ekm`] with a replay window of `replay_window` packets.
    pub fn with_replay_window(mut self, replay_window: u32) -> Result<DataChannel, DataError> {
        self.opener.set_replay_window(replay_window)?;
        Ok(self)
    }

    /// See [`Sealer::seal_in_place`].
    pub fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, DataError> {
        self.sealer.seal_in_place(buf, payload_len)
    }

    /// See [`Sealer::seal`].
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<usize, DataError> {
        self.sealer.seal(plaintext, out)
    }

    /// See [`Opener::open_in_place`].
    pub fn open_in_place<'a>(&mut self, packet: &'a mut [u8]) -> Result<&'a mut [u8], DataError> {
        self.opener.open_in_place(packet)
    }

    /// Whether this key should be replaced soon: our packet ids or the peer's reached
    /// [`RENEGOTIATE_AT_PACKET_ID`]. Start a soft reset when this turns true.
    pub fn needs_renegotiation(&self) -> bool {
        self.sealer.needs_renegotiation() || self.opener.needs_renegotiation()
    }

    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.sealer.cipher
    }

    /// The key id (0..=7).
    pub fn key_id(&self) -> u8 {
        self.sealer.key_id
    }

    /// The peer id (24 bits).
    pub fn peer_id(&self) -> u32 {
        self.opener.peer_id
    }

    /// The sending side.
    pub fn sealer(&mut self) -> &mut Sealer {
        &mut self.sealer
    }

    /// The receiving side.
    pub fn opener(&mut self) -> &mut Opener {
        &mut self.opener
    }

    /// Splits into the two sides, e.g. to seal and open on different threads.
    pub fn split(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    const KEY_ID: u8 = 2;
    const PEER_ID: u32 = 0x0A_0B0C;

    /// Key material whose every byte differs, so using a wrong offset cannot go unnoticed.
    fn ekm() -> [u8; KEY_MATERIAL_LEN] {
        std::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(3))
    }

    fn pair(cipher: Cipher) -> (DataChannel, DataChannel) {
        let server = DataChannel::from_ekm(&ekm(), cipher, Role::Server, KEY_ID, PEER_ID).unwrap();
        let client = DataChannel::from_ekm(&ekm(), cipher, Role::Client, KEY_ID, PEER_ID).unwrap();
        (server, client)
    }

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn cipher_names() {
        for (name, cipher, key_len) in [
            ("AES-128-GCM", Cipher::Aes128Gcm, 16),
            ("AES-256-GCM", Cipher::Aes256Gcm, 32),
            ("CHACHA20-POLY1305", Cipher::ChaCha20Poly1305, 32),
        ] {
            assert_eq!(Cipher::from_openvpn_name(name), Some(cipher));
            assert_eq!(
                Cipher::from_openvpn_name(&name.to_lowercase()),
                Some(cipher)
            );
            assert_eq!(cipher.openvpn_name(), name);
            assert_eq!(cipher.to_string(), name);
            assert_eq!(cipher.key_len(), key_len);
        }
        for other in [
            "",
            "AES-256-CBC",
            "BF-CBC",
            "AES-256-GCM ",
            "none",
            "CHACHA20",
        ] {
            assert_eq!(Cipher::from_openvpn_name(other), None, "{other:?}");
        }
    }

    #[test]
    fn round_trip_both_directions() {
        for cipher in Cipher::ALL {
            let (mut server, mut client) = pair(cipher);
            for (i, len) in [0usize, 1, 15, 16, 17, 64, 1400, 1500]
                .into_iter()
                .enumerate()
            {
                let expected_id = i as u32 + 1;
                for server_seals in [true, false] {
                    let (from, to) = if server_seals {
                        (&mut server, &mut client)
                    } else {
                        (&mut client, &mut server)
                    };
                    let plain = payload(len, i as u8);
                    let mut packet = Vec::new();
                    assert_eq!(from.seal(&plain, &mut packet).unwrap(), OVERHEAD + len);
                    assert_eq!(packet.len(), OVERHEAD + len);
                    assert_eq!(packet[0], (9 << 3) | KEY_ID);
                    assert_eq!(packet[1..4], [0x0A, 0x0B, 0x0C]);
                    assert_eq!(packet[4..8], expected_id.to_be_bytes());
                    if len > 0 {
                        assert_ne!(packet[OVERHEAD..], plain[..], "{cipher}: not encrypted");
                    }
                    let header = DataHeader::parse(&packet).unwrap();
                    assert_eq!(
                        header,
                        DataHeader {
                            key_id: KEY_ID,
                            peer_id: PEER_ID,
                            packet_id: expected_id
                        }
                    );
                    let opened = to.open_in_place(&mut packet).unwrap();
                    assert_eq!(opened, &plain[..], "{cipher} len {len}");
                    assert_eq!(to.opener().highest_packet_id(), expected_id);
                }
            }
        }
    }

    #[test]
    fn seal_in_place_uses_headroom_and_leaves_the_rest() {
        let (mut server, mut client) = pair(Cipher::Aes256Gcm);
        let plain = payload(100, 9);
        let mut buf = vec![0xEE; OVERHEAD + plain.len() + 50];
        buf[OVERHEAD..OVERHEAD + plain.len()].copy_from_slice(&plain);
        let err = server
            .seal_in_place(&mut buf[..OVERHEAD + 99], 100)
            .unwrap_err();
        assert_eq!(
            err,
            DataError::BufferTooSmall {
                needed: OVERHEAD + 100,
                len: OVERHEAD + 99
            }
        );
        assert_eq!(
            server.sealer().next_packet_id(),
            1,
            "a failed seal used a packet id"
        );
        let len = server.seal_in_place(&mut buf, plain.len()).unwrap();
        assert_eq!(len, OVERHEAD + plain.len());
        assert!(buf[len..].iter().all(|&b| b == 0xEE));
        assert_eq!(client.open_in_place(&mut buf[..len]).unwrap(), &plain[..]);

        // `seal` appends after what is already in the vector.
        let mut out = b"prefix".to_vec();
        let n = server.seal(&plain, &mut out).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(
            client.open_in_place(&mut out[6..6 + n]).unwrap(),
            &plain[..]
        );
    }

    #[test]
    fn each_direction_has_its_own_key() {
        for cipher in Cipher::ALL {
            let (mut server, _) = pair(cipher);
            let (mut server2, _) = pair(cipher);
            let mut packet = Vec::new();
            server.seal(b"hello", &mut packet).unwrap();
            // A server cannot open what a server sealed: the halves differ.
            assert_eq!(
                server2.open_in_place(&mut packet),
                Err(DataError::Authentication { packet_id: 1 })
            );
            // Nor can an end built from other key material.
            let mut other = ekm();
            other[5] ^= 1; // inside the client→server cipher key, whatever its length
            let mut client =
                DataChannel::from_ekm(&other, cipher, Role::Client, KEY_ID, PEER_ID).unwrap();
            let mut packet = Vec::new();
            client.seal(b"hello", &mut packet).unwrap();
            assert!(matches!(
                server.open_in_place(&mut packet),
                Err(DataError::Authentication { .. })
            ));
        }
    }

    /// The RustCrypto AEADs, given key, nonce and AAD built straight from the wire format
    /// description (not from the code under test).
    mod rustcrypto {
        use super::super::Cipher;
        use aes_gcm::aead::{generic_array::GenericArray, AeadInPlace, KeyInit};
        use aes_gcm::{Aes128Gcm, Aes256Gcm};
        use chacha20poly1305::ChaCha20Poly1305;

        fn enc<C: AeadInPlace + KeyInit>(
            key: &[u8],
            nonce: &[u8; 12],
            aad: &[u8],
            buf: &mut [u8],
        ) -> [u8; 16] {
            let c = C::new_from_slice(key).unwrap();
            let tag = c
                .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf)
                .unwrap();
            tag.as_slice().try_into().unwrap()
        }

        fn dec<C: AeadInPlace + KeyInit>(
            key: &[u8],
            nonce: &[u8; 12],
            aad: &[u8],
            buf: &mut [u8],
            tag: &[u8],
        ) -> bool {
            let c = C::new_from_slice(key).unwrap();
            c.decrypt_in_place_detached(
                GenericArray::from_slice(nonce),
                aad,
                buf,
                GenericArray::from_slice(tag),
            )
            .is_ok()
        }

        pub fn encrypt(
            cipher: Cipher,
            key: &[u8],
            nonce: &[u8; 12],
            aad: &[u8],
            buf: &mut [u8],
        ) -> [u8; 16] {
            match cipher {
                Cipher::Aes128Gcm => enc::<Aes128Gcm>(key, nonce, aad, buf),
                Cipher::Aes256Gcm => enc::<Aes256Gcm>(key, nonce, aad, buf),
                Cipher::ChaCha20Poly1305 => enc::<ChaCha20Poly1305>(key, nonce, aad, buf),
            }
        }

        pub fn decrypt(
            cipher: Cipher,
            key: &[u8],
            nonce: &[u8; 12],
            aad: &[u8],
            buf: &mut [u8],
            tag: &[u8],
        ) -> bool {
            match cipher {
                Cipher::Aes128Gcm => dec::<Aes128Gcm>(key, nonce, aad, buf, tag),
                Cipher::Aes256Gcm => dec::<Aes256Gcm>(key, nonce, aad, buf, tag),
                Cipher::ChaCha20Poly1305 => dec::<ChaCha20Poly1305>(key, nonce, aad, buf, tag),
            }
        }
    }

    /// (key, implicit IV) of one direction, by the literal offsets of the key material layout.
    fn reference_keys(cipher: Cipher, client_to_server: bool) -> (Vec<u8>, [u8; 8]) {
        let m = ekm();
        let (cipher_at, hmac_at) = if client_to_server {
            (0, 64)
        } else {
            (128, 192)
        };
        let key = m[cipher_at..cipher_at + cipher.key_len()].to_vec();
        let iv = m[hmac_at..hmac_at + 8].try_into().unwrap();
        (key, iv)
    }

    fn reference_nonce(packet_id: [u8; 4], iv: [u8; 8]) -> [u8; 12] {
        let mut n = [0; 12];
        n[..4].copy_from_slice(&packet_id);
        n[4..].copy_from_slice(&iv);
        n
    }

    #[test]
    fn cross_check_with_rustcrypto() {
        for cipher in Cipher::ALL {
            for role in [Role::Server, Role::Client] {
                let mut ours =
                    DataChannel::from_ekm(&ekm(), cipher, role, KEY_ID, PEER_ID).unwrap();
                let (seal_c2s, open_c2s) = (role == Role::Client, role == Role::Server);

                // Ours seals, RustCrypto opens.
                let (key, iv) = reference_keys(cipher, seal_c2s);
                for len in [0usize, 1, 33, 1400] {
                    let plain = payload(len, 0x5A);
                    let mut packet = Vec::new();
                    ours.seal(&plain, &mut packet).unwrap();
                    let aad = packet[..8].to_vec();
                    let nonce = reference_nonce(packet[4..8].try_into().unwrap(), iv);
                    let tag = packet[8..24].to_vec();
                    let mut body = packet[24..].to_vec();
                    assert!(
                        rustcrypto::decrypt(cipher, &key, &nonce, &aad, &mut body, &tag),
                        "{cipher} {role:?}: RustCrypto rejects our packet"
                    );
                    assert_eq!(body, plain);
                }

                // RustCrypto seals (including out-of-order ids), ours opens.
                let (key, iv) = reference_keys(cipher, open_c2s);
                for (packet_id, len) in [(1u32, 0usize), (7, 1), (3, 100), (0x0102_0304, 1400)] {
                    let plain = payload(len, 0xA5);
                    let mut packet = vec![(9 << 3) | KEY_ID, 0x0A, 0x0B, 0x0C];
                    packet.extend_from_slice(&packet_id.to_be_bytes());
                    let nonce = reference_nonce(packet_id.to_be_bytes(), iv);
                    let mut body = plain.clone();
                    let tag = rustcrypto::encrypt(cipher, &key, &nonce, &packet[..8], &mut body);
                    packet.extend_from_slice(&tag);
                    packet.extend_from_slice(&body);
                    let opened = ours.open_in_place(&mut packet);
                    assert_eq!(
                        opened.as_deref(),
                        Ok(&plain[..]),
                        "{cipher} {role:?} id {packet_id}"
                    );
                }
            }
        }
    }

    #[test]
    fn tampering_any_byte_fails() {
        for cipher in Cipher::ALL {
            let (mut server, mut client) = pair(cipher);
            let mut packet = Vec::new();
            client.seal(&payload(8, 1), &mut packet).unwrap();
            for i in 0..packet.len() {
                for mask in [0x01u8, 0x80, 0xFF] {
                    let mut bad = packet.clone();
                    bad[i] ^= mask;
                    let err = server.open_in_place(&mut bad).unwrap_err();
                    match i {
                        0 if mask == 0x01 => {
                            assert_eq!(
                                err,
                                DataError::WrongKeyId {
                                    expected: KEY_ID,
                                    got: KEY_ID ^ 1
                                }
                            )
                        }
                        0 => assert!(matches!(err, DataError::WrongOpcode { .. }), "{err}"),
                        1..=3 => assert!(matches!(err, DataError::WrongPeerId { .. }), "{err}"),
                        7 if mask == 0x01 => assert_eq!(err, DataError::ZeroPacketId),
                        _ => assert!(
                            matches!(err, DataError::Authentication { .. }),
                            "byte {i}: {err}"
                        ),
                    }
                    // The header bytes are authenticated too, not only checked: an opener that
                    // expects the tampered key id / peer id still rejects the packet.
                    if i < 4 {
                        if let Ok(h) = DataHeader::parse(&bad) {
                            let mut other = DataChannel::from_ekm(
                                &ekm(),
                                cipher,
                                Role::Server,
                                h.key_id,
                                h.peer_id,
                            )
                            .unwrap();
                            assert_eq!(
                                other.open_in_place(&mut bad),
                                Err(DataError::Authentication { packet_id: 1 })
                            );
                        }
                    }
                }
            }
            // None of that moved the replay window: the genuine packet still opens.
            assert_eq!(server.opener().highest_packet_id(), 0);
            assert_eq!(
                server.open_in_place(&mut packet).unwrap(),
                &payload(8, 1)[..]
            );
        }
    }

    #[test]
    fn truncated_packets_every_prefix() {
        for cipher in Cipher::ALL {
            let (mut server, mut client) = pair(cipher);
            let mut packet = Vec::new();
            client.seal(&payload(40, 3), &mut packet).unwrap();
            for len in 0..packet.len() {
                let mut prefix = packet[..len].to_vec();
                let err = server.open_in_place(&mut prefix).unwrap_err();
                if len < OVERHEAD {
                    assert_eq!(err, DataError::Truncated { len });
                } else {
                    assert_eq!(err, DataError::Authentication { packet_id: 1 });
                }
                let msg = err.to_string();
                assert!(!msg.is_empty());
            }
            assert!(server.open_in_place(&mut packet).is_ok());
        }
    }

    #[test]
    fn foreign_packets_are_named() {
        let (mut server, mut client) = pair(Cipher::Aes128Gcm);
        // A control packet (P_CONTROL_V1 = 4) and a P_DATA_V1 (6).
        let mut control = vec![4 << 3, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 1];
        assert_eq!(
            server.open_in_place(&mut control),
            Err(DataError::WrongOpcode { opcode: 4 })
        );
        let mut v1 = vec![(6 << 3) | KEY_ID; 40];
        assert_eq!(
            server.open_in_place(&mut v1),
            Err(DataError::WrongOpcode { opcode: 6 })
        );
        // Another key slot and another peer.
        let mut packet = Vec::new();
        client.seal(b"x", &mut packet).unwrap();
        let mut other_key =
            DataChannel::from_ekm(&ekm(), Cipher::Aes128Gcm, Role::Server, 0, PEER_ID).unwrap();
        assert_eq!(
            other_key.open_in_place(&mut packet.clone()),
            Err(DataError::WrongKeyId {
                expected: 0,
                got: KEY_ID
            })
        );
        let mut other_peer =
            DataChannel::from_ekm(&ekm(), Cipher::Aes128Gcm, Role::Server, KEY_ID, 7).unwrap();
        assert_eq!(
            other_peer.open_in_place(&mut packet.clone()),
            Err(DataError::WrongPeerId {
                expected: 7,
                got: PEER_ID
            })
        );
        // A packet claiming packet id 0.
        let mut zero = packet.clone();
        zero[4..8].fill(0);
        assert_eq!(
            server.open_in_place(&mut zero),
            Err(DataError::ZeroPacketId)
        );
        assert_eq!(server.open_in_place(&mut packet).unwrap(), b"x");
    }

    #[test]
    fn setup_validates_ids_and_window() {
        let m = ekm();
        assert_eq!(
            DataChannel::from_ekm(&m, Cipher::Aes256Gcm, Role::Server, 8, 0).unwrap_err(),
            DataError::InvalidKeyId { key_id: 8 }
        );
        assert_eq!(
            DataChannel::from_ekm(&m, Cipher::Aes256Gcm, Role::Server, 0, 0x0100_0000).unwrap_err(),
            DataError::InvalidPeerId {
                peer_id: 0x0100_0000
            }
        );
        let ok =
            DataChannel::from_ekm(&m, Cipher::Aes256Gcm, Role::Server, 7, MAX_PEER_ID).unwrap();
        assert_eq!(
            (ok.key_id(), ok.peer_id(), ok.cipher()),
            (7, MAX_PEER_ID, Cipher::Aes256Gcm)
        );
        assert!(matches!(
            ok.with_replay_window(0),
            Err(DataError::InvalidReplayWindow { size: 0 })
        ));
        // Debug output names no key bytes.
        let dbg = format!(
            "{:?}",
            DataChannel::from_ekm(&m, Cipher::Aes256Gcm, Role::Server, 0, 0).unwrap()
        );
        assert!(dbg.contains("AES") || dbg.contains("Aes256Gcm"), "{dbg}");
    }

    /// Seals `n` packets (ids 1..=n) from `from`, returning them.
    fn seal_many(from: &mut DataChannel, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut p = Vec::new();
                from.seal(&payload(20, i as u8), &mut p).unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn replay_protection() {
        let (mut server, mut client) = pair(Cipher::ChaCha20Poly1305);
        let packets = seal_many(&mut client, 200);
        let open = |server: &mut DataChannel, id: u32| {
            let mut p = packets[id as usize - 1].clone();
            server.open_in_place(&mut p).map(|pt| pt.to_vec())
        };
        // In order, then a duplicate.
        for id in 1..=5 {
            open(&mut server, id).unwrap();
        }
        assert_eq!(
            open(&mut server, 5),
            Err(DataError::Replay { packet_id: 5 })
        );
        assert_eq!(
            open(&mut server, 2),
            Err(DataError::Replay { packet_id: 2 })
        );
        // Out of order inside the window: 10, then 8, 6, 9, 7.
        for id in [10, 8, 6, 9, 7] {
            assert_eq!(open(&mut server, id).unwrap(), payload(20, id as u8 - 1));
        }
        assert_eq!(
            open(&mut server, 8),
            Err(DataError::Replay { packet_id: 8 })
        );
        // Jump to 100: 37..=99 still acceptable once (window 64), 36 too old.
        open(&mut server, 100).unwrap();
        assert_eq!(
            open(&mut server, 36),
            Err(DataError::TooOld {
                packet_id: 36,
                highest: 100,
                window: 64
            })
        );
        open(&mut server, 37).unwrap();
        open(&mut server, 99).unwrap();
        assert_eq!(
            open(&mut server, 37),
            Err(DataError::Replay { packet_id: 37 })
        );

        // A forged packet with a high id does not move the window...
        let mut forged = packets[199].clone();
        forged[30] ^= 0x40;
        assert_eq!(
            server.open_in_place(&mut forged),
            Err(DataError::Authentication { packet_id: 200 })
        );
        assert_eq!(server.opener().highest_packet_id(), 100);
        open(&mut server, 40).unwrap(); // would be too old had 200 been recorded
                                        // ...nor marks its id as seen: the genuine one still opens.
        let mut forged = packets[149].clone();
        forged[12] ^= 1;
        assert!(server.open_in_place(&mut forged).is_err());
        open(&mut server, 150).unwrap();
        assert_eq!(
            open(&mut server, 150),
            Err(DataError::Replay { packet_id: 150 })
        );
    }

    #[test]
    fn larger_replay_window() {
        let (server, mut client) = pair(Cipher::Aes128Gcm);
        let mut server = server.with_replay_window(1000).unwrap();
        let packets = seal_many(&mut client, 1200);
        let mut p = packets[1199].clone();
        server.open_in_place(&mut p).unwrap();
        let mut p = packets[200].clone(); // id 201: 999 below 1200, inside
        server.open_in_place(&mut p).unwrap();
        let mut p = packets[199].clone(); // id 200: 1000 below, outside
        assert!(matches!(
            server.open_in_place(&mut p),
            Err(DataError::TooOld { .. })
        ));
    }

    #[test]
    fn packet_id_exhaustion() {
        for cipher in Cipher::ALL {
            let (mut server, mut client) = pair(cipher);
            assert!(!server.needs_renegotiation());
            server
                .sealer()
                .set_next_packet_id(RENEGOTIATE_AT_PACKET_ID - 1);
            let mut p = Vec::new();
            server.seal(b"a", &mut p).unwrap();
            client.open_in_place(&mut p).unwrap();
            assert!(!server.needs_renegotiation());
            assert!(!client.needs_renegotiation());
            let mut p = Vec::new();
            server.seal(b"a", &mut p).unwrap();
            assert!(server.needs_renegotiation(), "past the threshold");
            assert!(!client.needs_renegotiation());
            client.open_in_place(&mut p).unwrap();
            assert!(
                client.needs_renegotiation(),
                "the peer's ids are past the threshold too"
            );

            server.sealer().set_next_packet_id(u32::MAX - 2);
            for id in [u32::MAX - 2, u32::MAX - 1] {
                let mut p = Vec::new();
                server.seal(b"b", &mut p).unwrap();
                assert_eq!(p[4..8], id.to_be_bytes());
                assert_eq!(client.open_in_place(&mut p).unwrap(), b"b");
            }
            assert!(server.sealer().is_exhausted());
            for _ in 0..3 {
                let mut out = b"keep".to_vec();
                let err = server.seal(b"c", &mut out).unwrap_err();
                assert_eq!(err, DataError::PacketIdExhausted { key_id: KEY_ID });
                assert!(err.to_string().contains("renegotiate"), "{err}");
                assert_eq!(out, b"keep", "a refused seal left bytes behind");
                let mut buf = [0u8; OVERHEAD + 1];
                assert_eq!(
                    server.seal_in_place(&mut buf, 1),
                    Err(DataError::PacketIdExhausted { key_id: KEY_ID })
                );
            }
            // The other direction is unaffected.
            let mut p = Vec::new();
            client.seal(b"d", &mut p).unwrap();
            assert_eq!(server.open_in_place(&mut p).unwrap(), b"d");
        }
    }

    #[test]
    fn split_halves_work_independently() {
        let (server, client) = pair(Cipher::Aes256Gcm);
        let (mut s_seal, mut s_open) = server.split();
        let (mut c_seal, mut c_open) = client.split();
        let mut p = Vec::new();
        s_seal.seal(b"down", &mut p).unwrap();
        assert_eq!(c_open.open_in_place(&mut p).unwrap(), b"down");
        let mut p = Vec::new();
        c_seal.seal(b"up", &mut p).unwrap();
        assert_eq!(s_open.open_in_place(&mut p).unwrap(), b"up");
    }

    fn cipher_strategy() -> impl Strategy<Value = Cipher> {
        prop::sample::select(Cipher::ALL.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn prop_round_trip(cipher in cipher_strategy(),
                           payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1600), 1..8)) {
            let (mut server, mut client) = pair(cipher);
            let mut batch = Vec::new();
            let mut lens = Vec::new();
            for p in &payloads {
                lens.push(server.seal(p, &mut batch).unwrap());
            }
            let mut rest = &mut batch[..];
            for (p, len) in payloads.iter().zip(lens) {
                let (packet, tail) = rest.split_at_mut(len);
                prop_assert_eq!(&*client.open_in_place(packet).unwrap(), &p[..]);
                rest = tail;
            }
        }

        /// Packets delivered in any order that keeps each one within the window of the highest
        /// seen all open exactly once.
        #[test]
        fn prop_reorder_within_window(cipher in cipher_strategy(),
                                      window in prop_oneof![Just(64u32), Just(100), Just(1024)],
                                      jitter in prop::collection::vec(any::<u32>(), 1..400)) {
            let (server, mut client) = pair(cipher);
            let mut server = server.with_replay_window(window).unwrap();
            let packets = seal_many(&mut client, jitter.len());
            // Delivery order: sort by id + offset with offset < window. Then when an id is
            // delivered, any id delivered before it is at most window - 1 above it.
            let mut order: Vec<usize> = (0..packets.len()).collect();
            order.sort_by_key(|&i| (i as u64 + u64::from(jitter[i] % window), i));
            for &i in &order {
                let mut p = packets[i].clone();
                let opened = server.open_in_place(&mut p);
                prop_assert_eq!(opened.map(|pt| pt.to_vec()), Ok(payload(20, i as u8)), "packet id {}", i + 1);
            }
            for p in &packets {
                let err = server.open_in_place(&mut p.clone()).unwrap_err();
                let is_replay = matches!(err, DataError::Replay { .. } | DataError::TooOld { .. });
                prop_assert!(is_replay, "{}", err);
            }
        }

        #[test]
        fn prop_garbage_never_panics(cipher in cipher_strategy(), mut junk in prop::collection::vec(any::<u8>(), 0..80), as_data in any::<bool>()) {
            let (mut server, _) = pair(cipher);
            if as_data && !junk.is_empty() {
                junk[0] = (9 << 3) | KEY_ID;
                if junk.len() >= 4 {
                    junk[1..4].copy_from_slice(&[0x0A, 0x0B, 0x0C]);
                }
            }
            prop_assert!(server.open_in_place(&mut junk).is_err());
        }
    }

    /// Not a test: single-core seal / seal+open speed for 1400-byte packets. Run with
    /// `cargo test --release -p gateway --lib datachannel -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        const LEN: usize = 1400;
        const PERIOD: Duration = Duration::from_secs(1);
        let mbps = |packets: u64, t: Duration| packets as f64 * LEN as f64 / t.as_secs_f64() / 1e6;
        for cipher in Cipher::ALL {
            let (mut server, mut client) = pair(cipher);
            let mut buf = vec![0x42u8; OVERHEAD + LEN];

            let (mut n, start) = (0u64, Instant::now());
            while start.elapsed() < PERIOD {
                for _ in 0..256 {
                    server.seal_in_place(&mut buf, LEN).unwrap();
                }
                n += 256;
            }
            let seal = mbps(n, start.elapsed());

            let (mut n, start) = (0u64, Instant::now());
            while start.elapsed() < PERIOD {
                for _ in 0..256 {
                    let len = server.seal_in_place(&mut buf, LEN).unwrap();
                    client.open_in_place(&mut buf[..len]).unwrap();
                }
                n += 256;
            }
            let both = mbps(n, start.elapsed());
            let open = 1.0 / (1.0 / both - 1.0 / seal);
            println!(
                "{:<18} seal {seal:7.0} MB/s   open {open:7.0} MB/s (derived)   seal+open {both:7.0} MB/s  ({LEN}-byte packets, one core)",
                cipher.openvpn_name()
            );
        }
    }
}
