//! The plain record types the store reads and writes: one struct per table, no behaviour.
//!
//! Ids are chosen by the caller (`ws_…`, `sbx_…`); the store never generates one except the
//! audit sequence number. Times are kept to millisecond precision (see docs/data_models.md), so a
//! record read back carries its times truncated to whole milliseconds.

use chrono::{DateTime, Utc};

/// A principal (a person or an agent) the platform has seen, with its home workspace.
#[derive(Clone, Debug, PartialEq)]
pub struct PrincipalRecord {
    /// The token subject, e.g. `alice`.
    pub id: String,
    /// The workspace created with the principal; it cannot be deleted while the principal exists.
    pub home_workspace_id: String,
    /// When the principal was first seen.
    pub created_at: DateTime<Utc>,
}

/// A persistent workspace: files that outlive sandboxes, owned by one principal.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkspaceRecord {
    /// `ws_…`.
    pub id: String,
    /// The owning principal.
    pub owner: String,
    /// Unique per owner.
    pub name: String,
    /// Free text, empty when not given.
    pub description: String,
    /// Free-form labels, in the order given.
    pub tags: Vec<String>,
    /// True for the workspace created with the principal (exactly one per principal).
    pub is_home: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A sandbox and its lifecycle state.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxRecord {
    /// `sbx_…`.
    pub id: String,
    /// The owning principal.
    pub owner: String,
    /// The workspace mounted at `/workspace`, if any.
    pub workspace_id: Option<String>,
    /// Lifecycle state chosen by the domain (`starting`, `running`, `stopped`, …).
    pub state: String,
    /// The runtime backend that runs it (`linux`, `firecracker`, `process`, …).
    pub runtime: String,
    /// The base image asked for, if any.
    pub image: Option<String>,
    /// Resource limits as given to the runtime (a JSON object).
    pub limits: serde_json::Value,
    /// Caller-supplied metadata (a JSON object).
    pub metadata: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When the idle timeout ends it.
    pub expires_at: DateTime<Utc>,
    /// Last change of state or expiry.
    pub updated_at: DateTime<Utc>,
}

/// Whether a snapshot's bytes are durably stored yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotState {
    /// Registered, bytes still being written; never listed.
    Pending,
    /// Completely and durably stored; listed.
    Ready,
}

impl SnapshotState {
    /// The stored text form: `pending` or `ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
        }
    }

    /// Parses the stored text form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "ready" => Some(Self::Ready),
            _ => None,
        }
    }
}

/// A snapshot of a workspace, stored as one object in the BlobStore.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRecord {
    /// `snap_…`.
    pub id: String,
    /// The workspace it captures.
    pub workspace_id: String,
    /// The principal that owns the workspace.
    pub owner: String,
    /// Optional human label.
    pub label: Option<String>,
    /// `manual`, `idle` or `daily`.
    pub kind: String,
    /// Pinned snapshots are exempt from retention.
    pub pinned: bool,
    /// Pending until the blob is durable.
    pub state: SnapshotState,
    /// Where the BlobStore keeps the archive.
    pub object_key: String,
    /// Uncompressed size of the files.
    pub size_bytes: i64,
    /// Size of the stored archive.
    pub stored_bytes: i64,
    /// Number of files in the archive.
    pub file_count: i64,
    /// Hex SHA-256 of the stored archive, once known.
    pub sha256: Option<String>,
    /// The sandbox's writable layer, stored as a second object; `None` for a snapshot of the
    /// workspace alone (no sandbox, a runtime without layers, an import).
    pub layer: Option<SnapshotLayerRecord>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// The writable layer of a snapshot: a second archive beside the workspace's, kept in one
/// JSON column (`snapshots.layer`) because it is read and written only with its snapshot.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotLayerRecord {
    /// Where the BlobStore keeps the layer archive.
    pub object_key: String,
    /// The image the sandbox ran (`None`: the runtime's default); a layer only fits it.
    pub image: Option<String>,
    /// Uncompressed size of the layer's files.
    pub size_bytes: i64,
    /// Size of the stored layer archive.
    pub stored_bytes: i64,
    /// Entries in the layer archive that are not directories.
    pub file_count: i64,
    /// Hex SHA-256 of the stored layer archive.
    pub sha256: String,
    /// The top-level directories of the archive that are overlay upper layers (their `.wh.`
    /// markers are whiteouts); the others are plain trees.
    #[serde(default)]
    pub overlays: Vec<String>,
}

/// A grant of a permission on a workspace to another principal.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareRecord {
    /// The shared workspace.
    pub workspace_id: String,
    /// The principal it is shared with.
    pub agent_id: String,
    /// `read`, `write` or `admin`.
    pub permission: String,
    /// Who granted it (last).
    pub granted_by: String,
    /// When it was granted (last).
    pub granted_at: DateTime<Utc>,
}

/// One entry of a workspace's sharing audit trail, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    /// Sequence number assigned by the store, increasing in append order.
    pub id: i64,
    /// The workspace concerned.
    pub workspace_id: String,
    /// Who did it.
    pub actor: String,
    /// What was done (`share`, `revoke`, …).
    pub action: String,
    /// To whom (an agent id) or what.
    pub subject: String,
    /// The permission granted, when the action has one.
    pub permission: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// An audit entry to append: an [`AuditRecord`] before the store numbers it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAuditRecord {
    /// The workspace concerned.
    pub workspace_id: String,
    /// Who did it.
    pub actor: String,
    /// What was done (`share`, `revoke`, …).
    pub action: String,
    /// To whom (an agent id) or what.
    pub subject: String,
    /// The permission granted, when the action has one.
    pub permission: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A marketplace worker: a name owned by its author; its content lives in versions.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerRecord {
    /// `wkr_…`.
    pub id: String,
    /// Unique across the marketplace.
    pub name: String,
    /// The publishing principal.
    pub author: String,
    /// First publication time.
    pub created_at: DateTime<Utc>,
}

/// One immutable published version of a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerVersionRecord {
    /// The worker it belongs to.
    pub worker_id: String,
    /// Version string, unique per worker (e.g. `1.2.0`).
    pub version: String,
    /// Free text, searched.
    pub description: String,
    /// Labels, searched and filterable.
    pub tags: Vec<String>,
    /// The command the worker runs.
    pub command: String,
    /// BlobStore key of the worker's files, if it has any.
    pub files_key: Option<String>,
    /// Publication time; the newest version is the worker's latest.
    pub created_at: DateTime<Utc>,
}

/// A registered preview: a port in a sandbox reachable through the preview router.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviewRecord {
    /// The sandbox serving the port.
    pub sandbox_id: String,
    /// The port inside the sandbox.
    pub port: u16,
    /// The principal that registered it.
    pub owner: String,
    /// Reachable without a token.
    pub public: bool,
    /// Sandbox to route to when this one is down.
    pub fallback_sandbox_id: Option<String>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}
