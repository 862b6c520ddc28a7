//! The `shares` and `share_audit` tables on PostgreSQL: grants (upsert, lookup, list, revoke)
//! and the append-only audit trail, numbered by an identity column.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::{expect_one, time_col, to_millis};
use crate::error::insert_child_error;
use crate::{AuditRecord, NewAuditRecord, ShareRecord, StoreError};

/// The selected `shares` columns, in table order.
const SHARE_COLUMNS: &str = "workspace_id, agent_id, permission, granted_by, granted_at";
/// The selected `share_audit` columns, in table order.
const AUDIT_COLUMNS: &str = "id, workspace_id, actor, action, subject, permission, at";

/// Decodes one `shares` row.
fn share_from_row(row: &PgRow) -> Result<ShareRecord, StoreError> {
    Ok(ShareRecord {
        workspace_id: row.try_get("workspace_id")?,
        agent_id: row.try_get("agent_id")?,
        permission: row.try_get("permission")?,
        granted_by: row.try_get("granted_by")?,
        granted_at: time_col(row, "granted_at")?,
    })
}

/// Decodes one `share_audit` row.
fn audit_from_row(row: &PgRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        subject: row.try_get("subject")?,
        permission: row.try_get("permission")?,
        at: time_col(row, "at")?,
    })
}

/// Grants, or replaces an existing grant; `NotFound` if the workspace is missing.
pub(super) async fn put(pool: impl sqlx::PgExecutor<'_>, share: &ShareRecord) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO shares ({SHARE_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (workspace_id, agent_id) DO UPDATE SET permission = excluded.permission, \
         granted_by = excluded.granted_by, granted_at = excluded.granted_at"
    ))
    .bind(&share.workspace_id)
    .bind(&share.agent_id)
    .bind(&share.permission)
    .bind(&share.granted_by)
    .bind(to_millis(share.granted_at))
    .execute(pool)
    .await
    .map_err(insert_child_error("share already exists"))?;
    Ok(())
}

/// One grant.
pub(super) async fn get(pool: &PgPool, workspace_id: &str, agent_id: &str) -> Result<ShareRecord, StoreError> {
    let row = sqlx::query(&format!("SELECT {SHARE_COLUMNS} FROM shares WHERE workspace_id = $1 AND agent_id = $2"))
        .bind(workspace_id)
        .bind(agent_id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?;
    share_from_row(&row)
}

/// The workspace's grants, oldest first.
pub(super) async fn list(pool: &PgPool, workspace_id: &str) -> Result<Vec<ShareRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SHARE_COLUMNS} FROM shares WHERE workspace_id = $1 ORDER BY granted_at, agent_id"
    ))
    .bind(workspace_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(share_from_row).collect()
}

/// Revokes a grant.
pub(super) async fn delete(
    pool: impl sqlx::PgExecutor<'_>,
    workspace_id: &str,
    agent_id: &str,
) -> Result<(), StoreError> {
    let done = sqlx::query("DELETE FROM shares WHERE workspace_id = $1 AND agent_id = $2")
        .bind(workspace_id)
        .bind(agent_id)
        .execute(pool)
        .await?;
    expect_one(done.rows_affected())
}

/// Grants (or replaces a grant) and appends `audit` in one transaction: both or neither.
pub(super) async fn put_recorded(
    pool: &PgPool,
    share: &ShareRecord,
    audit: &NewAuditRecord,
) -> Result<AuditRecord, StoreError> {
    let mut tx = pool.begin().await?;
    put(&mut *tx, share).await?;
    let entry = append_audit(&mut *tx, audit).await?;
    tx.commit().await?;
    Ok(entry)
}

/// Revokes a grant and appends `audit` in one transaction: both or neither.
pub(super) async fn delete_recorded(
    pool: &PgPool,
    workspace_id: &str,
    agent_id: &str,
    audit: &NewAuditRecord,
) -> Result<AuditRecord, StoreError> {
    let mut tx = pool.begin().await?;
    delete(&mut *tx, workspace_id, agent_id).await?;
    let entry = append_audit(&mut *tx, audit).await?;
    tx.commit().await?;
    Ok(entry)
}

/// Appends an audit entry and returns it numbered.
pub(super) async fn append_audit(
    pool: impl sqlx::PgExecutor<'_>,
    entry: &NewAuditRecord,
) -> Result<AuditRecord, StoreError> {
    let row = sqlx::query(&format!(
        "INSERT INTO share_audit (workspace_id, actor, action, subject, permission, at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {AUDIT_COLUMNS}"
    ))
    .bind(&entry.workspace_id)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.subject)
    .bind(&entry.permission)
    .bind(to_millis(entry.at))
    .fetch_one(pool)
    .await?;
    audit_from_row(&row)
}

/// The workspace's audit trail in append order.
pub(super) async fn list_audit(pool: &PgPool, workspace_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM share_audit WHERE workspace_id = $1 ORDER BY id"))
        .bind(workspace_id)
        .fetch_all(pool)
        .await?;
    rows.iter().map(audit_from_row).collect()
}
