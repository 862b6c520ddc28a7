//! Bodies of the identity routes: `/me` and the dev issuer's JWKS.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /me`: who the token says you are.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MeResponse {
    /// The principal: the token's subject (or the configured claim). A person or an AI agent.
    pub principal: String,
    /// The principal's home workspace, created on first sight.
    pub home_workspace_id: String,
    /// When the principal was first seen.
    pub created_at: DateTime<Utc>,
    /// When the presented token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<DateTime<Utc>>,
    /// Usage against limits, one entry per quota kind.
    pub quota: Vec<QuotaUsage>,
}

/// One quota: how much is used of how much is allowed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaUsage {
    /// The quota kind, e.g. `sandboxes`.
    pub kind: String,
    /// Current use.
    pub used: u64,
    /// The limit; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// A JSON Web Key Set (RFC 7517), as served at `/.well-known/jwks.json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Jwks {
    /// The public keys.
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<serde_json::Value>,
}
