//! The `workspaces` and `workspace_tags` tables on PostgreSQL: insert, lookups, owner and
//! shared-with listings, delete.

use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::Row;

use super::{expect_one, list_col, time_col, to_json_list, to_millis};
use crate::error::{is_foreign_key_violation, unique_as_conflict};
use crate::{StoreError, WorkspaceRecord};

/// The selected columns, in the order `from_row` reads them (prefixed with the `w` alias).
const COLUMNS: &str = "w.id, w.owner, w.name, w.description, w.tags, w.is_home, w.created_at";

/// Decodes one `workspaces` row.
pub(super) fn from_row(row: &PgRow) -> Result<WorkspaceRecord, StoreError> {
    Ok(WorkspaceRecord {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        tags: list_col(row, "tags")?,
        is_home: row.try_get("is_home")?,
        created_at: time_col(row, "created_at")?,
    })
}

/// Inserts the workspace and its tag rows on `conn` (the caller owns the transaction).
pub(super) async fn insert(conn: &mut PgConnection, workspace: &WorkspaceRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO workspaces (id, owner, name, description, tags, is_home, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&workspace.id)
    .bind(&workspace.owner)
    .bind(&workspace.name)
    .bind(&workspace.description)
    .bind(to_json_list(&workspace.tags)?)
    .bind(workspace.is_home)
    .bind(to_millis(workspace.created_at))
    .execute(&mut *conn)
    .await
    .map_err(unique_as_conflict("workspace already exists (same id, same name for this owner, or a second home)"))?;
    for tag in &workspace.tags {
        sqlx::query(
            "INSERT INTO workspace_tags (workspace_id, tag) VALUES ($1, $2) \
             ON CONFLICT (workspace_id, tag) DO NOTHING",
        )
        .bind(&workspace.id)
        .bind(tag)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// One workspace by id.
pub(super) async fn get(pool: &PgPool, id: &str) -> Result<WorkspaceRecord, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM workspaces w WHERE w.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?;
    from_row(&row)
}

/// The owner's workspaces, oldest first, optionally only those carrying `tag`.
pub(super) async fn list_by_owner(
    pool: &PgPool,
    owner: &str,
    tag: Option<&str>,
) -> Result<Vec<WorkspaceRecord>, StoreError> {
    let rows = match tag {
        None => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM workspaces w WHERE w.owner = $1 \
                 ORDER BY w.created_at, w.id"
            ))
            .bind(owner)
            .fetch_all(pool)
            .await?
        }
        Some(tag) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM workspaces w WHERE w.owner = $1 AND EXISTS \
                 (SELECT 1 FROM workspace_tags t WHERE t.workspace_id = w.id AND t.tag = $2) \
                 ORDER BY w.created_at, w.id"
            ))
            .bind(owner)
            .bind(tag)
            .fetch_all(pool)
            .await?
        }
    };
    rows.iter().map(from_row).collect()
}

/// Workspaces shared with `agent_id`, with the permission granted, oldest grant first.
pub(super) async fn list_shared_with(
    pool: &PgPool,
    agent_id: &str,
) -> Result<Vec<(WorkspaceRecord, String)>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, s.permission FROM shares s JOIN workspaces w ON w.id = s.workspace_id \
         WHERE s.agent_id = $1 ORDER BY s.granted_at, w.id"
    ))
    .bind(agent_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|row| Ok((from_row(row)?, row.try_get("permission")?))).collect()
}

/// Deletes the workspace with its tags and shares; refuses a home workspace.
pub(super) async fn delete(pool: &PgPool, id: &str) -> Result<(), StoreError> {
    let home_refused = || StoreError::Conflict("cannot delete a principal's home workspace".to_owned());
    let mut tx = pool.begin().await?;
    // Children first, explicitly, as the SQLite twin does (the schema also cascades).
    sqlx::query("DELETE FROM shares WHERE workspace_id = $1").bind(id).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM workspace_tags WHERE workspace_id = $1").bind(id).execute(&mut *tx).await?;
    let deleted =
        sqlx::query("DELETE FROM workspaces WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(|e| {
            if is_foreign_key_violation(&e) {
                home_refused()
            } else {
                StoreError::from(e)
            }
        })?;
    expect_one(deleted.rows_affected())?;
    // `principals.home_workspace_id` is a deferred foreign key: deleting a home workspace
    // fails here, at commit, and the whole transaction rolls back.
    tx.commit().await.map_err(|e| if is_foreign_key_violation(&e) { home_refused() } else { StoreError::from(e) })
}
