//! `PgStore`: the PostgreSQL implementation of `Store`, for deployments that scale out (several
//! cloudterm servers on one database), with its connection pool, migrations and the column
//! codecs shared by the per-table modules.
//!
//! Each per-table module is the twin of its `crate::sqlite` namesake: the same SQL, with the
//! same `$n` placeholders, `ON CONFLICT` and `RETURNING`, run against the same schema
//! (`migrations/postgres/`), so both backends answer every call alike. Where PostgreSQL differs
//! it is said on the spot: `worker_search` (tsvector instead of FTS5), ports decoded as `i32`,
//! a row lock where SQLite's single writer serialized for free (`workers::insert_version`), and
//! NUL characters, which PostgreSQL text cannot hold (see [`absent`]).

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
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use crate::codec;
use crate::{
    AuditRecord, NewAuditRecord, PreviewRecord, PrincipalRecord, SandboxRecord, ShareRecord, SnapshotLayerRecord,
    SnapshotRecord, Store, StoreError, WorkerRecord, WorkerVersionRecord, WorkspaceRecord,
};

pub(crate) use crate::codec::{expect_one, placeholders, to_json_list, to_json_text, to_millis};

/// Connections per server process. Requests hold one only for a statement or a short
/// transaction; several servers share the database's `max_connections` (100 by default).
const POOL_SIZE: u32 = 10;
/// How long a caller waits for a pool connection. A server that is down is retried until then,
/// so this is also how long `ping` (the readiness probe) takes to report it.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Shown in `pg_stat_activity`, so a DBA can tell cloudterm's sessions apart.
const APPLICATION_NAME: &str = "cloudterm";

/// The metadata store in a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` (`postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=…`, or
    /// `postgresql://…`) and runs the embedded migrations. The migrator holds a PostgreSQL
    /// advisory lock while it works, so servers starting together migrate once; a later open
    /// applies nothing new.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        // sqlx's parse errors name the faulty part, never the whole URL and its password.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unsupported(format!("invalid postgres url: {e}")))?
            .application_name(APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;
        tracing::debug!("postgres store open");
        Ok(Self { pool })
    }

    /// Closes every connection; later calls fail with `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// True when `key` cannot name a stored row because it holds a NUL character, which PostgreSQL
/// text refuses (SQLite's accepts it). Lookups by such a key answer "absent" (`NotFound`, an
/// empty list) without asking the server, as SQLite would, instead of failing on the server's
/// refusal; writes that carry one fail with `Conflict` (see `StoreError::from`).
fn absent(key: &str) -> bool {
    key.contains('\0')
}

/// `Err(NotFound)` when `key` is [`absent`], for the lookups and updates of one row.
fn require_storable(key: &str) -> Result<(), StoreError> {
    if absent(key) {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

/// Reads a unix-milliseconds column.
pub(crate) fn time_col(row: &PgRow, col: &str) -> Result<DateTime<Utc>, StoreError> {
    codec::from_millis(col, row.try_get(col)?)
}

/// Reads a JSON-text list of strings.
pub(crate) fn list_col(row: &PgRow, col: &str) -> Result<Vec<String>, StoreError> {
    codec::parse_json_list(col, &row.try_get::<String, _>(col)?)
}

/// Reads a JSON-text column.
pub(crate) fn json_col(row: &PgRow, col: &str) -> Result<serde_json::Value, StoreError> {
    codec::parse_json(col, &row.try_get::<String, _>(col)?)
}

#[async_trait]
impl Store for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
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
        require_storable(principal)?;
        principals::get(&self.pool, principal).await
    }

    async fn insert_workspace(&self, workspace: &WorkspaceRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        workspaces::insert(&mut tx, workspace).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_workspace(&self, id: &str) -> Result<WorkspaceRecord, StoreError> {
        require_storable(id)?;
        workspaces::get(&self.pool, id).await
    }

    async fn list_workspaces_by_owner(
        &self,
        owner: &str,
        tag: Option<&str>,
    ) -> Result<Vec<WorkspaceRecord>, StoreError> {
        if absent(owner) || tag.is_some_and(absent) {
            return Ok(Vec::new());
        }
        workspaces::list_by_owner(&self.pool, owner, tag).await
    }

    async fn list_workspaces_shared_with(&self, agent_id: &str) -> Result<Vec<(WorkspaceRecord, String)>, StoreError> {
        if absent(agent_id) {
            return Ok(Vec::new());
        }
        workspaces::list_shared_with(&self.pool, agent_id).await
    }

    async fn delete_workspace(&self, id: &str) -> Result<(), StoreError> {
        require_storable(id)?;
        workspaces::delete(&self.pool, id).await
    }

    async fn insert_sandbox(&self, sandbox: &SandboxRecord) -> Result<(), StoreError> {
        sandboxes::insert(&self.pool, sandbox).await
    }

    async fn get_sandbox(&self, id: &str) -> Result<SandboxRecord, StoreError> {
        require_storable(id)?;
        sandboxes::get(&self.pool, id).await
    }

    async fn list_sandboxes_by_owner(&self, owner: &str) -> Result<Vec<SandboxRecord>, StoreError> {
        if absent(owner) {
            return Ok(Vec::new());
        }
        sandboxes::list_by_owner(&self.pool, owner).await
    }

    async fn list_sandboxes_in_states(&self, states: &[&str]) -> Result<Vec<SandboxRecord>, StoreError> {
        // A state no row can have matches nothing; the others still do.
        let states: Vec<&str> = states.iter().copied().filter(|state| !absent(state)).collect();
        sandboxes::list_in_states(&self.pool, &states).await
    }

    async fn update_sandbox_state(&self, id: &str, state: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        require_storable(id)?;
        sandboxes::update_state(&self.pool, id, state, now).await
    }

    async fn transition_sandbox_state(
        &self,
        id: &str,
        expected: &[&str],
        state: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        require_storable(id)?;
        let expected: Vec<&str> = expected.iter().copied().filter(|from| !absent(from)).collect();
        sandboxes::transition_state(&self.pool, id, &expected, state, now).await
    }

    async fn update_sandbox_expiry(
        &self,
        id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        require_storable(id)?;
        sandboxes::update_expiry(&self.pool, id, expires_at, now).await
    }

    async fn delete_sandbox(&self, id: &str) -> Result<(), StoreError> {
        require_storable(id)?;
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
        require_storable(id)?;
        snapshots::mark_ready(&self.pool, id, size_bytes, stored_bytes, file_count, sha256, layer).await
    }

    async fn get_snapshot(&self, id: &str) -> Result<SnapshotRecord, StoreError> {
        require_storable(id)?;
        snapshots::get(&self.pool, id).await
    }

    async fn list_snapshots(&self, workspace_id: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        if absent(workspace_id) {
            return Ok(Vec::new());
        }
        snapshots::list_ready(&self.pool, workspace_id).await
    }

    async fn list_pending_snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        snapshots::list_pending(&self.pool).await
    }

    async fn set_snapshot_pinned(&self, id: &str, pinned: bool) -> Result<(), StoreError> {
        require_storable(id)?;
        snapshots::set_pinned(&self.pool, id, pinned).await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        require_storable(id)?;
        snapshots::delete(&self.pool, id).await
    }

    async fn put_share(&self, share: &ShareRecord) -> Result<(), StoreError> {
        // No workspace has such an id: the missing parent SQLite reports.
        require_storable(&share.workspace_id)?;
        shares::put(&self.pool, share).await
    }

    async fn get_share(&self, workspace_id: &str, agent_id: &str) -> Result<ShareRecord, StoreError> {
        require_storable(workspace_id)?;
        require_storable(agent_id)?;
        shares::get(&self.pool, workspace_id, agent_id).await
    }

    async fn list_shares(&self, workspace_id: &str) -> Result<Vec<ShareRecord>, StoreError> {
        if absent(workspace_id) {
            return Ok(Vec::new());
        }
        shares::list(&self.pool, workspace_id).await
    }

    async fn delete_share(&self, workspace_id: &str, agent_id: &str) -> Result<(), StoreError> {
        require_storable(workspace_id)?;
        require_storable(agent_id)?;
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
        if absent(workspace_id) {
            return Ok(Vec::new());
        }
        shares::list_audit(&self.pool, workspace_id).await
    }

    async fn insert_worker(&self, worker: &WorkerRecord) -> Result<(), StoreError> {
        workers::insert(&self.pool, worker).await
    }

    async fn get_worker(&self, id: &str) -> Result<WorkerRecord, StoreError> {
        require_storable(id)?;
        workers::get(&self.pool, id).await
    }

    async fn get_worker_by_name(&self, name: &str) -> Result<WorkerRecord, StoreError> {
        require_storable(name)?;
        workers::get_by_name(&self.pool, name).await
    }

    async fn insert_worker_version(&self, version: &WorkerVersionRecord) -> Result<(), StoreError> {
        // No worker has such an id: the missing parent SQLite reports.
        require_storable(&version.worker_id)?;
        workers::insert_version(&self.pool, version).await
    }

    async fn list_worker_versions(&self, worker_id: &str) -> Result<Vec<WorkerVersionRecord>, StoreError> {
        if absent(worker_id) {
            return Ok(Vec::new());
        }
        workers::list_versions(&self.pool, worker_id).await
    }

    async fn search_workers(
        &self,
        q: Option<&str>,
        tag: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(WorkerRecord, WorkerVersionRecord, f64)>, StoreError> {
        // `q` is reduced to letters and digits before it reaches the server; a tag is matched as is.
        if tag.is_some_and(absent) {
            return Ok(Vec::new());
        }
        worker_search::search(&self.pool, q, tag, limit).await
    }

    async fn put_preview(&self, preview: &PreviewRecord) -> Result<PreviewRecord, StoreError> {
        // No sandbox has such an id: the missing parent SQLite reports.
        require_storable(&preview.sandbox_id)?;
        previews::put(&self.pool, preview).await
    }

    async fn get_preview(&self, sandbox_id: &str, port: u16) -> Result<PreviewRecord, StoreError> {
        require_storable(sandbox_id)?;
        previews::get(&self.pool, sandbox_id, port).await
    }

    async fn list_previews_by_owner(&self, owner: &str) -> Result<Vec<PreviewRecord>, StoreError> {
        if absent(owner) {
            return Ok(Vec::new());
        }
        previews::list_by_owner(&self.pool, owner).await
    }

    async fn list_previews(&self) -> Result<Vec<PreviewRecord>, StoreError> {
        previews::list_all(&self.pool).await
    }

    async fn list_previews_by_sandbox(&self, sandbox_id: &str) -> Result<Vec<PreviewRecord>, StoreError> {
        if absent(sandbox_id) {
            return Ok(Vec::new());
        }
        previews::list_by_sandbox(&self.pool, sandbox_id).await
    }

    async fn delete_preview(&self, sandbox_id: &str, port: u16) -> Result<(), StoreError> {
        require_storable(sandbox_id)?;
        previews::delete(&self.pool, sandbox_id, port).await
    }
}
