//! The SQLite-only part of the store: the FTS5 `worker_search` index and the ranked
//! marketplace search over it. Its PostgreSQL twin is `postgres/worker_search.rs` (tsvector +
//! ts_rank); everything else in the store is portable SQL.

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::Row;

use super::workers::{version_from_row, worker_from_row, VERSION_COLUMNS, WORKER_COLUMNS};
use crate::codec::search_words;
use crate::{StoreError, WorkerRecord, WorkerVersionRecord};

/// bm25 column weights, in `worker_search` column order: worker_id (not indexed), name,
/// description, tags. A hit in the name counts most, then a tag, then the description.
const BM25: &str = "bm25(worker_search, 0.0, 10.0, 2.0, 5.0)";

/// Replaces the worker's row in the search index with its name and latest version.
pub(super) async fn reindex(
    conn: &mut SqliteConnection,
    worker: &WorkerRecord,
    latest: &WorkerVersionRecord,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM worker_search WHERE worker_id = $1").bind(&worker.id).execute(&mut *conn).await?;
    sqlx::query("INSERT INTO worker_search (worker_id, name, description, tags) VALUES ($1, $2, $3, $4)")
        .bind(&worker.id)
        .bind(&worker.name)
        .bind(&latest.description)
        .bind(latest.tags.join(" "))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Turns free user text into a safe FTS5 query: the words (`codec::search_words`: runs of
/// letters and digits, as the `unicode61` tokenizer sees them) each become a quoted prefix term,
/// joined with OR. Nothing the user types can reach FTS5 as syntax. `None` when the text has no
/// words.
pub(crate) fn fts_query(text: &str) -> Option<String> {
    let terms: Vec<String> = search_words(text)
        .into_iter()
        // The words hold no `"`; doubling them anyway keeps the quoting right if that changes.
        .map(|word| format!("\"{}\"*", word.replace('"', "\"\"")))
        .collect();
    if terms.is_empty() {
        None
    } else {
        Some(terms.join(" OR "))
    }
}

/// Ranked search, or recency order when `q` has no words; see `Store::search_workers`.
pub(crate) async fn search(
    pool: &SqlitePool,
    q: Option<&str>,
    tag: Option<&str>,
    limit: u32,
) -> Result<Vec<(WorkerRecord, WorkerVersionRecord, f64)>, StoreError> {
    let tag_filter =
        |n: usize| format!(" AND EXISTS (SELECT 1 FROM worker_tags t WHERE t.worker_id = w.id AND t.tag = ${n})");
    let joins = "JOIN worker_versions v ON v.worker_id = w.id AND v.version = w.latest_version";
    let rows = match q.and_then(fts_query) {
        Some(fts) => {
            let filter = tag.map_or(String::new(), |_| tag_filter(3));
            let sql = format!(
                "SELECT {WORKER_COLUMNS}, {VERSION_COLUMNS}, -{BM25} AS score FROM worker_search \
                 JOIN workers w ON w.id = worker_search.worker_id {joins} \
                 WHERE worker_search MATCH $1{filter} ORDER BY score DESC, w.id LIMIT $2"
            );
            let mut query = sqlx::query(&sql).bind(fts).bind(i64::from(limit));
            if let Some(tag) = tag {
                query = query.bind(tag);
            }
            query.fetch_all(pool).await?
        }
        None => {
            let filter = tag.map_or(String::new(), |_| tag_filter(2));
            let sql = format!(
                "SELECT {WORKER_COLUMNS}, {VERSION_COLUMNS}, 0.0 AS score FROM workers w {joins} \
                 WHERE 1 = 1{filter} ORDER BY v.created_at DESC, w.id LIMIT $1"
            );
            let mut query = sqlx::query(&sql).bind(i64::from(limit));
            if let Some(tag) = tag {
                query = query.bind(tag);
            }
            query.fetch_all(pool).await?
        }
    };
    rows.iter()
        .map(|row| Ok((worker_from_row(row)?, version_from_row(row)?, row.try_get::<f64, _>("score")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::fts_query;

    #[test]
    fn words_become_quoted_prefix_terms() {
        assert_eq!(fts_query("quoting").as_deref(), Some("\"quoting\"*"));
        assert_eq!(fts_query("  shell  Quote ").as_deref(), Some("\"shell\"* OR \"Quote\"*"));
    }

    #[test]
    fn syntax_is_stripped_not_passed_through() {
        assert_eq!(fts_query("\"foo").as_deref(), Some("\"foo\"*"));
        assert_eq!(fts_query("a OR").as_deref(), Some("\"a\"* OR \"OR\"*"));
        assert_eq!(fts_query("name:x NEAR(y)").as_deref(), Some("\"name\"* OR \"x\"* OR \"NEAR\"* OR \"y\"*"));
        assert_eq!(fts_query("émoji🦀").as_deref(), Some("\"émoji\"*"));
    }

    #[test]
    fn no_words_means_no_query() {
        for text in ["", "   ", "*", "\"", "()", "-^:"] {
            assert_eq!(fts_query(text), None, "{text:?}");
        }
    }

    #[test]
    fn long_queries_are_capped() {
        let query = fts_query(&"w ".repeat(1000)).unwrap_or_default();
        assert_eq!(query.matches(" OR ").count(), crate::codec::MAX_QUERY_WORDS - 1);
    }
}
