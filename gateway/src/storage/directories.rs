//! Directories (LDAP / Active Directory) and TOTP enrolments: create, modify, delete,
//! describe; the secrets the daemon reads.

use crate::model::{
    CreateDirectoryRequest, Directory, DirectoryPreset, DirectorySecrets, GroupMode, MfaMode,
    ModifyDirectoryRequest, DEFAULT_DIRECTORY_TIMEOUT_MS, DEFAULT_RADIUS_RETRIES,
    DEFAULT_RADIUS_TIMEOUT_MS, DEFAULT_RECHECK_SECONDS, DIRECTORY_ID_PREFIX,
};

use super::*;

const DIRECTORY_COLS: &str = "id, name, description, urls, base_dn, bind_dn, \
    bind_password IS NOT NULL, preset, user_filter, groups_mode, ca_pem, allow_plaintext, realm, \
    timeout_ms, recheck_seconds, mfa, radius_server, radius_timeout_ms, radius_retries, \
    radius_secret IS NOT NULL, created_at";

fn u32_col(r: &Row<'_>, i: usize) -> sql::Result<u32> {
    u32::try_from(r.get::<_, i64>(i)?).map_err(|_| conversion_error(i, "out of range".into()))
}

fn directory_row(r: &Row<'_>) -> sql::Result<Directory> {
    let urls: String = r.get(3)?;
    Ok(Directory {
        directory_id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        urls: urls.lines().map(str::to_string).collect(),
        base_dn: r.get(4)?,
        bind_dn: r.get(5)?,
        bind_password_set: r.get(6)?,
        preset: col_enum(r, 7, DirectoryPreset::parse)?,
        user_filter: r.get(8)?,
        groups: col_enum(r, 9, GroupMode::parse)?,
        ca_pem: r.get(10)?,
        allow_plaintext: r.get(11)?,
        realm: r.get(12)?,
        timeout_ms: u32_col(r, 13)?,
        recheck_seconds: u32_col(r, 14)?,
        mfa: col_enum(r, 15, MfaMode::parse)?,
        radius_server: r.get(16)?,
        radius_timeout_ms: u32_col(r, 17)?,
        radius_retries: u32_col(r, 18)?,
        radius_secret_set: r.get(19)?,
        creation_time: ts(r, 20)?,
    })
}

fn directory_not_found(id: &str) -> ApiError {
    ApiError::new(
        codes::DIRECTORY_NOT_FOUND,
        format!("directory-id: directory {id} does not exist (see `cvpn directory list`)"),
    )
}

/// The directory `id` (format checked first).
pub(super) fn load_directory(db: &Db, id: &str) -> Result<Directory, ApiError> {
    validate::id("directory-id", DIRECTORY_ID_PREFIX, id)?;
    db.prepare_cached(&format!(
        "SELECT {DIRECTORY_COLS} FROM directories WHERE id = ?1"
    ))?
    .query_row([id], directory_row)
    .optional()?
    .ok_or_else(|| directory_not_found(id))
}

/// A directory by id or by name.
fn resolve(db: &Db, id_or_name: &str) -> Result<Directory, ApiError> {
    if id_or_name.starts_with(DIRECTORY_ID_PREFIX) {
        return load_directory(db, id_or_name);
    }
    db.prepare_cached(&format!(
        "SELECT {DIRECTORY_COLS} FROM directories WHERE name = ?1"
    ))?
    .query_row([id_or_name], directory_row)
    .optional()?
    .ok_or_else(|| directory_not_found(id_or_name))
}

fn parse_enum<T>(
    field: &str,
    s: &str,
    parse: fn(&str) -> Option<T>,
    all: &str,
) -> Result<T, ApiError> {
    parse(s).ok_or_else(|| ApiError::invalid(field, format!("{s:?}: give one of {all}")))
}

/// A secret as given: a file's trailing line break removed; `""` clears it.
fn optional_secret(field: &str, s: &str) -> Result<Option<String>, ApiError> {
    let s = s.trim_end_matches(['\n', '\r']);
    if s.is_empty() {
        return Ok(None);
    }
    validate::secret(field, s).map(Some)
}

fn optional_text(
    field: &str,
    s: &str,
    check: fn(&str, &str) -> Result<String, ApiError>,
) -> Result<Option<String>, ApiError> {
    if s.is_empty() {
        Ok(None)
    } else {
        check(field, s).map(Some)
    }
}

fn ca(field: &str, s: &str) -> Result<String, ApiError> {
    validate::client_ca(field, s)?;
    Ok(s.to_string())
}

fn realm(field: &str, s: &str) -> Result<String, ApiError> {
    if s.len() > 253
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    {
        return Err(ApiError::invalid(
            field,
            format!("{s:?}: a DNS realm such as EXAMPLE.COM"),
        ));
    }
    Ok(s.to_string())
}

/// The re-check interval in seconds, from minutes or seconds (not both).
fn recheck(minutes: Option<i64>, seconds: Option<i64>) -> Result<Option<u32>, ApiError> {
    match (minutes, seconds) {
        (Some(_), Some(_)) => Err(ApiError::combination(
            "give recheck-minutes or recheck-seconds, not both",
        )),
        (Some(m), None) => Ok(Some(
            validate::bounded("recheck-minutes", m, 1, 1440, "minutes")? * 60,
        )),
        (None, Some(s)) => Ok(Some(validate::bounded(
            "recheck-seconds",
            s,
            10,
            86_400,
            "seconds",
        )?)),
        (None, None) => Ok(None),
    }
}

/// The combination rules every directory must keep.
fn check_combination(d: &Directory, secrets: &DirectorySecrets) -> Result<(), ApiError> {
    if d.mfa == MfaMode::Radius && (d.radius_server.is_none() || secrets.radius_secret.is_none()) {
        return Err(ApiError::combination(
            "mfa radius needs radius-server (HOST:PORT) and radius-secret",
        ));
    }
    if d.bind_dn.is_some() != secrets.bind_password.is_some() {
        return Err(ApiError::combination(
            "bind-dn and bind-password go together (neither: anonymous search)",
        ));
    }
    Ok(())
}

/// Applies the given fields of a request (each validated, naming its field), then the rules
/// the fields must keep together.
fn apply_changes(
    d: &mut Directory,
    secrets: &mut DirectorySecrets,
    req: &ModifyDirectoryRequest,
) -> Result<(), ApiError> {
    if let Some(s) = &req.name {
        d.name = validate::directory_name("name", s)?;
    }
    if let Some(s) = &req.description {
        d.description = validate::description("description", Some(s))?;
    }
    if let Some(u) = &req.urls {
        d.urls = validate::directory_urls("urls", u)?;
    }
    if let Some(s) = &req.base_dn {
        d.base_dn = validate::dn("base-dn", s)?;
    }
    if let Some(s) = &req.bind_dn {
        d.bind_dn = optional_text("bind-dn", s, validate::dn)?;
    }
    if let Some(s) = &req.bind_password {
        secrets.bind_password = optional_secret("bind-password", s)?;
    }
    if let Some(s) = &req.preset {
        d.preset = parse_enum(
            "preset",
            s,
            DirectoryPreset::parse,
            "openldap, active-directory",
        )?;
    }
    if let Some(s) = &req.user_filter {
        d.user_filter = validate::user_filter("user-filter", s)?;
    }
    if let Some(s) = &req.groups {
        d.groups = parse_enum(
            "groups",
            s,
            GroupMode::parse,
            "memberof, ad-nested, groupofnames",
        )?;
    }
    if let Some(s) = &req.ca_pem {
        d.ca_pem = optional_text("ca-pem", s, ca)?;
    }
    if let Some(b) = req.allow_plaintext {
        d.allow_plaintext = b;
    }
    if let Some(s) = &req.realm {
        d.realm = optional_text("realm", s, realm)?;
    }
    if let Some(n) = req.timeout_ms {
        d.timeout_ms = validate::bounded("timeout-ms", n, 100, 60_000, "milliseconds")?;
    }
    if let Some(n) = recheck(req.recheck_minutes, req.recheck_seconds)? {
        d.recheck_seconds = n;
    }
    if let Some(s) = &req.mfa {
        d.mfa = parse_enum("mfa", s, MfaMode::parse, "none, totp, radius")?;
    }
    if let Some(s) = &req.radius_server {
        d.radius_server = optional_text("radius-server", s, validate::host_port)?;
    }
    if let Some(s) = &req.radius_secret {
        secrets.radius_secret = optional_secret("radius-secret", s)?;
    }
    if let Some(n) = req.radius_timeout_ms {
        d.radius_timeout_ms =
            validate::bounded("radius-timeout-ms", n, 100, 30_000, "milliseconds")?;
    }
    if let Some(n) = req.radius_retries {
        d.radius_retries = validate::bounded("radius-retries", n, 1, 10, "tries")?;
    }
    d.bind_password_set = secrets.bind_password.is_some();
    d.radius_secret_set = secrets.radius_secret.is_some();
    check_combination(d, secrets)
}

/// Directory names are unique.
fn check_name_free(db: &Db, d: &Directory) -> Result<(), ApiError> {
    let taken: Option<String> = db
        .prepare_cached("SELECT id FROM directories WHERE name = ?1 AND id <> ?2")?
        .query_row([&d.name, &d.directory_id], |r| r.get(0))
        .optional()?;
    match taken {
        Some(other) => Err(ApiError::new(
            codes::DUPLICATE_DIRECTORY_RESOURCE,
            format!(
                "name: directory {other} is named {:?} already; choose another name",
                d.name
            ),
        )),
        None => Ok(()),
    }
}

impl Store {
    /// Creates a directory: the required fields, then every other one as modify takes it,
    /// the preset filling in the user filter and group mode not given.
    pub fn create_directory(&self, req: &CreateDirectoryRequest) -> Result<Directory, ApiError> {
        if req.name.is_none() {
            return Err(ApiError::missing("name", "required (e.g. corp-ad)"));
        }
        if req.base_dn.is_none() {
            return Err(ApiError::missing(
                "base-dn",
                "required (e.g. dc=example,dc=com)",
            ));
        }
        validate::directory_urls("urls", &req.urls)?;
        let mut dir = Directory {
            directory_id: new_id(DIRECTORY_ID_PREFIX)?,
            name: String::new(),
            description: None,
            urls: Vec::new(),
            base_dn: String::new(),
            bind_dn: None,
            bind_password_set: false,
            preset: DirectoryPreset::Openldap,
            user_filter: String::new(),
            groups: GroupMode::Memberof,
            ca_pem: None,
            allow_plaintext: false,
            realm: None,
            timeout_ms: DEFAULT_DIRECTORY_TIMEOUT_MS,
            recheck_seconds: DEFAULT_RECHECK_SECONDS,
            mfa: MfaMode::None,
            radius_server: None,
            radius_timeout_ms: DEFAULT_RADIUS_TIMEOUT_MS,
            radius_retries: DEFAULT_RADIUS_RETRIES,
            radius_secret_set: false,
            creation_time: Timestamp(0),
        };
        let mut secrets = DirectorySecrets::default();
        let changes = ModifyDirectoryRequest::from(req.clone());
        apply_changes(&mut dir, &mut secrets, &changes)?;
        if req.user_filter.is_none() {
            dir.user_filter = dir.preset.default_user_filter().to_string();
        }
        if req.groups.is_none() {
            dir.groups = dir.preset.default_groups();
        }
        self.write(|db, now| {
            check_name_free(db, &dir)?;
            save(db, &dir, &secrets, now, true)?;
            load_directory(db, &dir.directory_id)
        })
    }

    /// Modifies a directory; running endpoints that use it take the change at once (new
    /// sign-ins and the next re-checks).
    pub fn modify_directory(
        &self,
        id_or_name: &str,
        req: &ModifyDirectoryRequest,
    ) -> Result<Directory, ApiError> {
        self.write(|db, now| {
            let mut d = resolve(db, id_or_name)?;
            let mut secrets = load_secrets(db, &d.directory_id)?;
            apply_changes(&mut d, &mut secrets, req)?;
            check_name_free(db, &d)?;
            save(db, &d, &secrets, now, false)?;
            load_directory(db, &d.directory_id)
        })
    }

    /// Deletes a directory; refused while an endpoint uses it.
    pub fn delete_directory(&self, id_or_name: &str) -> Result<Directory, ApiError> {
        self.write(|db, _now| {
            let d = resolve(db, id_or_name)?;
            let users: Vec<String> = query(
                db,
                "SELECT id FROM endpoints WHERE directory_id = ?1 AND state <> 'deleted' ORDER BY id",
                [&d.directory_id],
                |r| r.get(0),
            )?;
            if !users.is_empty() {
                return Err(ApiError::incorrect_state(format!(
                    "directory {} is used by endpoint(s) {}: delete them first",
                    d.directory_id,
                    users.join(", ")
                )));
            }
            // Deleted endpoints keep their row for the retention period: they forget it.
            db.prepare_cached("UPDATE endpoints SET directory_id = NULL WHERE directory_id = ?1")?
                .execute([&d.directory_id])?;
            db.prepare_cached("DELETE FROM directories WHERE id = ?1")?
                .execute([&d.directory_id])?;
            Ok(d)
        })
    }

    /// One directory, by id or name.
    pub fn describe_directory(&self, id_or_name: &str) -> Result<Directory, ApiError> {
        self.read(|db| resolve(db, id_or_name))
    }

    /// All directories, by name.
    pub fn describe_directories(&self) -> Result<Vec<Directory>, ApiError> {
        self.read(|db| {
            query(
                db,
                &format!("SELECT {DIRECTORY_COLS} FROM directories ORDER BY name"),
                (),
                directory_row,
            )
        })
    }

    /// A directory's secrets (the daemon's; never returned by the API).
    pub fn directory_secrets(&self, id: &str) -> Result<DirectorySecrets, ApiError> {
        self.read(|db| {
            load_directory(db, id)?;
            load_secrets(db, id)
        })
    }

    /// The endpoints that use a directory (not deleted ones).
    pub fn endpoints_using_directory(&self, id: &str) -> Result<Vec<String>, ApiError> {
        self.read(|db| {
            query(
                db,
                "SELECT id FROM endpoints WHERE directory_id = ?1 AND state <> 'deleted' ORDER BY id",
                [id],
                |r| r.get(0),
            )
        })
    }

    /// Stores a user's TOTP secret (the caller made it). Refuses a second enrolment unless
    /// `replace`. Returns the directory.
    pub fn enroll_mfa(
        &self,
        id_or_name: &str,
        username: &str,
        secret: &[u8],
        replace: bool,
    ) -> Result<Directory, ApiError> {
        let username = validate::username("username", username)?;
        self.write(|db, now| {
            let d = resolve(db, id_or_name)?;
            if d.mfa != MfaMode::Totp {
                return Err(ApiError::incorrect_state(format!(
                    "directory {} uses mfa {}; enrolment is for mfa totp \
                     (`cvpn directory modify {} --mfa totp`)",
                    d.directory_id, d.mfa, d.directory_id
                )));
            }
            let exists: bool = db
                .prepare_cached(
                    "SELECT COUNT(*) > 0 FROM mfa_enrollments WHERE directory_id = ?1 AND username = ?2",
                )?
                .query_row(params![d.directory_id, username], |r| r.get(0))?;
            if exists && !replace {
                return Err(ApiError::new(
                    codes::DUPLICATE_DIRECTORY_RESOURCE,
                    format!("{username} is enrolled already; give --replace to issue a new secret (the old one stops working)"),
                ));
            }
            db.prepare_cached(
                "INSERT INTO mfa_enrollments (directory_id, username, secret, created_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (directory_id, username) DO UPDATE \
                 SET secret = excluded.secret, created_at = excluded.created_at",
            )?
            .execute(params![d.directory_id, username, secret, now.0])?;
            Ok(d)
        })
    }

    /// Removes a user's TOTP secret.
    pub fn remove_mfa(&self, id_or_name: &str, username: &str) -> Result<Directory, ApiError> {
        self.write(|db, _now| {
            let d = resolve(db, id_or_name)?;
            let n = db
                .prepare_cached(
                    "DELETE FROM mfa_enrollments WHERE directory_id = ?1 AND username = ?2",
                )?
                .execute(params![d.directory_id, username])?;
            if n == 0 {
                return Err(ApiError::new(
                    codes::MFA_ENROLLMENT_NOT_FOUND,
                    format!(
                        "username: {username} has no MFA enrolment in directory {}",
                        d.directory_id
                    ),
                ));
            }
            Ok(d)
        })
    }

    /// Every TOTP secret of a directory: (user name, secret bytes).
    pub fn mfa_secrets(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        self.read(|db| {
            query(
                db,
                "SELECT username, secret FROM mfa_enrollments WHERE directory_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// The user names enrolled for TOTP (never the secrets).
    pub fn mfa_enrolled_users(&self, id_or_name: &str) -> Result<Vec<String>, ApiError> {
        self.read(|db| {
            let d = resolve(db, id_or_name)?;
            query(
                db,
                "SELECT username FROM mfa_enrollments WHERE directory_id = ?1 ORDER BY username",
                [&d.directory_id],
                |r| r.get(0),
            )
        })
    }

    /// The directory of an endpoint, if it uses one.
    pub fn endpoint_directory(&self, endpoint_id: &str) -> Result<Option<Directory>, ApiError> {
        self.read(|db| {
            let ep = load_endpoint(db, endpoint_id)?;
            ep.authentication_options
                .iter()
                .find_map(|o| match o {
                    AuthenticationOption::DirectoryServiceAuthentication { directory_id } => {
                        Some(directory_id.clone())
                    }
                    _ => None,
                })
                .map(|id| load_directory(db, &id))
                .transpose()
        })
    }
}

fn load_secrets(db: &Db, id: &str) -> Result<DirectorySecrets, ApiError> {
    Ok(db
        .prepare_cached("SELECT bind_password, radius_secret FROM directories WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(DirectorySecrets {
                bind_password: r.get(0)?,
                radius_secret: r.get(1)?,
            })
        })?)
}

fn save(
    db: &Db,
    d: &Directory,
    secrets: &DirectorySecrets,
    now: Timestamp,
    insert: bool,
) -> Result<(), ApiError> {
    let sql = if insert {
        "INSERT INTO directories (id, name, description, urls, base_dn, bind_dn, bind_password, \
         preset, user_filter, groups_mode, ca_pem, allow_plaintext, realm, timeout_ms, \
         recheck_seconds, mfa, radius_server, radius_secret, radius_timeout_ms, radius_retries, \
         created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
         ?16, ?17, ?18, ?19, ?20, ?21)"
    } else {
        "UPDATE directories SET name = ?2, description = ?3, urls = ?4, base_dn = ?5, \
         bind_dn = ?6, bind_password = ?7, preset = ?8, user_filter = ?9, groups_mode = ?10, \
         ca_pem = ?11, allow_plaintext = ?12, realm = ?13, timeout_ms = ?14, \
         recheck_seconds = ?15, mfa = ?16, radius_server = ?17, radius_secret = ?18, \
         radius_timeout_ms = ?19, radius_retries = ?20 WHERE id = ?1 AND ?21 = ?21"
    };
    db.prepare_cached(sql)?.execute(params![
        d.directory_id,
        d.name,
        d.description,
        d.urls.join("\n"),
        d.base_dn,
        d.bind_dn,
        secrets.bind_password,
        d.preset.as_str(),
        d.user_filter,
        d.groups.as_str(),
        d.ca_pem,
        d.allow_plaintext,
        d.realm,
        d.timeout_ms,
        d.recheck_seconds,
        d.mfa.as_str(),
        d.radius_server,
        secrets.radius_secret,
        d.radius_timeout_ms,
        d.radius_retries,
        now.0,
    ])?;
    Ok(())
}
