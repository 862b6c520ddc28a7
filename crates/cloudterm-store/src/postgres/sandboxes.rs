//! The `sandboxes` table on PostgreSQL: insert, lookups, state and expiry updates, delete.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::{expect_one, json_col, placeholders, time_col, to_json_text, to_millis};
use crate::error::unique_as_conflict;
use crate::{SandboxRecord, StoreError};

/// The selected columns, in table order.
const COLUMNS: &str = "id, owner, workspace_id, state, runtime, image, limits, metadata, \
                       created_at, expires_at, updated_at";

/// Decodes one `sandboxes` row.
fn from_row(row: &PgRow) -> Result<SandboxRecord, StoreError> {
    Ok(SandboxRecord {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        workspace_id: row.try_get("workspace_id")?,
        state: row.try_get("state")?,
        runtime: row.try_get("runtime")?,
        image: row.try_get("image")?,
        limits: json_col(row, "limits")?,
        metadata: json_col(row, "metadata")?,
        created_at: time_col(row, "created_at")?,
        expires_at: time_col(row, "expires_at")?,
        updated_at: time_col(row, "updated_at")?,
    })
}

/// Inserts a sandbox; `Conflict` on a duplicate id.
pub(super) async fn insert(pool: &PgPool, sandbox: &SandboxRecord) -> Result<(), StoreError> {
    sqlx::query(&format!("INSERT INTO sandboxes ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
        .bind(&sandbox.id)
        .bind(&sandbox.owner)
        .bind(&sandbox.workspace_id)
        .bind(&sandbox.state)
        .bind(&sandbox.runtime)
        .bind(&sandbox.image)
        .bind(to_json_text(&sandbox.limits)?)
        .bind(to_json_text(&sandbox.metadata)?)
        .bind(to_millis(sandbox.created_at))
        .bind(to_millis(sandbox.expires_at))
        .bind(to_millis(sandbox.updated_at))
        .execute(pool)
        .await
        .map_err(unique_as_conflict("sandbox id already exists"))?;
    Ok(())
}

/// One sandbox by id.
pub(super) async fn get(pool: &PgPool, id: &str) -> Result<SandboxRecord, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM sandboxes WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?;
    from_row(&row)
}

/// The owner's sandboxes, oldest first.
pub(super) async fn list_by_owner(pool: &PgPool, owner: &str) -> Result<Vec<SandboxRecord>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM sandboxes WHERE owner = $1 ORDER BY created_at, id"))
        .bind(owner)
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Every sandbox in one of `states`, oldest first.
pub(super) async fn list_in_states(pool: &PgPool, states: &[&str]) -> Result<Vec<SandboxRecord>, StoreError> {
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM sandboxes WHERE state IN ({}) ORDER BY created_at, id",
        placeholders(1, states.len())
    );
    let mut query = sqlx::query(&sql);
    for state in states {
        query = query.bind(*state);
    }
    let rows = query.fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

/// Sets the state unconditionally.
pub(super) async fn update_state(pool: &PgPool, id: &str, state: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE sandboxes SET state = $1, updated_at = $2 WHERE id = $3")
        .bind(state)
        .bind(to_millis(now))
        .bind(id)
        .execute(pool)
        .await?;
    expect_one(done.rows_affected())
}

/// Sets the state if the current one is in `expected`; `Ok(false)` if it is not.
pub(super) async fn transition_state(
    pool: &PgPool,
    id: &str,
    expected: &[&str],
    state: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    if !expected.is_empty() {
        // One statement, so the check and the write are atomic without a transaction: a racing
        // update waits for the row lock, then re-checks `state` on the committed row.
        let sql = format!(
            "UPDATE sandboxes SET state = $1, updated_at = $2 WHERE id = $3 AND state IN ({})",
            placeholders(4, expected.len())
        );
        let mut query = sqlx::query(&sql).bind(state).bind(to_millis(now)).bind(id);
        for from in expected {
            query = query.bind(*from);
        }
        if query.execute(pool).await?.rows_affected() == 1 {
            return Ok(true);
        }
    }
    // Nothing changed: tell a missing sandbox from a state mismatch.
    get(pool, id).await.map(|_| false)
}

/// Sets the expiry time.
pub(super) async fn update_expiry(
    pool: &PgPool,
    id: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE sandboxes SET expires_at = $1, updated_at = $2 WHERE id = $3")
        .bind(to_millis(expires_at))
        .bind(to_millis(now))
        .bind(id)
        .execute(pool)
        .await?;
    expect_one(done.rows_affected())
}

/// Deletes the sandbox and its previews.
pub(super) async fn delete(pool: &PgPool, id: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM previews WHERE sandbox_id = $1").bind(id).execute(&mut *tx).await?;
    let done = sqlx::query("DELETE FROM sandboxes WHERE id = $1").bind(id).execute(&mut *tx).await?;
    expect_one(done.rows_affected())?;
    tx.commit().await?;
    Ok(())
}
