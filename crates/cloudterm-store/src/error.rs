//! `StoreError`, the one error type of the store, and its mapping from `sqlx::Error`.

/// Why a store operation failed.
///
/// Messages are lower-case sentences without a trailing period, fit to wrap into a domain error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record (or the parent a new record refers to) does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule or another invariant refused the write (duplicate name, immutable
    /// version, deleting a home workspace).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached or failed to answer (pool, I/O, locking, migrations).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The requested backend or operation is not available in this build.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A stored row could not be decoded into its record.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A `Corrupt` error naming what failed to decode.
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }
}

/// PostgreSQL's SQLSTATE for text its encoding cannot hold; SQLite's codes are numeric, so this
/// never matches one of its errors.
const PG_CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";

impl From<sqlx::Error> for StoreError {
    /// The generic mapping. Call sites that know better (a unique violation that means "that
    /// name is taken", a foreign key that means "the parent is missing") map first.
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::Database(db) => {
                if db.is_unique_violation() {
                    Self::Conflict(format!("already exists ({})", db.message()))
                } else if db.is_foreign_key_violation() {
                    Self::Conflict(format!("still referenced ({})", db.message()))
                } else if db.code().as_deref() == Some(PG_CHARACTER_NOT_IN_REPERTOIRE) {
                    // PostgreSQL text cannot hold NUL (the only character a Rust string can
                    // carry that it refuses): the value is refused, the server is fine.
                    Self::Conflict("text containing a NUL character cannot be stored".to_owned())
                } else {
                    Self::Unavailable(format!("database error: {}", db.message()))
                }
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. } => Self::Corrupt(err.to_string()),
            sqlx::Error::Migrate(e) => Self::Unavailable(format!("migration failed: {e}")),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// True when `err` is a unique (or primary key) violation.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// True when `err` is a foreign key violation.
pub(crate) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Maps a unique violation to `Conflict(message)`, anything else generically.
pub(crate) fn unique_as_conflict(message: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |err| {
        if is_unique_violation(&err) {
            StoreError::Conflict(message.to_owned())
        } else {
            StoreError::from(err)
        }
    }
}

/// Maps a foreign key violation to `NotFound` (the parent row is missing), a unique violation
/// to `Conflict(message)`, anything else generically.
pub(crate) fn insert_child_error(message: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |err| {
        if is_foreign_key_violation(&err) {
            StoreError::NotFound
        } else if is_unique_violation(&err) {
            StoreError::Conflict(message.to_owned())
        } else {
            StoreError::from(err)
        }
    }
}
