//! The `snapshots` table on PostgreSQL: pending registration, readiness, listings, pinning,
//! delete.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::{expect_one, time_col, to_millis};
use crate::codec::{layer_json, parse_layer};
use crate::error::unique_as_conflict;
use crate::{SnapshotLayerRecord, SnapshotRecord, SnapshotState, StoreError};

/// The selected columns, in table order.
const COLUMNS: &str = "id, workspace_id, owner, label, kind, pinned, state, object_key, \
                       size_bytes, stored_bytes, file_count, sha256, created_at, layer";

/// Decodes one `snapshots` row.
fn from_row(row: &PgRow) -> Result<SnapshotRecord, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(SnapshotRecord {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        owner: row.try_get("owner")?,
        label: row.try_get("label")?,
        kind: row.try_get("kind")?,
        pinned: row.try_get("pinned")?,
        state: SnapshotState::parse(&state)
            .ok_or_else(|| StoreError::corrupt(format!("unknown snapshot state {state:?}")))?,
        object_key: row.try_get("object_key")?,
        size_bytes: row.try_get("size_bytes")?,
        stored_bytes: row.try_get("stored_bytes")?,
        file_count: row.try_get("file_count")?,
        sha256: row.try_get("sha256")?,
        created_at: time_col(row, "created_at")?,
        layer: row.try_get::<Option<String>, _>("layer")?.as_deref().map(parse_layer).transpose()?,
    })
}

/// Inserts the snapshot as pending; `Conflict` on a duplicate id.
pub(super) async fn insert(pool: &PgPool, snapshot: &SnapshotRecord) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO snapshots ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&snapshot.id)
    .bind(&snapshot.workspace_id)
    .bind(&snapshot.owner)
    .bind(&snapshot.label)
    .bind(&snapshot.kind)
    .bind(snapshot.pinned)
    // Only `mark_ready` may make a snapshot listable.
    .bind(SnapshotState::Pending.as_str())
    .bind(&snapshot.object_key)
    .bind(snapshot.size_bytes)
    .bind(snapshot.stored_bytes)
    .bind(snapshot.file_count)
    .bind(&snapshot.sha256)
    .bind(to_millis(snapshot.created_at))
    .bind(snapshot.layer.as_ref().map(layer_json).transpose()?)
    .execute(pool)
    .await
    .map_err(unique_as_conflict("snapshot id already exists"))?;
    Ok(())
}

/// Records the final sizes and checksum and makes the snapshot ready.
pub(super) async fn mark_ready(
    pool: &PgPool,
    id: &str,
    size_bytes: i64,
    stored_bytes: i64,
    file_count: i64,
    sha256: Option<&str>,
    layer: Option<&SnapshotLayerRecord>,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE snapshots SET state = $1, size_bytes = $2, stored_bytes = $3, file_count = $4, \
         sha256 = $5, layer = $6 WHERE id = $7",
    )
    .bind(SnapshotState::Ready.as_str())
    .bind(size_bytes)
    .bind(stored_bytes)
    .bind(file_count)
    .bind(sha256)
    .bind(layer.map(layer_json).transpose()?)
    .bind(id)
    .execute(pool)
    .await?;
    expect_one(done.rows_affected())
}

/// One snapshot by id, in any state.
pub(super) async fn get(pool: &PgPool, id: &str) -> Result<SnapshotRecord, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM snapshots WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?;
    from_row(&row)
}

/// The workspace's ready snapshots, newest first.
pub(super) async fn list_ready(pool: &PgPool, workspace_id: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM snapshots WHERE workspace_id = $1 AND state = $2 \
         ORDER BY created_at DESC, id DESC"
    ))
    .bind(workspace_id)
    .bind(SnapshotState::Ready.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Every pending snapshot, oldest first.
pub(super) async fn list_pending(pool: &PgPool) -> Result<Vec<SnapshotRecord>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM snapshots WHERE state = $1 ORDER BY created_at, id"))
        .bind(SnapshotState::Pending.as_str())
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Pins or unpins.
pub(super) async fn set_pinned(pool: &PgPool, id: &str, pinned: bool) -> Result<(), StoreError> {
    let done =
        sqlx::query("UPDATE snapshots SET pinned = $1 WHERE id = $2").bind(pinned).bind(id).execute(pool).await?;
    expect_one(done.rows_affected())
}

/// Deletes the record.
pub(super) async fn delete(pool: &PgPool, id: &str) -> Result<(), StoreError> {
    let done = sqlx::query("DELETE FROM snapshots WHERE id = $1").bind(id).execute(pool).await?;
    expect_one(done.rows_affected())
}
