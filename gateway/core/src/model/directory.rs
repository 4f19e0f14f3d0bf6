//! Directories: an LDAP server (OpenLDAP, or Active Directory's domain controllers) that
//! endpoints sign users in against, with the groups authorization rules name and an optional
//! second factor. A directory is a resource of its own; any number of endpoints use one.
//!
//! Secrets (the service account's bind password, the RADIUS shared secret) are not part of
//! [`Directory`]: they live in [`DirectorySecrets`], which no describe call returns and whose
//! `Debug` hides them.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::resources::{string_enum, Timestamp};

string_enum!(
    /// Which kind of directory: sets the defaults of the user filter and group mode, and how
    /// account states (disabled, locked, expired) are read.
    DirectoryPreset {
        /// OpenLDAP (or any RFC 4519 directory): users by `uid`, groups from `memberOf`.
        Openldap = "openldap",
        /// Active Directory: users by `sAMAccountName` (or `user@realm`), nested groups by the
        /// in-chain rule, `userAccountControl` and `accountExpires` read for the account state.
        ActiveDirectory = "active-directory",
    }
);

string_enum!(
    /// How a user's groups are found.
    GroupMode {
        /// The user entry's `memberOf` values (OpenLDAP's memberof or dynlist overlay, AD's
        /// direct groups).
        Memberof = "memberof",
        /// Active Directory's nested groups: `(member:1.2.840.113556.1.4.1941:=<user DN>)`, with
        /// each group's SID.
        AdNested = "ad-nested",
        /// `groupOfNames` entries whose `member` is the user, searched recursively (nested
        /// groups on directories without an in-chain rule).
        Groupofnames = "groupofnames",
    }
);

string_enum!(
    /// The second factor a directory asks for.
    MfaMode {
        /// Password only.
        None = "none",
        /// RFC 6238 codes from an authenticator app; secrets enrolled through `cvpn mfa enroll`.
        Totp = "totp",
        /// The code is checked by a RADIUS server (AWS's Active Directory MFA).
        Radius = "radius",
    }
);

/// A directory as describe calls return it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Directory {
    /// `cvpn-directory-<17 hex>`.
    pub directory_id: String,
    /// A name for people (unique).
    pub name: String,
    /// Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `ldap://` (StartTLS) or `ldaps://` URLs, tried in order.
    pub urls: Vec<String>,
    /// Where users and groups are searched.
    pub base_dn: String,
    /// The service account that searches; `None`: anonymous search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_dn: Option<String>,
    /// True when a bind password is stored (never shown).
    pub bind_password_set: bool,
    pub preset: DirectoryPreset,
    /// The search filter; `{username}` is replaced by the escaped user name.
    pub user_filter: String,
    pub groups: GroupMode,
    /// The CA bundle (PEM) that signs the servers' certificates; `None`: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// `ldap://` without StartTLS (passwords in clear on the wire): only when the operator
    /// says so.
    pub allow_plaintext: bool,
    /// Active Directory: the realm appended to names without one (`user@realm` binds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Each lookup's deadline, milliseconds.
    pub timeout_ms: u32,
    /// Seconds between checks of a connected user's account and groups (requests give
    /// minutes, or seconds for finer control).
    pub recheck_seconds: u32,
    pub mfa: MfaMode,
    /// `HOST:PORT` of the RADIUS server (with `mfa = radius`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius_server: Option<String>,
    /// RADIUS: each try's timeout, milliseconds, and the number of tries.
    pub radius_timeout_ms: u32,
    pub radius_retries: u32,
    /// True when a RADIUS shared secret is stored (never shown).
    pub radius_secret_set: bool,
    pub creation_time: Timestamp,
}

/// A directory's secrets (the store keeps them; describe never returns them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DirectorySecrets {
    pub bind_password: Option<String>,
    pub radius_secret: Option<String>,
}

impl fmt::Debug for DirectorySecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("DirectorySecrets")
            .field("bind_password", &shown(&self.bind_password))
            .field("radius_secret", &shown(&self.radius_secret))
            .finish()
    }
}

/// Defaults.
pub const DEFAULT_DIRECTORY_TIMEOUT_MS: u32 = 5_000;
pub const DEFAULT_RECHECK_SECONDS: u32 = 5 * 60;
pub const DEFAULT_RADIUS_TIMEOUT_MS: u32 = 3_000;
pub const DEFAULT_RADIUS_RETRIES: u32 = 3;

impl DirectoryPreset {
    /// The user filter of the preset.
    pub fn default_user_filter(self) -> &'static str {
        match self {
            DirectoryPreset::Openldap => "(&(objectClass=inetOrgPerson)(uid={username}))",
            DirectoryPreset::ActiveDirectory => {
                "(&(objectClass=user)(objectCategory=person)(sAMAccountName={username}))"
            }
        }
    }

    /// The group mode of the preset.
    pub fn default_groups(self) -> GroupMode {
        match self {
            DirectoryPreset::Openldap => GroupMode::Memberof,
            DirectoryPreset::ActiveDirectory => GroupMode::AdNested,
        }
    }
}

/// Create a directory. Required: `name`, `urls`, `base-dn`; the preset (default `openldap`)
/// gives the user filter and group mode unless they are given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CreateDirectoryRequest {
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    pub base_dn: Option<String>,
    pub bind_dn: Option<String>,
    /// Write-only.
    pub bind_password: Option<String>,
    /// `openldap` (default) or `active-directory`.
    pub preset: Option<String>,
    pub user_filter: Option<String>,
    /// `memberof`, `ad-nested` or `groupofnames`.
    pub groups: Option<String>,
    pub ca_pem: Option<String>,
    pub allow_plaintext: Option<bool>,
    pub realm: Option<String>,
    pub timeout_ms: Option<i64>,
    /// Minutes between re-checks of connected users (default 5).
    pub recheck_minutes: Option<i64>,
    /// The same in seconds (10 or more); not with `recheck-minutes`.
    pub recheck_seconds: Option<i64>,
    /// `none` (default), `totp` or `radius`.
    pub mfa: Option<String>,
    pub radius_server: Option<String>,
    /// Write-only.
    pub radius_secret: Option<String>,
    pub radius_timeout_ms: Option<i64>,
    pub radius_retries: Option<i64>,
}

/// Modify a directory: only the given fields change; `""` clears an optional text field
/// (`description`, `bind-dn`, `bind-password`, `ca-pem`, `realm`, `radius-server`,
/// `radius-secret`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModifyDirectoryRequest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub urls: Option<Vec<String>>,
    pub base_dn: Option<String>,
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    pub preset: Option<String>,
    pub user_filter: Option<String>,
    pub groups: Option<String>,
    pub ca_pem: Option<String>,
    pub allow_plaintext: Option<bool>,
    pub realm: Option<String>,
    pub timeout_ms: Option<i64>,
    pub recheck_minutes: Option<i64>,
    pub recheck_seconds: Option<i64>,
    pub mfa: Option<String>,
    pub radius_server: Option<String>,
    pub radius_secret: Option<String>,
    pub radius_timeout_ms: Option<i64>,
    pub radius_retries: Option<i64>,
}

/// A create request as the changes it makes to an empty directory (the store applies both
/// the same way).
impl From<CreateDirectoryRequest> for ModifyDirectoryRequest {
    fn from(r: CreateDirectoryRequest) -> Self {
        ModifyDirectoryRequest {
            name: r.name,
            description: r.description,
            urls: Some(r.urls),
            base_dn: r.base_dn,
            bind_dn: r.bind_dn,
            bind_password: r.bind_password,
            preset: r.preset,
            user_filter: r.user_filter,
            groups: r.groups,
            ca_pem: r.ca_pem,
            allow_plaintext: r.allow_plaintext,
            realm: r.realm,
            timeout_ms: r.timeout_ms,
            recheck_minutes: r.recheck_minutes,
            recheck_seconds: r.recheck_seconds,
            mfa: r.mfa,
            radius_server: r.radius_server,
            radius_secret: r.radius_secret,
            radius_timeout_ms: r.radius_timeout_ms,
            radius_retries: r.radius_retries,
        }
    }
}

/// Enrol a user for TOTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MfaEnrollRequest {
    pub username: Option<String>,
    /// Re-enrol a user who has a secret already (the old one stops working).
    #[serde(default)]
    pub replace: bool,
}

/// A TOTP enrolment, shown once: the secret and the `otpauth://` URI for an authenticator
/// app (a QR code of it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MfaEnrollment {
    pub directory_id: String,
    pub username: String,
    /// Base32, no padding.
    pub secret: String,
    pub otpauth_uri: String,
}

impl fmt::Debug for MfaEnrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MfaEnrollment")
            .field("directory_id", &self.directory_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Directories, as `GET /v1/directories` returns them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DirectoryList {
    pub directories: Vec<Directory>,
}
