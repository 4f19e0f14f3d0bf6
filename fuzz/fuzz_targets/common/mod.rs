//! What several fuzz targets share: a server TLS configuration with a self-signed certificate
//! (client certificates required), made once per process.

use std::sync::{Arc, OnceLock};

use gateway::protocol::session::SessionConfig;
use gateway::protocol::tls::TlsMaterial;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub fn session_config() -> Arc<SessionConfig> {
    static CONFIG: OnceLock<Arc<SessionConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let ck = rcgen::generate_simple_self_signed(vec!["cvpn.test".to_string()])
                .expect("self-signed certificate");
            let cert = ck.cert.der().clone();
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
            let material = TlsMaterial {
                server_chain: vec![cert.clone()],
                server_key: Arc::new(key),
                client_ca: vec![cert],
                crls: Vec::new(),
            };
            Arc::new(SessionConfig::new(
                material.server_config().expect("server config"),
            ))
        })
        .clone()
}
