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

/// An authorization rule: traffic to `destination` is allowed for `access`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationRule {
    pub destination: Ipv4Net,
    pub access: Access,
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
#[derive(Clone, Debug)]
pub struct TargetSpec {
    pub id: u32,
    pub interface: String,
    pub snat_addr: Option<Ipv4Addr>,
}
