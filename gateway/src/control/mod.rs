//! The control plane at run time: the daemon behind `cvpn serve`. It keeps the endpoints of the
//! database running, serves the management API, and turns every committed API change into a
//! command for the endpoint it concerns:
//!
//! | API change ([`ControlEvent`]) | what the daemon does |
//! |---|---|
//! | endpoint becomes `available` | starts its listener, TUN and data plane |
//! | endpoint back to `pending-associate` | stops it (clients are told to reconnect) |
//! | endpoint modified | restarts it; descriptive fields, session timeout and connect handler apply live |
//! | endpoint `deleting` | stops it, then finishes the deletion in the store |
//! | rules, routes, target networks | recompiles the data-plane policy; sessions are kept |
//! | connections terminated | HALT to each client, session out of the data plane, address freed |
//! | CRL imported | new handshakes check it; sessions of revoked certificates end |
//! | directory modified, user enrolled for MFA | endpoints using it take the new checks for sign-ins and re-checks; sessions are kept |
//!
//! Connections are written back to the store by a [`recorder::StoreRecorder`] (start, counters
//! every few seconds, end), so `cvpn connection list` shows them.
//!
//! On a PostgreSQL database shared by several nodes, a change made through another node's
//! API arrives as a notification (`LISTEN`/`NOTIFY`, and a read of the change counter every
//! 500 ms besides): the daemon resynchronises, reading every endpoint off the event loop
//! ([`reads`]) and applying the table above to what differs. It serves only the endpoints it
//! has a target network association for, hands out client addresses from the blocks it
//! claimed, ends only its own connections, beats every 5 s and ends the connections of nodes
//! found dead ([`crate::storage::nodes`]).

pub mod config;
pub mod reads;
pub mod recorder;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::api::{ApiSettings, ApiState, ControlEvent, EndpointChange};
use crate::auth::{service::Authenticator, totp::TotpVerifier};
use crate::connlog::ConnectionLogs;
use crate::endpoint::{DirectoryPolicy, SsoPolicy};
use crate::model::Directory;
use crate::protocol::tls::TlsMaterial;
use crate::server::{LiveSettings, Server, ServerCommand, ServerSettings};
use crate::storage::{EndpointStatus, Store};

pub use self::config::DaemonConfig;
use self::reads::off_loop;
use self::recorder::StoreRecorder;

/// How often records past the retention period are removed from the database.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often a daemon on a shared database looks at its change counter
/// ([`Store::change_seq`]) besides when PostgreSQL notifies it of a change
/// ([`Store::watch_changes`]): the bound on how late a change made through another node (or a
/// tool) reaches this node's kernel maps should a notification be lost, plus the
/// resynchronisation itself. A notified change is read at once.
pub const CHANGE_POLL_EVERY: Duration = Duration::from_millis(500);

/// The settings of an endpoint that apply without a restart.
fn live_settings(
    ep: &crate::storage::Endpoint,
    policy: &crate::storage::HandlerPolicy,
    directory: Option<&Directory>,
    sso: Option<SsoPolicy>,
) -> Result<LiveSettings> {
    let connect_handler = match (
        &ep.client_connect_options.enabled,
        &ep.client_connect_options.handler,
    ) {
        (true, Some(h)) => Some(Arc::new(
            crate::connect_handler::ConnectHandler::new(h, policy)
                .map_err(|e| anyhow!("client connect handler: {e}"))?,
        )),
        _ => None,
    };
    Ok(LiveSettings {
        session_timeout: Some(Duration::from_secs(
            u64::from(ep.session_timeout_hours) * 3600,
        )),
        disconnect_on_session_timeout: ep.disconnect_on_session_timeout,
        connect_handler,
        directory: directory.map(|d| DirectoryPolicy {
            directory_id: d.directory_id.clone(),
            mfa: d.mfa,
            recheck: Duration::from_secs(u64::from(d.recheck_seconds)),
        }),
        sso,
    })
}

/// The relying party of an identity provider resource.
fn sso_idp(
    idp: &crate::model::IdentityProvider,
    secrets: &crate::model::IdpSecrets,
    public_url: &str,
) -> Result<crate::web::SsoIdp> {
    if let Some(o) = &idp.oidc {
        let tls = crate::http_client::client_tls(None).map_err(|e| anyhow!("{e}"))?;
        return Ok(crate::web::SsoIdp::Oidc(
            crate::auth::oidc::OidcRelyingParty::new(
                crate::auth::oidc::OidcClientSettings {
                    issuer: o.issuer.clone(),
                    client_id: o.client_id.clone(),
                    client_secret: secrets.client_secret.clone(),
                    groups_claim: o.groups_claim.clone(),
                    username_claim: o.username_claim.clone(),
                    scopes: o.scopes.clone(),
                    redirect_url: format!("{public_url}/oidc/callback"),
                },
                tls,
            ),
        ));
    }
    let Some(saml) = &idp.saml else {
        return Err(anyhow!(
            "identity provider {} ({}) has neither OIDC nor SAML settings",
            idp.id,
            idp.name
        ));
    };
    if saml.sso_binding != crate::model::SamlBinding::HttpRedirect {
        return Err(anyhow!(
            "identity provider {} ({}): its metadata offers single sign-on only with the \
             HTTP-POST binding; cvpn sends sign-in requests with HTTP-Redirect: enable that \
             binding at the identity provider, then give its metadata again (cvpn idp modify)",
            idp.id,
            idp.name
        ));
    }
    use base64::{engine::general_purpose::STANDARD, Engine};
    let certificates = saml
        .signing_certificates
        .iter()
        .map(|c| STANDARD.decode(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("identity provider {}: a signing certificate: {e}", idp.id))?;
    let base = public_url.trim_end_matches('/');
    let settings = crate::auth::saml::SamlSpSettings {
        idp_entity_id: saml.entity_id.clone(),
        idp_sso_url: saml.sso_url.clone(),
        idp_certificates: certificates,
        groups_attribute: saml.groups_attribute.clone(),
        username_attribute: saml.username_attribute.clone(),
        sp_entity_id: format!("{base}/saml/metadata"),
        acs_url: format!("{base}/saml/acs"),
    };
    let sp = crate::auth::saml::SamlServiceProvider::new(settings)
        .map_err(|e| anyhow!("identity provider {} ({}): {e}", idp.id, idp.name))?;
    Ok(crate::web::SsoIdp::Saml(sp))
}

/// A running endpoint.
struct Running {
    commands: mpsc::UnboundedSender<ServerCommand>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
    /// A digest of what the listener was started with (see [`Daemon::settings`]): a resync
    /// restarts the endpoint when it differs.
    fingerprint: Vec<u8>,
    /// Its transport and port (one listener per pair on this host).
    listener: (crate::storage::TransportProtocol, u16),
}

/// The daemon's state.
pub struct Daemon {
    config: DaemonConfig,
    /// Listener states the API shows in endpoint descriptions.
    listeners: crate::api::Listeners,
    store: Arc<Store>,
    recorder: StoreRecorder,
    logs: Arc<ConnectionLogs>,
    running: HashMap<String, Running>,
    /// Each directory's memory of used TOTP codes, shared by its endpoints and kept while the
    /// daemon runs (a code used once stays used across directory changes).
    totp_verifiers: std::sync::Mutex<HashMap<String, Arc<TotpVerifier>>>,
    /// The web listener's sign-ins under way and single sign-on sessions.
    sso: Arc<crate::web::SsoService>,
    /// The self-service portal: how each running endpoint signs people in.
    portal: Arc<crate::web::Portal>,
    /// Each identity provider's relying party (its discovered keys kept), rebuilt when the
    /// provider's settings change.
    idps: std::sync::Mutex<HashMap<String, Arc<crate::web::SsoIdp>>>,
    /// Where running endpoints ask for another block of client addresses (shared database).
    more_addresses: mpsc::UnboundedSender<String>,
    /// This node's metrics (`GET /metrics` on the AWS API listener).
    metrics: Arc<crate::metrics::Metrics>,
}

/// The TUN device of an endpoint: `cvpn` and the first 10 hex digits of its id (stable across
/// restarts, within the 15 characters Linux allows).
pub fn tun_name(endpoint_id: &str) -> String {
    let hex = endpoint_id.rsplit('-').next().unwrap_or(endpoint_id);
    format!("cvpn{}", &hex[..hex.len().min(10)])
}

/// Runs the daemon until `shutdown` resolves: opens the database in the data directory, starts
/// every available endpoint, serves the API, applies its changes live. On shutdown every client
/// is told to reconnect, the kernel programs are detached and the API socket is removed.
/// Must run inside a [`tokio::task::LocalSet`] (the endpoints' event loops are local tasks).
pub async fn run(config: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    // The remote API's token first: a daemon that would serve it badly does not start at all.
    let token = match &config.api.tcp {
        Some(tcp) => Some(crate::api::serve::read_token_file(&tcp.token_file)?),
        None => None,
    };
    let store = Arc::new(
        Store::open(config.store_options().map_err(|e| anyhow!("{e}"))?)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("opening the database in {}", config.store_location()))?,
    );
    // This daemon among the database's nodes: refused while another host serves it.
    let instance = crate::model::ids::new_id("run-").map_err(|e| anyhow!("{e}"))?;
    let node = store
        .register_node(&config.node_name, &instance, config.public_host.as_deref())
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("registering node {:?}", config.node_name))?;
    info!(node = %node.name, instance = %node.instance, database = %config.store_location(), "node registered");
    // Whatever was connected when the daemon last stopped is gone now.
    match store.close_stale_connections() {
        Ok(ids) if !ids.is_empty() => info!(
            count = ids.len(),
            "connections of the previous run recorded as ended"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "stale connections not closed"),
    }
    let logs = Arc::new(
        ConnectionLogs::open(&config.data_dir, &config.log)
            .map(|logs| logs.with_node(&config.node_name))
            .with_context(|| {
                format!(
                    "opening the connection log in {}",
                    config.data_dir.display()
                )
            })?,
    );
    let recorder =
        StoreRecorder::spawn(store.clone()).context("starting the connection recorder")?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let api_state = ApiState::with_settings(
        store.clone(),
        events_tx,
        ApiSettings {
            remote_host: config.public_host.clone(),
            public_url: config.web.as_ref().map(|w| w.public_url.clone()),
            ..ApiSettings::default()
        },
    );
    let (api_stop_tx, api_stop) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let listener = crate::api::serve::bind_unix(&config.api.socket)
        .with_context(|| format!("binding the API socket {}", config.api.socket.display()))?;
    let mut api_tasks = vec![tokio::spawn(crate::api::serve::serve_unix_listener(
        listener,
        api_state.clone(),
        stopped(api_stop.clone()),
    ))];
    info!(socket = %config.api.socket.display(), "API listening");
    if let (Some(tcp), Some(token)) = (&config.api.tcp, token) {
        let tls = api_tls_config(tcp)?;
        let listener = tokio::net::TcpListener::bind(tcp.listen)
            .await
            .with_context(|| format!("binding the API's TLS listener {}", tcp.listen))?;
        api_tasks.push(tokio::spawn(crate::api::serve::serve_tls_listener(
            listener,
            tls,
            token,
            api_state.clone(),
            stopped(api_stop.clone()),
        )));
        info!(listen = %tcp.listen, "API listening with TLS");
    }

    let sso = Arc::new(crate::web::SsoService::new());
    let portal = Arc::new(crate::web::Portal::new());
    if let Some(web) = &config.web {
        let tls = pem_tls_config(&web.certificate, &web.key, "web listener")?;
        let listener = tokio::net::TcpListener::bind(web.listen)
            .await
            .with_context(|| format!("binding the web listener [web] listen = {}", web.listen))?;
        let state = Arc::new(crate::web::WebState {
            settings: crate::web::WebSettings {
                public_url: web.public_url.clone(),
            },
            sso: sso.clone(),
            portal: portal.clone(),
            api: api_state.clone(),
        });
        api_tasks.push(tokio::spawn({
            let stop = stopped(api_stop.clone());
            async move {
                crate::web::serve(listener, tls, state, stop).await;
                Ok(())
            }
        }));
        info!(listen = %web.listen, public_url = %web.public_url, "web listener (sign-in, portal) listening");
    }

    let metrics = crate::metrics::Metrics::new(&config.node_name);
    if let Some(aws) = &config.aws_api {
        let tls = match &aws.tls {
            Some((cert, key)) => Some(pem_tls_config(cert, key, "AWS API listener")?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(aws.listen)
            .await
            .with_context(|| {
                format!(
                    "binding the AWS API listener [aws_api] listen = {}",
                    aws.listen
                )
            })?;
        let state = Arc::new(crate::aws::AwsState {
            api: api_state.clone(),
            region: aws.region.clone(),
            metrics: Some(metrics.clone()),
        });
        let url = crate::aws::describe(aws.listen, tls.is_some());
        api_tasks.push(tokio::spawn({
            let stop = stopped(api_stop.clone());
            async move {
                crate::aws::serve(listener, tls, state, stop).await;
                Ok(())
            }
        }));
        info!(endpoint_url = %url, region = %aws.region, "AWS-compatible API listening (aws ec2 --endpoint-url)");
    }

    let listeners = api_state.listeners.clone();
    let (more_addresses, mut address_requests) = mpsc::unbounded_channel::<String>();
    let mut daemon = Daemon {
        metrics: metrics.clone(),
        more_addresses,
        sso,
        portal,
        idps: Default::default(),
        config,
        listeners,
        store,
        recorder,
        logs,
        running: HashMap::new(),
        totp_verifiers: Default::default(),
    };
    daemon.recover();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    // Housekeeping: what is past the retention period leaves the database (first tick: now).
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut heartbeat = tokio::time::interval(crate::storage::nodes::HEARTBEAT_EVERY);
    let (taken_over_tx, mut taken_over) = mpsc::channel::<String>(1);
    let (rejoined_tx, mut rejoined) = mpsc::channel::<()>(1);
    // Changes made elsewhere (another node's API, a tool): on a shared database, watch the
    // change counter and resynchronise when it moves; after the database was away, resync
    // whatever the counter says (notifications may have been missed).
    let shared = daemon.store.is_shared();
    let mut changes = tokio::time::interval(CHANGE_POLL_EVERY);
    changes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (seq_tx, mut seq_rx) = mpsc::channel::<Result<i64, String>>(1);
    let mut last_seq = daemon.store.change_seq().ok();
    // A read of the counter under way; `read_again`: a change was notified meanwhile (the read
    // may predate its commit).
    let (mut polling, mut read_again) = (false, false);
    let read_seq = |store: Arc<Store>, tx: mpsc::Sender<Result<i64, String>>| {
        tokio::task::spawn_blocking(move || {
            let _ = tx.blocking_send(store.change_seq().map_err(|e| e.message));
        });
    };
    let mut notices = if shared {
        daemon.store.watch_changes()
    } else {
        None
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = hup.recv() => daemon.resync().await,
            Some(event) = events.recv() => daemon.on_event(event).await,
            Some(endpoint_id) = address_requests.recv() => daemon.claim_more_addresses(&endpoint_id),
            _ = check.tick() => daemon.reap().await,
            _ = heartbeat.tick() => {
                let (store, node, tx, back) = (daemon.store.clone(), node.clone(), taken_over_tx.clone(), rejoined_tx.clone());
                tokio::task::spawn_blocking(move || beat(&store, &node, &tx, &back));
            }
            _ = changes.tick(), if shared && !polling => {
                polling = true;
                read_seq(daemon.store.clone(), seq_tx.clone());
            }
            Some(notice) = async {
                match notices.as_mut() {
                    Some(n) => n.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if notice == crate::storage::sql::Notice::Listening {
                    info!("listening to the database's change notifications");
                }
                if polling {
                    read_again = true;
                } else {
                    polling = true;
                    read_seq(daemon.store.clone(), seq_tx.clone());
                }
            }
            Some(seq) = seq_rx.recv() => {
                polling = false;
                if std::mem::take(&mut read_again) {
                    polling = true;
                    read_seq(daemon.store.clone(), seq_tx.clone());
                }
                match seq {
                    Ok(seq) if last_seq == Some(seq) => {}
                    Ok(seq) => {
                        let away = last_seq.is_none();
                        last_seq = Some(seq);
                        info!(change = seq, after_outage = away, "the configuration changed in the database: resynchronising");
                        daemon.resync().await;
                        daemon.terminate_requested().await;
                    }
                    Err(e) => {
                        if last_seq.is_some() {
                            warn!(error = %e, "the database does not answer: serving with the current policy until it does");
                        }
                        last_seq = None;
                    }
                }
            }
            Some(()) = rejoined.recv() => daemon.reassert_address_blocks(),
            Some(why) = taken_over.recv() => {
                error!(reason = %why, "another run of this node serves the database now; stopping");
                break;
            }
            _ = prune.tick() => {
                let store = daemon.store.clone();
                tokio::task::spawn_blocking(move || match store.prune() {
                    Ok(r) if r.connections + r.associations + r.endpoints > 0 => {
                        info!(connections = r.connections, associations = r.associations, endpoints = r.endpoints, "removed records past the retention period");
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "pruning the database"),
                });
            }
        }
    }
    info!(endpoints = daemon.running.len(), "shutting down");
    let ids: Vec<String> = daemon.running.keys().cloned().collect();
    for id in ids {
        daemon.stop(&id).await;
    }
    daemon.recorder.flush();
    if let Err(e) = daemon.store.deregister_node(&node.name, &node.instance) {
        warn!(error = %e, "node not removed from the database; it counts as dead in 15 s");
    }
    let _ = api_stop_tx.send(true);
    for t in api_tasks {
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(Ok(Err(e))) => warn!(error = %e, "API server"),
            Ok(_) => {}
            Err(_) => warn!("API requests still running after 5 s; leaving them"),
        }
    }
    info!("stopped");
    Ok(())
}

/// One heartbeat: records this node's, and sweeps the nodes that died (their connections are
/// recorded as ended). A node that was swept itself (cut off from the database) rejoins; one
/// whose name was taken over, or that another host now replaces, is told to stop through
/// `stop`.
fn beat(
    store: &Store,
    node: &crate::storage::nodes::Node,
    stop: &mpsc::Sender<String>,
    rejoined: &mpsc::Sender<()>,
) {
    use crate::storage::nodes::Heartbeat;
    match store.node_heartbeat(&node.name, &node.instance, node.address.as_deref()) {
        Ok(Heartbeat::Beat) => {}
        Ok(Heartbeat::Rejoined) => {
            warn!(
                node = %node.name,
                "this node had been presumed dead (no heartbeat reached the database) and rejoined; its running connections are recorded as active again with their next counters"
            );
            let _ = rejoined.try_send(());
        }
        Err(e) if e.code == crate::storage::codes::INCORRECT_STATE => {
            let _ = stop.try_send(e.message);
            return;
        }
        // The database away: keep serving; the next beat tries again.
        Err(e) => {
            warn!(error = %e, "heartbeat not recorded");
            return;
        }
    }
    match store.sweep_dead_nodes() {
        Ok(swept) => {
            for dead in swept {
                warn!(node = %dead.name, connections = dead.connections.len(), "node found dead: its connections are recorded as ended");
            }
        }
        Err(e) => warn!(error = %e, "dead nodes not swept"),
    }
}

fn api_tls_config(tcp: &config::TcpApi) -> Result<Arc<rustls::ServerConfig>> {
    pem_tls_config(&tcp.tls_cert, &tcp.tls_key, "API")
}

/// A TLS listener's settings from a PEM certificate chain and key (`what` names it in errors).
fn pem_tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    what: &str,
) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| anyhow!("reading the {what} certificate {}: {e}", cert.display()))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow!("reading the {what} key {}: {e}", key.display()))?;
    crate::api::serve::tls_config(chain, private)
        .with_context(|| format!("{} and {}", cert.display(), key.display()))
}

/// What starting endpoint `id` needs from the database (blocking): the endpoint, and on a
/// shared database the blocks of its client CIDR this node hands out addresses from.
fn prepare_start(
    store: &Store,
    id: &str,
) -> Result<(reads::EndpointRead, Option<Vec<ipnet::Ipv4Net>>)> {
    let r = reads::EndpointRead::read(store, id).map_err(|e| anyhow!("{e}"))?;
    Ok((r, claim_blocks(store, id)?))
}

/// On a shared database, the blocks of endpoint `id`'s client CIDR this node hands out
/// addresses from: those it holds, or a newly claimed one. `None` (a database of one node):
/// the whole client CIDR.
fn claim_blocks(store: &Store, id: &str) -> Result<Option<Vec<ipnet::Ipv4Net>>> {
    if !store.is_shared() {
        return Ok(None);
    }
    let store_err = |e: crate::storage::ApiError| anyhow!("{e}");
    let mut claimed = store.own_address_blocks(id).map_err(store_err)?;
    if claimed.is_empty() {
        let block = store
            .claim_address_block(id)
            .map_err(store_err)?
            .ok_or_else(|| {
                anyhow!(
                    "every block of the endpoint's client CIDR is held by other live nodes: give \
                 the endpoint a larger client CIDR, or serve it from fewer nodes"
                )
            })?;
        info!(endpoint = %id, %block, "address block claimed");
        claimed.push(block);
    }
    Ok(Some(claimed))
}

impl Daemon {
    /// An endpoint's directory and the authenticator that runs its checks. A directory whose
    /// settings cannot be used (this is logged) gives no authenticator: its sign-ins fail
    /// closed with "directory unreachable" until it is fixed.
    fn directory_checks(
        &self,
        endpoint_id: &str,
        read: Option<&reads::DirectoryRead>,
    ) -> (Option<Directory>, Option<Arc<Authenticator>>) {
        let Some(read) = read else {
            return (None, None);
        };
        let (dir, secrets) = (&read.directory, &read.secrets);
        let enrolled = read
            .enrolled
            .iter()
            .filter_map(
                |(user, bytes)| match crate::auth::totp::TotpSecret::from_bytes(bytes) {
                    Ok(secret) => Some((user.clone(), secret)),
                    Err(e) => {
                        warn!(directory = %dir.directory_id, %user, error = %e, "unusable TOTP enrolment skipped: enrol the user again");
                        None
                    }
                },
            )
            .collect();
        let verifier = self
            .totp_verifiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dir.directory_id.clone())
            .or_insert_with(|| Arc::new(TotpVerifier::new()))
            .clone();
        let authenticator = match Authenticator::new(dir, secrets, enrolled, verifier) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                error!(endpoint = %endpoint_id, error = %e, "directory settings unusable: its sign-ins fail until they are fixed");
                None
            }
        };
        (Some(dir.clone()), authenticator)
    }

    /// An endpoint's single sign-on: the policy the endpoint core follows and the link to the
    /// web listener and the identity provider. An endpoint that names a provider but cannot
    /// sign anyone in (no web listener, a provider the daemon cannot use) is an error: the
    /// endpoint is not served rather than served without its sign-in.
    fn sso_checks(
        &self,
        ep: &crate::storage::Endpoint,
        idp: Option<&(crate::model::IdentityProvider, crate::model::IdpSecrets)>,
    ) -> Result<(Option<SsoPolicy>, Option<crate::server::SsoLink>)> {
        let id = &ep.client_vpn_endpoint_id;
        let Some(idp_id) = ep.idp_id() else {
            return Ok((None, None));
        };
        let web = self.config.web.as_ref().ok_or_else(|| {
            anyhow!(
                "endpoint {id} signs users in with identity provider {idp_id}, but this daemon \
                 has no web listener for the sign-in pages: add [web] listen, certificate, key \
                 and public_url to the daemon configuration (cvpn.toml), then restart the daemon"
            )
        })?;
        let (idp, secrets) =
            idp.ok_or_else(|| anyhow!("identity provider {idp_id} of endpoint {id} is gone"))?;
        let link = {
            let mut idps = self.idps.lock().unwrap_or_else(|e| e.into_inner());
            match idps.get(&idp.id) {
                Some(l) => l.clone(),
                None => {
                    let made = Arc::new(sso_idp(idp, secrets, &web.public_url)?);
                    idps.insert(idp.id.clone(), made.clone());
                    made
                }
            }
        };
        Ok((
            Some(SsoPolicy {
                idp_id: idp.id.clone(),
                sign_in_base: web.public_url.clone(),
                sign_in_timeout: web.sign_in_timeout,
                recheck: Duration::from_secs(u64::from(idp.recheck_seconds)),
            }),
            Some(crate::server::SsoLink {
                service: self.sso.clone(),
                idp: link,
                endpoint_name: ep
                    .description
                    .clone()
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| id.clone()),
            }),
        ))
    }

    /// Gives the running endpoints of a directory its current settings and enrolments.
    async fn refresh_directory(&self, directory_id: &str) {
        let d = directory_id.to_string();
        let users = match off_loop(&self.store, move |s| s.endpoints_using_directory(&d)).await {
            Some(Ok(u)) => u,
            Some(Err(e)) => {
                warn!(directory = %directory_id, error = %e, "cannot list the directory's endpoints");
                return;
            }
            None => return,
        };
        for id in users.iter().filter(|id| self.running.contains_key(*id)) {
            self.send_live(id).await;
            info!(endpoint = %id, directory = %directory_id, "directory settings applied");
        }
    }

    /// Sends the running endpoints that use an identity provider their live settings again
    /// (as [`Self::refresh_directory`] does for a directory's).
    async fn refresh_identity_provider(&self, idp_id: &str) {
        self.idps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(idp_id);
        let i = idp_id.to_string();
        let users = match off_loop(&self.store, move |s| {
            s.endpoints_using_identity_provider(&i)
        })
        .await
        {
            Some(Ok(u)) => u,
            Some(Err(e)) => {
                warn!(identity_provider = %idp_id, error = %e, "cannot list the identity provider's endpoints");
                return;
            }
            None => return,
        };
        for id in users.iter().filter(|id| self.running.contains_key(*id)) {
            self.send_live(id).await;
            info!(endpoint = %id, identity_provider = %idp_id, "identity provider settings applied");
        }
    }

    /// Sends a running endpoint the settings it takes without a restart, and the checks of
    /// its directory, as the store has them now (read off the event loop).
    async fn send_live(&self, id: &str) {
        let id2 = id.to_string();
        match off_loop(&self.store, move |s| reads::EndpointRead::read(s, &id2)).await {
            Some(Ok(r)) => self.send_live_from(&r),
            Some(Err(e)) => warn!(endpoint = %id, error = %e, "settings not applied"),
            None => {}
        }
    }

    /// [`Self::send_live`] on what was read already.
    fn send_live_from(&self, r: &reads::EndpointRead) {
        let ep = &r.endpoint;
        let id = ep.client_vpn_endpoint_id.as_str();
        let read = (|| {
            let (dir, auth) = self.directory_checks(id, r.directory.as_ref());
            let (sso, link) = self.sso_checks(ep, r.idp.as_ref())?;
            Ok::<_, anyhow::Error>((
                live_settings(ep, &self.config.connect_handler, dir.as_ref(), sso)?,
                auth,
                link,
            ))
        })();
        match read {
            Ok((live, auth, link)) => {
                self.portal.set_access(
                    id,
                    Some(crate::web::PortalAccess {
                        authenticator: auth.clone(),
                        idp: link.as_ref().map(|l| l.idp.clone()),
                    }),
                );
                self.command(id, ServerCommand::Authenticator(auth));
                self.command(id, ServerCommand::Sso(link));
                self.command(id, ServerCommand::LiveSettings(live));
            }
            Err(e) => warn!(endpoint = %id, error = format!("{e:#}"), "settings not applied"),
        }
    }

    /// After a start: finishes deletions the previous run left half done and starts every
    /// available endpoint.
    fn recover(&mut self) {
        let endpoints = match self.store.describe_endpoints(&[]) {
            Ok(e) => e,
            Err(e) => {
                error!(error = %e, "cannot list endpoints");
                return;
            }
        };
        for ep in endpoints {
            match ep.status {
                EndpointStatus::Deleting => self.finish_deletion(&ep.client_vpn_endpoint_id),
                EndpointStatus::Available
                    if self.serves(&ep.client_vpn_endpoint_id) == Some(true) =>
                {
                    self.start(&ep.client_vpn_endpoint_id)
                }
                _ => {}
            }
        }
    }

    fn finish_deletion(&self, id: &str) {
        match self.store.finish_endpoint_deletion(id) {
            Ok(_) => info!(endpoint = %id, "endpoint deleted"),
            Err(e) => warn!(endpoint = %id, error = %e, "endpoint deletion not finished"),
        }
    }

    /// The server settings of an endpoint as read ([`reads::EndpointRead`]), and a digest of
    /// everything in them that only a restart of the listener applies.
    fn settings(&self, r: &reads::EndpointRead) -> Result<(ServerSettings, Vec<u8>)> {
        let ep = &r.endpoint;
        let id = ep.client_vpn_endpoint_id.as_str();
        // A federated endpoint whose sign-in cannot run is not served at all (fail closed):
        // without it, a federated-only endpoint would admit clients with no credentials.
        let (sso_policy, sso_link) = self.sso_checks(ep, r.idp.as_ref())?;
        let secrets = &r.secrets;
        let tls = TlsMaterial::from_pem(
            &secrets.server_certificate_pem,
            &secrets.server_private_key_pem,
            &secrets.client_ca_pem,
            secrets.crl_pem.as_deref(),
        )?;
        let listener_settings = format!(
            "{}|{}|{}|{}|{:?}|{:?}|{}|{}|{}",
            ep.vpn_port,
            ep.transport_protocol,
            ep.client_cidr_block,
            ep.split_tunnel,
            ep.dns_servers,
            ep.connection_log_options,
            secrets.server_certificate_pem,
            secrets.server_private_key_pem,
            secrets.client_ca_pem,
        );
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, listener_settings.as_bytes())
            .as_ref()
            .to_vec();
        let (directory, authenticator) = self.directory_checks(id, r.directory.as_ref());
        let c = &self.config;
        let settings = ServerSettings {
            listen: SocketAddr::new(c.listen_address, ep.vpn_port),
            transport: ep.transport_protocol,
            client_cidr: ep.client_cidr_block,
            tls,
            split_tunnel: ep.split_tunnel,
            dns_servers: ep.dns_servers.clone(),
            targets: r.targets.clone(),
            policy: r.policy.clone(),
            tun_name: tun_name(id),
            ciphers: ServerSettings::default_ciphers(),
            force_tls_prf: false,
            endpoint_id: id.to_string(),
            log_dir: None,
            log_options: c.log.clone(),
            ping: c.ping,
            ping_restart: c.ping_restart,
            reneg_after: (c.reneg_sec > 0).then(|| Duration::from_secs(c.reneg_sec.into())),
            offloads: c.offloads,
            shared_logs: ep.connection_log_options.enabled.then(|| self.logs.clone()),
            recorder: Some(Arc::new(self.recorder.clone())),
            counters_every: c.counters_every,
            // The shared log prints every endpoint's lines when the daemon says so.
            print_log_lines: ep.connection_log_options.enabled
                && ep.connection_log_options.stdout
                && !c.log.stdout,
            live: live_settings(ep, &c.connect_handler, directory.as_ref(), sso_policy)?,
            authenticator,
            sso: sso_link,
            // Endpoints of one daemon may share a target interface: each its own SNAT ports.
            nat_port_range: Some(crate::server::snat_slice(
                ep.transport_protocol,
                ep.vpn_port,
            )),
            // Claimed when the endpoint starts (see `address_blocks`).
            address_blocks: None,
            metrics: Some(self.metrics.endpoint(id)),
        };
        Ok((settings, fingerprint))
    }

    /// The address blocks a starting endpoint hands out addresses from ([`claim_blocks`]),
    /// with the way to ask for more. `None`: the whole client CIDR.
    fn address_blocks(
        &self,
        claimed: Option<Vec<ipnet::Ipv4Net>>,
    ) -> Option<crate::server::AddressBlocks> {
        claimed.map(|claimed| crate::server::AddressBlocks {
            claimed,
            ask_more: self.more_addresses.clone(),
        })
    }

    /// After this node rejoined the database (it had been found dead): each running
    /// endpoint keeps only the address blocks the database still says are this node's (off
    /// the event loop); clients with an address in a block another node took meanwhile
    /// reconnect.
    fn reassert_address_blocks(&self) {
        if !self.store.is_shared() {
            return;
        }
        for (id, r) in &self.running {
            let (store, commands, id) = (self.store.clone(), r.commands.clone(), id.clone());
            tokio::task::spawn_blocking(move || match store.own_address_blocks(&id) {
                Ok(held) => {
                    let _ = commands.send(ServerCommand::KeepAddressBlocks(held));
                }
                Err(e) => {
                    warn!(endpoint = %id, error = %e, "address blocks not checked after rejoining")
                }
            });
        }
    }

    /// A running endpoint's pool runs low: claims another block for it (off the event loop).
    fn claim_more_addresses(&self, id: &str) {
        let Some(r) = self.running.get(id) else {
            return;
        };
        let (store, commands, id) = (self.store.clone(), r.commands.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            let block = match store.claim_address_block(&id) {
                Ok(Some(block)) => {
                    info!(endpoint = %id, %block, "address block claimed");
                    Some(block)
                }
                Ok(None) => {
                    warn!(endpoint = %id, "no address block left to claim: every block of the client CIDR is held by a live node");
                    None
                }
                Err(e) => {
                    warn!(endpoint = %id, error = %e, "address block not claimed; asked again when the next client is admitted");
                    None
                }
            };
            // None: the clients waiting for an address are refused.
            let _ = commands.send(ServerCommand::AddAddressBlock(block));
        });
    }

    /// [`Self::serves`], read off the event loop.
    async fn serves_off_loop(&self, id: &str) -> Option<bool> {
        let id2 = id.to_string();
        match off_loop(&self.store, move |s| s.serves_endpoint(&id2)).await? {
            Ok(serves) => Some(serves),
            Err(e) => {
                warn!(endpoint = %id, error = %e, "cannot tell whether this node serves the endpoint; nothing changes");
                None
            }
        }
    }

    /// Whether this node serves endpoint `id`: it is available and has a target network
    /// association of this node (see [`Store::serves_endpoint`]).
    fn serves(&self, id: &str) -> Option<bool> {
        match self.store.serves_endpoint(id) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(endpoint = %id, error = %e, "cannot tell whether this node serves the endpoint; nothing changes");
                None
            }
        }
    }

    /// Starts an endpoint's listener, TUN and data plane. Failures are logged; the endpoint
    /// stays in the store as it is and is tried again on its next change.
    fn start(&mut self, id: &str) {
        if self.running.contains_key(id) {
            return;
        }
        let prepared = prepare_start(&self.store, id);
        self.start_prepared(id, prepared);
    }

    /// [`Self::start`] with the database read off the event loop.
    async fn start_off_loop(&mut self, id: &str) {
        if self.running.contains_key(id) {
            return;
        }
        let id2 = id.to_string();
        let prepared = off_loop(&self.store, move |s| prepare_start(s, &id2))
            .await
            .unwrap_or_else(|| Err(anyhow!("reading the endpoint failed (a panic)")));
        self.start_prepared(id, prepared);
    }

    fn start_prepared(
        &mut self,
        id: &str,
        prepared: Result<(reads::EndpointRead, Option<Vec<ipnet::Ipv4Net>>)>,
    ) {
        let fail = |listeners: &crate::api::Listeners, e: anyhow::Error| {
            error!(endpoint = %id, error = format!("{e:#}"), "endpoint not started");
            listeners.set(id, "failed", Some(format!("{e:#}")));
        };
        let (settings, fingerprint) = match prepared.and_then(|(r, blocks)| {
            let (s, f) = self.settings(&r)?;
            Ok((s, f, self.address_blocks(blocks)))
        }) {
            Ok((s, f, address_blocks)) => (
                ServerSettings {
                    address_blocks,
                    ..s
                },
                f,
            ),
            Err(e) => {
                return fail(
                    &self.listeners,
                    anyhow!("{e:#}; fix it, then modify the endpoint or reload the daemon"),
                )
            }
        };
        let listener = (settings.transport, settings.listen.port());
        let access = crate::web::PortalAccess {
            authenticator: settings.authenticator.clone(),
            idp: settings.sso.as_ref().map(|l| l.idp.clone()),
        };
        if let Some((other, _)) = self.running.iter().find(|(_, r)| r.listener == listener) {
            let e = anyhow!(
                "endpoint {other} already listens on the same transport and port on this host; \
                 change one of them (cvpn endpoint modify ENDPOINT --port 443|1194)"
            );
            return fail(&self.listeners, e);
        }
        let server = match Server::new(settings) {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    &self.listeners,
                    anyhow!("{e:#}; fix it, then modify the endpoint or reload the daemon"),
                )
            }
        };
        let listeners = self.listeners.clone();
        let (commands, receiver) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let endpoint = id.to_string();
        let task = tokio::task::spawn_local(async move {
            let r = server
                .run_with_commands(
                    async move {
                        let _ = stopped.await;
                    },
                    receiver,
                )
                .await;
            if let Err(e) = &r {
                error!(endpoint = %endpoint, error = format!("{e:#}"), "endpoint stopped");
                listeners.set(&endpoint, "failed", Some(format!("{e:#}")));
            }
            r
        });
        info!(endpoint = %id, tun = %tun_name(id), "endpoint started");
        self.listeners.set(id, "serving", None);
        self.portal.set_access(id, Some(access));
        self.running.insert(
            id.to_string(),
            Running {
                commands,
                stop: Some(stop),
                task,
                fingerprint,
                listener,
            },
        );
    }

    /// Stops an endpoint: clients are told to reconnect, its sessions are recorded as ended,
    /// its programs detached and its TUN removed.
    async fn stop(&mut self, id: &str) {
        let Some(mut r) = self.running.remove(id) else {
            return;
        };
        self.sso.forget_endpoint(id);
        self.portal.set_access(id, None);
        self.listeners.set(id, "stopped", None);
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(10), &mut r.task).await {
            Ok(_) => info!(endpoint = %id, "endpoint stopped"),
            Err(_) => {
                r.task.abort();
                warn!(endpoint = %id, "endpoint did not stop within 10 s; aborted");
            }
        }
    }

    /// Notices endpoints whose event loop ended on its own (an error) and forgets them, so the
    /// next change starts them again.
    async fn reap(&mut self) {
        let done: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            self.running.remove(&id);
            warn!(endpoint = %id, "endpoint is not running; it starts again on its next change or daemon restart");
        }
    }

    /// Those of `ids` that this node holds (or that no node holds: recorded before nodes
    /// existed). Unreadable: none, so nothing of another node is recorded as ended.
    fn own_connections(&self, endpoint_id: &str, ids: Vec<String>) -> Vec<String> {
        if !self.store.is_shared() {
            return ids;
        }
        let filter = crate::storage::ConnectionFilter {
            client_vpn_endpoint_id: Some(endpoint_id.to_string()),
            ..Default::default()
        };
        match self.store.describe_connections(&filter) {
            Ok(conns) => conns
                .into_iter()
                .filter(|c| ids.contains(&c.connection_id))
                .filter(|c| c.node.as_deref().is_none_or(|n| n == self.config.node_name))
                .map(|c| c.connection_id)
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot tell which node holds the connections to terminate; the change watch retries");
                Vec::new()
            }
        }
    }

    /// Closes the connections of this node that the database says are `terminating`: a
    /// terminate made through another node's API (or while this one missed it).
    async fn terminate_requested(&mut self) {
        let filter = crate::storage::ConnectionFilter {
            status: Some(crate::storage::ConnectionStatus::Terminating),
            ..Default::default()
        };
        let conns = match off_loop(&self.store, move |s| s.describe_connections(&filter)).await {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                warn!(error = %e, "cannot list connections being terminated");
                return;
            }
            None => return,
        };
        let mut by_endpoint: HashMap<String, Vec<String>> = HashMap::new();
        for c in conns {
            let mine = c.node.as_deref().is_none_or(|n| n == self.config.node_name);
            if mine && self.running.contains_key(&c.client_vpn_endpoint_id) {
                by_endpoint
                    .entry(c.client_vpn_endpoint_id)
                    .or_default()
                    .push(c.connection_id);
            }
        }
        for (endpoint_id, connection_ids) in by_endpoint {
            self.on_event(ControlEvent::Terminate {
                endpoint_id,
                connection_ids,
            })
            .await;
        }
    }

    /// Brings the running endpoints in line with the database after it was changed behind the
    /// API's back (`cvpn apply -f`, SIGHUP, another node's API): starts available ones, stops
    /// the others, restarts those whose listener settings changed, and reapplies every running
    /// one's policy and CRL.
    async fn resync(&mut self) {
        // Everything is read off the event loop (the endpoints' traffic goes on meanwhile),
        // then applied. A read that fails changes nothing that runs.
        let read = off_loop(&self.store, |s| {
            let endpoints = s.describe_endpoints(&[])?;
            let reads: HashMap<String, Result<reads::EndpointRead, crate::storage::ApiError>> =
                endpoints
                    .iter()
                    .filter(|e| e.status == EndpointStatus::Available)
                    .map(|e| {
                        let id = e.client_vpn_endpoint_id.clone();
                        let r = reads::EndpointRead::read(s, &id);
                        (id, r)
                    })
                    .collect();
            Ok::<_, crate::storage::ApiError>((endpoints, reads))
        })
        .await;
        let (endpoints, reads) = match read {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                error!(error = %e, "cannot list endpoints; nothing resynchronised");
                return;
            }
            None => return,
        };
        let running: Vec<String> = self.running.keys().cloned().collect();
        for id in running {
            let keep = match reads.get(&id) {
                Some(Ok(r)) => r.serves,
                Some(Err(_)) => true,
                // No longer available (or gone).
                None => false,
            };
            if !keep {
                self.stop(&id).await;
            }
        }
        for ep in endpoints {
            let id = ep.client_vpn_endpoint_id.clone();
            match ep.status {
                EndpointStatus::Deleting => {
                    let id2 = id.clone();
                    match off_loop(&self.store, move |s| s.finish_endpoint_deletion(&id2)).await {
                        Some(Ok(_)) => info!(endpoint = %id, "endpoint deleted"),
                        Some(Err(e)) => {
                            warn!(endpoint = %id, error = %e, "endpoint deletion not finished")
                        }
                        None => {}
                    }
                }
                EndpointStatus::Available => {
                    let r = match reads.get(&id) {
                        Some(Ok(r)) if r.serves => r,
                        Some(Err(e)) => {
                            warn!(endpoint = %id, error = %e, "not resynchronised: its current settings stay");
                            continue;
                        }
                        _ => continue,
                    };
                    let changed = match (self.running.get(&id), self.settings(r)) {
                        (Some(run), Ok((_, f))) => run.fingerprint != f,
                        _ => false,
                    };
                    if changed {
                        info!(endpoint = %id, "listener settings changed in the database: restarting it");
                        self.stop(&id).await;
                    }
                    if self.running.contains_key(&id) {
                        self.command(
                            &id,
                            ServerCommand::ReplaceNetwork {
                                targets: r.targets.clone(),
                                policy: r.policy.clone(),
                            },
                        );
                        // The serials of the stored CRL, parsed as its import did.
                        let revoked = r
                            .secrets
                            .crl_pem
                            .as_deref()
                            .and_then(|pem| {
                                crate::storage::validate::crl(
                                    "crl",
                                    pem,
                                    &r.secrets.client_ca_pem,
                                    usize::MAX,
                                )
                                .ok()
                            })
                            .map(|p| p.revoked_serials)
                            .unwrap_or_default();
                        self.replace_tls(&id, &r.secrets, revoked);
                        self.send_live_from(r);
                    } else {
                        self.start_off_loop(&id).await;
                    }
                }
                _ => {}
            }
        }
        info!(
            endpoints = self.running.len(),
            "resynchronised with the database"
        );
    }

    /// New TLS material for a running endpoint from its stored secrets; the sessions of
    /// `revoked_serials` end.
    fn replace_tls(
        &self,
        id: &str,
        secrets: &crate::storage::EndpointSecrets,
        revoked_serials: Vec<String>,
    ) {
        match TlsMaterial::from_pem(
            &secrets.server_certificate_pem,
            &secrets.server_private_key_pem,
            &secrets.client_ca_pem,
            secrets.crl_pem.as_deref(),
        ) {
            Ok(tls) => {
                self.command(
                    id,
                    ServerCommand::ReplaceTls {
                        tls,
                        revoked_serials,
                    },
                );
            }
            Err(e) => warn!(endpoint = %id, error = %e, "new CRL not applied"),
        }
    }

    fn command(&self, id: &str, cmd: ServerCommand) -> bool {
        match self.running.get(id) {
            Some(r) => r.commands.send(cmd).is_ok(),
            None => false,
        }
    }

    async fn on_event(&mut self, event: ControlEvent) {
        match event {
            ControlEvent::EndpointChanged {
                endpoint_id,
                change,
            } => match change {
                EndpointChange::Created => {}
                EndpointChange::Status {
                    status: EndpointStatus::Available,
                } => match self.serves_off_loop(&endpoint_id).await {
                    Some(true) => self.start_off_loop(&endpoint_id).await,
                    Some(false) => self.stop(&endpoint_id).await,
                    None => {}
                },
                EndpointChange::Status { .. } => self.stop(&endpoint_id).await,
                EndpointChange::Modified { fields } => {
                    use crate::model::FieldEffect;
                    let live = |f: &crate::model::EndpointField| f.effect() != FieldEffect::Restart;
                    if fields.iter().all(live) && self.running.contains_key(&endpoint_id) {
                        self.send_live(&endpoint_id).await;
                        return;
                    }
                    if fields
                        .iter()
                        .all(|f| f.effect() == FieldEffect::Descriptive)
                    {
                        return;
                    }
                    if self.running.contains_key(&endpoint_id) {
                        info!(endpoint = %endpoint_id, ?fields, "endpoint modified: restarting its listener");
                        self.stop(&endpoint_id).await;
                        self.start_off_loop(&endpoint_id).await;
                    } else if self.serves_off_loop(&endpoint_id).await == Some(true) {
                        // It may not have started before (e.g. its port was taken).
                        self.start_off_loop(&endpoint_id).await;
                    }
                }
                EndpointChange::Deleting => {
                    self.stop(&endpoint_id).await;
                    self.recorder.flush();
                    self.finish_deletion(&endpoint_id);
                }
            },
            ControlEvent::PolicyChanged { endpoint_id } => {
                // Read off the event loop: a database slow to answer holds nobody's traffic.
                let id = endpoint_id.clone();
                let read = off_loop(&self.store, move |s| {
                    Ok::<_, crate::storage::ApiError>((
                        s.serves_endpoint(&id)?,
                        s.target_specs(&id)?,
                        s.policy_for(&id)?,
                    ))
                })
                .await;
                let (serves, targets, policy) = match read {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        warn!(endpoint = %endpoint_id, error = %e, "policy not read; what runs stays");
                        return;
                    }
                    None => return,
                };
                if !self.running.contains_key(&endpoint_id) {
                    if serves {
                        self.start_off_loop(&endpoint_id).await;
                    }
                    return;
                }
                if !serves {
                    // This node's last association of it went (others may still serve it).
                    info!(endpoint = %endpoint_id, "no target network of this node is associated any more: not serving the endpoint here");
                    self.stop(&endpoint_id).await;
                    return;
                }
                self.command(
                    &endpoint_id,
                    ServerCommand::ReplaceNetwork { targets, policy },
                );
            }
            ControlEvent::Terminate {
                endpoint_id,
                connection_ids,
            } => {
                // Only this node's connections: another node's stay `terminating` until that
                // node closes them (it watches the database) or is found dead.
                let connection_ids = self.own_connections(&endpoint_id, connection_ids);
                if connection_ids.is_empty() {
                    return;
                }
                let cmd = ServerCommand::Terminate {
                    connection_ids: connection_ids.clone(),
                    usernames: Vec::new(),
                };
                if !self.command(&endpoint_id, cmd) {
                    // Nothing runs them: record them as ended.
                    for id in connection_ids {
                        crate::server::ConnectionRecorder::ended(
                            &self.recorder,
                            &id,
                            Default::default(),
                        );
                    }
                }
            }
            ControlEvent::DirectoryChanged { directory_id } => {
                self.refresh_directory(&directory_id).await;
            }
            ControlEvent::IdentityProviderChanged { id } => {
                self.refresh_identity_provider(&id).await;
            }
            ControlEvent::CrlChanged {
                endpoint_id,
                revoked_serials,
            } => {
                if !self.running.contains_key(&endpoint_id) {
                    return;
                }
                match self.store.endpoint_secrets(&endpoint_id) {
                    Ok(secrets) => self.replace_tls(&endpoint_id, &secrets, revoked_serials),
                    Err(e) => warn!(endpoint = %endpoint_id, error = %e, "new CRL not applied"),
                }
            }
        }
    }
}
