//! Marketplace workers: unique names, immutable versions, highest-first versions, and ranked,
//! injection-proof full-text search.

use std::sync::Arc;

use cloudterm_store::{Store, StoreError, WorkerRecord, WorkerVersionRecord};

use crate::{at, TestDb};

fn worker(id: &str, name: &str, t: i64) -> WorkerRecord {
    WorkerRecord { id: id.to_owned(), name: name.to_owned(), author: "alice".to_owned(), created_at: at(t) }
}

fn version(worker_id: &str, v: &str, description: &str, tags: &[&str], t: i64) -> WorkerVersionRecord {
    WorkerVersionRecord {
        worker_id: worker_id.to_owned(),
        version: v.to_owned(),
        description: description.to_owned(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        command: format!("run {worker_id} {v}"),
        files_key: Some(format!("workers/{worker_id}/{v}.tar.zst")),
        created_at: at(t),
    }
}

async fn publish(store: &Arc<dyn Store>, id: &str, name: &str, description: &str, tags: &[&str], t: i64) {
    store.insert_worker(&worker(id, name, t)).await.expect("insert worker");
    store.insert_worker_version(&version(id, "1.0.0", description, tags, t)).await.expect("insert version");
}

fn names(hits: &[(WorkerRecord, WorkerVersionRecord, f64)]) -> Vec<&str> {
    hits.iter().map(|(w, _, _)| w.name.as_str()).collect()
}

backends!(worker_round_trip_and_unique_name);
async fn worker_round_trip_and_unique_name(db: TestDb) {
    let w = worker("wkr_1", "shell-quote", 0);
    db.store.insert_worker(&w).await.expect("insert");
    assert_eq!(db.store.get_worker("wkr_1").await.expect("get"), w);
    assert_eq!(db.store.get_worker_by_name("shell-quote").await.expect("by name"), w);
    let dup = db.store.insert_worker(&worker("wkr_2", "shell-quote", 1)).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    assert!(matches!(db.store.get_worker("wkr_2").await, Err(StoreError::NotFound)));
    assert!(matches!(db.store.get_worker_by_name("nope").await, Err(StoreError::NotFound)));
}

backends!(versions_are_immutable_and_listed_highest_first);
async fn versions_are_immutable_and_listed_highest_first(db: TestDb) {
    db.store.insert_worker(&worker("wkr_1", "fmt", 0)).await.expect("worker");
    let v1 = version("wkr_1", "1.0.0", "first", &["a"], 1);
    let v2 = version("wkr_1", "1.1.0", "second", &["a", "b"], 2);
    db.store.insert_worker_version(&v1).await.expect("v1");
    db.store.insert_worker_version(&v2).await.expect("v2");

    let again = db.store.insert_worker_version(&version("wkr_1", "1.0.0", "changed!", &[], 3)).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let missing = db.store.insert_worker_version(&version("wkr_ghost", "1.0.0", "x", &[], 3)).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");

    assert_eq!(db.store.list_worker_versions("wkr_1").await.expect("list"), [v2, v1]);
    assert!(db.store.list_worker_versions("wkr_ghost").await.expect("none").is_empty());
}

backends!(search_finds_and_ranks_by_relevance);
async fn search_finds_and_ranks_by_relevance(db: TestDb) {
    publish(&db.store, "wkr_q", "shell-escape", "Safe quoting of shell arguments", &["shell"], 1).await;
    publish(&db.store, "wkr_j", "json-fmt", "Pretty prints JSON documents", &["json", "fmt"], 2).await;
    publish(&db.store, "wkr_c", "csv-tool", "Converts spreadsheets", &["data"], 3).await;
    publish(&db.store, "wkr_x", "exporter", "Writes csv and json files", &["data"], 4).await;

    let hits = db.store.search_workers(Some("quoting"), None, 10).await.expect("search");
    assert_eq!(names(&hits), ["shell-escape"]);
    assert!(hits[0].2 > 0.0, "relevance is positive: {}", hits[0].2);
    assert_eq!(hits[0].1.version, "1.0.0");
    assert_eq!(hits[0].1.description, "Safe quoting of shell arguments");

    // Stemming and prefixes: "quote" and "quot" reach "quoting".
    assert_eq!(names(&db.store.search_workers(Some("quote"), None, 10).await.expect("stem")), ["shell-escape"]);
    assert_eq!(names(&db.store.search_workers(Some("QUOT"), None, 10).await.expect("prefix")), ["shell-escape"]);

    // Any word suffices; the worker matching it in its name ranks above a description match.
    let hits = db.store.search_workers(Some("csv"), None, 10).await.expect("csv");
    assert_eq!(names(&hits), ["csv-tool", "exporter"]);
    assert!(hits[0].2 > hits[1].2);
    let hits = db.store.search_workers(Some("quoting json"), None, 10).await.expect("either");
    let mut found = names(&hits);
    found.sort_unstable();
    assert_eq!(found, ["exporter", "json-fmt", "shell-escape"]);

    // Tags are searched too, and filter exactly.
    assert_eq!(names(&db.store.search_workers(Some("fmt"), None, 10).await.expect("tag word")), ["json-fmt"]);
    let data = db.store.search_workers(Some("csv"), Some("data"), 10).await.expect("filter");
    assert_eq!(names(&data), ["csv-tool", "exporter"]);
    assert!(db.store.search_workers(Some("csv"), Some("dat"), 10).await.expect("exact").is_empty());
    assert_eq!(names(&db.store.search_workers(Some("csv"), None, 1).await.expect("limit")), ["csv-tool"]);
    assert!(db.store.search_workers(Some("nothing-like-this"), None, 10).await.expect("miss").is_empty());
}

backends!(empty_query_lists_by_recency_and_skips_unpublished);
async fn empty_query_lists_by_recency_and_skips_unpublished(db: TestDb) {
    publish(&db.store, "wkr_a", "alpha", "first", &["x"], 1).await;
    publish(&db.store, "wkr_b", "beta", "second", &["y"], 2).await;
    publish(&db.store, "wkr_c", "gamma", "third", &["x"], 3).await;
    db.store.insert_worker(&worker("wkr_n", "no-versions", 4)).await.expect("bare worker");
    // A new version of alpha makes it the most recent.
    db.store.insert_worker_version(&version("wkr_a", "2.0.0", "first, again", &["x"], 5)).await.expect("v2");

    for q in [None, Some(""), Some("   "), Some("*"), Some("\"")] {
        let hits = db.store.search_workers(q, None, 10).await.expect("list");
        assert_eq!(names(&hits), ["alpha", "gamma", "beta"], "q={q:?}");
        assert!(hits.iter().all(|(_, _, rank)| *rank == 0.0));
        assert_eq!(hits[0].1.version, "2.0.0", "the latest version is returned");
    }
    let x = db.store.search_workers(None, Some("x"), 10).await.expect("tag");
    assert_eq!(names(&x), ["alpha", "gamma"]);
    assert_eq!(names(&db.store.search_workers(None, None, 2).await.expect("limit")), ["alpha", "gamma"]);
    assert!(db.store.search_workers(None, None, 0).await.expect("zero").is_empty());
}

backends!(latest_version_drives_search_and_tags);
async fn latest_version_drives_search_and_tags(db: TestDb) {
    publish(&db.store, "wkr_1", "tool", "handles yaml", &["old-tag"], 1).await;
    db.store.insert_worker_version(&version("wkr_1", "2.0.0", "handles toml", &["new-tag"], 5)).await.expect("v2");
    // Back-filling an older version does not replace the latest one.
    db.store.insert_worker_version(&version("wkr_1", "1.5.0", "handles xml", &["mid-tag"], 3)).await.expect("v1.5");

    assert_eq!(names(&db.store.search_workers(Some("toml"), None, 10).await.expect("toml")), ["tool"]);
    assert!(db.store.search_workers(Some("yaml"), None, 10).await.expect("yaml").is_empty());
    assert!(db.store.search_workers(Some("xml"), None, 10).await.expect("xml").is_empty());
    assert_eq!(names(&db.store.search_workers(None, Some("new-tag"), 10).await.expect("new")), ["tool"]);
    assert!(db.store.search_workers(None, Some("old-tag"), 10).await.expect("old").is_empty());
    assert!(db.store.search_workers(None, Some("mid-tag"), 10).await.expect("mid").is_empty());
    let hit = &db.store.search_workers(Some("tool"), None, 10).await.expect("name")[0];
    assert_eq!(hit.1.version, "2.0.0");
}

backends!(the_latest_is_the_highest_version_not_the_last_published);
async fn the_latest_is_the_highest_version_not_the_last_published(db: TestDb) {
    publish(&db.store, "wkr_1", "tool", "handles yaml", &["one"], 1).await;
    db.store.insert_worker_version(&version("wkr_1", "2.0.0", "handles toml", &["two"], 2)).await.expect("v2");
    // A backport published after 2.0.0, and a version whose text sorts above "2.0.0" but
    // whose precedence is below it.
    db.store.insert_worker_version(&version("wkr_1", "1.5.1", "handles xml", &["backport"], 3)).await.expect("1.5.1");
    db.store.insert_worker_version(&version("wkr_1", "10.0.0-alpha", "next", &["alpha"], 4)).await.expect("alpha");
    db.store.insert_worker_version(&version("wkr_1", "2.0.0-rc.1", "pre", &["rc"], 5)).await.expect("rc");
    let listed: Vec<String> =
        db.store.list_worker_versions("wkr_1").await.expect("list").into_iter().map(|v| v.version).collect();
    assert_eq!(listed, ["10.0.0-alpha", "2.0.0", "2.0.0-rc.1", "1.5.1", "1.0.0"]);
    let hit = &db.store.search_workers(Some("tool"), None, 10).await.expect("name")[0];
    assert_eq!((hit.1.version.as_str(), hit.1.description.as_str()), ("10.0.0-alpha", "next"));
    assert!(db.store.search_workers(Some("xml"), None, 10).await.expect("xml").is_empty());
    assert!(db.store.search_workers(None, Some("backport"), 10).await.expect("tag").is_empty());
    assert_eq!(names(&db.store.search_workers(None, Some("alpha"), 10).await.expect("tag")), ["tool"]);
}

backends!(hostile_queries_never_error);
async fn hostile_queries_never_error(db: TestDb) {
    publish(&db.store, "wkr_q", "shell-escape", "Safe quoting of shell arguments", &["shell"], 1).await;
    let long = "a ".repeat(5000);
    let long_word = "shell".repeat(1000);
    let hostile = [
        "\"foo",
        "a OR",
        "OR",
        "AND",
        "NOT",
        "*",
        "foo*",
        "NEAR(a b)",
        "name:shell",
        "-shell",
        "^shell",
        "'",
        "\\",
        "\"\"",
        "(",
        ")",
        "{name}: x",
        "a AND OR NOT b",
        "%_",
        "🦀 émoji",
        "shell\"; DROP TABLE workers; --",
        long.as_str(),
        long_word.as_str(),
        "\0",
        "a & !b | (c) <-> d:*",
        "x:*A",
        "Ⅻ ǅ ٣ 日本語",
        "the of and",
    ];
    for q in hostile {
        let got = db.store.search_workers(Some(q), Some(q), 5).await;
        assert!(got.is_ok(), "q={q:?}: {got:?}");
        let got = db.store.search_workers(Some(q), None, 5).await;
        assert!(got.is_ok(), "q={q:?}: {got:?}");
    }
    // Syntax characters around a real word are ignored, the word still matches.
    let hits = db.store.search_workers(Some("\"shell*"), None, 5).await.expect("quoted");
    assert_eq!(names(&hits), ["shell-escape"]);
    db.store.get_worker("wkr_q").await.expect("table intact");
}

backends!(racing_publications_keep_the_newest_as_latest, flavor = "multi_thread", worker_threads = 8);
async fn racing_publications_keep_the_newest_as_latest(db: TestDb) {
    db.store.insert_worker(&worker("wkr_1", "racer", 0)).await.expect("worker");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            let tag = format!("tag{i}");
            let v = version("wkr_1", &format!("1.{i}.0"), &format!("release {i}"), &[tag.as_str()], i);
            store.insert_worker_version(&v).await
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("publish");
    }
    // Whatever order the publications committed in, the highest (here also the newest) is the
    // latest one.
    let hits = db.store.search_workers(None, None, 10).await.expect("list");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].1.version, "1.7.0");
    assert_eq!(names(&db.store.search_workers(None, Some("tag7"), 10).await.expect("tag")), ["racer"]);
    assert!(db.store.search_workers(None, Some("tag6"), 10).await.expect("old tag").is_empty());
    assert_eq!(db.store.list_worker_versions("wkr_1").await.expect("versions").len(), 8);
}
