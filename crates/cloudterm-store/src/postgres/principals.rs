//! The `principals` table on PostgreSQL: `ensure` (first sight creates the principal and its
//! home workspace, race-free) and `get`.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::{time_col, to_millis, workspaces};
use crate::{PrincipalRecord, StoreError, WorkspaceRecord};

/// Decodes one `principals` row.
fn from_row(row: &PgRow) -> Result<PrincipalRecord, StoreError> {
    Ok(PrincipalRecord {
        id: row.try_get("id")?,
        home_workspace_id: row.try_get("home_workspace_id")?,
        created_at: time_col(row, "created_at")?,
    })
}

/// The principal, if it exists.
async fn find(pool: &PgPool, principal: &str) -> Result<Option<PrincipalRecord>, StoreError> {
    sqlx::query("SELECT id, home_workspace_id, created_at FROM principals WHERE id = $1")
        .bind(principal)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The principal, or `NotFound`.
pub(super) async fn get(pool: &PgPool, principal: &str) -> Result<PrincipalRecord, StoreError> {
    find(pool, principal).await?.ok_or(StoreError::NotFound)
}

/// Returns the principal, creating it and its home workspace on first sight.
pub(super) async fn ensure(
    pool: &PgPool,
    principal: &str,
    mut home: WorkspaceRecord,
    now: DateTime<Utc>,
) -> Result<PrincipalRecord, StoreError> {
    // The common case, one read and no write lock.
    if let Some(found) = find(pool, principal).await? {
        return Ok(found);
    }
    home.owner = principal.to_owned();
    home.is_home = true;
    let mut tx = pool.begin().await?;
    // The principal row goes first and decides the race: a concurrent first request's insert
    // waits on the winner's uncommitted key in the primary key index, then (once the winner
    // commits) inserts nothing and reads the winner's record; if the winner rolls back, it
    // inserts instead. The foreign key to the home workspace is checked at commit.
    let inserted = sqlx::query(
        "INSERT INTO principals (id, home_workspace_id, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(principal)
    .bind(&home.id)
    .bind(to_millis(now))
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        return get(pool, principal).await;
    }
    workspaces::insert(&mut tx, &home).await?;
    tx.commit().await?;
    tracing::debug!(principal, home = %home.id, "created principal and home workspace");
    get(pool, principal).await
}
