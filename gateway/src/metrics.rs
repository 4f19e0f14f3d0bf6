//! Prometheus metrics: AWS's `AWS/ClientVPN` set per endpoint under Prometheus names, and the
//! gateway's own (data-plane drops by reason, NAT table use, handshakes and their latency), each
//! labelled with the endpoint and the node. Served as OpenMetrics text at `GET /metrics` on the
//! AWS API listener (`crate::aws`) and the web listener (`crate::web`).
//!
//! | AWS/ClientVPN | here |
//! |---|---|
//! | ActiveConnectionsCount | `cvpn_active_connections` |
//! | AuthenticationFailures | `cvpn_authentication_failures_total` |
//! | CrlDaysToExpiry | `cvpn_crl_days_to_expiry` |
//! | IngressBytes / EgressBytes | `cvpn_ingress_bytes_total` / `cvpn_egress_bytes_total` |
//! | IngressPackets / EgressPackets | `cvpn_ingress_packets_total` / `cvpn_egress_packets_total` |
//! | SelfServicePortalClientConfigurationDownloads | `cvpn_self_service_portal_client_configuration_downloads_total` |
//! | ClientConnectHandler{Timeouts, InvalidResponses, OtherExecutionErrors, ThrottlingErrors, DeniedConnections, FailedServiceErrors} | `cvpn_client_connect_handler_errors_total{kind="timeouts"…}` |
//! | (cvpn) | `cvpn_handshakes_total`, `cvpn_handshake_seconds` (histogram), `cvpn_dataplane_packets_total{counter=…}` (drops by reason among them), `cvpn_nat_entries` |
//!
//! In a cluster every node serves its own families: traffic, handshakes, failures, drops and
//! active connections are that node's (sum them over `node`); portal downloads and the CRL's
//! expiry are the endpoint's, the same on every node (take the max or min, not the sum).
//!
//! Who writes what: a running endpoint ([`crate::server`]) counts into its [`EndpointMetrics`]
//! as things happen (traffic as deltas of the data plane's session counters, read every
//! `counters_seconds`); a scrape adds what the database knows (active connections, portal
//! downloads, the CRL's next update), read off the event loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::connlog::FailureReason;

/// The content type of a scrape's answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of every per-endpoint metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    endpoint: String,
    node: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataplaneLabels {
    endpoint: String,
    node: String,
    counter: String,
}

fn handshake_histogram() -> Histogram {
    // 5 ms to 40 s: certificate handshakes take tens of ms, directory + MFA and web sign-ins
    // seconds.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
    ])
}

type HistogramFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

/// What a connection attempt's failure counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An authentication failure (certificate, directory, MFA, identity provider).
    Authentication,
    /// A client connect handler failure of this AWS kind.
    ConnectHandler(&'static str),
    /// Neither (the endpoint, the network, the daemon).
    Other,
}

impl Refusal {
    /// Classifies a connection log's failure reason.
    pub fn of(reason: &str) -> Refusal {
        match reason {
            FailureReason::CLIENT_CONNECT_FAILED => Refusal::ConnectHandler("denied_connections"),
            FailureReason::CLIENT_CONNECT_HANDLER_TIMED_OUT => Refusal::ConnectHandler("timeouts"),
            FailureReason::CLIENT_CONNECT_HANDLER_INVALID_RESPONSE => {
                Refusal::ConnectHandler("invalid_responses")
            }
            FailureReason::CLIENT_CONNECT_HANDLER_OTHER_EXECUTION_ERROR => {
                Refusal::ConnectHandler("other_execution_errors")
            }
            FailureReason::CLIENT_CONNECT_HANDLER_THROTTLED => {
                Refusal::ConnectHandler("throttling_errors")
            }
            FailureReason::CLIENT_CONNECT_HANDLER_SERVICE_ERROR => {
                Refusal::ConnectHandler("failed_service_errors")
            }
            FailureReason::ADDRESS_POOL_EXHAUSTED
            | FailureReason::ENDPOINT_NOT_AVAILABLE
            | FailureReason::PEER_GONE
            | FailureReason::TCP_CLOSED
            | FailureReason::SERVER_SHUTDOWN
            | FailureReason::CONTROL_CHANNEL_FLOOD
            | FailureReason::HANDSHAKE_TIMEOUT
            | FailureReason::INTERNAL_ERROR
            | FailureReason::NO_COMMON_CIPHER
            | FailureReason::RENEGOTIATION_FAILED => Refusal::Other,
            _ => Refusal::Authentication,
        }
    }
}

/// The metrics of this node: one [`EndpointMetrics`] per running endpoint.
#[derive(Debug)]
pub struct Metrics {
    node: String,
    auth_failures: Family<EndpointLabels, Counter>,
    handshakes: Family<EndpointLabels, Counter>,
    handshake_seconds: HistogramFamily,
    handler_errors: Family<HandlerLabels, Counter>,
    ingress_bytes: Family<EndpointLabels, Counter>,
    egress_bytes: Family<EndpointLabels, Counter>,
    ingress_packets: Family<EndpointLabels, Counter>,
    egress_packets: Family<EndpointLabels, Counter>,
    dataplane: Family<DataplaneLabels, Gauge>,
    nat_entries: Family<EndpointLabels, Gauge>,
}

impl Metrics {
    /// The metrics of node `node`.
    pub fn new(node: &str) -> Arc<Metrics> {
        Arc::new(Metrics {
            node: node.to_string(),
            auth_failures: Family::default(),
            handshakes: Family::default(),
            handshake_seconds: Family::new_with_constructor(handshake_histogram),
            handler_errors: Family::default(),
            ingress_bytes: Family::default(),
            egress_bytes: Family::default(),
            ingress_packets: Family::default(),
            egress_packets: Family::default(),
            dataplane: Family::default(),
            nat_entries: Family::default(),
        })
    }

    /// The node these metrics are labelled with.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The handle a running endpoint counts into.
    pub fn endpoint(self: &Arc<Self>, endpoint_id: &str) -> Arc<EndpointMetrics> {
        Arc::new(EndpointMetrics {
            metrics: Arc::clone(self),
            labels: EndpointLabels {
                endpoint: endpoint_id.to_string(),
                node: self.node.clone(),
            },
            last: Mutex::new(HashMap::new()),
        })
    }

    /// The OpenMetrics text of a scrape: what running endpoints counted, and `stored`, what the
    /// database says now.
    pub fn render(&self, stored: &[StoredEndpoint]) -> String {
        let mut r = Registry::with_prefix("cvpn");
        r.register(
            "authentication_failures",
            "Connection attempts refused for their credentials (AWS AuthenticationFailures)",
            self.auth_failures.clone(),
        );
        r.register(
            "handshakes",
            "Clients admitted: handshake, authentication and address done",
            self.handshakes.clone(),
        );
        r.register(
            "handshake_seconds",
            "Time from a client's first packet to its admission",
            self.handshake_seconds.clone(),
        );
        r.register(
            "client_connect_handler_errors",
            "Client connect handler failures by AWS kind (timeouts, invalid_responses, other_execution_errors, throttling_errors, denied_connections, failed_service_errors)",
            self.handler_errors.clone(),
        );
        r.register(
            "ingress_bytes",
            "Bytes received from clients (AWS IngressBytes)",
            self.ingress_bytes.clone(),
        );
        r.register(
            "egress_bytes",
            "Bytes sent to clients (AWS EgressBytes)",
            self.egress_bytes.clone(),
        );
        r.register(
            "ingress_packets",
            "Packets received from clients (AWS IngressPackets)",
            self.ingress_packets.clone(),
        );
        r.register(
            "egress_packets",
            "Packets sent to clients (AWS EgressPackets)",
            self.egress_packets.clone(),
        );
        r.register(
            "dataplane_packets",
            "The kernel programs' counters by name since the endpoint started (dropped_* are drops by reason)",
            self.dataplane.clone(),
        );
        r.register(
            "nat_entries",
            "NAT translations in the endpoint's kernel table",
            self.nat_entries.clone(),
        );
        let active = Family::<EndpointLabels, Gauge>::default();
        let downloads = Family::<EndpointLabels, Counter>::default();
        let crl_days =
            Family::<EndpointLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for s in stored {
            let l = EndpointLabels {
                endpoint: s.endpoint_id.clone(),
                node: self.node.clone(),
            };
            active
                .get_or_create(&l)
                .set(i64::try_from(s.active_connections).unwrap_or(i64::MAX));
            downloads.get_or_create(&l).inc_by(s.portal_downloads);
            if let Some(d) = s.crl_days_to_expiry {
                crl_days.get_or_create(&l).set(d);
            }
        }
        r.register(
            "active_connections",
            "Active client connections held by this node (AWS ActiveConnectionsCount)",
            active,
        );
        r.register(
            "self_service_portal_client_configuration_downloads",
            "Profiles downloaded from the self-service portal (AWS SelfServicePortalClientConfigurationDownloads)",
            downloads,
        );
        r.register(
            "crl_days_to_expiry",
            "Days until the imported CRL's next update (AWS CrlDaysToExpiry)",
            crl_days,
        );
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// What the database says about an endpoint at a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEndpoint {
    pub endpoint_id: String,
    /// Active connections this node holds.
    pub active_connections: u64,
    pub portal_downloads: u64,
    /// Days until the CRL's next update (negative: past it); None without a CRL.
    pub crl_days_to_expiry: Option<f64>,
}

/// Reads [`StoredEndpoint`]s for a scrape (blocking: call it off the event loop).
pub fn stored_endpoints(
    store: &crate::storage::Store,
    node: &str,
    now: i64,
) -> Result<Vec<StoredEndpoint>, crate::storage::ApiError> {
    let mut out = Vec::new();
    for ep in store.describe_endpoints(&[])? {
        if matches!(
            ep.status,
            crate::storage::EndpointStatus::Deleted | crate::storage::EndpointStatus::Deleting
        ) {
            continue;
        }
        let id = ep.client_vpn_endpoint_id.clone();
        let active = store
            .describe_connections(&crate::storage::ConnectionFilter {
                client_vpn_endpoint_id: Some(id.clone()),
                status: Some(crate::storage::ConnectionStatus::Active),
                ..Default::default()
            })?
            .into_iter()
            .filter(|c| c.node.as_deref().is_none_or(|n| n == node))
            .count();
        let crl_days = store
            .export_crl(&id)?
            .as_deref()
            .and_then(crl_next_update)
            .map(|next| (next - now) as f64 / 86_400.0);
        out.push(StoredEndpoint {
            endpoint_id: id,
            active_connections: active as u64,
            portal_downloads: ep.self_service_portal_downloads,
            crl_days_to_expiry: crl_days,
        });
    }
    Ok(out)
}

/// The earliest next update of the CRLs in a PEM text, seconds since 1970.
fn crl_next_update(pem: &str) -> Option<i64> {
    let mut earliest: Option<i64> = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).flatten() {
        use x509_parser::prelude::FromDer;
        if let Ok((_, crl)) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&block.contents)
        {
            if let Some(t) = crl.next_update() {
                let t = t.timestamp();
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        }
    }
    earliest
}

/// What one running endpoint counts into.
#[derive(Debug)]
pub struct EndpointMetrics {
    metrics: Arc<Metrics>,
    labels: EndpointLabels,
    /// The session counters last seen, by connection id: traffic is counted as their deltas.
    last: Mutex<HashMap<String, crate::dataplane::SessionCounters>>,
}

impl EndpointMetrics {
    /// A client was admitted `took` after its first packet.
    pub fn admitted(&self, took: Duration) {
        self.metrics.handshakes.get_or_create(&self.labels).inc();
        self.metrics
            .handshake_seconds
            .get_or_create(&self.labels)
            .observe(took.as_secs_f64());
    }

    /// A connection attempt failed for `reason` (the connection log's).
    pub fn refused(&self, reason: &str) {
        match Refusal::of(reason) {
            Refusal::Authentication => {
                self.metrics.auth_failures.get_or_create(&self.labels).inc();
            }
            Refusal::ConnectHandler(kind) => {
                self.metrics
                    .handler_errors
                    .get_or_create(&HandlerLabels {
                        endpoint: self.labels.endpoint.clone(),
                        node: self.labels.node.clone(),
                        kind: kind.to_string(),
                    })
                    .inc();
            }
            Refusal::Other => {}
        }
    }

    /// A connection's cumulative counters now (`ended`: the last time).
    pub fn traffic(
        &self,
        connection_id: &str,
        now: crate::dataplane::SessionCounters,
        ended: bool,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let before = if ended {
            last.remove(connection_id)
        } else {
            last.insert(connection_id.to_string(), now)
        }
        .unwrap_or_default();
        let m = &self.metrics;
        let l = &self.labels;
        m.ingress_bytes.get_or_create(l).inc_by(
            now.from_client_bytes
                .saturating_sub(before.from_client_bytes),
        );
        m.egress_bytes
            .get_or_create(l)
            .inc_by(now.to_client_bytes.saturating_sub(before.to_client_bytes));
        m.ingress_packets.get_or_create(l).inc_by(
            now.from_client_packets
                .saturating_sub(before.from_client_packets),
        );
        m.egress_packets.get_or_create(l).inc_by(
            now.to_client_packets
                .saturating_sub(before.to_client_packets),
        );
    }

    /// The kernel programs' counters and the NAT table's size now.
    pub fn dataplane(&self, counters: &BTreeMap<&'static str, u64>, nat_entries: u64) {
        for (name, v) in counters {
            self.metrics
                .dataplane
                .get_or_create(&DataplaneLabels {
                    endpoint: self.labels.endpoint.clone(),
                    node: self.labels.node.clone(),
                    counter: (*name).to_string(),
                })
                .set(i64::try_from(*v).unwrap_or(i64::MAX));
        }
        self.metrics
            .nat_entries
            .get_or_create(&self.labels)
            .set(i64::try_from(nat_entries).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classified_as_aws_counts_them() {
        assert_eq!(Refusal::of("bad-password"), Refusal::Authentication);
        assert_eq!(Refusal::of("certificate-revoked"), Refusal::Authentication);
        assert_eq!(
            Refusal::of(FailureReason::CLIENT_CONNECT_HANDLER_TIMED_OUT),
            Refusal::ConnectHandler("timeouts")
        );
        assert_eq!(
            Refusal::of(FailureReason::CLIENT_CONNECT_FAILED),
            Refusal::ConnectHandler("denied_connections")
        );
        assert_eq!(Refusal::of(FailureReason::SERVER_SHUTDOWN), Refusal::Other);
    }

    #[test]
    fn the_text_carries_each_family_with_endpoint_and_node_labels() {
        let m = Metrics::new("gw-a");
        let e = m.endpoint("cvpn-endpoint-0123456789abcdef0");
        e.admitted(Duration::from_millis(30));
        e.refused("bad-password");
        e.refused(FailureReason::CLIENT_CONNECT_HANDLER_TIMED_OUT);
        let c = |from_client_bytes, from_client_packets| crate::dataplane::SessionCounters {
            from_client_bytes,
            from_client_packets,
            ..Default::default()
        };
        e.traffic("c1", c(100, 2), false);
        e.traffic("c1", c(250, 5), false);
        e.traffic("c2", c(50, 1), false);
        e.traffic("c1", c(300, 6), true);
        let mut counters = BTreeMap::new();
        counters.insert("dropped_denied", 7u64);
        e.dataplane(&counters, 3);
        let text = m.render(&[StoredEndpoint {
            endpoint_id: "cvpn-endpoint-0123456789abcdef0".into(),
            active_connections: 1,
            portal_downloads: 4,
            crl_days_to_expiry: Some(29.5),
        }]);
        let l = "endpoint=\"cvpn-endpoint-0123456789abcdef0\",node=\"gw-a\"";
        for want in [
            format!("cvpn_ingress_bytes_total{{{l}}} 350"),
            format!("cvpn_ingress_packets_total{{{l}}} 7"),
            format!("cvpn_authentication_failures_total{{{l}}} 1"),
            format!("cvpn_client_connect_handler_errors_total{{{l},kind=\"timeouts\"}} 1"),
            format!("cvpn_handshakes_total{{{l}}} 1"),
            format!("cvpn_handshake_seconds_bucket{{le=\"0.05\",{l}}} 1"),
            format!("cvpn_dataplane_packets{{{l},counter=\"dropped_denied\"}} 7"),
            format!("cvpn_nat_entries{{{l}}} 3"),
            format!("cvpn_active_connections{{{l}}} 1"),
            format!("cvpn_self_service_portal_client_configuration_downloads_total{{{l}}} 4"),
            format!("cvpn_crl_days_to_expiry{{{l}}} 29.5"),
        ] {
            assert!(text.contains(&want), "{want} not in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// The Grafana dashboard in `packaging/` queries only metrics that exist.
    #[test]
    fn the_grafana_dashboard_names_only_metrics_we_serve() {
        let dashboard = include_str!("../../packaging/grafana-cvpn.json");
        let v: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        assert!(v["panels"].as_array().is_some_and(|p| p.len() >= 8));
        let m = Metrics::new("n");
        let e = m.endpoint("e");
        e.admitted(Duration::from_millis(1));
        e.refused("bad-password");
        e.refused(FailureReason::CLIENT_CONNECT_FAILED);
        e.traffic("c", Default::default(), false);
        e.dataplane(&BTreeMap::from([("dropped_denied", 1)]), 0);
        let text = m.render(&[StoredEndpoint {
            endpoint_id: "e".into(),
            active_connections: 0,
            portal_downloads: 0,
            crl_days_to_expiry: Some(1.0),
        }]);
        let mut names = 0;
        for (i, _) in dashboard.match_indices("cvpn_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with("cvpn_client_vpn") || name == "cvpn_" {
                continue; // the dashboard's own uid
            }
            names += 1;
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "the dashboard queries {name}, which /metrics does not serve:\n{text}"
            );
        }
        assert!(names >= 10, "{names}");
    }
}
