//! Liveness and readiness bodies.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /health`: the process is up and serving.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// Always `ok` when the server answers at all.
    pub status: String,
    /// The cloudterm version.
    pub version: String,
}

/// `GET /health/ready`: every dependency answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReadinessResponse {
    /// `ready` when every check passed, `not_ready` otherwise (then the status is 503).
    pub status: String,
    /// One entry per dependency: `store`, `storage`, `runtime`, `identity`.
    pub checks: Vec<CheckResult>,
}

/// The outcome of one readiness check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Which backend answered, e.g. `sqlite`, `local`, `linux`.
    pub backend: String,
    /// Why it failed, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the check took.
    pub duration_ms: u64,
}
