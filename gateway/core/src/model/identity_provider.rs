//! Identity providers: an OpenID Connect or SAML 2.0 identity provider (Okta, Entra ID,
//! Keycloak, Google, …) that endpoints with federated authentication send users to for single
//! sign-on. An identity provider is a resource of its own; any number of endpoints use one
//! (AWS's `federated-authentication` names it where AWS names an IAM SAML provider).
//!
//! The OIDC client secret is not part of [`IdentityProvider`]: it lives in [`IdpSecrets`],
//! which no describe call returns and whose `Debug` hides it.
//!
//! A SAML provider keeps the metadata document as given, and what the sign-in code needs from
//! it, read once when it is stored ([`SamlSettings::entity_id`], [`SamlSettings::sso_url`],
//! [`SamlSettings::signing_certificates`]). Reading the metadata checks its form only: the
//! signatures of assertions are the sign-in code's to check.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::resources::{string_enum, Timestamp};

string_enum!(
    /// The protocol an identity provider speaks.
    IdpProtocol {
        /// OpenID Connect (authorization code flow with PKCE).
        Oidc = "oidc",
        /// SAML 2.0 (Web browser SSO profile).
        Saml = "saml",
    }
);

string_enum!(
    /// The binding of the identity provider's single sign-on service that the gateway sends
    /// authentication requests to.
    SamlBinding {
        /// `urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect` (preferred when both are
        /// offered).
        HttpRedirect = "http-redirect",
        /// `urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST`.
        HttpPost = "http-post",
    }
);

/// The SAML binding URI of HTTP-Redirect.
pub const SAML_BINDING_HTTP_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
/// The SAML binding URI of HTTP-POST.
pub const SAML_BINDING_HTTP_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";

/// OpenID Connect settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OidcSettings {
    /// The issuer URL (`https://`; `http://` only for loopback hosts), as the provider's
    /// discovery document and ID tokens give it.
    pub issuer: String,
    /// The gateway's client id at the provider.
    pub client_id: String,
    /// The ID token / userinfo claim holding the user's groups (default `groups`).
    pub groups_claim: String,
    /// The claim holding the user name (default `email`).
    pub username_claim: String,
    /// The scopes asked for; always includes `openid` (default `openid email profile`).
    pub scopes: Vec<String>,
}

/// SAML 2.0 settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SamlSettings {
    /// The identity provider's metadata document, as given (at most
    /// [`MAX_SAML_METADATA_BYTES`]).
    pub metadata_xml: String,
    /// Where the metadata came from, if fetched from a URL (informational: the stored
    /// document is what is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_url: Option<String>,
    /// The assertion attribute holding the user's groups (default `memberOf`).
    pub groups_attribute: String,
    /// The assertion attribute holding the user name; `None`: the subject's NameID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_attribute: Option<String>,
    /// From the metadata: the `entityID` of the identity provider (the `Issuer` of its
    /// responses).
    pub entity_id: String,
    /// From the metadata: the `Location` of the single sign-on service.
    pub sso_url: String,
    /// From the metadata: the binding of [`Self::sso_url`].
    pub sso_binding: SamlBinding,
    /// From the metadata: the certificates the identity provider signs with (`KeyDescriptor`
    /// with `use="signing"` or without `use`), base64 DER without white space, in document
    /// order.
    pub signing_certificates: Vec<String>,
}

/// An identity provider as describe calls return it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IdentityProvider {
    /// `idp-<17 hex>`.
    pub id: String,
    /// A name for people (unique).
    pub name: String,
    /// Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `oidc` or `saml` (immutable).
    pub protocol: IdpProtocol,
    /// With `protocol = oidc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcSettings>,
    /// With `protocol = saml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saml: Option<SamlSettings>,
    /// True when an OIDC client secret is stored (never shown).
    pub client_secret_set: bool,
    /// Seconds between refreshes of a connected user's OIDC session (its groups and whether
    /// the provider still accepts the user).
    pub recheck_seconds: u32,
    pub creation_time: Timestamp,
    /// What to register at the provider, from the daemon's web listener (not stored; absent
    /// without one): OIDC, the redirect URI `{public_url}/oidc/callback`; SAML, the service
    /// provider's metadata `{public_url}/saml/metadata` (also its entity id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp_metadata_url: Option<String>,
}

/// An identity provider's secrets (the store keeps them; describe never returns them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IdpSecrets {
    /// The OIDC client secret.
    pub client_secret: Option<String>,
}

impl fmt::Debug for IdpSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdpSecrets")
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Defaults and limits.
pub const DEFAULT_IDP_RECHECK_SECONDS: u32 = 15 * 60;
pub const MIN_IDP_RECHECK_SECONDS: u32 = 10;
pub const DEFAULT_OIDC_GROUPS_CLAIM: &str = "groups";
pub const DEFAULT_OIDC_USERNAME_CLAIM: &str = "email";
pub const DEFAULT_OIDC_SCOPES: [&str; 3] = ["openid", "email", "profile"];
pub const DEFAULT_SAML_GROUPS_ATTRIBUTE: &str = "memberOf";
pub const MAX_SAML_METADATA_BYTES: usize = 256 * 1024;

/// Create an identity provider. Required: `name`, and either `issuer`, `client-id` and
/// `client-secret` (OIDC) or `metadata-xml` (SAML). `protocol` may be left out: the fields
/// given tell it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CreateIdentityProviderRequest {
    pub name: Option<String>,
    pub description: Option<String>,
    /// `oidc` or `saml`.
    pub protocol: Option<String>,
    /// OIDC: the issuer URL.
    pub issuer: Option<String>,
    /// OIDC.
    pub client_id: Option<String>,
    /// OIDC; write-only.
    pub client_secret: Option<String>,
    /// OIDC (default `groups`).
    pub groups_claim: Option<String>,
    /// OIDC (default `email`).
    pub username_claim: Option<String>,
    /// OIDC (default `openid email profile`; `openid` is added when missing).
    pub scopes: Option<Vec<String>>,
    /// SAML: the metadata document.
    pub metadata_xml: Option<String>,
    /// SAML: where the metadata was fetched from (informational).
    pub metadata_url: Option<String>,
    /// SAML (default `memberOf`).
    pub groups_attribute: Option<String>,
    /// SAML (default: the NameID).
    pub username_attribute: Option<String>,
    /// Minutes between OIDC session refreshes (default 15).
    pub recheck_minutes: Option<i64>,
    /// The same in seconds (10 or more); not with `recheck-minutes`.
    pub recheck_seconds: Option<i64>,
}

/// Modify an identity provider: only the given fields change; `""` clears an optional text
/// field (`description`, `metadata-url`, `username-attribute`). The protocol cannot change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModifyIdentityProviderRequest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub protocol: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub groups_claim: Option<String>,
    pub username_claim: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub metadata_xml: Option<String>,
    pub metadata_url: Option<String>,
    pub groups_attribute: Option<String>,
    pub username_attribute: Option<String>,
    pub recheck_minutes: Option<i64>,
    pub recheck_seconds: Option<i64>,
}

/// A create request as the changes it makes to an empty identity provider (the store applies
/// both the same way).
impl From<CreateIdentityProviderRequest> for ModifyIdentityProviderRequest {
    fn from(r: CreateIdentityProviderRequest) -> Self {
        ModifyIdentityProviderRequest {
            name: r.name,
            description: r.description,
            protocol: r.protocol,
            issuer: r.issuer,
            client_id: r.client_id,
            client_secret: r.client_secret,
            groups_claim: r.groups_claim,
            username_claim: r.username_claim,
            scopes: r.scopes,
            metadata_xml: r.metadata_xml,
            metadata_url: r.metadata_url,
            groups_attribute: r.groups_attribute,
            username_attribute: r.username_attribute,
            recheck_minutes: r.recheck_minutes,
            recheck_seconds: r.recheck_seconds,
        }
    }
}

impl ModifyIdentityProviderRequest {
    /// The OIDC fields given (their request names).
    pub fn oidc_fields(&self) -> Vec<&'static str> {
        [
            ("issuer", self.issuer.is_some()),
            ("client-id", self.client_id.is_some()),
            ("client-secret", self.client_secret.is_some()),
            ("groups-claim", self.groups_claim.is_some()),
            ("username-claim", self.username_claim.is_some()),
            ("scopes", self.scopes.is_some()),
            ("recheck-minutes", self.recheck_minutes.is_some()),
            ("recheck-seconds", self.recheck_seconds.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, given)| given.then_some(n))
        .collect()
    }

    /// The SAML fields given (their request names).
    pub fn saml_fields(&self) -> Vec<&'static str> {
        [
            ("metadata-xml", self.metadata_xml.is_some()),
            ("metadata-url", self.metadata_url.is_some()),
            ("groups-attribute", self.groups_attribute.is_some()),
            ("username-attribute", self.username_attribute.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, given)| given.then_some(n))
        .collect()
    }
}

/// Identity providers, as `GET /v1/identity-providers` returns them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IdentityProviderList {
    pub identity_providers: Vec<IdentityProvider>,
}

/// What [`crate::model::validate::saml_metadata`] reads from a metadata document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamlMetadata {
    pub entity_id: String,
    pub sso_url: String,
    pub sso_binding: SamlBinding,
    pub signing_certificates: Vec<String>,
}
