//! OpenVPN's legacy data-channel key derivation, for clients without TLS-EKM: the TLS 1.0 PRF
//! (P_MD5 xor P_SHA1) over the client's pre-master secret, both sides' random values and both
//! session ids. The output has the same 256-byte layout as the TLS-EKM export.

use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;

use super::{packet::SessionId, session::EKM_LEN};

/// P_hash from RFC 2246 section 5, XORed into `out`.
fn p_hash_xor<M: Mac + hmac::digest::KeyInit + Clone>(secret: &[u8], seed: &[u8], out: &mut [u8]) {
    let Ok(base) = <M as hmac::digest::KeyInit>::new_from_slice(secret) else {
        return;
    };
    // A(1) = HMAC(secret, seed)
    let mut a = {
        let mut m = base.clone();
        m.update(seed);
        m.finalize().into_bytes().to_vec()
    };
    let mut pos = 0;
    while pos < out.len() {
        let mut m = base.clone();
        m.update(&a);
        m.update(seed);
        let block = m.finalize().into_bytes();
        for (o, b) in out[pos..].iter_mut().zip(block.iter()) {
            *o ^= b;
        }
        pos += block.len();
        let mut m = base.clone();
        m.update(&a);
        a = m.finalize().into_bytes().to_vec();
    }
}

/// The TLS 1.0 PRF: `P_MD5(S1, label + seed) XOR P_SHA1(S2, label + seed)`, S1 and S2 the
/// halves of the secret (overlapping by one byte when its length is odd).
pub fn tls1_prf(secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    let half = secret.len().div_ceil(2);
    let s1 = &secret[..half];
    let s2 = &secret[secret.len() - half..];
    let mut full_seed = Vec::with_capacity(label.len() + seed.len());
    full_seed.extend_from_slice(label);
    full_seed.extend_from_slice(seed);
    out.fill(0);
    p_hash_xor::<Hmac<Md5>>(s1, &full_seed, out);
    p_hash_xor::<Hmac<Sha1>>(s2, &full_seed, out);
}

/// The key-method 2 random material of both sides.
pub struct KeySources<'a> {
    pub pre_master: &'a [u8; 48],
    pub client_random1: &'a [u8; 32],
    pub client_random2: &'a [u8; 32],
    pub server_random1: &'a [u8; 32],
    pub server_random2: &'a [u8; 32],
    pub client_session: SessionId,
    pub server_session: SessionId,
}

/// Data-channel key material by OpenVPN's TLS-PRF method: a master secret from the
/// pre-master and the first randoms, then the key expansion from the second randoms and both
/// session ids.
pub fn openvpn_key_material(src: &KeySources<'_>) -> [u8; EKM_LEN] {
    let mut master = [0u8; 48];
    let mut seed = Vec::with_capacity(80);
    seed.extend_from_slice(src.client_random1);
    seed.extend_from_slice(src.server_random1);
    tls1_prf(src.pre_master, b"OpenVPN master secret", &seed, &mut master);
    seed.clear();
    seed.extend_from_slice(src.client_random2);
    seed.extend_from_slice(src.server_random2);
    seed.extend_from_slice(&src.client_session.0);
    seed.extend_from_slice(&src.server_session.0);
    let mut out = [0u8; EKM_LEN];
    tls1_prf(&master, b"OpenVPN key expansion", &seed, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS 1.0 PRF test vector circulated with the TLS 1.0/1.1 PRF implementations
    /// (secret 48 x 0xab, label "PRF Testvector", seed 64 x 0xcd): the first 16 bytes.
    #[test]
    fn tls1_prf_matches_the_published_vector() {
        let mut out = [0u8; 104];
        tls1_prf(&[0xab; 48], b"PRF Testvector", &[0xcd; 64], &mut out);
        assert_eq!(
            &out[..16],
            &[
                0xd3, 0xd4, 0xd1, 0xe3, 0x49, 0xb5, 0xd5, 0x15, 0x04, 0x46, 0x66, 0xd5, 0x1d, 0xe3,
                0x2b, 0xab
            ]
        );
    }

    #[test]
    fn key_material_depends_on_every_input() {
        let (pm, r) = ([1u8; 48], [2u8; 32]);
        let base = KeySources {
            pre_master: &pm,
            client_random1: &r,
            client_random2: &r,
            server_random1: &r,
            server_random2: &r,
            client_session: SessionId([3; 8]),
            server_session: SessionId([4; 8]),
        };
        let k = openvpn_key_material(&base);
        let other_sid = KeySources {
            server_session: SessionId([5; 8]),
            ..base
        };
        assert_ne!(k, openvpn_key_material(&other_sid));
        let r2 = [9u8; 32];
        let other_random = KeySources {
            server_random2: &r2,
            ..other_sid
        };
        assert_ne!(
            openvpn_key_material(&other_random),
            openvpn_key_material(&KeySources {
                server_random2: &r,
                ..other_random
            })
        );
    }
}
