//! The one JSON error envelope every failing route answers with.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": {"code": "not_found", "message": "human sentence"}}`: the body of every 4xx and 5xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    /// The error itself.
    pub error: ErrorBody,
}

/// A machine-readable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code, e.g. `unauthorized`, `not_found`, `payload_too_large`.
    #[schema(example = "not_found")]
    pub code: String,
    /// A human sentence; never contains internal details for 5xx errors.
    #[schema(example = "sandbox sbx_123 not found")]
    pub message: String,
    /// The request id, to find the request in the server's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorEnvelope {
    /// Builds an envelope from a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorEnvelope { error: ErrorBody { code: code.into(), message: message.into(), request_id: None } }
    }
}
