//! I/O: moves bytes between the kernel and the endpoint (sockets, the TUN's sending thread).
//! Nothing here decides anything about a client; it enforces the bounds on what a peer can
//! make the daemon hold.

pub mod tcp;
pub mod tx;
