//! The store on a real PostgreSQL server over TLS, configured as an administrator would
//! (`database` and `database_ca` in the daemon configuration): the server's certificate is
//! verified against the given CA, a server the CA did not certify is refused, and so is a
//! connection without TLS where the server demands it.

use cvpn_tests::{directory_servers::server_pki, postgres::PostgresServer};
use gateway::control::DaemonConfig;
use gateway::storage::{codes, Store};

fn open(config: &str) -> Result<Store, String> {
    let cfg = DaemonConfig::parse(config, "test").map_err(|e| e.to_string())?;
    Store::open(cfg.store_options()?).map_err(|e| format!("{}: {}", e.code, e.message))
}

#[test]
fn the_database_is_reached_over_tls_verified_against_database_ca() {
    if !cvpn_tests::is_root() {
        panic!("PostgreSQL runs as its own account: run `cargo xtask test` as root");
    }
    let (ca, cert, key) = server_pki("cvpn test database CA", &["127.0.0.1"]).unwrap();
    let pg = PostgresServer::start_tls(&cert, &key).unwrap();
    pg.create_database("cvpn").unwrap();
    let dir = std::env::temp_dir().join(format!("cvpn-pgtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("db-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let url = pg.url("cvpn").replace("sslmode=disable", "sslmode=require");

    let store = open(&format!(
        "data_dir = {:?}\ndatabase = {url:?}\ndatabase_ca = {:?}\n",
        dir.display().to_string(),
        ca_file.display().to_string()
    ))
    .unwrap();
    assert!(store.is_shared());
    assert!(store.describe_endpoints(&[]).unwrap().is_empty());
    assert!(store.schema_version().unwrap() > 0);
    drop(store);

    // A CA that did not sign the server's certificate: refused, saying why.
    let (other_ca, _, _) = server_pki("someone else's CA", &["127.0.0.1"]).unwrap();
    std::fs::write(&ca_file, &other_ca).unwrap();
    let e = open(&format!(
        "database = {url:?}\ndatabase_ca = {:?}\n",
        ca_file.display().to_string()
    ))
    .unwrap_err();
    assert!(e.starts_with(codes::SERVICE_UNAVAILABLE), "{e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // Without TLS, where the server demands it: refused, and the message says what the
    // server said.
    let e = open(&format!("database = {:?}\n", pg.url("cvpn"))).unwrap_err();
    assert!(
        e.contains("pg_hba.conf") || e.contains("no encryption"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    pg.stop().unwrap();
}
