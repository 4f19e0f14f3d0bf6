//! Test PKI, generated fresh by every test run (no keys in the repository): a CA, a server
//! certificate OpenVPN's `remote-cert-tls server` accepts, client certificates with groups in
//! their OU values, and the bad ones — expired, revoked (with a CRL), from a foreign CA.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// The validity of ordinary test certificates: from yesterday to 30 days from now.
const VALID: (Duration, Duration) = (Duration::days(-1), Duration::days(30));

/// A certificate and its key, as PEM.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A CA that issues server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    next_serial: u64,
    revoked: Vec<u64>,
}

fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(365);
    Ok(p)
}

impl Ca {
    pub fn new(name: &str) -> Result<Self> {
        let issuer = CertifiedIssuer::self_signed(ca_params(name)?, KeyPair::generate()?)?;
        Ok(Ca {
            issuer,
            next_serial: 100,
            revoked: Vec::new(),
        })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key (PEM): for a gateway that issues client certificates itself.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a certificate valid from `valid.0` to `valid.1` relative to now.
    fn issue(
        &mut self,
        cn: &str,
        ous: &[&str],
        server: bool,
        valid: (Duration, Duration),
    ) -> Result<(Pem, u64)> {
        let mut p = CertificateParams::new(if server {
            vec![cn.to_string()]
        } else {
            Vec::new()
        })?;
        p.distinguished_name.push(DnType::CommonName, cn);
        // rcgen keeps one value per attribute type: one OU (group) per test certificate.
        anyhow::ensure!(ous.len() <= 1, "test certificates carry at most one OU");
        for ou in ous {
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, *ou);
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let now = OffsetDateTime::now_utc();
        p.not_before = now + valid.0;
        p.not_after = now + valid.1;
        let serial = self.next_serial;
        self.next_serial += 1;
        p.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((
            Pem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            },
            serial,
        ))
    }

    /// A server certificate for `vpn.example.test`, its key and this CA, written as PEM files
    /// in `dir` for `cvpn endpoint create`; returns their paths (certificate, key, CA).
    pub fn write_server_files(&mut self, dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let server = self.server("vpn.example.test")?;
        Ok((
            write(dir, "server.crt", &server.cert)?,
            write(dir, "server.key", &server.key)?,
            write(dir, "ca.crt", &self.cert_pem())?,
        ))
    }

    /// A server certificate (EKU serverAuth), ECDSA P-256.
    pub fn server(&mut self, cn: &str) -> Result<Pem> {
        Ok(self.issue(cn, &[], true, VALID)?.0)
    }

    /// A server certificate with a 2048-bit RSA key (made by `openssl genpkey`; ring cannot
    /// generate RSA keys, only use them).
    pub fn server_rsa(&mut self, cn: &str) -> Result<Pem> {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key_pem = String::from_utf8(out.stdout)?;
        let key = KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256)?;
        let mut p = CertificateParams::new(vec![cn.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(30);
        p.serial_number = Some(SerialNumber::from(self.next_serial));
        self.next_serial += 1;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key_pem,
        })
    }

    /// A client certificate whose OU value is the group in `groups` (zero or one).
    pub fn client(&mut self, cn: &str, groups: &[&str]) -> Result<Pem> {
        Ok(self.issue(cn, groups, false, VALID)?.0)
    }

    /// A client certificate (one OU at most, as [`Ca::client`]) that expires `seconds` from
    /// now.
    pub fn short_lived_client(&mut self, cn: &str, groups: &[&str], seconds: i64) -> Result<Pem> {
        Ok(self
            .issue(
                cn,
                groups,
                false,
                (-Duration::days(1), Duration::seconds(seconds)),
            )?
            .0)
    }

    /// A client certificate that expired yesterday.
    pub fn expired_client(&mut self, cn: &str) -> Result<Pem> {
        Ok(self
            .issue(cn, &[], false, (-Duration::days(30), -Duration::days(1)))?
            .0)
    }

    /// A client certificate that is on this CA's CRL.
    pub fn revoked_client(&mut self, cn: &str) -> Result<Pem> {
        let (pem, serial) = self.issue(cn, &[], false, VALID)?;
        self.revoked.push(serial);
        Ok(pem)
    }

    /// The serial of the certificate issued last.
    pub fn last_issued_serial(&self) -> u64 {
        self.next_serial - 1
    }

    /// Puts an issued certificate on the CRL.
    pub fn revoke(&mut self, serial: u64) {
        self.revoked.push(serial);
    }

    /// The CRL listing every revoked certificate, PEM.
    pub fn crl_pem(&self) -> Result<String> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: self
                .revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - Duration::hours(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// Writes `content` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, content: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    fs::write(&p, content)?;
    Ok(p)
}
