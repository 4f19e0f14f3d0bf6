//! What an endpoint's data plane is told: the authorization rules and routes as one [`Policy`]
//! (compiled into the kernel's tries by `dataplane::policy`), and the target networks traffic
//! leaves through ([`TargetSpec`]). The store derives them from its resources; the endpoint file
//! (`config`) from its entries.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Who an authorization rule admits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    AllGroups,
    Group(String),
}

/// An authorization rule: traffic to `destination` is allowed for `access` (only of
/// `ports`' protocol and destination ports, when it names them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationRule {
    pub destination: Ipv4Net,
    pub access: Access,
    /// cvpn, beyond AWS: the rule admits only this protocol and these destination ports.
    /// `None`: every packet to the destination (AWS's rules).
    pub ports: Option<PortMatch>,
}

/// The protocol and destination ports a rule is limited to. Which rules count is still AWS's
/// choice: the longest prefix that contains the destination, whatever the ports; at that
/// prefix the packet passes when a rule without ports admits the session's groups, or a rule
/// with ports does and matches the packet's protocol and destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMatch {
    /// IP protocol: 6 (TCP), 17 (UDP) or 1 (ICMP).
    pub protocol: u8,
    /// Destination ports, inclusive (TCP and UDP; 0..=0 for ICMP).
    pub from_port: u16,
    pub to_port: u16,
}

impl PortMatch {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMP: u8 = 1;

    /// The protocol's name (`tcp`, `udp`, `icmp`).
    pub fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Self::TCP => "tcp",
            Self::UDP => "udp",
            _ => "icmp",
        }
    }

    /// The port range as stored and shown: `443`, `8000-8100`; none for every port (and for
    /// ICMP, which has none).
    pub fn range_text(&self) -> Option<String> {
        match (self.protocol, self.from_port, self.to_port) {
            (Self::ICMP, _, _) | (_, 1, 65535) => None,
            (_, a, b) if a == b => Some(a.to_string()),
            (_, a, b) => Some(format!("{a}-{b}")),
        }
    }

    /// `tcp/443`, `udp/5000-5100`, `icmp`.
    pub fn describe(&self) -> String {
        match (self.protocol, self.from_port == self.to_port) {
            (Self::ICMP, _) => "icmp".into(),
            (_, true) => format!("{}/{}", self.protocol_name(), self.from_port),
            (_, false) => format!(
                "{}/{}-{}",
                self.protocol_name(),
                self.from_port,
                self.to_port
            ),
        }
    }
}

/// A route: traffic to `destination` leaves through target network `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Net,
    pub target: u32,
}

/// The whole policy of an endpoint; replaced as one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<AuthorizationRule>,
    pub routes: Vec<Route>,
}

/// A target network as the data plane needs it: traffic routed to `id` leaves through
/// `interface`, SNATed to `snat_addr` (by default the interface's first IPv4 address). Made
/// from the API resource [`TargetNetwork`](super::TargetNetwork) (whose `target_id` is `id`) or
/// the endpoint file's `config::TargetNetwork`; the data plane turns it into the kernel's map
/// value `gateway_common::TargetNetwork`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub id: u32,
    pub interface: String,
    pub snat_addr: Option<Ipv4Addr>,
    /// The egress rules of the security groups applied to the target network: a packet
    /// leaves only if one allows it. `None`: no group applied, AWS's default group (all
    /// traffic may leave).
    pub egress: Option<Vec<EgressRule>>,
}

/// One egress rule of a security group, as the data plane takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressRule {
    /// IP protocol (6, 17, 1); `None`: every protocol.
    pub protocol: Option<u8>,
    /// Destination ports, inclusive (TCP and UDP).
    pub from_port: u16,
    pub to_port: u16,
    /// Where the traffic may go.
    pub destination: Ipv4Net,
}
