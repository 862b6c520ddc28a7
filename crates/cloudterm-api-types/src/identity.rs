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
    /// The quota kind: `sandboxes`, `exec_rate` or `storage` (bytes).
    pub kind: String,
    /// Current use.
    pub used: u64,
    /// The limit; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `storage` only: whether a write past the limit fails (an ext4 volume per workspace) or
    /// the limit is only reported (the process runtime, or a server that cannot mount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<bool>,
    /// `storage` only: the workspace measured (in `/me`, the caller's home workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
}

/// A JSON Web Key Set (RFC 7517), as served at `/.well-known/jwks.json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Jwks {
    /// The public keys.
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<serde_json::Value>,
}

/// `POST /dev/token` (an extension, only while the dev issuer is on): what to mint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevTokenRequest {
    /// The principal the token names (its `sub`).
    pub principal: String,
    /// How long the token is valid, in seconds: 60 to 604800 (7 days); default 43200 (12 hours).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// `POST /dev/token`: a dev-issuer token, as `cloudterm token` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DevTokenResponse {
    /// The JWT, for `Authorization: Bearer` (or `?token=` on the terminal's WebSocket).
    pub token: String,
    /// The principal it names.
    pub principal: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}
