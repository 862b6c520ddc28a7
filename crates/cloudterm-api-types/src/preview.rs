//! Bodies of the preview router: registering a port, listing previews, signed links.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /sandboxes/{id}/preview`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxPreviewRequest {
    /// The TCP port inside the sandbox (1–65535).
    pub port: u32,
    /// Reachable by anyone with the URL (default false: the owner's token or a signed link).
    #[serde(default)]
    pub public: Option<bool>,
}

/// `POST /preview/register`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterPreviewRequest {
    /// The sandbox serving the port.
    pub sandbox_id: String,
    /// The TCP port inside the sandbox (1–65535).
    pub port: u32,
    /// Another of the caller's sandboxes serving the same port, routed to when this one fails
    /// its health check or cannot be connected to.
    #[serde(default)]
    pub fallback_sandbox_id: Option<String>,
    /// Reachable by anyone with the URL (default false).
    #[serde(default)]
    pub public: Option<bool>,
}

/// Names one preview: `POST /preview/unregister`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewKey {
    /// The sandbox serving the port.
    pub sandbox_id: String,
    /// The port.
    pub port: u32,
}

/// `POST /preview/link`: a signed, expiring link to a private preview.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewLinkRequest {
    /// The sandbox serving the port.
    pub sandbox_id: String,
    /// The port.
    pub port: u32,
    /// Lifetime of the link, seconds (default `preview.link_ttl_seconds`; 1 to 604800).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A signed link: opening it sets a cookie scoped to the preview's path, so a browser can
/// follow it without a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PreviewLinkResponse {
    /// The preview's URL with the signed token in its query.
    pub url: String,
    /// When the link (and the cookie it sets) stops working.
    pub expires_at: DateTime<Utc>,
}

/// A registered preview.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PreviewResponse {
    /// Where it is served: `{base}/preview/{sandbox_id}/{port}/`.
    pub url: String,
    /// The sandbox serving the port.
    pub sandbox_id: String,
    /// The port.
    pub port: u16,
    /// Reachable without credentials.
    pub public: bool,
    /// The principal that registered it (`GET /preview/list` also shows a workspace's owner
    /// and admins the previews collaborators registered on its sandboxes).
    pub registered_by: String,
    /// The primary target answered its last health check (a TCP connect through the agent).
    pub healthy: bool,
    /// The fallback sandbox, if one was registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_sandbox_id: Option<String>,
    /// The fallback answered its last health check (only with a fallback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_healthy: Option<bool>,
    /// Where requests go now: the sandbox, or the fallback once promoted.
    pub active_sandbox_id: String,
    /// Requests go to the fallback because the primary failed.
    pub promoted: bool,
    /// Registration time.
    pub created_at: DateTime<Utc>,
    /// Time of the last health check, if any ran yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
}

/// `GET /preview/list`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PreviewList {
    /// The caller's previews, oldest first.
    pub previews: Vec<PreviewResponse>,
}
