//! Feeds arbitrary bytes to `auth::saml::SamlServiceProvider::verify_response`, the check of
//! the SAMLResponse form field an unauthenticated browser posts to the ACS: once as the field's
//! text as it came (base64 layer: length bound, white space, padding) and once base64-encoded,
//! so that the bytes reach the XML layer (the strict libxml2 parse, the structural checks,
//! xmlsec's verification). The service provider is made once, with an IdP certificate
//! generated at start (no key is committed, and the fuzzer never holds it). Checks that it
//! never panics and that nothing is ever accepted: without the IdP's key no response can
//! carry a valid signature. It starts faster from a seed corpus holding a structurally complete
//! (but unsigned) response, e.g. the ones built in gateway/src/auth/saml/tests.rs.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use gateway::auth::saml::{SamlServiceProvider, SamlSpSettings};
use libfuzzer_sys::fuzz_target;

const REQUEST_ID: &str = "_0123456789abcdef0123456789abcdef";

fn sp() -> &'static SamlServiceProvider {
    static SP: OnceLock<SamlServiceProvider> = OnceLock::new();
    SP.get_or_init(|| {
        let idp = rcgen::generate_simple_self_signed(vec!["idp.example.test".to_string()])
            .expect("IdP certificate");
        SamlServiceProvider::new(SamlSpSettings {
            idp_entity_id: "https://idp.example.test/saml2/idp/metadata.php".into(),
            idp_sso_url: "https://idp.example.test/sso".into(),
            idp_certificates: vec![idp.cert.der().to_vec()],
            groups_attribute: "memberOf".into(),
            username_attribute: Some("uid".into()),
            sp_entity_id: "https://vpn.example.test/saml/metadata".into(),
            acs_url: "https://vpn.example.test/saml/acs".into(),
        })
        .expect("service provider")
    })
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fuzz_target!(|data: &[u8]| {
    let sp = sp();
    // The form field as posted.
    let text = String::from_utf8_lossy(data);
    let got = sp.verify_response(&text, REQUEST_ID, now());
    assert!(got.is_err(), "accepted without the IdP's key: {got:?}");
    let _ = got.map_err(|e| e.to_string());
    // The bytes as the decoded document.
    let got = sp.verify_response(&STANDARD.encode(data), REQUEST_ID, now());
    assert!(got.is_err(), "accepted without the IdP's key: {got:?}");
    let _ = got.map_err(|e| e.to_string());
});
