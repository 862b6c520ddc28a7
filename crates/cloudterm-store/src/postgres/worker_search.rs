//! The PostgreSQL-only part of the store: the `worker_search` tsvector index and the ranked
//! marketplace search over it, the twin of `sqlite/worker_search.rs` (FTS5).
//!
//! Each worker's document is its name (weight A), its latest version's tags (B) and
//! description (C), stemmed with the `english` configuration, so `quote` and `quoting` meet as
//! in SQLite's porter tokenizer. The query is built from the same words as SQLite's
//! (`codec::search_words`), each a prefix term (`word:*`), joined with `|`, and ranked with
//! `ts_rank`, whose default weights ({D 0.1, C 0.2, B 0.4, A 1.0}) order name, tag and
//! description hits as SQLite's bm25 weights (10, 5, 2) do.

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::Row;

use super::workers::{version_from_row, worker_from_row, VERSION_COLUMNS, WORKER_COLUMNS};
use crate::codec::search_words;
use crate::{StoreError, WorkerRecord, WorkerVersionRecord};

/// The text search configuration of documents and queries; the two must agree, or stems differ.
const CONFIG: &str = "english";

/// Replaces the worker's document in the search index with its name and latest version.
pub(super) async fn reindex(
    conn: &mut PgConnection,
    worker: &WorkerRecord,
    latest: &WorkerVersionRecord,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO worker_search (worker_id, document) VALUES ($1, \
         setweight(to_tsvector('{CONFIG}', $2), 'A') || setweight(to_tsvector('{CONFIG}', $3), 'B') || \
         setweight(to_tsvector('{CONFIG}', $4), 'C')) \
         ON CONFLICT (worker_id) DO UPDATE SET document = excluded.document"
    ))
    .bind(&worker.id)
    .bind(&worker.name)
    .bind(latest.tags.join(" "))
    .bind(&latest.description)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Turns free user text into a `to_tsquery` input that cannot be syntax: the words (letters and
/// digits only, so none of `& | ! ( ) : * ' \ <` can appear) each become a prefix term
/// `word:*`, joined with `|` (any word suffices). `to_tsquery` then lower-cases and stems each
/// word and drops stop words (with a notice, never an error). `None` when the text has no words.
pub(crate) fn ts_query(text: &str) -> Option<String> {
    let terms: Vec<String> = search_words(text).into_iter().map(|word| format!("{word}:*")).collect();
    if terms.is_empty() {
        None
    } else {
        Some(terms.join(" | "))
    }
}

/// Ranked search, or recency order when `q` has no words; see `Store::search_workers`.
pub(crate) async fn search(
    pool: &PgPool,
    q: Option<&str>,
    tag: Option<&str>,
    limit: u32,
) -> Result<Vec<(WorkerRecord, WorkerVersionRecord, f64)>, StoreError> {
    let tag_filter =
        |n: usize| format!(" AND EXISTS (SELECT 1 FROM worker_tags t WHERE t.worker_id = w.id AND t.tag = ${n})");
    let joins = "JOIN worker_versions v ON v.worker_id = w.id AND v.version = w.latest_version";
    let rows = match q.and_then(ts_query) {
        Some(query) => {
            let filter = tag.map_or(String::new(), |_| tag_filter(3));
            // ts_rank is a `real`; widened so it decodes as the trait's f64.
            let sql = format!(
                "SELECT {WORKER_COLUMNS}, {VERSION_COLUMNS}, ts_rank(s.document, query)::float8 AS score \
                 FROM to_tsquery('{CONFIG}', $1) AS query, worker_search s \
                 JOIN workers w ON w.id = s.worker_id {joins} \
                 WHERE s.document @@ query{filter} ORDER BY score DESC, w.id LIMIT $2"
            );
            let mut query = sqlx::query(&sql).bind(query).bind(i64::from(limit));
            if let Some(tag) = tag {
                query = query.bind(tag);
            }
            query.fetch_all(pool).await?
        }
        None => {
            let filter = tag.map_or(String::new(), |_| tag_filter(2));
            let sql = format!(
                "SELECT {WORKER_COLUMNS}, {VERSION_COLUMNS}, 0::float8 AS score FROM workers w {joins} \
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
    use super::ts_query;

    #[test]
    fn words_become_prefix_terms_joined_with_or() {
        assert_eq!(ts_query("quoting").as_deref(), Some("quoting:*"));
        assert_eq!(ts_query("  shell  Quote ").as_deref(), Some("shell:* | Quote:*"));
    }

    #[test]
    fn syntax_is_stripped_not_passed_through() {
        assert_eq!(ts_query("'foo").as_deref(), Some("foo:*"));
        assert_eq!(ts_query("a & !b | (c) <-> d:*").as_deref(), Some("a:* | b:* | c:* | d:*"));
        assert_eq!(ts_query("\\x").as_deref(), Some("x:*"));
    }

    #[test]
    fn no_words_means_no_query() {
        for text in ["", "   ", "*", "'", "()", "&|!:<->"] {
            assert_eq!(ts_query(text), None, "{text:?}");
        }
    }
}
