//! Access keys: the key ids and secrets that sign requests to the AWS-compatible API
//! (`crate::aws`), each with a permission. The secret is shown once, when the key is made; SigV4
//! needs it to check a signature, so it is kept as AWS keeps it (see migration 7).

use super::*;
use crate::model::{
    AccessKey, AccessKeyPermission, CreateAccessKeyRequest, NewAccessKey, ACCESS_KEY_ID_LEN,
    ACCESS_KEY_ID_PREFIX, MAX_ACCESS_KEYS, SECRET_ACCESS_KEY_LEN,
};

/// How stale `last_used` may get before a request writes it again (one write per key per
/// minute at most, not one per request).
const LAST_USED_GRANULARITY_SECS: i64 = 60;

const KEY_COLS: &str = "id, permission, description, created_at, last_used";

fn key_row(r: &Row<'_>) -> sql::Result<AccessKey> {
    Ok(AccessKey {
        access_key_id: r.get(0)?,
        permission: col_enum(r, 1, AccessKeyPermission::parse)?,
        description: r.get(2)?,
        create_date: ts(r, 3)?,
        last_used: ts_opt(r, 4)?,
    })
}

/// `n` characters drawn uniformly from `alphabet` (64 or fewer symbols, a power of two) with
/// the system's CSPRNG.
fn random_chars(alphabet: &[u8], n: usize) -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    debug_assert!(alphabet.len().is_power_of_two() && alphabet.len() <= 256);
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::internal("no system randomness for a new access key"))?;
    let mask = alphabet.len() - 1;
    Ok(bytes
        .iter()
        .map(|b| char::from(alphabet[usize::from(*b) & mask]))
        .collect())
}

/// Checks an access key id's form (`AKIA` and 16 of `A-Z2-7`).
pub fn validate_access_key_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = id.len() == ACCESS_KEY_ID_LEN
        && id.starts_with(ACCESS_KEY_ID_PREFIX)
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{id:?} is not an access key id (AKIA and 16 of A-Z, 2-7)"),
        ))
    }
}

fn access_key_not_found(id: &str) -> ApiError {
    ApiError::new(
        codes::ACCESS_KEY_NOT_FOUND,
        format!("access key {id} does not exist; `cvpn access-key list` shows the keys"),
    )
}

impl Store {
    /// Makes an access key; its secret is in the result and nowhere else that is shown.
    pub fn create_access_key(
        &self,
        req: &CreateAccessKeyRequest,
    ) -> Result<NewAccessKey, ApiError> {
        let permission = match req.permission.as_deref() {
            None => AccessKeyPermission::Full,
            Some(p) => AccessKeyPermission::parse(p).ok_or_else(|| {
                ApiError::invalid("permission", format!("{p:?}: use full or read-only"))
            })?,
        };
        let description = validate::description("description", req.description.as_deref())?;
        const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let id = format!(
            "{ACCESS_KEY_ID_PREFIX}{}",
            random_chars(BASE32, ACCESS_KEY_ID_LEN - ACCESS_KEY_ID_PREFIX.len())?
        );
        let secret = random_chars(BASE64, SECRET_ACCESS_KEY_LEN)?;
        self.write(|db, now| {
            let n: i64 = db
                .prepare_cached("SELECT count(*) FROM access_keys")?
                .query_row((), |r| r.get(0))?;
            if usize::try_from(n).unwrap_or(usize::MAX) >= MAX_ACCESS_KEYS {
                return Err(ApiError::new(
                    codes::LIMIT_EXCEEDED,
                    format!(
                        "there are {n} access keys already, the most the store keeps: delete \
                         one you no longer use (`cvpn access-key delete ID`)"
                    ),
                ));
            }
            db.prepare_cached(
                "INSERT INTO access_keys (id, secret, permission, description, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, secret, permission.as_str(), description, now.0])?;
            Ok(NewAccessKey {
                key: AccessKey {
                    access_key_id: id.clone(),
                    permission,
                    description: description.clone(),
                    create_date: now,
                    last_used: None,
                },
                secret_access_key: secret.clone(),
            })
        })
    }

    /// The access keys, oldest first (never their secrets).
    pub fn list_access_keys(&self) -> Result<Vec<AccessKey>, ApiError> {
        self.read(|db| {
            query(
                db,
                &format!("SELECT {KEY_COLS} FROM access_keys ORDER BY created_at, id"),
                (),
                key_row,
            )
        })
    }

    /// Deletes an access key: requests it signs are refused from now on.
    pub fn delete_access_key(&self, id: &str) -> Result<AccessKey, ApiError> {
        validate_access_key_id("access-key-id", id)?;
        self.write(|db, _| {
            let key = db
                .prepare_cached(&format!("SELECT {KEY_COLS} FROM access_keys WHERE id = ?1"))?
                .query_row([id], key_row)
                .optional()?
                .ok_or_else(|| access_key_not_found(id))?;
            db.prepare_cached("DELETE FROM access_keys WHERE id = ?1")?
                .execute([id])?;
            Ok(key)
        })
    }

    /// The secret and permission of access key `id`, to check a request's signature (None: no
    /// such key). Not for showing anyone.
    pub fn access_key_secret(
        &self,
        id: &str,
    ) -> Result<Option<(String, AccessKeyPermission)>, ApiError> {
        if validate_access_key_id("access-key-id", id).is_err() {
            return Ok(None);
        }
        self.read(|db| {
            Ok(db
                .prepare_cached("SELECT secret, permission FROM access_keys WHERE id = ?1")?
                .query_row([id], |r| {
                    Ok((r.get(0)?, col_enum(r, 1, AccessKeyPermission::parse)?))
                })
                .optional()?)
        })
    }

    /// Notes that a request signed with `id` was accepted (written at most once a minute).
    pub fn access_key_used(&self, id: &str) -> Result<(), ApiError> {
        self.record(|db, now| {
            db.prepare_cached(
                "UPDATE access_keys SET last_used = ?2 WHERE id = ?1 \
                 AND (last_used IS NULL OR last_used < ?3)",
            )?
            .execute(params![id, now.0, now.0 - LAST_USED_GRANULARITY_SECS])?;
            Ok(())
        })
    }
}
