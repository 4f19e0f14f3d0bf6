//! Test PKI shared by the crate's unit tests (storage, API): made fresh with rcgen, no keys in
//! the repository.

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertifiedIssuer, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};

/// A self-signed CA named `name`.
pub(crate) fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A CRL of `issuer` revoking `serials`, PEM.
pub(crate) fn crl_by(issuer: &CertifiedIssuer<'static, KeyPair>, serials: &[u64]) -> String {
    CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// A CA and a server certificate (`vpn.example.com`, serial 2) and key it issued.
pub(crate) struct ServerPki {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: String,
    pub server_cert: String,
    pub server_key: String,
}

impl ServerPki {
    pub fn new(ca_name: &str) -> ServerPki {
        let issuer = ca(ca_name);
        let mut p = CertificateParams::new(vec!["vpn.example.com".to_string()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "vpn.example.com");
        p.serial_number = Some(SerialNumber::from(2u64));
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        ServerPki {
            ca_pem: issuer.pem(),
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
            issuer,
        }
    }
}

/// A client certificate (common name `cn`, one OU per group, EKU clientAuth) that `issuer`
/// issued with `serial`: (certificate PEM, key PEM).
pub(crate) fn client_cert(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    group: &str,
    serial: u64,
) -> (String, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, group);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.serial_number = Some(SerialNumber::from(serial));
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A SAML 2.0 identity provider's metadata document: `entity_id`, an HTTP-Redirect single
/// sign-on service at `sso_url`, and a fresh self-signed signing certificate. Returns the
/// document and the certificate (base64 DER, as the metadata carries it).
pub(crate) fn saml_metadata(entity_id: &str, sso_url: &str) -> (String, String) {
    use base64::Engine as _;
    let mut p = CertificateParams::new(vec!["idp.example.test".to_string()]).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "test SAML signing");
    let cert = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.der());
    // Wrapped at 64 columns, as identity providers publish it.
    let wrapped: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{entity_id}">
  <md:IDPSSODescriptor WantAuthnRequestsSigned="false" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="signing">
      <ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
        <ds:X509Data>
          <ds:X509Certificate>
{}
          </ds:X509Certificate>
        </ds:X509Data>
      </ds:KeyInfo>
    </md:KeyDescriptor>
    <md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress</md:NameIDFormat>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="{sso_url}/post"/>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="{sso_url}"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>
"#,
        wrapped.join("\n")
    );
    (xml, b64)
}
