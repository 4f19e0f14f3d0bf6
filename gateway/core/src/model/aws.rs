//! What cvpn keeps for its AWS-compatible API (`gateway::aws`): the access keys that sign its
//! requests and the certificates imported through its ACM-compatible calls.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::resources::Timestamp;

/// Prefix of access key ids: AWS's long-term key prefix, then 16 characters of `A-Z2-7`.
pub const ACCESS_KEY_ID_PREFIX: &str = "AKIA";
/// Length of an access key id (AWS's).
pub const ACCESS_KEY_ID_LEN: usize = 20;
/// Length of a secret access key (AWS's).
pub const SECRET_ACCESS_KEY_LEN: usize = 40;
/// Most access keys the store keeps (a bound on the table; AWS allows 2 per IAM user).
pub const MAX_ACCESS_KEYS: usize = 100;
/// Most certificates imported through the ACM-compatible API (AWS's default quota is 2500).
pub const MAX_IMPORTED_CERTIFICATES: usize = 2500;

/// What an access key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessKeyPermission {
    /// Every operation.
    Full,
    /// Describe, export and list operations only.
    ReadOnly,
}

impl AccessKeyPermission {
    /// The stored and shown name (`full`, `read-only`).
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKeyPermission::Full => "full",
            AccessKeyPermission::ReadOnly => "read-only",
        }
    }

    /// Parses a stored or given name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(AccessKeyPermission::Full),
            "read-only" => Some(AccessKeyPermission::ReadOnly),
            _ => None,
        }
    }
}

impl fmt::Display for AccessKeyPermission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An access key as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AccessKey {
    /// `AKIA…`, 20 characters.
    pub access_key_id: String,
    /// What it may do.
    pub permission: AccessKeyPermission,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it was made.
    pub create_date: Timestamp,
    /// When a request it signed was last accepted (None: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<Timestamp>,
}

/// A new access key: the only time its secret is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NewAccessKey {
    /// The key as listed.
    #[serde(flatten)]
    pub key: AccessKey,
    /// The secret access key, 40 characters.
    pub secret_access_key: String,
}

impl fmt::Debug for NewAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewAccessKey")
            .field("key", &self.key)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Make an access key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CreateAccessKeyRequest {
    /// `full` (default) or `read-only`.
    pub permission: Option<String>,
    /// Free text, at most 255 characters.
    pub description: Option<String>,
}

/// The access keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AccessKeyList {
    pub access_keys: Vec<AccessKey>,
}

/// A certificate imported through the ACM-compatible API: endpoints name it by its ARN (their
/// server certificate, or their client CA). The private key is never part of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImportedCertificate {
    /// `arn:aws:acm:<region>:000000000000:certificate/<uuid>`.
    pub certificate_arn: String,
    /// The certificate, PEM.
    pub certificate: String,
    /// The chain that came with it, PEM (may be empty).
    #[serde(default)]
    pub certificate_chain: String,
    /// Whether its private key was imported (a server certificate needs one; a CA does not).
    pub has_private_key: bool,
    /// Its subject, as `CN=…,O=…`.
    pub subject: String,
    /// Its issuer.
    pub issuer: String,
    /// Its first DNS name, else its common name.
    pub domain_name: String,
    /// Its serial, `aa:bb:…` hex.
    pub serial: String,
    /// Validity.
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// `RSA_2048`, `EC_prime256v1`, … (ACM's names).
    pub key_algorithm: String,
    /// When it was (last) imported.
    pub imported_at: Timestamp,
}
