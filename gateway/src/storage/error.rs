//! The control plane's error ([`ApiError`], AWS-style codes). Database errors become one
//! through `From<rusqlite::Error>`, which lives with the type in `cvpn-core` (its `sqlite`
//! feature, which this crate turns on).

// re-export: the type lives in model
pub use crate::model::error::{codes, ApiError};
