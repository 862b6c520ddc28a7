//! What the workspace service takes and gives.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cloudterm_runtime::ExecResult;

use crate::access::Access;

/// `POST /workspaces`.
#[derive(Debug, Clone, Default)]
pub struct CreateWorkspace {
    /// Unique among the owner's workspaces.
    pub name: String,
    /// Labels to filter by.
    pub tags: Vec<String>,
    /// Free text.
    pub description: Option<String>,
}

/// A workspace as one caller sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    /// `ws_…`.
    pub id: String,
    /// Name.
    pub name: String,
    /// The owning principal.
    pub owner: String,
    /// Description (empty when none).
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The principal's home workspace (cannot be deleted).
    pub is_home: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// What the caller may do on it.
    pub permission: Access,
}

/// `POST /workspaces/{id}/workers/{worker_id}/run`.
#[derive(Debug, Clone, Default)]
pub struct RunWorker {
    /// The version to run; the latest when `None`.
    pub version: Option<String>,
    /// Extra environment of the command.
    pub env: BTreeMap<String, String>,
    /// The agent's timeout in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// What a worker run did.
#[derive(Debug)]
pub struct WorkerRun {
    /// The worker's id.
    pub worker_id: String,
    /// The worker's name.
    pub name: String,
    /// The version that ran.
    pub version: String,
    /// The sandbox it ran in.
    pub sandbox_id: String,
    /// Files installed before the command ran.
    pub installed_files: u64,
    /// The command's result.
    pub result: ExecResult,
}
