//! Issued certificates verify against their CA (as the endpoint verifies clients), CRLs list
//! what they revoke and make the verifier refuse it, wrong keys are refused.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;

use super::*;

const NOW: i64 = 1_750_000_000;

/// A self-signed CA: (certificate PEM, PKCS#8 key PEM).
fn ca(name: &str) -> (String, String) {
    ca_with_key(name, KeyPair::generate().unwrap())
}

fn ca_with_key(name: &str, key: KeyPair) -> (String, String) {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "cvpn tests");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = OffsetDateTime::from_unix_timestamp(NOW - 86_400).unwrap();
    p.not_after = OffsetDateTime::from_unix_timestamp(NOW + 10 * 365 * 86_400).unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn verifier(ca_pem: &str, crls: &[&str]) -> Arc<dyn ClientCertVerifier> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = crls
        .iter()
        .flat_map(|p| CertificateRevocationListDer::pem_slice_iter(p.as_bytes()))
        .map(Result::unwrap)
        .collect();
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls(crls)
    .build()
    .unwrap()
}

fn verify(v: &Arc<dyn ClientCertVerifier>, cert_pem: &str, at: i64) -> Result<(), rustls::Error> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    v.verify_client_cert(
        &cert,
        &[],
        UnixTime::since_unix_epoch(Duration::from_secs(at as u64)),
    )
    .map(|_| ())
}

#[test]
fn issued_certificate_verifies_against_its_ca_as_a_client() {
    let (ca_pem, ca_key) = ca("Portal CA");
    let lifetime = Duration::from_secs(12 * 3600);
    let c = issue_client_certificate(
        &ca_pem,
        &ca_key,
        "alice@example.com",
        lifetime,
        Timestamp(NOW),
    )
    .unwrap();
    let v = verifier(&ca_pem, &[]);
    verify(&v, &c.cert_pem, NOW).unwrap();
    // Valid from five minutes before now (clock skew) until the lifetime ends.
    verify(&v, &c.cert_pem, NOW - 200).unwrap();
    assert!(verify(&v, &c.cert_pem, NOW + 12 * 3600 + 1).is_err());
    assert_eq!(c.not_after, Timestamp(NOW + 12 * 3600));

    let der = CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    // The serial as the endpoint's TLS layer reads it.
    let id = crate::protocol::tls::client_identity(&der).unwrap();
    assert_eq!(id.serial, c.serial_hex);
    assert_eq!(id.common_name, "alice@example.com");
    assert_eq!(c.common_name, "alice@example.com");
    let parts: Vec<&str> = c.serial_hex.split(':').collect();
    assert_eq!(parts.len(), 16, "{}", c.serial_hex);
    assert!(parts
        .iter()
        .all(|p| p.len() == 2 && p.chars().all(|ch| matches!(ch, '0'..='9' | 'a'..='f'))));
    assert!(u8::from_str_radix(parts[0], 16).unwrap() < 0x80, "positive");
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert!(!x.is_ca());
    assert_eq!(x.validity().not_before.timestamp(), NOW - 300);
    // A fresh P-256 key per certificate, which is the certificate's.
    let key = KeyPair::from_pem(&c.key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    assert_eq!(
        x.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    let again = issue_client_certificate(
        &ca_pem,
        &ca_key,
        "alice@example.com",
        lifetime,
        Timestamp(NOW),
    )
    .unwrap();
    assert_ne!(again.serial_hex, c.serial_hex);
    assert_ne!(again.key_pem, c.key_pem);
    // The key is hidden: neither its armour nor any line of its body shows.
    let shown = format!("{c:?}");
    assert!(c
        .key_pem
        .lines()
        .all(|l| l.is_empty() || !shown.contains(l)));
}

#[test]
fn crl_lists_the_serials_and_the_verifier_refuses_them() {
    let (ca_pem, ca_key) = ca("Portal CA");
    let day = Duration::from_secs(86_400);
    let a = issue_client_certificate(&ca_pem, &ca_key, "alice", day, Timestamp(NOW)).unwrap();
    let b = issue_client_certificate(&ca_pem, &ca_key, "bob", day, Timestamp(NOW)).unwrap();
    let crl = build_crl(
        &ca_pem,
        &ca_key,
        &[(a.serial_hex.clone(), Timestamp(NOW + 10))],
        Timestamp(NOW + 10),
        Timestamp(NOW + 10 + 7 * 86_400),
    )
    .unwrap();
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"));
    let block = x509_parser::pem::Pem::iter_from_buffer(crl.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, list) = x509_parser::parse_x509_crl(&block.contents).unwrap();
    let serials: Vec<String> = list
        .iter_revoked_certificates()
        .map(|r| r.raw_serial_as_string())
        .collect();
    assert_eq!(serials, vec![a.serial_hex.clone()]);
    // The endpoint's CRL import takes it.
    let parsed = crate::model::validate::crl("crl", &crl, &ca_pem, 100).unwrap();
    assert_eq!(parsed.revoked_serials, vec![a.serial_hex.clone()]);
    // And the verifier the endpoint builds refuses the revoked certificate only.
    let v = verifier(&ca_pem, &[&crl]);
    assert!(matches!(
        verify(&v, &a.cert_pem, NOW + 20),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    ));
    verify(&v, &b.cert_pem, NOW + 20).unwrap();
    // An empty list is a valid CRL too.
    let empty = build_crl(
        &ca_pem,
        &ca_key,
        &[],
        Timestamp(NOW),
        Timestamp(NOW + 86_400),
    )
    .unwrap();
    assert!(crate::model::validate::crl("crl", &empty, &ca_pem, 100)
        .unwrap()
        .revoked_serials
        .is_empty());
    // The split sees our entries, not other issuers' lists.
    let (other_pem, other_key) = ca("Other CA");
    let other = build_crl(
        &other_pem,
        &other_key,
        &[("01:02".into(), Timestamp(NOW))],
        Timestamp(NOW),
        Timestamp(NOW + 86_400),
    )
    .unwrap();
    let split = split_crl(&format!("{crl}{other}"), &ca_pem, &ca_key).unwrap();
    assert_eq!(
        split.ours,
        vec![(a.serial_hex.clone(), Timestamp(NOW + 10))]
    );
    assert_eq!(split.others.len(), 1);
    assert_eq!(
        crate::model::validate::crl("crl", &split.others[0], &other_pem, 10)
            .unwrap()
            .revoked_serials,
        vec!["01:02".to_string()]
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let (ca_pem, _) = ca("Portal CA");
    let (_, other_key) = ca("Other CA");
    let e = issue_client_certificate(
        &ca_pem,
        &other_key,
        "alice",
        Duration::from_secs(60),
        Timestamp(NOW),
    )
    .unwrap_err();
    assert_eq!(e, IssuerError::KeyMismatch);
    assert!(e.to_string().contains("does not match"), "{e}");
    assert_eq!(
        check_ca_key(&ca_pem, &other_key),
        Err(IssuerError::KeyMismatch)
    );
    assert_eq!(
        build_crl(
            &ca_pem,
            &other_key,
            &[],
            Timestamp(NOW),
            Timestamp(NOW + 60)
        ),
        Err(IssuerError::KeyMismatch)
    );
    assert!(matches!(
        check_ca_key(&ca_pem, "not a key"),
        Err(IssuerError::CaKey(_))
    ));
    assert!(matches!(
        check_ca_key("not a cert", &other_key),
        Err(IssuerError::CaKey(_) | IssuerError::CaCertificate(_))
    ));
}

#[test]
fn the_key_of_any_certificate_of_a_bundle_signs_as_that_certificate() {
    let (first, _) = ca("First CA");
    let (second, second_key) = ca("Second CA");
    let bundle = format!("{first}{second}");
    let c = issue_client_certificate(
        &bundle,
        &second_key,
        "carol",
        Duration::from_secs(3600),
        Timestamp(NOW),
    )
    .unwrap();
    verify(&verifier(&bundle, &[]), &c.cert_pem, NOW).unwrap();
    assert!(verify(&verifier(&first, &[]), &c.cert_pem, NOW).is_err());
}

#[test]
fn sec1_and_pkcs1_keys_are_read() {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    for curve in [Nid::X9_62_PRIME256V1, Nid::SECP384R1] {
        let ec = EcKey::generate(&EcGroup::from_curve_name(curve).unwrap()).unwrap();
        let sec1 = String::from_utf8(ec.private_key_to_pem().unwrap()).unwrap();
        assert!(sec1.starts_with("-----BEGIN EC "), "SEC1: {}", &sec1[..20]);
        let pkcs8 = PKey::from_ec_key(ec)
            .unwrap()
            .private_key_to_pem_pkcs8()
            .unwrap();
        let (ca_pem, _) = ca_with_key(
            "EC CA",
            KeyPair::from_pem(std::str::from_utf8(&pkcs8).unwrap()).unwrap(),
        );
        let c = issue_client_certificate(
            &ca_pem,
            &sec1,
            "dave",
            Duration::from_secs(60),
            Timestamp(NOW),
        )
        .unwrap();
        verify(&verifier(&ca_pem, &[]), &c.cert_pem, NOW).unwrap();
    }
    let rsa = Rsa::generate(2048).unwrap();
    let pkcs1 = String::from_utf8(rsa.private_key_to_pem().unwrap()).unwrap();
    assert!(
        pkcs1.starts_with("-----BEGIN RSA "),
        "PKCS#1: {}",
        &pkcs1[..20]
    );
    let pkcs8 = PKey::from_rsa(rsa)
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    let (ca_pem, _) = ca_with_key(
        "RSA CA",
        KeyPair::from_pem(std::str::from_utf8(&pkcs8).unwrap()).unwrap(),
    );
    let c = issue_client_certificate(
        &ca_pem,
        &pkcs1,
        "erin",
        Duration::from_secs(60),
        Timestamp(NOW),
    )
    .unwrap();
    verify(&verifier(&ca_pem, &[]), &c.cert_pem, NOW).unwrap();
}

#[test]
fn common_names_are_sanitised_and_never_outlive_the_ca() {
    assert_eq!(
        sanitize_common_name("  bob\n\u{7} ").as_deref(),
        Some("bob")
    );
    assert_eq!(sanitize_common_name("a\u{0}b").as_deref(), Some("ab"));
    assert_eq!(sanitize_common_name(&"x".repeat(100)).unwrap().len(), 64);
    assert_eq!(
        sanitize_common_name("é".repeat(70).as_str())
            .unwrap()
            .chars()
            .count(),
        64
    );
    assert_eq!(sanitize_common_name("\n\t "), None);
    let (ca_pem, ca_key) = ca("Portal CA");
    assert!(matches!(
        issue_client_certificate(
            &ca_pem,
            &ca_key,
            "\r\n",
            Duration::from_secs(60),
            Timestamp(NOW)
        ),
        Err(IssuerError::CommonName(_))
    ));
    // A lifetime past the CA's end stops at the CA's end.
    let c = issue_client_certificate(
        &ca_pem,
        &ca_key,
        "frank",
        Duration::from_secs(100 * 365 * 86_400),
        Timestamp(NOW),
    )
    .unwrap();
    assert_eq!(c.not_after, Timestamp(NOW + 10 * 365 * 86_400));
    assert_eq!(
        build_crl(
            &ca_pem,
            &ca_key,
            &[("zz".into(), Timestamp(NOW))],
            Timestamp(NOW),
            Timestamp(NOW + 1)
        ),
        Err(IssuerError::Serial("zz".into()))
    );
}
