//! The control plane's error ([`ApiError`], AWS-style codes) and how database errors become one.

// re-export: the type lives in model
pub use crate::model::error::{codes, ApiError};

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}
