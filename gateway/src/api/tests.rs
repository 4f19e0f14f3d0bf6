//! Tests of the management API over a real Unix socket (and a TLS listener on loopback)
//! against a store in a temporary directory; no root, no daemon. The fixtures are shared with
//! the CLI's tests ([`crate::cli`]).

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hyper::Method;
use rcgen::{CertifiedIssuer, KeyPair};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::types::*;
use super::*;
use crate::cli::client::{self, ApiReply, ApiRequest, ClientError, Target};
use crate::storage::{NewConnection, Store, StoreOptions, TransportProtocol, ENDPOINT_ID_PREFIX};

// ---- fixtures -----------------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "cvpn-api-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file in the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate and key it issued.
pub(crate) struct Pki {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: String,
    pub server_cert: String,
    pub server_key: String,
}

impl Pki {
    pub fn new() -> Pki {
        Self::with_ca_name("cvpn api test CA")
    }

    /// A PKI whose CA has this common name.
    pub fn with_ca_name(ca_name: &str) -> Pki {
        let crate::test_support::ServerPki {
            issuer,
            ca_pem,
            server_cert,
            server_key,
        } = crate::test_support::ServerPki::new(ca_name);
        Pki {
            issuer,
            ca_pem,
            server_cert,
            server_key,
        }
    }

    /// A CRL of the CA revoking `serials`.
    pub fn crl(&self, serials: &[u64]) -> String {
        crate::test_support::crl_by(&self.issuer, serials)
    }

    /// A create-endpoint body with the required fields.
    pub fn create_body(&self) -> Value {
        json!({
            "client-cidr-block": "10.2.0.0/22",
            "server-certificate": self.server_cert,
            "server-private-key": self.server_key,
            "authentication-options": [{
                "type": "certificate-authentication",
                "client-root-certificate-chain": self.ca_pem,
            }],
        })
    }
}

/// The API served on a Unix socket in a temporary directory by its own thread and runtime,
/// over a store in the same directory; stopped on drop.
pub(crate) struct Daemon {
    pub store: Arc<Store>,
    pub socket: PathBuf,
    pub events: UnboundedReceiver<ControlEvent>,
    pub pki: Pki,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::with_settings(ApiSettings::default())
    }

    pub fn with_settings(settings: ApiSettings) -> Daemon {
        let dir = TempDir::new("daemon");
        let store = Arc::new(Store::open(StoreOptions::in_dir(dir.path().join("data"))).unwrap());
        let (tx, events) = unbounded_channel();
        let state = ApiState::with_settings(Arc::clone(&store), tx, settings);
        let socket = dir.path().join("run").join("api.sock");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let sock = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = bind_unix(&sock).unwrap();
                ready_tx.send(()).unwrap();
                serve_unix_listener(listener, state, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        ready.recv().unwrap();
        Daemon {
            store,
            socket,
            events,
            pki: Pki::new(),
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The events sent so far.
    pub fn drain_events(&mut self) -> Vec<ControlEvent> {
        let mut v = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            v.push(e);
        }
        v
    }

    /// One request over the socket.
    pub fn call(&self, req: ApiRequest) -> Result<ApiReply, ClientError> {
        block_on(client::send(&Target::Unix(self.socket.clone()), req))
    }

    /// One request with a JSON body (or none).
    pub fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut req = ApiRequest::new(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let reply = self.call(req)?;
        Ok(serde_json::from_slice(&reply.body).unwrap())
    }

    /// One request with a raw body and content type.
    pub fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &'static str,
        body: &str,
    ) -> Result<ApiReply, ClientError> {
        let mut req = ApiRequest::new(method, path);
        req.body = Some((content_type, body.as_bytes().to_vec()));
        self.call(req)
    }

    /// Creates an endpoint through the API; returns its id.
    pub fn endpoint(&self) -> String {
        let v = self
            .json(Method::POST, "/v1/endpoints", Some(self.pki.create_body()))
            .unwrap();
        v["client-vpn-endpoint-id"].as_str().unwrap().to_string()
    }

    /// Records a connection of `user` as the daemon would.
    pub fn connect(&self, endpoint_id: &str, user: &str, host: u8) -> String {
        self.store
            .record_connection_start(&NewConnection {
                client_vpn_endpoint_id: endpoint_id.to_string(),
                client_ip: Ipv4Addr::new(10, 2, 0, host),
                common_name: user.to_string(),
                username: Some(user.to_string()),
                device_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)),
                device_port: 50_000,
                transport_protocol: TransportProtocol::Udp,
            })
            .unwrap()
            .connection_id
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The error code and status of a refused request.
#[track_caller]
pub(crate) fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

// ---- the OpenAPI document -----------------------------------------------------------------------

#[test]
fn api_openapi_document_lists_exactly_the_routes() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    let paths = doc["paths"].as_object().expect("paths");
    let served = routes();
    for r in &served {
        let op = &paths
            .get(r.path)
            .unwrap_or_else(|| panic!("{} missing from openapi.json", r.path))
            [r.method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} missing from openapi.json",
            r.method,
            r.path
        );
        assert!(
            op["responses"].is_object(),
            "{} {} has no responses",
            r.method,
            r.path
        );
    }
    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
    for (path, item) in paths {
        for (m, _) in item.as_object().unwrap() {
            if !METHODS.contains(&m.as_str()) {
                continue;
            }
            assert!(
                served
                    .iter()
                    .any(|r| r.path == path && r.method.eq_ignore_ascii_case(m)),
                "openapi.json documents {m} {path}, which is not served"
            );
        }
    }
    // Every $ref resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(s)) => out.push(s),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').expect("local ref");
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
}

#[test]
fn api_serves_its_openapi_document() {
    let d = Daemon::start();
    let reply = d
        .call(ApiRequest::new(Method::GET, "/v1/openapi.json"))
        .unwrap();
    assert_eq!(reply.body.as_ref(), OPENAPI_JSON.as_bytes());
}

// ---- errors -------------------------------------------------------------------------------------

#[test]
fn api_refuses_bad_requests_in_its_error_format() {
    let d = Daemon::start();
    let eid = d.endpoint();
    let tn = format!("/v1/endpoints/{eid}/target-networks");

    /// (case, result, expected status, code, a part of the message).
    type Case<'a> = (
        &'a str,
        Result<ApiReply, ClientError>,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "syntax",
            d.raw(Method::POST, "/v1/endpoints", "application/json", "{"),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "request body: not valid JSON",
        ),
        (
            "not an object",
            d.raw(Method::POST, "/v1/endpoints", "application/json", "[1]"),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "expected a JSON object, got an array",
        ),
        (
            "missing field (serde)",
            d.raw(Method::POST, &tn, "application/json", "{}"),
            400,
            codes::MISSING_PARAMETER,
            "target-network-id: is required",
        ),
        (
            "missing field (store)",
            d.raw(Method::POST, "/v1/endpoints", "application/json", ""),
            400,
            codes::MISSING_PARAMETER,
            "client-cidr-block",
        ),
        (
            "unknown field",
            d.raw(Method::POST, &tn, "application/json", r#"{"target-network-id":"lo","colour":1}"#),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "colour: unknown field, expected one of `client-vpn-endpoint-id`",
        ),
        (
            "wrong type",
            d.raw(Method::PATCH, &format!("/v1/endpoints/{eid}"), "application/json", r#"{"vpn-port":"x"}"#),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "vpn-port: invalid type",
        ),
        (
            "nested wrong type",
            d.raw(
                Method::PATCH,
                &format!("/v1/endpoints/{eid}"),
                "application/json",
                r#"{"client-login-banner-options":{"enabled":"yes"}}"#,
            ),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "client-login-banner-options.enabled: invalid type",
        ),
        (
            "endpoint id in body contradicts the path",
            d.raw(
                Method::POST,
                &tn,
                "application/json",
                r#"{"target-network-id":"lo","client-vpn-endpoint-id":"cvpn-endpoint-00000000000000000"}"#,
            ),
            400,
            codes::INVALID_PARAMETER_COMBINATION,
            "client-vpn-endpoint-id",
        ),
        (
            "not JSON",
            d.raw(Method::POST, "/v1/endpoints", "text/plain", "client-cidr-block=x"),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "content-type",
        ),
        (
            "store validation",
            d.raw(
                Method::PATCH,
                &format!("/v1/endpoints/{eid}"),
                "application/json",
                r#"{"vpn-port":8443}"#,
            ),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "vpn-port",
        ),
        (
            "unknown endpoint",
            d.call(ApiRequest::new(Method::GET, "/v1/endpoints/cvpn-endpoint-00000000000000000")),
            404,
            codes::ENDPOINT_NOT_FOUND,
            "cvpn-endpoint-00000000000000000",
        ),
        (
            "malformed endpoint id",
            d.call(ApiRequest::new(Method::GET, "/v1/endpoints/nope")),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "client-vpn-endpoint-id",
        ),
        (
            "unknown query parameter",
            d.call(ApiRequest::new(Method::GET, "/v1/endpoints?colour=red")),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "colour: unknown query parameter",
        ),
        (
            "bad status filter",
            d.call(ApiRequest::new(Method::GET, format!("/v1/endpoints/{eid}/connections?status=up"))),
            400,
            codes::INVALID_PARAMETER_VALUE,
            "status: \"up\" is not a connection status",
        ),
        (
            "unknown path",
            d.call(ApiRequest::new(Method::GET, "/v2/nothing")),
            404,
            INVALID_ACTION,
            "/v2/nothing",
        ),
        (
            "wrong method",
            d.call(ApiRequest::new(Method::PUT, "/v1/endpoints")),
            405,
            INVALID_ACTION,
            "PUT /v1/endpoints",
        ),
        (
            "terminate without a target",
            d.raw(Method::POST, &format!("/v1/endpoints/{eid}/connections/terminate"), "application/json", "{}"),
            400,
            codes::MISSING_PARAMETER,
            "connection-id",
        ),
        (
            "terminate with both targets",
            d.raw(
                Method::POST,
                &format!("/v1/endpoints/{eid}/connections/terminate"),
                "application/json",
                r#"{"connection-id":"cvpn-connection-00000000000000000","username":"u"}"#,
            ),
            400,
            codes::INVALID_PARAMETER_COMBINATION,
            "not both",
        ),
        (
            "duplicate association",
            {
                d.raw(Method::POST, &tn, "application/json", r#"{"target-network-id":"lo"}"#).unwrap();
                d.raw(Method::POST, &tn, "application/json", r#"{"target-network-id":"lo"}"#)
            },
            409,
            codes::DUPLICATE_ASSOCIATION,
            "",
        ),
    ];
    for (name, result, status, code, needle) in cases {
        let (s, c, m) = refused(result);
        assert_eq!((s, c.as_str()), (status, code), "{name}: {m}");
        assert!(m.contains(needle), "{name}: {m:?} lacks {needle:?}");
    }
}

#[test]
fn api_error_bodies_have_code_and_message() {
    let d = Daemon::start();
    // Read the raw body: the client parses it, so check the exact shape here.
    let r = block_on(async {
        let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method("POST")
            .uri("/v1/endpoints")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
                b"{\"vpn-port\": true}",
            )))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, ct, body)
    });
    assert_eq!(r.0, 400);
    assert_eq!(r.1, "application/json");
    let v: Value = serde_json::from_slice(&r.2).unwrap();
    assert_eq!(v["error"]["code"], "InvalidParameterValue");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("vpn-port: invalid type"),
        "{v}"
    );
    assert_eq!(v.as_object().unwrap().len(), 1);
    assert_eq!(v["error"].as_object().unwrap().len(), 2);
}

// ---- resources and events -----------------------------------------------------------------------

#[test]
fn api_changes_send_control_events_after_commit() {
    let mut d = Daemon::start();
    let eid = d.endpoint();
    assert!(eid.starts_with(ENDPOINT_ID_PREFIX));
    let ep = |id: &str| ControlEvent::EndpointChanged {
        endpoint_id: id.to_string(),
        change: EndpointChange::Created,
    };
    assert_eq!(d.drain_events(), vec![ep(&eid)]);
    let base = format!("/v1/endpoints/{eid}");
    let policy = ControlEvent::PolicyChanged {
        endpoint_id: eid.clone(),
    };

    // The first association makes the endpoint available.
    let r = d
        .json(
            Method::POST,
            &format!("{base}/target-networks"),
            Some(json!({"target-network-id": "lo", "subnet-cidr": "10.88.0.0/24"})),
        )
        .unwrap();
    assert_eq!(r["endpoint-status"], "available");
    assert_eq!(r["route"]["destination-cidr"], "10.88.0.0/24");
    let assoc = r["association"]["association-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.drain_events(),
        vec![
            policy.clone(),
            ControlEvent::EndpointChanged {
                endpoint_id: eid.clone(),
                change: EndpointChange::Status {
                    status: EndpointStatus::Available
                },
            }
        ]
    );
    assert_eq!(
        d.store.describe_endpoint(&eid).unwrap().status,
        EndpointStatus::Available
    );

    // Routes: create, delete by body and by query.
    for dest in ["10.99.0.0/16", "10.98.0.0/16"] {
        d.json(
            Method::POST,
            &format!("{base}/routes"),
            Some(json!({"destination-cidr-block": dest, "target-network-id": "lo"})),
        )
        .unwrap();
    }
    let routes = d
        .json(Method::GET, &format!("{base}/routes"), None)
        .unwrap();
    assert_eq!(routes["routes"].as_array().unwrap().len(), 3);
    d.json(
        Method::DELETE,
        &format!("{base}/routes"),
        Some(json!({"destination-cidr-block": "10.99.0.0/16"})),
    )
    .unwrap();
    d.json(
        Method::DELETE,
        &format!("{base}/routes?destination-cidr-block=10.98.0.0%2F16&target-network-id=lo"),
        None,
    )
    .unwrap();
    let (s, c, _) = refused(d.json(
        Method::DELETE,
        &format!("{base}/routes?destination-cidr-block=10.88.0.0%2F24"),
        None,
    ));
    assert_eq!((s, c.as_str()), (400, codes::OPERATION_NOT_PERMITTED));
    assert_eq!(d.drain_events(), vec![policy.clone(); 4]);

    // Rules: authorize, revoke by query (with the all-groups boolean).
    d.json(
        Method::POST,
        &format!("{base}/authorization-rules"),
        Some(json!({"target-network-cidr": "10.88.0.0/24", "authorize-all-groups": true})),
    )
    .unwrap();
    d.json(
        Method::POST,
        &format!("{base}/authorization-rules"),
        Some(json!({"target-network-cidr": "10.88.0.0/24", "access-group-id": "eng"})),
    )
    .unwrap();
    let rules = d
        .json(Method::GET, &format!("{base}/authorization-rules"), None)
        .unwrap();
    assert_eq!(rules["authorization-rules"].as_array().unwrap().len(), 2);
    d.json(
        Method::DELETE,
        &format!(
            "{base}/authorization-rules?target-network-cidr=10.88.0.0%2F24&revoke-all-groups=true"
        ),
        None,
    )
    .unwrap();
    let rules = d
        .json(Method::GET, &format!("{base}/authorization-rules"), None)
        .unwrap();
    assert_eq!(rules["authorization-rules"][0]["group-id"], "eng");
    assert_eq!(d.drain_events(), vec![policy.clone(); 3]);

    // Modify: an event only when something changed.
    let r = d
        .json(
            Method::PATCH,
            &base,
            Some(json!({"vpn-port": 1194, "description": "x"})),
        )
        .unwrap();
    assert_eq!(r["endpoint"]["vpn-port"], 1194);
    assert_eq!(
        d.drain_events(),
        vec![ControlEvent::EndpointChanged {
            endpoint_id: eid.clone(),
            change: EndpointChange::Modified {
                fields: vec![
                    crate::model::EndpointField::VpnPort,
                    crate::model::EndpointField::Description
                ]
            },
        }]
    );
    d.json(Method::PATCH, &base, Some(json!({"vpn-port": 1194})))
        .unwrap();
    assert_eq!(d.drain_events(), vec![]);

    // A refused call sends nothing.
    let _ = refused(d.json(Method::PATCH, &base, Some(json!({"vpn-port": 1}))));
    assert_eq!(d.drain_events(), vec![]);

    // The last disassociation terminates connections and makes the endpoint pending again.
    let c1 = d.connect(&eid, "alice", 2);
    let r = d
        .json(
            Method::DELETE,
            &format!("{base}/target-networks/{assoc}"),
            None,
        )
        .unwrap();
    assert_eq!(r["endpoint-status"], "pending-associate");
    assert_eq!(
        d.drain_events(),
        vec![
            ControlEvent::Terminate {
                endpoint_id: eid.clone(),
                connection_ids: vec![c1.clone()]
            },
            policy.clone(),
            ControlEvent::EndpointChanged {
                endpoint_id: eid.clone(),
                change: EndpointChange::Status {
                    status: EndpointStatus::PendingAssociate
                },
            }
        ]
    );

    // Delete.
    let r = d.json(Method::DELETE, &base, None).unwrap();
    assert_eq!(r["endpoint"]["status"], "deleting");
    assert_eq!(
        d.drain_events(),
        vec![ControlEvent::EndpointChanged {
            endpoint_id: eid.clone(),
            change: EndpointChange::Deleting
        }]
    );
    // Describe with ids, repeated and comma-separated.
    let e2 = d.endpoint();
    let all = d.json(Method::GET, "/v1/endpoints", None).unwrap();
    assert_eq!(all["client-vpn-endpoints"].as_array().unwrap().len(), 2);
    let one = d
        .json(
            Method::GET,
            &format!("/v1/endpoints?client-vpn-endpoint-ids={e2}"),
            None,
        )
        .unwrap();
    assert_eq!(
        one["client-vpn-endpoints"][0]["client-vpn-endpoint-id"],
        e2.as_str()
    );
    let two = d
        .json(
            Method::GET,
            &format!("/v1/endpoints?client-vpn-endpoint-ids={e2},{eid}"),
            None,
        )
        .unwrap();
    assert_eq!(two["client-vpn-endpoints"].as_array().unwrap().len(), 2);
}

#[test]
fn api_terminates_by_connection_id_and_by_username() {
    let mut d = Daemon::start();
    let eid = d.endpoint();
    let base = format!("/v1/endpoints/{eid}");
    d.json(
        Method::POST,
        &format!("{base}/target-networks"),
        Some(json!({"target-network-id": "lo"})),
    )
    .unwrap();
    let a1 = d.connect(&eid, "alice", 2);
    let a2 = d.connect(&eid, "alice", 3);
    let b1 = d.connect(&eid, "bob", 4);
    d.drain_events();

    let r = d
        .json(
            Method::POST,
            &format!("{base}/connections/terminate"),
            Some(json!({"connection-id": b1})),
        )
        .unwrap();
    assert_eq!(r["connection-statuses"][0]["previous-status"], "active");
    assert_eq!(r["connection-statuses"][0]["current-status"], "terminating");
    let r = d
        .json(
            Method::POST,
            &format!("{base}/connections/terminate"),
            Some(json!({"username": "alice"})),
        )
        .unwrap();
    assert_eq!(r["username"], "alice");
    assert_eq!(
        d.drain_events(),
        vec![
            ControlEvent::Terminate {
                endpoint_id: eid.clone(),
                connection_ids: vec![b1.clone()]
            },
            ControlEvent::Terminate {
                endpoint_id: eid.clone(),
                connection_ids: vec![a1.clone(), a2.clone()]
            },
        ]
    );
    let l = d
        .json(
            Method::GET,
            &format!("{base}/connections?username=alice&status=terminating"),
            None,
        )
        .unwrap();
    assert_eq!(l["connections"].as_array().unwrap().len(), 2);
    let (s, c, _) = refused(d.json(
        Method::POST,
        &format!("{base}/connections/terminate"),
        Some(json!({"username": "carol"})),
    ));
    assert_eq!((s, c.as_str()), (404, codes::CONNECTION_USER_NOT_FOUND));
}

// ---- client configuration and CRL ---------------------------------------------------------------

#[test]
fn api_exports_an_openvpn_client_profile() {
    let d = Daemon::with_settings(ApiSettings {
        remote_host: Some("vpn.example.com".into()),
        ..ApiSettings::default()
    });
    let eid = d.endpoint();
    let path = format!("/v1/endpoints/{eid}/client-config");
    let text = d
        .call(ApiRequest::new(Method::GET, path.clone()))
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "client\n",
        "dev tun\n",
        "proto udp\n",
        "remote vpn.example.com 443\n",
        "remote-cert-tls server\n",
        "nobind\n",
        "resolv-retry infinite\n",
        "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\n",
        "verb 3\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    // <ca> holds the CA that issued the server certificate (from the client CA bundle here).
    let ca = text
        .split("<ca>\n")
        .nth(1)
        .unwrap()
        .split("</ca>")
        .next()
        .unwrap();
    assert_eq!(ca.trim(), d.pki.ca_pem.trim());

    // The query overrides the settings; JSON on request.
    let mut req = ApiRequest::new(Method::GET, format!("{path}?remote-host=203.0.113.7"));
    req.accept = Some("application/json");
    let v: ClientConfigExport = d.call(req).unwrap().decode().unwrap();
    assert!(v.client_configuration.contains("remote 203.0.113.7 443\n"));
    // Nothing can be smuggled into the profile.
    let (s, c, m) = refused(d.call(ApiRequest::new(
        Method::GET,
        format!("{path}?remote-host=a%0Aup%20x"),
    )));
    assert_eq!(
        (s, c.as_str()),
        (400, codes::INVALID_PARAMETER_VALUE),
        "{m}"
    );
    assert!(m.starts_with("remote-host: "), "{m}");

    // Without settings, the host is required.
    let d2 = Daemon::start();
    let e2 = d2.endpoint();
    let (_, c, m) = refused(d2.call(ApiRequest::new(
        Method::GET,
        format!("/v1/endpoints/{e2}/client-config"),
    )));
    assert_eq!(c, codes::MISSING_PARAMETER);
    assert!(m.starts_with("remote-host: "), "{m}");
}

#[test]
fn api_profile_ca_comes_from_the_server_chain_or_a_self_signed_certificate() {
    let pki = Pki::new();
    let ep = |server_certificate: String, ca: &str| crate::storage::Endpoint {
        client_vpn_endpoint_id: "cvpn-endpoint-0123456789abcdef0".into(),
        description: None,
        status: EndpointStatus::Available,
        creation_time: crate::storage::Timestamp(0),
        deletion_time: None,
        client_cidr_block: "10.2.0.0/22".parse().unwrap(),
        dns_servers: vec![],
        split_tunnel: false,
        transport_protocol: TransportProtocol::Tcp,
        vpn_port: 1194,
        server_certificate,
        authentication_options: vec![
            crate::storage::AuthenticationOption::CertificateAuthentication {
                client_root_certificate_chain: ca.to_string(),
            },
        ],
        connection_log_options: Default::default(),
        client_connect_options: Default::default(),
        session_timeout_hours: 24,
        disconnect_on_session_timeout: false,
        client_login_banner_options: Default::default(),
        self_service_portal: false,
        self_service_portal_url: None,
        tags: vec![],
        policy_revision: 0,
        crl_entries: 0,
        client_ca_key_set: false,
        self_service_portal_downloads: 0,
        listener: None,
    };
    let ciphers = vec!["AES-256-GCM".to_string()];
    // Chain included: the chain's CA, whatever the client CA.
    let other = Pki::with_ca_name("another CA");
    let chain = format!("{}{}", pki.server_cert, pki.ca_pem);
    let text = render_client_profile(&ep(chain, &other.ca_pem), "h", &ciphers).unwrap();
    assert!(text.contains(pki.ca_pem.trim()));
    assert!(!text.contains(other.ca_pem.trim()));
    assert!(text.contains("proto tcp\nremote h 1194\n"));
    assert!(text.contains("data-ciphers AES-256-GCM\ncipher AES-256-GCM\n"));
    // Self-signed server certificate: itself.
    let selfsigned = rcgen::generate_simple_self_signed(vec!["vpn".to_string()]).unwrap();
    let text =
        render_client_profile(&ep(selfsigned.cert.pem(), &pki.ca_pem), "h", &ciphers).unwrap();
    assert!(text.contains(selfsigned.cert.pem().trim()));
    // Issuer nowhere: refused with an explanation.
    let e = render_client_profile(&ep(pki.server_cert.clone(), &other.ca_pem), "h", &ciphers)
        .unwrap_err();
    assert_eq!(e.code, codes::INCORRECT_STATE);
}

#[test]
fn api_crl_import_export_round_trip() {
    let mut d = Daemon::start();
    let eid = d.endpoint();
    let path = format!("/v1/endpoints/{eid}/crl");
    let none: CrlExport = d
        .call(ApiRequest::new(Method::GET, path.clone()))
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(none.certificate_revocation_list, None);
    d.drain_events();

    // As PEM text...
    let pem = d.pki.crl(&[0x10, 0x2a]);
    let s: crate::storage::CrlSummary = d
        .raw(Method::PUT, &path, "application/x-pem-file", &pem)
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(s.entries, 2);
    let got: CrlExport = d
        .call(ApiRequest::new(Method::GET, path.clone()))
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        got.certificate_revocation_list.as_deref(),
        Some(pem.as_str())
    );
    assert_eq!(
        d.drain_events(),
        vec![ControlEvent::CrlChanged {
            endpoint_id: eid.clone(),
            revoked_serials: s.revoked_serials.clone()
        }]
    );
    // ... or JSON.
    let pem2 = d.pki.crl(&[0x11]);
    d.json(
        Method::PUT,
        &path,
        Some(json!({"certificate-revocation-list": pem2})),
    )
    .unwrap();
    let got: CrlExport = d
        .call(ApiRequest::new(Method::GET, path.clone()))
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        got.certificate_revocation_list.as_deref(),
        Some(pem2.as_str())
    );
    // Not a CRL.
    let (_, c, m) = refused(d.raw(Method::PUT, &path, "text/plain", &d.pki.ca_pem));
    assert_eq!(c, codes::INVALID_PARAMETER_VALUE, "{m}");
}

// ---- the self-service portal's certificates -----------------------------------------------------

#[test]
fn api_client_ca_key_is_write_only_and_revoke_user_revokes_and_terminates() {
    let mut d = Daemon::start();
    let eid = d.endpoint();
    let base = format!("/v1/endpoints/{eid}");
    d.json(
        Method::POST,
        &format!("{base}/target-networks"),
        Some(json!({"target-network-id": "lo"})),
    )
    .unwrap();
    let ca_key = d.pki.issuer.key().serialize_pem();
    let ep = d.json(Method::GET, &base, None).unwrap();
    assert_eq!(ep["client-ca-key-set"], false);
    assert_eq!(ep["self-service-portal-downloads"], 0);
    // A key of another certificate is refused.
    let other = KeyPair::generate().unwrap().serialize_pem();
    let (s, c, m) = refused(d.json(Method::PATCH, &base, Some(json!({"client-ca-key": other}))));
    assert_eq!(
        (s, c.as_str()),
        (400, codes::INVALID_PARAMETER_COMBINATION),
        "{m}"
    );
    let r = d
        .json(Method::PATCH, &base, Some(json!({"client-ca-key": ca_key})))
        .unwrap();
    assert_eq!(r["changed"], json!(["client-ca-key"]));
    assert_eq!(r["endpoint"]["client-ca-key-set"], true);
    let text = String::from_utf8(
        d.call(ApiRequest::new(Method::GET, base.clone()))
            .unwrap()
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    // The portal issues alice two certificates; she has two connections, bob one.
    let state = ApiState::new(Arc::clone(&d.store), unbounded_channel().0);
    let hour = std::time::Duration::from_secs(3600);
    let a1 = block_on(crate::api::issue_portal_certificate(
        &state, &eid, "alice", hour,
    ))
    .unwrap();
    let a2 = block_on(crate::api::issue_portal_certificate(
        &state, &eid, "alice", hour,
    ))
    .unwrap();
    let b = block_on(crate::api::issue_portal_certificate(
        &state, &eid, "bob", hour,
    ))
    .unwrap();
    assert_eq!(
        block_on(crate::api::record_portal_download(&state, &eid)).unwrap(),
        1
    );
    let c1 = d.connect(&eid, "alice", 2);
    let c2 = d.connect(&eid, "alice", 3);
    let _bob = d.connect(&eid, "bob", 4);
    d.drain_events();

    let l: IssuedCertificateList = d
        .call(ApiRequest::new(
            Method::GET,
            format!("{base}/issued-certificates?username=alice"),
        ))
        .unwrap()
        .decode()
        .unwrap();
    // Oldest first (same second: by serial).
    let mut want = vec![a1.serial_hex.clone(), a2.serial_hex.clone()];
    want.sort();
    assert_eq!(
        l.issued_certificates
            .iter()
            .map(|c| c.serial.clone())
            .collect::<Vec<_>>(),
        want
    );
    assert_eq!(l.issued_certificates.len(), 2);
    assert!(l.issued_certificates.iter().all(|c| c.status == "valid"));

    let r: RevokeUserResult = d
        .call(
            ApiRequest::new(Method::POST, format!("{base}/revoke-user"))
                .json(&json!({"username": "alice"})),
        )
        .unwrap()
        .decode()
        .unwrap();
    let mut revoked = r.revoked_serials.clone();
    revoked.sort();
    let mut want = vec![a1.serial_hex.clone(), a2.serial_hex.clone()];
    want.sort();
    assert_eq!(revoked, want);
    assert_eq!(
        r.connection_statuses
            .iter()
            .map(|c| c.connection_id.clone())
            .collect::<Vec<_>>(),
        vec![c1.clone(), c2.clone()]
    );
    assert!(
        r.message.contains("revoked 2 certificate(s)"),
        "{}",
        r.message
    );
    // The daemon is told to load the new CRL (ending those certificates' sessions) and to
    // terminate alice's connections.
    assert_eq!(
        d.drain_events(),
        vec![
            ControlEvent::CrlChanged {
                endpoint_id: eid.clone(),
                revoked_serials: r.revoked_serials.clone(),
            },
            ControlEvent::Terminate {
                endpoint_id: eid.clone(),
                connection_ids: vec![c1.clone(), c2.clone()],
            },
        ]
    );
    let crl: CrlExport = d
        .call(ApiRequest::new(Method::GET, format!("{base}/crl")))
        .unwrap()
        .decode()
        .unwrap();
    let listed = crate::model::validate::crl(
        "crl",
        &crl.certificate_revocation_list.unwrap(),
        &d.pki.ca_pem,
        100,
    )
    .unwrap()
    .revoked_serials;
    assert!(!listed.contains(&b.serial_hex));
    assert_eq!(listed.len(), 2);

    // Once the daemon has ended them, again: nothing left to do, said so, no event.
    for c in [&c1, &c2] {
        d.store.end_connection(c, Default::default()).unwrap();
    }
    let r = d
        .json(
            Method::POST,
            &format!("{base}/revoke-user"),
            Some(json!({"username": "alice"})),
        )
        .unwrap();
    assert_eq!(r["revoked-serials"], json!([]));
    assert!(
        r["message"].as_str().unwrap().contains("nothing to do"),
        "{r}"
    );
    assert_eq!(d.drain_events(), vec![]);
    // Bad requests.
    let (_, c, _) = refused(d.json(
        Method::POST,
        &format!("{base}/revoke-user"),
        Some(json!({})),
    ));
    assert_eq!(c, codes::MISSING_PARAMETER);
    let (_, c, _) = refused(d.json(
        Method::POST,
        &format!("{base}/revoke-user"),
        Some(json!({"username": "alice", "serial": "01"})),
    ));
    assert_eq!(c, codes::INVALID_PARAMETER_VALUE);
    let (_, c, _) = refused(d.json(
        Method::GET,
        &format!("{base}/issued-certificates?user=alice"),
        None,
    ));
    assert_eq!(c, codes::INVALID_PARAMETER_VALUE);
    let ep = d.json(Method::GET, &base, None).unwrap();
    assert_eq!(ep["self-service-portal-downloads"], 1);
}

#[test]
fn api_terminate_connection_for_the_portal_sends_the_event() {
    let d = Daemon::start();
    let eid = d.endpoint();
    d.json(
        Method::POST,
        &format!("/v1/endpoints/{eid}/target-networks"),
        Some(json!({"target-network-id": "lo"})),
    )
    .unwrap();
    let c = d.connect(&eid, "alice", 2);
    let (tx, mut rx) = unbounded_channel();
    let state = ApiState::new(Arc::clone(&d.store), tx);
    let s = block_on(crate::api::terminate_connection(&state, &eid, &c)).unwrap();
    assert_eq!(s[0].connection_id, c);
    assert_eq!(
        rx.try_recv().unwrap(),
        ControlEvent::Terminate {
            endpoint_id: eid.clone(),
            connection_ids: vec![c.clone()],
        }
    );
    // Not a connection of this endpoint.
    let e = block_on(crate::api::terminate_connection(
        &state,
        &eid,
        "cvpn-connection-00000000000000000",
    ))
    .unwrap_err();
    assert_eq!(e.code, codes::CONNECTION_NOT_FOUND, "{e:?}");
}

// ---- serving ------------------------------------------------------------------------------------

#[test]
fn api_socket_is_removed_on_shutdown() {
    let d = Daemon::start();
    let socket = d.socket.clone();
    assert!(socket.exists());
    drop(d);
    assert!(!socket.exists());
}

#[test]
fn api_socket_is_private_and_a_stale_one_is_replaced() {
    let dir = TempDir::new("sock");
    let path = dir.path().join("sub").join("api.sock");
    block_on(async {
        let l = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        // In use: refused.
        assert!(matches!(bind_unix(&path), Err(ServeError::SocketInUse(_))));
        drop(l);
        // Stale (file left, nobody listening): replaced.
        assert!(path.exists());
        let _l = bind_unix(&path).unwrap();
    });
    let file = dir.write("not-a-socket", "x");
    block_on(async {
        assert!(matches!(bind_unix(&file), Err(ServeError::NotASocket(_))));
    });
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

/// A TLS listener on loopback with a certificate for 127.0.0.1 and localhost.
pub(crate) struct TlsDaemon {
    pub addr: std::net::SocketAddr,
    pub ca_file: PathBuf,
    pub token: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: TempDir,
    pub inner: Daemon,
}

impl TlsDaemon {
    pub fn start() -> TlsDaemon {
        let inner = Daemon::start();
        let dir = TempDir::new("tls");
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let ca_file = dir.write("api-ca.pem", &ck.cert.pem());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let config = crate::api::serve::tls_config(vec![ck.cert.der().clone()], key).unwrap();
        let token = "s3cret-token".to_string();
        let (tx, _rx) = unbounded_channel();
        // Same store as the Unix daemon; its own (unwatched) event channel.
        let state = ApiState::new(Arc::clone(&inner.store), tx);
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let tok = token.clone();
        std::thread::spawn(move || {
            block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                serve_tls_listener(listener, config, tok, state, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            })
        });
        TlsDaemon {
            addr,
            ca_file,
            token,
            _stop: stop,
            _dir: dir,
            inner,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

#[test]
fn api_tls_listener_checks_the_bearer_token() {
    let t = TlsDaemon::start();
    let target = |token: Option<&str>| {
        Target::https(&t.url(), Some(&t.ca_file), token.map(str::to_string)).unwrap()
    };
    let get = |target: &Target| {
        block_on(client::send(
            target,
            ApiRequest::new(Method::GET, "/v1/endpoints"),
        ))
    };
    for token in [
        None,
        Some("wrong"),
        Some("s3cret-token-but-longer"),
        Some(""),
    ] {
        let (s, c, m) = refused(get(&target(token)));
        assert_eq!((s, c.as_str()), (401, AUTH_FAILURE), "{token:?}: {m}");
    }
    let ok = get(&target(Some(&t.token))).unwrap();
    let v: EndpointList = ok.decode().unwrap();
    assert!(v.client_vpn_endpoints.is_empty());
    // Unknown paths too need the token (no probing without it).
    let (s, ..) = refused(block_on(client::send(
        &target(None),
        ApiRequest::new(Method::GET, "/nope"),
    )));
    assert_eq!(s, 401);
    // By host name as well (the certificate names localhost).
    let by_name = Target::https(
        &format!("https://localhost:{}", t.addr.port()),
        Some(&t.ca_file),
        Some(t.token.clone()),
    )
    .unwrap();
    get(&by_name).unwrap();
    // A client that does not trust the certificate cannot connect.
    let other = TempDir::new("other-ca");
    let other_ca = other.write("ca.pem", &Pki::new().ca_pem);
    let untrusting = Target::https(&t.url(), Some(&other_ca), Some(t.token.clone())).unwrap();
    assert!(matches!(get(&untrusting), Err(ClientError::Connect { .. })));
}

#[test]
fn api_tls_listener_refuses_an_empty_token() {
    let t = TlsDaemon::start();
    let (tx, _rx) = unbounded_channel();
    let state = ApiState::new(Arc::clone(&t.inner.store), tx);
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = crate::api::serve::tls_config(vec![ck.cert.der().clone()], key).unwrap();
    let r = block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        serve_tls_listener(l, config, String::new(), state, async {}).await
    });
    assert!(matches!(r, Err(ServeError::EmptyToken)));
}

#[test]
fn api_directories_hide_secrets_enrol_once_and_drive_profiles() {
    let mut d = Daemon::start();
    let created = d
        .json(
            Method::POST,
            "/v1/directories",
            Some(json!({
                "name": "corp",
                "urls": ["ldaps://dc1.example.test"],
                "base-dn": "dc=example,dc=test",
                "bind-dn": "cn=reader,dc=example,dc=test",
                "bind-password": "bind-s3cret",
                "mfa": "totp",
            })),
        )
        .unwrap();
    let id = created["directory-id"].as_str().unwrap().to_string();
    assert_eq!(created["bind-password-set"], true);
    for path in [
        "/v1/directories".to_string(),
        format!("/v1/directories/{id}"),
    ] {
        let text = d
            .call(ApiRequest::new(Method::GET, path))
            .unwrap()
            .text()
            .unwrap();
        assert!(!text.contains("bind-s3cret"), "{text}");
    }
    // Unknown fields and ids are refused with the field or id named.
    let e = d
        .json(
            Method::POST,
            "/v1/directories",
            Some(json!({"name": "x", "urls": ["ldaps://a"], "base-dn": "dc=a", "passwd": "x"})),
        )
        .unwrap_err();
    assert!(e.to_string().contains("passwd"), "{e}");
    let e = d
        .call(ApiRequest::new(
            Method::GET,
            "/v1/directories/cvpn-directory-00000000000000000",
        ))
        .unwrap_err();
    assert!(e.to_string().contains("InvalidDirectoryId.NotFound"), "{e}");

    // Enrolment: the secret once, then only the name; a change event for the daemon.
    d.drain_events();
    let e = d
        .json(
            Method::POST,
            &format!("/v1/directories/{id}/mfa-enrollments"),
            Some(json!({"username": "alice"})),
        )
        .unwrap();
    let secret = e["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 32, "20 bytes in base32");
    assert!(e["otpauth-uri"].as_str().unwrap().contains(secret));
    let list = d
        .call(ApiRequest::new(
            Method::GET,
            format!("/v1/directories/{id}/mfa-enrollments"),
        ))
        .unwrap()
        .text()
        .unwrap();
    assert!(list.contains("alice") && !list.contains(secret), "{list}");
    assert_eq!(
        d.drain_events(),
        vec![ControlEvent::DirectoryChanged {
            directory_id: id.clone()
        }]
    );

    // A directory-only endpoint's profile asks for a user name, password and code.
    let mut body = d.pki.create_body();
    body["authentication-options"] =
        json!([{"type": "directory-service-authentication", "directory-id": id}]);
    // Without a client CA the server chain must carry its CA.
    body["server-certificate"] = json!(format!("{}{}", d.pki.server_cert, d.pki.ca_pem));
    let ep = d.json(Method::POST, "/v1/endpoints", Some(body)).unwrap();
    let eid = ep["client-vpn-endpoint-id"].as_str().unwrap();
    let text = d
        .call(ApiRequest::new(
            Method::GET,
            format!("/v1/endpoints/{eid}/client-config?remote-host=vpn.example.com"),
        ))
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains("\nauth-user-pass\n"), "{text}");
    assert!(
        text.contains("\nstatic-challenge \"Enter MFA code\" 1\n"),
        "{text}"
    );
    // In use: not deleted.
    let e = d
        .call(ApiRequest::new(
            Method::DELETE,
            format!("/v1/directories/{id}"),
        ))
        .unwrap_err();
    assert!(e.to_string().contains(eid), "{e}");
}

#[test]
fn api_identity_providers_hide_the_secret_and_drive_federated_endpoints() {
    let mut d = Daemon::with_settings(ApiSettings {
        public_url: Some("https://vpn.example.com/".into()),
        ..ApiSettings::default()
    });
    let created = d
        .json(
            Method::POST,
            "/v1/identity-providers",
            Some(json!({
                "name": "corp-sso",
                "issuer": "https://login.example.test",
                "client-id": "cvpn",
                "client-secret": "client-s3cret",
            })),
        )
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("idp-"), "{created}");
    assert_eq!(created["protocol"], "oidc");
    assert_eq!(created["client-secret-set"], true);
    assert_eq!(
        created["oidc"]["scopes"],
        json!(["openid", "email", "profile"])
    );
    let (xml, cert) = crate::test_support::saml_metadata("urn:idp", "https://idp.test/sso");
    let saml = d
        .json(
            Method::POST,
            "/v1/identity-providers",
            Some(json!({"name": "saml", "metadata-xml": xml})),
        )
        .unwrap();
    assert_eq!(saml["saml"]["signing-certificates"], json!([cert]));
    assert_eq!(saml["saml"]["sso-binding"], "http-redirect");
    // What to register at each provider, under the daemon's public address.
    assert_eq!(
        created["redirect-uri"],
        "https://vpn.example.com/oidc/callback"
    );
    assert_eq!(
        saml["sp-metadata-url"],
        "https://vpn.example.com/saml/metadata"
    );
    assert!(created.get("sp-metadata-url").is_none() && saml.get("redirect-uri").is_none());
    // Unknown fields and ids are refused with the field or id named; 404 for unknown ones.
    let e = d
        .json(
            Method::POST,
            "/v1/identity-providers",
            Some(json!({"name": "x", "issuer": "https://a", "secret": "x"})),
        )
        .unwrap_err();
    assert!(e.to_string().contains("secret"), "{e}");
    for unknown in ["idp-00000000000000000", "nobody"] {
        let (status, code, _) = refused(d.call(ApiRequest::new(
            Method::GET,
            format!("/v1/identity-providers/{unknown}"),
        )));
        assert_eq!(
            (status, code.as_str()),
            (404, codes::IDENTITY_PROVIDER_NOT_FOUND)
        );
    }
    let (status, code, _) = refused(d.json(
        Method::POST,
        "/v1/identity-providers",
        Some(json!({"name": "corp-sso", "metadata-xml": saml["saml"]["metadata-xml"]})),
    ));
    assert_eq!(
        (status, code.as_str()),
        (409, codes::DUPLICATE_IDENTITY_PROVIDER)
    );

    // Modify by name: the daemon is told, by id.
    d.drain_events();
    let m = d
        .json(
            Method::PATCH,
            "/v1/identity-providers/corp-sso",
            Some(json!({"groups-claim": "roles", "client-secret": "new-s3cret"})),
        )
        .unwrap();
    assert_eq!(m["oidc"]["groups-claim"], "roles");
    assert_eq!(
        d.drain_events(),
        vec![ControlEvent::IdentityProviderChanged { id: id.clone() }]
    );
    assert_eq!(
        d.store
            .identity_provider_secrets(&id)
            .unwrap()
            .client_secret
            .as_deref(),
        Some("new-s3cret")
    );

    // A federated-only endpoint with the portal: its address from the public URL.
    let mut body = d.pki.create_body();
    body["authentication-options"] = json!([{
        "type": "federated-authentication",
        "saml-provider-arn": format!("arn:aws:iam::123456789012:saml-provider/{id}"),
    }]);
    body["self-service-portal"] = json!(true);
    body["server-certificate"] = json!(format!("{}{}", d.pki.server_cert, d.pki.ca_pem));
    let ep = d.json(Method::POST, "/v1/endpoints", Some(body)).unwrap();
    let eid = ep["client-vpn-endpoint-id"].as_str().unwrap().to_string();
    let portal = format!("https://vpn.example.com/portal/{eid}");
    assert_eq!(ep["self-service-portal-url"], portal.as_str());
    assert_eq!(
        ep["authentication-options"],
        json!([{"type": "federated-authentication", "saml-provider-arn": id}])
    );
    let described = d
        .json(Method::GET, &format!("/v1/endpoints/{eid}"), None)
        .unwrap();
    assert_eq!(described["self-service-portal-url"], portal.as_str());
    // Portal off: no address.
    let r = d
        .json(
            Method::PATCH,
            &format!("/v1/endpoints/{eid}"),
            Some(json!({"self-service-portal": false})),
        )
        .unwrap();
    assert!(
        r["endpoint"].get("self-service-portal-url").is_none(),
        "{r}"
    );

    // The secret is in no answer.
    for path in [
        "/v1/identity-providers".to_string(),
        format!("/v1/identity-providers/{id}"),
        "/v1/identity-providers/corp-sso".to_string(),
        "/v1/endpoints".to_string(),
        format!("/v1/endpoints/{eid}"),
    ] {
        let text = d
            .call(ApiRequest::new(Method::GET, path))
            .unwrap()
            .text()
            .unwrap();
        assert!(
            !text.contains("s3cret") && !text.contains("client-secret\""),
            "{text}"
        );
    }
    // In use: not deleted; the unused one is.
    let (status, code, message) = refused(d.call(ApiRequest::new(
        Method::DELETE,
        format!("/v1/identity-providers/{id}"),
    )));
    assert_eq!((status, code.as_str()), (409, codes::INCORRECT_STATE));
    assert!(message.contains(&eid), "{message}");
    let gone = d
        .json(Method::DELETE, "/v1/identity-providers/saml", None)
        .unwrap();
    assert_eq!(gone["name"], "saml");
}

#[test]
fn api_without_a_public_url_shows_no_portal_address() {
    let d = Daemon::start();
    let p = d
        .store
        .create_identity_provider(&crate::model::CreateIdentityProviderRequest {
            name: Some("p".into()),
            issuer: Some("https://login.example.test".into()),
            client_id: Some("c".into()),
            client_secret: Some("s".into()),
            ..Default::default()
        })
        .unwrap();
    let mut body = d.pki.create_body();
    body["authentication-options"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "federated-authentication", "saml-provider-arn": p.id}));
    body["self-service-portal"] = json!(true);
    let ep = d.json(Method::POST, "/v1/endpoints", Some(body)).unwrap();
    assert_eq!(ep["self-service-portal"], true);
    assert!(ep.get("self-service-portal-url").is_none(), "{ep}");
}
