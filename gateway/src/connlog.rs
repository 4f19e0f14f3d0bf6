//! The connection log and the flow log: JSON lines in files of the data directory.
//!
//! * [`ConnectionLogEntry`]: one entry per connection attempt (successful or failed, including
//!   failed certificate handshakes, which AWS does not log) and one per connection end, with the
//!   field names and value conventions of AWS Client VPN's connection log, so dashboards and
//!   parsers written for AWS keep working: every value is a JSON string (numbers too, as AWS
//!   writes them), times are UTC `"YYYY-MM-DD HH:MM:SS"`, and `"NA"` stands for a value that is
//!   unknown or does not apply.
//! * [`FlowLogEntry`]: one entry per data-plane flow event (denied destination, no route, NAT
//!   table full, unknown source), in the same style, with the session's connection id and
//!   username when known.
//! * [`LogWriter`]: an append-only, size-rotated JSON-lines file (`connection.log`,
//!   `connection.log.1`, ...), optionally mirrored to stdout; [`ConnectionLogs`] bundles the two
//!   files the daemon writes.
//!
//! The daemon's side, per event:
//!
//! ```no_run
//! # use gateway::connlog::*;
//! # use gateway::config::Transport;
//! # use std::time::SystemTime;
//! # fn demo(event: &gateway::dataplane::FlowEventRecord) -> Result<(), LogError> {
//! let logs = ConnectionLogs::open("/var/lib/cvpn/logs", &LogOptions::default())?;
//! // At the first packet of a handshake:
//! let mut info = ConnectionInfo::new(
//!     "cvpn-connection-0123456789abcdef0", "cvpn-endpoint-0123456789abcdef0",
//!     Transport::Udp, "198.51.100.7:50096".parse().unwrap(), SystemTime::now());
//! // The handshake was refused (the reason from `protocol::session::Event::Refused`):
//! logs.connection(&ConnectionLogEntry::attempt_failed("certificate-revoked", &info, SystemTime::now()))?;
//! // ... or it succeeded and the client got an address:
//! info.client_ip = Some("10.0.1.2".parse().unwrap());
//! info.common_name = Some("client1".into());
//! logs.connection(&ConnectionLogEntry::attempt_succeeded(&info))?;
//! // At the end, with the counters read from the data plane:
//! let counters = TrafficCounters { ingress_bytes: 21017, egress_bytes: 16438, ingress_packets: 330, egress_packets: 325 };
//! logs.connection(&ConnectionLogEntry::reset(&info, &counters, SystemTime::now()))?;
//! // A flow event, with the session lookup done by the caller:
//! logs.flow(&FlowLogEntry::from_event("cvpn-endpoint-0123456789abcdef0", event, Some("cvpn-connection-0123456789abcdef0"), None))?;
//! # Ok(()) }
//! ```
//!
//! # Files, rotation and external changes
//!
//! [`LogWriter`] creates its directory (and missing parents) with mode 0700 and its file with
//! mode 0600; an existing directory keeps its mode. Each line is one `write(2)` on a file opened
//! with `O_APPEND`, under a mutex, so lines written through one writer are never interleaved or
//! torn, and nothing is buffered in the process (a line is in the kernel when `write_line`
//! returns; [`LogWriter::sync`] makes it durable). Before a line would take the file past the
//! configured size, the file is rotated: `NAME.{k-1}` → `NAME.{k}`, ..., `NAME` → `NAME.1`, a
//! new `NAME` is created, and what was `NAME.{keep}` is dropped. A single line longer than the
//! limit still goes, whole, into a file of its own. Before every line the writer `stat`s the
//! path: if the file was deleted, or renamed away by an external rotator (logrotate without
//! `copytruncate`), it creates a new one (and the directory, if that was removed too) and goes
//! on; lines are never written to a file that no longer has the name. Generations beyond `keep`
//! left by an earlier, larger setting are left alone.
//!
//! # Floods
//!
//! Failed attempts and flow events are what an outsider or a client can produce at will; left
//! alone, a flood of them would rotate the whole history out of the files. [`ConnectionLogs`]
//! therefore writes, per key — (endpoint, failure reason, client address) for failed attempts,
//! (endpoint, flow type, source, destination) for flow events — at most
//! [`RepeatLimits::per_interval`] lines per [`RepeatLimits::interval`], counts the others, and
//! then writes one summary line for them: the first suppressed entry with its type set to
//! `suppressed-repeats` and the fields `suppressed-count` (how many entries were not written),
//! `suppressed-since`, `suppressed-until` and `suppressed-scope` (`same-key`, or
//! `other-keys-table-full`, below). Summaries are written when the key's interval has ended, at
//! the next line of the log (or when the logs are dropped). The limiter keeps at most
//! [`RepeatLimits::table_size`] keys; when the table is full, new keys share one more slot with
//! the same allowance (so distinct sources get lines of their own up to that bound). Successful
//! attempts and connection ends are never suppressed.
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Transport;
use crate::dataplane::FlowEventRecord;

/// AWS's value for "unknown" or "does not apply".
pub const NA: &str = "NA";

/// The connection log's file name in the log directory.
pub const CONNECTION_LOG_FILE: &str = "connection.log";
/// The flow log's file name in the log directory.
pub const FLOW_LOG_FILE: &str = "flow.log";

// ---------------------------------------------------------------------------------------------
// Time

/// `t` as AWS writes times in the connection log: UTC, `"2026-11-24 16:35:01"` (seconds,
/// truncated). Times before 1970 are written as 1970-01-01 00:00:00.
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The wall-clock time of a `CLOCK_MONOTONIC` reading (what the kernel programs stamp flow
/// events with: `bpf_ktime_get_ns`), by the offset between the two clocks now.
pub fn monotonic_ns_to_system_time(monotonic_ns: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let wall = SystemTime::now();
    let mono_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    if monotonic_ns <= mono_now {
        wall.checked_sub(Duration::from_nanos(mono_now - monotonic_ns))
            .unwrap_or(UNIX_EPOCH)
    } else {
        wall + Duration::from_nanos(monotonic_ns - mono_now)
    }
}

fn na_or<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| NA.to_string())
}

fn na_or_nonempty(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => NA.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Connection log entries

/// `connection-log-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionLogType {
    /// A connection attempt, successful or not.
    ConnectionAttempt,
    /// The end of a connection (disconnect, termination, timeout), with its counters.
    ConnectionReset,
}

/// `connection-attempt-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptStatus {
    Successful,
    Failed,
    /// Not an attempt (`connection-reset` entries): `"NA"`.
    #[serde(rename = "NA")]
    NotApplicable,
}

/// Why a connection attempt failed: a short kebab-case code (the value of
/// `connection-attempt-failure-reason`) and optionally a free-text detail (written to the extra
/// field `connection-attempt-failure-detail`, so the AWS field keeps a small vocabulary that
/// dashboards can group by).
///
/// Converts from the daemon's reason strings (`protocol::session::Event::Refused`), which have
/// the form `"code"` or `"code (detail)"`: `"certificate-invalid (BadEncoding)"` becomes code
/// `certificate-invalid`, detail `BadEncoding`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureReason {
    pub code: String,
    pub detail: Option<String>,
}

impl FailureReason {
    // The reasons the handshake produces (`protocol::tls::refusal_reason`, `protocol::session`).
    pub const CERTIFICATE_EXPIRED: &'static str = "certificate-expired";
    pub const CERTIFICATE_NOT_YET_VALID: &'static str = "certificate-not-yet-valid";
    pub const CERTIFICATE_REVOKED: &'static str = "certificate-revoked";
    pub const CERTIFICATE_UNKNOWN_CA: &'static str = "certificate-unknown-ca";
    pub const CERTIFICATE_BAD_SIGNATURE: &'static str = "certificate-bad-signature";
    pub const CERTIFICATE_INVALID: &'static str = "certificate-invalid";
    pub const NO_CLIENT_CERTIFICATE: &'static str = "no-client-certificate";
    pub const TLS_INCOMPATIBLE: &'static str = "tls-incompatible";
    pub const TLS_ERROR: &'static str = "tls-error";
    pub const HANDSHAKE_TIMEOUT: &'static str = "handshake-timeout";
    /// A handshake whose client had gone quiet gave its place to a new one while the pending
    /// handshakes were at their bound (a flood of abandoned handshakes).
    pub const HANDSHAKE_STALLED: &'static str = "handshake-stalled";
    pub const INTERNAL_ERROR: &'static str = "internal-error";
    // AWS's client connect handler reasons, verbatim.
    /// The handler denied the connection (`allow: false`).
    pub const CLIENT_CONNECT_FAILED: &'static str = "client-connect-failed";
    pub const CLIENT_CONNECT_HANDLER_TIMED_OUT: &'static str = "client-connect-handler-timed-out";
    pub const CLIENT_CONNECT_HANDLER_OTHER_EXECUTION_ERROR: &'static str =
        "client-connect-handler-other-execution-error";
    pub const CLIENT_CONNECT_HANDLER_THROTTLED: &'static str = "client-connect-handler-throttled";
    pub const CLIENT_CONNECT_HANDLER_INVALID_RESPONSE: &'static str =
        "client-connect-handler-invalid-response";
    pub const CLIENT_CONNECT_HANDLER_SERVICE_ERROR: &'static str =
        "client-connect-handler-service-error";
    // The gateway's own.
    /// No free address in the client CIDR.
    pub const ADDRESS_POOL_EXHAUSTED: &'static str = "address-pool-exhausted";
    /// The endpoint has no target network (`pending-associate`) or is being deleted.
    pub const ENDPOINT_NOT_AVAILABLE: &'static str = "endpoint-not-available";
    /// The client offers no data cipher the endpoint allows.
    pub const NO_COMMON_CIPHER: &'static str = "no-common-cipher";
    /// The client stopped answering during the handshake (control packets unacknowledged).
    pub const PEER_GONE: &'static str = "peer-gone";
    /// The client closed its TCP connection before it was admitted.
    pub const TCP_CLOSED: &'static str = "tcp-closed";
    /// The client broke a bound of the control channel (unterminated text, a send queue it
    /// does not drain): the session is ended.
    pub const CONTROL_CHANNEL_FLOOD: &'static str = "control-channel-flood";
    /// A renegotiation failed (revoked or expired certificate, another certificate, stalled)
    /// and no new key came within the grace.
    pub const RENEGOTIATION_FAILED: &'static str = "renegotiation-failed";
    /// The daemon stopped before the client was admitted.
    pub const SERVER_SHUTDOWN: &'static str = "server-shutdown";

    /// A reason with a code only.
    pub fn new(code: impl Into<String>) -> Self {
        FailureReason {
            code: code.into(),
            detail: None,
        }
    }

    /// A reason with a code and a detail.
    pub fn with_detail(code: impl Into<String>, detail: impl Into<String>) -> Self {
        FailureReason {
            code: code.into(),
            detail: Some(detail.into()),
        }
    }

    /// Splits `"code (detail)"`; anything else is all code.
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        if let Some((code, rest)) = s.split_once(" (") {
            if let Some(detail) = rest.strip_suffix(')') {
                return FailureReason::with_detail(code.trim(), detail);
            }
        }
        FailureReason::new(s)
    }
}

impl From<&str> for FailureReason {
    fn from(s: &str) -> Self {
        FailureReason::parse(s)
    }
}

impl From<String> for FailureReason {
    fn from(s: String) -> Self {
        FailureReason::parse(&s)
    }
}

impl From<&String> for FailureReason {
    fn from(s: &String) -> Self {
        FailureReason::parse(s)
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{} ({d})", self.code),
            None => f.write_str(&self.code),
        }
    }
}

/// What the daemon knows about one connection; built once per session (at the first packet of
/// the handshake) and completed as the handshake goes. Unknown optional values are logged as
/// `"NA"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// `cvpn-connection-<17 hex>`.
    pub connection_id: String,
    /// `cvpn-endpoint-<17 hex>`.
    pub endpoint_id: String,
    pub transport: Transport,
    /// The client's real address (`device-ip`, `port`).
    pub device: SocketAddr,
    /// When the connection started (the first packet of the handshake).
    pub start_time: SystemTime,
    /// The tunnel address given to the client (`client-ip`), once allocated.
    pub client_ip: Option<Ipv4Addr>,
    /// The client certificate's common name, once the certificate was read. An empty common
    /// name is logged as `"NA"`.
    pub common_name: Option<String>,
    /// With user-based authentication.
    pub username: Option<String>,
    /// The client's platform (`IV_PLAT`: `win`, `mac`, `linux`, `ios`, `android`, ...).
    pub device_type: Option<String>,
    /// What the client connect handler returned, if there is one.
    pub posture_compliance_statuses: Vec<String>,
}

impl ConnectionInfo {
    /// The required fields; the others start unknown.
    pub fn new(
        connection_id: impl Into<String>,
        endpoint_id: impl Into<String>,
        transport: Transport,
        device: SocketAddr,
        start_time: SystemTime,
    ) -> Self {
        ConnectionInfo {
            connection_id: connection_id.into(),
            endpoint_id: endpoint_id.into(),
            transport,
            device,
            start_time,
            client_ip: None,
            common_name: None,
            username: None,
            device_type: None,
            posture_compliance_statuses: Vec::new(),
        }
    }

    pub fn with_client_ip(mut self, ip: Ipv4Addr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    pub fn with_common_name(mut self, cn: impl Into<String>) -> Self {
        self.common_name = Some(cn.into());
        self
    }

    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    pub fn with_device_type(mut self, device_type: impl Into<String>) -> Self {
        self.device_type = Some(device_type.into());
        self
    }
}

/// A connection's traffic: ingress = from the client, egress = to the client (AWS's
/// convention). re-export: the type lives in model ([`crate::model::Counters`], the one counter
/// type; `From<SessionCounters>` is there too).
pub type TrafficCounters = crate::model::Counters;

/// One connection log entry, field for field as AWS Client VPN writes it (in AWS's order), plus
/// `connection-attempt-failure-detail` (not an AWS field) at the end. Every value is a string
/// (`"NA"` when unknown), except `posture-compliance-statuses`, a list of strings as the client
/// connect handler returns it (empty when there is no handler).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConnectionLogEntry {
    pub connection_log_type: ConnectionLogType,
    pub connection_attempt_status: AttemptStatus,
    /// `"NA"` (AWS uses `assertion-received` for SAML re-authentication only).
    pub connection_reset_status: String,
    /// `"NA"` unless the attempt failed.
    pub connection_attempt_failure_reason: String,
    pub connection_id: String,
    pub client_vpn_endpoint_id: String,
    /// `"udp"` | `"tcp"`.
    pub transport_protocol: String,
    /// `"NA"` for a failed attempt (as AWS).
    pub connection_start_time: String,
    pub connection_last_update_time: String,
    /// The tunnel address; `"NA"` when none was given.
    pub client_ip: String,
    pub common_name: String,
    pub device_type: String,
    /// The client's real address.
    pub device_ip: String,
    /// The client's real port.
    pub port: String,
    pub ingress_bytes: String,
    pub egress_bytes: String,
    pub ingress_packets: String,
    pub egress_packets: String,
    /// `"NA"` unless this is a `connection-reset` entry.
    pub connection_end_time: String,
    pub posture_compliance_statuses: Vec<String>,
    pub username: String,
    /// End − start in whole seconds: `"0"` for a successful attempt, `"NA"` for a failed one.
    pub connection_duration_seconds: String,
    /// Not an AWS field: the detail of the failure reason, `"NA"` when there is none.
    pub connection_attempt_failure_detail: String,
    /// Not an AWS field: the gateway node that served the connection (`node_name`), `"NA"` for
    /// logs written without one. Set by [`ConnectionLogs`] as it writes the entry.
    #[serde(default = "na")]
    pub node: String,
}

fn na() -> String {
    NA.into()
}

impl ConnectionLogEntry {
    fn base(
        log_type: ConnectionLogType,
        status: AttemptStatus,
        info: &ConnectionInfo,
        last_update: SystemTime,
    ) -> Self {
        ConnectionLogEntry {
            connection_log_type: log_type,
            connection_attempt_status: status,
            connection_reset_status: NA.into(),
            connection_attempt_failure_reason: NA.into(),
            connection_id: info.connection_id.clone(),
            client_vpn_endpoint_id: info.endpoint_id.clone(),
            transport_protocol: info.transport.as_str().into(),
            connection_start_time: format_time(info.start_time),
            connection_last_update_time: format_time(last_update),
            client_ip: na_or(info.client_ip),
            common_name: na_or_nonempty(info.common_name.as_deref()),
            device_type: na_or_nonempty(info.device_type.as_deref()),
            device_ip: info.device.ip().to_canonical().to_string(),
            port: info.device.port().to_string(),
            ingress_bytes: "0".into(),
            egress_bytes: "0".into(),
            ingress_packets: "0".into(),
            egress_packets: "0".into(),
            connection_end_time: NA.into(),
            posture_compliance_statuses: info.posture_compliance_statuses.clone(),
            username: na_or_nonempty(info.username.as_deref()),
            connection_duration_seconds: "0".into(),
            connection_attempt_failure_detail: NA.into(),
            node: NA.into(),
        }
    }

    /// A successful attempt (the client is connected and has its address): start and last
    /// update are the connection's start time, counters `"0"`, end `"NA"`, duration `"0"`.
    pub fn attempt_succeeded(info: &ConnectionInfo) -> Self {
        Self::base(
            ConnectionLogType::ConnectionAttempt,
            AttemptStatus::Successful,
            info,
            info.start_time,
        )
    }

    /// A failed attempt at `at`: status `failed`, the reason's code (see [`FailureReason`]; a
    /// daemon reason string converts), start time `"NA"` (as AWS), last update `at`, counters
    /// `"0"`, end and duration `"NA"`. `client-ip` and `common-name` are whatever was known.
    pub fn attempt_failed(
        reason: impl Into<FailureReason>,
        info: &ConnectionInfo,
        at: SystemTime,
    ) -> Self {
        let reason = reason.into();
        let mut e = Self::base(
            ConnectionLogType::ConnectionAttempt,
            AttemptStatus::Failed,
            info,
            at,
        );
        e.connection_attempt_failure_reason = if reason.code.is_empty() {
            "unknown".into()
        } else {
            reason.code
        };
        e.connection_attempt_failure_detail = na_or_nonempty(reason.detail.as_deref());
        e.connection_start_time = NA.into();
        e.connection_duration_seconds = NA.into();
        e
    }

    /// The end of a connection at `end`, with its counters: status `"NA"`, end and last update
    /// `end`, duration `end − start` in seconds.
    pub fn reset(info: &ConnectionInfo, counters: &TrafficCounters, end: SystemTime) -> Self {
        let mut e = Self::base(
            ConnectionLogType::ConnectionReset,
            AttemptStatus::NotApplicable,
            info,
            end,
        );
        e.ingress_bytes = counters.ingress_bytes.to_string();
        e.egress_bytes = counters.egress_bytes.to_string();
        e.ingress_packets = counters.ingress_packets.to_string();
        e.egress_packets = counters.egress_packets.to_string();
        e.connection_end_time = format_time(end);
        let secs = end
            .duration_since(info.start_time)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        e.connection_duration_seconds = secs.to_string();
        e
    }

    /// The entry as one JSON line, without the newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings always serializes")
    }
}

// ---------------------------------------------------------------------------------------------
// Flow log entries

/// One flow log entry: a data-plane event about one packet of a flow. Every value is a string,
/// `"NA"` when unknown or not applicable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FlowLogEntry {
    /// `denied` (no authorization rule allows the destination), `no-route`, `unknown-source`
    /// (a source address that belongs to no session), `nat-table-full`,
    /// `security-group-denied` (the target network's security groups refused it), or
    /// `unknown`.
    pub flow_log_type: String,
    /// When the data plane saw the packet (UTC, `"YYYY-MM-DD HH:MM:SS"`).
    pub timestamp: String,
    pub client_vpn_endpoint_id: String,
    /// The session's connection; `"NA"` for `unknown-source` or an ended session.
    pub connection_id: String,
    pub username: String,
    /// `tcp`, `udp`, `icmp`, or the IP protocol number.
    pub protocol: String,
    pub source_ip: String,
    /// `"NA"` unless the protocol is TCP or UDP.
    pub source_port: String,
    pub destination_ip: String,
    /// `"NA"` unless the protocol is TCP or UDP.
    pub destination_port: String,
}

/// An IP protocol number's name in the flow log.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

impl FlowLogEntry {
    /// The entry for `event` of endpoint `endpoint_id`, timed by the event's monotonic
    /// timestamp. `connection_id` and `username` come from the caller's session table (the
    /// event's `session_id`); `None` is logged as `"NA"`.
    pub fn from_event(
        endpoint_id: &str,
        event: &FlowEventRecord,
        connection_id: Option<&str>,
        username: Option<&str>,
    ) -> Self {
        Self::from_event_at(
            endpoint_id,
            event,
            connection_id,
            username,
            monotonic_ns_to_system_time(event.timestamp_ns),
        )
    }

    /// As [`FlowLogEntry::from_event`], with the time given.
    pub fn from_event_at(
        endpoint_id: &str,
        event: &FlowEventRecord,
        connection_id: Option<&str>,
        username: Option<&str>,
        at: SystemTime,
    ) -> Self {
        let ports = matches!(event.protocol, 6 | 17);
        let port = |p: u16| if ports { p.to_string() } else { NA.to_string() };
        FlowLogEntry {
            flow_log_type: event.kind.as_str().into(),
            timestamp: format_time(at),
            client_vpn_endpoint_id: endpoint_id.into(),
            connection_id: na_or_nonempty(connection_id),
            username: na_or_nonempty(username),
            protocol: protocol_name(event.protocol),
            source_ip: IpAddr::V4(event.src).to_string(),
            source_port: port(event.src_port),
            destination_ip: IpAddr::V4(event.dst).to_string(),
            destination_port: port(event.dst_port),
        }
    }

    /// The entry as one JSON line, without the newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings always serializes")
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Errors of the log writer; each names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create log directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open log file {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot write log file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot rotate log file {} to {}: {source}", from.display(), to.display())]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot sync log file {}: {source}", path.display())]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot copy log line of {} to stdout: {source}", path.display())]
    Stdout { path: PathBuf, source: io::Error },
    #[error("invalid log file name {name:?} (a plain file name is required)")]
    InvalidName { name: String },
}

/// Rotation and output settings, shared by the connection and flow logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogOptions {
    /// Rotate before a line would take the file past this size (bytes). Default 10 MiB.
    pub max_file_bytes: u64,
    /// Rotated generations kept (`NAME.1` newest ... `NAME.{keep}` oldest). Default 5; 0 keeps
    /// none (the full file is deleted).
    pub keep_files: usize,
    /// Also write every line to stdout. Default false.
    pub stdout: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            max_file_bytes: 10 * 1024 * 1024,
            keep_files: 5,
            stdout: false,
        }
    }
}

enum Mirror {
    None,
    Stdout,
    #[cfg(test)]
    Writer(Box<dyn Write + Send>),
}

struct Inner {
    file: Option<File>,
    /// (st_dev, st_ino) of the open file.
    id: (u64, u64),
    mirror: Mirror,
}

/// An append-only JSON-lines file, size-rotated, optionally mirrored to stdout. `Send + Sync`:
/// share it (e.g. in an `Arc`) between threads. See the module docs for the file behaviour.
pub struct LogWriter {
    dir: PathBuf,
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    inner: Mutex<Inner>,
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogWriter")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .field("keep", &self.keep)
            .finish()
    }
}

fn create_dir(dir: &Path) -> Result<(), LogError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| LogError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

impl LogWriter {
    /// Opens (creating as needed) `dir/file_name` for appending.
    pub fn open(
        dir: impl AsRef<Path>,
        file_name: &str,
        options: &LogOptions,
    ) -> Result<Self, LogError> {
        let mirror = if options.stdout {
            Mirror::Stdout
        } else {
            Mirror::None
        };
        Self::open_with(dir.as_ref(), file_name, options, mirror)
    }

    fn open_with(
        dir: &Path,
        file_name: &str,
        options: &LogOptions,
        mirror: Mirror,
    ) -> Result<Self, LogError> {
        if file_name.is_empty() || file_name.contains('/') || file_name == "." || file_name == ".."
        {
            return Err(LogError::InvalidName {
                name: file_name.into(),
            });
        }
        create_dir(dir)?;
        let w = LogWriter {
            dir: dir.to_path_buf(),
            path: dir.join(file_name),
            max_bytes: options.max_file_bytes,
            keep: options.keep_files,
            inner: Mutex::new(Inner {
                file: None,
                id: (0, 0),
                mirror,
            }),
        };
        {
            let mut inner = w.lock();
            w.reopen(&mut inner)?;
        }
        Ok(w)
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of rotated generation `n` (1 = newest).
    pub fn generation_path(&self, n: usize) -> PathBuf {
        generation(&self.path, n)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves nothing half-done that matters: go on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reopen(&self, inner: &mut Inner) -> Result<(), LogError> {
        inner.file = None;
        let open = || {
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)
        };
        let file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The directory itself was removed: make it again.
                create_dir(&self.dir)?;
                open().map_err(|source| LogError::Open {
                    path: self.path.clone(),
                    source,
                })?
            }
            Err(source) => {
                return Err(LogError::Open {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let m = file.metadata().map_err(|source| LogError::Open {
            path: self.path.clone(),
            source,
        })?;
        inner.id = (m.dev(), m.ino());
        inner.file = Some(file);
        Ok(())
    }

    /// The current size of the file under the name, reopening first if the name no longer
    /// refers to the open file (deleted or renamed away).
    fn current_size(&self, inner: &mut Inner) -> Result<u64, LogError> {
        if inner.file.is_some() {
            match fs::metadata(&self.path) {
                Ok(m) if (m.dev(), m.ino()) == inner.id => return Ok(m.len()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LogError::Write {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        self.reopen(inner)?;
        let file = inner.file.as_ref().expect("reopen sets the file");
        file.metadata()
            .map(|m| m.len())
            .map_err(|source| LogError::Write {
                path: self.path.clone(),
                source,
            })
    }

    fn rotate(&self, inner: &mut Inner) -> Result<(), LogError> {
        inner.file = None;
        let rename = |from: &Path, to: &Path| match fs::rename(from, to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LogError::Rotate {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                source,
            }),
        };
        if self.keep == 0 {
            match fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LogError::Rotate {
                        from: self.path.clone(),
                        to: PathBuf::from("/dev/null"),
                        source,
                    })
                }
            }
        } else {
            for n in (1..self.keep).rev() {
                rename(&generation(&self.path, n), &generation(&self.path, n + 1))?;
            }
            rename(&self.path, &generation(&self.path, 1))?;
        }
        self.reopen(inner)
    }

    /// Appends one line (a newline is added; newlines inside `line` are replaced by spaces so
    /// that one record stays one line), rotating first if needed, then copies it to stdout if
    /// so configured. The file write happens even if the stdout copy then fails.
    pub fn write_line(&self, line: &str) -> Result<(), LogError> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        if line.contains(['\n', '\r']) {
            buf.extend(
                line.bytes()
                    .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
            );
        } else {
            buf.extend_from_slice(line.as_bytes());
        }
        buf.push(b'\n');

        let mut inner = self.lock();
        let size = self.current_size(&mut inner)?;
        if size > 0 && size.saturating_add(buf.len() as u64) > self.max_bytes {
            self.rotate(&mut inner)?;
        }
        let file = inner
            .file
            .as_mut()
            .expect("current_size and rotate leave a file open");
        if let Err(source) = file.write_all(&buf) {
            // Start from a fresh open next time (e.g. after ENOSPC or EIO).
            inner.file = None;
            return Err(LogError::Write {
                path: self.path.clone(),
                source,
            });
        }
        let mirrored = match &mut inner.mirror {
            Mirror::None => Ok(()),
            Mirror::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&buf).and_then(|()| out.flush())
            }
            #[cfg(test)]
            Mirror::Writer(w) => w.write_all(&buf).and_then(|()| w.flush()),
        };
        mirrored.map_err(|source| LogError::Stdout {
            path: self.path.clone(),
            source,
        })
    }

    /// Serializes `entry` as one JSON line and appends it.
    pub fn write_entry<T: Serialize>(&self, entry: &T) -> Result<(), LogError> {
        let line = serde_json::to_string(entry).map_err(|e| LogError::Write {
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        self.write_line(&line)
    }

    /// `fsync`s the current file (lines are in the kernel as soon as they are written; this
    /// makes them durable).
    pub fn sync(&self) -> Result<(), LogError> {
        let inner = self.lock();
        match &inner.file {
            Some(f) => f.sync_all().map_err(|source| LogError::Sync {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

fn generation(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// How [`ConnectionLogs`] limits repeated failed attempts and flow events (see the module
/// documentation, "Floods").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepeatLimits {
    /// Lines written per key and interval; the rest are counted.
    pub per_interval: u32,
    /// The interval.
    pub interval: Duration,
    /// Keys tracked at once; past it, new keys share one slot.
    pub table_size: usize,
}

impl Default for RepeatLimits {
    fn default() -> Self {
        RepeatLimits {
            per_interval: 10,
            interval: Duration::from_secs(60),
            table_size: 1024,
        }
    }
}

/// One key's interval.
struct Slot {
    window_start: Instant,
    written: u32,
    suppressed: u64,
    /// When the first suppressed entry came, and that entry (the summary's template).
    since: SystemTime,
    template: String,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            window_start: now,
            written: 0,
            suppressed: 0,
            since: UNIX_EPOCH,
            template: String::new(),
        }
    }

    /// The summary line of what this slot suppressed, if anything; then resets the count.
    fn take_summary(&mut self, type_field: &str, scope: &str) -> Option<String> {
        if self.suppressed == 0 {
            return None;
        }
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&self.template).unwrap_or_default();
        v.insert(type_field.into(), "suppressed-repeats".into());
        v.insert(
            "suppressed-count".into(),
            self.suppressed.to_string().into(),
        );
        v.insert("suppressed-since".into(), format_time(self.since).into());
        v.insert(
            "suppressed-until".into(),
            format_time(SystemTime::now()).into(),
        );
        v.insert("suppressed-scope".into(), scope.into());
        self.suppressed = 0;
        self.template = String::new();
        Some(serde_json::Value::Object(v).to_string())
    }
}

/// Counts lines per key and interval, in a table of bounded size.
struct RepeatLimiter {
    limits: RepeatLimits,
    /// `connection-log-type` or `flow-log-type`: the summary's type field.
    type_field: &'static str,
    slots: HashMap<String, Slot>,
    /// Keys that found the table full.
    overflow: Option<Slot>,
    next_sweep: Option<Instant>,
}

const SCOPE_KEY: &str = "same-key";
const SCOPE_OVERFLOW: &str = "other-keys-table-full";

impl RepeatLimiter {
    fn new(limits: RepeatLimits, type_field: &'static str) -> Self {
        RepeatLimiter {
            limits,
            type_field,
            slots: HashMap::new(),
            overflow: None,
            next_sweep: None,
        }
    }

    /// Whether the line of `key` may be written now; summaries due are added to `summaries`
    /// (to be written first).
    fn admit(&mut self, key: &str, line: &str, now: Instant, summaries: &mut Vec<String>) -> bool {
        self.sweep(now, summaries);
        let (per, interval, type_field) = (
            self.limits.per_interval,
            self.limits.interval,
            self.type_field,
        );
        let (slot, scope) =
            if self.slots.contains_key(key) || self.slots.len() < self.limits.table_size {
                let slot = self
                    .slots
                    .entry(key.to_string())
                    .or_insert_with(|| Slot::new(now));
                (slot, SCOPE_KEY)
            } else {
                let slot = self.overflow.get_or_insert_with(|| Slot::new(now));
                (slot, SCOPE_OVERFLOW)
            };
        if now.saturating_duration_since(slot.window_start) >= interval {
            summaries.extend(slot.take_summary(type_field, scope));
            *slot = Slot::new(now);
        }
        if slot.written < per {
            slot.written += 1;
            return true;
        }
        if slot.suppressed == 0 {
            slot.since = SystemTime::now();
            slot.template = line.to_string();
        }
        slot.suppressed += 1;
        false
    }

    /// At most once per interval: the keys whose interval has ended leave the table (making
    /// room), with their summaries.
    fn sweep(&mut self, now: Instant, summaries: &mut Vec<String>) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + self.limits.interval);
        let interval = self.limits.interval;
        let type_field = self.type_field;
        let ended = |s: &Slot| now.saturating_duration_since(s.window_start) >= interval;
        self.slots.retain(|_, slot| {
            if ended(slot) {
                summaries.extend(slot.take_summary(type_field, SCOPE_KEY));
                false
            } else {
                true
            }
        });
        if let Some(slot) = &mut self.overflow {
            if ended(slot) {
                summaries.extend(slot.take_summary(type_field, SCOPE_OVERFLOW));
                self.overflow = None;
            }
        }
    }

    /// Every pending summary, now (the counts restart).
    fn flush(&mut self, summaries: &mut Vec<String>) {
        let type_field = self.type_field;
        for slot in self.slots.values_mut() {
            summaries.extend(slot.take_summary(type_field, SCOPE_KEY));
        }
        if let Some(slot) = &mut self.overflow {
            summaries.extend(slot.take_summary(type_field, SCOPE_OVERFLOW));
        }
    }
}

/// A log writer with its repeat limiter.
struct Limited {
    writer: LogWriter,
    limiter: Mutex<RepeatLimiter>,
}

impl Limited {
    fn limiter(&self) -> MutexGuard<'_, RepeatLimiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `line` unless its key is over its allowance; writes due summaries first.
    fn write(&self, key: Option<&str>, line: &str, now: Instant) -> Result<(), LogError> {
        let mut summaries = Vec::new();
        let admitted = {
            let mut limiter = self.limiter();
            match key {
                Some(key) => limiter.admit(key, line, now, &mut summaries),
                None => {
                    limiter.sweep(now, &mut summaries);
                    true
                }
            }
        };
        for s in &summaries {
            self.writer.write_line(s)?;
        }
        if admitted {
            self.writer.write_line(line)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), LogError> {
        let mut summaries = Vec::new();
        self.limiter().flush(&mut summaries);
        for s in &summaries {
            self.writer.write_line(s)?;
        }
        Ok(())
    }
}

/// The daemon's two logs in one directory: `connection.log` and `flow.log`, with repeats of
/// failed attempts and flow events limited (see the module documentation, "Floods").
pub struct ConnectionLogs {
    connection: Limited,
    flow: Limited,
    /// The node whose entries these are, written into each connection entry.
    node: Option<String>,
}

impl fmt::Debug for ConnectionLogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLogs")
            .field("connection", &self.connection.writer)
            .field("flow", &self.flow.writer)
            .finish_non_exhaustive()
    }
}

impl ConnectionLogs {
    /// Opens (creating as needed) `dir/connection.log` and `dir/flow.log`, with the default
    /// [`RepeatLimits`].
    pub fn open(dir: impl AsRef<Path>, options: &LogOptions) -> Result<Self, LogError> {
        Self::open_with_limits(dir, options, RepeatLimits::default())
    }

    /// [`ConnectionLogs::open`] with other repeat limits.
    pub fn open_with_limits(
        dir: impl AsRef<Path>,
        options: &LogOptions,
        limits: RepeatLimits,
    ) -> Result<Self, LogError> {
        let dir = dir.as_ref();
        let limited = |name, type_field| -> Result<Limited, LogError> {
            Ok(Limited {
                writer: LogWriter::open(dir, name, options)?,
                limiter: Mutex::new(RepeatLimiter::new(limits, type_field)),
            })
        };
        Ok(ConnectionLogs {
            connection: limited(CONNECTION_LOG_FILE, "connection-log-type")?,
            flow: limited(FLOW_LOG_FILE, "flow-log-type")?,
            node: None,
        })
    }

    /// Names the node in every connection entry written from now on (the `node` field).
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Appends a connection log entry. Failed attempts are limited per (endpoint, reason,
    /// client address); successful attempts and connection ends are always written.
    pub fn connection(&self, entry: &ConnectionLogEntry) -> Result<(), LogError> {
        self.connection_at(entry, Instant::now())
    }

    fn connection_at(&self, entry: &ConnectionLogEntry, now: Instant) -> Result<(), LogError> {
        let key = (entry.connection_attempt_status == AttemptStatus::Failed).then(|| {
            format!(
                "{}|{}|{}",
                entry.client_vpn_endpoint_id,
                entry.connection_attempt_failure_reason,
                entry.device_ip
            )
        });
        let line = match &self.node {
            Some(node) if entry.node == NA => {
                let mut named = entry.clone();
                named.node.clone_from(node);
                named.to_json_line()
            }
            _ => entry.to_json_line(),
        };
        self.connection.write(key.as_deref(), &line, now)
    }

    /// Appends a flow log entry, limited per (endpoint, type, source, destination).
    pub fn flow(&self, entry: &FlowLogEntry) -> Result<(), LogError> {
        self.flow_at(entry, Instant::now())
    }

    fn flow_at(&self, entry: &FlowLogEntry, now: Instant) -> Result<(), LogError> {
        let key = format!(
            "{}|{}|{}|{}",
            entry.client_vpn_endpoint_id,
            entry.flow_log_type,
            entry.source_ip,
            entry.destination_ip
        );
        self.flow.write(Some(&key), &entry.to_json_line(), now)
    }

    /// Writes the summaries of everything suppressed so far (e.g. before a shutdown).
    pub fn flush_suppressed(&self) -> Result<(), LogError> {
        self.connection.flush()?;
        self.flow.flush()
    }

    pub fn connection_writer(&self) -> &LogWriter {
        &self.connection.writer
    }

    pub fn flow_writer(&self) -> &LogWriter {
        &self.flow.writer
    }

    /// Writes pending summaries, then `fsync`s both files.
    pub fn sync(&self) -> Result<(), LogError> {
        self.flush_suppressed()?;
        self.connection.writer.sync()?;
        self.flow.writer.sync()
    }
}

impl Drop for ConnectionLogs {
    fn drop(&mut self) {
        // What was suppressed is said before the logs close.
        let _ = self.flush_suppressed();
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::FlowEventKind;
    use crate::model::SessionCounters;
    use serde_json::Value;
    use std::collections::{BTreeMap, BTreeSet};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex as StdMutex};

    /// The AWS fields, in AWS's order, plus ours.
    const CONNECTION_FIELDS: &[&str] = &[
        "connection-log-type",
        "connection-attempt-status",
        "connection-reset-status",
        "connection-attempt-failure-reason",
        "connection-id",
        "client-vpn-endpoint-id",
        "transport-protocol",
        "connection-start-time",
        "connection-last-update-time",
        "client-ip",
        "common-name",
        "device-type",
        "device-ip",
        "port",
        "ingress-bytes",
        "egress-bytes",
        "ingress-packets",
        "egress-packets",
        "connection-end-time",
        "posture-compliance-statuses",
        "username",
        "connection-duration-seconds",
        "connection-attempt-failure-detail",
        "node",
    ];

    const FLOW_FIELDS: &[&str] = &[
        "flow-log-type",
        "timestamp",
        "client-vpn-endpoint-id",
        "connection-id",
        "username",
        "protocol",
        "source-ip",
        "source-port",
        "destination-ip",
        "destination-port",
    ];

    const CONN_ID: &str = "cvpn-connection-0a1b2c3d4e5f60718";
    const ENDPOINT_ID: &str = "cvpn-endpoint-0f2d58d4869ece501";

    /// 2026-11-24 16:35:01 UTC.
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_538_101)
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "cvpn-connlog-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo::new(
            CONN_ID,
            ENDPOINT_ID,
            Transport::Udp,
            "72.21.198.66:5567".parse().unwrap(),
            t0(),
        )
    }

    /// Parses a line back and checks that it has exactly `fields`, in that order, every value
    /// a string except the listed array fields.
    fn parse_object(line: &str, fields: &[&str]) -> serde_json::Map<String, Value> {
        assert!(!line.contains('\n'), "one line: {line}");
        let v: Value = serde_json::from_str(line).unwrap();
        let obj = v.as_object().unwrap().clone();
        // serde_json's Map is sorted unless preserve_order: compare as sets, order separately.
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = fields.iter().copied().collect();
        assert_eq!(keys, want, "field set of {line}");
        let mut positions = fields
            .iter()
            .map(|f| line.find(&format!("\"{f}\":")).expect(f));
        let mut prev = positions.next().unwrap();
        for p in positions {
            assert!(p > prev, "fields out of AWS order in {line}");
            prev = p;
        }
        for (k, v) in &obj {
            if k == "posture-compliance-statuses" {
                assert!(v.is_array(), "{k} is a list");
            } else {
                assert!(v.is_string(), "{k} is a string as AWS writes it, got {v}");
            }
        }
        obj
    }

    fn check(obj: &serde_json::Map<String, Value>, want: &[(&str, &str)]) {
        for (k, v) in want {
            assert_eq!(obj.get(*k).and_then(Value::as_str), Some(*v), "field {k}");
        }
    }

    // --- time ------------------------------------------------------------------------------

    #[test]
    fn connlog_time_format_matches_aws() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01 00:00:00");
        assert_eq!(format_time(t0()), "2026-11-24 16:35:01");
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(1_585_255_035)),
            "2020-03-26 20:37:15"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14 22:13:20"
        );
        // Leap days, century rules, end of year, sub-second truncation.
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29 00:00:00"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "2024-02-29 23:59:59"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(4_107_542_400)),
            "2100-03-01 00:00:00"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_millis(1_704_067_199_999)),
            "2023-12-31 23:59:59"
        );
        assert_eq!(
            format_time(UNIX_EPOCH - Duration::from_secs(10)),
            "1970-01-01 00:00:00"
        );
    }

    #[test]
    fn connlog_civil_from_days_round_trips_every_day_for_400_years() {
        // Cross-check against a naive day-by-day calendar walk.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for days in 0..146_097i64 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn connlog_monotonic_conversion_is_close_to_now() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let now = SystemTime::now();
        let t = monotonic_ns_to_system_time(mono.saturating_sub(5_000_000_000));
        let back = now.duration_since(t).unwrap();
        assert!(
            back >= Duration::from_secs(4) && back <= Duration::from_secs(6),
            "{back:?}"
        );
    }

    // --- connection entries ----------------------------------------------------------------

    #[test]
    fn connlog_successful_attempt_has_every_aws_field() {
        let i = info()
            .with_client_ip("172.1.0.162".parse().unwrap())
            .with_common_name("client1.domain.tld")
            .with_device_type("linux");
        let e = ConnectionLogEntry::attempt_succeeded(&i);
        let line = e.to_json_line();
        let obj = parse_object(&line, CONNECTION_FIELDS);
        check(
            &obj,
            &[
                ("connection-log-type", "connection-attempt"),
                ("connection-attempt-status", "successful"),
                ("connection-reset-status", "NA"),
                ("connection-attempt-failure-reason", "NA"),
                ("connection-id", CONN_ID),
                ("client-vpn-endpoint-id", ENDPOINT_ID),
                ("transport-protocol", "udp"),
                ("connection-start-time", "2026-11-24 16:35:01"),
                ("connection-last-update-time", "2026-11-24 16:35:01"),
                ("client-ip", "172.1.0.162"),
                ("common-name", "client1.domain.tld"),
                ("device-type", "linux"),
                ("device-ip", "72.21.198.66"),
                ("port", "5567"),
                ("ingress-bytes", "0"),
                ("egress-bytes", "0"),
                ("ingress-packets", "0"),
                ("egress-packets", "0"),
                ("connection-end-time", "NA"),
                ("username", "NA"),
                ("connection-duration-seconds", "0"),
                ("connection-attempt-failure-detail", "NA"),
            ],
        );
        assert_eq!(obj["posture-compliance-statuses"], serde_json::json!([]));
        // Typed round trip.
        let back: ConnectionLogEntry = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn connlog_failed_certificate_attempt() {
        // The handshake failed before an address was given; the certificate was read.
        let i = info().with_common_name("mallory");
        let e = ConnectionLogEntry::attempt_failed(
            "certificate-revoked",
            &i,
            t0() + Duration::from_secs(2),
        );
        let obj = parse_object(&e.to_json_line(), CONNECTION_FIELDS);
        check(
            &obj,
            &[
                ("connection-log-type", "connection-attempt"),
                ("connection-attempt-status", "failed"),
                ("connection-reset-status", "NA"),
                ("connection-attempt-failure-reason", "certificate-revoked"),
                ("connection-id", CONN_ID),
                ("client-vpn-endpoint-id", ENDPOINT_ID),
                ("transport-protocol", "udp"),
                ("connection-start-time", "NA"),
                ("connection-last-update-time", "2026-11-24 16:35:03"),
                ("client-ip", "NA"),
                ("common-name", "mallory"),
                ("device-type", "NA"),
                ("device-ip", "72.21.198.66"),
                ("port", "5567"),
                ("ingress-bytes", "0"),
                ("egress-bytes", "0"),
                ("ingress-packets", "0"),
                ("egress-packets", "0"),
                ("connection-end-time", "NA"),
                ("username", "NA"),
                ("connection-duration-seconds", "NA"),
                ("connection-attempt-failure-detail", "NA"),
            ],
        );
    }

    #[test]
    fn connlog_failure_reasons_from_daemon_strings() {
        let at = t0();
        for (raw, code, detail) in [
            ("certificate-expired", "certificate-expired", "NA"),
            ("certificate-unknown-ca", "certificate-unknown-ca", "NA"),
            ("handshake-timeout", "handshake-timeout", "NA"),
            (
                "certificate-invalid (BadEncoding)",
                "certificate-invalid",
                "BadEncoding",
            ),
            (
                "tls-error (peer sent no certificates (x))",
                "tls-error",
                "peer sent no certificates (x)",
            ),
            (
                FailureReason::CLIENT_CONNECT_FAILED,
                "client-connect-failed",
                "NA",
            ),
            ("", "unknown", "NA"),
        ] {
            let e = ConnectionLogEntry::attempt_failed(raw, &info(), at);
            let obj = parse_object(&e.to_json_line(), CONNECTION_FIELDS);
            check(
                &obj,
                &[
                    ("connection-attempt-status", "failed"),
                    ("connection-attempt-failure-reason", code),
                    ("connection-attempt-failure-detail", detail),
                    ("common-name", "NA"),
                ],
            );
        }
        // String, &String and a typed reason all convert.
        let owned = String::from("certificate-expired");
        let a = ConnectionLogEntry::attempt_failed(&owned, &info(), at);
        let b = ConnectionLogEntry::attempt_failed(owned.clone(), &info(), at);
        let c = ConnectionLogEntry::attempt_failed(
            FailureReason::new(FailureReason::CERTIFICATE_EXPIRED),
            &info(),
            at,
        );
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(FailureReason::parse("x (y)").to_string(), "x (y)");
        assert_eq!(FailureReason::parse("odd (no close").code, "odd (no close");
    }

    #[test]
    fn connlog_reset_entry_carries_counters_and_end() {
        let mut i = info()
            .with_client_ip("172.1.0.162".parse().unwrap())
            .with_common_name("client1.domain.tld")
            .with_username("joe");
        i.transport = Transport::Tcp;
        i.posture_compliance_statuses = vec!["compliant".into()];
        let counters = TrafficCounters {
            ingress_bytes: 21017,
            egress_bytes: 16438,
            ingress_packets: 330,
            egress_packets: 325,
        };
        let end = t0() + Duration::from_secs(318);
        let e = ConnectionLogEntry::reset(&i, &counters, end);
        let line = e.to_json_line();
        let obj = parse_object(&line, CONNECTION_FIELDS);
        check(
            &obj,
            &[
                ("connection-log-type", "connection-reset"),
                ("connection-attempt-status", "NA"),
                ("connection-reset-status", "NA"),
                ("connection-attempt-failure-reason", "NA"),
                ("connection-id", CONN_ID),
                ("client-vpn-endpoint-id", ENDPOINT_ID),
                ("transport-protocol", "tcp"),
                ("connection-start-time", "2026-11-24 16:35:01"),
                ("connection-last-update-time", "2026-11-24 16:40:19"),
                ("client-ip", "172.1.0.162"),
                ("common-name", "client1.domain.tld"),
                ("device-type", "NA"),
                ("device-ip", "72.21.198.66"),
                ("port", "5567"),
                ("ingress-bytes", "21017"),
                ("egress-bytes", "16438"),
                ("ingress-packets", "330"),
                ("egress-packets", "325"),
                ("connection-end-time", "2026-11-24 16:40:19"),
                ("username", "joe"),
                ("connection-duration-seconds", "318"),
                ("connection-attempt-failure-detail", "NA"),
            ],
        );
        assert_eq!(
            obj["posture-compliance-statuses"],
            serde_json::json!(["compliant"])
        );
        let back: ConnectionLogEntry = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn connlog_counters_from_data_plane() {
        let c = TrafficCounters::from(SessionCounters {
            from_client_packets: 1,
            from_client_bytes: 2,
            to_client_packets: 3,
            to_client_bytes: 4,
            dropped_packets: 5,
        });
        assert_eq!(
            c,
            TrafficCounters {
                ingress_packets: 1,
                ingress_bytes: 2,
                egress_packets: 3,
                egress_bytes: 4
            }
        );
        // u64::MAX survives as a string (a JSON number would lose precision in many parsers).
        let big = TrafficCounters {
            ingress_bytes: u64::MAX,
            ..Default::default()
        };
        let obj = parse_object(
            &ConnectionLogEntry::reset(&info(), &big, t0()).to_json_line(),
            CONNECTION_FIELDS,
        );
        check(
            &obj,
            &[
                ("ingress-bytes", "18446744073709551615"),
                ("connection-duration-seconds", "0"),
            ],
        );
    }

    #[test]
    fn connlog_edge_values() {
        // IPv4-mapped IPv6 device address (a dual-stack socket) is logged as IPv4; IPv6 as is;
        // an empty common name or username is "NA"; an end before the start gives duration 0.
        let mut i = info().with_common_name("").with_username("");
        i.device = "[::ffff:198.51.100.7]:443".parse().unwrap();
        let obj = parse_object(
            &ConnectionLogEntry::attempt_succeeded(&i).to_json_line(),
            CONNECTION_FIELDS,
        );
        check(
            &obj,
            &[
                ("device-ip", "198.51.100.7"),
                ("port", "443"),
                ("common-name", "NA"),
                ("username", "NA"),
            ],
        );
        i.device = "[2001:db8::1]:1194".parse().unwrap();
        let obj = parse_object(
            &ConnectionLogEntry::reset(
                &i,
                &TrafficCounters::default(),
                t0() - Duration::from_secs(5),
            )
            .to_json_line(),
            CONNECTION_FIELDS,
        );
        check(
            &obj,
            &[
                ("device-ip", "2001:db8::1"),
                ("port", "1194"),
                ("connection-duration-seconds", "0"),
            ],
        );
        // Quotes and control characters in a common name stay inside one JSON string.
        let i = info().with_common_name("evil\"\n{name}");
        let line = ConnectionLogEntry::attempt_succeeded(&i).to_json_line();
        let obj = parse_object(&line, CONNECTION_FIELDS);
        check(&obj, &[("common-name", "evil\"\n{name}")]);
    }

    // --- flow entries ----------------------------------------------------------------------

    fn flow_event(kind: FlowEventKind, protocol: u8) -> FlowEventRecord {
        FlowEventRecord {
            kind,
            session_id: 7,
            protocol,
            src: "10.0.1.2".parse().unwrap(),
            src_port: 40000,
            dst: "192.0.2.80".parse().unwrap(),
            dst_port: 443,
            timestamp_ns: 0,
        }
    }

    #[test]
    fn connlog_flow_entries_for_each_event_kind() {
        for (kind, name) in [
            (FlowEventKind::Denied, "denied"),
            (FlowEventKind::NoRoute, "no-route"),
            (FlowEventKind::NatFull, "nat-table-full"),
            (FlowEventKind::SecurityGroup, "security-group-denied"),
            (FlowEventKind::Other(99), "unknown"),
        ] {
            let e = FlowLogEntry::from_event_at(
                ENDPOINT_ID,
                &flow_event(kind, 6),
                Some(CONN_ID),
                Some("joe"),
                t0(),
            );
            let line = e.to_json_line();
            let obj = parse_object(&line, FLOW_FIELDS);
            check(
                &obj,
                &[
                    ("flow-log-type", name),
                    ("timestamp", "2026-11-24 16:35:01"),
                    ("client-vpn-endpoint-id", ENDPOINT_ID),
                    ("connection-id", CONN_ID),
                    ("username", "joe"),
                    ("protocol", "tcp"),
                    ("source-ip", "10.0.1.2"),
                    ("source-port", "40000"),
                    ("destination-ip", "192.0.2.80"),
                    ("destination-port", "443"),
                ],
            );
            let back: FlowLogEntry = serde_json::from_str(&line).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn connlog_flow_unknown_session_and_protocols() {
        let mut ev = flow_event(FlowEventKind::UnknownSource, 17);
        ev.session_id = 0;
        let obj = parse_object(
            &FlowLogEntry::from_event_at(ENDPOINT_ID, &ev, None, None, t0()).to_json_line(),
            FLOW_FIELDS,
        );
        check(
            &obj,
            &[
                ("flow-log-type", "unknown-source"),
                ("connection-id", "NA"),
                ("username", "NA"),
                ("protocol", "udp"),
                ("source-port", "40000"),
                ("destination-port", "443"),
            ],
        );
        // ICMP: the data plane keeps the echo identifier in the port fields; not a port.
        let obj = parse_object(
            &FlowLogEntry::from_event_at(
                ENDPOINT_ID,
                &flow_event(FlowEventKind::Denied, 1),
                Some(CONN_ID),
                None,
                t0(),
            )
            .to_json_line(),
            FLOW_FIELDS,
        );
        check(
            &obj,
            &[
                ("protocol", "icmp"),
                ("source-port", "NA"),
                ("destination-port", "NA"),
                ("username", "NA"),
            ],
        );
        let obj = parse_object(
            &FlowLogEntry::from_event_at(
                ENDPOINT_ID,
                &flow_event(FlowEventKind::NoRoute, 47),
                None,
                None,
                t0(),
            )
            .to_json_line(),
            FLOW_FIELDS,
        );
        check(&obj, &[("protocol", "47"), ("source-port", "NA")]);
    }

    #[test]
    fn connlog_flow_from_monotonic_timestamp() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mut ev = flow_event(FlowEventKind::Denied, 6);
        ev.timestamp_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let before = format_time(SystemTime::now() - Duration::from_secs(1));
        let e = FlowLogEntry::from_event(ENDPOINT_ID, &ev, Some(CONN_ID), Some("joe"));
        let after = format_time(SystemTime::now() + Duration::from_secs(1));
        assert!(
            before <= e.timestamp && e.timestamp <= after,
            "{before} <= {} <= {after}",
            e.timestamp
        );
    }

    // --- writer ----------------------------------------------------------------------------

    fn tiny(max: u64, keep: usize) -> LogOptions {
        LogOptions {
            max_file_bytes: max,
            keep_files: keep,
            stdout: false,
        }
    }

    fn read_lines(p: &Path) -> Vec<String> {
        match fs::read_to_string(p) {
            Ok(s) => {
                assert!(
                    s.is_empty() || s.ends_with('\n'),
                    "{} ends with a newline",
                    p.display()
                );
                s.lines().map(str::to_string).collect()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("{}: {e}", p.display()),
        }
    }

    #[test]
    fn connlog_writer_defaults() {
        let o = LogOptions::default();
        assert_eq!(o.max_file_bytes, 10 * 1024 * 1024);
        assert_eq!(o.keep_files, 5);
        assert!(!o.stdout);
        // The options deserialize with defaults for missing fields.
        let o: LogOptions = serde_json::from_str(r#"{"keep_files": 2}"#).unwrap();
        assert_eq!(
            o,
            LogOptions {
                keep_files: 2,
                ..LogOptions::default()
            }
        );
    }

    #[test]
    fn connection_entries_name_the_node_that_served_them() {
        let tmp = TempDir::new("node");
        let plain = ConnectionLogs::open(tmp.path().join("plain"), &LogOptions::default()).unwrap();
        plain
            .connection(&ConnectionLogEntry::attempt_succeeded(&info()))
            .unwrap();
        let named = ConnectionLogs::open(tmp.path().join("named"), &LogOptions::default())
            .unwrap()
            .with_node("gw-b");
        named
            .connection(&ConnectionLogEntry::attempt_succeeded(&info()))
            .unwrap();
        let read = |d: &str| -> serde_json::Value {
            let text = fs::read_to_string(tmp.path().join(d).join(CONNECTION_LOG_FILE)).unwrap();
            serde_json::from_str(text.lines().next().unwrap()).unwrap()
        };
        assert_eq!(read("plain")["node"], "NA");
        assert_eq!(read("named")["node"], "gw-b");
        // Lines written before the field existed still read back.
        let mut old = read("plain");
        old.as_object_mut().unwrap().remove("node");
        let back: ConnectionLogEntry = serde_json::from_value(old).unwrap();
        assert_eq!(back.node, "NA");
    }

    #[test]
    fn connlog_writer_creates_private_dir_and_file() {
        let tmp = TempDir::new("perm");
        let dir = tmp.path().join("a/b/logs");
        let logs = ConnectionLogs::open(&dir, &LogOptions::default()).unwrap();
        for d in [tmp.path().join("a"), tmp.path().join("a/b"), dir.clone()] {
            assert_eq!(
                fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o700,
                "{}",
                d.display()
            );
        }
        logs.connection(&ConnectionLogEntry::attempt_succeeded(&info()))
            .unwrap();
        logs.flow(&FlowLogEntry::from_event_at(
            ENDPOINT_ID,
            &flow_event(FlowEventKind::Denied, 6),
            None,
            None,
            t0(),
        ))
        .unwrap();
        logs.sync().unwrap();
        for f in [CONNECTION_LOG_FILE, FLOW_LOG_FILE] {
            let p = dir.join(f);
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                p.display()
            );
            assert_eq!(read_lines(&p).len(), 1);
        }
        assert_eq!(logs.connection_writer().path(), dir.join("connection.log"));
        assert_eq!(
            logs.flow_writer().generation_path(2),
            dir.join("flow.log.2")
        );
        // Rotated files are 0600 too.
        let w = LogWriter::open(&dir, "r.log", &tiny(10, 2)).unwrap();
        for i in 0..3 {
            w.write_line(&format!("line {i}")).unwrap();
        }
        for p in [
            w.path().to_path_buf(),
            w.generation_path(1),
            w.generation_path(2),
        ] {
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn connlog_writer_appends_to_an_existing_file() {
        let tmp = TempDir::new("append");
        {
            let w = LogWriter::open(tmp.path(), "x.log", &LogOptions::default()).unwrap();
            w.write_line("one").unwrap();
        }
        let w = LogWriter::open(tmp.path(), "x.log", &LogOptions::default()).unwrap();
        w.write_line("two").unwrap();
        assert_eq!(read_lines(w.path()), ["one", "two"]);
    }

    #[test]
    fn connlog_writer_rotation_generations() {
        let tmp = TempDir::new("rot");
        // Lines "line NN" are 8 bytes with the newline; 20 bytes hold two.
        let w = LogWriter::open(tmp.path(), "c.log", &tiny(20, 3)).unwrap();
        for i in 0..11 {
            w.write_line(&format!("line {i:02}")).unwrap();
        }
        assert_eq!(read_lines(w.path()), ["line 10"]);
        assert_eq!(read_lines(&w.generation_path(1)), ["line 08", "line 09"]);
        assert_eq!(read_lines(&w.generation_path(2)), ["line 06", "line 07"]);
        assert_eq!(read_lines(&w.generation_path(3)), ["line 04", "line 05"]);
        assert!(!w.generation_path(4).exists(), "only 3 generations kept");
        for n in 0..=3 {
            let p = if n == 0 {
                w.path().to_path_buf()
            } else {
                w.generation_path(n)
            };
            assert!(fs::metadata(&p).unwrap().len() <= 20, "{}", p.display());
        }
    }

    #[test]
    fn connlog_writer_keep_zero_and_oversized_lines() {
        let tmp = TempDir::new("keep0");
        let w = LogWriter::open(tmp.path(), "k.log", &tiny(10, 0)).unwrap();
        w.write_line("aaaa").unwrap();
        w.write_line("bbbb").unwrap();
        w.write_line("cccc").unwrap();
        assert_eq!(read_lines(w.path()), ["cccc"]);
        assert!(!w.generation_path(1).exists());

        // A line over the limit is written whole, alone in its file.
        let w = LogWriter::open(tmp.path(), "big.log", &tiny(10, 2)).unwrap();
        let big = "x".repeat(50);
        w.write_line("a").unwrap();
        w.write_line(&big).unwrap();
        w.write_line("b").unwrap();
        assert_eq!(read_lines(w.path()), ["b"]);
        assert_eq!(read_lines(&w.generation_path(1)), [big.as_str()]);
        assert_eq!(read_lines(&w.generation_path(2)), ["a"]);
    }

    #[test]
    fn connlog_writer_newlines_never_split_a_record() {
        let tmp = TempDir::new("nl");
        let w = LogWriter::open(tmp.path(), "n.log", &LogOptions::default()).unwrap();
        w.write_line("a\nb\r\nc").unwrap();
        assert_eq!(read_lines(w.path()), ["a b  c"]);
    }

    #[test]
    fn connlog_writer_rejects_path_names() {
        let tmp = TempDir::new("name");
        for bad in ["", "a/b", "..", "."] {
            let err = LogWriter::open(tmp.path(), bad, &LogOptions::default()).unwrap_err();
            assert!(
                matches!(err, LogError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn connlog_writer_concurrent_rotation_loses_and_tears_nothing() {
        const THREADS: usize = 8;
        const PER_THREAD: usize = 400;
        let tmp = TempDir::new("conc");
        // ~300-byte lines, 4 KiB files: ~250 rotations; keep enough generations to hold all.
        let w = Arc::new(LogWriter::open(tmp.path(), "connection.log", &tiny(4096, 1000)).unwrap());
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for n in 0..PER_THREAD {
                        let mut i = info()
                            .with_username(format!("user-{t}"))
                            .with_common_name("x".repeat(40));
                        i.connection_id = format!("cvpn-connection-{t:02}{n:015}");
                        let c = TrafficCounters {
                            ingress_bytes: n as u64,
                            ..Default::default()
                        };
                        w.write_entry(&ConnectionLogEntry::reset(&i, &c, t0()))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        w.sync().unwrap();

        let mut seen: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut files = 0;
        // Oldest generation first, so each thread's lines come in write order.
        let mut paths: Vec<PathBuf> = (1..=1000)
            .rev()
            .map(|n| w.generation_path(n))
            .filter(|p| p.exists())
            .collect();
        paths.push(w.path().to_path_buf());
        for p in &paths {
            files += 1;
            assert!(
                fs::metadata(p).unwrap().len() <= 4096,
                "{} over the limit",
                p.display()
            );
            for line in read_lines(p) {
                let obj = parse_object(&line, CONNECTION_FIELDS);
                let user = obj["username"].as_str().unwrap();
                let t: usize = user.strip_prefix("user-").unwrap().parse().unwrap();
                let n: usize = obj["ingress-bytes"].as_str().unwrap().parse().unwrap();
                assert_eq!(
                    obj["connection-id"].as_str().unwrap(),
                    format!("cvpn-connection-{t:02}{n:015}")
                );
                seen.entry(t).or_default().push(n);
            }
        }
        assert!(files > 100, "rotated many times ({files} files)");
        assert_eq!(seen.len(), THREADS);
        for (t, ns) in seen {
            assert_eq!(
                ns,
                (0..PER_THREAD).collect::<Vec<_>>(),
                "thread {t}: every line, in order"
            );
        }
    }

    #[test]
    fn connlog_writer_concurrent_with_few_generations_keeps_whole_lines() {
        let tmp = TempDir::new("conc2");
        let w = Arc::new(LogWriter::open(tmp.path(), "flow.log", &tiny(2048, 2)).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for n in 0..300u16 {
                        let mut ev = flow_event(FlowEventKind::Denied, 6);
                        ev.src_port = n;
                        w.write_entry(&FlowLogEntry::from_event_at(
                            ENDPOINT_ID,
                            &ev,
                            Some(CONN_ID),
                            Some(&format!("u{t}")),
                            t0(),
                        ))
                        .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(w.generation_path(2).exists() && !w.generation_path(3).exists());
        let mut seen: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        let mut total = 0;
        for p in [
            w.generation_path(2),
            w.generation_path(1),
            w.path().to_path_buf(),
        ] {
            for line in read_lines(&p) {
                let obj = parse_object(&line, FLOW_FIELDS);
                let n: u16 = obj["source-port"].as_str().unwrap().parse().unwrap();
                seen.entry(obj["username"].as_str().unwrap().to_string())
                    .or_default()
                    .push(n);
                total += 1;
            }
        }
        assert!(total > 0 && total < 1200, "{total}");
        // The surviving files are the newest ones: what survives of each thread is a gapless
        // run of its last lines.
        assert!(!seen.is_empty());
        for (user, ns) in seen {
            let first = ns[0];
            assert_eq!(ns, (first..300).collect::<Vec<_>>(), "{user}");
        }
    }

    #[test]
    fn connlog_writer_survives_external_delete_and_rotation() {
        let tmp = TempDir::new("ext");
        let w = LogWriter::open(tmp.path(), "connection.log", &LogOptions::default()).unwrap();
        w.write_line("one").unwrap();
        // Deleted: the next line goes to a new file under the name.
        fs::remove_file(w.path()).unwrap();
        w.write_line("two").unwrap();
        assert_eq!(read_lines(w.path()), ["two"]);
        assert_eq!(
            fs::metadata(w.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Renamed away (logrotate): the old file gets nothing more.
        let moved = tmp.path().join("connection.log-20261124");
        fs::rename(w.path(), &moved).unwrap();
        w.write_line("three").unwrap();
        assert_eq!(read_lines(&moved), ["two"]);
        assert_eq!(read_lines(w.path()), ["three"]);
        // The whole directory removed: made again.
        fs::remove_dir_all(tmp.path()).unwrap();
        w.write_line("four").unwrap();
        assert_eq!(read_lines(w.path()), ["four"]);
        assert_eq!(
            fs::metadata(tmp.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Truncated externally (copytruncate): appending goes on at the new end.
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(w.path())
            .unwrap();
        w.write_line("five").unwrap();
        assert_eq!(read_lines(w.path()), ["five"]);
        w.sync().unwrap();
    }

    #[test]
    fn connlog_writer_size_check_counts_external_appends() {
        let tmp = TempDir::new("extsize");
        let w = LogWriter::open(tmp.path(), "s.log", &tiny(30, 1)).unwrap();
        w.write_line("mine").unwrap();
        // Another writer (another process) appends to the same file: the size check sees it.
        let mut other = OpenOptions::new().append(true).open(w.path()).unwrap();
        other.write_all(b"someone else's line.....\n").unwrap();
        w.write_line("next").unwrap();
        assert_eq!(read_lines(w.path()), ["next"]);
        assert_eq!(
            read_lines(&w.generation_path(1)),
            ["mine", "someone else's line....."]
        );
    }

    #[derive(Clone)]
    struct Shared(Arc<StdMutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn connlog_writer_mirror_gets_the_same_lines() {
        let tmp = TempDir::new("mirror");
        let buf = Shared(Arc::new(StdMutex::new(Vec::new())));
        // Files that hold exactly two lines (all lines have the same length): five files.
        let len = ConnectionLogEntry::attempt_succeeded(&info())
            .to_json_line()
            .len() as u64
            + 1;
        let w = LogWriter::open_with(
            tmp.path(),
            "m.log",
            &tiny(2 * len, 10),
            Mirror::Writer(Box::new(buf.clone())),
        )
        .unwrap();
        let mut want = Vec::new();
        for n in 0..10 {
            let mut i = info();
            i.connection_id = format!("cvpn-connection-{n:017}");
            let line = ConnectionLogEntry::attempt_succeeded(&i).to_json_line();
            w.write_line(&line).unwrap();
            want.push(line);
        }
        let mirrored = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(mirrored.lines().collect::<Vec<_>>(), want);
        // And the files (with rotation) hold the same lines.
        let mut from_files = Vec::new();
        assert!(w.generation_path(4).exists() && !w.generation_path(5).exists());
        for p in (1..=10)
            .rev()
            .map(|n| w.generation_path(n))
            .chain([w.path().to_path_buf()])
        {
            from_files.extend(read_lines(&p));
        }
        assert_eq!(from_files, want);
    }

    #[test]
    fn connlog_writer_broken_mirror_still_writes_the_file() {
        let tmp = TempDir::new("broken");
        let w = LogWriter::open_with(
            tmp.path(),
            "b.log",
            &LogOptions::default(),
            Mirror::Writer(Box::new(Broken)),
        )
        .unwrap();
        let err = w.write_line("kept").unwrap_err();
        assert!(matches!(err, LogError::Stdout { .. }));
        assert!(err.to_string().contains("b.log"), "{err}");
        assert_eq!(read_lines(w.path()), ["kept"]);
    }

    #[test]
    fn connlog_writer_stdout_option_keeps_file_output() {
        let tmp = TempDir::new("stdout");
        let logs = ConnectionLogs::open(
            tmp.path(),
            &LogOptions {
                stdout: true,
                ..LogOptions::default()
            },
        )
        .unwrap();
        // (This line shows in the test's captured-or-not stdout: one line only.)
        let e = ConnectionLogEntry::attempt_failed("handshake-timeout", &info(), t0());
        logs.connection(&e).unwrap();
        let lines = read_lines(logs.connection_writer().path());
        assert_eq!(lines.len(), 1);
        for l in lines {
            let back: ConnectionLogEntry = serde_json::from_str(&l).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn connlog_errors_name_the_path() {
        let tmp = TempDir::new("err");
        fs::create_dir_all(tmp.path()).unwrap();
        // A file where the directory should be.
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = LogWriter::open(file.join("logs"), "c.log", &LogOptions::default()).unwrap_err();
        assert!(matches!(err, LogError::CreateDir { .. }), "{err}");
        assert!(err.to_string().contains("not-a-dir/logs"), "{err}");
        // A directory where the file should be.
        fs::create_dir_all(tmp.path().join("d/c.log")).unwrap();
        let err =
            LogWriter::open(tmp.path().join("d"), "c.log", &LogOptions::default()).unwrap_err();
        assert!(matches!(err, LogError::Open { .. }), "{err}");
        assert!(err.to_string().contains("d/c.log"), "{err}");
    }

    // --- floods ----------------------------------------------------------------------------

    fn failed_from(device: &str, reason: &str) -> ConnectionLogEntry {
        let info = ConnectionInfo::new(
            CONN_ID,
            ENDPOINT_ID,
            Transport::Udp,
            device.parse().unwrap(),
            t0(),
        );
        ConnectionLogEntry::attempt_failed(reason, &info, t0())
    }

    fn objects(p: &Path) -> Vec<serde_json::Map<String, Value>> {
        read_lines(p)
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .unwrap()
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect()
    }

    #[test]
    fn connlog_a_flood_of_failed_attempts_is_bounded_keeps_history_and_is_summarized() {
        let dir = TempDir::new("flood");
        // Small files: without the limiter, the flood would rotate the first line away at once.
        let logs = ConnectionLogs::open(dir.path(), &tiny(64 * 1024, 1)).unwrap();
        let path = logs.connection_writer().path().to_path_buf();
        let mut ok_info = info();
        ok_info.client_ip = Some("10.0.1.2".parse().unwrap());
        ok_info.common_name = Some("alice".into());
        let first = ConnectionLogEntry::attempt_succeeded(&ok_info);
        let start = Instant::now();
        logs.connection_at(&first, start).unwrap();
        let flood = failed_from("203.0.113.9:40000", "certificate-unknown-ca");
        for i in 0..100_000u32 {
            logs.connection_at(&flood, start).unwrap();
            // Successful attempts and ends in the middle of it are all written.
            if i % 20_000 == 0 {
                logs.connection_at(&first, start).unwrap();
                logs.connection_at(
                    &ConnectionLogEntry::reset(&ok_info, &TrafficCounters::default(), t0()),
                    start,
                )
                .unwrap();
            }
        }
        let lines = objects(&path);
        let failed =
            |l: &serde_json::Map<String, Value>| l["connection-attempt-status"] == "failed";
        assert_eq!(lines.iter().filter(|l| failed(l)).count(), 10);
        assert_eq!(lines.len(), 1 + 10 + 5 * 2, "bounded: {}", lines.len());
        assert_eq!(
            lines[0]["connection-attempt-status"], "successful",
            "history kept"
        );
        assert!(
            !logs.connection_writer().generation_path(1).exists(),
            "never rotated"
        );

        // The next line after the interval brings the summary, then is written itself.
        logs.connection_at(&flood, start + Duration::from_secs(61))
            .unwrap();
        let lines = objects(&path);
        let summary = &lines[lines.len() - 2];
        assert_eq!(summary["connection-log-type"], "suppressed-repeats");
        assert_eq!(summary["suppressed-count"], "99990");
        assert_eq!(summary["suppressed-scope"], "same-key");
        assert_eq!(
            summary["connection-attempt-failure-reason"],
            "certificate-unknown-ca"
        );
        assert_eq!(summary["device-ip"], "203.0.113.9");
        assert!(
            summary.contains_key("suppressed-since") && summary.contains_key("suppressed-until")
        );
        assert_eq!(
            lines[lines.len() - 1]["connection-attempt-status"],
            "failed"
        );
        assert_eq!(lines.len(), 1 + 10 + 10 + 2);
    }

    #[test]
    fn connlog_distinct_sources_get_lines_of_their_own_up_to_the_table_bound() {
        let dir = TempDir::new("sources");
        let limits = RepeatLimits {
            per_interval: 2,
            interval: Duration::from_secs(60),
            table_size: 8,
        };
        let logs =
            ConnectionLogs::open_with_limits(dir.path(), &LogOptions::default(), limits).unwrap();
        let path = logs.connection_writer().path().to_path_buf();
        let start = Instant::now();
        for source in 0..12 {
            let e = failed_from(&format!("198.51.100.{source}:5000"), "tls-error");
            for _ in 0..5 {
                logs.connection_at(&e, start).unwrap();
            }
        }
        // Another reason from the same address is a key of its own too, but the table is full.
        let lines = objects(&path);
        let from = |ip: &str| lines.iter().filter(|l| l["device-ip"] == ip).count();
        for source in 0..8 {
            assert_eq!(from(&format!("198.51.100.{source}")), 2, "source {source}");
        }
        // The table is full: the four others share one more allowance.
        let rest: usize = (8..12).map(|s| from(&format!("198.51.100.{s}"))).sum();
        assert_eq!(rest, 2);
        assert_eq!(lines.len(), 18);
        assert!(
            logs.connection.limiter().slots.len() <= 8,
            "the table stays bounded"
        );

        logs.flush_suppressed().unwrap();
        let summaries: Vec<_> = objects(&path)
            .into_iter()
            .filter(|l| l["connection-log-type"] == "suppressed-repeats")
            .collect();
        assert_eq!(summaries.len(), 9);
        let per_key: Vec<_> = summaries
            .iter()
            .filter(|s| s["suppressed-scope"] == "same-key")
            .collect();
        assert_eq!(per_key.len(), 8);
        assert!(
            per_key.iter().all(|s| s["suppressed-count"] == "3"),
            "{per_key:?}"
        );
        let overflow = summaries
            .iter()
            .find(|s| s["suppressed-scope"] == "other-keys-table-full")
            .unwrap();
        assert_eq!(overflow["suppressed-count"], "18");

        // Once the interval is over, the table makes room: a new source has its own slot again.
        let later = start + Duration::from_secs(61);
        let new = failed_from("198.51.100.200:5000", "tls-error");
        for _ in 0..3 {
            logs.connection_at(&new, later).unwrap();
        }
        assert_eq!(
            objects(&path)
                .iter()
                .filter(|l| l["device-ip"] == "198.51.100.200"
                    && l["connection-log-type"] == "connection-attempt")
                .count(),
            2
        );
        assert!(logs.connection.limiter().overflow.is_none());
    }

    #[test]
    fn connlog_a_flood_of_denied_flows_is_limited_per_source_and_destination() {
        let dir = TempDir::new("flows");
        let logs = ConnectionLogs::open(dir.path(), &tiny(64 * 1024, 1)).unwrap();
        let path = logs.flow_writer().path().to_path_buf();
        let start = Instant::now();
        let denied = FlowLogEntry::from_event_at(
            ENDPOINT_ID,
            &flow_event(FlowEventKind::Denied, 17),
            Some(CONN_ID),
            None,
            t0(),
        );
        let mut elsewhere = denied.clone();
        elsewhere.destination_ip = "192.0.2.81".into();
        for _ in 0..100_000 {
            logs.flow_at(&denied, start).unwrap();
        }
        logs.flow_at(&elsewhere, start).unwrap();
        let lines = objects(&path);
        assert_eq!(lines.len(), 11, "10 of the flood and the other destination");
        assert_eq!(lines[10]["destination-ip"], "192.0.2.81");
        assert!(!logs.flow_writer().generation_path(1).exists());
        drop(logs);
        // Dropping the logs writes what is pending.
        let lines = objects(&path);
        let summary = lines.last().unwrap();
        assert_eq!(summary["flow-log-type"], "suppressed-repeats");
        assert_eq!(summary["suppressed-count"], "99990");
        assert_eq!(summary["destination-ip"], "192.0.2.80");
    }
}
