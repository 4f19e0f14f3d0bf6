//! The TLS side of the control channel: rustls server configuration from the endpoint's PEM
//! files (server certificate and key, client CA, optional CRL), and the facts taken from a
//! verified client certificate (common name, groups from its OU values).
//!
//! TLS 1.2 and 1.3, RSA and ECDSA server certificates. Client certificates are verified against
//! the client CA and the CRL on every handshake; expired, revoked and foreign-CA certificates
//! are refused, and [`refusal_reason`] names why for the connection log.

use std::{path::Path, sync::Arc};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, CertificateRevocationListDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    CertificateError, RootCertStore, ServerConfig,
};

/// Errors loading TLS material. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read PEM {what}: {detail}")]
    Pem {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: no {what} found in the file (expected a PEM block)")]
    Empty { path: String, what: &'static str },
    #[error("client CA {path}: {detail}")]
    ClientCa { path: String, detail: String },
    #[error("server certificate and key do not form a usable TLS identity: {0}")]
    Identity(String),
    #[error("cannot build the client certificate verifier (client CA or CRL): {0}")]
    Verifier(String),
}

/// The PEM material of an endpoint, parsed.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: Arc<PrivateKeyDer<'static>>,
    pub client_ca: Vec<CertificateDer<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

fn read(path: &Path, what: &'static str) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        what,
        detail: e.to_string(),
    })
}

fn pem_error(origin: &str, what: &'static str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: origin.to_string(),
        what,
        detail: e.to_string(),
    }
}

/// One or more certificates; `origin` (a path, or "(database)") names the source in errors.
fn chain(
    pem: &str,
    origin: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(origin, what, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: origin.to_string(),
            what,
        });
    }
    Ok(certs)
}

fn private_key(pem: &str, origin: &str) -> Result<Arc<PrivateKeyDer<'static>>, TlsError> {
    Ok(Arc::new(
        PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| pem_error(origin, "private key", e))?,
    ))
}

fn crls(pem: &str, origin: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(origin, "CRL", e))
}

impl TlsMaterial {
    /// Reads the server chain and key, the client CA bundle and, when given, a CRL file.
    pub fn load(
        server_cert: &Path,
        server_key: &Path,
        client_ca: &Path,
        crl: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let shown = |p: &Path| p.display().to_string();
        Ok(TlsMaterial {
            server_chain: chain(
                &read(server_cert, "server certificate")?,
                &shown(server_cert),
                "server certificate",
            )?,
            server_key: private_key(&read(server_key, "private key")?, &shown(server_key))?,
            client_ca: chain(
                &read(client_ca, "client CA certificate")?,
                &shown(client_ca),
                "client CA certificate",
            )?,
            crls: match crl {
                None => Vec::new(),
                Some(p) => crls(&read(p, "CRL")?, &shown(p))?,
            },
        })
    }

    /// The same material from PEM text (an endpoint as the control-plane database keeps it).
    pub fn from_pem(
        server_cert: &str,
        server_key: &str,
        client_ca: &str,
        crl: Option<&str>,
    ) -> Result<Self, TlsError> {
        const DB: &str = "(database)";
        Ok(TlsMaterial {
            server_chain: chain(server_cert, DB, "server certificate")?,
            server_key: private_key(server_key, DB)?,
            // Empty: no certificate authentication (a directory-only endpoint).
            client_ca: if client_ca.trim().is_empty() {
                Vec::new()
            } else {
                chain(client_ca, DB, "client CA certificate")?
            },
            crls: crl
                .map(|pem| crls(pem, DB))
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// True when clients must present a certificate (there is a client CA).
    pub fn requires_client_certificate(&self) -> bool {
        !self.client_ca.is_empty()
    }

    /// The rustls server configuration: TLS 1.3 and 1.2; client certificates required when
    /// there is a client CA, not asked for otherwise (clients then sign in with a user name
    /// and password, which the endpoint checks before admitting them).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        if self.client_ca.is_empty() {
            let config = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| TlsError::Identity(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
                .map_err(|e| TlsError::Identity(e.to_string()))?;
            return Ok(Arc::new(config));
        }
        let mut roots = RootCertStore::empty();
        for ca in &self.client_ca {
            roots.add(ca.clone()).map_err(|e| TlsError::ClientCa {
                path: "client_ca".into(),
                detail: e.to_string(),
            })?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(self.crls.iter().cloned())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Identity(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .map_err(|e| TlsError::Identity(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

/// What the gateway takes from a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub common_name: String,
    /// The certificate's OU values: the user's groups for authorization rules.
    pub groups: Vec<String>,
    pub serial: String,
}

/// Reads common name, OU values and serial from a client certificate.
pub fn client_identity(cert: &CertificateDer<'_>) -> Result<ClientIdentity, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    let subject = x509.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    let groups = subject
        .iter_organizational_unit()
        .filter_map(|ou| ou.as_str().ok())
        .map(str::to_string)
        .collect();
    Ok(ClientIdentity {
        common_name,
        groups,
        serial: x509.raw_serial_as_string(),
    })
}

/// A short reason for a refused handshake, in the connection log's vocabulary.
pub fn refusal_reason(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate-expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate-not-yet-valid".into()
            }
            CertificateError::Revoked => "certificate-revoked".into(),
            CertificateError::UnknownIssuer => "certificate-unknown-ca".into(),
            CertificateError::BadSignature => "certificate-bad-signature".into(),
            other => format!("certificate-invalid ({other:?})"),
        },
        rustls::Error::NoCertificatesPresented => "no-client-certificate".into(),
        rustls::Error::PeerIncompatible(p) => format!("tls-incompatible ({p:?})"),
        other => format!("tls-error ({other})"),
    }
}
