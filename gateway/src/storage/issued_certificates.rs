//! The self-service portal's certificates: the endpoint's client CA key, the client
//! certificates issued with it, their revocation through the endpoint's CRL, and the portal's
//! download count.
//!
//! # The CRL of an endpoint that holds its CA key
//!
//! Revoking a user's certificates ([`Store::revoke_user_certificates`]) signs a new CRL with the
//! CA key and stores it as the endpoint's CRL, as an import would. It lists every revoked,
//! unexpired certificate the portal issued, and keeps what the endpoint's CRL said before: the
//! entries of a CRL the same CA issued (an administrator's `openssl ca -gencrl`, or ours) are
//! signed again into the new list (minus the portal's own expired ones), and CRLs of the bundle's
//! other CAs stay as they are, as further PEM blocks. An import of a CRL later
//! ([`Store::import_crl`]) keeps the portal's revocations the same way.

use std::time::Duration;

use crate::auth::issuer::{self, IssuedCertificate, IssuerError};

use super::*;

/// The validity of a CRL the store signs (`nextUpdate`). The daemon does not enforce
/// `nextUpdate`; a new list is signed at every revocation.
pub const SIGNED_CRL_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

/// The longest lifetime [`Store::issue_portal_certificate`] accepts.
pub const MAX_PORTAL_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(366 * 86_400);

/// At most this many unexpired, unrevoked portal certificates per user and endpoint: each
/// download issues one, and each would take a CRL entry if revoked, so without a bound one
/// user could fill the CRL quota and make `revoke-user` fail for everyone.
pub const MAX_LIVE_PORTAL_CERTIFICATES_PER_USER: usize = 10;

const FIELD: &str = "client-ca-key";

fn issuer_error(e: IssuerError) -> ApiError {
    match e {
        IssuerError::KeyMismatch | IssuerError::CaKey(_) => ApiError::invalid(FIELD, e),
        IssuerError::CommonName(_) => ApiError::invalid("username", e),
        IssuerError::CaCertificate(_) | IssuerError::Serial(_) | IssuerError::Sign(_) => {
            ApiError::internal(e.to_string())
        }
    }
}

/// The endpoint's client CA bundle, refusing an endpoint without one.
fn client_ca_of(db: &Db, endpoint_id: &str) -> Result<String, ApiError> {
    let ca: String = db
        .prepare_cached("SELECT client_ca_pem FROM endpoints WHERE id = ?1")?
        .query_row([endpoint_id], |r| r.get(0))?;
    if ca.is_empty() {
        return Err(ApiError::incorrect_state(format!(
            "endpoint {endpoint_id} has no client CA (it does not use certificate \
             authentication): there is no client CA key to hold and no certificate to issue"
        )));
    }
    Ok(ca)
}

/// A client CA key as given for `endpoint_id`: `None` (removed) for an empty text, else
/// checked against the endpoint's client CA certificates.
pub(super) fn checked_ca_key(
    db: &Db,
    endpoint_id: &str,
    pem: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let Some(pem) = pem.filter(|p| !p.trim().is_empty()) else {
        return Ok(None);
    };
    let ca = client_ca_of(db, endpoint_id)?;
    issuer::check_ca_key(&ca, pem).map_err(|e| match e {
        IssuerError::KeyMismatch => ApiError::combination(format!(
            "{FIELD} does not match the client CA of endpoint {endpoint_id}: the private key \
             belongs to none of its client CA certificates"
        )),
        other => issuer_error(other),
    })?;
    Ok(Some(pem.to_string()))
}

pub(super) fn stored_ca_key(db: &Db, endpoint_id: &str) -> Result<Option<String>, ApiError> {
    Ok(db
        .prepare_cached("SELECT client_ca_key_pem FROM endpoints WHERE id = ?1")?
        .query_row([endpoint_id], |r| r.get(0))?)
}

fn status_of(not_after: i64, revoked_at: Option<i64>, now: Timestamp) -> &'static str {
    if revoked_at.is_some() {
        "revoked"
    } else if not_after <= now.0 {
        "expired"
    } else {
        "valid"
    }
}

/// The CRL the endpoint should have: `base` (the CRL bundle it has, or is being given) with the
/// portal's revoked, unexpired certificates signed in, when the endpoint holds its CA key and
/// the portal revoked any (else `None`: `base` stands as it is). Also `None` without a key.
fn merged_crl(
    db: &Db,
    endpoint_id: &str,
    base: Option<&str>,
    now: Timestamp,
    always: bool,
) -> Result<Option<String>, ApiError> {
    let Some(key) = stored_ca_key(db, endpoint_id)? else {
        return Ok(None);
    };
    let ca = client_ca_of(db, endpoint_id)?;
    let portal: Vec<(String, Timestamp)> = query(
        db,
        "SELECT serial, revoked_at FROM issued_certificates WHERE endpoint_id = ?1 \
         AND revoked_at IS NOT NULL AND not_after > ?2 ORDER BY revoked_at, serial",
        params![endpoint_id, now.0],
        |r| Ok((r.get(0)?, ts(r, 1)?)),
    )?;
    if portal.is_empty() && !always {
        return Ok(None);
    }
    let split = match base {
        Some(pem) => issuer::split_crl(pem, &ca, &key).map_err(issuer_error)?,
        None => issuer::SplitCrl::default(),
    };
    if !always {
        // Nothing to add when the base already lists every one of the portal's revocations.
        let listed: std::collections::HashSet<&str> =
            split.ours.iter().map(|(s, _)| s.as_str()).collect();
        if portal.iter().all(|(s, _)| listed.contains(s.as_str())) {
            return Ok(None);
        }
    }
    let mut entries = portal;
    let mut seen: std::collections::HashSet<String> =
        entries.iter().map(|(s, _)| s.clone()).collect();
    let mut is_ours = db.prepare_cached("SELECT 1 FROM issued_certificates WHERE serial = ?1")?;
    for (serial, at) in split.ours {
        // The portal's own entries come from the table (expired ones drop out).
        if seen.contains(&serial) || is_ours.exists([&serial])? {
            continue;
        }
        seen.insert(serial.clone());
        entries.push((serial, at));
    }
    let next = Timestamp(
        now.0
            .saturating_add(i64::try_from(SIGNED_CRL_VALIDITY.as_secs()).unwrap_or(0)),
    );
    let mut pem = issuer::build_crl(&ca, &key, &entries, now, next).map_err(issuer_error)?;
    for other in split.others {
        pem.push_str(&other);
    }
    Ok(Some(pem))
}

/// Stores `pem` as the endpoint's CRL (checked as an import is); returns its revoked serials.
pub(super) fn store_crl(
    db: &Db,
    endpoint_id: &str,
    pem: &str,
    cap: usize,
) -> Result<validate::ParsedCrl, ApiError> {
    let ca = client_ca_of(db, endpoint_id)?;
    let parsed = validate::crl("certificate-revocation-list", pem, &ca, cap)?;
    db.prepare_cached("UPDATE endpoints SET crl_pem = ?2, crl_entries = ?3 WHERE id = ?1")?
        .execute(params![
            endpoint_id,
            pem,
            i64::try_from(parsed.revoked_serials.len()).unwrap_or(i64::MAX)
        ])?;
    Ok(parsed)
}

/// A CRL being imported, with the portal's revocations signed in when it lacks any (see the
/// module documentation).
pub(super) fn with_portal_revocations(
    db: &Db,
    endpoint_id: &str,
    pem: &str,
    now: Timestamp,
) -> Result<Option<String>, ApiError> {
    merged_crl(db, endpoint_id, Some(pem), now, false)
}

impl Store {
    /// Sets (`Some`) or removes (`None` or `""`) the endpoint's client CA private key (PEM:
    /// PKCS#8, PKCS#1 or SEC1). It must belong to one of the endpoint's client CA
    /// certificates; endpoints without a client CA are refused. Never returned by describe
    /// calls (they show `client-ca-key-set`).
    pub fn set_client_ca_key(
        &self,
        endpoint_id: &str,
        pem: Option<&str>,
    ) -> Result<Endpoint, ApiError> {
        self.write(|db, _now| {
            load_live_endpoint(db, endpoint_id)?;
            let key = match pem {
                Some(p) if !p.trim().is_empty() => checked_ca_key(db, endpoint_id, Some(p))?,
                _ => None,
            };
            db.prepare_cached("UPDATE endpoints SET client_ca_key_pem = ?2 WHERE id = ?1")?
                .execute(params![endpoint_id, key])?;
            load_endpoint(db, endpoint_id)
        })
    }

    /// The endpoint's client CA private key (PEM), if it holds one.
    pub fn client_ca_key(&self, endpoint_id: &str) -> Result<Option<String>, ApiError> {
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            stored_ca_key(db, endpoint_id)
        })
    }

    /// Issues `username` a client certificate of the endpoint's client CA, valid for `lifetime`
    /// (common name = the user name; see [`issuer::issue_client_certificate`]), and records its
    /// serial so that [`revoke_user_certificates`](Self::revoke_user_certificates) can revoke
    /// it. Refused (`IncorrectState`) when the endpoint holds no client CA key, or is being
    /// deleted. The key is returned, never stored.
    pub fn issue_portal_certificate(
        &self,
        endpoint_id: &str,
        username: &str,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, ApiError> {
        if lifetime.is_zero() || lifetime > MAX_PORTAL_CERTIFICATE_LIFETIME {
            return Err(ApiError::invalid(
                "lifetime",
                format!(
                    "{} s: give 1 s to {} days",
                    lifetime.as_secs(),
                    MAX_PORTAL_CERTIFICATE_LIFETIME.as_secs() / 86_400
                ),
            ));
        }
        let retention = self.retention_secs;
        self.record(|db, now| {
            load_live_endpoint(db, endpoint_id)?;
            let ca = client_ca_of(db, endpoint_id)?;
            let key = stored_ca_key(db, endpoint_id)?.ok_or_else(|| {
                ApiError::incorrect_state(format!(
                    "endpoint {endpoint_id} holds no client CA key, so it cannot issue client \
                     certificates; give it one with `cvpn endpoint modify {endpoint_id} \
                     --client-ca-key FILE` (API: client-ca-key), or hand users certificates \
                     yourself"
                ))
            })?;
            let live: i64 = db
                .prepare_cached(
                    "SELECT count(*) FROM issued_certificates WHERE endpoint_id = ?1 \
                     AND username = ?2 AND revoked_at IS NULL AND not_after > ?3",
                )?
                .query_row(params![endpoint_id, username, now.0], |r| r.get(0))?;
            if usize::try_from(live).unwrap_or(usize::MAX) >= MAX_LIVE_PORTAL_CERTIFICATES_PER_USER
            {
                return Err(ApiError::new(
                    codes::OPERATION_NOT_PERMITTED,
                    format!(
                        "{username} already holds {live} unexpired certificates from the portal \
                         of endpoint {endpoint_id} (at most \
                         {MAX_LIVE_PORTAL_CERTIFICATES_PER_USER}): use a profile already \
                         downloaded, or wait until one expires"
                    ),
                ));
            }
            let cert = issuer::issue_client_certificate(&ca, &key, username, lifetime, now)
                .map_err(issuer_error)?;
            // Rows of certificates long expired (and so out of every CRL) are of no use.
            db.prepare_cached(
                "DELETE FROM issued_certificates WHERE endpoint_id = ?1 AND not_after < ?2",
            )?
            .execute(params![endpoint_id, now.0.saturating_sub(retention)])?;
            db.prepare_cached(
                "INSERT INTO issued_certificates (serial, endpoint_id, username, issued_at, \
                 not_after) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                cert.serial_hex,
                endpoint_id,
                username,
                now.0,
                cert.not_after.0
            ])?;
            Ok(cert)
        })
    }

    /// Revokes every unexpired, unrevoked certificate the portal issued `username` (user names
    /// compare case-insensitively) on the endpoint, and stores a new CRL signed with the
    /// endpoint's CA key that lists them (see the module documentation for what else it
    /// keeps). Returns the serials newly revoked: the daemon ends their sessions
    /// (`ControlEvent::CrlChanged`). A user with no such certificate is a no-op: an empty
    /// list. Either way the time is recorded: portal sessions of the user begun before it take
    /// no more profiles ([`Store::access_revoked_since`]). Refused when the endpoint holds no
    /// CA key (a CRL cannot be signed then) or the new CRL would exceed the CRL quota.
    pub fn revoke_user_certificates(
        &self,
        endpoint_id: &str,
        username: &str,
    ) -> Result<Vec<String>, ApiError> {
        let cap = self.quotas.crl_entries;
        self.write(|db, now| {
            load_live_endpoint(db, endpoint_id)?;
            let serials: Vec<String> = query(
                db,
                "SELECT serial FROM issued_certificates WHERE endpoint_id = ?1 \
                 AND username = ?2 AND revoked_at IS NULL AND not_after > ?3 \
                 ORDER BY issued_at, serial",
                params![endpoint_id, username, now.0],
                |r| r.get(0),
            )?;
            db.prepare_cached(
                "INSERT INTO user_revocations (endpoint_id, username, revoked_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT (endpoint_id, username) DO UPDATE \
                 SET revoked_at = excluded.revoked_at",
            )?
            .execute(params![endpoint_id, username, now.0])?;
            if serials.is_empty() {
                return Ok(serials);
            }
            if stored_ca_key(db, endpoint_id)?.is_none() {
                return Err(ApiError::incorrect_state(format!(
                    "endpoint {endpoint_id} no longer holds its client CA key, so no CRL can \
                     be signed to revoke {} certificate(s) of {username}; give the key back \
                     (`cvpn endpoint modify {endpoint_id} --client-ca-key FILE`) or import a \
                     CRL listing {}",
                    serials.len(),
                    serials.join(", ")
                )));
            }
            db.prepare_cached(
                "UPDATE issued_certificates SET revoked_at = ?3 WHERE endpoint_id = ?1 \
                 AND username = ?2 AND revoked_at IS NULL AND not_after > ?3",
            )?
            .execute(params![endpoint_id, username, now.0])?;
            let current: Option<String> = db
                .prepare_cached("SELECT crl_pem FROM endpoints WHERE id = ?1")?
                .query_row([endpoint_id], |r| r.get(0))?;
            let pem = merged_crl(db, endpoint_id, current.as_deref(), now, true)?
                .ok_or_else(|| ApiError::internal("no CRL signed"))?;
            store_crl(db, endpoint_id, &pem, cap)?;
            Ok(serials)
        })
    }

    /// Whether an administrator ended `username`'s access to the endpoint (`revoke-user`) at or
    /// after `since` (user names compare case-insensitively).
    pub fn access_revoked_since(
        &self,
        endpoint_id: &str,
        username: &str,
        since: Timestamp,
    ) -> Result<bool, ApiError> {
        self.read(|db| {
            Ok(db
                .prepare_cached(
                    "SELECT revoked_at FROM user_revocations WHERE endpoint_id = ?1 \
                     AND username = ?2 AND revoked_at >= ?3",
                )?
                .exists(params![endpoint_id, username, since.0])?)
        })
    }

    /// The certificates the portal issued on the endpoint (all users, or `username`'s),
    /// oldest first, with their state now.
    pub fn issued_certificates(
        &self,
        endpoint_id: &str,
        username: Option<&str>,
    ) -> Result<Vec<PortalCertificate>, ApiError> {
        let now = self.now();
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            query(
                db,
                "SELECT serial, endpoint_id, username, issued_at, not_after, revoked_at \
                 FROM issued_certificates WHERE endpoint_id = ?1 \
                 AND (CAST(?2 AS TEXT) IS NULL OR username = ?2) ORDER BY issued_at, serial",
                params![endpoint_id, username],
                |r| {
                    let not_after: i64 = r.get(4)?;
                    let revoked: Option<i64> = r.get(5)?;
                    Ok(PortalCertificate {
                        serial: r.get(0)?,
                        client_vpn_endpoint_id: r.get(1)?,
                        username: r.get(2)?,
                        issue_time: ts(r, 3)?,
                        not_after: Timestamp(not_after),
                        revocation_time: revoked.map(Timestamp),
                        status: status_of(not_after, revoked, now).to_string(),
                    })
                },
            )
        })
    }

    /// Counts one profile download from the endpoint's self-service portal; returns the count.
    pub fn record_portal_download(&self, endpoint_id: &str) -> Result<u64, ApiError> {
        self.record(|db, _now| {
            load_endpoint(db, endpoint_id)?;
            let n: i64 = db
                .prepare_cached(
                    "INSERT INTO portal_downloads (endpoint_id, count) VALUES (?1, 1) \
                     ON CONFLICT (endpoint_id) DO UPDATE SET count = portal_downloads.count + 1 \
                     RETURNING count",
                )?
                .query_row([endpoint_id], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// Profiles downloaded from the endpoint's self-service portal.
    pub fn portal_downloads(&self, endpoint_id: &str) -> Result<u64, ApiError> {
        self.read(|db| Ok(load_endpoint(db, endpoint_id)?.self_service_portal_downloads))
    }
}
