//! Certificates imported through the ACM-compatible API (`crate::aws::acm`): a server
//! certificate with its key, or a client CA, named by an ARN that the EC2 calls take
//! (`ServerCertificateArn`, `ClientRootCertificateChainArn`).

use std::fmt::Write as _;

use super::*;
use crate::model::{ImportedCertificate, MAX_IMPORTED_CERTIFICATES};

const CERT_COLS: &str = "arn, certificate_pem, chain_pem, private_key_pem IS NOT NULL, subject, \
     issuer, domain_name, serial, not_before, not_after, key_algorithm, imported_at";

fn cert_row(r: &Row<'_>) -> sql::Result<ImportedCertificate> {
    Ok(ImportedCertificate {
        certificate_arn: r.get(0)?,
        certificate: r.get(1)?,
        certificate_chain: r.get(2)?,
        has_private_key: r.get(3)?,
        subject: r.get(4)?,
        issuer: r.get(5)?,
        domain_name: r.get(6)?,
        serial: r.get(7)?,
        not_before: ts(r, 8)?,
        not_after: ts(r, 9)?,
        key_algorithm: r.get(10)?,
        imported_at: ts(r, 11)?,
    })
}

/// The base64 body of each certificate of a PEM text, without white space: how an imported
/// certificate is recognised inside an endpoint's stored chain or CA bundle.
pub(crate) fn certificate_bodies(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            out.extend(body.take());
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}

/// What an ARN of ours looks like: `arn:aws:acm:<region>:000000000000:certificate/<uuid>`.
pub fn validate_certificate_arn(field: &str, arn: &str) -> Result<(), ApiError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == "acm"
        && parts[5].strip_prefix("certificate/").is_some_and(|u| {
            u.len() == 36 && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        })
        && arn.len() <= 2048;
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!(
                "{arn:?} is not a certificate ARN (arn:aws:acm:REGION:ACCOUNT:certificate/UUID); \
                 import the certificate first (aws acm import-certificate)"
            ),
        ))
    }
}

fn certificate_not_found(arn: &str) -> ApiError {
    ApiError::new(
        codes::CERTIFICATE_NOT_FOUND,
        format!(
            "certificate {arn} was not imported here; import it first (aws acm \
             import-certificate), or list the imported ones (aws acm list-certificates)"
        ),
    )
}

/// A new ARN in `region` (a random UUID, version 4).
fn new_arn(region: &str) -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ApiError::internal("no system randomness for a certificate ARN"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut u = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            u.push('-');
        }
        let _ = write!(u, "{x:02x}");
    }
    Ok(format!("arn:aws:acm:{region}:000000000000:certificate/{u}"))
}

/// What the store keeps about a certificate besides its PEM text.
struct Summary {
    subject: String,
    issuer: String,
    domain_name: String,
    serial: String,
    not_before: i64,
    not_after: i64,
    key_algorithm: String,
}

fn summarise(field: &str, pem: &str) -> Result<Summary, ApiError> {
    use x509_parser::prelude::*;
    let certs = validate::certificates(field, pem)?;
    if certs.len() != 1 {
        return Err(ApiError::invalid(
            field,
            format!(
                "{} certificates: give the one certificate here and its issuers as the chain",
                certs.len()
            ),
        ));
    }
    let (_, c) = parse_x509_certificate(certs[0].as_ref())
        .map_err(|e| ApiError::invalid(field, format!("does not parse: {e}")))?;
    let cn = c
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let dns = c.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
    });
    let spki = c.public_key();
    let key_algorithm = match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(k)) => format!("RSA_{}", k.key_size()),
        Ok(x509_parser::public_key::PublicKey::EC(p)) => match p.key_size() {
            256 => "EC_prime256v1".to_string(),
            384 => "EC_secp384r1".to_string(),
            521 => "EC_secp521r1".to_string(),
            n => format!("EC_{n}"),
        },
        _ => spki.algorithm.algorithm.to_id_string(),
    };
    let serial = c
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(Summary {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        domain_name: dns.unwrap_or(cn),
        serial,
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        key_algorithm,
    })
}

impl Store {
    /// Imports a certificate (ACM's `ImportCertificate`): new under a new ARN in `region`, or,
    /// with `arn`, in place of the one imported under it. A private key must belong to the
    /// certificate; the chain must parse.
    pub fn import_certificate(
        &self,
        arn: Option<&str>,
        region: &str,
        certificate: &str,
        private_key: Option<&str>,
        chain: &str,
    ) -> Result<ImportedCertificate, ApiError> {
        let s = summarise("Certificate", certificate)?;
        if let Some(key) = private_key {
            validate::server_identity("Certificate", certificate, "PrivateKey", key)?;
        }
        if !chain.trim().is_empty() {
            validate::certificates("CertificateChain", chain)?;
        }
        if let Some(arn) = arn {
            validate_certificate_arn("CertificateArn", arn)?;
        }
        let given = arn.is_some();
        let arn = match arn {
            Some(a) => a.to_string(),
            None => new_arn(region)?,
        };
        self.write(|db, now| {
            let exists = db
                .prepare_cached("SELECT 1 FROM imported_certificates WHERE arn = ?1")?
                .exists([arn.as_str()])?;
            match (exists, given) {
                (false, true) => return Err(certificate_not_found(&arn)),
                (false, false) => {
                    let n: i64 = db
                        .prepare_cached("SELECT count(*) FROM imported_certificates")?
                        .query_row((), |r| r.get(0))?;
                    if usize::try_from(n).unwrap_or(usize::MAX) >= MAX_IMPORTED_CERTIFICATES {
                        return Err(ApiError::new(
                            codes::LIMIT_EXCEEDED,
                            format!(
                                "{n} certificates are imported, the most kept: delete one no \
                                 endpoint uses (aws acm delete-certificate)"
                            ),
                        ));
                    }
                }
                (true, _) => {}
            }
            db.prepare_cached(
                "INSERT INTO imported_certificates (arn, certificate_pem, chain_pem, \
                 private_key_pem, subject, issuer, domain_name, serial, not_before, not_after, \
                 key_algorithm, imported_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (arn) DO UPDATE SET certificate_pem = excluded.certificate_pem, \
                 chain_pem = excluded.chain_pem, private_key_pem = excluded.private_key_pem, \
                 subject = excluded.subject, issuer = excluded.issuer, \
                 domain_name = excluded.domain_name, serial = excluded.serial, \
                 not_before = excluded.not_before, not_after = excluded.not_after, \
                 key_algorithm = excluded.key_algorithm, imported_at = excluded.imported_at",
            )?
            .execute(params![
                arn,
                certificate.trim(),
                chain.trim(),
                private_key,
                s.subject,
                s.issuer,
                s.domain_name,
                s.serial,
                s.not_before,
                s.not_after,
                s.key_algorithm,
                now.0
            ])?;
            load_certificate(db, &arn)
        })
    }

    /// One imported certificate (never its key).
    pub fn describe_certificate(&self, arn: &str) -> Result<ImportedCertificate, ApiError> {
        validate_certificate_arn("CertificateArn", arn)?;
        self.read(|db| load_certificate(db, arn))
    }

    /// Every imported certificate, oldest import first.
    pub fn list_certificates(&self) -> Result<Vec<ImportedCertificate>, ApiError> {
        self.read(|db| {
            query(
                db,
                &format!("SELECT {CERT_COLS} FROM imported_certificates ORDER BY imported_at, arn"),
                (),
                cert_row,
            )
        })
    }

    /// The endpoints (not deleted) whose server certificate or client CA is this certificate.
    pub fn certificate_users(&self, arn: &str) -> Result<Vec<String>, ApiError> {
        validate_certificate_arn("CertificateArn", arn)?;
        self.read(|db| {
            let c = load_certificate(db, arn)?;
            users(db, &c.certificate)
        })
    }

    /// Deletes an imported certificate; refused while an endpoint uses it.
    pub fn delete_certificate(&self, arn: &str) -> Result<(), ApiError> {
        validate_certificate_arn("CertificateArn", arn)?;
        self.write(|db, _| {
            let c = load_certificate(db, arn)?;
            let users = users(db, &c.certificate)?;
            if !users.is_empty() {
                return Err(ApiError::new(
                    codes::CERTIFICATE_IN_USE,
                    format!(
                        "certificate {arn} is in use by {}: give those endpoints another \
                         certificate, or delete them, first",
                        users.join(", ")
                    ),
                ));
            }
            db.prepare_cached("DELETE FROM imported_certificates WHERE arn = ?1")?
                .execute([arn])?;
            Ok(())
        })
    }

    /// The PEM material an endpoint takes from an imported certificate: the certificate with
    /// its chain, and its private key if it was imported with one.
    pub fn certificate_material(&self, arn: &str) -> Result<(String, Option<String>), ApiError> {
        validate_certificate_arn("CertificateArn", arn)?;
        self.read(|db| {
            let (cert, chain, key): (String, String, Option<String>) = db
                .prepare_cached(
                    "SELECT certificate_pem, chain_pem, private_key_pem FROM \
                     imported_certificates WHERE arn = ?1",
                )?
                .query_row([arn], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?
                .ok_or_else(|| certificate_not_found(arn))?;
            let pem = if chain.is_empty() {
                format!("{cert}\n")
            } else {
                format!("{cert}\n{chain}\n")
            };
            Ok((pem, key))
        })
    }

    /// The client CA an endpoint takes from an imported certificate, as AWS's
    /// `ClientRootCertificateChainArn` does: the chain it was imported with (the CA that
    /// issued it, and so the clients), or the certificate itself when it came without one (a
    /// CA certificate imported on its own).
    pub fn client_ca_material(&self, arn: &str) -> Result<String, ApiError> {
        validate_certificate_arn("ClientRootCertificateChainArn", arn)?;
        let c = self.read(|db| load_certificate(db, arn))?;
        Ok(if c.certificate_chain.trim().is_empty() {
            format!("{}\n", c.certificate)
        } else {
            format!("{}\n", c.certificate_chain)
        })
    }

    /// The ARN of the imported certificate that is the first certificate of `pem` (an
    /// endpoint's server chain), or with `as_client_ca`, whose client CA
    /// ([`Store::client_ca_material`]) begins as `pem` does (an endpoint's client CA bundle).
    pub fn certificate_arn_of(
        &self,
        pem: &str,
        as_client_ca: bool,
    ) -> Result<Option<String>, ApiError> {
        let Some(first) = certificate_bodies(pem).into_iter().next() else {
            return Ok(None);
        };
        let all = self.list_certificates()?;
        Ok(all.into_iter().find_map(|c| {
            let source = if as_client_ca && !c.certificate_chain.trim().is_empty() {
                &c.certificate_chain
            } else {
                &c.certificate
            };
            (certificate_bodies(source).first() == Some(&first)).then_some(c.certificate_arn)
        }))
    }
}

fn load_certificate(db: &Db, arn: &str) -> Result<ImportedCertificate, ApiError> {
    db.prepare_cached(&format!(
        "SELECT {CERT_COLS} FROM imported_certificates WHERE arn = ?1"
    ))?
    .query_row([arn], cert_row)
    .optional()?
    .ok_or_else(|| certificate_not_found(arn))
}

fn users(db: &Db, certificate: &str) -> Result<Vec<String>, ApiError> {
    let Some(body) = certificate_bodies(certificate).into_iter().next() else {
        return Ok(Vec::new());
    };
    let rows: Vec<(String, String, String)> = query(
        db,
        "SELECT id, server_cert_pem, client_ca_pem FROM endpoints WHERE state <> 'deleted' \
         ORDER BY id",
        (),
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(rows
        .into_iter()
        .filter(|(_, server, ca)| {
            certificate_bodies(server).contains(&body) || certificate_bodies(ca).contains(&body)
        })
        .map(|(id, _, _)| id)
        .collect())
}
