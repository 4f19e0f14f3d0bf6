//! Client certificates issued by the gateway itself, and the CRL that revokes them (sans-IO).
//!
//! When an endpoint holds its client CA's private key, the self-service portal gives each user
//! a short-lived client certificate inside the profile ([`issue_client_certificate`]); when the
//! administrator removes a user's access, the store revokes the user's certificates and signs a
//! new certificate revocation list with the same key ([`build_crl`]).
//!
//! The CA certificate may be a bundle (an endpoint's client CA chain): the certificate whose
//! public key is the given key's signs. A key that matches none of them is refused
//! ([`IssuerError::KeyMismatch`]). Keys are read as PKCS#8, PKCS#1 (RSA) or SEC1 (P-256 / P-384).
//!
//! Serial numbers are written `aa:bb:…` (lowercase hex, the bytes of the DER integer), the
//! format of the TLS layer's client identity (`protocol::tls::client_identity`) and of the CRL
//! import's revoked serials.

use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::time::Duration;
use time::OffsetDateTime;

use crate::model::Timestamp;

/// Longest common name written into a certificate (X.520's upper bound).
pub const MAX_COMMON_NAME_CHARS: usize = 64;

/// How far before `now` issued certificates become valid (clock skew between the gateway and
/// other verifiers).
pub const NOT_BEFORE_SLACK: Duration = Duration::from_secs(5 * 60);

/// A client certificate the gateway issued, with its fresh private key.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key (ECDSA P-256), PKCS#8 PEM. Never stored by the gateway.
    pub key_pem: String,
    /// The serial, `aa:bb:…` lowercase hex.
    pub serial_hex: String,
    /// The common name written (the user name, sanitised).
    pub common_name: String,
    /// End of validity.
    pub not_after: Timestamp,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("serial_hex", &self.serial_hex)
            .field("common_name", &self.common_name)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Why a certificate or CRL could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// The CA certificate does not parse.
    #[error("client CA certificate: {0}")]
    CaCertificate(String),
    /// The CA key does not parse or is of an unusable type.
    #[error("client CA private key: {0}")]
    CaKey(String),
    /// The key belongs to none of the CA certificates.
    #[error(
        "the client CA private key does not match the client CA certificate (its public key is \
         not the certificate's)"
    )]
    KeyMismatch,
    /// The user name leaves no printable character for the common name.
    #[error("the user name {0:?} has no printable character for a certificate's common name")]
    CommonName(String),
    /// A revoked serial is not `aa:bb:…` hex.
    #[error("serial {0:?} is not aa:bb:… hex")]
    Serial(String),
    /// Signing failed (a CA certificate whose key usage forbids it, a time out of range, …).
    #[error("signing: {0}")]
    Sign(String),
}

/// The CA certificate (of a bundle) that the key belongs to, ready to sign.
struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    /// The DER of the CA certificate's subject: an issued certificate's issuer, a CRL's issuer.
    subject_raw: Vec<u8>,
    /// The CA certificate's end of validity (issued certificates do not outlive it).
    not_after: i64,
}

impl CaSigner {
    fn load(ca_cert_pem: &str, ca_key_pem: &str) -> Result<CaSigner, IssuerError> {
        let key = key_pair(ca_key_pem)?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| IssuerError::CaCertificate(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(IssuerError::CaCertificate("no certificate".into()));
        }
        for der in certs {
            let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| IssuerError::CaCertificate(format!("does not parse: {e}")))?;
            if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                continue;
            }
            let subject_raw = x509.subject().as_raw().to_vec();
            let not_after = x509.validity().not_after.timestamp();
            let issuer = Issuer::from_ca_cert_der(&der, key)
                .map_err(|e| IssuerError::CaCertificate(e.to_string()))?;
            return Ok(CaSigner {
                issuer,
                subject_raw,
                not_after,
            });
        }
        Err(IssuerError::KeyMismatch)
    }
}

/// Checks that `ca_key_pem` is a usable private key of one of the certificates of
/// `ca_cert_pem` (what [`issue_client_certificate`] and [`build_crl`] need).
pub fn check_ca_key(ca_cert_pem: &str, ca_key_pem: &str) -> Result<(), IssuerError> {
    CaSigner::load(ca_cert_pem, ca_key_pem).map(|_| ())
}

/// Issues a client certificate for `common_name` (sanitised: control characters dropped,
/// trimmed, at most [`MAX_COMMON_NAME_CHARS`]) with a fresh ECDSA P-256 key: a random positive
/// 128-bit serial, extended key usage clientAuth, key usage digitalSignature, valid from
/// `now` − [`NOT_BEFORE_SLACK`] to `now` + `lifetime` (or the CA certificate's end, if sooner).
pub fn issue_client_certificate(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    lifetime: Duration,
    now: Timestamp,
) -> Result<IssuedCertificate, IssuerError> {
    let ca = CaSigner::load(ca_cert_pem, ca_key_pem)?;
    let cn = sanitize_common_name(common_name)
        .ok_or_else(|| IssuerError::CommonName(common_name.to_string()))?;
    let secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    let slack = i64::try_from(NOT_BEFORE_SLACK.as_secs()).unwrap_or(0);
    let not_after = now.0.saturating_add(secs).min(ca.not_after);
    let mut params = CertificateParams::default();
    params.not_before = datetime(now.0.saturating_sub(slack))?;
    params.not_after = datetime(not_after)?;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn.clone());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IssuerError::Sign(format!("generating the key: {e}")))?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|e| IssuerError::Sign(e.to_string()))?;
    // Read back what was written: the serial exactly as the TLS layer will show it, and the
    // issuer name byte for byte as the CA's subject (what chain building compares).
    let (_, x509) = x509_parser::parse_x509_certificate(cert.der().as_ref())
        .map_err(|e| IssuerError::Sign(format!("issued certificate does not parse: {e}")))?;
    if x509.issuer().as_raw() != ca.subject_raw.as_slice() {
        return Err(IssuerError::Sign(
            "the CA certificate's subject name cannot be reproduced as the issuer name".into(),
        ));
    }
    Ok(IssuedCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial_hex: x509.raw_serial_as_string(),
        common_name: cn,
        not_after: Timestamp(not_after),
    })
}

/// A certificate revocation list signed with the CA key, PEM (`X509 CRL`), listing `revoked`
/// (serial `aa:bb:…`, revocation time). Its CRL number is `this_update`'s Unix time.
pub fn build_crl(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    revoked: &[(String, Timestamp)],
    this_update: Timestamp,
    next_update: Timestamp,
) -> Result<String, IssuerError> {
    let ca = CaSigner::load(ca_cert_pem, ca_key_pem)?;
    let revoked_certs = revoked
        .iter()
        .map(|(serial, at)| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_bytes(serial)?),
                revocation_time: datetime(at.0)?,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, IssuerError>>()?;
    let params = CertificateRevocationListParams {
        this_update: datetime(this_update.0)?,
        next_update: datetime(next_update.0)?,
        crl_number: SerialNumber::from_slice(&this_update.0.max(0).to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&ca.issuer)
        .map_err(|e| IssuerError::Sign(e.to_string()))?;
    crl.pem().map_err(|e| IssuerError::Sign(e.to_string()))
}

/// An endpoint's CRL bundle split by issuer: the entries of the CRLs the CA key signs (they can
/// be signed again into one list) and the PEM blocks of the others (kept as they are).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitCrl {
    /// Entries of CRLs issued by the CA certificate the key belongs to: serial, revocation time.
    pub ours: Vec<(String, Timestamp)>,
    /// Other CRLs (another CA of the bundle), PEM blocks as given.
    pub others: Vec<String>,
}

/// Splits `crl_pem` (one or more `X509 CRL` blocks) into what the CA key's certificate issued
/// and the rest; see [`SplitCrl`].
pub fn split_crl(
    crl_pem: &str,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<SplitCrl, IssuerError> {
    let ca = CaSigner::load(ca_cert_pem, ca_key_pem)?;
    let mut out = SplitCrl::default();
    for block in x509_parser::pem::Pem::iter_from_buffer(crl_pem.as_bytes()) {
        let block = block.map_err(|e| IssuerError::Sign(format!("stored CRL: {e}")))?;
        if block.label != "X509 CRL" {
            continue;
        }
        let (_, list) = x509_parser::parse_x509_crl(&block.contents)
            .map_err(|e| IssuerError::Sign(format!("stored CRL does not parse: {e}")))?;
        if list.issuer().as_raw() == ca.subject_raw.as_slice() {
            for r in list.iter_revoked_certificates() {
                out.ours.push((
                    r.raw_serial_as_string(),
                    Timestamp(r.revocation_date.timestamp()),
                ));
            }
        } else {
            out.others.push(pem_encode("X509 CRL", &block.contents));
        }
    }
    Ok(out)
}

/// The common name for a user name: control characters dropped, whitespace trimmed, at most
/// [`MAX_COMMON_NAME_CHARS`] characters; `None` when nothing is left.
pub fn sanitize_common_name(name: &str) -> Option<String> {
    let cleaned: String = name.chars().filter(|c| !c.is_control()).collect();
    let cn: String = cleaned.trim().chars().take(MAX_COMMON_NAME_CHARS).collect();
    let cn = cn.trim_end().to_string();
    (!cn.is_empty()).then_some(cn)
}

/// `aa:bb:…` → bytes.
fn serial_bytes(s: &str) -> Result<Vec<u8>, IssuerError> {
    let bad = || IssuerError::Serial(s.to_string());
    if s.is_empty() {
        return Err(bad());
    }
    s.split(':')
        .map(|b| {
            if b.len() == 2 {
                u8::from_str_radix(b, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        })
        .collect()
}

/// 16 random bytes, first byte in 0x40..=0x7f: positive, no leading zero, always 16 bytes.
fn random_serial() -> Result<[u8; 16], IssuerError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| IssuerError::Sign("no system randomness for a serial number".into()))?;
    b[0] = (b[0] & 0x3f) | 0x40;
    Ok(b)
}

fn datetime(unix: i64) -> Result<OffsetDateTime, IssuerError> {
    OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| IssuerError::Sign(format!("time {unix} out of range: {e}")))
}

/// A PEM key (PKCS#8, PKCS#1 or SEC1) as the key pair rcgen signs with (it reads PKCS#8 only:
/// the others are wrapped).
fn key_pair(pem: &str) -> Result<KeyPair, IssuerError> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        IssuerError::CaKey(format!(
            "not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"
        ))
    })?;
    let unusable = |e: rcgen::Error| IssuerError::CaKey(format!("unusable private key: {e}"));
    match key {
        PrivateKeyDer::Pkcs8(k) => KeyPair::try_from(k.secret_pkcs8_der()).map_err(unusable),
        PrivateKeyDer::Pkcs1(k) => {
            // rsaEncryption, NULL parameters.
            let alg = der(
                0x30,
                &[
                    der(
                        0x06,
                        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
                    ),
                    der(0x05, &[]),
                ]
                .concat(),
            );
            KeyPair::try_from(pkcs8(&alg, k.secret_pkcs1_der()).as_slice()).map_err(unusable)
        }
        PrivateKeyDer::Sec1(k) => {
            // id-ecPublicKey with the curve: P-256, else P-384 (the inner key names its curve,
            // and a wrong guess is refused).
            const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
            const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
            const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
            let mut last = None;
            for curve in [P256, P384] {
                let alg = der(0x30, &[der(0x06, EC_PUBLIC_KEY), der(0x06, curve)].concat());
                match KeyPair::try_from(pkcs8(&alg, k.secret_sec1_der()).as_slice()) {
                    Ok(kp) => return Ok(kp),
                    Err(e) => last = Some(e),
                }
            }
            Err(unusable(last.unwrap_or(rcgen::Error::CouldNotParseKeyPair)))
        }
        _ => Err(IssuerError::CaKey("unsupported private key type".into())),
    }
}

/// PKCS#8 v1 `PrivateKeyInfo` around a key.
fn pkcs8(alg: &[u8], key: &[u8]) -> Vec<u8> {
    der(
        0x30,
        &[der(0x02, &[0]), alg.to_vec(), der(0x04, key)].concat(),
    )
}

/// One DER element.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

#[cfg(test)]
mod tests;
