//! Responses signed at test time by xmlsec (samael's signer) with RSA keys made at test time;
//! the forged-input table: each case must be refused with its error.

use std::io::Read as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::{
    asn1::Asn1Time, bn::BigNum, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509::X509Builder,
    x509::X509NameBuilder,
};

use super::*;

const IDP: &str = "https://idp.example.test/saml2/idp/metadata.php";
const PUBLIC_URL: &str = "https://vpn.example.test";
const ACS: &str = "https://vpn.example.test/saml/acs";
const SP: &str = "https://vpn.example.test/saml/metadata";
const REQ: &str = "_0123456789abcdef0123456789abcdef";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
const RSA_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#rsa-sha1";
const SHA1: &str = "http://www.w3.org/2000/09/xmldsig#sha1";

struct Key {
    private_der: Vec<u8>,
    cert_pem: Vec<u8>,
}

fn make_key(cn: &str) -> Key {
    let pkey = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&pkey).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.sign(&pkey, MessageDigest::sha256()).unwrap();
    Key {
        private_der: pkey.private_key_to_der().unwrap(),
        cert_pem: b.build().to_pem().unwrap(),
    }
}

/// The IdP's key and another (an attacker's), made once per test run.
fn idp_key() -> &'static Key {
    static K: OnceLock<Key> = OnceLock::new();
    K.get_or_init(|| make_key("idp.example.test"))
}
fn other_key() -> &'static Key {
    static K: OnceLock<Key> = OnceLock::new();
    K.get_or_init(|| make_key("attacker.example.test"))
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn sp() -> SamlServiceProvider {
    SamlServiceProvider::new(
        SamlSpSettings::new(
            IDP,
            "https://idp.example.test/sso",
            &idp_key().cert_pem,
            PUBLIC_URL,
        )
        .unwrap(),
    )
    .unwrap()
}

fn t(offset_secs: i64) -> String {
    let at = if offset_secs >= 0 {
        now() + Duration::from_secs(offset_secs as u64)
    } else {
        now() - Duration::from_secs((-offset_secs) as u64)
    };
    format_time(at)
}

/// One response, everything adjustable.
#[derive(Clone)]
struct Fixture {
    assertion_id: String,
    issuer: String,
    response_issuer: String,
    name_id: String,
    groups: Vec<String>,
    audience: String,
    recipient: String,
    destination: Option<String>,
    in_response_to: String,
    response_in_response_to: Option<String>,
    not_before: i64,
    not_on_or_after: i64,
    sc_not_on_or_after: i64,
    status: String,
    sign_assertion: Option<&'static Key>,
    sign_response: Option<&'static Key>,
    alg: (&'static str, &'static str),
}

impl Fixture {
    fn valid() -> Fixture {
        Fixture {
            assertion_id: "_a1".into(),
            issuer: IDP.into(),
            response_issuer: IDP.into(),
            name_id: "alice".into(),
            groups: vec!["vpn-users".into(), "engineering".into()],
            audience: SP.into(),
            recipient: ACS.into(),
            destination: Some(ACS.into()),
            in_response_to: REQ.into(),
            response_in_response_to: Some(REQ.into()),
            not_before: -30,
            not_on_or_after: 300,
            sc_not_on_or_after: 300,
            status: STATUS_SUCCESS.into(),
            sign_assertion: Some(idp_key()),
            sign_response: None,
            alg: (RSA_SHA256, SHA256),
        }
    }

    fn signature_template(&self, id: &str) -> String {
        format!(
            concat!(
                r##"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo>"##,
                r##"<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>"##,
                r##"<ds:SignatureMethod Algorithm="{alg}"/><ds:Reference URI="#{id}"><ds:Transforms>"##,
                r##"<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>"##,
                r##"<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms>"##,
                r#"<ds:DigestMethod Algorithm="{digest}"/><ds:DigestValue></ds:DigestValue>"#,
                r#"</ds:Reference></ds:SignedInfo><ds:SignatureValue></ds:SignatureValue></ds:Signature>"#
            ),
            alg = self.alg.0,
            digest = self.alg.1,
            id = id
        )
    }

    fn assertion(&self) -> String {
        let sig = if self.sign_assertion.is_some() {
            self.signature_template(&self.assertion_id)
        } else {
            String::new()
        };
        let values: String = self
            .groups
            .iter()
            .map(|g| {
                format!(r#"<saml:AttributeValue xsi:type="xs:string">{g}</saml:AttributeValue>"#)
            })
            .collect();
        let xml = format!(
            concat!(
                r#"<saml:Assertion xmlns:saml="{ns}" xmlns:xs="http://www.w3.org/2001/XMLSchema" "#,
                r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ID="{id}" Version="2.0" IssueInstant="{now}">"#,
                r#"<saml:Issuer>{issuer}</saml:Issuer>{sig}<saml:Subject>"#,
                r#"<saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified">{name_id}</saml:NameID>"#,
                r#"<saml:SubjectConfirmation Method="{bearer}"><saml:SubjectConfirmationData "#,
                r#"NotOnOrAfter="{sc_noa}" Recipient="{recipient}" InResponseTo="{irt}"/></saml:SubjectConfirmation>"#,
                r#"</saml:Subject><saml:Conditions NotBefore="{nb}" NotOnOrAfter="{noa}"><saml:AudienceRestriction>"#,
                r#"<saml:Audience>{aud}</saml:Audience></saml:AudienceRestriction></saml:Conditions>"#,
                r#"<saml:AuthnStatement AuthnInstant="{now}" SessionNotOnOrAfter="{session}" SessionIndex="_s1">"#,
                r#"<saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:Password"#,
                r#"</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement><saml:AttributeStatement>"#,
                r#"<saml:Attribute Name="memberOf" NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:basic">{values}</saml:Attribute>"#,
                r#"<saml:Attribute Name="uid"><saml:AttributeValue xsi:type="xs:string">{name_id}-uid</saml:AttributeValue></saml:Attribute>"#,
                r#"</saml:AttributeStatement></saml:Assertion>"#
            ),
            ns = NS_ASSERTION,
            id = self.assertion_id,
            now = t(0),
            issuer = self.issuer,
            sig = sig,
            name_id = self.name_id,
            bearer = BEARER,
            sc_noa = t(self.sc_not_on_or_after),
            recipient = self.recipient,
            irt = self.in_response_to,
            nb = t(self.not_before),
            noa = t(self.not_on_or_after),
            aud = self.audience,
            session = t(3600),
            values = values,
        );
        match self.sign_assertion {
            Some(key) => sign(&xml, key),
            None => xml,
        }
    }

    fn response_with(&self, assertion: &str) -> String {
        let sig = if self.sign_response.is_some() {
            self.signature_template("_r1")
        } else {
            String::new()
        };
        let dest = self
            .destination
            .as_ref()
            .map(|d| format!(r#" Destination="{d}""#))
            .unwrap_or_default();
        let irt = self
            .response_in_response_to
            .as_ref()
            .map(|d| format!(r#" InResponseTo="{d}""#))
            .unwrap_or_default();
        let xml = format!(
            concat!(
                r#"<samlp:Response xmlns:samlp="{p}" xmlns:saml="{a}" ID="_r1" Version="2.0" "#,
                r#"IssueInstant="{now}"{dest}{irt}><saml:Issuer>{issuer}</saml:Issuer>{sig}"#,
                r#"<samlp:Status><samlp:StatusCode Value="{status}"/></samlp:Status>{assertion}</samlp:Response>"#
            ),
            p = NS_PROTOCOL,
            a = NS_ASSERTION,
            now = t(0),
            dest = dest,
            irt = irt,
            issuer = self.response_issuer,
            sig = sig,
            status = self.status,
            assertion = assertion,
        );
        match self.sign_response {
            Some(key) => sign(&xml, key),
            None => xml,
        }
    }

    fn response(&self) -> String {
        self.response_with(&self.assertion())
    }
}

/// xmlsec signs the first signature template in document order.
fn sign(xml: &str, key: &Key) -> String {
    let signed = Crypto::sign_xml(xml, &key.private_der).expect("xmlsec signs");
    strip_declaration(&signed)
}

fn strip_declaration(xml: &str) -> String {
    let xml = xml.trim();
    match xml.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").unwrap().1.trim().to_owned(),
        None => xml.to_owned(),
    }
}

fn b64(xml: &str) -> String {
    STANDARD.encode(xml)
}

fn verify(xml: &str) -> Result<SamlIdentity, SamlError> {
    sp().verify_response(&b64(xml), REQ, now())
}

#[test]
fn valid_responses_are_accepted_however_signed() {
    for (what, sign_assertion, sign_response) in [
        ("assertion signed", true, false),
        ("response signed", false, true),
        ("both signed", true, true),
    ] {
        let mut f = Fixture::valid();
        f.sign_assertion = sign_assertion.then(idp_key);
        f.sign_response = sign_response.then(idp_key);
        let id = verify(&f.response()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(id.username, "alice", "{what}");
        assert_eq!(id.name_id, "alice");
        assert_eq!(id.groups, ["engineering", "vpn-users"]);
        assert_eq!(id.assertion_id, "_a1");
        assert_eq!(
            id.session_not_on_or_after,
            Some(now() + Duration::from_secs(3600))
        );
    }
}

#[test]
fn username_attribute_second_certificate_and_skew() {
    let mut settings = SamlSpSettings::new(
        IDP,
        "https://idp.example.test/sso",
        &other_key().cert_pem,
        PUBLIC_URL,
    )
    .unwrap();
    settings
        .idp_certificates
        .extend(parse_certificates(&idp_key().cert_pem).unwrap());
    settings.username_attribute = Some("uid".into());
    let sp = SamlServiceProvider::new(settings).unwrap();
    let mut f = Fixture::valid();
    // Expired 60 s ago: within the clock skew.
    f.not_on_or_after = -60;
    f.sc_not_on_or_after = -60;
    f.not_before = 100;
    let id = sp.verify_response(&b64(&f.response()), REQ, now()).unwrap();
    assert_eq!(id.username, "alice-uid");
    assert_eq!(id.name_id, "alice");
    // Base64 with line breaks (some IdPs wrap at 76 columns).
    f.assertion_id = "_a2".into();
    let wrapped: String = b64(&f.response())
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    sp.verify_response(&wrapped, REQ, now()).unwrap();
}

/// `parse_strict` gives libxml2 no encoding (libxml 0.3.3 frees it before use, which the
/// `saml_response` fuzz target caught under AddressSanitizer): UTF-8 must still be read as
/// UTF-8, and the documents that would make libxml2 pick another encoding are refused.
#[test]
fn documents_are_read_as_utf8_whatever_their_first_bytes() {
    let mut f = Fixture::valid();
    f.groups = vec!["ingénierie".into(), "équipe-réseau".into()];
    let id = verify(&f.response()).unwrap();
    assert_eq!(id.groups, ["ingénierie", "équipe-réseau"]);
    let doc = parse_strict("<a>café ✓</a>").unwrap();
    assert_eq!(doc.get_root_element().unwrap().get_content(), "café ✓");
    for (what, xml) in [
        (
            "UTF-16LE",
            "<\x00?\x00x\x00m\x00l\x00 \x00v\x00e\x00r\x00s\x00i\x00o\x00n\x00=\x00\"\x001\x00.\x000\x00\"\x00?\x00>\x00<\x00a\x00/\x00>\x00",
        ),
        (
            "UTF-16BE",
            "\x00<\x00?\x00x\x00m\x00l\x00 \x00v\x00e\x00r\x00s\x00i\x00o\x00n\x00=\x00\"\x001\x00.\x000\x00\"\x00?\x00>\x00<\x00a\x00/\x00>",
        ),
        ("UCS-4", "\0\0\0<\0\0\0a\0\0\0/\0\0\0>"),
        ("a NUL in the text", "<a>x\0y</a>"),
    ] {
        assert_eq!(
            parse_strict(xml).err(),
            Some(SamlError::NotXml("a NUL character".into())),
            "{what}"
        );
    }
}

/// Signature wrapping: an unsigned Assertion next to the signed one.
fn evil_assertion(id: &str) -> String {
    let mut evil = Fixture::valid();
    evil.assertion_id = id.into();
    evil.name_id = "mallory".into();
    evil.groups = vec!["admins".into()];
    evil.sign_assertion = None;
    evil.assertion()
}

fn wrapping_cases() -> Vec<(&'static str, String, SamlError)> {
    let f = Fixture::valid();
    let signed = f.assertion();
    let evil = evil_assertion("_evil");
    let mut cases = vec![
        (
            "unsigned assertion before the signed one",
            f.response_with(&format!("{evil}{signed}")),
            SamlError::AssertionCount(2),
        ),
        (
            "unsigned assertion after the signed one",
            f.response_with(&format!("{signed}{evil}")),
            SamlError::AssertionCount(2),
        ),
        (
            "unsigned assertion with the same ID before the signed one",
            f.response_with(&format!("{}{signed}", evil_assertion("_a1"))),
            SamlError::AssertionCount(2),
        ),
    ];
    // The signed assertion moved into Extensions, the evil one where the assertion goes.
    let moved = f.response_with(&evil).replacen(
        "<samlp:Status>",
        &format!("<samlp:Extensions>{signed}</samlp:Extensions><samlp:Status>"),
        1,
    );
    cases.push((
        "signed assertion moved into Extensions",
        moved,
        SamlError::AssertionCount(2),
    ));
    let only_moved = f.response_with("").replacen(
        "<samlp:Status>",
        &format!("<samlp:Extensions>{signed}</samlp:Extensions><samlp:Status>"),
        1,
    );
    cases.push((
        "the only (signed) assertion inside Extensions",
        only_moved,
        SamlError::AssertionMisplaced,
    ));
    // A signed Response hidden in a ds:Object of a copy of its signature, inside an evil
    // Response that carries the evil assertion.
    let mut rf = Fixture::valid();
    rf.sign_assertion = None;
    rf.sign_response = Some(idp_key());
    let original = rf.response();
    let sig_start = original.find("<ds:Signature").unwrap();
    let sig_end = original.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    let sig = &original[sig_start..sig_end];
    let object_sig = sig.replace(
        "</ds:Signature>",
        &format!("<ds:Object>{original}</ds:Object></ds:Signature>"),
    );
    let mut ef = Fixture::valid();
    ef.sign_assertion = None;
    let evil_response = ef.response_with(&evil).replacen(
        "<samlp:Status>",
        &format!("{object_sig}<samlp:Status>"),
        1,
    );
    cases.push((
        "signed response inside a ds:Object, evil assertion outside",
        evil_response,
        SamlError::AssertionCount(2),
    ));
    // The assertion's signature moved to an evil assertion, still referencing the good one.
    let sig_start = signed.find("<ds:Signature").unwrap();
    let sig_end = signed.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    let evil_with_sig = evil.replacen(
        "</saml:Issuer>",
        &format!("</saml:Issuer>{}", &signed[sig_start..sig_end]),
        1,
    );
    cases.push((
        "the signed assertion's signature on an unsigned one",
        f.response_with(&evil_with_sig),
        SamlError::SignatureStructure(
            "the reference \"#_a1\" is not to the signature's parent (\"_evil\")".into(),
        ),
    ));
    cases
}

fn tamper(f: &Fixture, from: &str, to: &str) -> String {
    let xml = f.response();
    assert!(xml.contains(from), "{from} not in {xml}");
    xml.replacen(from, to, 1)
}

#[test]
fn forged_inputs_are_refused() {
    let valid = Fixture::valid;
    let with = |change: &dyn Fn(&mut Fixture)| {
        let mut f = valid();
        change(&mut f);
        f.response()
    };
    let mut cases: Vec<(&str, String, SamlError)> = vec![
        (
            "unsigned",
            with(&|f| f.sign_assertion = None),
            SamlError::NotSigned,
        ),
        (
            "signed by another key",
            with(&|f| f.sign_assertion = Some(other_key())),
            SamlError::BadSignature,
        ),
        (
            "response signed by another key, assertion by the IdP",
            with(&|f| f.sign_response = Some(other_key())),
            SamlError::BadSignature,
        ),
        (
            "NameID changed after signing",
            tamper(&valid(), ">alice</saml:NameID>", ">mallory</saml:NameID>"),
            SamlError::BadSignature,
        ),
        (
            "group added after signing",
            tamper(
                &valid(),
                "<saml:AttributeValue xsi:type=\"xs:string\">vpn-users",
                "<saml:AttributeValue>admins</saml:AttributeValue><saml:AttributeValue xsi:type=\"xs:string\">vpn-users",
            ),
            SamlError::BadSignature,
        ),
        (
            "RSA-SHA1",
            with(&|f| f.alg = (RSA_SHA1, SHA1)),
            SamlError::BadSignature,
        ),
        (
            "XSLT transform",
            tamper(
                &valid(),
                "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
                "http://www.w3.org/TR/1999/REC-xslt-19991116",
            ),
            SamlError::SignatureStructure(
                "transform \"http://www.w3.org/TR/1999/REC-xslt-19991116\"".into(),
            ),
        ),
        (
            "external reference",
            tamper(&valid(), "URI=\"#_a1\"", "URI=\"http://169.254.169.254/\""),
            SamlError::SignatureStructure(
                "the reference \"http://169.254.169.254/\" is not to the signature's parent (\"_a1\")"
                    .into(),
            ),
        ),
        (
            "wrong audience",
            with(&|f| f.audience = "https://other-sp.example.test/saml/metadata".into()),
            SamlError::WrongAudience(vec!["https://other-sp.example.test/saml/metadata".into()]),
        ),
        (
            "wrong recipient",
            with(&|f| f.recipient = "https://other-sp.example.test/saml/acs".into()),
            SamlError::WrongRecipient("https://other-sp.example.test/saml/acs".into()),
        ),
        (
            "wrong destination (response signed)",
            with(&|f| {
                f.sign_response = Some(idp_key());
                f.destination = Some("https://other-sp.example.test/saml/acs".into());
            }),
            SamlError::WrongDestination("https://other-sp.example.test/saml/acs".into()),
        ),
        (
            "no destination on a signed response",
            with(&|f| {
                f.sign_response = Some(idp_key());
                f.destination = None;
            }),
            SamlError::WrongDestination(String::new()),
        ),
        (
            "wrong destination (assertion signed)",
            with(&|f| f.destination = Some("https://other-sp.example.test/saml/acs".into())),
            SamlError::WrongDestination("https://other-sp.example.test/saml/acs".into()),
        ),
        (
            "expired (Conditions)",
            with(&|f| f.not_on_or_after = -600),
            SamlError::Expired(t(-600)),
        ),
        (
            "expired (SubjectConfirmationData)",
            with(&|f| f.sc_not_on_or_after = -600),
            SamlError::Expired(t(-600)),
        ),
        (
            "not yet valid",
            with(&|f| f.not_before = 600),
            SamlError::NotYetValid(t(600)),
        ),
        (
            "wrong InResponseTo (assertion)",
            with(&|f| {
                f.in_response_to = "_other".into();
                f.response_in_response_to = None;
            }),
            SamlError::WrongInResponseTo {
                found: "_other".into(),
            },
        ),
        (
            "wrong InResponseTo (response)",
            with(&|f| f.response_in_response_to = Some("_other".into())),
            SamlError::WrongInResponseTo {
                found: "_other".into(),
            },
        ),
        (
            "wrong issuer (assertion)",
            with(&|f| f.issuer = "https://evil.example.test".into()),
            SamlError::WrongIssuer {
                found: "https://evil.example.test".into(),
                expected: IDP.into(),
            },
        ),
        (
            "wrong issuer (signed response)",
            with(&|f| {
                f.sign_response = Some(idp_key());
                f.response_issuer = "https://evil.example.test".into();
            }),
            SamlError::WrongIssuer {
                found: "https://evil.example.test".into(),
                expected: IDP.into(),
            },
        ),
        (
            "status not success",
            with(&|f| {
                f.sign_response = Some(idp_key());
                f.status = "urn:oasis:names:tc:SAML:2.0:status:Requester".into();
            }),
            SamlError::StatusNotSuccess("urn:oasis:names:tc:SAML:2.0:status:Requester".into()),
        ),
        (
            "no assertion",
            {
                let mut f = valid();
                f.sign_response = Some(idp_key());
                f.response_with("")
            },
            SamlError::AssertionCount(0),
        ),
        (
            "encrypted assertion",
            valid().response_with(&format!(
                "<saml:EncryptedAssertion><xenc:EncryptedData xmlns:xenc=\"http://www.w3.org/2001/04/xmlenc#\"/></saml:EncryptedAssertion>{}",
                valid().assertion()
            )),
            SamlError::EncryptedAssertion,
        ),
        (
            "too many groups",
            with(&|f| f.groups = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect()),
            SamlError::BadAttribute(format!("more than {MAX_GROUPS} groups")),
        ),
        (
            "control character in a group",
            with(&|f| f.groups = vec!["eng&#9;ineering".into()]),
            SamlError::BadAttribute("a group contains control characters".into()),
        ),
        (
            "overlong group",
            with(&|f| f.groups = vec!["g".repeat(MAX_NAME + 1)]),
            SamlError::BadAttribute(format!(
                "a group is empty or longer than {MAX_NAME} characters"
            )),
        ),
        (
            "a DTD",
            format!(
                "<!DOCTYPE r [<!ENTITY x \"y\">]>{}",
                valid().response()
            ),
            SamlError::Doctype,
        ),
        (
            "another encoding declared",
            format!(
                "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>{}",
                valid().response()
            ),
            SamlError::NotXml("only UTF-8 is accepted".into()),
        ),
        (
            // ASCII spaced out with NULs is valid UTF-8, which libxml2 would autodetect as
            // UTF-16LE: refused before any parser reads it.
            "a correctly signed response in UTF-16",
            valid()
                .response()
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes())
                .map(char::from)
                .collect(),
            SamlError::NotXml("a NUL character".into()),
        ),
        (
            "an Assertion alone, not a Response",
            valid().assertion(),
            SamlError::NotAResponse(format!("{{{NS_ASSERTION}}}Assertion")),
        ),
        (
            "garbage XML",
            "<samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\"><unclosed>"
                .into(),
            SamlError::NotXml("not well-formed".into()),
        ),
    ];
    cases.extend(wrapping_cases());
    let sp = sp();
    let mut failures = Vec::new();
    for (what, xml, expected) in &cases {
        match sp.verify_response(&b64(xml), REQ, now()) {
            Err(e) if e == *expected => {}
            other => failures.push(format!("{what}: expected {expected:?}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Not base64, too large.
    assert_eq!(
        sp.verify_response("!!not base64!!", REQ, now()),
        Err(SamlError::NotBase64)
    );
    let huge = b64(&format!(
        "{}<!--{}-->",
        valid().response(),
        "x".repeat(MAX_RESPONSE)
    ));
    assert_eq!(
        sp.verify_response(&huge, REQ, now()),
        Err(SamlError::TooLarge)
    );
    assert_eq!(
        sp.verify_response(&"A".repeat(2 * MAX_RESPONSE), REQ, now()),
        Err(SamlError::TooLarge)
    );
    assert_eq!(
        sp.verify_response(&STANDARD.encode([0xff, 0xfe, 0x00]), REQ, now()),
        Err(SamlError::NotXml("not UTF-8".into()))
    );
}

#[test]
fn a_response_signs_in_once() {
    let sp = sp();
    let xml = Fixture::valid().response();
    sp.verify_response(&b64(&xml), REQ, now()).unwrap();
    assert_eq!(
        sp.verify_response(&b64(&xml), REQ, now() + Duration::from_secs(5)),
        Err(SamlError::Replayed("_a1".into()))
    );
    // Refused ones are not recorded: a forged copy does not burn the real one.
    let sp = sp_fresh();
    let forged = tamper(
        &Fixture::valid(),
        ">alice</saml:NameID>",
        ">mallory</saml:NameID>",
    );
    assert!(sp.verify_response(&b64(&forged), REQ, now()).is_err());
    sp.verify_response(&b64(&xml), REQ, now()).unwrap();
}

fn sp_fresh() -> SamlServiceProvider {
    sp()
}

/// Whatever the structural checks say, only the verified bytes are consumed: given a wrapped
/// document, xmlsec's verified output holds the signed assertion, not the injected one.
#[test]
fn only_the_verified_element_is_consumed() {
    let sp = sp();
    let f = Fixture::valid();
    let wrapped = f.response_with(&format!("{}{}", evil_assertion("_evil"), f.assertion()));
    let verified = sp.verified_xml(&wrapped).unwrap();
    assert!(verified.contains(">alice<"), "{verified}");
    assert!(!verified.contains("mallory"), "{verified}");
    let checked = sp.check_verified(&verified, REQ, now()).unwrap();
    assert_eq!(checked.identity.username, "alice");
    assert_eq!(checked.identity.groups, ["engineering", "vpn-users"]);
}

#[test]
fn replay_cache_is_bounded_and_forgets_expired_ids() {
    let mut c = ReplayCache::new(2);
    let n = now();
    let later = n + Duration::from_secs(60);
    assert!(c.insert("a", later, n));
    assert!(!c.insert("a", later, n));
    assert!(c.insert("b", later, n));
    // Full of live IDs: fails closed.
    assert!(!c.insert("c", later, n));
    // Once they expire, room again, and an expired ID may be seen again (its assertion is
    // refused by its own NotOnOrAfter by then).
    assert!(c.insert("c", later + Duration::from_secs(60), later));
    assert!(c.insert("a", later + Duration::from_secs(60), later));
    assert_eq!(c.len(), 2);
}

#[test]
fn authn_request_for_the_redirect_binding() {
    let sp = sp();
    let r = sp.authn_request("state-123").unwrap();
    assert!(r.id.starts_with('_') && r.id.len() == 33, "{}", r.id);
    let (base, query) = r.url.split_once('?').unwrap();
    assert_eq!(base, "https://idp.example.test/sso");
    let params: HashMap<String, String> = query
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (
                k.to_owned(),
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .unwrap()
                    .into_owned(),
            )
        })
        .collect();
    assert_eq!(params["RelayState"], "state-123");
    let deflated = STANDARD.decode(&params["SAMLRequest"]).unwrap();
    let mut xml = String::new();
    flate2::read::DeflateDecoder::new(&deflated[..])
        .read_to_string(&mut xml)
        .unwrap();
    let doc = parse_strict(&xml).unwrap();
    let root = doc.get_root_element().unwrap();
    assert!(is(&root, NS_PROTOCOL, "AuthnRequest"), "{xml}");
    assert_eq!(root.get_attribute("ID").as_deref(), Some(r.id.as_str()));
    assert_eq!(
        root.get_attribute("Destination").as_deref(),
        Some("https://idp.example.test/sso")
    );
    assert_eq!(
        root.get_attribute("AssertionConsumerServiceURL").as_deref(),
        Some(ACS)
    );
    assert_eq!(
        root.get_attribute("ProtocolBinding").as_deref(),
        Some(HTTP_POST)
    );
    parse_time(&root.get_attribute("IssueInstant").unwrap()).unwrap();
    assert_eq!(
        child(&root, NS_ASSERTION, "Issuer").unwrap().get_content(),
        SP
    );
    assert_ne!(sp.authn_request("").unwrap().id, r.id);
    assert!(!sp.authn_request("").unwrap().url.contains("RelayState"));
    assert!(sp.authn_request(&"x".repeat(81)).is_err());
}

#[test]
fn sp_metadata_names_our_acs_and_wants_signed_assertions() {
    let xml = sp().sp_metadata();
    let doc = parse_strict(&xml).unwrap();
    let root = doc.get_root_element().unwrap();
    const MD: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
    assert!(is(&root, MD, "EntityDescriptor"));
    assert_eq!(root.get_attribute("entityID").as_deref(), Some(SP));
    let sp_sso = child(&root, MD, "SPSSODescriptor").unwrap();
    assert_eq!(
        sp_sso.get_attribute("WantAssertionsSigned").as_deref(),
        Some("true")
    );
    let acs = child(&sp_sso, MD, "AssertionConsumerService").unwrap();
    assert_eq!(acs.get_attribute("Binding").as_deref(), Some(HTTP_POST));
    assert_eq!(acs.get_attribute("Location").as_deref(), Some(ACS));
    assert!(child(&sp_sso, MD, "NameIDFormat").is_some());
}

#[test]
fn settings_are_checked() {
    assert!(matches!(
        SamlSpSettings::new(IDP, "https://idp/sso", b"not a certificate", PUBLIC_URL),
        Err(SamlError::Settings(_))
    ));
    // A key where a certificate belongs (made now: no key is kept in the source).
    let key_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    assert!(matches!(
        SamlSpSettings::new(IDP, "https://idp/sso", key_pem.as_bytes(), PUBLIC_URL),
        Err(SamlError::Settings(_))
    ));
    let s = SamlSpSettings::new(
        IDP,
        "ftp://idp/sso",
        &idp_key().cert_pem,
        "https://vpn.example.test/",
    )
    .unwrap();
    assert_eq!(s.acs_url, ACS);
    assert_eq!(s.sp_entity_id, SP);
    assert!(matches!(
        SamlServiceProvider::new(s),
        Err(SamlError::Settings(_))
    ));
    // DER works as well as PEM.
    let der = parse_certificates(&idp_key().cert_pem).unwrap().remove(0);
    assert_eq!(parse_certificates(&der).unwrap(), vec![der]);
}
