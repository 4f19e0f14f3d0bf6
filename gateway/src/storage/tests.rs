//! Tests of the store: a validation table covering every rule, state transitions, route origins,
//! quotas, persistence across reopen, crash consistency under SIGKILL, connection retention and
//! the CRL.
//!
//! The test PKI (CA, server certificate and key, CRLs) is generated per test with rcgen; no key
//! material lives in the repository.
//!
//! # Both backends
//!
//! The suite runs on SQLite by default. With `CVPN_TEST_POSTGRES` set to an administrator's URL
//! of a PostgreSQL server (`cargo xtask test` starts one and runs `storage::` again so), every
//! test's store is a fresh PostgreSQL database instead, named after the test's temporary
//! directory (so reopening the "same directory" reopens the same database) and dropped with
//! it. The few tests of SQLite's files (modes, WAL, secure delete, a writer killed mid-write)
//! say so and return early there; [`schema_is_the_same_on_both_backends`] compares the two
//! schemas.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;

use rcgen::{CertificateParams, CertifiedIssuer, KeyPair, SerialNumber};

use super::*;

// ---- fixtures -----------------------------------------------------------------------------------

/// The PostgreSQL server the suite runs against, if `CVPN_TEST_POSTGRES` names one.
fn postgres_admin() -> Option<String> {
    std::env::var("CVPN_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Whether this run is on PostgreSQL: tests of SQLite's own files call it and return early.
fn on_postgres(test: &str) -> bool {
    let pg = postgres_admin().is_some();
    if pg {
        eprintln!("{test}: a test of SQLite's files; not run on PostgreSQL");
    }
    pg
}

/// The PostgreSQL database that stands for the data directory `dir`: its path made an
/// identifier (the end of it, within PostgreSQL's 63 bytes; the temporary directories' names
/// end in the process id and a counter).
fn database_for(dir: &Path) -> String {
    let name: Vec<char> = dir
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let tail: String = name[name.len().saturating_sub(58)..].iter().collect();
    format!("t_{}", tail.trim_start_matches('_'))
}

/// `admin` (a URL ending in a database name) pointing at `database` instead.
fn with_database(admin: &str, database: &str) -> String {
    let mut u = url::Url::parse(admin).expect("CVPN_TEST_POSTGRES is a postgres:// URL");
    u.set_path(database);
    u.to_string()
}

/// Runs `sql` as the administrator.
fn admin_batch(sql: &str) {
    let admin = postgres_admin().expect("on PostgreSQL");
    let pool = sql::PgPool::connect(&admin, sql::PgTls::None).unwrap();
    pool.batch(sql).unwrap();
}

/// Store options for the data directory `dir`: on PostgreSQL, its database (created when new).
fn in_dir(dir: &Path) -> StoreOptions {
    let mut o = StoreOptions::in_dir(dir);
    if let Some(admin) = postgres_admin() {
        let db = database_for(dir);
        let exists = sql::PgPool::connect(&with_database(&admin, &db), sql::PgTls::None).is_ok();
        if !exists {
            admin_batch(&format!("CREATE DATABASE {db}"));
        }
        o.postgres = Some(PostgresOptions {
            url: with_database(&admin, &db),
            tls: None,
        });
    }
    o
}

/// A directory under the system temp dir, removed on drop (with its PostgreSQL database).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "cvpn-storage-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // The databases of this directory and of the directories under it.
        if let Some(admin) = postgres_admin() {
            let prefix = database_for(&self.0);
            let pool = sql::PgPool::connect(&admin, sql::PgTls::None).unwrap();
            let names: Vec<String> = pool
                .transaction("BEGIN", 1, |db| {
                    Ok(db.query_all("SELECT datname FROM pg_database", (), |r| r.get(0))?)
                })
                .unwrap();
            for name in names {
                if name == prefix || name.starts_with(&format!("{prefix}_")) {
                    pool.batch(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .unwrap();
                }
            }
        }
    }
}

/// A CA, a server certificate and key it issued, an unrelated key and a foreign CA.
struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
    server_cert: String,
    server_key: String,
    other_key: String,
    foreign: CertifiedIssuer<'static, KeyPair>,
}

use crate::test_support::{ca, ServerPki};

impl Pki {
    fn new() -> Pki {
        let ServerPki {
            issuer,
            ca_pem,
            server_cert,
            server_key,
        } = ServerPki::new("cvpn test CA");
        Pki {
            issuer,
            ca_pem,
            server_cert,
            server_key,
            other_key: KeyPair::generate().unwrap().serialize_pem(),
            foreign: ca("someone else's CA"),
        }
    }

    fn crl_by(issuer: &CertifiedIssuer<'static, KeyPair>, serials: &[u64]) -> String {
        crate::test_support::crl_by(issuer, serials)
    }

    fn crl(&self, serials: &[u64]) -> String {
        Self::crl_by(&self.issuer, serials)
    }

    fn cert_auth(&self) -> Vec<AuthenticationOption> {
        vec![AuthenticationOption::CertificateAuthentication {
            client_root_certificate_chain: self.ca_pem.clone(),
        }]
    }

    /// A valid request with only the required fields.
    fn create(&self) -> CreateEndpointRequest {
        CreateEndpointRequest {
            client_cidr_block: Some("10.2.0.0/22".into()),
            server_certificate: Some(self.server_cert.clone()),
            server_private_key: Some(self.server_key.clone()),
            authentication_options: self.cert_auth(),
            ..Default::default()
        }
    }
}

const T0: i64 = 1_700_000_000;

struct Fx {
    store: Store,
    clock: Arc<AtomicI64>,
    pki: Pki,
    dir: TempDir,
}

fn options(dir: &Path, clock: &Arc<AtomicI64>, quotas: Quotas) -> StoreOptions {
    let c = Arc::clone(clock);
    StoreOptions {
        quotas,
        retention: DEFAULT_RETENTION,
        clock: Arc::new(move || Timestamp(c.load(Ordering::SeqCst))),
        handler_policy: HandlerPolicy::default(),
        ..in_dir(dir)
    }
}

impl Fx {
    fn new() -> Fx {
        Fx::with_quotas(Quotas::default())
    }

    fn with_quotas(quotas: Quotas) -> Fx {
        let dir = TempDir::new("fx");
        let clock = Arc::new(AtomicI64::new(T0));
        let store = Store::open(options(&dir.0, &clock, quotas)).unwrap();
        Fx {
            store,
            clock,
            pki: Pki::new(),
            dir,
        }
    }

    fn advance(&self, secs: i64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    fn endpoint(&self) -> String {
        self.store
            .create_endpoint(&self.pki.create())
            .unwrap()
            .client_vpn_endpoint_id
    }

    fn associate(
        &self,
        eid: &str,
        interface: &str,
        subnet: Option<&str>,
    ) -> Result<AssociateResult, ApiError> {
        self.store
            .associate_target_network(&AssociateTargetNetworkRequest {
                client_vpn_endpoint_id: eid.into(),
                target_network_id: interface.into(),
                subnet_cidr: subnet.map(Into::into),
                snat_address: None,
                node: None,
            })
    }

    fn route(&self, eid: &str, dest: &str, via: &str) -> Result<Route, ApiError> {
        self.store.create_route(&CreateRouteRequest {
            client_vpn_endpoint_id: eid.into(),
            destination_cidr_block: dest.into(),
            target_network_id: via.into(),
            description: None,
        })
    }

    fn delete_route(&self, eid: &str, dest: &str, via: Option<&str>) -> Result<Route, ApiError> {
        self.store.delete_route(&DeleteRouteRequest {
            client_vpn_endpoint_id: eid.into(),
            destination_cidr_block: dest.into(),
            target_network_id: via.map(Into::into),
        })
    }

    fn rule(
        &self,
        eid: &str,
        dest: &str,
        group: Option<&str>,
    ) -> Result<AuthorizationRule, ApiError> {
        self.store.authorize_rule(&AuthorizeRequest {
            protocol: None,
            port_range: None,
            client_vpn_endpoint_id: eid.into(),
            target_network_cidr: dest.into(),
            access_group_id: group.map(Into::into),
            authorize_all_groups: group.is_none().then_some(true),
            description: None,
        })
    }

    fn connect(&self, eid: &str, user: &str, ip: u8) -> Result<Connection, ApiError> {
        self.store.record_connection_start(&NewConnection {
            client_vpn_endpoint_id: eid.into(),
            client_ip: Ipv4Addr::new(10, 2, 0, ip),
            common_name: format!("{user}.example.com"),
            username: Some(user.into()),
            device_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, ip)),
            device_port: 50_000 + u16::from(ip),
            transport_protocol: TransportProtocol::Udp,
        })
    }

    fn pragma(&self, name: &str) -> String {
        let db = self.store.lock();
        db.query_row(&format!("PRAGMA {name}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        })
        .unwrap()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, ApiError>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code,
    }
}

// ---- the validation table -----------------------------------------------------------------------

type Check<'a> = Box<dyn Fn(&Fx) -> Result<(), ApiError> + 'a>;

/// One row: what it checks, the expected code, a text the message must contain (the field or
/// the rule), and the call.
struct Row<'a>(&'static str, &'static str, &'static str, Check<'a>);

fn ok<T>(r: Result<T, ApiError>) -> Result<(), ApiError> {
    r.map(|_| ())
}

#[test]
fn validation_table() {
    use codes::*;
    let fx = Fx::new();
    // The scene: `eid` available through eth1 (10.88.0.0/24) with one add-route route and one
    // rule; `bare` has no target network.
    let eid = fx.endpoint();
    let bare = fx.endpoint();
    let assoc = fx
        .associate(&eid, "eth1", Some("10.88.0.0/24"))
        .unwrap()
        .association;
    fx.route(&eid, "10.99.0.0/16", "eth1").unwrap();
    fx.rule(&eid, "10.88.0.0/24", Some("engineering")).unwrap();
    let unknown_ep = "cvpn-endpoint-0123456789abcdef0".to_string();
    let unknown_assoc = "cvpn-assoc-0123456789abcdef0".to_string();
    let unknown_conn = "cvpn-connection-0123456789abcdef0".to_string();
    let _ = &assoc;

    let create = |f: &dyn Fn(&mut CreateEndpointRequest)| -> Check<'static> {
        let mut req = fx.pki.create();
        f(&mut req);
        Box::new(move |fx: &Fx| ok(fx.store.create_endpoint(&req)))
    };
    let modify = |f: &dyn Fn(&mut ModifyEndpointRequest)| -> Check<'static> {
        let mut req = ModifyEndpointRequest::default();
        f(&mut req);
        let eid = eid.clone();
        Box::new(move |fx: &Fx| ok(fx.store.modify_endpoint(&eid, &req)))
    };
    let auth = |o: Vec<AuthenticationOption>| -> Check<'static> {
        create(&move |r| r.authentication_options = o.clone())
    };
    let dir = AuthenticationOption::DirectoryServiceAuthentication {
        directory_id: "d-1".into(),
    };
    let fed = AuthenticationOption::FederatedAuthentication {
        saml_provider_arn: "arn:aws:iam::1:saml-provider/x".into(),
        self_service_saml_provider_arn: None,
    };
    let cert = fx.pki.cert_auth()[0].clone();
    let e = || eid.clone();
    let b = || bare.clone();

    #[rustfmt::skip]
    let rows: Vec<Row<'_>> = vec![
        // -- create: client CIDR
        Row("client CIDR missing", MISSING_PARAMETER, "client-cidr-block", create(&|r| r.client_cidr_block = None)),
        Row("client CIDR not a CIDR", INVALID_PARAMETER_VALUE, "client-cidr-block", create(&|r| r.client_cidr_block = Some("10.2.0.0".into()))),
        Row("client CIDR with host bits", INVALID_PARAMETER_VALUE, "host bits", create(&|r| r.client_cidr_block = Some("10.2.0.1/22".into()))),
        Row("client CIDR /11 too large", INVALID_PARAMETER_VALUE, "/12", create(&|r| r.client_cidr_block = Some("10.0.0.0/11".into()))),
        Row("client CIDR /23 too small", INVALID_PARAMETER_VALUE, "/22", create(&|r| r.client_cidr_block = Some("10.2.0.0/23".into()))),
        // -- create: TLS material and authentication
        Row("server certificate missing", MISSING_PARAMETER, "server-certificate", create(&|r| r.server_certificate = None)),
        Row("server key missing", MISSING_PARAMETER, "server-private-key", create(&|r| r.server_private_key = None)),
        Row("server certificate not PEM", INVALID_PARAMETER_VALUE, "server-certificate", create(&|r| r.server_certificate = Some("hello".into()))),
        Row("server key not PEM", INVALID_PARAMETER_VALUE, "server-private-key", create(&|r| r.server_private_key = Some("hello".into()))),
        Row("server key of another certificate", INVALID_PARAMETER_COMBINATION, "does not match", create(&|r| r.server_private_key = Some(fx.pki.other_key.clone()))),
        Row("no authentication option", MISSING_PARAMETER, "authentication-options", auth(vec![])),
        Row("directory id malformed", INVALID_PARAMETER_VALUE, "directory-id", auth(vec![dir.clone()])),
        Row("certificate + malformed directory id", INVALID_PARAMETER_VALUE, "directory-id", auth(vec![cert.clone(), dir.clone()])),
        Row("certificate + unknown directory", codes::DIRECTORY_NOT_FOUND, "does not exist", auth(vec![cert.clone(), AuthenticationOption::DirectoryServiceAuthentication { directory_id: "cvpn-directory-00000000000000000".into() }])),
        Row("federated with an ARN naming no identity provider", INVALID_PARAMETER_VALUE, "saml-provider-arn", auth(vec![fed.clone()])),
        Row("certificate + unknown identity provider", codes::IDENTITY_PROVIDER_NOT_FOUND, "does not exist", auth(vec![cert.clone(), AuthenticationOption::FederatedAuthentication { saml_provider_arn: "idp-00000000000000000".into(), self_service_saml_provider_arn: None }])),
        Row("directory + federated", INVALID_PARAMETER_COMBINATION, "cannot be combined", auth(vec![dir.clone(), fed.clone()])),
        Row("certificate twice", INVALID_PARAMETER_COMBINATION, "twice", auth(vec![cert.clone(), cert.clone()])),
        Row("three options", INVALID_PARAMETER_VALUE, "at most 2", auth(vec![cert.clone(), dir.clone(), fed.clone()])),
        Row("client CA not PEM", INVALID_PARAMETER_VALUE, "client-root-certificate-chain", auth(vec![AuthenticationOption::CertificateAuthentication { client_root_certificate_chain: "nope".into() }])),
        // -- create: the other fields
        Row("transport sctp", INVALID_PARAMETER_VALUE, "transport-protocol", create(&|r| r.transport_protocol = Some("sctp".into()))),
        Row("port 1195", INVALID_PARAMETER_VALUE, "vpn-port", create(&|r| r.vpn_port = Some(1195))),
        Row("port 70000", INVALID_PARAMETER_VALUE, "vpn-port", create(&|r| r.vpn_port = Some(70_000))),
        Row("port -1", INVALID_PARAMETER_VALUE, "vpn-port", create(&|r| r.vpn_port = Some(-1))),
        Row("three DNS servers", INVALID_PARAMETER_VALUE, "at most 2", create(&|r| r.dns_servers = Some(vec!["1.1.1.1".into(), "8.8.8.8".into(), "9.9.9.9".into()]))),
        Row("DNS server not an address", INVALID_PARAMETER_VALUE, "dns-servers", create(&|r| r.dns_servers = Some(vec!["dns.example".into()]))),
        Row("DNS server twice", INVALID_PARAMETER_VALUE, "twice", create(&|r| r.dns_servers = Some(vec!["1.1.1.1".into(), "1.1.1.1".into()]))),
        Row("session timeout 9 hours", INVALID_PARAMETER_VALUE, "session-timeout-hours", create(&|r| r.session_timeout_hours = Some(9))),
        Row("session timeout 0 hours", INVALID_PARAMETER_VALUE, "8, 10, 12 or 24", create(&|r| r.session_timeout_hours = Some(0))),
        Row("banner of 1401 characters", INVALID_PARAMETER_VALUE, "at most 1400", create(&|r| r.client_login_banner_options = Some(ClientLoginBannerOptions { enabled: true, banner_text: Some("é".repeat(1401)) }))),
        Row("banner enabled without text", MISSING_PARAMETER, "banner-text", create(&|r| r.client_login_banner_options = Some(ClientLoginBannerOptions { enabled: true, banner_text: None }))),
        Row("connect handler enabled without handler", MISSING_PARAMETER, "client-connect-options.handler", create(&|r| r.client_connect_options = Some(ClientConnectOptions { enabled: true, handler: None }))),
        Row("connect handler not a URL or path", INVALID_PARAMETER_VALUE, "client-connect-options.handler", create(&|r| r.client_connect_options = Some(ClientConnectOptions { enabled: true, handler: Some("ftp://x".into()) }))),
        Row("connect handler executable, no executable_dir configured", INVALID_PARAMETER_VALUE, "[connect_handler] table", create(&|r| r.client_connect_options = Some(ClientConnectOptions { enabled: true, handler: Some("/bin/true".into()) }))),
        Row("connect handler http:// not allowed", INVALID_PARAMETER_VALUE, "allow_http = true", create(&|r| r.client_connect_options = Some(ClientConnectOptions { enabled: true, handler: Some("http://127.0.0.1/hook".into()) }))),
        Row("self-service portal without federated auth", INVALID_PARAMETER_COMBINATION, "self-service-portal", create(&|r| r.self_service_portal = Some(true))),
        Row("description of 256 characters", INVALID_PARAMETER_VALUE, "description", create(&|r| r.description = Some("d".repeat(256)))),
        Row("tag key twice", INVALID_PARAMETER_VALUE, "tags", create(&|r| r.tags = vec![Tag { key: "a".into(), value: "1".into() }, Tag { key: "a".into(), value: "2".into() }])),
        Row("empty tag key", INVALID_PARAMETER_VALUE, "tags", create(&|r| r.tags = vec![Tag { key: String::new(), value: "1".into() }])),
        // -- modify
        Row("modify: unknown endpoint", ENDPOINT_NOT_FOUND, "does not exist", Box::new(|fx: &Fx| ok(fx.store.modify_endpoint("cvpn-endpoint-0123456789abcdef0", &ModifyEndpointRequest::default())))),
        Row("modify: malformed endpoint id", INVALID_PARAMETER_VALUE, "client-vpn-endpoint-id", Box::new(|fx: &Fx| ok(fx.store.modify_endpoint("vpn-1", &ModifyEndpointRequest::default())))),
        Row("modify: change the client CIDR", OPERATION_NOT_PERMITTED, "immutable", modify(&|r| r.client_cidr_block = Some("10.4.0.0/22".into()))),
        Row("modify: invalid client CIDR", INVALID_PARAMETER_VALUE, "client-cidr-block", modify(&|r| r.client_cidr_block = Some("10.4.0.0/30".into()))),
        Row("modify: change the transport", OPERATION_NOT_PERMITTED, "immutable", modify(&|r| r.transport_protocol = Some("tcp".into()))),
        Row("modify: change authentication", OPERATION_NOT_PERMITTED, "immutable", modify(&|r| r.authentication_options = Some(vec![AuthenticationOption::CertificateAuthentication { client_root_certificate_chain: fx.pki.foreign.pem() }]))),
        Row("modify: port 80", INVALID_PARAMETER_VALUE, "vpn-port", modify(&|r| r.vpn_port = Some(80))),
        Row("modify: executable handler, no executable_dir configured", INVALID_PARAMETER_VALUE, "executable_dir", modify(&|r| r.client_connect_options = Some(ClientConnectOptions { enabled: true, handler: Some("/bin/true".into()) }))),
        Row("modify: key that fits no certificate", INVALID_PARAMETER_COMBINATION, "does not match", modify(&|r| r.server_private_key = Some(fx.pki.other_key.clone()))),
        Row("modify: session timeout 48", INVALID_PARAMETER_VALUE, "session-timeout-hours", modify(&|r| r.session_timeout_hours = Some(48))),
        Row("modify: three DNS servers", INVALID_PARAMETER_VALUE, "dns-servers", modify(&|r| r.dns_servers = Some(vec!["1.1.1.1".into(), "1.0.0.1".into(), "8.8.8.8".into()]))),
        // -- associate / disassociate
        Row("associate: unknown endpoint", ENDPOINT_NOT_FOUND, "does not exist", Box::new(move |fx: &Fx| ok(fx.associate(&unknown_ep, "eth2", None)))),
        Row("associate: bad interface name", INVALID_PARAMETER_VALUE, "target-network-id", Box::new(move |fx: &Fx| ok(fx.associate(&e(), "eth/1", None)))),
        Row("associate: interface name too long", INVALID_PARAMETER_VALUE, "target-network-id", Box::new(move |fx: &Fx| ok(fx.associate(&e(), "a-very-long-interface", None)))),
        Row("associate: twice", DUPLICATE_ASSOCIATION, "already associated", Box::new(move |fx: &Fx| ok(fx.associate(&e(), "eth1", None)))),
        Row("associate: subnet inside the client CIDR", SUBNET_OVERLAPPING_CIDR, "overlaps the client CIDR", Box::new(move |fx: &Fx| ok(fx.associate(&e(), "eth2", Some("10.2.1.0/24"))))),
        Row("associate: subnet containing the client CIDR", SUBNET_OVERLAPPING_CIDR, "overlaps the client CIDR", Box::new(move |fx: &Fx| ok(fx.associate(&e(), "eth2", Some("10.0.0.0/8"))))),
        Row("associate: subnet not a CIDR", INVALID_PARAMETER_VALUE, "subnet-cidr", Box::new(move |fx: &Fx| ok(fx.associate(&e(), "eth2", Some("10.77.0.0/33"))))),
        Row("associate: SNAT not an address", INVALID_PARAMETER_VALUE, "snat-address", Box::new(move |fx: &Fx| ok(fx.store.associate_target_network(&AssociateTargetNetworkRequest { client_vpn_endpoint_id: e(), target_network_id: "eth2".into(), subnet_cidr: None, snat_address: Some("x".into()), node: None })))),
        Row("disassociate: unknown association", ASSOCIATION_NOT_FOUND, "does not exist", Box::new(move |fx: &Fx| ok(fx.store.disassociate_target_network(&e(), &unknown_assoc)))),
        Row("disassociate: malformed association id", INVALID_PARAMETER_VALUE, "association-id", Box::new(move |fx: &Fx| ok(fx.store.disassociate_target_network(&e(), "assoc-1")))),
        Row("disassociate: association of another endpoint", ASSOCIATION_NOT_FOUND, "does not belong", Box::new(move |fx: &Fx| ok(fx.store.disassociate_target_network(&b(), &assoc.association_id)))),
        // -- routes
        Row("route: destination overlaps the client CIDR", INVALID_PARAMETER_VALUE, "overlaps the client CIDR", Box::new(move |fx: &Fx| ok(fx.route(&e(), "10.2.2.0/24", "eth1")))),
        Row("route: destination containing the client CIDR", INVALID_PARAMETER_VALUE, "destination-cidr-block", Box::new(move |fx: &Fx| ok(fx.route(&e(), "10.0.0.0/8", "eth1")))),
        Row("route: destination not a CIDR", INVALID_PARAMETER_VALUE, "destination-cidr-block", Box::new(move |fx: &Fx| ok(fx.route(&e(), "everywhere", "eth1")))),
        Row("route: target not associated", INVALID_PARAMETER_VALUE, "not an associated target network", Box::new(move |fx: &Fx| ok(fx.route(&e(), "10.50.0.0/16", "eth9")))),
        Row("route: duplicate add-route", DUPLICATE_ROUTE, "already has a route", Box::new(move |fx: &Fx| ok(fx.route(&e(), "10.99.0.0/16", "eth1")))),
        Row("route: duplicate of the associate route", DUPLICATE_ROUTE, "already has a route", Box::new(move |fx: &Fx| ok(fx.route(&e(), "10.88.0.0/24", "eth1")))),
        Row("route: endpoint without target network", ACTIVE_ASSOCIATION_NOT_FOUND, "associate one first", Box::new(move |fx: &Fx| ok(fx.route(&b(), "10.50.0.0/16", "eth1")))),
        Row("route: unknown endpoint", ENDPOINT_NOT_FOUND, "does not exist", Box::new(move |fx: &Fx| ok(fx.route("cvpn-endpoint-0123456789abcdef0", "10.50.0.0/16", "eth1")))),
        Row("delete route: unknown", ROUTE_NOT_FOUND, "no route to 10.51.0.0/16", Box::new(move |fx: &Fx| ok(fx.delete_route(&e(), "10.51.0.0/16", None)))),
        Row("delete route: wrong target", ROUTE_NOT_FOUND, "through eth2", Box::new(move |fx: &Fx| ok(fx.delete_route(&e(), "10.99.0.0/16", Some("eth2"))))),
        Row("delete route: origin associate", OPERATION_NOT_PERMITTED, "disassociate", Box::new(move |fx: &Fx| ok(fx.delete_route(&e(), "10.88.0.0/24", Some("eth1"))))),
        // -- authorization rules
        Row("rule: group and all groups", INVALID_PARAMETER_COMBINATION, "not both", Box::new(move |fx: &Fx| ok(fx.store.authorize_rule(&AuthorizeRequest { protocol: None, port_range: None, client_vpn_endpoint_id: e(), target_network_cidr: "10.88.0.0/24".into(), access_group_id: Some("g".into()), authorize_all_groups: Some(true), description: None })))),
        Row("rule: neither group nor all groups", MISSING_PARAMETER, "access-group-id", Box::new(move |fx: &Fx| ok(fx.store.authorize_rule(&AuthorizeRequest { protocol: None, port_range: None, client_vpn_endpoint_id: e(), target_network_cidr: "10.88.0.0/24".into(), ..Default::default() })))),
        Row("rule: blank group", INVALID_PARAMETER_VALUE, "access-group-id", Box::new(move |fx: &Fx| ok(fx.rule(&e(), "10.88.0.0/24", Some("  "))))),
        Row("rule: destination with host bits", INVALID_PARAMETER_VALUE, "target-network-cidr", Box::new(move |fx: &Fx| ok(fx.rule(&e(), "10.88.0.1/24", None)))),
        Row("rule: duplicate", DUPLICATE_AUTHORIZATION_RULE, "already authorizes group \"engineering\"", Box::new(move |fx: &Fx| ok(fx.rule(&e(), "10.88.0.0/24", Some("engineering"))))),
        Row("rule: description too long", INVALID_PARAMETER_VALUE, "description", Box::new(move |fx: &Fx| ok(fx.store.authorize_rule(&AuthorizeRequest { protocol: None, port_range: None, client_vpn_endpoint_id: e(), target_network_cidr: "10.1.0.0/16".into(), authorize_all_groups: Some(true), description: Some("x".repeat(300)), ..Default::default() })))),
        Row("revoke: no such rule", AUTHORIZATION_RULE_NOT_FOUND, "has no rule", Box::new(move |fx: &Fx| ok(fx.store.revoke_rule(&RevokeRequest { protocol: None, port_range: None, client_vpn_endpoint_id: e(), target_network_cidr: "10.88.0.0/24".into(), access_group_id: None, revoke_all_groups: Some(true) })))),
        // -- connections
        Row("connection on a pending-associate endpoint", INCORRECT_STATE, "pending-associate", Box::new(move |fx: &Fx| ok(fx.connect(&b(), "alice", 10)))),
        Row("connection with an address outside the client CIDR", INVALID_PARAMETER_VALUE, "client-ip", Box::new(move |fx: &Fx| ok(fx.store.record_connection_start(&NewConnection { client_vpn_endpoint_id: e(), client_ip: Ipv4Addr::new(10, 3, 0, 1), common_name: "x".into(), username: None, device_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), device_port: 1, transport_protocol: TransportProtocol::Udp })))),
        Row("terminate: unknown connection", CONNECTION_NOT_FOUND, "does not exist", Box::new(move |fx: &Fx| ok(fx.store.terminate_connections(&e(), &TerminateTarget::ConnectionId(unknown_conn.clone()))))),
        Row("terminate: user without connection", CONNECTION_USER_NOT_FOUND, "\"mallory\"", Box::new(move |fx: &Fx| ok(fx.store.terminate_connections(&e(), &TerminateTarget::Username("mallory".into()))))),
        Row("describe connections: unknown endpoint", ENDPOINT_NOT_FOUND, "does not exist", Box::new(|fx: &Fx| ok(fx.store.describe_connections(&ConnectionFilter { client_vpn_endpoint_id: Some("cvpn-endpoint-0123456789abcdef0".into()), ..Default::default() })))),
        // -- states
        Row("delete an endpoint that has target networks", INCORRECT_STATE, "disassociate them first", Box::new(move |fx: &Fx| ok(fx.store.delete_endpoint(&e())))),
        Row("finish deleting an endpoint not deleting", INCORRECT_STATE, "not deleting", Box::new(move |fx: &Fx| ok(fx.store.finish_endpoint_deletion(&e())))),
        // -- CRL
        Row("CRL of another CA", INVALID_PARAMETER_VALUE, "not the endpoint's client CA", Box::new(move |fx: &Fx| ok(fx.store.import_crl(&e(), &Pki::crl_by(&fx.pki.foreign, &[5]))))),
        Row("CRL not PEM", INVALID_PARAMETER_VALUE, "certificate-revocation-list", Box::new(move |fx: &Fx| ok(fx.store.import_crl(&e(), "revoked: everyone")))),
        Row("CRL that is a certificate", INVALID_PARAMETER_VALUE, "CERTIFICATE", Box::new(move |fx: &Fx| ok(fx.store.import_crl(&e(), &fx.pki.ca_pem)))),
    ];

    let before = fx.store.describe_endpoints(&[]).unwrap();
    let mut failures = Vec::new();
    for Row(what, want, text, check) in &rows {
        match check(&fx) {
            Ok(()) => failures.push(format!("{what}: accepted, expected {want}")),
            Err(e) if e.code != *want => failures.push(format!("{what}: got {e}, expected {want}")),
            Err(e) if !e.message.contains(text) => failures.push(format!(
                "{what}: message {:?} does not mention {text:?}",
                e.message
            )),
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // Refused calls changed nothing.
    assert_eq!(fx.store.describe_endpoints(&[]).unwrap(), before);
    assert!(rows.len() >= 80, "{} rows", rows.len());
}

#[test]
fn valid_edge_values_are_accepted() {
    let fx = Fx::new();
    for (what, f) in [
        (
            "/12",
            Box::new(|r: &mut CreateEndpointRequest| {
                r.client_cidr_block = Some("10.16.0.0/12".into())
            }) as Box<dyn Fn(&mut CreateEndpointRequest)>,
        ),
        (
            "/22",
            Box::new(|r: &mut CreateEndpointRequest| {
                r.client_cidr_block = Some("10.2.4.0/22".into())
            }),
        ),
        (
            "port 1194 tcp",
            Box::new(|r: &mut CreateEndpointRequest| {
                r.vpn_port = Some(1194);
                r.transport_protocol = Some("tcp".into());
            }),
        ),
        (
            "two DNS servers",
            Box::new(|r: &mut CreateEndpointRequest| {
                r.dns_servers = Some(vec!["1.1.1.1".into(), "8.8.8.8".into()])
            }),
        ),
        (
            "banner of 1400 characters",
            Box::new(|r: &mut CreateEndpointRequest| {
                r.client_login_banner_options = Some(ClientLoginBannerOptions {
                    enabled: true,
                    banner_text: Some("é".repeat(1400)),
                })
            }),
        ),
        (
            "every session timeout",
            Box::new(|r: &mut CreateEndpointRequest| r.session_timeout_hours = Some(8)),
        ),
        (
            "https handler",
            Box::new(|r: &mut CreateEndpointRequest| {
                r.client_connect_options = Some(ClientConnectOptions {
                    enabled: true,
                    handler: Some("https://hooks.example.com/connect".into()),
                })
            }),
        ),
        (
            "description of 255 characters",
            Box::new(|r: &mut CreateEndpointRequest| r.description = Some("d".repeat(255))),
        ),
    ] {
        let mut req = fx.pki.create();
        f(&mut req);
        if let Err(e) = fx.store.create_endpoint(&req) {
            panic!("{what}: {e}");
        }
    }
    for h in [10, 12, 24] {
        let mut req = fx.pki.create();
        req.session_timeout_hours = Some(h);
        fx.store.create_endpoint(&req).unwrap();
    }
    // 0.0.0.0/0 overlaps every client CIDR yet is the usual full-tunnel route: allowed.
    let eid = fx.endpoint();
    fx.associate(&eid, "eth1", Some("10.88.0.0/24")).unwrap();
    fx.route(&eid, "0.0.0.0/0", "eth1").unwrap();
}

#[test]
fn defaults_and_id_formats() {
    let fx = Fx::new();
    let ep = fx.store.create_endpoint(&fx.pki.create()).unwrap();
    assert!(
        is_valid_id(ENDPOINT_ID_PREFIX, &ep.client_vpn_endpoint_id),
        "{}",
        ep.client_vpn_endpoint_id
    );
    assert_eq!(ep.client_vpn_endpoint_id.len(), "cvpn-endpoint-".len() + 17);
    assert_eq!(ep.status, EndpointStatus::PendingAssociate);
    assert_eq!(ep.transport_protocol, TransportProtocol::Udp);
    assert_eq!(ep.vpn_port, 443);
    assert_eq!(ep.session_timeout_hours, 24);
    assert!(!ep.split_tunnel);
    assert!(!ep.disconnect_on_session_timeout);
    assert!(!ep.self_service_portal);
    assert!(ep.dns_servers.is_empty());
    assert_eq!(
        ep.connection_log_options,
        ConnectionLogOptions {
            enabled: true,
            stdout: false
        }
    );
    assert_eq!(ep.client_connect_options, ClientConnectOptions::default());
    assert_eq!(
        ep.client_login_banner_options,
        ClientLoginBannerOptions::default()
    );
    assert_eq!(ep.creation_time, Timestamp(T0));
    assert_eq!(ep.client_ca(), Some(fx.pki.ca_pem.as_str()));
    assert_eq!(ep.policy_revision, 0);

    let a = fx
        .associate(&ep.client_vpn_endpoint_id, "eth1", None)
        .unwrap()
        .association;
    assert!(
        is_valid_id(ASSOCIATION_ID_PREFIX, &a.association_id),
        "{}",
        a.association_id
    );
    let c = fx.connect(&ep.client_vpn_endpoint_id, "alice", 2).unwrap();
    assert!(
        is_valid_id(CONNECTION_ID_PREFIX, &c.connection_id),
        "{}",
        c.connection_id
    );
    assert_ne!(fx.endpoint(), ep.client_vpn_endpoint_id);
}

#[test]
fn error_codes_map_to_http_statuses() {
    use codes::*;
    for (c, status) in [
        (INVALID_PARAMETER_VALUE, 400),
        (INVALID_PARAMETER_COMBINATION, 400),
        (MISSING_PARAMETER, 400),
        (AUTHORIZATION_RULE_LIMIT_EXCEEDED, 400),
        (ROUTE_LIMIT_EXCEEDED, 400),
        (CRL_LIMIT_EXCEEDED, 400),
        (OPERATION_NOT_PERMITTED, 400),
        (SUBNET_OVERLAPPING_CIDR, 400),
        (ENDPOINT_NOT_FOUND, 404),
        (ASSOCIATION_NOT_FOUND, 404),
        (ROUTE_NOT_FOUND, 404),
        (AUTHORIZATION_RULE_NOT_FOUND, 404),
        (CONNECTION_NOT_FOUND, 404),
        (CONNECTION_USER_NOT_FOUND, 404),
        (INCORRECT_STATE, 409),
        (DUPLICATE_ROUTE, 409),
        (DUPLICATE_AUTHORIZATION_RULE, 409),
        (DUPLICATE_ASSOCIATION, 409),
        (ACTIVE_ASSOCIATION_NOT_FOUND, 409),
        (INTERNAL_ERROR, 500),
    ] {
        assert_eq!(ApiError::new(c, "x").http_status(), status, "{c}");
    }
    let e = ApiError::invalid("vpn-port", "80 is not an allowed port");
    assert_eq!(
        e.to_string(),
        "InvalidParameterValue: vpn-port: 80 is not an allowed port"
    );
}

#[test]
fn store_is_shareable_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    let fx = Fx::new();
    let store = Arc::new(fx.store);
    let eid = store
        .create_endpoint(&fx.pki.create())
        .unwrap()
        .client_vpn_endpoint_id;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (store, eid) = (Arc::clone(&store), eid.clone());
            std::thread::spawn(move || {
                for i in 0..10 {
                    store
                        .authorize_rule(&AuthorizeRequest {
                            protocol: None,
                            port_range: None,
                            client_vpn_endpoint_id: eid.clone(),
                            target_network_cidr: format!("10.{t}.{i}.0/24"),
                            authorize_all_groups: Some(true),
                            ..Default::default()
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.describe_rules(&eid).unwrap().len(), 40);
    assert_eq!(store.describe_endpoint(&eid).unwrap().policy_revision, 40);
}

#[test]
fn resources_and_requests_use_aws_style_names() {
    let fx = Fx::new();
    let ep = fx.store.create_endpoint(&fx.pki.create()).unwrap();
    let text = toml::to_string(&ep).unwrap();
    for want in [
        "client-vpn-endpoint-id = \"cvpn-endpoint-",
        "client-cidr-block = \"10.2.0.0/22\"",
        "status = \"pending-associate\"",
        "creation-time = \"2023-11-14 22:13:20\"",
        "transport-protocol = \"udp\"",
        "vpn-port = 443",
        "session-timeout-hours = 24",
        "type = \"certificate-authentication\"",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    assert!(
        !text.contains("PRIVATE KEY"),
        "describe output never carries the key"
    );
    let back: Endpoint = toml::from_str(&text).unwrap();
    assert_eq!(back, ep);

    // A request as the API or `cvpn apply` would read it; unknown fields are refused.
    let req: CreateEndpointRequest = toml::from_str(
        "client-cidr-block = \"10.2.0.0/22\"\nvpn-port = 1194\nsplit-tunnel = true\n\
         dns-servers = [\"10.88.0.2\"]\n[connection-log-options]\nenabled = true\nstdout = true\n",
    )
    .unwrap();
    assert_eq!(req.vpn_port, Some(1194));
    assert_eq!(
        req.connection_log_options,
        Some(ConnectionLogOptions {
            enabled: true,
            stdout: true
        })
    );
    assert!(toml::from_str::<CreateEndpointRequest>("client-cidr = \"10.2.0.0/22\"").is_err());
}

// ---- states -------------------------------------------------------------------------------------

#[test]
fn endpoint_state_follows_its_associations() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let ep = |fx: &Fx| fx.store.describe_endpoint(&eid).unwrap();
    assert_eq!(ep(&fx).status, EndpointStatus::PendingAssociate);

    let a1 = fx.associate(&eid, "eth1", Some("10.88.0.0/24")).unwrap();
    assert_eq!(a1.endpoint_status, EndpointStatus::Available);
    assert_eq!(a1.association.status, AssociationStatus::Associated);
    assert_eq!(ep(&fx).status, EndpointStatus::Available);
    let a2 = fx.associate(&eid, "eth2", Some("10.89.0.0/24")).unwrap();
    assert_eq!(ep(&fx).status, EndpointStatus::Available);

    let alice = fx.connect(&eid, "alice", 2).unwrap();
    let bob = fx.connect(&eid, "bob", 3).unwrap();
    fx.store
        .end_connection(&bob.connection_id, ConnectionCounters::default())
        .unwrap();

    // Not the last: the endpoint stays available, no connection is touched.
    let d1 = fx
        .store
        .disassociate_target_network(&eid, &a1.association.association_id)
        .unwrap();
    assert_eq!(d1.endpoint_status, EndpointStatus::Available);
    assert!(d1.terminate_connections.is_empty());
    assert_eq!(d1.association.status, AssociationStatus::Disassociated);
    assert_eq!(
        code(
            fx.store
                .disassociate_target_network(&eid, &a1.association.association_id)
        ),
        codes::INCORRECT_STATE
    );

    // The last: back to pending-associate, every active connection to terminate.
    let d2 = fx
        .store
        .disassociate_target_network(&eid, &a2.association.association_id)
        .unwrap();
    assert_eq!(d2.endpoint_status, EndpointStatus::PendingAssociate);
    assert_eq!(d2.terminate_connections, vec![alice.connection_id.clone()]);
    assert_eq!(ep(&fx).status, EndpointStatus::PendingAssociate);
    let c = fx
        .store
        .describe_connections(&ConnectionFilter {
            connection_id: Some(alice.connection_id.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(c[0].status, ConnectionStatus::Terminating);
    assert_eq!(code(fx.connect(&eid, "carol", 4)), codes::INCORRECT_STATE);

    // Disassociated associations stay visible; the same interface can be associated again.
    let all = fx.store.describe_target_networks(&eid, &[]).unwrap();
    assert_eq!(all.len(), 2);
    assert!(all
        .iter()
        .all(|a| a.status == AssociationStatus::Disassociated));
    let a3 = fx.associate(&eid, "eth1", None).unwrap();
    assert_ne!(
        a3.association.target_id, a1.association.target_id,
        "target ids are never reused"
    );
    assert_eq!(ep(&fx).status, EndpointStatus::Available);
    fx.store
        .disassociate_target_network(&eid, &a3.association.association_id)
        .unwrap();

    // Deleting: deleting, then deleted; no change is accepted meanwhile.
    let del = fx.store.delete_endpoint(&eid).unwrap();
    assert_eq!(del.endpoint.status, EndpointStatus::Deleting);
    assert_eq!(code(fx.store.delete_endpoint(&eid)), codes::INCORRECT_STATE);
    assert_eq!(
        code(fx.store.modify_endpoint(
            &eid,
            &ModifyEndpointRequest {
                split_tunnel: Some(true),
                ..Default::default()
            }
        )),
        codes::INCORRECT_STATE
    );
    assert_eq!(
        code(fx.rule(&eid, "10.88.0.0/24", None)),
        codes::INCORRECT_STATE
    );
    assert_eq!(
        code(fx.associate(&eid, "eth1", None)),
        codes::INCORRECT_STATE
    );
    let listed: Vec<_> = fx
        .store
        .describe_endpoints(&[])
        .unwrap()
        .into_iter()
        .filter(|e| e.status == EndpointStatus::Deleting)
        .collect();
    assert_eq!(
        listed.len(),
        1,
        "a restarted daemon finds the endpoints to finish deleting"
    );
    fx.advance(10);
    let done = fx.store.finish_endpoint_deletion(&eid).unwrap();
    assert_eq!(done.endpoint.status, EndpointStatus::Deleted);
    assert_eq!(done.endpoint.deletion_time, Some(Timestamp(T0 + 10)));
    assert_eq!(
        fx.store
            .endpoint_secrets(&eid)
            .unwrap()
            .server_private_key_pem,
        "",
        "the key is erased"
    );
    assert!(fx
        .store
        .describe_target_networks(&eid, &[])
        .unwrap()
        .is_empty());
    assert!(fx
        .store
        .describe_connections(&ConnectionFilter {
            client_vpn_endpoint_id: Some(eid.clone()),
            ..Default::default()
        })
        .unwrap()
        .is_empty());
    assert_eq!(
        code(fx.store.finish_endpoint_deletion(&eid)),
        codes::INCORRECT_STATE
    );

    // Visible for the retention period, then pruned.
    fx.advance(3600);
    assert_eq!(fx.store.prune().unwrap().endpoints, 0);
    fx.advance(1);
    assert_eq!(
        fx.store.prune().unwrap(),
        PruneReport {
            connections: 0,
            associations: 0,
            endpoints: 1
        }
    );
    assert_eq!(
        code(fx.store.describe_endpoint(&eid)),
        codes::ENDPOINT_NOT_FOUND
    );
}

#[test]
fn modify_changes_mutable_fields_and_is_idempotent() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let req = ModifyEndpointRequest {
        client_cidr_block: Some("10.2.0.0/22".into()),
        transport_protocol: Some("udp".into()),
        authentication_options: Some(fx.pki.cert_auth()),
        vpn_port: Some(1194),
        dns_servers: Some(vec!["10.88.0.2".into()]),
        split_tunnel: Some(true),
        session_timeout_hours: Some(12),
        disconnect_on_session_timeout: Some(true),
        client_login_banner_options: Some(ClientLoginBannerOptions {
            enabled: true,
            banner_text: Some("Authorized use only".into()),
        }),
        connection_log_options: Some(ConnectionLogOptions {
            enabled: true,
            stdout: true,
        }),
        description: Some("office".into()),
        tags: Some(vec![Tag {
            key: "team".into(),
            value: "net".into(),
        }]),
        ..Default::default()
    };
    let r = fx.store.modify_endpoint(&eid, &req).unwrap();
    assert_eq!(
        r.changed,
        [
            "vpn-port",
            "dns-servers",
            "split-tunnel",
            "session-timeout-hours",
            "disconnect-on-session-timeout",
            "client-login-banner-options",
            "connection-log-options",
            "description",
            "tags"
        ]
    );
    let ep = r.endpoint;
    assert_eq!(
        (ep.vpn_port, ep.split_tunnel, ep.session_timeout_hours),
        (1194, true, 12)
    );
    assert_eq!(ep.dns_servers, vec![Ipv4Addr::new(10, 88, 0, 2)]);
    assert_eq!(ep.description.as_deref(), Some("office"));
    assert_eq!(ep.tags.len(), 1);
    // The same request again changes nothing.
    let again = fx.store.modify_endpoint(&eid, &req).unwrap();
    assert!(again.changed.is_empty(), "{:?}", again.changed);
    assert_eq!(again.endpoint, ep);
    // Clearing the description.
    let r = fx
        .store
        .modify_endpoint(
            &eid,
            &ModifyEndpointRequest {
                description: Some(String::new()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.endpoint.description, None);
    // A renewed certificate for the same key is accepted alone.
    let key = KeyPair::from_pem(&fx.pki.server_key).unwrap();
    let mut p = CertificateParams::new(vec!["vpn.example.com".to_string()]).unwrap();
    p.serial_number = Some(SerialNumber::from(3u64));
    let renewed = p.signed_by(&key, &fx.pki.issuer).unwrap().pem();
    let r = fx
        .store
        .modify_endpoint(
            &eid,
            &ModifyEndpointRequest {
                server_certificate: Some(renewed.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.changed, ["server-certificate"]);
    assert_eq!(
        fx.store
            .endpoint_secrets(&eid)
            .unwrap()
            .server_certificate_pem,
        renewed
    );
}

// ---- routes and the data plane's view -----------------------------------------------------------

#[test]
fn routes_follow_origin_rules_and_feed_the_policy() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let a1 = fx.associate(&eid, "eth1", Some("10.88.0.0/24")).unwrap();
    let auto = a1.route.clone().unwrap();
    assert_eq!(auto.origin, RouteOrigin::Associate);
    assert_eq!(auto.status, RouteStatus::Active);
    assert_eq!(auto.destination_cidr.to_string(), "10.88.0.0/24");
    assert_eq!(auto.target_subnet, "eth1");
    assert_eq!(auto.target_id, a1.association.target_id);

    let a2 = fx
        .store
        .associate_target_network(&AssociateTargetNetworkRequest {
            client_vpn_endpoint_id: eid.clone(),
            target_network_id: "eth2".into(),
            subnet_cidr: None,
            snat_address: Some("192.0.2.5".into()),
            node: None,
        })
        .unwrap();
    assert!(a2.route.is_none(), "no subnet known, no route yet");

    let added = fx.route(&eid, "10.99.0.0/16", "eth1").unwrap();
    assert_eq!(added.origin, RouteOrigin::AddRoute);
    fx.route(&eid, "0.0.0.0/0", "eth2").unwrap();
    // The same destination through another network is another route (AWS keys routes by
    // target too); the older one comes first in the policy.
    fx.route(&eid, "10.99.0.0/16", "eth2").unwrap();
    assert_eq!(
        code(fx.delete_route(&eid, "10.99.0.0/16", None)),
        codes::MISSING_PARAMETER
    );

    fx.rule(&eid, "10.88.0.0/24", Some("engineering")).unwrap();
    fx.rule(&eid, "0.0.0.0/0", None).unwrap();

    let t1 = a1.association.target_id;
    let t2 = a2.association.target_id;
    let p = fx.store.policy_for(&eid).unwrap();
    let routes: Vec<(String, u32)> = p
        .routes
        .iter()
        .map(|r| (r.destination.to_string(), r.target))
        .collect();
    assert_eq!(
        routes,
        [
            ("10.88.0.0/24".to_string(), t1),
            ("10.99.0.0/16".into(), t1),
            ("0.0.0.0/0".into(), t2),
            ("10.99.0.0/16".into(), t2)
        ]
    );
    assert_eq!(
        p.rules,
        [
            policy::AuthorizationRule {
                destination: "10.88.0.0/24".parse().unwrap(),
                access: policy::Access::Group("engineering".into()),
                ports: None,
            },
            policy::AuthorizationRule {
                destination: "0.0.0.0/0".parse().unwrap(),
                access: policy::Access::AllGroups,
                ports: None,
            },
        ]
    );
    let specs = fx.store.target_specs(&eid).unwrap();
    assert_eq!(specs.len(), 2);
    assert_eq!(
        (specs[0].id, specs[0].interface.as_str(), specs[0].snat_addr),
        (t1, "eth1", None)
    );
    assert_eq!(
        (specs[1].id, specs[1].interface.as_str(), specs[1].snat_addr),
        (t2, "eth2", Some(Ipv4Addr::new(192, 0, 2, 5)))
    );

    // Only add-route routes can be deleted.
    assert_eq!(
        code(fx.delete_route(&eid, "10.88.0.0/24", None)),
        codes::OPERATION_NOT_PERMITTED
    );
    let gone = fx.delete_route(&eid, "10.99.0.0/16", Some("eth2")).unwrap();
    assert_eq!(gone.status, RouteStatus::Deleting);
    assert_eq!(fx.store.describe_routes(&eid).unwrap().len(), 3);

    // The daemon learns eth2's subnet: its associate route appears; a change moves it.
    let u = fx
        .store
        .update_association_subnet(&a2.association.association_id, Some("10.89.0.0/24"))
        .unwrap();
    assert_eq!(
        u.added_route.as_ref().map(|r| r.origin),
        Some(RouteOrigin::Associate)
    );
    assert!(u.removed_route.is_none());
    let u = fx
        .store
        .update_association_subnet(&a2.association.association_id, Some("10.90.0.0/24"))
        .unwrap();
    assert_eq!(
        u.removed_route.unwrap().destination_cidr.to_string(),
        "10.89.0.0/24"
    );
    assert_eq!(
        u.association.subnet_cidr.unwrap().to_string(),
        "10.90.0.0/24"
    );
    assert_eq!(
        code(
            fx.store
                .update_association_subnet(&a2.association.association_id, Some("10.2.0.0/24"))
        ),
        codes::SUBNET_OVERLAPPING_CIDR
    );
    let same = fx
        .store
        .update_association_subnet(&a2.association.association_id, Some("10.90.0.0/24"))
        .unwrap();
    assert!(same.added_route.is_none() && same.removed_route.is_none());

    // Disassociating removes every route through the network, both origins.
    let d = fx
        .store
        .disassociate_target_network(&eid, &a1.association.association_id)
        .unwrap();
    let mut removed: Vec<(String, RouteOrigin)> = d
        .removed_routes
        .iter()
        .map(|r| (r.destination_cidr.to_string(), r.origin))
        .collect();
    removed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        removed,
        [
            ("10.88.0.0/24".to_string(), RouteOrigin::Associate),
            ("10.99.0.0/16".into(), RouteOrigin::AddRoute)
        ]
    );
    let p = fx.store.policy_for(&eid).unwrap();
    assert!(p.routes.iter().all(|r| r.target == t2), "{p:?}");
    assert_eq!(fx.store.target_specs(&eid).unwrap().len(), 1);

    // Revision moved with every policy change.
    let ep = fx.store.describe_endpoint(&eid).unwrap();
    assert_eq!(ep.policy_revision, 11);
}

#[test]
fn rules_are_authorized_and_revoked() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let r = fx
        .store
        .authorize_rule(&AuthorizeRequest {
            protocol: None,
            port_range: None,
            client_vpn_endpoint_id: eid.clone(),
            target_network_cidr: "10.88.0.0/24".into(),
            access_group_id: Some("engineering".into()),
            authorize_all_groups: None,
            description: Some("engineers".into()),
        })
        .unwrap();
    assert_eq!(
        (
            r.group_id.as_deref(),
            r.access_all,
            r.description.as_deref()
        ),
        (Some("engineering"), false, Some("engineers"))
    );
    // The same destination for another group, and for all groups, are distinct rules.
    fx.rule(&eid, "10.88.0.0/24", Some("ops")).unwrap();
    fx.rule(&eid, "10.88.0.0/24", None).unwrap();
    assert_eq!(
        code(fx.rule(&eid, "10.88.0.0/24", None)),
        codes::DUPLICATE_AUTHORIZATION_RULE
    );
    assert_eq!(fx.store.describe_rules(&eid).unwrap().len(), 3);
    let gone = fx
        .store
        .revoke_rule(&RevokeRequest {
            protocol: None,
            port_range: None,
            client_vpn_endpoint_id: eid.clone(),
            target_network_cidr: "10.88.0.0/24".into(),
            access_group_id: None,
            revoke_all_groups: Some(true),
        })
        .unwrap();
    assert!(gone.access_all);
    let left: Vec<Option<String>> = fx
        .store
        .describe_rules(&eid)
        .unwrap()
        .into_iter()
        .map(|r| r.group_id)
        .collect();
    assert_eq!(left, [Some("engineering".to_string()), Some("ops".into())]);
}

#[test]
fn rules_limited_to_ports_are_their_own_rules_and_reach_the_policy() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let req = |protocol: Option<&str>, ports: Option<&str>| AuthorizeRequest {
        client_vpn_endpoint_id: eid.clone(),
        target_network_cidr: "10.88.0.10/32".into(),
        access_group_id: Some("web".into()),
        protocol: protocol.map(str::to_string),
        port_range: ports.map(str::to_string),
        ..Default::default()
    };
    let r = fx
        .store
        .authorize_rule(&req(Some("TCP"), Some("443")))
        .unwrap();
    assert_eq!(
        (r.protocol.as_deref(), r.port_range.as_deref()),
        (Some("tcp"), Some("443"))
    );
    // Another range, another protocol and the rule without ports are distinct rules; the same
    // one again is a duplicate.
    fx.store
        .authorize_rule(&req(Some("tcp"), Some("8000-8100")))
        .unwrap();
    fx.store.authorize_rule(&req(Some("icmp"), None)).unwrap();
    fx.store.authorize_rule(&req(None, None)).unwrap();
    assert_eq!(
        code(fx.store.authorize_rule(&req(Some("tcp"), Some("443")))),
        codes::DUPLICATE_AUTHORIZATION_RULE
    );
    // Refused: ports without a protocol, ports for icmp, reversed or out-of-range ports,
    // an unknown protocol.
    for (p, r, want) in [
        (None, Some("443"), codes::MISSING_PARAMETER),
        (
            Some("icmp"),
            Some("1"),
            codes::INVALID_PARAMETER_COMBINATION,
        ),
        (Some("tcp"), Some("90-80"), codes::INVALID_PARAMETER_VALUE),
        (Some("tcp"), Some("0"), codes::INVALID_PARAMETER_VALUE),
        (Some("tcp"), Some("65536"), codes::INVALID_PARAMETER_VALUE),
        (Some("sctp"), None, codes::INVALID_PARAMETER_VALUE),
    ] {
        assert_eq!(
            code(fx.store.authorize_rule(&req(p, r))),
            want,
            "{p:?} {r:?}"
        );
    }
    // The policy carries the limits.
    let policy = fx.store.policy_for(&eid).unwrap();
    let ports: Vec<Option<String>> = policy
        .rules
        .iter()
        .map(|r| r.ports.map(|p| p.describe()))
        .collect();
    assert_eq!(
        ports,
        [
            Some("tcp/443".to_string()),
            Some("tcp/8000-8100".into()),
            Some("icmp".into()),
            None
        ]
    );
    // Revoking names the ports: the rule without them stays.
    let revoke = |protocol: Option<&str>, ports: Option<&str>| RevokeRequest {
        client_vpn_endpoint_id: eid.clone(),
        target_network_cidr: "10.88.0.10/32".into(),
        access_group_id: Some("web".into()),
        protocol: protocol.map(str::to_string),
        port_range: ports.map(str::to_string),
        ..Default::default()
    };
    assert_eq!(
        code(fx.store.revoke_rule(&revoke(Some("tcp"), Some("444")))),
        codes::AUTHORIZATION_RULE_NOT_FOUND
    );
    fx.store
        .revoke_rule(&revoke(Some("tcp"), Some("443")))
        .unwrap();
    fx.store.revoke_rule(&revoke(None, None)).unwrap();
    assert_eq!(fx.store.describe_rules(&eid).unwrap().len(), 2);
}

// ---- quotas -------------------------------------------------------------------------------------

#[test]
fn quotas_are_enforced() {
    let fx = Fx::with_quotas(Quotas {
        authorization_rules_per_endpoint: 3,
        routes_per_association: 3,
        crl_entries: 2,
    });
    let eid = fx.endpoint();
    for i in 0..3 {
        fx.rule(&eid, &format!("10.{i}.0.0/16"), None).unwrap();
    }
    let e = fx.rule(&eid, "10.9.0.0/16", None).unwrap_err();
    assert_eq!(e.code, codes::AUTHORIZATION_RULE_LIMIT_EXCEEDED);
    assert!(e.message.contains("quota of 3"), "{e}");
    // Quotas are per endpoint: another one has its own.
    let other = fx.endpoint();
    fx.rule(&other, "10.9.0.0/16", None).unwrap();
    // Freeing one makes room.
    fx.store
        .revoke_rule(&RevokeRequest {
            protocol: None,
            port_range: None,
            client_vpn_endpoint_id: eid.clone(),
            target_network_cidr: "10.0.0.0/16".into(),
            revoke_all_groups: Some(true),
            ..Default::default()
        })
        .unwrap();
    fx.rule(&eid, "10.9.0.0/16", None).unwrap();

    // Routes: per association, the associate route counts.
    fx.associate(&eid, "eth1", Some("10.88.0.0/24")).unwrap();
    fx.associate(&eid, "eth2", None).unwrap();
    fx.route(&eid, "10.100.0.0/16", "eth1").unwrap();
    fx.route(&eid, "10.101.0.0/16", "eth1").unwrap();
    let e = fx.route(&eid, "10.102.0.0/16", "eth1").unwrap_err();
    assert_eq!(e.code, codes::ROUTE_LIMIT_EXCEEDED);
    assert!(e.message.contains("eth1"), "{e}");
    for i in 0..3 {
        fx.route(&eid, &format!("10.{}.0.0/16", 110 + i), "eth2")
            .unwrap();
    }
    assert_eq!(
        code(fx.route(&eid, "10.120.0.0/16", "eth2")),
        codes::ROUTE_LIMIT_EXCEEDED
    );
    // A full association cannot take its associate route either.
    let a3 = fx.associate(&eid, "eth3", None).unwrap().association;
    for i in 0..3 {
        fx.route(&eid, &format!("10.{}.0.0/16", 130 + i), "eth3")
            .unwrap();
    }
    assert_eq!(
        code(
            fx.store
                .update_association_subnet(&a3.association_id, Some("10.87.0.0/24"))
        ),
        codes::ROUTE_LIMIT_EXCEEDED
    );

    // CRL entries.
    fx.store.import_crl(&eid, &fx.pki.crl(&[7, 8])).unwrap();
    let e = fx
        .store
        .import_crl(&eid, &fx.pki.crl(&[7, 8, 9]))
        .unwrap_err();
    assert_eq!(e.code, codes::CRL_LIMIT_EXCEEDED);
    assert!(e.message.contains("at most 2"), "{e}");
    assert_eq!(
        Quotas::default(),
        Quotas {
            authorization_rules_per_endpoint: 200,
            routes_per_association: 100,
            crl_entries: 20_000
        }
    );
}

// ---- CRL ----------------------------------------------------------------------------------------

#[test]
fn crl_import_and_export() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    assert_eq!(fx.store.export_crl(&eid).unwrap(), None);
    let pem = fx.pki.crl(&[0x64, 0x1234]);
    let s = fx.store.import_crl(&eid, &pem).unwrap();
    assert_eq!((s.crls, s.entries), (1, 2));
    assert_eq!(s.revoked_serials, ["64", "12:34"]);
    assert_eq!(
        fx.store.export_crl(&eid).unwrap().as_deref(),
        Some(pem.as_str())
    );
    assert_eq!(fx.store.describe_endpoint(&eid).unwrap().crl_entries, 2);
    assert_eq!(
        fx.store.endpoint_secrets(&eid).unwrap().crl_pem.as_deref(),
        Some(pem.as_str())
    );
    // Replaced as a whole; an empty CRL is valid.
    let empty = fx.pki.crl(&[]);
    assert_eq!(fx.store.import_crl(&eid, &empty).unwrap().entries, 0);
    assert_eq!(
        fx.store.export_crl(&eid).unwrap().as_deref(),
        Some(empty.as_str())
    );
    // Two CRLs in one bundle.
    let both = format!("{}{}", fx.pki.crl(&[1]), fx.pki.crl(&[2, 3]));
    assert_eq!(fx.store.import_crl(&eid, &both).unwrap().entries, 3);
}

// ---- connections --------------------------------------------------------------------------------

#[test]
fn certificate_clients_are_found_by_common_name_and_ids_can_be_chosen() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    fx.associate(&eid, "eth1", Some("10.88.0.0/24")).unwrap();
    let new = |cn: &str, user: Option<&str>, ip: u8| NewConnection {
        client_vpn_endpoint_id: eid.clone(),
        client_ip: Ipv4Addr::new(10, 2, 0, ip),
        common_name: cn.into(),
        username: user.map(Into::into),
        device_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, ip)),
        device_port: 40_000,
        transport_protocol: TransportProtocol::Udp,
    };
    // The daemon names connections itself (the connection log uses the same id).
    let id = "cvpn-connection-0123456789abcdef0";
    let carol = fx
        .store
        .record_connection_start_as(id, &new("carol", None, 2))
        .unwrap();
    assert_eq!(carol.connection_id, id);
    assert!(
        fx.store
            .record_connection_start_as(id, &new("carol", None, 3))
            .is_err(),
        "an id is never reused"
    );
    assert_eq!(
        code(
            fx.store
                .record_connection_start_as("conn-1", &new("x", None, 4))
        ),
        codes::INVALID_PARAMETER_VALUE
    );
    // A user-authenticated "carol" is someone else than the certificate "carol"… unless no
    // user name was given: then the user is the certificate's common name.
    fx.store
        .record_connection_start(&new("laptop-7", Some("dave"), 5))
        .unwrap();
    let by = |user: &str| {
        fx.store
            .describe_connections(&ConnectionFilter {
                client_vpn_endpoint_id: Some(eid.clone()),
                username: Some(user.into()),
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|c| c.common_name)
            .collect::<Vec<_>>()
    };
    assert_eq!(by("carol"), ["carol"]);
    assert_eq!(by("dave"), ["laptop-7"]);
    assert!(
        by("laptop-7").is_empty(),
        "a user name, when given, is the user"
    );
    let t = fx
        .store
        .terminate_connections(&eid, &TerminateTarget::Username("carol".into()))
        .unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].connection_id, id);
}

#[test]
fn connections_lifecycle_filters_and_retention() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    fx.associate(&eid, "eth1", Some("10.88.0.0/24")).unwrap();
    let alice = fx.connect(&eid, "alice", 2).unwrap();
    let alice2 = fx.connect(&eid, "alice", 3).unwrap();
    let bob = fx.connect(&eid, "bob", 4).unwrap();
    assert_eq!(alice.status, ConnectionStatus::Active);
    assert_eq!(alice.connection_start_time, Timestamp(T0));
    assert_eq!(alice.client_ip, Ipv4Addr::new(10, 2, 0, 2));
    assert_eq!(alice.port, 50_002);

    fx.advance(30);
    let c = ConnectionCounters {
        ingress_bytes: 1000,
        egress_bytes: 2000,
        ingress_packets: 10,
        egress_packets: 20,
    };
    let u = fx.store.update_connection(&alice.connection_id, c).unwrap();
    assert_eq!((u.ingress_bytes, u.egress_packets), (1000, 20));
    assert_eq!(u.connection_last_update_time, Timestamp(T0 + 30));
    let batch = vec![
        (
            bob.connection_id.clone(),
            ConnectionCounters {
                ingress_bytes: 5,
                ..Default::default()
            },
        ),
        ("cvpn-connection-0123456789abcdef0".to_string(), c),
    ];
    assert_eq!(fx.store.update_connections(&batch).unwrap(), 1);
    let from_dp: ConnectionCounters = crate::dataplane::SessionCounters {
        from_client_packets: 1,
        from_client_bytes: 2,
        to_client_packets: 3,
        to_client_bytes: 4,
        dropped_packets: 5,
    }
    .into();
    assert_eq!(
        from_dp,
        ConnectionCounters {
            ingress_bytes: 2,
            egress_bytes: 4,
            ingress_packets: 1,
            egress_packets: 3
        }
    );

    // Filters.
    let by = |f: ConnectionFilter| -> Vec<String> {
        fx.store
            .describe_connections(&f)
            .unwrap()
            .into_iter()
            .map(|c| c.connection_id)
            .collect()
    };
    assert_eq!(by(ConnectionFilter::default()).len(), 3);
    assert_eq!(
        by(ConnectionFilter {
            username: Some("alice".into()),
            ..Default::default()
        }),
        [alice.connection_id.clone(), alice2.connection_id.clone()]
    );
    assert_eq!(
        by(ConnectionFilter {
            client_vpn_endpoint_id: Some(eid.clone()),
            username: Some("bob".into()),
            ..Default::default()
        }),
        std::slice::from_ref(&bob.connection_id)
    );
    let other = fx.endpoint();
    assert!(by(ConnectionFilter {
        client_vpn_endpoint_id: Some(other),
        ..Default::default()
    })
    .is_empty());

    // Terminate by user name, then by id.
    let t = fx
        .store
        .terminate_connections(&eid, &TerminateTarget::Username("alice".into()))
        .unwrap();
    assert_eq!(t.len(), 2);
    assert!(t
        .iter()
        .all(|t| t.previous_status == ConnectionStatus::Active
            && t.current_status == ConnectionStatus::Terminating));
    fx.advance(5);
    let ended = fx.store.end_connection(&alice.connection_id, c).unwrap();
    assert_eq!(ended.status, ConnectionStatus::Terminated);
    assert_eq!(ended.connection_end_time, Some(Timestamp(T0 + 35)));
    assert_eq!(
        code(fx.store.end_connection(&alice.connection_id, c)),
        codes::INCORRECT_STATE
    );
    assert_eq!(
        code(fx.store.update_connection(&alice.connection_id, c)),
        codes::INCORRECT_STATE
    );
    assert_eq!(
        code(fx.store.terminate_connections(
            &eid,
            &TerminateTarget::ConnectionId(alice.connection_id.clone())
        )),
        codes::INCORRECT_STATE
    );
    let failed = fx
        .store
        .connection_termination_failed(&alice2.connection_id)
        .unwrap();
    assert_eq!(failed.status, ConnectionStatus::FailedToTerminate);
    assert_eq!(
        code(fx.store.connection_termination_failed(&bob.connection_id)),
        codes::INCORRECT_STATE
    );
    let t = fx
        .store
        .terminate_connections(
            &eid,
            &TerminateTarget::ConnectionId(bob.connection_id.clone()),
        )
        .unwrap();
    assert_eq!(t[0].previous_status, ConnectionStatus::Active);
    fx.store
        .end_connection(&bob.connection_id, ConnectionCounters::default())
        .unwrap();
    assert_eq!(
        by(ConnectionFilter {
            status: Some(ConnectionStatus::Terminated),
            ..Default::default()
        })
        .len(),
        2
    );

    // Ended connections stay visible for 60 minutes, then vanish and are pruned; a
    // connection still recorded active (alice2 failed to terminate: no end time) stays.
    fx.advance(3600);
    assert_eq!(
        by(ConnectionFilter::default()).len(),
        3,
        "bob ended at T0+35, alice at T0+35: still within the hour"
    );
    assert_eq!(fx.store.prune().unwrap().connections, 0);
    fx.advance(1);
    assert_eq!(
        by(ConnectionFilter::default()),
        std::slice::from_ref(&alice2.connection_id)
    );
    assert_eq!(fx.store.prune().unwrap().connections, 2);
    assert_eq!(
        by(ConnectionFilter::default()),
        std::slice::from_ref(&alice2.connection_id)
    );

    // After a restart no connection is live any more.
    let carol = fx.connect(&eid, "carol", 5).unwrap();
    let stale = fx.store.close_stale_connections().unwrap();
    assert_eq!(stale, std::slice::from_ref(&carol.connection_id));
    let c = fx
        .store
        .describe_connections(&ConnectionFilter {
            connection_id: Some(carol.connection_id.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(c[0].status, ConnectionStatus::Terminated);
    assert_eq!(
        c[0].connection_end_time,
        Some(c[0].connection_last_update_time)
    );
}

#[test]
fn retention_is_configurable() {
    let dir = TempDir::new("retention");
    let clock = Arc::new(AtomicI64::new(T0));
    let mut o = options(&dir.0, &clock, Quotas::default());
    o.retention = Duration::from_secs(60);
    let store = Store::open(o).unwrap();
    let pki = Pki::new();
    let eid = store
        .create_endpoint(&pki.create())
        .unwrap()
        .client_vpn_endpoint_id;
    store
        .associate_target_network(&AssociateTargetNetworkRequest {
            client_vpn_endpoint_id: eid.clone(),
            target_network_id: "eth1".into(),
            ..Default::default()
        })
        .unwrap();
    let c = store
        .record_connection_start(&NewConnection {
            client_vpn_endpoint_id: eid,
            client_ip: Ipv4Addr::new(10, 2, 0, 9),
            common_name: "x".into(),
            username: None,
            device_ip: "2001:db8::1".parse().unwrap(),
            device_port: 1,
            transport_protocol: TransportProtocol::Tcp,
        })
        .unwrap();
    assert_eq!(c.device_ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    store
        .end_connection(&c.connection_id, ConnectionCounters::default())
        .unwrap();
    clock.fetch_add(61, Ordering::SeqCst);
    assert!(store
        .describe_connections(&ConnectionFilter::default())
        .unwrap()
        .is_empty());
    assert_eq!(store.prune().unwrap().connections, 1);
}

// ---- the database -------------------------------------------------------------------------------

#[test]
fn database_is_wal_full_sync_with_foreign_keys_and_private_files() {
    if on_postgres("database_is_wal_full_sync_with_foreign_keys_and_private_files") {
        return;
    }
    let fx = Fx::new();
    assert_eq!(fx.pragma("journal_mode"), "wal");
    assert_eq!(fx.pragma("synchronous"), "2", "FULL");
    assert_eq!(fx.pragma("foreign_keys"), "1");
    assert_eq!(
        fx.store.schema_version().unwrap(),
        u32::try_from(schema::MIGRATIONS.len()).unwrap()
    );
    assert_eq!(fx.store.integrity_check().unwrap(), "ok");
    assert_eq!(fx.store.path(), Some(fx.dir.0.join("cvpn.db").as_path()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fx.dir.0), 0o700);
    assert_eq!(mode(&fx.dir.0.join("cvpn.db")), 0o600);
}

#[test]
fn data_directory_is_created_with_parents() {
    if on_postgres("data_directory_is_created_with_parents") {
        return;
    }
    let dir = TempDir::new("nested");
    let nested = dir.0.join("a/b");
    let store = Store::open(StoreOptions::in_dir(&nested)).unwrap();
    assert!(store.path().unwrap().starts_with(&nested));
    assert_eq!(
        StoreOptions::default().data_dir,
        PathBuf::from("/var/lib/cvpn")
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let fx = Fx::new();
    let dir = fx.dir.0.clone();
    match &fx.store.backend {
        Backend::Sqlite(db) => lock(db).pragma_update(None, "user_version", 99).unwrap(),
        Backend::Postgres(pool) => pool.batch("UPDATE cvpn_schema SET version = 99").unwrap(),
    }
    drop(fx.store);
    let e = Store::open(in_dir(&dir)).unwrap_err();
    assert_eq!(e.code, codes::INTERNAL_ERROR);
    assert!(e.message.contains("newer"), "{e}");
}

#[test]
fn state_survives_a_restart() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let a = fx.associate(&eid, "eth1", Some("10.88.0.0/24")).unwrap();
    fx.route(&eid, "10.99.0.0/16", "eth1").unwrap();
    fx.rule(&eid, "10.88.0.0/24", Some("engineering")).unwrap();
    fx.store
        .modify_endpoint(
            &eid,
            &ModifyEndpointRequest {
                tags: Some(vec![Tag {
                    key: "k".into(),
                    value: "v".into(),
                }]),
                dns_servers: Some(vec!["1.1.1.1".into()]),
                ..Default::default()
            },
        )
        .unwrap();
    fx.store.import_crl(&eid, &fx.pki.crl(&[9])).unwrap();
    let conn = fx.connect(&eid, "alice", 2).unwrap();
    fx.store
        .update_connection(
            &conn.connection_id,
            ConnectionCounters {
                ingress_bytes: u64::MAX,
                ..Default::default()
            },
        )
        .unwrap();

    let snapshot = |s: &Store| {
        (
            s.describe_endpoints(&[]).unwrap(),
            s.describe_target_networks(&eid, &[]).unwrap(),
            s.describe_routes(&eid).unwrap(),
            s.describe_rules(&eid).unwrap(),
            s.describe_connections(&ConnectionFilter::default())
                .unwrap(),
            s.endpoint_secrets(&eid).unwrap(),
            s.policy_for(&eid).unwrap(),
            s.export_crl(&eid).unwrap(),
        )
    };
    let before = snapshot(&fx.store);
    let Fx {
        store, clock, dir, ..
    } = fx;
    drop(store);
    let store = Store::open(options(&dir.0, &clock, Quotas::default())).unwrap();
    assert_eq!(snapshot(&store), before);
    assert_eq!(
        before.4[0].ingress_bytes,
        i64::MAX as u64,
        "counters saturate at i64::MAX"
    );
    assert_eq!(
        store
            .describe_target_networks(&eid, std::slice::from_ref(&a.association.association_id))
            .unwrap()[0]
            .target_id,
        a.association.target_id
    );
    // New ids never reuse old target ids, even after a restart.
    let a2 = store
        .associate_target_network(&AssociateTargetNetworkRequest {
            client_vpn_endpoint_id: eid.clone(),
            target_network_id: "eth2".into(),
            ..Default::default()
        })
        .unwrap();
    assert!(a2.association.target_id > a.association.target_id);
}

// ---- crash consistency --------------------------------------------------------------------------

const CRASH_DIR_ENV: &str = "CVPN_STORAGE_CRASH_DIR";

fn crash_quotas() -> Quotas {
    Quotas {
        authorization_rules_per_endpoint: 1_000_000,
        routes_per_association: 1_000_000,
        crl_entries: 10,
    }
}

/// The child of [`killed_writer_leaves_a_consistent_database`]: writes until killed. Each step
/// is one store call, one transaction: authorize a rule (revision + 1); every 5th step also
/// associate a new network with a subnet (association + route + maybe the endpoint's state,
/// revision + 1); every 5th step + 3 disassociate the oldest live one (routes removed, maybe the
/// state, revision + 1). Prints `wrote N` after each committed call.
#[test]
#[ignore = "helper: run by killed_writer_leaves_a_consistent_database"]
fn crash_child_writer() {
    use std::io::Write;
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    let store = Store::open(StoreOptions {
        quotas: crash_quotas(),
        ..StoreOptions::in_dir(&dir)
    })
    .unwrap();
    let eid = store.describe_endpoints(&[]).unwrap()[0]
        .client_vpn_endpoint_id
        .clone();
    let mut out = std::io::stdout();
    let mut n = store.describe_rules(&eid).unwrap().len();
    loop {
        n += 1;
        let dest = format!(
            "172.{}.{}.{}/32",
            16 + (n >> 16) % 16,
            (n >> 8) & 255,
            n & 255
        );
        store
            .authorize_rule(&AuthorizeRequest {
                protocol: None,
                port_range: None,
                client_vpn_endpoint_id: eid.clone(),
                target_network_cidr: dest,
                authorize_all_groups: Some(true),
                ..Default::default()
            })
            .unwrap();
        if n.is_multiple_of(5) {
            store
                .associate_target_network(&AssociateTargetNetworkRequest {
                    client_vpn_endpoint_id: eid.clone(),
                    target_network_id: format!("if{n}"),
                    subnet_cidr: Some(format!("10.{}.{}.0/24", 100 + (n >> 8) % 100, n & 255)),
                    snat_address: None,
                    node: None,
                })
                .unwrap();
        }
        if n % 5 == 3 {
            let live: Vec<TargetNetwork> = store
                .describe_target_networks(&eid, &[])
                .unwrap()
                .into_iter()
                .filter(|a| a.status == AssociationStatus::Associated)
                .collect();
            if let Some(a) = live.first() {
                store
                    .disassociate_target_network(&eid, &a.association_id)
                    .unwrap();
            }
        }
        writeln!(out, "wrote {n}").unwrap();
        out.flush().unwrap();
    }
}

/// Checks that every committed call is whole: the revision counts exactly the calls whose
/// effects are present, each associated network has its route, each disassociated one none,
/// and the endpoint's state matches its associations.
fn check_consistent(dir: &Path) -> usize {
    let store = Store::open(StoreOptions {
        quotas: crash_quotas(),
        ..StoreOptions::in_dir(dir)
    })
    .unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let fk: Vec<String> = store
        .lock()
        .prepare("PRAGMA foreign_key_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(fk.is_empty(), "foreign key violations in {fk:?}");
    let ep = &store.describe_endpoints(&[]).unwrap()[0];
    let eid = &ep.client_vpn_endpoint_id;
    let rules = store.describe_rules(eid).unwrap().len();
    let assocs = store.describe_target_networks(eid, &[]).unwrap();
    let routes = store.describe_routes(eid).unwrap();
    let disassociated = assocs
        .iter()
        .filter(|a| a.status == AssociationStatus::Disassociated)
        .count();
    assert_eq!(
        ep.policy_revision,
        (rules + assocs.len() + disassociated) as u64,
        "revision vs. rules {rules}, associations {}, disassociated {disassociated}",
        assocs.len()
    );
    for a in &assocs {
        let mine: Vec<&Route> = routes
            .iter()
            .filter(|r| r.association_id == a.association_id)
            .collect();
        match a.status {
            AssociationStatus::Associated => {
                assert_eq!(mine.len(), 1, "{a:?}");
                assert_eq!(Some(mine[0].destination_cidr), a.subnet_cidr);
                assert_eq!(mine[0].origin, RouteOrigin::Associate);
            }
            _ => assert!(mine.is_empty(), "{a:?} {mine:?}"),
        }
    }
    assert_eq!(routes.len(), assocs.len() - disassociated);
    let live = assocs.len() - disassociated;
    let want = if live > 0 {
        EndpointStatus::Available
    } else {
        EndpointStatus::PendingAssociate
    };
    assert_eq!(ep.status, want, "{live} live associations");
    rules
}

/// The next line of the child's output: `None` at its end, `Some(Some(n))` for `wrote n`.
fn next_report(reader: &mut impl BufRead) -> Option<Option<usize>> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap() == 0 {
        return None;
    }
    Some(
        line.trim()
            .strip_prefix("wrote ")
            .map(|n| n.parse().unwrap()),
    )
}

#[test]
fn killed_writer_leaves_a_consistent_database() {
    if on_postgres("killed_writer_leaves_a_consistent_database") {
        return;
    }
    let fx = Fx::new();
    fx.endpoint();
    let Fx { store, dir, .. } = fx;
    drop(store);
    let exe = std::env::current_exe().unwrap();
    let mut total = 0;
    for (round, writes) in [15usize, 40, 25, 10, 30, 20].into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "storage::tests::crash_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, &dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        // `wrote N`: N rules committed (and reported) so far.
        let mut reported = total;
        while reported < total + writes {
            match next_report(&mut reader) {
                None => break,
                Some(n) => reported = n.unwrap_or(reported),
            }
        }
        // SIGKILL at a varying point of the child's cycle (inside a transaction, between the
        // calls of one step, ...): a pseudo-random delay of 0 to 15 ms first. Its stdout stays
        // open until then, so the child cannot stop on a broken pipe first.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_micros(u64::from(
            nanos.wrapping_mul(2_654_435_761) % 15_000,
        )));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the child was killed");
        // The child may have reported more than we had read: drain the pipe.
        while let Some(n) = next_report(&mut reader) {
            reported = n.unwrap_or(reported);
        }
        assert!(
            reported >= total + writes,
            "round {round}: the child reported only {reported}"
        );
        let rules = check_consistent(&dir.0);
        // Every call the child reported committed is there (FULL sync; and a kill never loses a
        // commit anyway); at most one more is (committed, not yet reported).
        assert!(
            rules == reported || rules == reported + 1,
            "round {round}: {rules} rules, {reported} reported"
        );
        total = rules;
    }
}

// ---- applying a configuration file (apply.rs) ---------------------------------------------------

const APPLY_TOML: &str = r#"
[endpoint]
client_cidr = "10.2.0.0/22"
server_cert = "server.crt"
server_key = "server.key"
client_ca = "ca.crt"
split_tunnel = true
dns_servers = ["10.88.0.2"]

[[target_network]]
interface = "eth1"

[[target_network]]
interface = "eth2"
snat_address = "10.99.0.5"

[[route]]
destination = "10.88.0.0/24"
target = "eth1"

[[route]]
destination = "10.77.0.0/16"
target = "eth1"

[[authorization_rule]]
destination = "10.88.0.0/24"
all_groups = true
description = "everyone"

[[authorization_rule]]
destination = "10.77.0.0/16"
group = "eng"
"#;

fn apply_cfg(text: &str) -> crate::config::EndpointConfig {
    crate::config::EndpointConfig::from_toml_str(text).unwrap()
}

impl Fx {
    fn apply(&self, text: &str, crl: Option<&str>) -> Result<ApplyReport, ApiError> {
        apply_endpoint_config(
            &self.store,
            &apply_cfg(text),
            &self.pki.server_cert,
            &self.pki.server_key,
            Some(&self.pki.ca_pem),
            crl,
        )
    }

    /// Everything the store shows about every endpoint, to compare before and after.
    fn snapshot(&self) -> String {
        let mut out = String::new();
        for ep in self.store.describe_endpoints(&[]).unwrap() {
            let id = &ep.client_vpn_endpoint_id;
            out += &format!("{ep:?}\n");
            out += &format!(
                "{:?}\n",
                self.store.describe_target_networks(id, &[]).unwrap()
            );
            out += &format!("{:?}\n", self.store.describe_routes(id).unwrap());
            out += &format!("{:?}\n", self.store.describe_rules(id).unwrap());
            out += &format!("{:?}\n", self.store.endpoint_secrets(id).unwrap());
        }
        out
    }
}

#[test]
fn apply_is_idempotent() {
    let fx = Fx::new();
    let crl = fx.pki.crl(&[7]);
    let first = fx.apply(APPLY_TOML, Some(&crl)).unwrap();
    assert!(first.created && first.changed(), "{first:?}");
    // created, 2 associations, 2 routes, 2 rules, CRL.
    assert_eq!(first.changes.len(), 8, "{:#?}", first.changes);
    assert_eq!(first.crl.as_ref().unwrap().entries, 1);
    let eid = first.endpoint_id.clone();
    let ep = fx.store.describe_endpoint(&eid).unwrap();
    assert_eq!(ep.status, EndpointStatus::Available);
    assert_eq!(ep.dns_servers, ["10.88.0.2".parse::<Ipv4Addr>().unwrap()]);
    assert!(ep.split_tunnel);
    assert_eq!(
        ep.tags,
        [Tag {
            key: APPLIED_TAG_KEY.into(),
            value: "10.2.0.0/22 udp".into()
        }]
    );
    let tns = fx.store.describe_target_networks(&eid, &[]).unwrap();
    assert_eq!(tns.len(), 2);
    assert_eq!(tns[1].snat_address, Some("10.99.0.5".parse().unwrap()));

    let before = fx.snapshot();
    fx.advance(10);
    let second = fx.apply(APPLY_TOML, Some(&crl)).unwrap();
    assert!(!second.changed(), "{:#?}", second.changes);
    assert!(!second.created && second.crl.is_none() && second.terminate_connections.is_empty());
    assert_eq!(second.endpoint_id, eid);
    assert_eq!(fx.snapshot(), before);

    // The daemon learns eth1's subnet: an `associate` route appears; apply leaves it alone.
    fx.store
        .update_association_subnet(&tns[0].association_id, Some("10.55.0.0/24"))
        .unwrap();
    let before = fx.snapshot();
    let third = fx.apply(APPLY_TOML, Some(&crl)).unwrap();
    assert!(!third.changed(), "{:#?}", third.changes);
    assert_eq!(fx.snapshot(), before);
    // Likewise when the learnt subnet is a declared route's destination (the store replaced
    // the add-route route by the associate route).
    fx.store
        .update_association_subnet(&tns[0].association_id, Some("10.88.0.0/24"))
        .unwrap();
    let before = fx.snapshot();
    let fourth = fx.apply(APPLY_TOML, Some(&crl)).unwrap();
    assert!(!fourth.changed(), "{:#?}", fourth.changes);
    assert_eq!(fx.snapshot(), before);
    // Without a CRL in the file, the stored one stays.
    assert!(!fx.apply(APPLY_TOML, None).unwrap().changed());
    assert_eq!(
        fx.store.export_crl(&eid).unwrap().as_deref(),
        Some(crl.as_str())
    );
}

#[test]
fn apply_makes_exactly_the_changes_of_a_modified_file() {
    let fx = Fx::new();
    let crl = fx.pki.crl(&[7]);
    let eid = fx.apply(APPLY_TOML, Some(&crl)).unwrap().endpoint_id;
    let modified = APPLY_TOML
        .replace("\"10.88.0.2\"", "\"10.88.0.3\"")
        .replace(
            "destination = \"10.77.0.0/16\"\ntarget = \"eth1\"",
            "destination = \"10.77.0.0/16\"\ntarget = \"eth2\"",
        )
        .replace(
            "destination = \"10.77.0.0/16\"\ngroup = \"eng\"",
            "destination = \"10.66.0.0/16\"\ngroup = \"ops\"",
        );
    let new_crl = fx.pki.crl(&[7, 8]);
    let r = fx.apply(&modified, Some(&new_crl)).unwrap();
    assert_eq!(r.endpoint_id, eid);
    assert!(!r.created);
    assert_eq!(
        r.changes,
        [
            format!("modified endpoint {eid}: dns-servers"),
            "deleted route 10.77.0.0/16 via eth1".to_string(),
            "created route 10.77.0.0/16 via eth2".to_string(),
            "revoked rule 10.77.0.0/16 for group \"eng\"".to_string(),
            "authorized rule 10.66.0.0/16 for group \"ops\"".to_string(),
            "imported CRL (2 revoked certificate(s))".to_string(),
        ]
    );
    let ep = fx.store.describe_endpoint(&eid).unwrap();
    assert_eq!(ep.dns_servers, ["10.88.0.3".parse::<Ipv4Addr>().unwrap()]);
    let routes: Vec<(String, String)> = fx
        .store
        .describe_routes(&eid)
        .unwrap()
        .iter()
        .map(|r| (r.destination_cidr.to_string(), r.target_subnet.clone()))
        .collect();
    assert_eq!(
        routes,
        [
            ("10.88.0.0/24".to_string(), "eth1".to_string()),
            ("10.77.0.0/16".to_string(), "eth2".to_string())
        ]
    );
    let rules: Vec<(String, Option<String>)> = fx
        .store
        .describe_rules(&eid)
        .unwrap()
        .iter()
        .map(|r| (r.destination_cidr.to_string(), r.group_id.clone()))
        .collect();
    assert_eq!(
        rules,
        [
            ("10.88.0.0/24".to_string(), None),
            ("10.66.0.0/16".to_string(), Some("ops".to_string()))
        ]
    );
    // And it is stable.
    let before = fx.snapshot();
    assert!(!fx.apply(&modified, Some(&new_crl)).unwrap().changed());
    assert_eq!(fx.snapshot(), before);

    // Dropping a target network disassociates it (its routes go with it); a changed SNAT
    // address re-associates; a changed rule description re-authorizes.
    let fewer = APPLY_TOML
        .replace(
            "[[target_network]]\ninterface = \"eth2\"\nsnat_address = \"10.99.0.5\"\n",
            "",
        )
        .replace(
            "[[target_network]]\ninterface = \"eth1\"\n",
            "[[target_network]]\ninterface = \"eth1\"\nsnat_address = \"10.99.0.9\"\n",
        )
        .replace("\"everyone\"", "\"all staff\"");
    let r = fx.apply(&fewer, None).unwrap();
    assert_eq!(r.changes.len(), 10, "{:#?}", r.changes);
    let live: Vec<TargetNetwork> = fx
        .store
        .describe_target_networks(&eid, &[])
        .unwrap()
        .into_iter()
        .filter(|a| a.status == AssociationStatus::Associated)
        .collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].target_network_id, "eth1");
    assert_eq!(live[0].snat_address, Some("10.99.0.9".parse().unwrap()));
    assert_eq!(fx.store.describe_routes(&eid).unwrap().len(), 2);
    assert!(!fx.apply(&fewer, None).unwrap().changed());
}

#[test]
fn apply_with_another_client_cidr_declares_another_endpoint() {
    let fx = Fx::new();
    let old = fx.apply(APPLY_TOML, None).unwrap().endpoint_id;
    let before = fx.store.describe_endpoint(&old).unwrap();
    let moved = APPLY_TOML.replace("10.2.0.0/22", "10.4.0.0/22");
    let r = fx.apply(&moved, None).unwrap();
    assert!(r.created);
    assert_ne!(r.endpoint_id, old);
    assert_eq!(r.superseded, std::slice::from_ref(&old));
    assert_eq!(fx.store.describe_endpoint(&old).unwrap(), before);
    assert_eq!(
        fx.store
            .describe_endpoint(&r.endpoint_id)
            .unwrap()
            .client_cidr_block
            .to_string(),
        "10.4.0.0/22"
    );
    // Each file keeps finding its own endpoint.
    assert!(!fx.apply(&moved, None).unwrap().changed());
    assert_eq!(fx.apply(APPLY_TOML, None).unwrap().endpoint_id, old);

    // The client CA is immutable: refused, nothing changed.
    let snap = fx.snapshot();
    let e = apply_endpoint_config(
        &fx.store,
        &apply_cfg(APPLY_TOML),
        &fx.pki.server_cert,
        &fx.pki.server_key,
        Some(&fx.pki.foreign.pem()),
        None,
    );
    assert_eq!(code(e), codes::OPERATION_NOT_PERMITTED);
    assert_eq!(fx.snapshot(), snap);
}

#[test]
fn connect_handlers_follow_the_daemon_configuration() {
    let dir = TempDir::new("handlers");
    let allowed = dir.0.join("handlers");
    std::fs::create_dir_all(&allowed).unwrap();
    let exe = |d: &Path, name: &str| {
        let p = d.join(name);
        std::fs::write(&p, "#!/bin/sh\necho '{\"allow\": true}'\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_str().unwrap().to_string()
    };
    let inside = exe(&allowed, "ok.sh");
    let outside = exe(&dir.0, "outside.sh");
    std::os::unix::fs::symlink(&outside, allowed.join("link.sh")).unwrap();
    let clock = Arc::new(AtomicI64::new(T0));
    let store = Store::open(StoreOptions {
        handler_policy: HandlerPolicy {
            executable_dir: Some(allowed.clone()),
            allow_http: false,
        },
        ..options(&dir.0.join("data"), &clock, Quotas::default())
    })
    .unwrap();
    let pki = Pki::new();
    let with = |h: &str| {
        let mut r = pki.create();
        r.client_connect_options = Some(ClientConnectOptions {
            enabled: true,
            handler: Some(h.to_string()),
        });
        store.create_endpoint(&r)
    };
    with(&inside).unwrap();
    with("https://hooks.example.com/connect").unwrap();
    for (h, needle) in [
        (outside.clone(), "outside the handler directory"),
        (
            format!("{}/../outside.sh", allowed.display()),
            "outside the handler directory",
        ),
        (
            format!("{}/link.sh", allowed.display()),
            "outside the handler directory",
        ),
        (
            format!("{}/missing.sh", allowed.display()),
            "does not exist",
        ),
        ("http://127.0.0.1/hook".to_string(), "allow_http"),
    ] {
        let e = with(&h).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMETER_VALUE, "{h}: {e}");
        assert!(
            e.message.contains("client-connect-options.handler") && e.message.contains(needle),
            "{h}: {e}"
        );
    }
    // Modify is checked the same way.
    let id = with(&inside).unwrap().client_vpn_endpoint_id;
    let e = store
        .modify_endpoint(
            &id,
            &ModifyEndpointRequest {
                client_connect_options: Some(ClientConnectOptions {
                    enabled: true,
                    handler: Some(outside.clone()),
                }),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.message.contains("outside the handler directory"), "{e}");
}

#[test]
fn modes_of_the_data_directory_and_database_files_are_enforced_at_every_start() {
    if on_postgres("modes_of_the_data_directory_and_database_files_are_enforced_at_every_start") {
        return;
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let chmod = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    // The function alone: every file with another mode is fixed and reported.
    let bare = TempDir::new("modes");
    std::fs::create_dir_all(&bare.0).unwrap();
    chmod(&bare.0, 0o755);
    for suffix in ["", "-wal", "-shm"] {
        let f = bare.0.join(format!("{DB_FILE_NAME}{suffix}"));
        std::fs::write(&f, b"").unwrap();
        chmod(&f, 0o644);
    }
    let fixed = enforce_private_modes(&bare.0).unwrap();
    assert_eq!(fixed.len(), 4, "{fixed:?}");
    assert!(
        fixed[0].contains("0755") && fixed[0].contains("0700"),
        "{fixed:?}"
    );
    assert_eq!(mode(&bare.0), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(&bare.0.join(format!("{DB_FILE_NAME}{suffix}"))), 0o600);
    }
    assert!(
        enforce_private_modes(&bare.0).unwrap().is_empty(),
        "nothing left to fix"
    );

    // Through a restart of the store: a directory and database made readable to others
    // between two runs are private again once it is open, WAL and shared memory included.
    let fx = Fx::new();
    let dir = fx.dir.0.clone();
    fx.endpoint();
    drop(fx.store);
    chmod(&dir, 0o755);
    chmod(&dir.join(DB_FILE_NAME), 0o644);
    let store = Store::open(StoreOptions::in_dir(&dir)).unwrap();
    store.create_endpoint(&fx.pki.create()).unwrap();
    assert_eq!(mode(&dir), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        let f = dir.join(format!("{DB_FILE_NAME}{suffix}"));
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

#[test]
fn deleted_private_keys_are_scrubbed_from_the_database_files() {
    if on_postgres("deleted_private_keys_are_scrubbed_from_the_database_files") {
        return;
    }
    let fx = Fx::new();
    // A line of the key's base64 body: found in the files only if the key is.
    let marker = fx
        .pki
        .server_key
        .lines()
        .nth(2)
        .expect("a PEM key has several lines")
        .to_string();
    assert!(marker.len() >= 40, "{marker}");
    let find = |what: &str| {
        let mut hits = Vec::new();
        for suffix in ["", "-wal"] {
            let f = fx.dir.0.join(format!("{DB_FILE_NAME}{suffix}"));
            let bytes = std::fs::read(&f).unwrap_or_default();
            if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                hits.push(format!("{what}: {}", f.display()));
            }
        }
        hits
    };
    let checkpoint = || {
        let (busy, _, _): (i64, i64, i64) = fx
            .store
            .lock()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0, "the checkpoint completed");
    };
    // A row larger than a page (as with an RSA key and chain) keeps its tail, the key included,
    // in overflow pages: without secure_delete the freed ones keep their bytes in the file.
    let mut req = fx.pki.create();
    req.client_login_banner_options = Some(ClientLoginBannerOptions {
        enabled: true,
        banner_text: Some("é".repeat(1400)),
    });
    let eid = fx
        .store
        .create_endpoint(&req)
        .unwrap()
        .client_vpn_endpoint_id;
    checkpoint();
    assert!(!find("stored").is_empty(), "the test sees a stored key");
    assert!(fx.store.secure_delete().unwrap());

    fx.store.delete_endpoint(&eid).unwrap();
    fx.store.finish_endpoint_deletion(&eid).unwrap();
    checkpoint();
    let hits = find("after deletion");
    assert!(hits.is_empty(), "the deleted key is still in {hits:?}");
    // The row itself, once past the retention period.
    fx.advance(DEFAULT_RETENTION.as_secs() as i64 + 60);
    fx.store.prune().unwrap();
    checkpoint();
    assert!(find("after prune").is_empty());
}

// ---- directories --------------------------------------------------------------------------------

fn directory_req(name: &str) -> crate::model::CreateDirectoryRequest {
    crate::model::CreateDirectoryRequest {
        name: Some(name.into()),
        urls: vec![
            "ldaps://dc1.example.test".into(),
            "ldap://dc2.example.test:389".into(),
        ],
        base_dn: Some("dc=example,dc=test".into()),
        bind_dn: Some("cn=reader,dc=example,dc=test".into()),
        bind_password: Some("reader-secret\n".into()),
        ..Default::default()
    }
}

#[test]
fn directories_keep_secrets_out_of_descriptions_and_take_presets() {
    let fx = Fx::new();
    let d = fx.store.create_directory(&directory_req("corp")).unwrap();
    assert!(d.directory_id.starts_with("cvpn-directory-"));
    assert_eq!(
        d.user_filter,
        "(&(objectClass=inetOrgPerson)(uid={username}))"
    );
    assert_eq!(d.groups, crate::model::GroupMode::Memberof);
    assert_eq!(d.recheck_seconds, 300);
    assert!(d.bind_password_set);
    let json = serde_json::to_string(&fx.store.describe_directories().unwrap()).unwrap();
    assert!(!json.contains("reader-secret"), "{json}");
    // The daemon reads it, without the file's newline.
    let s = fx.store.directory_secrets(&d.directory_id).unwrap();
    assert_eq!(s.bind_password.as_deref(), Some("reader-secret"));
    assert!(!format!("{s:?}").contains("reader-secret"));
    // Active Directory preset.
    let ad = fx
        .store
        .create_directory(&crate::model::CreateDirectoryRequest {
            preset: Some("active-directory".into()),
            ..directory_req("ad")
        })
        .unwrap();
    assert_eq!(ad.groups, crate::model::GroupMode::AdNested);
    assert!(ad.user_filter.contains("sAMAccountName={username}"));
    // By name, too; a duplicate name is refused.
    assert_eq!(fx.store.describe_directory("ad").unwrap(), ad);
    let e = fx.store.create_directory(&directory_req("ad")).unwrap_err();
    assert_eq!(e.code, codes::DUPLICATE_DIRECTORY_RESOURCE, "{e:?}");
}

#[test]
fn bad_directory_input_is_refused_with_the_field_named() {
    let fx = Fx::new();
    let cases: Vec<(crate::model::CreateDirectoryRequest, &str)> = vec![
        (
            crate::model::CreateDirectoryRequest {
                urls: vec![],
                ..directory_req("a")
            },
            "urls",
        ),
        (
            crate::model::CreateDirectoryRequest {
                urls: vec!["http://x".into()],
                ..directory_req("a")
            },
            "urls",
        ),
        (
            crate::model::CreateDirectoryRequest {
                urls: vec!["ldap://x:99999".into()],
                ..directory_req("a")
            },
            "urls",
        ),
        (
            crate::model::CreateDirectoryRequest {
                base_dn: Some("example".into()),
                ..directory_req("a")
            },
            "base-dn",
        ),
        (
            crate::model::CreateDirectoryRequest {
                user_filter: Some("uid=x".into()),
                ..directory_req("a")
            },
            "user-filter",
        ),
        (
            crate::model::CreateDirectoryRequest {
                user_filter: Some("(uid={username}".into()),
                ..directory_req("a")
            },
            "user-filter",
        ),
        (
            crate::model::CreateDirectoryRequest {
                groups: Some("nested".into()),
                ..directory_req("a")
            },
            "groups",
        ),
        (
            crate::model::CreateDirectoryRequest {
                mfa: Some("sms".into()),
                ..directory_req("a")
            },
            "mfa",
        ),
        (
            crate::model::CreateDirectoryRequest {
                mfa: Some("radius".into()),
                ..directory_req("a")
            },
            "radius-server",
        ),
        (
            crate::model::CreateDirectoryRequest {
                mfa: Some("radius".into()),
                radius_server: Some("radius.example.test:1812".into()),
                radius_secret: Some("s3cret".into()),
                ..directory_req("a")
            },
            "radius-server",
        ),
        (
            crate::model::CreateDirectoryRequest {
                bind_password: None,
                ..directory_req("a")
            },
            "bind-password",
        ),
        (
            crate::model::CreateDirectoryRequest {
                timeout_ms: Some(5),
                ..directory_req("a")
            },
            "timeout-ms",
        ),
        (
            crate::model::CreateDirectoryRequest {
                recheck_seconds: Some(1),
                ..directory_req("a")
            },
            "recheck-seconds",
        ),
        (
            crate::model::CreateDirectoryRequest {
                ca_pem: Some("not pem".into()),
                ..directory_req("a")
            },
            "ca-pem",
        ),
        (
            crate::model::CreateDirectoryRequest {
                name: Some("a b".into()),
                ..directory_req("a")
            },
            "name",
        ),
    ];
    for (req, field) in cases {
        let e = fx.store.create_directory(&req).unwrap_err();
        assert!(e.message.contains(field), "{field}: {e:?}");
    }
    assert!(
        fx.store.describe_directories().unwrap().is_empty(),
        "nothing written"
    );
}

#[test]
fn endpoints_use_a_directory_alone_or_with_certificates_and_it_cannot_go_while_used() {
    let fx = Fx::new();
    let d = fx.store.create_directory(&directory_req("corp")).unwrap();
    let dir_opt = AuthenticationOption::DirectoryServiceAuthentication {
        directory_id: d.directory_id.clone(),
    };
    // Directory only: no client CA kept.
    let only = fx
        .store
        .create_endpoint(&CreateEndpointRequest {
            authentication_options: vec![dir_opt.clone()],
            ..fx.pki.create()
        })
        .unwrap();
    assert_eq!(only.authentication_options, vec![dir_opt.clone()]);
    assert_eq!(
        fx.store
            .endpoint_secrets(&only.client_vpn_endpoint_id)
            .unwrap()
            .client_ca_pem,
        ""
    );
    // Both.
    let mut both_opts = fx.pki.cert_auth();
    both_opts.push(dir_opt);
    let both = fx
        .store
        .create_endpoint(&CreateEndpointRequest {
            client_cidr_block: Some("10.3.0.0/22".into()),
            authentication_options: both_opts.clone(),
            ..fx.pki.create()
        })
        .unwrap();
    assert_eq!(both.authentication_options, both_opts);
    assert_eq!(
        fx.store
            .endpoint_directory(&both.client_vpn_endpoint_id)
            .unwrap(),
        Some(d.clone())
    );
    // An unknown directory.
    let e = fx
        .store
        .create_endpoint(&CreateEndpointRequest {
            authentication_options: vec![AuthenticationOption::DirectoryServiceAuthentication {
                directory_id: "cvpn-directory-00000000000000000".into(),
            }],
            ..fx.pki.create()
        })
        .unwrap_err();
    assert_eq!(e.code, codes::DIRECTORY_NOT_FOUND);
    // In use: not deleted.
    let e = fx.store.delete_directory("corp").unwrap_err();
    assert_eq!(e.code, codes::INCORRECT_STATE);
    assert!(e.message.contains(&only.client_vpn_endpoint_id), "{e:?}");
}

#[test]
fn mfa_enrolments_need_totp_are_unique_and_removable() {
    let fx = Fx::new();
    let d = fx.store.create_directory(&directory_req("corp")).unwrap();
    let e = fx
        .store
        .enroll_mfa("corp", "alice", &[1; 20], false)
        .unwrap_err();
    assert_eq!(e.code, codes::INCORRECT_STATE, "mfa none: {e:?}");
    fx.store
        .modify_directory(
            "corp",
            &crate::model::ModifyDirectoryRequest {
                mfa: Some("totp".into()),
                ..Default::default()
            },
        )
        .unwrap();
    fx.store
        .enroll_mfa("corp", "alice", &[1; 20], false)
        .unwrap();
    let e = fx
        .store
        .enroll_mfa("corp", "ALICE", &[2; 20], false)
        .unwrap_err();
    assert_eq!(
        e.code,
        codes::DUPLICATE_DIRECTORY_RESOURCE,
        "names match without case"
    );
    fx.store
        .enroll_mfa("corp", "alice", &[3; 20], true)
        .unwrap();
    assert_eq!(
        fx.store.mfa_secrets(&d.directory_id).unwrap(),
        vec![("alice".to_string(), vec![3; 20])]
    );
    assert_eq!(fx.store.mfa_enrolled_users("corp").unwrap(), vec!["alice"]);
    fx.store.remove_mfa("corp", "alice").unwrap();
    let e = fx.store.remove_mfa("corp", "alice").unwrap_err();
    assert_eq!(e.code, codes::MFA_ENROLLMENT_NOT_FOUND);
    // Deleting the directory takes its enrolments.
    fx.store.enroll_mfa("corp", "bob", &[4; 20], false).unwrap();
    fx.store.delete_directory("corp").unwrap();
    assert_eq!(fx.store.describe_directories().unwrap(), vec![]);
}

#[test]
fn apply_takes_a_directory_with_or_without_the_client_ca() {
    let fx = Fx::new();
    let d = fx.store.create_directory(&directory_req("corp")).unwrap();
    // Certificate and directory.
    let both = APPLY_TOML.replace(
        "client_ca = \"ca.crt\"\n",
        "client_ca = \"ca.crt\"\ndirectory = \"corp\"\n",
    );
    let r = fx.apply(&both, None).unwrap();
    let ep = fx.store.describe_endpoint(&r.endpoint_id).unwrap();
    assert_eq!(ep.authentication_options.len(), 2, "{ep:?}");
    // Directory only (another client CIDR: another endpoint).
    let only = APPLY_TOML
        .replace("client_ca = \"ca.crt\"\n", "directory = \"corp\"\n")
        .replace("10.2.0.0/22", "10.6.0.0/22");
    let cfg = apply_cfg(&only);
    assert!(cfg.client_ca.is_none());
    let r = apply_endpoint_config(
        &fx.store,
        &cfg,
        &format!("{}{}", fx.pki.server_cert, fx.pki.ca_pem),
        &fx.pki.server_key,
        None,
        None,
    )
    .unwrap();
    let ep = fx.store.describe_endpoint(&r.endpoint_id).unwrap();
    assert_eq!(
        ep.authentication_options,
        vec![AuthenticationOption::DirectoryServiceAuthentication {
            directory_id: d.directory_id.clone()
        }]
    );
    // Neither: the file says what to add.
    let e = crate::config::EndpointConfig::from_toml_str(
        &APPLY_TOML.replace("client_ca = \"ca.crt\"\n", ""),
    )
    .unwrap_err();
    assert!(e.to_string().contains("client_ca"), "{e}");
}

// ---- identity providers -------------------------------------------------------------------------

fn oidc_req(name: &str) -> crate::model::CreateIdentityProviderRequest {
    crate::model::CreateIdentityProviderRequest {
        name: Some(name.into()),
        issuer: Some("https://login.example.test/realms/corp".into()),
        client_id: Some("cvpn-gateway".into()),
        client_secret: Some("oidc-s3cret\n".into()),
        ..Default::default()
    }
}

fn saml_req(name: &str) -> (crate::model::CreateIdentityProviderRequest, String) {
    let (xml, cert) = crate::test_support::saml_metadata(
        "https://idp.example.test/metadata",
        "https://idp.example.test/sso",
    );
    (
        crate::model::CreateIdentityProviderRequest {
            name: Some(name.into()),
            metadata_xml: Some(xml),
            ..Default::default()
        },
        cert,
    )
}

fn fed(idp: &str) -> AuthenticationOption {
    AuthenticationOption::FederatedAuthentication {
        saml_provider_arn: idp.into(),
        self_service_saml_provider_arn: None,
    }
}

#[test]
fn identity_providers_take_defaults_keep_the_secret_out_and_are_modified() {
    let fx = Fx::new();
    let o = fx
        .store
        .create_identity_provider(&oidc_req("corp-sso"))
        .unwrap();
    assert!(is_valid_id(IDP_ID_PREFIX, &o.id), "{}", o.id);
    assert_eq!(o.protocol, crate::model::IdpProtocol::Oidc);
    assert!(o.client_secret_set && o.saml.is_none());
    assert_eq!(o.recheck_seconds, 900);
    let oidc = o.oidc.clone().unwrap();
    assert_eq!(oidc.groups_claim, "groups");
    assert_eq!(oidc.username_claim, "email");
    assert_eq!(oidc.scopes, ["openid", "email", "profile"]);
    assert!(!format!("{o:?}").contains("oidc-s3cret"));
    let secrets = fx.store.identity_provider_secrets(&o.id).unwrap();
    assert_eq!(
        secrets.client_secret.as_deref(),
        Some("oidc-s3cret"),
        "file newline removed"
    );
    assert!(
        !format!("{secrets:?}").contains("oidc-s3cret"),
        "Debug redacts"
    );
    // By name or id, listed by name.
    assert_eq!(fx.store.describe_identity_provider("corp-sso").unwrap(), o);
    assert_eq!(fx.store.describe_identity_provider(&o.id).unwrap(), o);
    let (sreq, cert) = saml_req("a-saml");
    let s = fx.store.create_identity_provider(&sreq).unwrap();
    let saml = s.saml.clone().unwrap();
    assert_eq!(saml.entity_id, "https://idp.example.test/metadata");
    assert_eq!(
        saml.sso_url, "https://idp.example.test/sso",
        "HTTP-Redirect preferred"
    );
    assert_eq!(saml.sso_binding, crate::model::SamlBinding::HttpRedirect);
    assert_eq!(saml.signing_certificates, vec![cert]);
    assert_eq!(saml.groups_attribute, "memberOf");
    assert_eq!(saml.username_attribute, None);
    assert!(!s.client_secret_set);
    let names: Vec<String> = fx
        .store
        .describe_identity_providers()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["a-saml", "corp-sso"]);

    // Modify: only what is given; scopes always keep openid; the secret stays unless given.
    let m = fx
        .store
        .modify_identity_provider(
            "corp-sso",
            &crate::model::ModifyIdentityProviderRequest {
                scopes: Some(vec!["email".into(), "groups".into()]),
                username_claim: Some("preferred_username".into()),
                recheck_minutes: Some(5),
                description: Some("staff".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let mo = m.oidc.clone().unwrap();
    assert_eq!(mo.scopes, ["openid", "email", "groups"]);
    assert_eq!(mo.username_claim, "preferred_username");
    assert_eq!(mo.issuer, oidc.issuer);
    assert_eq!(m.recheck_seconds, 300);
    assert_eq!(m.description.as_deref(), Some("staff"));
    assert!(m.client_secret_set);
    // Fields of the other protocol, a protocol change, a short re-check: refused.
    let bad = [
        (
            crate::model::ModifyIdentityProviderRequest {
                groups_attribute: Some("x".into()),
                ..Default::default()
            },
            codes::INVALID_PARAMETER_COMBINATION,
            "groups-attribute",
        ),
        (
            crate::model::ModifyIdentityProviderRequest {
                protocol: Some("saml".into()),
                ..Default::default()
            },
            codes::OPERATION_NOT_PERMITTED,
            "protocol",
        ),
        (
            crate::model::ModifyIdentityProviderRequest {
                recheck_seconds: Some(9),
                ..Default::default()
            },
            codes::INVALID_PARAMETER_VALUE,
            "recheck-seconds",
        ),
        (
            crate::model::ModifyIdentityProviderRequest {
                client_secret: Some(String::new()),
                ..Default::default()
            },
            codes::MISSING_PARAMETER,
            "client-secret",
        ),
        (
            crate::model::ModifyIdentityProviderRequest {
                name: Some("a-saml".into()),
                ..Default::default()
            },
            codes::DUPLICATE_IDENTITY_PROVIDER,
            "a-saml",
        ),
    ];
    for (req, code, word) in bad {
        let e = fx.store.modify_identity_provider(&o.id, &req).unwrap_err();
        assert_eq!(e.code, code, "{req:?}: {e:?}");
        assert!(e.message.contains(word), "{word}: {e:?}");
    }
    assert_eq!(
        fx.store.describe_identity_provider(&o.id).unwrap(),
        m,
        "nothing written"
    );
    // SAML: new metadata is read again; "" goes back to the NameID.
    let (xml2, cert2) = crate::test_support::saml_metadata(
        "https://idp2.example.test/md",
        "https://idp2.example.test/sso",
    );
    let s2 = fx
        .store
        .modify_identity_provider(
            "a-saml",
            &crate::model::ModifyIdentityProviderRequest {
                metadata_xml: Some(xml2),
                username_attribute: Some(String::new()),
                ..Default::default()
            },
        )
        .unwrap();
    let saml2 = s2.saml.unwrap();
    assert_eq!(saml2.entity_id, "https://idp2.example.test/md");
    assert_eq!(saml2.signing_certificates, vec![cert2]);
    // Unknown ids and names.
    for unknown in ["idp-00000000000000000", "nobody"] {
        let e = fx.store.describe_identity_provider(unknown).unwrap_err();
        assert_eq!(e.code, codes::IDENTITY_PROVIDER_NOT_FOUND);
        assert_eq!(e.http_status(), 404);
    }
    // Persisted across a reopen.
    let dir = fx.dir.0.clone();
    let before = fx.store.describe_identity_providers().unwrap();
    drop(fx.store);
    let store = Store::open(in_dir(&dir)).unwrap();
    assert_eq!(store.describe_identity_providers().unwrap(), before);
}

#[test]
fn bad_identity_provider_input_is_refused_with_the_field_named() {
    let fx = Fx::new();
    use crate::model::CreateIdentityProviderRequest as R;
    let with = |f: &dyn Fn(&mut R)| {
        let mut r = oidc_req("x");
        f(&mut r);
        r
    };
    let saml = |xml: &str| R {
        name: Some("s".into()),
        metadata_xml: Some(xml.into()),
        ..Default::default()
    };
    let (good_xml, _) = crate::test_support::saml_metadata("urn:idp", "https://idp.test/sso");
    let md = "urn:oasis:names:tc:SAML:2.0:metadata";
    #[rustfmt::skip]
    let cases: Vec<(R, &str, &str)> = vec![
        (with(&|r| r.name = None), codes::MISSING_PARAMETER, "name"),
        (with(&|r| r.name = Some("bad name".into())), codes::INVALID_PARAMETER_VALUE, "name"),
        (with(&|r| r.issuer = Some("http://login.example.test".into())), codes::INVALID_PARAMETER_VALUE, "loopback"),
        (with(&|r| r.issuer = Some("ftp://login.example.test".into())), codes::INVALID_PARAMETER_VALUE, "issuer"),
        (with(&|r| r.issuer = Some("https://".into())), codes::INVALID_PARAMETER_VALUE, "issuer"),
        (with(&|r| r.issuer = Some("https://a.test/?x=1".into())), codes::INVALID_PARAMETER_VALUE, "query"),
        (with(&|r| r.issuer = Some("https://user@a.test".into())), codes::INVALID_PARAMETER_VALUE, "user"),
        (with(&|r| r.client_id = None), codes::MISSING_PARAMETER, "client-id"),
        (with(&|r| r.client_secret = None), codes::MISSING_PARAMETER, "client-secret"),
        (with(&|r| r.client_secret = Some("a\nb".into())), codes::INVALID_PARAMETER_VALUE, "client-secret"),
        (with(&|r| r.scopes = Some(vec!["bad scope".into()])), codes::INVALID_PARAMETER_VALUE, "scopes"),
        (with(&|r| r.groups_claim = Some("".into())), codes::INVALID_PARAMETER_VALUE, "groups-claim"),
        (with(&|r| r.recheck_minutes = Some(0)), codes::INVALID_PARAMETER_VALUE, "recheck-minutes"),
        (with(&|r| r.recheck_seconds = Some(9)), codes::INVALID_PARAMETER_VALUE, "recheck-seconds"),
        (with(&|r| r.metadata_xml = Some(good_xml.clone())), codes::INVALID_PARAMETER_COMBINATION, "not both"),
        (with(&|r| r.protocol = Some("saml".into())), codes::INVALID_PARAMETER_COMBINATION, "issuer"),
        (with(&|r| r.protocol = Some("ldap".into())), codes::INVALID_PARAMETER_VALUE, "protocol"),
        (R { name: Some("n".into()), ..Default::default() }, codes::MISSING_PARAMETER, "protocol"),
        (saml("not xml <"), codes::INVALID_PARAMETER_VALUE, "not an XML document"),
        (saml("<!DOCTYPE x [<!ENTITY a \"b\">]><x/>"), codes::INVALID_PARAMETER_VALUE, "metadata-xml"),
        (saml(&format!("<md:EntityDescriptor xmlns:md=\"{md}\" entityID=\"e\"><md:SPSSODescriptor/></md:EntityDescriptor>")), codes::INVALID_PARAMETER_VALUE, "IDPSSODescriptor"),
        (saml(&good_xml.replace("entityID=\"urn:idp\"", "")), codes::INVALID_PARAMETER_VALUE, "entityID"),
        (saml(&good_xml.replace("bindings:HTTP-Redirect", "bindings:SOAP").replace("bindings:HTTP-POST", "bindings:SOAP")), codes::INVALID_PARAMETER_VALUE, "SingleSignOnService"),
        (saml(&good_xml.replace("https://idp.test/sso", "http://idp.test/sso")), codes::INVALID_PARAMETER_VALUE, "Location"),
        (saml(&good_xml.replace("use=\"signing\"", "use=\"encryption\"")), codes::INVALID_PARAMETER_VALUE, "signing certificate"),
        (saml(&good_xml.replace("<ds:X509Certificate>\n", "<ds:X509Certificate>!!")), codes::INVALID_PARAMETER_VALUE, "base64"),
        (saml(&good_xml.replace("<ds:X509Certificate>\n", "<ds:X509Certificate>QUFB")), codes::INVALID_PARAMETER_VALUE, "signing certificate"),
        (saml(&format!("{good_xml}<!--{}-->", "x".repeat(256 * 1024))), codes::INVALID_PARAMETER_VALUE, "at most"),
        (R { metadata_url: Some("http://idp.test/md".into()), ..saml(&good_xml) }, codes::INVALID_PARAMETER_VALUE, "metadata-url"),
        (R { issuer: Some("https://x".into()), protocol: Some("saml".into()), ..saml(&good_xml) }, codes::INVALID_PARAMETER_COMBINATION, "issuer"),
    ];
    for (req, code, word) in cases {
        let e = fx.store.create_identity_provider(&req).unwrap_err();
        assert_eq!(e.code, code, "{word}: {e:?}");
        assert!(e.message.contains(word), "{word}: {e:?}");
    }
    assert!(
        fx.store.describe_identity_providers().unwrap().is_empty(),
        "nothing written"
    );
    // Loopback http issuers are allowed (a provider on the gateway itself), and so is an
    // EntitiesDescriptor around the provider's EntityDescriptor.
    for host in ["127.0.0.1:8080", "localhost", "[::1]:9000"] {
        let r = with(&|r| {
            r.name = Some(format!("l{}", host.len()));
            r.issuer = Some(format!("http://{host}/realms/x"));
        });
        fx.store.create_identity_provider(&r).unwrap();
    }
    let wrapped = good_xml.replace("<?xml version=\"1.0\" encoding=\"UTF-8\"?>", "");
    let wrapped =
        format!("<md:EntitiesDescriptor xmlns:md=\"{md}\">{wrapped}</md:EntitiesDescriptor>");
    fx.store.create_identity_provider(&saml(&wrapped)).unwrap();
    // Names are unique.
    let e = fx
        .store
        .create_identity_provider(&oidc_req("l9"))
        .unwrap_err();
    assert_eq!(e.code, codes::DUPLICATE_IDENTITY_PROVIDER, "{e:?}");
    assert_eq!(e.http_status(), 409);
}

#[test]
fn endpoints_use_an_identity_provider_alone_or_with_certificates_and_it_cannot_go_while_used() {
    let fx = Fx::new();
    let p = fx
        .store
        .create_identity_provider(&oidc_req("corp-sso"))
        .unwrap();
    let d = fx.store.create_directory(&directory_req("corp")).unwrap();
    // Federated only, named by an ARN: no client CA kept, the id stored, the portal allowed.
    let only = fx
        .store
        .create_endpoint(&CreateEndpointRequest {
            authentication_options: vec![AuthenticationOption::FederatedAuthentication {
                saml_provider_arn: format!("arn:aws:iam::123456789012:saml-provider/{}", p.id),
                self_service_saml_provider_arn: Some(p.id.clone()),
            }],
            self_service_portal: Some(true),
            ..fx.pki.create()
        })
        .unwrap();
    let oid = only.client_vpn_endpoint_id.clone();
    assert_eq!(only.authentication_options, vec![fed(&p.id)]);
    assert_eq!(only.idp_id(), Some(p.id.clone()));
    assert!(only.self_service_portal);
    assert_eq!(fx.store.endpoint_secrets(&oid).unwrap().client_ca_pem, "");
    let (ep_idp, ep_secrets) = fx.store.endpoint_identity_provider(&oid).unwrap().unwrap();
    assert_eq!(ep_idp, p);
    assert_eq!(ep_secrets.client_secret.as_deref(), Some("oidc-s3cret"));
    // Re-giving the options as the ARN is no change; another provider is.
    let same = ModifyEndpointRequest {
        authentication_options: Some(vec![fed(&format!("arn:x:saml-provider/{}", p.id))]),
        ..Default::default()
    };
    assert!(fx
        .store
        .modify_endpoint(&oid, &same)
        .unwrap()
        .changed
        .is_empty());
    let other = ModifyEndpointRequest {
        authentication_options: Some(vec![fed("idp-00000000000000000")]),
        ..Default::default()
    };
    let e = fx.store.modify_endpoint(&oid, &other).unwrap_err();
    assert_eq!(e.code, codes::OPERATION_NOT_PERMITTED);
    // No CRL on an endpoint that takes no certificates.
    let e = fx.store.import_crl(&oid, &fx.pki.crl(&[1])).unwrap_err();
    assert_eq!(e.code, codes::INCORRECT_STATE);
    assert!(e.message.contains("identity provider"), "{e:?}");
    // Certificate + federated.
    let mut both_opts = fx.pki.cert_auth();
    both_opts.push(fed(&p.id));
    let both = fx
        .store
        .create_endpoint(&CreateEndpointRequest {
            client_cidr_block: Some("10.3.0.0/22".into()),
            authentication_options: both_opts.clone(),
            ..fx.pki.create()
        })
        .unwrap();
    assert_eq!(both.authentication_options, both_opts);
    assert!(fx
        .store
        .endpoint_directory(&both.client_vpn_endpoint_id)
        .unwrap()
        .is_none());
    // Directory + federated: refused. The portal without federated authentication: refused,
    // on create and on modify.
    let e = fx
        .store
        .create_endpoint(&CreateEndpointRequest {
            client_cidr_block: Some("10.4.0.0/22".into()),
            authentication_options: vec![
                AuthenticationOption::DirectoryServiceAuthentication {
                    directory_id: d.directory_id.clone(),
                },
                fed(&p.id),
            ],
            ..fx.pki.create()
        })
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMETER_COMBINATION, "{e:?}");
    let cert_only = fx
        .store
        .create_endpoint(&CreateEndpointRequest {
            client_cidr_block: Some("10.5.0.0/22".into()),
            ..fx.pki.create()
        })
        .unwrap();
    assert!(fx
        .store
        .endpoint_identity_provider(&cert_only.client_vpn_endpoint_id)
        .unwrap()
        .is_none());
    let portal_on = ModifyEndpointRequest {
        self_service_portal: Some(true),
        ..Default::default()
    };
    let e = fx
        .store
        .modify_endpoint(&cert_only.client_vpn_endpoint_id, &portal_on)
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMETER_COMBINATION);
    assert!(e.message.contains("self-service-portal"), "{e:?}");
    let r = fx
        .store
        .modify_endpoint(&both.client_vpn_endpoint_id, &portal_on)
        .unwrap();
    assert_eq!(r.changed, vec![EndpointField::SelfServicePortal]);
    // Self-service provider other than the endpoint's: refused.
    let p2 = fx
        .store
        .create_identity_provider(&oidc_req("other"))
        .unwrap();
    let e = fx
        .store
        .create_endpoint(&CreateEndpointRequest {
            client_cidr_block: Some("10.6.0.0/22".into()),
            authentication_options: vec![AuthenticationOption::FederatedAuthentication {
                saml_provider_arn: p.id.clone(),
                self_service_saml_provider_arn: Some(p2.id.clone()),
            }],
            ..fx.pki.create()
        })
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMETER_COMBINATION, "{e:?}");
    // In use: not deleted, with the endpoints named and what to do.
    assert_eq!(
        fx.store.endpoints_using_identity_provider(&p.id).unwrap(),
        {
            let mut v = vec![oid.clone(), both.client_vpn_endpoint_id.clone()];
            v.sort();
            v
        }
    );
    let e = fx.store.delete_identity_provider("corp-sso").unwrap_err();
    assert_eq!(e.code, codes::INCORRECT_STATE);
    assert!(
        e.message.contains(&oid) && e.message.contains("delete"),
        "{e:?}"
    );
    // Unused: deleted; gone afterwards.
    let gone = fx.store.delete_identity_provider(&p2.id).unwrap();
    assert_eq!(gone.name, "other");
    let e = fx.store.describe_identity_provider(&p2.id).unwrap_err();
    assert_eq!(e.code, codes::IDENTITY_PROVIDER_NOT_FOUND);
}

#[test]
fn apply_takes_an_identity_provider_and_the_portal() {
    let fx = Fx::new();
    let p = fx
        .store
        .create_identity_provider(&oidc_req("corp-sso"))
        .unwrap();
    let text = APPLY_TOML
        .replace(
            "client_ca = \"ca.crt\"\n",
            "idp = \"corp-sso\"\nself_service_portal = true\n",
        )
        .replace("10.2.0.0/22", "10.7.0.0/22");
    let cfg = apply_cfg(&text);
    assert!(cfg.client_ca.is_none() && cfg.self_service_portal);
    let pem = format!("{}{}", fx.pki.server_cert, fx.pki.ca_pem);
    let r = apply_endpoint_config(&fx.store, &cfg, &pem, &fx.pki.server_key, None, None).unwrap();
    let ep = fx.store.describe_endpoint(&r.endpoint_id).unwrap();
    assert_eq!(ep.authentication_options, vec![fed(&p.id)]);
    assert!(ep.self_service_portal);
    // Applying again changes nothing.
    let again =
        apply_endpoint_config(&fx.store, &cfg, &pem, &fx.pki.server_key, None, None).unwrap();
    assert!(!again.changed(), "{:?}", again.changes);
    // The file's own rules: not with a directory; the portal needs idp.
    for (bad, word) in [
        (
            text.replace("idp = ", "directory = \"corp\"\nidp = "),
            "cannot be combined",
        ),
        (
            APPLY_TOML.replace(
                "client_ca = \"ca.crt\"\n",
                "client_ca = \"ca.crt\"\nself_service_portal = true\n",
            ),
            "idp",
        ),
    ] {
        let e = crate::config::EndpointConfig::from_toml_str(&bad).unwrap_err();
        assert!(e.to_string().contains(word), "{word}: {e}");
    }
}

// ---- the portal's certificates ------------------------------------------------------------------

impl Fx {
    fn ca_key(&self) -> String {
        self.pki.issuer.key().serialize_pem()
    }

    /// The serials the endpoint's stored CRL lists.
    fn crl_serials(&self, eid: &str) -> Vec<String> {
        match self.store.export_crl(eid).unwrap() {
            None => vec![],
            Some(pem) => {
                validate::crl("crl", &pem, &self.pki.ca_pem, 1000)
                    .unwrap()
                    .revoked_serials
            }
        }
    }
}

#[test]
fn client_ca_key_is_checked_write_only_and_erased_with_the_endpoint() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let ep = fx.store.describe_endpoint(&eid).unwrap();
    assert!(!ep.client_ca_key_set);
    assert_eq!(fx.store.client_ca_key(&eid).unwrap(), None);
    // Another key than the CA's: refused, naming the field.
    let e = fx
        .store
        .set_client_ca_key(&eid, Some(&fx.pki.other_key))
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMETER_COMBINATION);
    assert!(e.message.contains("client-ca-key does not match"), "{e:?}");
    assert_eq!(
        fx.store
            .set_client_ca_key(&eid, Some("not a key"))
            .unwrap_err()
            .code,
        codes::INVALID_PARAMETER_VALUE
    );
    let ep = fx
        .store
        .set_client_ca_key(&eid, Some(&fx.ca_key()))
        .unwrap();
    assert!(ep.client_ca_key_set);
    assert_eq!(fx.store.client_ca_key(&eid).unwrap(), Some(fx.ca_key()));
    // Never in what describe calls return.
    let json = serde_json::to_string(&fx.store.describe_endpoints(&[]).unwrap()).unwrap();
    assert!(!json.contains("PRIVATE KEY"), "{json}");
    assert!(json.contains("\"client-ca-key-set\":true"), "{json}");
    // Removed with None or "" (modify's field too).
    assert!(
        !fx.store
            .set_client_ca_key(&eid, None)
            .unwrap()
            .client_ca_key_set
    );
    let res = fx
        .store
        .modify_endpoint(
            &eid,
            &ModifyEndpointRequest {
                client_ca_key: Some(fx.ca_key()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(res.changed, vec![EndpointField::ClientCaKey]);
    assert!(res.endpoint.client_ca_key_set);
    let again = ModifyEndpointRequest {
        client_ca_key: Some(fx.ca_key()),
        ..Default::default()
    };
    assert!(fx
        .store
        .modify_endpoint(&eid, &again)
        .unwrap()
        .changed
        .is_empty());
    let e = fx
        .store
        .modify_endpoint(
            &eid,
            &ModifyEndpointRequest {
                client_ca_key: Some(fx.pki.other_key.clone()),
                description: Some("not written".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMETER_COMBINATION);
    assert_eq!(fx.store.describe_endpoint(&eid).unwrap().description, None);
    let res = fx
        .store
        .modify_endpoint(
            &eid,
            &ModifyEndpointRequest {
                client_ca_key: Some(String::new()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(res.changed, vec![EndpointField::ClientCaKey]);
    assert!(!res.endpoint.client_ca_key_set);
    // Deleting the endpoint erases the key.
    fx.store
        .set_client_ca_key(&eid, Some(&fx.ca_key()))
        .unwrap();
    fx.store.delete_endpoint(&eid).unwrap();
    fx.store.finish_endpoint_deletion(&eid).unwrap();
    assert_eq!(fx.store.client_ca_key(&eid).unwrap(), None);
    assert!(!fx.store.describe_endpoint(&eid).unwrap().client_ca_key_set);
}

#[test]
fn client_ca_key_is_refused_on_endpoints_without_a_client_ca() {
    let fx = Fx::new();
    let d = fx.store.create_directory(&directory_req("corp")).unwrap();
    let eid = fx
        .store
        .create_endpoint(&CreateEndpointRequest {
            authentication_options: vec![AuthenticationOption::DirectoryServiceAuthentication {
                directory_id: d.directory_id.clone(),
            }],
            ..fx.pki.create()
        })
        .unwrap()
        .client_vpn_endpoint_id;
    let e = fx
        .store
        .set_client_ca_key(&eid, Some(&fx.ca_key()))
        .unwrap_err();
    assert_eq!(e.code, codes::INCORRECT_STATE);
    assert!(e.message.contains("has no client CA"), "{e:?}");
    // Removing nothing is fine.
    fx.store.set_client_ca_key(&eid, None).unwrap();
    let e = fx
        .store
        .issue_portal_certificate(&eid, "alice", std::time::Duration::from_secs(3600))
        .unwrap_err();
    assert_eq!(e.code, codes::INCORRECT_STATE);
}

#[test]
fn portal_certificates_need_the_ca_key_and_are_recorded() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let hour = std::time::Duration::from_secs(3600);
    // No key: refused, saying what to do.
    let e = fx
        .store
        .issue_portal_certificate(&eid, "alice", hour)
        .unwrap_err();
    assert_eq!(e.code, codes::INCORRECT_STATE);
    assert!(e.message.contains("holds no client CA key"), "{e:?}");
    assert!(e.message.contains("--client-ca-key"), "{e:?}");
    assert!(fx.store.issued_certificates(&eid, None).unwrap().is_empty());

    fx.store
        .set_client_ca_key(&eid, Some(&fx.ca_key()))
        .unwrap();
    let a = fx
        .store
        .issue_portal_certificate(&eid, "alice", hour)
        .unwrap();
    assert_eq!(a.not_after, Timestamp(T0 + 3600));
    assert_eq!(a.common_name, "alice");
    // The endpoint's TLS layer reads it as issued.
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(a.cert_pem.as_bytes()).unwrap();
    let id = crate::protocol::tls::client_identity(&der).unwrap();
    assert_eq!(
        (id.common_name.as_str(), id.serial.as_str()),
        ("alice", a.serial_hex.as_str())
    );
    fx.advance(10);
    let b = fx
        .store
        .issue_portal_certificate(&eid, "bob", hour)
        .unwrap();
    let list = fx.store.issued_certificates(&eid, None).unwrap();
    assert_eq!(
        list.iter().map(|c| c.serial.as_str()).collect::<Vec<_>>(),
        vec![a.serial_hex.as_str(), b.serial_hex.as_str()]
    );
    assert_eq!(list[0].username, "alice");
    assert_eq!(list[0].issue_time, Timestamp(T0));
    assert_eq!(list[0].status, "valid");
    assert_eq!(list[0].revocation_time, None);
    let bobs = fx.store.issued_certificates(&eid, Some("BOB")).unwrap();
    assert_eq!(bobs.len(), 1, "user names compare case-insensitively");
    assert_eq!(bobs[0].serial, b.serial_hex);
    // Expiry shows.
    fx.advance(3600);
    assert_eq!(
        fx.store.issued_certificates(&eid, Some("alice")).unwrap()[0].status,
        "expired"
    );
    // Lifetimes are bounded; unknown endpoints are not found.
    for bad in [
        std::time::Duration::ZERO,
        MAX_PORTAL_CERTIFICATE_LIFETIME * 2,
    ] {
        assert_eq!(
            fx.store
                .issue_portal_certificate(&eid, "alice", bad)
                .unwrap_err()
                .code,
            codes::INVALID_PARAMETER_VALUE
        );
    }
    assert_eq!(
        fx.store
            .issue_portal_certificate(&eid, "\n", hour)
            .unwrap_err()
            .code,
        codes::INVALID_PARAMETER_VALUE
    );
    assert_eq!(
        fx.store
            .issue_portal_certificate("cvpn-endpoint-00000000000000000", "alice", hour)
            .unwrap_err()
            .code,
        codes::ENDPOINT_NOT_FOUND
    );
}

#[test]
fn revoking_a_user_signs_a_crl_of_the_portal_revocations_and_keeps_other_entries() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let day = std::time::Duration::from_secs(86_400);
    // A user with nothing issued: nothing revoked, no CRL appears; the time is recorded
    // (portal sessions begun before it take no more profiles).
    let before = Timestamp(fx.clock.load(Ordering::SeqCst));
    assert!(!fx
        .store
        .access_revoked_since(&eid, "NoBody", before)
        .unwrap());
    assert_eq!(
        fx.store.revoke_user_certificates(&eid, "nobody").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(fx.store.export_crl(&eid).unwrap(), None);
    assert!(fx
        .store
        .access_revoked_since(&eid, "NoBody", before)
        .unwrap());
    let later = Timestamp(before.0 + 1);
    assert!(!fx
        .store
        .access_revoked_since(&eid, "nobody", later)
        .unwrap());

    // The administrator's own CRL (same CA) and another CA's list are kept.
    let foreign = Pki::crl_by(&fx.pki.foreign, &[7]);
    let ca_bundle_crl = fx.pki.crl(&[0x64]);
    fx.store.import_crl(&eid, &ca_bundle_crl).unwrap();

    fx.store
        .set_client_ca_key(&eid, Some(&fx.ca_key()))
        .unwrap();
    let a1 = fx
        .store
        .issue_portal_certificate(&eid, "alice", day)
        .unwrap();
    let a2 = fx
        .store
        .issue_portal_certificate(&eid, "Alice", day)
        .unwrap();
    let b = fx.store.issue_portal_certificate(&eid, "bob", day).unwrap();
    fx.advance(60);
    let revoked = fx.store.revoke_user_certificates(&eid, "alice").unwrap();
    assert_eq!(revoked.len(), 2);
    assert!(revoked.contains(&a1.serial_hex) && revoked.contains(&a2.serial_hex));
    let mut listed = fx.crl_serials(&eid);
    listed.sort();
    let mut want = vec![
        "64".to_string(),
        a1.serial_hex.clone(),
        a2.serial_hex.clone(),
    ];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(fx.store.describe_endpoint(&eid).unwrap().crl_entries, 3);
    let secrets = fx.store.endpoint_secrets(&eid).unwrap();
    assert_eq!(secrets.crl_pem, fx.store.export_crl(&eid).unwrap());
    let alice = fx.store.issued_certificates(&eid, Some("alice")).unwrap();
    assert!(alice
        .iter()
        .all(|c| c.status == "revoked" && c.revocation_time == Some(Timestamp(T0 + 60))));
    assert_eq!(
        fx.store.issued_certificates(&eid, Some("bob")).unwrap()[0].status,
        "valid"
    );
    // Again: nothing new.
    assert!(fx
        .store
        .revoke_user_certificates(&eid, "alice")
        .unwrap()
        .is_empty());

    // An import that lacks the portal's revocations keeps them (signed in again). (Another
    // CA's list would stay a block of its own: the import accepts only the endpoint's CAs, so
    // that is checked on the split alone.)
    let s = fx.store.import_crl(&eid, &fx.pki.crl(&[0x65])).unwrap();
    let mut got = s.revoked_serials.clone();
    got.sort();
    let mut want = vec![
        "65".to_string(),
        a1.serial_hex.clone(),
        a2.serial_hex.clone(),
    ];
    want.sort();
    assert_eq!(got, want);
    let split = crate::auth::issuer::split_crl(
        &format!("{}{foreign}", fx.store.export_crl(&eid).unwrap().unwrap()),
        &fx.pki.ca_pem,
        &fx.ca_key(),
    )
    .unwrap();
    assert_eq!(split.others, vec![foreign.clone()]);

    // Bob's revocation: his serial joins; expired portal entries drop out of the list.
    fx.advance(86_400);
    let b2 = fx.store.issue_portal_certificate(&eid, "bob", day).unwrap();
    let revoked = fx.store.revoke_user_certificates(&eid, "bob").unwrap();
    assert_eq!(
        revoked,
        vec![b2.serial_hex.clone()],
        "{} expired",
        b.serial_hex
    );
    let mut listed = fx.crl_serials(&eid);
    listed.sort();
    let mut want = vec!["65".to_string(), b2.serial_hex.clone()];
    want.sort();
    assert_eq!(listed, want);

    // Without the key, a revocation that has something to revoke is refused, nothing changes.
    let c = fx
        .store
        .issue_portal_certificate(&eid, "carol", day)
        .unwrap();
    fx.store.set_client_ca_key(&eid, None).unwrap();
    let e = fx
        .store
        .revoke_user_certificates(&eid, "carol")
        .unwrap_err();
    assert_eq!(e.code, codes::INCORRECT_STATE);
    assert!(e.message.contains(&c.serial_hex), "{e:?}");
    assert_eq!(
        fx.store.issued_certificates(&eid, Some("carol")).unwrap()[0].status,
        "valid"
    );
}

#[test]
fn portal_downloads_are_counted() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let other = fx.endpoint();
    assert_eq!(fx.store.portal_downloads(&eid).unwrap(), 0);
    assert_eq!(fx.store.record_portal_download(&eid).unwrap(), 1);
    assert_eq!(fx.store.record_portal_download(&eid).unwrap(), 2);
    assert_eq!(fx.store.portal_downloads(&eid).unwrap(), 2);
    assert_eq!(fx.store.portal_downloads(&other).unwrap(), 0);
    assert_eq!(
        fx.store
            .describe_endpoint(&eid)
            .unwrap()
            .self_service_portal_downloads,
        2
    );
    let json = serde_json::to_string(&fx.store.describe_endpoint(&other).unwrap()).unwrap();
    assert!(
        json.contains("\"self-service-portal-downloads\":0"),
        "{json}"
    );
    assert_eq!(
        fx.store
            .record_portal_download("cvpn-endpoint-00000000000000000")
            .unwrap_err()
            .code,
        codes::ENDPOINT_NOT_FOUND
    );
}

// ---- both backends ------------------------------------------------------------------------------

/// The tables and columns of the store's schema: `(table, column)`, sorted.
fn schema_columns(store: &Store) -> Vec<(String, String)> {
    let sql = match &store.backend {
        Backend::Sqlite(_) => {
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'"
        }
        Backend::Postgres(_) => {
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> 'cvpn_schema'"
        }
    };
    let mut cols = store
        .read(|db| query(db, sql, (), |r| Ok((r.get(0)?, r.get(1)?))))
        .unwrap();
    cols.sort();
    cols
}

#[test]
fn schema_is_the_same_on_both_backends() {
    let fx = Fx::new();
    let sqlite_dir = TempDir::new("parity");
    let sqlite = Store::open(StoreOptions::in_dir(&sqlite_dir.0)).unwrap();
    assert!(!sqlite.is_shared());
    let want = schema_columns(&sqlite);
    assert!(want.len() > 50, "{want:?}");
    assert!(want.contains(&("connections".into(), "client_ip".into())));
    if postgres_admin().is_none() {
        eprintln!("schema_is_the_same_on_both_backends: compared on PostgreSQL runs only");
        return;
    }
    assert!(fx.store.is_shared());
    assert_eq!(schema_columns(&fx.store), want);
    assert_eq!(
        schema::POSTGRES_MIGRATIONS.len(),
        schema::MIGRATIONS.len(),
        "one migration story: each SQLite migration has its PostgreSQL twin"
    );
    assert_eq!(
        fx.store.schema_version().unwrap(),
        sqlite.schema_version().unwrap()
    );
}

/// Two stores on one database are two nodes of a cluster (on SQLite, two processes on one
/// host): writes that check a quota and then insert, racing from both, never exceed it, and
/// no two rules are the same.
#[test]
fn two_stores_on_one_database_keep_quotas_under_concurrent_writes() {
    let quotas = Quotas {
        authorization_rules_per_endpoint: 12,
        ..Quotas::default()
    };
    let fx = Fx::with_quotas(quotas);
    let eid = fx.endpoint();
    let other = Store::open(options(&fx.dir.0, &fx.clock, quotas)).unwrap();
    let stores = [&fx.store, &other];
    let ok = AtomicU32::new(0);
    std::thread::scope(|s| {
        for (t, store) in stores.iter().enumerate() {
            let (eid, ok) = (&eid, &ok);
            s.spawn(move || {
                for i in 0..10u8 {
                    // Half the destinations are the same from both threads: exactly one wins.
                    let octet = if i % 2 == 0 {
                        i
                    } else {
                        100 + i + u8::try_from(t).unwrap() * 50
                    };
                    let r = store.authorize_rule(&AuthorizeRequest {
                        protocol: None,
                        port_range: None,
                        client_vpn_endpoint_id: eid.clone(),
                        target_network_cidr: format!("172.16.{octet}.0/24"),
                        authorize_all_groups: Some(true),
                        ..Default::default()
                    });
                    match r {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => assert!(
                            e.code == codes::DUPLICATE_AUTHORIZATION_RULE
                                || e.code == codes::AUTHORIZATION_RULE_LIMIT_EXCEEDED,
                            "{e}"
                        ),
                    }
                }
            });
        }
    });
    let rules = fx.store.describe_rules(&eid).unwrap();
    assert_eq!(rules.len(), 12, "the quota holds across both stores");
    assert_eq!(ok.load(Ordering::SeqCst), 12);
    let mut dests: Vec<String> = rules
        .iter()
        .map(|r| r.destination_cidr.to_string())
        .collect();
    dests.sort();
    dests.dedup();
    assert_eq!(dests.len(), 12, "no rule twice");
    assert_eq!(other.describe_rules(&eid).unwrap(), rules);
}

// ---- nodes --------------------------------------------------------------------------------------

#[test]
fn one_node_serves_a_database_until_its_heartbeat_goes_stale() {
    let fx = Fx::new();
    let a = fx
        .store
        .register_node("gw-a", "run-1", Some("192.0.2.1"))
        .unwrap();
    assert_eq!((a.name.as_str(), a.heartbeat_at.0), ("gw-a", T0));
    let other = Store::open(options(&fx.dir.0, &fx.clock, Quotas::default())).unwrap();
    let shared = fx.store.is_shared();
    if shared {
        // PostgreSQL: nodes of other names serve it together.
        other.register_node("gw-b", "run-9", None).unwrap();
        let nodes = fx.store.describe_nodes().unwrap();
        let alive: Vec<(&str, bool)> = nodes.iter().map(|(n, a)| (n.name.as_str(), *a)).collect();
        assert_eq!(alive, [("gw-a", true), ("gw-b", true)]);
        other.deregister_node("gw-b", "run-9").unwrap();
    } else {
        // SQLite: another host while gw-a is alive is refused, naming it.
        let e = other.register_node("gw-b", "run-9", None).unwrap_err();
        assert_eq!(e.code, codes::INCORRECT_STATE);
        assert!(
            e.message.contains("\"gw-a\"") && e.message.contains("15 s"),
            "{e}"
        );
    }
    // Heartbeats keep it alive past the stale bound.
    for _ in 0..4 {
        fx.advance(5);
        fx.store.node_heartbeat("gw-a", "run-1", None).unwrap();
    }
    if !shared {
        assert_eq!(
            code(other.register_node("gw-b", "run-9", None)),
            codes::INCORRECT_STATE
        );
    }
    // gw-a restarting (a new run of the same name) takes its own place at once.
    let a2 = other
        .register_node("gw-a", "run-2", Some("192.0.2.1"))
        .unwrap();
    assert_eq!(a2.instance, "run-2");
    // The old run's heartbeat now fails: it was taken over.
    assert_eq!(
        code(fx.store.node_heartbeat("gw-a", "run-1", None)),
        codes::INCORRECT_STATE
    );
    // Silent for the stale bound: dead; a standby takes over.
    fx.advance(15);
    let nodes = fx.store.describe_nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(!nodes[0].1, "gw-a is dead after 15 s without a heartbeat");
    other.register_node("gw-b", "run-9", None).unwrap();
    let nodes = fx.store.describe_nodes().unwrap();
    let alive: Vec<(&str, bool)> = nodes.iter().map(|(n, a)| (n.name.as_str(), *a)).collect();
    assert_eq!(alive, [("gw-a", false), ("gw-b", true)]);
    // A clean stop removes only its own run.
    other.deregister_node("gw-a", "run-2").unwrap();
    other.deregister_node("gw-b", "run-0").unwrap();
    assert_eq!(fx.store.describe_nodes().unwrap().len(), 1);
    other.deregister_node("gw-b", "run-9").unwrap();
    assert!(fx.store.describe_nodes().unwrap().is_empty());
    // Names are checked.
    for bad in ["", "a b", "x;DROP", &"n".repeat(64)] {
        assert_eq!(
            code(fx.store.register_node(bad, "r", None)),
            codes::INVALID_PARAMETER_VALUE
        );
    }
}

#[test]
fn nodes_of_one_endpoint_serve_their_own_associations_routes_and_address_blocks() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    let (a, b) = (node_store(&fx, "gw-a"), node_store(&fx, "gw-b"));
    let associate = |store: &Store, iface: &str, subnet: &str, node: Option<&str>| {
        store.associate_target_network(&AssociateTargetNetworkRequest {
            client_vpn_endpoint_id: eid.clone(),
            target_network_id: iface.into(),
            subnet_cidr: Some(subnet.into()),
            snat_address: None,
            node: node.map(Into::into),
        })
    };
    assert!(!a.serves_endpoint(&eid).unwrap() && !b.serves_endpoint(&eid).unwrap());
    // Each node associates its own eth1 (the node asked, by default); the same name twice on
    // one node is a duplicate.
    let on_a = associate(&a, "eth1", "10.88.1.0/24", None).unwrap();
    assert_eq!(on_a.association.node.as_deref(), Some("gw-a"));
    assert!(a.serves_endpoint(&eid).unwrap() && !b.serves_endpoint(&eid).unwrap());
    let on_b = associate(&a, "eth1", "10.88.2.0/24", Some("gw-b")).unwrap();
    assert_eq!(on_b.association.node.as_deref(), Some("gw-b"));
    assert!(b.serves_endpoint(&eid).unwrap());
    let dup = associate(&b, "eth1", "10.88.3.0/24", None).unwrap_err();
    assert_eq!(dup.code, codes::DUPLICATE_ASSOCIATION);
    assert!(dup.message.contains("of node gw-b"), "{dup}");
    assert_eq!(
        code(associate(&a, "eth2", "10.88.4.0/24", Some("bad node"))),
        codes::INVALID_PARAMETER_VALUE
    );
    // Each node's data plane sees its own target network and the routes through it; the
    // rules are everybody's.
    fx.store
        .authorize_rule(&AuthorizeRequest {
            protocol: None,
            port_range: None,
            client_vpn_endpoint_id: eid.clone(),
            target_network_cidr: "10.88.0.0/16".into(),
            authorize_all_groups: Some(true),
            ..Default::default()
        })
        .unwrap();
    for (store, subnet, assoc) in [(&a, "10.88.1.0/24", &on_a), (&b, "10.88.2.0/24", &on_b)] {
        let targets = store.target_specs(&eid).unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].id, assoc.association.target_id);
        let policy = store.policy_for(&eid).unwrap();
        let dests: Vec<String> = policy
            .routes
            .iter()
            .map(|r| r.destination.to_string())
            .collect();
        assert_eq!(dests, [subnet]);
        assert_eq!(policy.rules.len(), 1);
    }
    // A route names its target network by interface: this node's first, NODE:INTERFACE for
    // another's; a name on several nodes from a store of no node must be qualified.
    let route = |store: &Store, target: &str| {
        store.create_route(&CreateRouteRequest {
            client_vpn_endpoint_id: eid.clone(),
            destination_cidr_block: "192.168.50.0/24".into(),
            target_network_id: target.into(),
            description: None,
        })
    };
    let r = route(&b, "eth1").unwrap();
    assert_eq!(r.association_id, on_b.association.association_id);
    let r = route(&fx.store, "gw-a:eth1").unwrap();
    assert_eq!(r.association_id, on_a.association.association_id);
    let e = route(&fx.store, "eth1").unwrap_err();
    assert!(
        e.message.contains("several nodes") && e.message.contains("gw-b:eth1"),
        "{e}"
    );
    assert_eq!(
        code(route(&fx.store, "gw-c:eth1")),
        codes::INVALID_PARAMETER_VALUE
    );
    // Profiles list the live nodes that serve the endpoint and have a public address.
    b.register_node("gw-b", "run-b", Some("198.51.100.2"))
        .unwrap();
    assert_eq!(
        fx.store.endpoint_node_addresses(&eid).unwrap(),
        ["198.51.100.2"]
    );

    // Address blocks: no two nodes ever hold one; the blocks run out.
    let mut held = std::collections::HashSet::new();
    for i in 0..16 {
        let store = if i % 3 == 0 { &b } else { &a };
        let block = store
            .claim_address_block(&eid)
            .unwrap()
            .expect("a free block");
        assert!(held.insert(block), "{block} claimed twice");
    }
    assert_eq!(
        a.claim_address_block(&eid).unwrap(),
        None,
        "gw-b is alive: nothing left"
    );
    let of_b = b.own_address_blocks(&eid).unwrap();
    assert_eq!(of_b.len(), 6);
    assert_eq!(a.own_address_blocks(&eid).unwrap().len(), 10);
    // gw-b silent past the stale bound: its blocks may be claimed, only now that none is free.
    fx.advance(16);
    let taken = a
        .claim_address_block(&eid)
        .unwrap()
        .expect("a dead node's block");
    assert!(of_b.contains(&taken), "{taken}");
    assert_eq!(a.sweep_dead_nodes().unwrap().len(), 1);
    // gw-b back: it still holds the rest; a fresh start of gw-b frees them.
    assert_eq!(
        b.node_heartbeat("gw-b", "run-b", None).unwrap(),
        crate::storage::nodes::Heartbeat::Rejoined
    );
    assert_eq!(b.own_address_blocks(&eid).unwrap().len(), 5);
    b.register_node("gw-b", "run-b2", None).unwrap();
    assert!(b.own_address_blocks(&eid).unwrap().is_empty());
    assert_eq!(fx.store.describe_address_blocks().unwrap().len(), 11);
    // A store of no node claims nothing.
    assert_eq!(
        code(fx.store.claim_address_block(&eid)),
        codes::INTERNAL_ERROR
    );
}

#[test]
fn two_nodes_claiming_blocks_at_once_never_get_the_same_one() {
    let fx = Fx::new();
    if !fx.store.is_shared() {
        eprintln!("two_nodes_claiming_blocks_at_once: PostgreSQL runs only (SQLite: one node)");
        return;
    }
    let eid = fx.endpoint();
    let stores = [node_store(&fx, "gw-a"), node_store(&fx, "gw-b")];
    stores[0].register_node("gw-a", "run-a", None).unwrap();
    stores[1].register_node("gw-b", "run-b", None).unwrap();
    let got = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for store in &stores {
            let (eid, got) = (&eid, &got);
            s.spawn(move || {
                while let Some(b) = store.claim_address_block(eid).unwrap() {
                    got.lock().unwrap().push(b);
                }
            });
        }
    });
    let mut got = got.into_inner().unwrap();
    got.sort();
    let n = got.len();
    got.dedup();
    assert_eq!((n, got.len()), (16, 16), "every block once");
}

/// A store working for node `name` on the fixture's database.
fn node_store(fx: &Fx, name: &str) -> Store {
    Store::open(StoreOptions {
        node: Some(name.into()),
        ..options(&fx.dir.0, &fx.clock, Quotas::default())
    })
    .unwrap()
}

#[test]
fn a_dead_nodes_connections_are_ended_by_a_live_one_and_a_restart_ends_only_its_own() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    fx.associate(&eid, "tgt0", None).unwrap();
    let (a, b) = (node_store(&fx, "gw-a"), node_store(&fx, "gw-b"));
    a.register_node("gw-a", "run-1", None).unwrap();
    let start = |store: &Store, ip: u8| {
        store
            .record_connection_start(&NewConnection {
                client_vpn_endpoint_id: eid.clone(),
                client_ip: Ipv4Addr::new(10, 2, 0, ip),
                common_name: format!("user{ip}"),
                username: None,
                device_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, ip)),
                device_port: 50_000,
                transport_protocol: TransportProtocol::Udp,
            })
            .unwrap()
            .connection_id
    };
    let c1 = start(&a, 1);
    let c2 = start(&b, 2);
    let status = |id: &str| {
        let c = &fx
            .store
            .describe_connections(&ConnectionFilter {
                connection_id: Some(id.into()),
                ..Default::default()
            })
            .unwrap()[0];
        (c.status, c.node.clone())
    };
    assert_eq!(status(&c1), (ConnectionStatus::Active, Some("gw-a".into())));
    // gw-b restarting ends its own connections, not gw-a's.
    assert_eq!(b.close_stale_connections().unwrap(), vec![c2.clone()]);
    assert_eq!(status(&c2).0, ConnectionStatus::Terminated);
    assert_eq!(status(&c1).0, ConnectionStatus::Active);
    let c3 = start(&b, 3);
    // gw-a stays silent past the bound: gw-b's sweep ends gw-a's connections, once.
    fx.advance(10);
    assert!(
        b.sweep_dead_nodes().unwrap().is_empty(),
        "10 s of silence is not death"
    );
    fx.advance(6);
    let swept = b.sweep_dead_nodes().unwrap();
    assert_eq!(
        swept,
        vec![nodes::SweptNode {
            name: "gw-a".into(),
            connections: vec![c1.clone()],
        }]
    );
    assert_eq!(status(&c1).0, ConnectionStatus::Terminated);
    assert_eq!(status(&c3), (ConnectionStatus::Active, Some("gw-b".into())));
    assert!(b.sweep_dead_nodes().unwrap().is_empty());
    // gw-a was only cut off: its next heartbeat rejoins.
    assert_eq!(
        a.node_heartbeat("gw-a", "run-1", Some("192.0.2.1"))
            .unwrap(),
        nodes::Heartbeat::Rejoined
    );
    let nodes = fx.store.describe_nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].0.address.as_deref(), Some("192.0.2.1"));
    assert!(nodes[0].1);
    // Its session still runs: its next counters make the connection active again (a
    // connection ended otherwise stays ended).
    let counters = ConnectionCounters {
        ingress_bytes: 7,
        ..Default::default()
    };
    assert_eq!(
        a.update_connections(&[(c1.clone(), counters), (c2.clone(), counters)])
            .unwrap(),
        1
    );
    assert_eq!(status(&c1), (ConnectionStatus::Active, Some("gw-a".into())));
    assert_eq!(status(&c2).0, ConnectionStatus::Terminated);
    a.end_connection(&c1, counters).unwrap();
    assert_eq!(status(&c1).0, ConnectionStatus::Terminated);
    // A store without a node (one host, or a tool) ends every live connection.
    assert_eq!(fx.store.close_stale_connections().unwrap(), vec![c3]);
}

#[test]
fn configuration_changes_move_the_change_counter_and_records_do_not() {
    let fx = Fx::new();
    let seq = || fx.store.change_seq().unwrap();
    let s0 = seq();
    let eid = fx.endpoint();
    fx.associate(&eid, "tgt0", None).unwrap();
    assert_eq!(seq(), s0 + 2, "create and associate are changes");
    fx.rule(&eid, "10.88.0.0/24", None).unwrap();
    assert_eq!(seq(), s0 + 3);
    // A refused change changes nothing, the counter included.
    assert_eq!(
        code(fx.rule(&eid, "10.88.0.0/24", None)),
        codes::DUPLICATE_AUTHORIZATION_RULE
    );
    assert_eq!(seq(), s0 + 3);
    // Connection records are not configuration: nodes need not resynchronise for them.
    let c = fx.connect(&eid, "alice", 5).unwrap();
    fx.store
        .update_connections(&[(c.connection_id.clone(), ConnectionCounters::default())])
        .unwrap();
    fx.store.register_node("gw-a", "run-1", None).unwrap();
    fx.store.node_heartbeat("gw-a", "run-1", None).unwrap();
    assert_eq!(seq(), s0 + 3);
    // A terminate is: the node holding the connection must act on it.
    fx.store
        .terminate_connections(&eid, &TerminateTarget::ConnectionId(c.connection_id))
        .unwrap();
    assert_eq!(seq(), s0 + 4);
}

/// Each portal download issues a certificate, and each revoked one takes a CRL entry: one user
/// must not be able to hold more than a few at once (else downloading in a loop fills the CRL
/// quota and `revoke-user` fails for everyone).
#[test]
fn a_user_holds_at_most_ten_live_portal_certificates() {
    let fx = Fx::new();
    let eid = fx.endpoint();
    fx.store
        .set_client_ca_key(&eid, Some(&fx.ca_key()))
        .unwrap();
    let hour = std::time::Duration::from_secs(3600);
    for _ in 0..MAX_LIVE_PORTAL_CERTIFICATES_PER_USER {
        fx.store
            .issue_portal_certificate(&eid, "alice", hour)
            .unwrap();
    }
    let e = fx
        .store
        .issue_portal_certificate(&eid, "Alice", hour)
        .unwrap_err();
    assert_eq!(e.code, codes::OPERATION_NOT_PERMITTED);
    assert!(
        e.message.contains("use a profile already downloaded"),
        "{e}"
    );
    // Others are not affected; expiry or revocation frees the user's room.
    fx.store
        .issue_portal_certificate(&eid, "bob", hour)
        .unwrap();
    fx.advance(3601);
    fx.store
        .issue_portal_certificate(&eid, "alice", hour)
        .unwrap();
    fx.store.revoke_user_certificates(&eid, "alice").unwrap();
    fx.store
        .issue_portal_certificate(&eid, "alice", hour)
        .unwrap();
}

/// A transaction cut by the statement deadline leaves nothing behind: its writes are never
/// committed by a later call that gets the same connection, and the calls right after it fail
/// at once (the silence backoff) rather than each waiting out the deadline.
#[test]
fn a_transaction_cut_by_the_deadline_leaves_nothing_behind() {
    let fx = Fx::new();
    let Some(pool) = fx.store.pg_pool() else {
        eprintln!(
            "a_transaction_cut_by_the_deadline: PostgreSQL runs only (SQLite has no deadline)"
        );
        return;
    };
    pool.batch("CREATE TABLE deadline_probe (n BIGINT)")
        .unwrap();
    let e = pool
        .transaction("BEGIN", 1, |db| {
            db.execute("INSERT INTO deadline_probe (n) VALUES (1)", ())?;
            db.query_all("SELECT pg_sleep(12)::text", (), |_| Ok(()))?;
            Ok(())
        })
        .unwrap_err();
    assert_eq!(e.code, codes::SERVICE_UNAVAILABLE, "{e}");
    assert!(e.message.contains("did not answer"), "{e}");
    // Right after: refused at once, saying why.
    let t = std::time::Instant::now();
    let e = pool
        .transaction("BEGIN", 1, |db| {
            Ok(db.query_all("SELECT 1::text", (), |_| Ok(()))?)
        })
        .unwrap_err();
    assert!(t.elapsed() < std::time::Duration::from_secs(1), "{e}");
    assert!(e.message.contains("a moment ago"), "{e}");
    std::thread::sleep(sql::PG_SILENCE_BACKOFF + std::time::Duration::from_millis(200));
    // Later calls, whichever connection they get, commit only their own writes.
    for n in 2..5 {
        pool.transaction("BEGIN", 1, |db| {
            db.execute("INSERT INTO deadline_probe (n) VALUES (?1)", [n])?;
            Ok(())
        })
        .unwrap();
    }
    let rows: Vec<i64> = pool
        .transaction("BEGIN", 1, |db| {
            Ok(db.query_all("SELECT n FROM deadline_probe ORDER BY n", (), |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(
        rows,
        [2, 3, 4],
        "the cut transaction's insert was committed"
    );
}

// ---- the AWS-compatible API's records (access keys, imported certificates, client tokens) -----

#[test]
fn access_keys_are_made_listed_without_secrets_and_deleted() {
    let fx = Fx::new();
    let k = fx
        .store
        .create_access_key(&crate::model::CreateAccessKeyRequest {
            permission: Some("read-only".into()),
            description: Some("auditor".into()),
        })
        .unwrap();
    assert_eq!(k.key.access_key_id.len(), 20);
    assert!(k.key.access_key_id.starts_with("AKIA"));
    assert_eq!(k.secret_access_key.len(), 40);
    validate_access_key_id("id", &k.key.access_key_id).unwrap();
    let listed = fx.store.list_access_keys().unwrap();
    assert_eq!(listed, vec![k.key.clone()]);
    let (secret, perm) = fx
        .store
        .access_key_secret(&k.key.access_key_id)
        .unwrap()
        .unwrap();
    assert_eq!(
        (secret.as_str(), perm),
        (
            k.secret_access_key.as_str(),
            crate::model::AccessKeyPermission::ReadOnly
        )
    );
    fx.store.access_key_used(&k.key.access_key_id).unwrap();
    assert_eq!(
        fx.store.list_access_keys().unwrap()[0].last_used,
        Some(Timestamp(T0))
    );
    assert_eq!(
        code(
            fx.store
                .create_access_key(&crate::model::CreateAccessKeyRequest {
                    permission: Some("admin".into()),
                    description: None,
                })
        ),
        codes::INVALID_PARAMETER_VALUE
    );
    // Hostile ids never reach the database.
    assert_eq!(fx.store.access_key_secret("' OR 1=1 --").unwrap(), None);
    fx.store.delete_access_key(&k.key.access_key_id).unwrap();
    assert_eq!(
        code(fx.store.delete_access_key(&k.key.access_key_id)),
        codes::ACCESS_KEY_NOT_FOUND
    );
    assert_eq!(
        fx.store.access_key_secret(&k.key.access_key_id).unwrap(),
        None
    );
    // The table is bounded.
    for _ in 0..crate::model::MAX_ACCESS_KEYS {
        fx.store.create_access_key(&Default::default()).unwrap();
    }
    assert_eq!(
        code(fx.store.create_access_key(&Default::default())),
        codes::LIMIT_EXCEEDED
    );
}

#[test]
fn imported_certificates_are_named_by_arn_and_kept_while_in_use() {
    let fx = Fx::new();
    let server = fx
        .store
        .import_certificate(
            None,
            "eu-west-3",
            &fx.pki.server_cert,
            Some(&fx.pki.server_key),
            &fx.pki.ca_pem,
        )
        .unwrap();
    assert!(server
        .certificate_arn
        .starts_with("arn:aws:acm:eu-west-3:000000000000:certificate/"));
    assert!(server.has_private_key);
    assert_eq!(
        fx.store
            .client_ca_material(&server.certificate_arn)
            .unwrap()
            .trim(),
        fx.pki.ca_pem.trim()
    );
    let (pem, key) = fx
        .store
        .certificate_material(&server.certificate_arn)
        .unwrap();
    assert!(pem.contains(fx.pki.server_cert.trim()) && pem.contains(fx.pki.ca_pem.trim()));
    assert_eq!(key.as_deref(), Some(fx.pki.server_key.as_str()));
    // A key of another certificate is refused.
    assert_eq!(
        code(fx.store.import_certificate(
            None,
            "eu-west-3",
            &fx.pki.server_cert,
            Some(&fx.pki.other_key),
            ""
        )),
        codes::INVALID_PARAMETER_COMBINATION
    );
    // An ARN never made here is not found, and one of the wrong form is refused.
    assert_eq!(
        code(fx.store.describe_certificate(
            "arn:aws:acm:eu-west-3:000000000000:certificate/00000000-0000-4000-8000-000000000000"
        )),
        codes::CERTIFICATE_NOT_FOUND
    );
    assert_eq!(
        code(fx.store.describe_certificate("arn:x")),
        codes::INVALID_PARAMETER_VALUE
    );
    // In use by an endpoint whose server certificate it is.
    let ep = fx.endpoint();
    assert_eq!(
        fx.store.certificate_users(&server.certificate_arn).unwrap(),
        vec![ep.clone()]
    );
    assert_eq!(
        code(fx.store.delete_certificate(&server.certificate_arn)),
        codes::CERTIFICATE_IN_USE
    );
    let described = fx.store.describe_endpoint(&ep).unwrap();
    assert_eq!(
        fx.store
            .certificate_arn_of(&described.server_certificate, false)
            .unwrap(),
        Some(server.certificate_arn.clone())
    );
    assert_eq!(
        fx.store
            .certificate_arn_of(described.client_ca().unwrap(), true)
            .unwrap(),
        Some(server.certificate_arn.clone())
    );
}

#[test]
fn a_client_token_answers_its_retry_and_refuses_other_parameters() {
    use super::client_tokens::{TokenClaim, CLIENT_TOKEN_TTL_SECS};
    let fx = Fx::new();
    let s = &fx.store;
    assert_eq!(
        s.claim_client_token("t1", "Create", "h1").unwrap(),
        TokenClaim::Fresh
    );
    assert_eq!(
        s.claim_client_token("t1", "Create", "h1").unwrap(),
        TokenClaim::Running
    );
    s.finish_client_token("t1", "Create", Some("<answer/>"))
        .unwrap();
    assert_eq!(
        s.claim_client_token("t1", "Create", "h1").unwrap(),
        TokenClaim::Answered("<answer/>".into())
    );
    assert_eq!(
        s.claim_client_token("t1", "Create", "h2").unwrap(),
        TokenClaim::Mismatch
    );
    // Another action has its own tokens.
    assert_eq!(
        s.claim_client_token("t1", "Authorize", "h2").unwrap(),
        TokenClaim::Fresh
    );
    // A failed call forgets its token: the retry runs again.
    s.finish_client_token("t1", "Authorize", None).unwrap();
    assert_eq!(
        s.claim_client_token("t1", "Authorize", "h2").unwrap(),
        TokenClaim::Fresh
    );
    // Tokens expire.
    fx.advance(CLIENT_TOKEN_TTL_SECS + 1);
    assert_eq!(
        s.claim_client_token("t1", "Create", "h2").unwrap(),
        TokenClaim::Fresh
    );
    assert_eq!(
        code(s.claim_client_token(&"x".repeat(65), "Create", "h")),
        codes::INVALID_PARAMETER_VALUE
    );
}

#[test]
fn security_groups_are_applied_to_target_networks_and_reach_the_data_plane() {
    use crate::model::{ApplySecurityGroupsRequest, CreateSecurityGroupRequest, SecurityGroupRule};
    let fx = Fx::new();
    let eid = fx.endpoint();
    fx.associate(&eid, "eth1", Some("10.88.0.0/24")).unwrap();
    let rule = |p: &str, ports: Option<&str>, cidr: &str| SecurityGroupRule {
        protocol: p.into(),
        port_range: ports.map(str::to_string),
        destination_cidr: cidr.into(),
    };
    let web = fx
        .store
        .create_security_group(&CreateSecurityGroupRequest {
            group_name: "web".into(),
            description: Some("https out".into()),
            egress: Some(vec![
                rule("TCP", Some("443"), "10.88.0.0/24"),
                rule("icmp", None, "0.0.0.0/0"),
            ]),
        })
        .unwrap();
    // Normalised: protocol lower case.
    assert_eq!(web.egress[0], rule("tcp", Some("443"), "10.88.0.0/24"));
    let open = fx
        .store
        .create_security_group(&CreateSecurityGroupRequest {
            group_name: "open".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        open.egress,
        [rule("all", None, "0.0.0.0/0")],
        "AWS's default group"
    );
    assert_eq!(
        code(fx.store.create_security_group(&CreateSecurityGroupRequest {
            group_name: "web".into(),
            ..Default::default()
        })),
        codes::DUPLICATE_SECURITY_GROUP
    );
    for bad in [
        rule("all", Some("80"), "0.0.0.0/0"),
        rule("tcp", Some("90-80"), "0.0.0.0/0"),
        rule("tcp", None, "10.0.0.0/33"),
        rule("tcp", None, "10.88.0.7/24"),
        rule("gre", None, "0.0.0.0/0"),
    ] {
        assert!(
            fx.store
                .create_security_group(&CreateSecurityGroupRequest {
                    group_name: "bad".into(),
                    egress: Some(vec![bad.clone()]),
                    ..Default::default()
                })
                .is_err(),
            "{bad:?}"
        );
    }
    // Before any group: no limit (None), as AWS's default group.
    assert_eq!(fx.store.target_specs(&eid).unwrap()[0].egress, None);
    let before = fx.store.describe_endpoint(&eid).unwrap().policy_revision;
    let r = fx
        .store
        .apply_security_groups(
            &eid,
            &ApplySecurityGroupsRequest {
                vpc_id: None,
                security_group_ids: vec![web.security_group_id.clone()],
            },
        )
        .unwrap();
    assert_eq!(r.association_ids.len(), 1);
    assert!(fx.store.describe_endpoint(&eid).unwrap().policy_revision > before);
    let egress = fx.store.target_specs(&eid).unwrap()[0]
        .egress
        .clone()
        .unwrap();
    assert_eq!(egress.len(), 2, "{egress:?}");
    assert!(egress
        .iter()
        .any(|e| e.protocol == Some(6) && e.from_port == 443 && e.to_port == 443));
    let nets = fx.store.describe_target_networks(&eid, &[]).unwrap();
    assert_eq!(
        nets[0].security_group_ids,
        std::slice::from_ref(&web.security_group_id)
    );
    // In use: not deleted. Unknown groups, another node, too many: refused.
    assert_eq!(
        code(fx.store.delete_security_group(&web.security_group_id)),
        codes::SECURITY_GROUP_IN_USE
    );
    let apply = |ids: Vec<String>, vpc: Option<&str>| {
        fx.store.apply_security_groups(
            &eid,
            &ApplySecurityGroupsRequest {
                vpc_id: vpc.map(str::to_string),
                security_group_ids: ids,
            },
        )
    };
    assert_eq!(
        code(apply(vec!["sg-0123456789abcdef0".into()], None)),
        codes::SECURITY_GROUP_NOT_FOUND
    );
    assert_eq!(
        code(apply(
            vec![web.security_group_id.clone()],
            Some("another-node")
        )),
        codes::INVALID_PARAMETER_VALUE
    );
    assert_eq!(
        code(apply(vec![web.security_group_id.clone(); 6], None)),
        codes::INVALID_PARAMETER_VALUE
    );
    // Back to the default: no limit, and the group may go.
    apply(vec![], None).unwrap();
    assert_eq!(fx.store.target_specs(&eid).unwrap()[0].egress, None);
    fx.store
        .delete_security_group(&web.security_group_id)
        .unwrap();
    assert_eq!(
        code(
            fx.store
                .describe_security_groups(std::slice::from_ref(&web.security_group_id))
        ),
        codes::SECURITY_GROUP_NOT_FOUND
    );
}
