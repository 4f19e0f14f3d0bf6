//! The SAML 2.0 service provider of single sign-on: the AuthnRequest (HTTP-Redirect binding),
//! our SP metadata, and the check of the IdP's answer (HTTP-POST binding). No I/O.
//!
//! The XML signature is never checked by code of ours: the system's xmlsec1 library does it,
//! through the `samael` crate (`xmlsec` feature). What we consume is only what xmlsec verified:
//! samael's `ReduceMode::PreDigest` hands back the canonical bytes xmlsec digested for the
//! signed reference (the signed Response with its Assertion, or the signed Assertion), and
//! every check below reads that, parsed again — never a sibling found in the document as it
//! was received. That is what defeats signature wrapping (ruby-saml CVE-2025-25291/25292,
//! samlify CVE-2025-47949): an unsigned Assertion injected next to the signed one is not in
//! the verified bytes.
//!
//! Before xmlsec sees the document it must also pass a structural check of ours that only ever
//! refuses: well-formed UTF-8 without a DTD; a `samlp:Response` root with Status Success;
//! exactly one Assertion in the whole document, a direct child of the Response; no
//! EncryptedAssertion; at least one signature, each a child of the Response or the Assertion
//! with one Reference to its parent's ID, and only the transforms SAML uses (enveloped
//! signature, canonicalization) — xmlsec itself would follow external reference URIs and run
//! XSLT, neither of which an unauthenticated sender may ask of us.
//!
//! On the verified element: Issuer = the IdP's entity id, Destination / Recipient = our ACS
//! URL, Audience = our entity id, the validity windows of Conditions and of the bearer
//! SubjectConfirmationData (with [`CLOCK_SKEW`]), InResponseTo = the request we sent; then the
//! Assertion's ID goes into a bounded replay cache so one response signs in once.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::{engine::general_purpose::STANDARD, Engine};
use libxml::parser::{Parser, ParserOptions};
use libxml::tree::{Node, NodeType};
use samael::crypto::{
    AllowedSignatureAlgorithm, CertificateDer, Crypto, CryptoProvider, ReduceMode,
};

use super::AuthFailure;

/// The largest SAMLResponse accepted, decoded.
pub const MAX_RESPONSE: usize = 256 * 1024;
/// At most this many groups in an assertion.
pub const MAX_GROUPS: usize = 256;
/// The longest user name or group name taken from an assertion.
pub const MAX_NAME: usize = 256;
/// How far the IdP's clock may be from ours.
pub const CLOCK_SKEW: Duration = Duration::from_secs(120);
/// Assertion IDs remembered at most (each until its assertion expires).
pub const REPLAY_CACHE_SIZE: usize = 16_384;

const NS_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const NS_ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const HTTP_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const NAMEID_UNSPECIFIED: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified";
/// The transforms and canonicalizations SAML signatures use; anything else is refused before
/// xmlsec runs.
const ALLOWED_TRANSFORMS: &[&str] = &[
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments",
];
/// Signature algorithms accepted: RSA and ECDSA with SHA-2 (no SHA-1, no HMAC, no DSA).
const ALLOWED_ALGORITHMS: &[AllowedSignatureAlgorithm] = &[
    AllowedSignatureAlgorithm::RsaSha256,
    AllowedSignatureAlgorithm::RsaSha384,
    AllowedSignatureAlgorithm::RsaSha512,
    AllowedSignatureAlgorithm::EcdsaSha256,
    AllowedSignatureAlgorithm::EcdsaSha384,
    AllowedSignatureAlgorithm::EcdsaSha512,
];

/// A service provider's settings (from the identity provider resource and the web listener).
#[derive(Clone, Debug)]
pub struct SamlSpSettings {
    /// The IdP's entity id: the Issuer of its responses and assertions.
    pub idp_entity_id: String,
    /// The IdP's single sign-on service, HTTP-Redirect binding.
    pub idp_sso_url: String,
    /// The IdP's signing certificates (DER); a signature by any of them is accepted.
    pub idp_certificates: Vec<Vec<u8>>,
    /// The attribute listing the user's groups (`memberOf`).
    pub groups_attribute: String,
    /// The attribute naming the user; the NameID when None.
    pub username_attribute: Option<String>,
    /// Our entity id: `{public_url}/saml/metadata`.
    pub sp_entity_id: String,
    /// Our assertion consumer service: `{public_url}/saml/acs`.
    pub acs_url: String,
}

impl SamlSpSettings {
    /// Settings with our entity id and ACS URL under `public_url` (no trailing slash needed),
    /// the groups in `memberOf` and the user named by the NameID. `idp_certificates` is PEM (one
    /// or more certificates) or one DER certificate.
    pub fn new(
        idp_entity_id: &str,
        idp_sso_url: &str,
        idp_certificates: &[u8],
        public_url: &str,
    ) -> Result<Self, SamlError> {
        let base = public_url.trim_end_matches('/');
        Ok(SamlSpSettings {
            idp_entity_id: idp_entity_id.into(),
            idp_sso_url: idp_sso_url.into(),
            idp_certificates: parse_certificates(idp_certificates)?,
            groups_attribute: "memberOf".into(),
            username_attribute: None,
            sp_entity_id: format!("{base}/saml/metadata"),
            acs_url: format!("{base}/saml/acs"),
        })
    }
}

/// The service provider's metadata for entity id `entity_id` and assertion consumer service
/// `acs_url` (the same for every identity provider of a web listener).
pub fn sp_metadata(entity_id: &str, acs_url: &str) -> String {
    format!(
        concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" entityID=\"{entity}\">\n",
            "  <md:SPSSODescriptor AuthnRequestsSigned=\"false\" WantAssertionsSigned=\"true\" ",
            "protocolSupportEnumeration=\"{p}\">\n",
            "    <md:NameIDFormat>{nameid}</md:NameIDFormat>\n",
            "    <md:AssertionConsumerService Binding=\"{binding}\" Location=\"{acs}\" index=\"0\" isDefault=\"true\"/>\n",
            "  </md:SPSSODescriptor>\n",
            "</md:EntityDescriptor>\n"
        ),
        entity = xml_escape(entity_id),
        p = NS_PROTOCOL,
        nameid = NAMEID_UNSPECIFIED,
        binding = HTTP_POST,
        acs = xml_escape(acs_url),
    )
}

/// Certificates from PEM (every `CERTIFICATE` block) or one DER certificate; each must parse as
/// X.509.
pub fn parse_certificates(data: &[u8]) -> Result<Vec<Vec<u8>>, SamlError> {
    let mut out = Vec::new();
    if data.starts_with(b"-----") || data.trim_ascii_start().starts_with(b"-----") {
        for pem in x509_parser::pem::Pem::iter_from_buffer(data) {
            let pem = pem.map_err(|e| SamlError::Settings(format!("IdP certificate PEM: {e}")))?;
            if pem.label == "CERTIFICATE" {
                out.push(pem.contents);
            }
        }
    } else {
        out.push(data.to_vec());
    }
    if out.is_empty() {
        return Err(SamlError::Settings(
            "no IdP signing certificate given".into(),
        ));
    }
    for der in &out {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| SamlError::Settings(format!("IdP certificate: {e}")))?;
    }
    Ok(out)
}

/// Why a SAML step failed. Every variant but [`SamlError::Settings`] is a refused response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamlError {
    #[error("SAML settings: {0}")]
    Settings(String),
    #[error("the SAML response is larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("the SAML response is not base64")]
    NotBase64,
    #[error("the SAML response is not well-formed UTF-8 XML: {0}")]
    NotXml(String),
    #[error("the SAML response carries a DTD (refused: entity expansion, external entities)")]
    Doctype,
    #[error("the SAML message is not a samlp:Response (found {0})")]
    NotAResponse(String),
    #[error("the identity provider answered with status {0}")]
    StatusNotSuccess(String),
    #[error("encrypted assertions are not supported: configure the IdP to sign, not encrypt, assertions for this service provider")]
    EncryptedAssertion,
    #[error("the response carries {0} assertions: exactly one is accepted")]
    AssertionCount(usize),
    #[error("the assertion is not a direct child of the Response")]
    AssertionMisplaced,
    #[error("neither the response nor the assertion is signed")]
    NotSigned,
    #[error("unacceptable signature structure: {0}")]
    SignatureStructure(String),
    #[error("the signature does not verify with the identity provider's certificates (or uses an algorithm other than RSA/ECDSA with SHA-2)")]
    BadSignature,
    #[error("the signed element is {0}, not the Response or its Assertion")]
    SignedWrongElement(String),
    #[error("issuer {found:?} is not the identity provider {expected:?}")]
    WrongIssuer { found: String, expected: String },
    #[error("the response's Destination {0:?} is not our ACS URL")]
    WrongDestination(String),
    #[error("the bearer confirmation's Recipient {0:?} is not our ACS URL")]
    WrongRecipient(String),
    #[error("the assertion is not meant for us (audience {0:?})")]
    WrongAudience(Vec<String>),
    #[error("the assertion is not valid before {0}")]
    NotYetValid(String),
    #[error("the assertion expired at {0}")]
    Expired(String),
    #[error("the response answers request {found:?}, not the sign-in's request")]
    WrongInResponseTo { found: String },
    #[error("the assertion lacks {0}")]
    Missing(&'static str),
    #[error("bad timestamp {0:?} (xs:dateTime in UTC expected)")]
    BadTime(String),
    #[error("bad attribute: {0}")]
    BadAttribute(String),
    #[error("assertion {0:?} was already used")]
    Replayed(String),
    #[error("too many assertions in flight: sign-in refused for now")]
    ReplayCacheFull,
}

impl From<SamlError> for AuthFailure {
    fn from(e: SamlError) -> Self {
        AuthFailure::IdpRefused(e.to_string())
    }
}

/// Who the IdP says the user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamlIdentity {
    /// The user name (the configured attribute, else the NameID).
    pub username: String,
    /// The Subject's NameID.
    pub name_id: String,
    /// The groups attribute's values, sorted and without duplicates.
    pub groups: Vec<String>,
    /// The AuthnStatement's SessionNotOnOrAfter: the IdP wants the session to end then.
    pub session_not_on_or_after: Option<SystemTime>,
    /// The Assertion's ID (already recorded as used).
    pub assertion_id: String,
}

/// An AuthnRequest on its way: the URL to send the browser to, and the request's ID (keep it
/// server-side with the sign-in: the answer must name it in InResponseTo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthnRequest {
    pub url: String,
    pub id: String,
}

/// Assertion IDs seen, each kept until its assertion expires; at most `capacity`.
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashMap<String, SystemTime>,
    capacity: usize,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            seen: HashMap::new(),
            capacity,
        }
    }

    /// Records `id` until `expires`; false when it is already recorded (a replay) or when the
    /// cache is full of unexpired IDs (it fails closed: forgetting one would allow its replay).
    pub fn insert(&mut self, id: &str, expires: SystemTime, now: SystemTime) -> bool {
        if let Some(&until) = self.seen.get(id) {
            if until > now {
                return false;
            }
        }
        if self.seen.len() >= self.capacity {
            self.seen.retain(|_, until| *until > now);
            if self.seen.len() >= self.capacity {
                return false;
            }
        }
        self.seen.insert(id.to_owned(), expires);
        true
    }

    /// True when `id` is recorded and not expired.
    pub fn contains(&self, id: &str, now: SystemTime) -> bool {
        self.seen.get(id).is_some_and(|until| *until > now)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// One identity provider's service provider.
#[derive(Debug)]
pub struct SamlServiceProvider {
    settings: SamlSpSettings,
    certs: Vec<CertificateDer>,
    replay: Mutex<ReplayCache>,
}

impl SamlServiceProvider {
    pub fn new(settings: SamlSpSettings) -> Result<Self, SamlError> {
        for (what, v) in [
            ("IdP entity id", &settings.idp_entity_id),
            ("SP entity id", &settings.sp_entity_id),
            ("ACS URL", &settings.acs_url),
            ("groups attribute", &settings.groups_attribute),
        ] {
            if v.is_empty() {
                return Err(SamlError::Settings(format!("{what} is empty")));
            }
        }
        let sso = url::Url::parse(&settings.idp_sso_url)
            .map_err(|e| SamlError::Settings(format!("IdP SSO URL: {e}")))?;
        if !matches!(sso.scheme(), "https" | "http") {
            return Err(SamlError::Settings("IdP SSO URL must be http(s)".into()));
        }
        if settings.idp_certificates.is_empty() {
            return Err(SamlError::Settings(
                "no IdP signing certificate given".into(),
            ));
        }
        for der in &settings.idp_certificates {
            x509_parser::parse_x509_certificate(der)
                .map_err(|e| SamlError::Settings(format!("IdP certificate: {e}")))?;
        }
        let certs = settings
            .idp_certificates
            .iter()
            .cloned()
            .map(CertificateDer::from)
            .collect();
        Ok(SamlServiceProvider {
            settings,
            certs,
            replay: Mutex::new(ReplayCache::new(REPLAY_CACHE_SIZE)),
        })
    }

    pub fn settings(&self) -> &SamlSpSettings {
        &self.settings
    }

    /// A new AuthnRequest for the HTTP-Redirect binding (unsigned; deflated, base64, URL
    /// encoded) with `relay_state` (at most 80 bytes, as the binding says).
    pub fn authn_request(&self, relay_state: &str) -> Result<AuthnRequest, SamlError> {
        if relay_state.len() > 80 {
            return Err(SamlError::Settings(
                "RelayState longer than 80 bytes".into(),
            ));
        }
        let id = random_id()?;
        let s = &self.settings;
        let xml = format!(
            concat!(
                r#"<samlp:AuthnRequest xmlns:samlp="{p}" xmlns:saml="{a}" ID="{id}" Version="2.0" "#,
                r#"IssueInstant="{now}" Destination="{dest}" AssertionConsumerServiceURL="{acs}" "#,
                r#"ProtocolBinding="{binding}"><saml:Issuer>{issuer}</saml:Issuer>"#,
                r#"<samlp:NameIDPolicy AllowCreate="true"/></samlp:AuthnRequest>"#
            ),
            p = NS_PROTOCOL,
            a = NS_ASSERTION,
            id = id,
            now = format_time(SystemTime::now()),
            dest = xml_escape(&s.idp_sso_url),
            acs = xml_escape(&s.acs_url),
            binding = HTTP_POST,
            issuer = xml_escape(&s.sp_entity_id),
        );
        let mut deflater =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflater
            .write_all(xml.as_bytes())
            .and_then(|_| deflater.finish())
            .map(|deflated| {
                let sep = if s.idp_sso_url.contains('?') {
                    '&'
                } else {
                    '?'
                };
                let mut url = format!(
                    "{}{sep}SAMLRequest={}",
                    s.idp_sso_url,
                    query_encode(&STANDARD.encode(deflated))
                );
                if !relay_state.is_empty() {
                    url.push_str("&RelayState=");
                    url.push_str(&query_encode(relay_state));
                }
                AuthnRequest { url, id }
            })
            .map_err(|e| SamlError::Settings(format!("deflate: {e}")))
    }

    /// Our SP metadata (to give the IdP's administrator).
    pub fn sp_metadata(&self) -> String {
        sp_metadata(&self.settings.sp_entity_id, &self.settings.acs_url)
    }

    /// Checks the SAMLResponse form field posted to our ACS for the sign-in that sent request
    /// `expected_request_id`; on success the assertion is recorded as used.
    pub fn verify_response(
        &self,
        saml_response_b64: &str,
        expected_request_id: &str,
        now: SystemTime,
    ) -> Result<SamlIdentity, SamlError> {
        // base64 of MAX_RESPONSE bytes, with room for line breaks.
        if saml_response_b64.len() > MAX_RESPONSE / 3 * 4 + 4 + MAX_RESPONSE / 32 {
            return Err(SamlError::TooLarge);
        }
        let compact: Vec<u8> = saml_response_b64
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let bytes = STANDARD.decode(compact).map_err(|_| SamlError::NotBase64)?;
        if bytes.len() > MAX_RESPONSE {
            return Err(SamlError::TooLarge);
        }
        let xml = std::str::from_utf8(&bytes).map_err(|_| SamlError::NotXml("not UTF-8".into()))?;
        self.check_received(xml, expected_request_id)?;
        let verified = self.verified_xml(xml)?;
        let checked = self.check_verified(&verified, expected_request_id, now)?;
        let mut replay = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        if replay.contains(&checked.identity.assertion_id, now) {
            return Err(SamlError::Replayed(checked.identity.assertion_id));
        }
        if !replay.insert(&checked.identity.assertion_id, checked.expires, now) {
            return Err(SamlError::ReplayCacheFull);
        }
        Ok(checked.identity)
    }

    /// The structural checks on the document as received. They only refuse: nothing read
    /// here is trusted afterwards.
    fn check_received(&self, xml: &str, expected_request_id: &str) -> Result<(), SamlError> {
        check_declaration(xml)?;
        if xml.contains("<!DOCTYPE") || xml.contains("<!ENTITY") {
            return Err(SamlError::Doctype);
        }
        let doc = parse_strict(xml)?;
        let root = doc
            .get_root_element()
            .ok_or_else(|| SamlError::NotXml("no root element".into()))?;
        if !is(&root, NS_PROTOCOL, "Response") {
            return Err(SamlError::NotAResponse(describe(&root)));
        }
        if !descendants(&root, NS_ASSERTION, "EncryptedAssertion").is_empty() {
            return Err(SamlError::EncryptedAssertion);
        }
        check_status(&root)?;
        let signatures = descendants(&root, NS_DSIG, "Signature");
        if signatures.is_empty() {
            return Err(SamlError::NotSigned);
        }
        let assertions = descendants(&root, NS_ASSERTION, "Assertion");
        if assertions.len() != 1 {
            return Err(SamlError::AssertionCount(assertions.len()));
        }
        let assertion = &assertions[0];
        if !assertion.get_parent().is_some_and(|p| p == root) {
            return Err(SamlError::AssertionMisplaced);
        }
        for sig in &signatures {
            check_signature_structure(sig, &root, assertion)?;
        }
        if let Some(dest) = root.get_attribute("Destination") {
            if dest != self.settings.acs_url {
                return Err(SamlError::WrongDestination(dest));
            }
        }
        if let Some(irt) = root.get_attribute("InResponseTo") {
            if irt != expected_request_id {
                return Err(SamlError::WrongInResponseTo { found: irt });
            }
        }
        Ok(())
    }

    /// xmlsec's verification (through samael) with the IdP's certificates: every signature in
    /// the document must verify, and what comes back is the canonical form of the signed
    /// element (the Response when it is signed, else the Assertion), exactly as digested.
    fn verified_xml(&self, xml: &str) -> Result<String, SamlError> {
        Crypto::reduce_xml_to_signed_with_allowed_algorithms(
            xml,
            &self.certs,
            ReduceMode::PreDigest,
            Some(ALLOWED_ALGORITHMS),
        )
        .map_err(|_| SamlError::BadSignature)
    }

    fn check_verified(
        &self,
        verified: &str,
        expected_request_id: &str,
        now: SystemTime,
    ) -> Result<Checked, SamlError> {
        let s = &self.settings;
        let doc = parse_strict(verified)?;
        let root = doc
            .get_root_element()
            .ok_or_else(|| SamlError::NotXml("empty verified element".into()))?;
        let assertion = if is(&root, NS_PROTOCOL, "Response") {
            // The whole Response is signed: its envelope counts too.
            match root.get_attribute("Destination") {
                Some(d) if d == s.acs_url => {}
                d => return Err(SamlError::WrongDestination(d.unwrap_or_default())),
            }
            if let Some(irt) = root.get_attribute("InResponseTo") {
                if irt != expected_request_id {
                    return Err(SamlError::WrongInResponseTo { found: irt });
                }
            }
            if let Some(issuer) = child(&root, NS_ASSERTION, "Issuer") {
                self.check_issuer(&issuer)?;
            }
            check_status(&root)?;
            if !descendants(&root, NS_ASSERTION, "EncryptedAssertion").is_empty() {
                return Err(SamlError::EncryptedAssertion);
            }
            let all = descendants(&root, NS_ASSERTION, "Assertion");
            let direct = children(&root, NS_ASSERTION, "Assertion");
            if all.len() != 1 || direct.len() != 1 {
                return Err(SamlError::AssertionCount(all.len()));
            }
            direct.into_iter().next().unwrap()
        } else if is(&root, NS_ASSERTION, "Assertion") {
            root
        } else {
            return Err(SamlError::SignedWrongElement(describe(&root)));
        };
        self.check_assertion(&assertion, expected_request_id, now)
    }

    fn check_issuer(&self, issuer: &Node) -> Result<(), SamlError> {
        let found = issuer.get_content().trim().to_owned();
        if found != self.settings.idp_entity_id {
            return Err(SamlError::WrongIssuer {
                found,
                expected: self.settings.idp_entity_id.clone(),
            });
        }
        Ok(())
    }

    fn check_assertion(
        &self,
        assertion: &Node,
        expected_request_id: &str,
        now: SystemTime,
    ) -> Result<Checked, SamlError> {
        let s = &self.settings;
        let assertion_id = assertion
            .get_attribute("ID")
            .filter(|id| !id.is_empty())
            .ok_or(SamlError::Missing("an ID"))?;
        self.check_issuer(
            &child(assertion, NS_ASSERTION, "Issuer").ok_or(SamlError::Missing("an Issuer"))?,
        )?;

        // Conditions: the validity window and the audience.
        let conditions =
            child(assertion, NS_ASSERTION, "Conditions").ok_or(SamlError::Missing("Conditions"))?;
        let mut expires = check_window(&conditions, now)?;
        let restrictions = children(&conditions, NS_ASSERTION, "AudienceRestriction");
        if restrictions.is_empty() {
            return Err(SamlError::Missing("an AudienceRestriction"));
        }
        for r in &restrictions {
            let audiences: Vec<String> = children(r, NS_ASSERTION, "Audience")
                .iter()
                .map(|a| a.get_content().trim().to_owned())
                .collect();
            if !audiences.contains(&s.sp_entity_id) {
                return Err(SamlError::WrongAudience(audiences));
            }
        }

        // The subject and its bearer confirmation: recipient, window, request.
        let subject =
            child(assertion, NS_ASSERTION, "Subject").ok_or(SamlError::Missing("a Subject"))?;
        let name_id = child(&subject, NS_ASSERTION, "NameID")
            .map(|n| n.get_content().trim().to_owned())
            .filter(|n| !n.is_empty())
            .ok_or(SamlError::Missing("a NameID"))?;
        let mut first_error = None;
        let mut confirmed = None;
        for sc in children(&subject, NS_ASSERTION, "SubjectConfirmation") {
            if sc.get_attribute("Method").as_deref() != Some(BEARER) {
                continue;
            }
            match self.check_confirmation(&sc, expected_request_id, now) {
                Ok(until) => {
                    confirmed = Some(until);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match confirmed {
            Some(until) => expires = Some(expires.map_or(until, |e| e.min(until))),
            None => {
                return Err(
                    first_error.unwrap_or(SamlError::Missing("a bearer SubjectConfirmation"))
                )
            }
        }
        // Bearer confirmations always have NotOnOrAfter, so `expires` is set.
        let expires = expires.ok_or(SamlError::Missing("NotOnOrAfter"))? + CLOCK_SKEW;

        let mut session_not_on_or_after = None;
        for statement in children(assertion, NS_ASSERTION, "AuthnStatement") {
            if let Some(t) = statement.get_attribute("SessionNotOnOrAfter") {
                let t = parse_time(&t)?;
                if now >= t + CLOCK_SKEW {
                    return Err(SamlError::Expired(format_time(t)));
                }
                session_not_on_or_after =
                    Some(session_not_on_or_after.map_or(t, |u: SystemTime| u.min(t)));
            }
        }

        let mut groups = Vec::new();
        let mut username = None;
        for statement in children(assertion, NS_ASSERTION, "AttributeStatement") {
            for attr in children(&statement, NS_ASSERTION, "Attribute") {
                let name = attr.get_attribute("Name").unwrap_or_default();
                if name == s.groups_attribute {
                    for v in children(&attr, NS_ASSERTION, "AttributeValue") {
                        let v = v.get_content().trim().to_owned();
                        if v.is_empty() {
                            continue;
                        }
                        check_name(&v, "group")?;
                        groups.push(v);
                        if groups.len() > MAX_GROUPS {
                            return Err(SamlError::BadAttribute(format!(
                                "more than {MAX_GROUPS} groups"
                            )));
                        }
                    }
                }
                if s.username_attribute.as_deref() == Some(name.as_str()) && username.is_none() {
                    username = children(&attr, NS_ASSERTION, "AttributeValue")
                        .iter()
                        .map(|v| v.get_content().trim().to_owned())
                        .find(|v| !v.is_empty());
                }
            }
        }
        groups.sort();
        groups.dedup();
        let username = match &s.username_attribute {
            Some(a) => username.ok_or_else(|| {
                SamlError::BadAttribute(format!("the user name attribute {a:?} is missing"))
            })?,
            None => name_id.clone(),
        };
        check_name(&username, "user name")?;
        Ok(Checked {
            identity: SamlIdentity {
                username,
                name_id,
                groups,
                session_not_on_or_after,
                assertion_id,
            },
            expires,
        })
    }

    /// One bearer SubjectConfirmation: its data's Recipient, window and InResponseTo; returns
    /// its NotOnOrAfter.
    fn check_confirmation(
        &self,
        sc: &Node,
        expected_request_id: &str,
        now: SystemTime,
    ) -> Result<SystemTime, SamlError> {
        let data = child(sc, NS_ASSERTION, "SubjectConfirmationData")
            .ok_or(SamlError::Missing("SubjectConfirmationData"))?;
        let recipient = data.get_attribute("Recipient").unwrap_or_default();
        if recipient != self.settings.acs_url {
            return Err(SamlError::WrongRecipient(recipient));
        }
        let until = check_window(&data, now)?.ok_or(SamlError::Missing(
            "NotOnOrAfter in SubjectConfirmationData",
        ))?;
        match data.get_attribute("InResponseTo") {
            Some(irt) if irt == expected_request_id => Ok(until),
            irt => Err(SamlError::WrongInResponseTo {
                found: irt.unwrap_or_default(),
            }),
        }
    }
}

struct Checked {
    identity: SamlIdentity,
    /// When the assertion can no longer be used anyway (its ID is remembered until then).
    expires: SystemTime,
}

/// NotBefore / NotOnOrAfter of an element, with [`CLOCK_SKEW`]; returns NotOnOrAfter.
fn check_window(node: &Node, now: SystemTime) -> Result<Option<SystemTime>, SamlError> {
    if let Some(nb) = node.get_attribute("NotBefore") {
        let nb = parse_time(&nb)?;
        if now + CLOCK_SKEW < nb {
            return Err(SamlError::NotYetValid(format_time(nb)));
        }
    }
    match node.get_attribute("NotOnOrAfter") {
        Some(na) => {
            let na = parse_time(&na)?;
            if now >= na + CLOCK_SKEW {
                return Err(SamlError::Expired(format_time(na)));
            }
            Ok(Some(na))
        }
        None => Ok(None),
    }
}

fn check_status(response: &Node) -> Result<(), SamlError> {
    let status = child(response, NS_PROTOCOL, "Status")
        .ok_or_else(|| SamlError::StatusNotSuccess("(none)".into()))?;
    let code = child(&status, NS_PROTOCOL, "StatusCode");
    let value = code
        .as_ref()
        .and_then(|c| c.get_attribute("Value"))
        .unwrap_or_default();
    if value != STATUS_SUCCESS {
        let mut detail = value;
        if let Some(sub) = code
            .as_ref()
            .and_then(|c| child(c, NS_PROTOCOL, "StatusCode"))
            .and_then(|c| c.get_attribute("Value"))
        {
            detail = format!("{detail} / {sub}");
        }
        if let Some(msg) = child(&status, NS_PROTOCOL, "StatusMessage") {
            let msg: String = msg.get_content().chars().take(200).collect();
            detail = format!("{detail}: {}", msg.trim());
        }
        return Err(SamlError::StatusNotSuccess(detail));
    }
    Ok(())
}

/// A signature must sit in the Response or the Assertion, reference exactly its parent by ID,
/// and use only SAML's transforms; nothing that makes xmlsec fetch, run XSLT or evaluate
/// XPath, and no Object or Manifest to hide content in.
fn check_signature_structure(
    sig: &Node,
    response: &Node,
    assertion: &Node,
) -> Result<(), SamlError> {
    let bad = |m: &str| Err(SamlError::SignatureStructure(m.into()));
    let Some(parent) = sig.get_parent() else {
        return bad("a signature without a parent");
    };
    if parent != *response && parent != *assertion {
        return bad(&format!("a signature inside {}", describe(&parent)));
    }
    for forbidden in ["Object", "Manifest", "RetrievalMethod"] {
        if !descendants(sig, NS_DSIG, forbidden).is_empty() {
            return bad(&format!("a ds:{forbidden}"));
        }
    }
    let Some(signed_info) = child(sig, NS_DSIG, "SignedInfo") else {
        return bad("no SignedInfo");
    };
    let c14n = child(&signed_info, NS_DSIG, "CanonicalizationMethod")
        .and_then(|c| c.get_attribute("Algorithm"))
        .unwrap_or_default();
    if !ALLOWED_TRANSFORMS[1..].contains(&c14n.as_str()) {
        return bad(&format!("canonicalization {c14n:?}"));
    }
    let references = children(&signed_info, NS_DSIG, "Reference");
    if references.len() != 1 {
        return bad(&format!("{} references (one expected)", references.len()));
    }
    let uri = references[0].get_attribute("URI").unwrap_or_default();
    let parent_id = parent.get_attribute("ID").unwrap_or_default();
    if parent_id.is_empty() || uri.strip_prefix('#') != Some(parent_id.as_str()) {
        return bad(&format!(
            "the reference {uri:?} is not to the signature's parent ({parent_id:?})"
        ));
    }
    for t in descendants(&references[0], NS_DSIG, "Transform") {
        let alg = t.get_attribute("Algorithm").unwrap_or_default();
        if !ALLOWED_TRANSFORMS.contains(&alg.as_str()) {
            return bad(&format!("transform {alg:?}"));
        }
        if !t
            .get_child_elements()
            .iter()
            .all(|c| c.get_name() == "InclusiveNamespaces")
        {
            return bad("transform parameters other than InclusiveNamespaces");
        }
    }
    Ok(())
}

/// Refuses an XML declaration naming another encoding than UTF-8 (xmlsec's parser would honor it).
fn check_declaration(xml: &str) -> Result<(), SamlError> {
    let xml = xml.trim_start_matches('\u{feff}');
    if let Some(rest) = xml.strip_prefix("<?xml") {
        let decl = rest.split("?>").next().unwrap_or("").to_ascii_lowercase();
        if let Some(i) = decl.find("encoding") {
            let value = decl[i + 8..]
                .trim_start_matches([' ', '=', '\t', '\r', '\n'])
                .trim_start_matches(['"', '\'']);
            if !value.starts_with("utf-8") {
                return Err(SamlError::NotXml("only UTF-8 is accepted".into()));
            }
        }
    }
    Ok(())
}

/// Parses `xml` as UTF-8 XML, nothing recovered, nothing fetched.
///
/// No `encoding` is given to libxml2: `libxml` 0.3.3 (pinned by samael) frees the C string of
/// `ParserOptions::encoding` before `xmlReadMemory` reads it, a use-after-free on every
/// response (found by the `saml_response` fuzz target under AddressSanitizer). UTF-8 is what
/// libxml2 reads anyway once the two ways it could pick another encoding are closed:
/// [`check_declaration`] refuses any other declared encoding, and a NUL is refused here —
/// autodetection of UTF-16 and UCS-4 needs NUL bytes (ASCII spaced out with NULs is valid
/// UTF-8), and U+0000 is never an XML character. samael parses with autodetection too, so
/// xmlsec sees the document as this check does.
fn parse_strict(xml: &str) -> Result<libxml::tree::Document, SamlError> {
    if xml.contains('\0') {
        return Err(SamlError::NotXml("a NUL character".into()));
    }
    let options = ParserOptions {
        recover: false,
        no_net: true,
        no_error: true,
        no_warning: true,
        encoding: None,
        ..ParserOptions::default()
    };
    Parser::default()
        .parse_string_with_options(xml, options)
        .map_err(|_| SamlError::NotXml("not well-formed".into()))
}

fn check_name(v: &str, what: &str) -> Result<(), SamlError> {
    if v.is_empty() || v.chars().count() > MAX_NAME {
        return Err(SamlError::BadAttribute(format!(
            "a {what} is empty or longer than {MAX_NAME} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(SamlError::BadAttribute(format!(
            "a {what} contains control characters"
        )));
    }
    Ok(())
}

fn is(node: &Node, ns: &str, name: &str) -> bool {
    node.get_type() == Some(NodeType::ElementNode)
        && node.get_name() == name
        && node.get_namespace().is_some_and(|n| n.get_href() == ns)
}

fn children(node: &Node, ns: &str, name: &str) -> Vec<Node> {
    node.get_child_elements()
        .into_iter()
        .filter(|c| is(c, ns, name))
        .collect()
}

fn child(node: &Node, ns: &str, name: &str) -> Option<Node> {
    children(node, ns, name).into_iter().next()
}

/// Every element below `node` (not `node` itself) with this name.
fn descendants(node: &Node, ns: &str, name: &str) -> Vec<Node> {
    let mut out = Vec::new();
    let mut stack = node.get_child_elements();
    while let Some(n) = stack.pop() {
        if is(&n, ns, name) {
            out.push(n.clone());
        }
        stack.extend(n.get_child_elements());
    }
    out
}

fn describe(node: &Node) -> String {
    let ns = node
        .get_namespace()
        .map(|n| n.get_href())
        .unwrap_or_default();
    format!("{{{ns}}}{}", node.get_name())
}

fn parse_time(s: &str) -> Result<SystemTime, SamlError> {
    if !s.ends_with('Z') {
        return Err(SamlError::BadTime(s.into()));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(SystemTime::from)
        .map_err(|_| SamlError::BadTime(s.into()))
}

fn format_time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `_` and 128 random bits in hex (an xs:ID must not start with a digit).
fn random_id() -> Result<String, SamlError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| SamlError::Settings("no randomness".into()))?;
    Ok(format!(
        "_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn query_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests;
