//! Reads arbitrary text as the SAML 2.0 metadata an administrator gives (or has fetched from a
//! URL) when creating an identity provider, through `model::validate::saml_metadata`. Checks
//! that it never panics, and that what it takes from an accepted document is what the
//! service provider is then built from: a trimmed, non-empty entity id of at most 1024 bytes,
//! a single sign-on URL that `https_url` accepts, and at least one signing certificate, each
//! base64 and none twice.
#![no_main]

use base64::{engine::general_purpose::STANDARD, Engine as _};
use gateway::model::validate::{https_url, saml_metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let md = match saml_metadata("metadata-xml", xml) {
        Ok(md) => md,
        Err(e) => {
            let _ = format!("{e:?}");
            return;
        }
    };
    assert!(!md.entity_id.is_empty() && md.entity_id.len() <= 1024);
    assert_eq!(md.entity_id.trim(), md.entity_id);
    assert!(https_url("sso", &md.sso_url).is_ok(), "{:?}", md.sso_url);
    assert!(!md.signing_certificates.is_empty());
    for (i, c) in md.signing_certificates.iter().enumerate() {
        assert!(STANDARD.decode(c).is_ok(), "certificate #{i} is not base64");
        assert!(
            !md.signing_certificates[..i].contains(c),
            "certificate #{i} twice"
        );
    }
});
