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
    /// Minutes between checks of a connected user's account and groups.
    pub recheck_minutes: u32,
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
pub const DEFAULT_RECHECK_MINUTES: u32 = 5;
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
