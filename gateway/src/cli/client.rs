//! The API's HTTP client: the crate's HTTP/1.1 client ([`crate::http_client`]) under the names the
//! CLI uses.

// re-export: the client lives in http_client (shared with the connect handler's webhook calls)
pub use crate::http_client::{
    send, ClientError, Reply as ApiReply, Request as ApiRequest, Target, REQUEST_TIMEOUT,
};
