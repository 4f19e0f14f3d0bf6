//! cvpn's core: what needs no kernel, no sockets and no database — the OpenVPN protocol
//! (sans-IO), the data channel's crypto, and the resource model every other part speaks. It
//! builds and tests with the stable toolchain alone (`cargo test -p cvpn-core`: no nightly, no
//! bpf-linker, no kernel object). The `gateway` crate re-exports these modules under the same
//! names (`gateway::protocol`, `gateway::datachannel`, `gateway::model`).
//!
//! * [`protocol`]: the OpenVPN wire protocol, sans-IO (packet codec, reliability, reset cookie,
//!   TLS glue, key-method 2, push, peer ids, one connection's control channel).
//! * [`datachannel`]: AEAD seal/open of data packets, the replay window, the inner-packet check.
//! * [`model`]: resources, ids, validation, policy, counters — depends on nothing else here.

pub mod datachannel;
pub mod model;
pub mod protocol;
