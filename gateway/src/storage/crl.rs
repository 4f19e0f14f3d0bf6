//! Certificate revocation lists: import and export.

use super::*;

impl Store {
    /// Imports (replaces) an endpoint's certificate revocation list: PEM, one or more
    /// `X509 CRL` blocks issued by the endpoint's client CA, at most the quota of entries.
    /// Returns the revoked serials: the daemon terminates their sessions.
    ///
    /// When the endpoint holds its client CA key and the self-service portal revoked
    /// certificates the given list lacks, they are kept: the list is signed again with them
    /// (see `issued_certificates.rs`), and that is what is stored and summarised.
    pub fn import_crl(&self, endpoint_id: &str, pem: &str) -> Result<CrlSummary, ApiError> {
        self.write(|db, now| {
            load_live_endpoint(db, endpoint_id)?;
            let (ca, idp): (String, Option<String>) = db
                .prepare_cached("SELECT client_ca_pem, idp_id FROM endpoints WHERE id = ?1")?
                .query_row([endpoint_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if ca.is_empty() {
                return Err(ApiError::incorrect_state(match idp {
                    Some(idp) => format!(
                        "endpoint {endpoint_id} signs users in with identity provider {idp} \
                         only: a certificate revocation list applies to client certificates, \
                         which it does not take (disable the user at the identity provider \
                         instead)"
                    ),
                    None => format!(
                        "endpoint {endpoint_id} signs users in with a directory only: a \
                         certificate revocation list applies to client certificates, which it \
                         does not take (disable a user in the directory instead)"
                    ),
                }));
            }
            validate::crl(
                "certificate-revocation-list",
                pem,
                &ca,
                self.quotas.crl_entries,
            )?;
            let merged = issued_certificates::with_portal_revocations(db, endpoint_id, pem, now)?;
            let parsed = issued_certificates::store_crl(
                db,
                endpoint_id,
                merged.as_deref().unwrap_or(pem),
                self.quotas.crl_entries,
            )?;
            Ok(CrlSummary {
                client_vpn_endpoint_id: endpoint_id.to_string(),
                crls: parsed.crls,
                entries: parsed.revoked_serials.len(),
                revoked_serials: parsed.revoked_serials,
            })
        })
    }

    /// The endpoint's certificate revocation list as imported (PEM), if any.
    pub fn export_crl(&self, endpoint_id: &str) -> Result<Option<String>, ApiError> {
        self.read(|db| {
            load_endpoint(db, endpoint_id)?;
            Ok(db
                .prepare_cached("SELECT crl_pem FROM endpoints WHERE id = ?1")?
                .query_row([endpoint_id], |r| r.get(0))?)
        })
    }
}
