//! The OpenVPN protocol, written sans-IO: every module here turns bytes and events into bytes and
//! events, and leaves sockets, timers and threads to the daemon.
//!
//! * [`packet`]: the packet codec: opcodes, control/ack/data packet layouts, and the TCP
//!   length-prefix framing.
//! * [`reliable`]: the control channel's reliability layer (ids, selective acks, retransmit
//!   with backoff, in-order delivery, window of 6).
//! * [`cookie`]: the stateless, HMAC-cookie answer to a client's first reset.
//! * [`prf`]: OpenVPN's legacy TLS-PRF key derivation, for clients without TLS-EKM.
//! * [`tls`]: rustls server configuration and client-certificate facts (CN, OU groups).
//! * [`keymethod`]: key-method 2 records and the client's peer-info (`IV_*` keys).
//! * [`push`]: control-channel text messages, `PUSH_REPLY` building and cipher negotiation.
pub mod cookie;
pub mod keymethod;
pub mod packet;
pub mod peer_id;
pub mod prf;
pub mod push;
pub mod reliable;
pub mod session;
pub mod tls;
