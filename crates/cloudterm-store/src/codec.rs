//! The backend-neutral half of the column codecs and SQL helpers, shared by the SQLite and
//! PostgreSQL stores so both store and read records byte for byte alike: times as unix
//! milliseconds, lists and JSON as JSON text, `IN (…)` placeholders, and the splitting of a
//! marketplace query into words. Each backend only adds how to pull a value out of its row type.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};

use crate::StoreError;

/// At most this many words of a search query are searched; the rest is ignored.
pub(crate) const MAX_QUERY_WORDS: usize = 16;

/// A search word is cut to this many bytes (at a character boundary) and matched as a prefix.
/// No real word is longer, and PostgreSQL refuses a tsquery operand of 2 KiB or more.
pub(crate) const MAX_WORD_BYTES: usize = 200;

/// A time as stored: unix milliseconds, UTC.
pub(crate) fn to_millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// A stored unix-milliseconds value of column `col` as a time; `Corrupt` when out of range.
pub(crate) fn from_millis(col: &str, millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| StoreError::corrupt(format!("{col} out of range: {millis}")))
}

/// A list of strings as stored: JSON text.
pub(crate) fn to_json_list(items: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(items).map_err(|e| StoreError::corrupt(format!("tags: {e}")))
}

/// Parses the JSON-text list of strings stored in column `col`.
pub(crate) fn parse_json_list(col: &str, text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(format!("{col}: {e}")))
}

/// A JSON value as stored: JSON text.
/// A snapshot's writable layer as its JSON column.
pub(crate) fn layer_json(layer: &crate::SnapshotLayerRecord) -> Result<String, StoreError> {
    serde_json::to_string(layer).map_err(|e| StoreError::corrupt(format!("layer: {e}")))
}

/// The `snapshots.layer` column back.
pub(crate) fn parse_layer(text: &str) -> Result<crate::SnapshotLayerRecord, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(format!("layer: {e}")))
}

pub(crate) fn to_json_text(value: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::corrupt(format!("json: {e}")))
}

/// Parses the JSON text stored in column `col`.
pub(crate) fn parse_json(col: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(format!("{col}: {e}")))
}

/// A stored port as a `u16`; `Corrupt` when the column holds something no port can be.
pub(crate) fn parse_port(port: i64) -> Result<u16, StoreError> {
    u16::try_from(port).map_err(|_| StoreError::corrupt(format!("preview port out of range: {port}")))
}

/// `$first, $first+1, …` for `count` values, for an `IN (…)` list.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// `Ok(())` when a write touched a row, `NotFound` when it touched none.
pub(crate) fn expect_one(rows_affected: u64) -> Result<(), StoreError> {
    if rows_affected == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

/// The words of free search text: runs of letters and digits (what both full-text tokenizers
/// index), at most [`MAX_QUERY_WORDS`], each cut to [`MAX_WORD_BYTES`]. Everything else the
/// user typed (quotes, operators, punctuation) separates words and never reaches a query
/// parser, so both backends build their query from these alone.
pub(crate) fn search_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .take(MAX_QUERY_WORDS)
        .map(|word| {
            let mut end = word.len().min(MAX_WORD_BYTES);
            while !word.is_char_boundary(end) {
                end -= 1;
            }
            &word[..end]
        })
        .collect()
}

/// How two worker versions order by semver precedence, higher first (build metadata ignored,
/// as semver says). Text that is not semver (the service never stores any) comes after every
/// version that is; ties are `Equal`, so a stable sort keeps the query's order among them.
fn higher_first(a: &str, b: &str) -> Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => b.cmp_precedence(&a),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => Ordering::Equal,
    }
}

/// Orders a worker's versions as the API shows them: highest semver precedence first, so
/// "latest" means the highest version, never merely the last published (a `1.5.1` backport
/// published after `2.0.0` does not replace it). Among equal precedence the given order (newest
/// first) stays. SQL cannot order by semver (pre-release identifiers compare field by field), so
/// both backends sort here.
pub(crate) fn sort_versions<T>(versions: &mut [T], version_of: impl Fn(&T) -> &str) {
    versions.sort_by(|a, b| higher_first(version_of(a), version_of(b)));
}

/// The latest of a worker's versions (given newest first): the highest by semver precedence.
pub(crate) fn latest_version(mut versions: Vec<String>) -> Option<String> {
    sort_versions(&mut versions, String::as_str);
    versions.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_letter_and_digit_runs() {
        assert_eq!(search_words("  shell, Quote! v1.2 émoji🦀"), ["shell", "Quote", "v1", "2", "émoji"]);
        assert!(search_words("\"*()-^: ").is_empty());
        assert_eq!(search_words(&"w ".repeat(1000)).len(), MAX_QUERY_WORDS);
    }

    #[test]
    fn long_words_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_WORD_BYTES);
        let words = search_words(&long);
        assert_eq!(words.len(), 1);
        assert!(words[0].len() <= MAX_WORD_BYTES && words[0].len() >= MAX_WORD_BYTES - 1, "{}", words[0].len());
        assert!(words[0].chars().all(|c| c == 'é'));
    }

    #[test]
    fn placeholders_and_times() {
        assert_eq!(placeholders(3, 2), "$3, $4");
        assert_eq!(placeholders(1, 0), "");
        assert!(matches!(from_millis("at", i64::MAX), Err(StoreError::Corrupt(_))));
        assert!(matches!(parse_port(70_000), Err(StoreError::Corrupt(_))));
        assert_eq!(parse_port(65_535).ok(), Some(65_535));
    }
}
