//! The `workers`, `worker_versions` and `worker_tags` tables on PostgreSQL: publishing workers
//! and their immutable versions, and keeping each worker's "latest version" pointer current.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::{list_col, time_col, to_json_list, to_millis, worker_search};
use crate::codec::{latest_version, sort_versions};
use crate::error::{insert_child_error, unique_as_conflict};
use crate::{StoreError, WorkerRecord, WorkerVersionRecord};

/// The selected `workers` columns (aliased `w`).
pub(super) const WORKER_COLUMNS: &str = "w.id, w.name, w.author, w.created_at";
/// The selected `worker_versions` columns (aliased `v`), renamed with a `v_` prefix so they can
/// sit beside the worker's in one row.
pub(super) const VERSION_COLUMNS: &str = "v.worker_id AS v_worker_id, v.version AS v_version, \
     v.description AS v_description, v.tags AS v_tags, v.command AS v_command, \
     v.files_key AS v_files_key, v.created_at AS v_created_at";

/// Decodes the worker columns of a row.
pub(super) fn worker_from_row(row: &PgRow) -> Result<WorkerRecord, StoreError> {
    Ok(WorkerRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        author: row.try_get("author")?,
        created_at: time_col(row, "created_at")?,
    })
}

/// Decodes the `v_`-prefixed version columns of a row.
pub(super) fn version_from_row(row: &PgRow) -> Result<WorkerVersionRecord, StoreError> {
    Ok(WorkerVersionRecord {
        worker_id: row.try_get("v_worker_id")?,
        version: row.try_get("v_version")?,
        description: row.try_get("v_description")?,
        tags: list_col(row, "v_tags")?,
        command: row.try_get("v_command")?,
        files_key: row.try_get("v_files_key")?,
        created_at: time_col(row, "v_created_at")?,
    })
}

/// Inserts a worker; `Conflict` if its name or id is taken.
pub(super) async fn insert(pool: &PgPool, worker: &WorkerRecord) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO workers (id, name, author, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&worker.id)
        .bind(&worker.name)
        .bind(&worker.author)
        .bind(to_millis(worker.created_at))
        .execute(pool)
        .await
        .map_err(unique_as_conflict("a worker with this name already exists"))?;
    Ok(())
}

/// One worker by a unique column.
async fn get_by(pool: &PgPool, column: &str, value: &str) -> Result<WorkerRecord, StoreError> {
    let row = sqlx::query(&format!("SELECT {WORKER_COLUMNS} FROM workers w WHERE w.{column} = $1"))
        .bind(value)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?;
    worker_from_row(&row)
}

/// One worker by id.
pub(super) async fn get(pool: &PgPool, id: &str) -> Result<WorkerRecord, StoreError> {
    get_by(pool, "id", id).await
}

/// One worker by its unique name.
pub(super) async fn get_by_name(pool: &PgPool, name: &str) -> Result<WorkerRecord, StoreError> {
    get_by(pool, "name", name).await
}

/// Publishes an immutable version, then points the worker at its newest version and refreshes
/// the tag rows and the search index to match, all in one transaction.
///
/// The worker row is locked first. Without it, two versions published at once would each pick
/// "the newest" from a snapshot that lacks the other's uncommitted row (PostgreSQL runs
/// transactions side by side, where SQLite serializes writers), and the last to commit could
/// leave an older version as the latest. With it, publications of one worker take turns and
/// each reads the committed state of the previous one.
pub(super) async fn insert_version(pool: &PgPool, version: &WorkerVersionRecord) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT id FROM workers WHERE id = $1 FOR UPDATE")
        .bind(&version.worker_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    sqlx::query(
        "INSERT INTO worker_versions \
         (worker_id, version, description, tags, command, files_key, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&version.worker_id)
    .bind(&version.version)
    .bind(&version.description)
    .bind(to_json_list(&version.tags)?)
    .bind(&version.command)
    .bind(&version.files_key)
    .bind(to_millis(version.created_at))
    .execute(&mut *tx)
    .await
    .map_err(insert_child_error("this version of the worker already exists; versions are immutable"))?;
    // The latest is the highest version, not the last published: a backport does not replace it.
    let published: Vec<String> = sqlx::query_scalar(
        "SELECT version FROM worker_versions WHERE worker_id = $1 ORDER BY created_at DESC, version DESC",
    )
    .bind(&version.worker_id)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("UPDATE workers SET latest_version = $2 WHERE id = $1")
        .bind(&version.worker_id)
        .bind(latest_version(published))
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(&format!(
        "SELECT {WORKER_COLUMNS}, {VERSION_COLUMNS} FROM workers w \
         JOIN worker_versions v ON v.worker_id = w.id AND v.version = w.latest_version \
         WHERE w.id = $1"
    ))
    .bind(&version.worker_id)
    .fetch_one(&mut *tx)
    .await?;
    let (worker, latest) = (worker_from_row(&row)?, version_from_row(&row)?);
    sqlx::query("DELETE FROM worker_tags WHERE worker_id = $1").bind(&worker.id).execute(&mut *tx).await?;
    for tag in &latest.tags {
        sqlx::query(
            "INSERT INTO worker_tags (worker_id, tag) VALUES ($1, $2) \
             ON CONFLICT (worker_id, tag) DO NOTHING",
        )
        .bind(&worker.id)
        .bind(tag)
        .execute(&mut *tx)
        .await?;
    }
    worker_search::reindex(&mut tx, &worker, &latest).await?;
    tx.commit().await?;
    Ok(())
}

/// The worker's versions, highest first (`codec::sort_versions`).
pub(super) async fn list_versions(pool: &PgPool, worker_id: &str) -> Result<Vec<WorkerVersionRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM worker_versions v WHERE v.worker_id = $1 \
         ORDER BY v.created_at DESC, v.version DESC"
    ))
    .bind(worker_id)
    .fetch_all(pool)
    .await?;
    let mut versions = rows.iter().map(version_from_row).collect::<Result<Vec<_>, _>>()?;
    sort_versions(&mut versions, |v| v.version.as_str());
    Ok(versions)
}
