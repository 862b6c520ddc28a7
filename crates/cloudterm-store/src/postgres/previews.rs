//! The `previews` table on PostgreSQL: upsert on `(sandbox_id, port)`, lookups, delete. Ports
//! are `INTEGER` (`i32` to sqlx, which decodes only the exact width).

use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::{expect_one, time_col, to_millis};
use crate::codec::parse_port;
use crate::error::insert_child_error;
use crate::{PreviewRecord, StoreError};

/// The selected columns, in table order.
const COLUMNS: &str = "sandbox_id, port, owner, public, fallback_sandbox_id, created_at";

/// Decodes one `previews` row.
fn from_row(row: &PgRow) -> Result<PreviewRecord, StoreError> {
    let port: i32 = row.try_get("port")?;
    Ok(PreviewRecord {
        sandbox_id: row.try_get("sandbox_id")?,
        port: parse_port(i64::from(port))?,
        owner: row.try_get("owner")?,
        public: row.try_get("public")?,
        fallback_sandbox_id: row.try_get("fallback_sandbox_id")?,
        created_at: time_col(row, "created_at")?,
    })
}

/// Registers or updates a preview and returns the stored row.
pub(super) async fn put(pool: &PgPool, preview: &PreviewRecord) -> Result<PreviewRecord, StoreError> {
    let row = sqlx::query(&format!(
        "INSERT INTO previews ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (sandbox_id, port) DO UPDATE SET public = excluded.public, \
         fallback_sandbox_id = excluded.fallback_sandbox_id \
         RETURNING {COLUMNS}"
    ))
    .bind(&preview.sandbox_id)
    .bind(i32::from(preview.port))
    .bind(&preview.owner)
    .bind(preview.public)
    .bind(&preview.fallback_sandbox_id)
    .bind(to_millis(preview.created_at))
    .fetch_one(pool)
    .await
    .map_err(insert_child_error("preview already exists"))?;
    from_row(&row)
}

/// One preview.
pub(super) async fn get(pool: &PgPool, sandbox_id: &str, port: u16) -> Result<PreviewRecord, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM previews WHERE sandbox_id = $1 AND port = $2"))
        .bind(sandbox_id)
        .bind(i32::from(port))
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?;
    from_row(&row)
}

/// The owner's previews, oldest first.
pub(super) async fn list_by_owner(pool: &PgPool, owner: &str) -> Result<Vec<PreviewRecord>, StoreError> {
    let rows =
        sqlx::query(&format!("SELECT {COLUMNS} FROM previews WHERE owner = $1 ORDER BY created_at, sandbox_id, port"))
            .bind(owner)
            .fetch_all(pool)
            .await?;
    rows.iter().map(from_row).collect()
}

/// Every preview, oldest first.
pub(super) async fn list_all(pool: &PgPool) -> Result<Vec<PreviewRecord>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM previews ORDER BY created_at, sandbox_id, port"))
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The sandbox's previews, by port.
pub(super) async fn list_by_sandbox(pool: &PgPool, sandbox_id: &str) -> Result<Vec<PreviewRecord>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM previews WHERE sandbox_id = $1 ORDER BY port"))
        .bind(sandbox_id)
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Unregisters a preview.
pub(super) async fn delete(pool: &PgPool, sandbox_id: &str, port: u16) -> Result<(), StoreError> {
    let done = sqlx::query("DELETE FROM previews WHERE sandbox_id = $1 AND port = $2")
        .bind(sandbox_id)
        .bind(i32::from(port))
        .execute(pool)
        .await?;
    expect_one(done.rows_affected())
}
