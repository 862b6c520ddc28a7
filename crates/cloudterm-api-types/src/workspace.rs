//! Bodies of the Agent Workspace API: workspaces, sharing, the audit trail and worker runs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ExecResponseBody;

/// `POST /workspaces`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`, unique among the owner's workspaces.
    pub name: String,
    /// Labels (at most 20, each 1 to 32 of `A-Z a-z 0-9 . _ - :`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free text, at most 1000 bytes.
    #[serde(default)]
    pub description: Option<String>,
}

/// A workspace as the caller sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceResponse {
    /// `ws_…`.
    pub id: String,
    /// Name.
    pub name: String,
    /// The owning principal.
    pub owner: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Description (empty when none).
    pub description: String,
    /// The principal's home workspace (cannot be deleted).
    pub is_home: bool,
    /// The caller's permission: `owner`, `admin`, `write` or `read`.
    pub permission: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Storage used against the owner's per-workspace limit (`GET /workspaces/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::QuotaUsage>,
}

/// `GET /workspaces`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceList {
    /// Owned ones first (oldest first), then shared ones (oldest grant first).
    pub workspaces: Vec<WorkspaceResponse>,
}

/// `POST /workspaces/{id}/share`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// The principal to share with (a token's subject: a person or an agent).
    pub agent_id: String,
    /// `read`, `write` or `admin`.
    pub permission: String,
}

/// A grant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShareResponse {
    /// Who it is granted to.
    pub agent_id: String,
    /// `read`, `write` or `admin`.
    pub permission: String,
}

/// One collaborator.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Collaborator {
    /// The principal.
    pub agent_id: String,
    /// `read`, `write` or `admin`.
    pub permission: String,
    /// Who granted it (last).
    pub granted_by: String,
    /// When.
    pub granted_at: DateTime<Utc>,
}

/// `GET /workspaces/{id}/collaborators`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CollaboratorList {
    /// The owner, who is always admin and is not in `collaborators`.
    pub owner: String,
    /// Grants, oldest first.
    pub collaborators: Vec<Collaborator>,
}

/// One entry of the sharing audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Sequence number, increasing.
    pub id: i64,
    /// Who did it.
    pub actor: String,
    /// `share` or `revoke`.
    pub action: String,
    /// The principal concerned.
    pub subject: String,
    /// The permission granted (for `share`).
    pub permission: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// `GET /workspaces/{id}/audit`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// Oldest first.
    pub entries: Vec<AuditEntry>,
}

/// `POST /workspaces/{id}/workers/{worker_id}/run`; the body may be empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunWorkerRequest {
    /// The version to run (default: the latest).
    #[serde(default)]
    pub version: Option<String>,
    /// Extra environment of the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kill the command after this many seconds (default 60, at most 3600).
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
}

/// What a worker run did: the exec result, and which worker ran where.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunWorkerResponse {
    /// `wkr_…`.
    pub worker_id: String,
    /// The worker's name.
    pub name: String,
    /// The version that ran.
    pub version: String,
    /// The workspace's sandbox it ran in.
    pub sandbox_id: String,
    /// Files installed into `.workers/NAME/` before the command ran.
    pub installed_files: u64,
    /// The command's result.
    #[serde(flatten)]
    pub result: ExecResponseBody,
}
