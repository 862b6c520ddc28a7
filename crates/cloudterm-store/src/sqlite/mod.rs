//! `SqliteStore`: the embedded SQLite implementation of `Store`, its connection setup and
//! migrations, and the column codecs shared by the per-table modules.
//!
//! SQL here is kept portable for the PostgreSQL twin in `crate::postgres` (`$n` placeholders,
//! `ON CONFLICT`, `RETURNING`, no SQLite functions); only `worker_search` uses FTS5.
//! Transactions always write before they read: SQLite's deferred transactions take the write
//! lock at the first write and wait for it (busy timeout), whereas a read-then-write one can
//! fail outright.

mod previews;
mod principals;
mod sandboxes;
mod shares;
mod snapshots;
mod worker_search;
mod workers;
mod workspaces;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::Row;

use crate::codec;
use crate::{
    AuditRecord, NewAuditRecord, PreviewRecord, PrincipalRecord, SandboxRecord, ShareRecord, SnapshotLayerRecord,
    SnapshotRecord, Store, StoreError, WorkerRecord, WorkerVersionRecord, WorkspaceRecord,
};

/// Connections of a file-backed pool. SQLite serializes writers anyway; a few connections let
/// readers proceed beside the writer (WAL).
const FILE_POOL_SIZE: u32 = 4;
/// How long a connection waits for SQLite's write lock before giving up with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free pool connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata store in one SQLite file (or in memory, for tests).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Connects to `url` (`sqlite://PATH`, `sqlite:PATH` or `sqlite::memory:`) and runs the
    /// embedded migrations; a second open of the same file applies nothing new.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unsupported(format!("invalid sqlite url: {e}")))?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool_options = if in_memory {
            // Every connection to a shared in-memory database would contend on table locks that
            // ignore the busy timeout, and the database vanishes with its last connection: keep
            // exactly one, forever.
            SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None)
        } else {
            options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // NORMAL is durable across application crashes in WAL mode and much faster.
                .synchronous(SqliteSynchronous::Normal);
            SqlitePoolOptions::new().max_connections(FILE_POOL_SIZE)
        };
        let pool = pool_options.acquire_timeout(ACQUIRE_TIMEOUT).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;
        tracing::debug!(in_memory, "sqlite store open");
        Ok(Self { pool })
    }

    /// Closes every connection; later calls fail with `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) use crate::codec::{expect_one, placeholders, to_json_list, to_json_text, to_millis};

/// Reads a unix-milliseconds column.
pub(crate) fn time_col(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>, StoreError> {
    codec::from_millis(col, row.try_get(col)?)
}

/// Reads a JSON-text list of strings.
pub(crate) fn list_col(row: &SqliteRow, col: &str) -> Result<Vec<String>, StoreError> {
    codec::parse_json_list(col, &row.try_get::<String, _>(col)?)
}

/// Reads a JSON-text column.
pub(crate) fn json_col(row: &SqliteRow, col: &str) -> Result<serde_json::Value, StoreError> {
    codec::parse_json(col, &row.try_get::<String, _>(col)?)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn ensure_principal(
        &self,
        principal: &str,
        home: WorkspaceRecord,
        now: DateTime<Utc>,
    ) -> Result<PrincipalRecord, StoreError> {
        principals::ensure(&self.pool, principal, home, now).await
    }

    async fn get_principal(&self, principal: &str) -> Result<PrincipalRecord, StoreError> {
        principals::get(&self.pool, principal).await
    }

    async fn insert_workspace(&self, workspace: &WorkspaceRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        workspaces::insert(&mut tx, workspace).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_workspace(&self, id: &str) -> Result<WorkspaceRecord, StoreError> {
        workspaces::get(&self.pool, id).await
    }

    async fn list_workspaces_by_owner(
        &self,
        owner: &str,
        tag: Option<&str>,
    ) -> Result<Vec<WorkspaceRecord>, StoreError> {
        workspaces::list_by_owner(&self.pool, owner, tag).await
    }

    async fn list_workspaces_shared_with(&self, agent_id: &str) -> Result<Vec<(WorkspaceRecord, String)>, StoreError> {
        workspaces::list_shared_with(&self.pool, agent_id).await
    }

    async fn delete_workspace(&self, id: &str) -> Result<(), StoreError> {
        workspaces::delete(&self.pool, id).await
    }

    async fn insert_sandbox(&self, sandbox: &SandboxRecord) -> Result<(), StoreError> {
        sandboxes::insert(&self.pool, sandbox).await
    }

    async fn get_sandbox(&self, id: &str) -> Result<SandboxRecord, StoreError> {
        sandboxes::get(&self.pool, id).await
    }

    async fn list_sandboxes_by_owner(&self, owner: &str) -> Result<Vec<SandboxRecord>, StoreError> {
        sandboxes::list_by_owner(&self.pool, owner).await
    }

    async fn list_sandboxes_in_states(&self, states: &[&str]) -> Result<Vec<SandboxRecord>, StoreError> {
        sandboxes::list_in_states(&self.pool, states).await
    }

    async fn update_sandbox_state(&self, id: &str, state: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        sandboxes::update_state(&self.pool, id, state, now).await
    }

    async fn transition_sandbox_state(
        &self,
        id: &str,
        expected: &[&str],
        state: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        sandboxes::transition_state(&self.pool, id, expected, state, now).await
    }

    async fn update_sandbox_expiry(
        &self,
        id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sandboxes::update_expiry(&self.pool, id, expires_at, now).await
    }

    async fn delete_sandbox(&self, id: &str) -> Result<(), StoreError> {
        sandboxes::delete(&self.pool, id).await
    }

    async fn insert_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), StoreError> {
        snapshots::insert(&self.pool, snapshot).await
    }

    async fn mark_snapshot_ready(
        &self,
        id: &str,
        size_bytes: i64,
        stored_bytes: i64,
        file_count: i64,
        sha256: Option<&str>,
        layer: Option<&SnapshotLayerRecord>,
    ) -> Result<(), StoreError> {
        snapshots::mark_ready(&self.pool, id, size_bytes, stored_bytes, file_count, sha256, layer).await
    }

    async fn get_snapshot(&self, id: &str) -> Result<SnapshotRecord, StoreError> {
        snapshots::get(&self.pool, id).await
    }

    async fn list_snapshots(&self, workspace_id: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        snapshots::list_ready(&self.pool, workspace_id).await
    }

    async fn list_pending_snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        snapshots::list_pending(&self.pool).await
    }

    async fn set_snapshot_pinned(&self, id: &str, pinned: bool) -> Result<(), StoreError> {
        snapshots::set_pinned(&self.pool, id, pinned).await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        snapshots::delete(&self.pool, id).await
    }

    async fn put_share(&self, share: &ShareRecord) -> Result<(), StoreError> {
        shares::put(&self.pool, share).await
    }

    async fn get_share(&self, workspace_id: &str, agent_id: &str) -> Result<ShareRecord, StoreError> {
        shares::get(&self.pool, workspace_id, agent_id).await
    }

    async fn list_shares(&self, workspace_id: &str) -> Result<Vec<ShareRecord>, StoreError> {
        shares::list(&self.pool, workspace_id).await
    }

    async fn delete_share(&self, workspace_id: &str, agent_id: &str) -> Result<(), StoreError> {
        shares::delete(&self.pool, workspace_id, agent_id).await
    }

    async fn append_audit(&self, entry: &NewAuditRecord) -> Result<AuditRecord, StoreError> {
        shares::append_audit(&self.pool, entry).await
    }

    async fn grant_share(&self, share: &ShareRecord, audit: &NewAuditRecord) -> Result<AuditRecord, StoreError> {
        shares::put_recorded(&self.pool, share, audit).await
    }

    async fn revoke_share(
        &self,
        workspace_id: &str,
        agent_id: &str,
        audit: &NewAuditRecord,
    ) -> Result<AuditRecord, StoreError> {
        shares::delete_recorded(&self.pool, workspace_id, agent_id, audit).await
    }

    async fn list_audit(&self, workspace_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        shares::list_audit(&self.pool, workspace_id).await
    }

    async fn insert_worker(&self, worker: &WorkerRecord) -> Result<(), StoreError> {
        workers::insert(&self.pool, worker).await
    }

    async fn get_worker(&self, id: &str) -> Result<WorkerRecord, StoreError> {
        workers::get(&self.pool, id).await
    }

    async fn get_worker_by_name(&self, name: &str) -> Result<WorkerRecord, StoreError> {
        workers::get_by_name(&self.pool, name).await
    }

    async fn insert_worker_version(&self, version: &WorkerVersionRecord) -> Result<(), StoreError> {
        workers::insert_version(&self.pool, version).await
    }

    async fn list_worker_versions(&self, worker_id: &str) -> Result<Vec<WorkerVersionRecord>, StoreError> {
        workers::list_versions(&self.pool, worker_id).await
    }

    async fn search_workers(
        &self,
        q: Option<&str>,
        tag: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(WorkerRecord, WorkerVersionRecord, f64)>, StoreError> {
        worker_search::search(&self.pool, q, tag, limit).await
    }

    async fn put_preview(&self, preview: &PreviewRecord) -> Result<PreviewRecord, StoreError> {
        previews::put(&self.pool, preview).await
    }

    async fn get_preview(&self, sandbox_id: &str, port: u16) -> Result<PreviewRecord, StoreError> {
        previews::get(&self.pool, sandbox_id, port).await
    }

    async fn list_previews_by_owner(&self, owner: &str) -> Result<Vec<PreviewRecord>, StoreError> {
        previews::list_by_owner(&self.pool, owner).await
    }

    async fn list_previews(&self) -> Result<Vec<PreviewRecord>, StoreError> {
        previews::list_all(&self.pool).await
    }

    async fn list_previews_by_sandbox(&self, sandbox_id: &str) -> Result<Vec<PreviewRecord>, StoreError> {
        previews::list_by_sandbox(&self.pool, sandbox_id).await
    }

    async fn delete_preview(&self, sandbox_id: &str, port: u16) -> Result<(), StoreError> {
        previews::delete(&self.pool, sandbox_id, port).await
    }
}
