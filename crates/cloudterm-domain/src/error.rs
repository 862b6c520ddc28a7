//! Errors the services report; the server maps each variant to one HTTP status.

use cloudterm_store::StoreError;

/// What a service call can fail with. The server's `error.rs` is the only place that turns
/// these into HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The input is malformed or out of range.
    #[error("{0}")]
    InvalidInput(String),
    /// The resource does not exist, or belongs to someone else (never reveal which).
    #[error("{0} not found")]
    NotFound(String),
    /// The resource exists already, or is in the wrong state for this call.
    #[error("{0}")]
    Conflict(String),
    /// The caller is known but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// Over a quota: `kind` names it (`sandboxes`, `exec_rate`…).
    #[error("{message}")]
    QuotaExceeded {
        /// The quota kind, for the `quota_violations_total{type}` metric.
        kind: &'static str,
        /// A sentence for the caller.
        message: String,
        /// When to try again.
        retry_after_seconds: u64,
    },
    /// A dependency (store, storage, runtime) is down.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected state; details are logged, never shown.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for DomainError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => DomainError::NotFound("record".into()),
            StoreError::Conflict(what) => DomainError::Conflict(what),
            StoreError::Unavailable(why) => DomainError::Unavailable(format!("metadata store unavailable: {why}")),
            other => DomainError::Internal(other.to_string()),
        }
    }
}
