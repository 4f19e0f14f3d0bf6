//! cvpn: a self-hosted Client VPN gateway. One module per concern:
//!
//! * [`dataplane`]: the kernel programs' loader and the typed API that drives them.
//! * [`protocol`]: the OpenVPN wire protocol, sans-IO (packet codec, reliability, TLS, ...).
//! * [`tun`]: TUN devices (the path between the data channel and the kernel data plane).
pub mod dataplane;
pub mod protocol;
pub mod tun;
