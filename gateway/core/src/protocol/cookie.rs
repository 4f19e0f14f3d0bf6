//! The stateless answer to a client's first reset — the handshake-flood defence of OpenVPN 2.6
//! servers. The server's session id is an HMAC over the client's session id, its address and a
//! time slot; the server keeps nothing until the client comes back acknowledging that id, so a
//! flood of resets (from spoofed addresses) costs no memory.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ring::hmac;

use super::packet::{AckBlock, ControlOpcode, ControlPacket, KeyId, SessionId};

/// How long a cookie stays valid: it is accepted in its own slot and the next one.
pub const SLOT: Duration = Duration::from_secs(30);

/// Makes and checks cookies. One per listener; the key is random per process.
pub struct CookieJar {
    key: hmac::Key,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieJar { .. }")
    }
}

impl CookieJar {
    /// A jar with a fresh random key.
    pub fn new() -> Result<Self, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        Ok(CookieJar {
            key: hmac::Key::generate(hmac::HMAC_SHA256, &rng)?,
        })
    }

    /// A jar with a given key (tests).
    pub fn with_key(key: &[u8]) -> Self {
        CookieJar {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    fn cookie(&self, client: SessionId, peer: SocketAddr, slot: u64) -> SessionId {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&client.0);
        match peer.ip() {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.update(&peer.port().to_be_bytes());
        ctx.update(&slot.to_be_bytes());
        let tag = ctx.sign();
        let mut id = [0u8; 8];
        id.copy_from_slice(&tag.as_ref()[..8]);
        SessionId(id)
    }

    fn slot(now_unix: Duration) -> u64 {
        now_unix.as_secs() / SLOT.as_secs()
    }

    /// The server session id for a client's reset at `now_unix` (time since the Unix epoch).
    pub fn session_id(&self, client: SessionId, peer: SocketAddr, now_unix: Duration) -> SessionId {
        self.cookie(client, peer, Self::slot(now_unix))
    }

    /// The server's reset answering a client's `P_CONTROL_HARD_RESET_CLIENT_V2`: our cookie as
    /// session id, acknowledging the client's packet 0, our own packet 0.
    pub fn answer(
        &self,
        reset: &ControlPacket,
        peer: SocketAddr,
        now_unix: Duration,
    ) -> Option<ControlPacket> {
        if reset.opcode != ControlOpcode::HardResetClientV2 || reset.packet_id != 0 {
            return None;
        }
        let ours = self.session_id(reset.session_id, peer, now_unix);
        Some(ControlPacket {
            opcode: ControlOpcode::HardResetServerV2,
            key_id: KeyId::default(),
            session_id: ours,
            acks: AckBlock::new(vec![0], reset.session_id).ok(),
            packet_id: 0,
            payload: Vec::new(),
        })
    }

    /// True when `claimed` is the cookie we would have given `client` at `peer` in this slot or
    /// the previous one.
    pub fn verify(
        &self,
        client: SessionId,
        peer: SocketAddr,
        claimed: SessionId,
        now_unix: Duration,
    ) -> bool {
        let slot = Self::slot(now_unix);
        [slot, slot.saturating_sub(1)].iter().any(|s| {
            // Compare all 8 bytes without an early exit.
            let ours = self.cookie(client, peer, *s).0;
            ours.iter()
                .zip(claimed.0.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(sid: [u8; 8]) -> ControlPacket {
        ControlPacket {
            opcode: ControlOpcode::HardResetClientV2,
            key_id: KeyId::default(),
            session_id: SessionId(sid),
            acks: None,
            packet_id: 0,
            payload: Vec::new(),
        }
    }

    #[test]
    fn answer_acknowledges_the_reset_and_verifies_later() {
        let jar = CookieJar::with_key(b"k");
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let t = Duration::from_secs(1_000_000);
        let ans = jar.answer(&reset([1; 8]), peer, t).unwrap();
        assert_eq!(ans.opcode, ControlOpcode::HardResetServerV2);
        let acks = ans.acks.clone().unwrap();
        assert_eq!(acks.ids(), &[0]);
        assert_eq!(acks.remote_session_id(), SessionId([1; 8]));
        assert!(jar.verify(SessionId([1; 8]), peer, ans.session_id, t));
        assert!(
            jar.verify(SessionId([1; 8]), peer, ans.session_id, t + SLOT),
            "valid in the next slot"
        );
        assert!(
            !jar.verify(SessionId([1; 8]), peer, ans.session_id, t + SLOT * 2),
            "expired"
        );
        let other: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        assert!(
            !jar.verify(SessionId([1; 8]), other, ans.session_id, t),
            "bound to the address"
        );
        assert!(
            !jar.verify(SessionId([2; 8]), peer, ans.session_id, t),
            "bound to the client session"
        );
        assert!(!CookieJar::with_key(b"other").verify(SessionId([1; 8]), peer, ans.session_id, t));
    }

    #[test]
    fn only_first_client_resets_get_an_answer() {
        let jar = CookieJar::with_key(b"k");
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mut p = reset([1; 8]);
        p.packet_id = 3;
        assert!(jar.answer(&p, peer, Duration::ZERO).is_none());
        p.packet_id = 0;
        p.opcode = ControlOpcode::ControlV1;
        assert!(jar.answer(&p, peer, Duration::ZERO).is_none());
    }
}
