//! Traffic counters: one type, [`Counters`], for the four numbers a connection is measured by
//! (bytes and packets, each way), in AWS's terms — ingress is from the client, egress to the
//! client. The store records them, the connection log writes them, the API shows them.
//!
//! [`SessionCounters`] is what the data plane reads from the kernel's per-session map: the same
//! four numbers under the kernel's names plus the packets it dropped; [`Counters::from`] is the
//! one conversion.

use serde::{Deserialize, Serialize};

/// Traffic counters of a connection: ingress is from the client, egress to the client (AWS's
/// meaning: "bytes sent by the client" / "bytes received by the client"). Serialized with the
/// connection log's field names (`ingress-bytes`, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Counters {
    /// Bytes from the client.
    pub ingress_bytes: u64,
    /// Bytes to the client.
    pub egress_bytes: u64,
    /// Packets from the client.
    pub ingress_packets: u64,
    /// Packets to the client.
    pub egress_packets: u64,
}

/// Per-session counters as the kernel programs keep them, summed over CPUs: the traffic each way
/// and the packets dropped (unauthorized, no route, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub from_client_packets: u64,
    pub from_client_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub dropped_packets: u64,
}

impl From<SessionCounters> for Counters {
    fn from(c: SessionCounters) -> Self {
        Counters {
            ingress_bytes: c.from_client_bytes,
            egress_bytes: c.to_client_bytes,
            ingress_packets: c.from_client_packets,
            egress_packets: c.to_client_packets,
        }
    }
}
