//! Bodies of the Snapshot API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /snapshot/create`. With neither id, the caller's home workspace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// Snapshot this sandbox's workspace (the sandbox is frozen while its files are read).
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Snapshot this workspace.
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// A label for people (at most 200 bytes).
    #[serde(default)]
    pub label: Option<String>,
    /// Keep it regardless of retention.
    #[serde(default)]
    pub pinned: bool,
}

/// A stored snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotResponse {
    /// `snap_…`.
    pub snapshot_id: String,
    /// The workspace it captures.
    pub workspace_id: String,
    /// Label.
    pub label: Option<String>,
    /// Bytes of the files in it.
    pub size_bytes: u64,
    /// Bytes in storage (compressed, maybe encrypted).
    pub stored_bytes: u64,
    /// Files in it.
    pub file_count: u64,
    /// Hex SHA-256 of the stored bytes (what `/download` returns).
    pub sha256: String,
    /// `manual`, `idle`, `daily` or `import`.
    pub kind: String,
    /// Exempt from retention.
    pub pinned: bool,
    /// Whether storage holds it encrypted (then `/download` is not a plain `.tar.zst`).
    pub encrypted: bool,
    /// The sandbox's writable layer stored with the workspace, if one was taken: what
    /// `POST /sandboxes {"snapshot_id"}` starts a sandbox with.
    #[serde(default)]
    pub layer: Option<SnapshotLayerInfo>,
    /// When it was taken.
    pub created_at: DateTime<Utc>,
}

/// The writable layer (everything a sandbox changed outside `/workspace`) of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotLayerInfo {
    /// The image the sandbox ran; absent for the default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Bytes of the files in it.
    pub size_bytes: u64,
    /// Bytes in storage.
    pub stored_bytes: u64,
    /// Entries in it that are not directories.
    pub file_count: u64,
    /// Hex SHA-256 of the stored layer archive.
    pub sha256: String,
}

/// `GET /snapshot/list`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// Newest first.
    pub snapshots: Vec<SnapshotResponse>,
}

/// `POST /snapshot/restore`. With neither id, into the snapshot's own workspace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshotRequest {
    /// The snapshot.
    pub snapshot_id: String,
    /// Restore into this sandbox's workspace; the running sandbox sees the files at once.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Restore into this workspace.
    #[serde(default)]
    pub workspace_id: Option<String>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestoreSnapshotResponse {
    /// The snapshot restored.
    pub snapshot_id: String,
    /// The workspace that now holds its files.
    pub workspace_id: String,
    /// Files written.
    pub restored_files: u64,
}

/// `POST /snapshot/{snapshot_id}/pin`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinSnapshotRequest {
    /// Pin (true) or unpin (false).
    pub pinned: bool,
}
