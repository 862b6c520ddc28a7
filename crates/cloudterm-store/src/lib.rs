//! The metadata Store of cloudterm: the `Store` trait the domain talks to, its record types,
//! and `open`, which picks a backend from a URL: SQLite (one server) or PostgreSQL (several
//! servers sharing one database).
//!
//! Every getter returns [`StoreError::NotFound`] for a missing row, so `?` carries a 404 up;
//! every list is ordered as its doc says, so callers never sort.

mod codec;
mod error;
mod postgres;
mod records;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use error::StoreError;
pub use postgres::PgStore;
pub use records::{
    AuditRecord, NewAuditRecord, PreviewRecord, PrincipalRecord, SandboxRecord, ShareRecord, SnapshotLayerRecord,
    SnapshotRecord, SnapshotState, WorkerRecord, WorkerVersionRecord, WorkspaceRecord,
};
pub use sqlite::SqliteStore;

/// Opens the store named by `url` and brings its schema up to date.
///
/// - `sqlite://PATH` (or `sqlite:PATH`): the file is created if missing; WAL journal, 5 s busy
///   timeout, foreign keys on, a small pool.
/// - `sqlite::memory:`: a private in-memory database (one connection), for tests.
/// - `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (or `postgresql://…`, with libpq-style
///   parameters such as `?sslmode=require`): the database must exist; a pool of 10 connections,
///   5 s to get one (so a server that is down reads as `Unavailable` within 5 s).
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    match scheme {
        "sqlite" => Ok(Arc::new(SqliteStore::open(url).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::open(url).await?)),
        // Never echo the whole URL: it may carry a password.
        other => Err(StoreError::Unsupported(format!(
            "unknown store url scheme {other:?}, expected sqlite:// or postgres://"
        ))),
    }
}

/// Metadata persistence for every cloudterm service. Implementations: [`SqliteStore`] and
/// [`PgStore`], which answer every method alike (the same tests run against both). Methods that
/// take a record store it as given, ids included.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name of the backend, for logs and `/health/ready` (`sqlite` or `postgres`).
    fn backend_name(&self) -> &'static str;

    /// Readiness: runs a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    // ---- principals ----

    /// Returns the principal, creating it together with its home workspace on first sight.
    ///
    /// An existing principal is returned unchanged (`home` is then ignored). Otherwise the
    /// principal and `home` (forced to `owner = principal`, `is_home = true`) are inserted in one
    /// transaction. Safe under concurrency: racing first calls all return the same record and
    /// exactly one home workspace exists.
    async fn ensure_principal(
        &self,
        principal: &str,
        home: WorkspaceRecord,
        now: DateTime<Utc>,
    ) -> Result<PrincipalRecord, StoreError>;

    /// The principal, or `NotFound`.
    async fn get_principal(&self, principal: &str) -> Result<PrincipalRecord, StoreError>;

    // ---- workspaces ----

    /// Inserts a workspace. `Conflict` if the id exists or the owner already has one by that
    /// name (or already has a home workspace when `is_home`).
    async fn insert_workspace(&self, workspace: &WorkspaceRecord) -> Result<(), StoreError>;

    /// The workspace, or `NotFound`.
    async fn get_workspace(&self, id: &str) -> Result<WorkspaceRecord, StoreError>;

    /// The owner's workspaces, oldest first; with `tag`, only those carrying exactly that tag.
    async fn list_workspaces_by_owner(
        &self,
        owner: &str,
        tag: Option<&str>,
    ) -> Result<Vec<WorkspaceRecord>, StoreError>;

    /// Workspaces shared with `agent_id`, each with the granted permission, oldest grant first.
    async fn list_workspaces_shared_with(&self, agent_id: &str) -> Result<Vec<(WorkspaceRecord, String)>, StoreError>;

    /// Deletes the workspace and its shares (the audit trail stays). `NotFound` if absent,
    /// `Conflict` if it is a principal's home workspace.
    async fn delete_workspace(&self, id: &str) -> Result<(), StoreError>;

    // ---- sandboxes ----

    /// Inserts a sandbox. `Conflict` if the id exists.
    async fn insert_sandbox(&self, sandbox: &SandboxRecord) -> Result<(), StoreError>;

    /// The sandbox, or `NotFound`.
    async fn get_sandbox(&self, id: &str) -> Result<SandboxRecord, StoreError>;

    /// The owner's sandboxes, oldest first.
    async fn list_sandboxes_by_owner(&self, owner: &str) -> Result<Vec<SandboxRecord>, StoreError>;

    /// Every sandbox whose state is one of `states`, oldest first (empty `states`: none).
    async fn list_sandboxes_in_states(&self, states: &[&str]) -> Result<Vec<SandboxRecord>, StoreError>;

    /// Sets the state and `updated_at`. `NotFound` if absent.
    async fn update_sandbox_state(&self, id: &str, state: &str, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Sets the state only if the current one is in `expected` (an atomic compare-and-set, so
    /// two racing transitions cannot both win). `Ok(false)` when the state did not match,
    /// `NotFound` if absent.
    async fn transition_sandbox_state(
        &self,
        id: &str,
        expected: &[&str],
        state: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Sets `expires_at` and `updated_at`. `NotFound` if absent.
    async fn update_sandbox_expiry(
        &self,
        id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Deletes the sandbox and its previews. `NotFound` if absent.
    async fn delete_sandbox(&self, id: &str) -> Result<(), StoreError>;

    // ---- snapshots ----

    /// Registers a snapshot as `Pending` (whatever `snapshot.state` says): it is listed only
    /// after [`Store::mark_snapshot_ready`]. `Conflict` if the id exists.
    async fn insert_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), StoreError>;

    /// Records the final sizes, checksum and writable layer, and makes the snapshot `Ready`.
    /// `NotFound` if absent.
    async fn mark_snapshot_ready(
        &self,
        id: &str,
        size_bytes: i64,
        stored_bytes: i64,
        file_count: i64,
        sha256: Option<&str>,
        layer: Option<&SnapshotLayerRecord>,
    ) -> Result<(), StoreError>;

    /// The snapshot in any state, or `NotFound`.
    async fn get_snapshot(&self, id: &str) -> Result<SnapshotRecord, StoreError>;

    /// The workspace's `Ready` snapshots, newest first.
    async fn list_snapshots(&self, workspace_id: &str) -> Result<Vec<SnapshotRecord>, StoreError>;

    /// Every `Pending` snapshot, oldest first (for clean-up after a crash).
    async fn list_pending_snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError>;

    /// Pins or unpins. `NotFound` if absent.
    async fn set_snapshot_pinned(&self, id: &str, pinned: bool) -> Result<(), StoreError>;

    /// Deletes the record (not the blob). `NotFound` if absent.
    async fn delete_snapshot(&self, id: &str) -> Result<(), StoreError>;

    // ---- shares and their audit trail ----

    /// Grants, or replaces the permission, grantor and time of an existing grant.
    /// `NotFound` if the workspace does not exist.
    async fn put_share(&self, share: &ShareRecord) -> Result<(), StoreError>;

    /// The grant of `agent_id` on the workspace, or `NotFound`.
    async fn get_share(&self, workspace_id: &str, agent_id: &str) -> Result<ShareRecord, StoreError>;

    /// The workspace's grants, oldest first.
    async fn list_shares(&self, workspace_id: &str) -> Result<Vec<ShareRecord>, StoreError>;

    /// Revokes a grant. `NotFound` if there is none.
    async fn delete_share(&self, workspace_id: &str, agent_id: &str) -> Result<(), StoreError>;

    /// Appends to the workspace's audit trail and returns the entry with its sequence number.
    async fn append_audit(&self, entry: &NewAuditRecord) -> Result<AuditRecord, StoreError>;

    /// [`put_share`](Store::put_share) and [`append_audit`](Store::append_audit) in one
    /// transaction: a grant is never in force unrecorded, nor recorded but not in force.
    async fn grant_share(&self, share: &ShareRecord, audit: &NewAuditRecord) -> Result<AuditRecord, StoreError>;

    /// [`delete_share`](Store::delete_share) and [`append_audit`](Store::append_audit) in one
    /// transaction. `NotFound` (and nothing recorded) if there is no such grant.
    async fn revoke_share(
        &self,
        workspace_id: &str,
        agent_id: &str,
        audit: &NewAuditRecord,
    ) -> Result<AuditRecord, StoreError>;

    /// The workspace's audit trail, oldest first (append order).
    async fn list_audit(&self, workspace_id: &str) -> Result<Vec<AuditRecord>, StoreError>;

    // ---- marketplace workers ----

    /// Inserts a worker. `Conflict` if the name (or id) is taken.
    async fn insert_worker(&self, worker: &WorkerRecord) -> Result<(), StoreError>;

    /// The worker, or `NotFound`.
    async fn get_worker(&self, id: &str) -> Result<WorkerRecord, StoreError>;

    /// The worker with that exact name, or `NotFound`.
    async fn get_worker_by_name(&self, name: &str) -> Result<WorkerRecord, StoreError>;

    /// Publishes a version. Versions are immutable: `Conflict` if `(worker_id, version)`
    /// exists; `NotFound` if the worker does not. The highest version by semver precedence
    /// (not the last published) is the worker's latest, which search shows.
    async fn insert_worker_version(&self, version: &WorkerVersionRecord) -> Result<(), StoreError>;

    /// The worker's versions, highest semver precedence first (so the first is the latest);
    /// equal precedence, newest first.
    async fn list_worker_versions(&self, worker_id: &str) -> Result<Vec<WorkerVersionRecord>, StoreError>;

    /// Ranked marketplace search over each worker's name and latest description and tags.
    ///
    /// `q` is free user text, never query syntax: it is split into words and each word is
    /// matched as a quoted prefix, any word sufficing, best matches first. The rank is a
    /// relevance score, higher is better. An empty `q` (or one with no words) lists workers by
    /// the recency of their latest version, with rank 0. `tag` keeps only workers whose latest
    /// version carries exactly that tag. Workers without a version are never returned.
    async fn search_workers(
        &self,
        q: Option<&str>,
        tag: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(WorkerRecord, WorkerVersionRecord, f64)>, StoreError>;

    // ---- previews ----

    /// Registers a preview, or updates `public` and `fallback_sandbox_id` of the existing one on
    /// `(sandbox_id, port)` (owner and creation time stay). Returns the stored record.
    /// `NotFound` if the sandbox does not exist.
    async fn put_preview(&self, preview: &PreviewRecord) -> Result<PreviewRecord, StoreError>;

    /// The preview, or `NotFound`.
    async fn get_preview(&self, sandbox_id: &str, port: u16) -> Result<PreviewRecord, StoreError>;

    /// The owner's previews, oldest first.
    async fn list_previews_by_owner(&self, owner: &str) -> Result<Vec<PreviewRecord>, StoreError>;

    /// Every preview, oldest first (the preview router's health checker walks them all).
    async fn list_previews(&self) -> Result<Vec<PreviewRecord>, StoreError>;

    /// The sandbox's previews, by port.
    async fn list_previews_by_sandbox(&self, sandbox_id: &str) -> Result<Vec<PreviewRecord>, StoreError>;

    /// Unregisters a preview. `NotFound` if absent.
    async fn delete_preview(&self, sandbox_id: &str, port: u16) -> Result<(), StoreError>;
}
