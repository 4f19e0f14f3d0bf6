//! cvpn: a self-hosted Client VPN gateway. One module per concern:
//!
//! * [`api`]: the management API (HTTP/JSON on a Unix socket, or TCP + TLS + bearer token).
//! * [`auth`]: directories (LDAP, Active Directory), MFA (TOTP, RADIUS), auth-tokens, the login throttle.
//! * [`cli`]: the `cvpn` resource commands (`endpoint`, `network`, `route`, ...), the API's client.
//! * [`config`]: the configuration file of `cvpn serve --config FILE` (TOML, validated).
//! * [`control`]: the daemon behind `cvpn serve`: endpoints from the database, the API, live changes.
//! * [`connect_handler`]: the client connect handler (AWS's Lambda contract), webhook or executable.
//! * [`connlog`]: the connection log and flow log (JSON lines, AWS field names), size-rotated.
//! * [`datachannel`]: the OpenVPN data channel's AEAD seal/open and replay window, sans-IO
//!   (from `cvpn-core`).
//! * [`dataplane`]: the kernel programs' loader and the typed API that drives them.
//! * [`http_client`]: a small HTTP/1.1 client (Unix socket, TCP, TLS), bounded answers: the
//!   CLI's API client and the connect handler's webhook client.
//! * [`model`]: the resource model every other module speaks (resources, ids, validation, policy,
//!   counters); depends on nothing else (from `cvpn-core`).
//! * [`protocol`]: the OpenVPN wire protocol, sans-IO (packet codec, reliability, TLS, ...)
//!   (from `cvpn-core`).
//! * [`pool`]: the client address pool over the client CIDR.
//! * [`endpoint`]: the sans-IO endpoint core that owns every connection, and the data path.
//! * [`io`]: the bounded TCP transport.
//! * [`server`]: one endpoint's I/O driver: sockets, TUN, data plane, the endpoint's deadline.
//! * [`storage`]: the control plane's resources (AWS Client VPN model) in embedded SQLite.
//! * [`tun`]: TUN devices (the path between the data channel and the kernel data plane).
pub mod api;
pub mod auth;
pub mod aws;
pub mod cli;
pub mod config;
pub mod connect_handler;
pub mod connlog;
pub mod control;
pub mod dataplane;
pub mod endpoint;
pub mod http_client;
pub mod io;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod storage;
#[cfg(test)]
mod test_support;
pub mod tun;
pub mod web;

// The kernel-free core lives in its own crate (`gateway/core`, tested without the eBPF
// toolchain); its modules keep their paths here.
pub use cvpn_core::{datachannel, model, protocol};
