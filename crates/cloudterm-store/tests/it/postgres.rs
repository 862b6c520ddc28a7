//! PostgreSQL-only behaviour: a server that goes away, servers migrating one database at once,
//! byte-order text whatever the database's collation, and text PostgreSQL cannot hold.

use cloudterm_store::{PgStore, StoreError};
use cloudterm_test_support::{skip_unless, PostgresServer};

use crate::{at, sandbox, workspace, Backend, TestDb};

/// A fresh PostgreSQL test database, or `None` when the test should stop.
async fn postgres() -> Option<TestDb> {
    crate::test_db(Backend::Postgres).await
}

#[tokio::test]
async fn a_stopped_server_is_unavailable() {
    // A server of its own: the shared one must keep serving the other tests.
    let Some(mut server) = PostgresServer::start().await else { return };
    let store = cloudterm_store::open(&server.database_url()).await.expect("open");
    store.insert_workspace(&workspace("ws_1", "alice", "w", &[], 0)).await.expect("insert");
    server.stop();
    for got in [
        store.ping().await.map(|_| ()),
        store.get_workspace("ws_1").await.map(|_| ()),
        store.insert_workspace(&workspace("ws_2", "alice", "v", &[], 1)).await,
    ] {
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_starting_together_migrate_once() {
    let Some(server) = PostgresServer::shared().await else { return };
    let url = server.create_database().await;
    let mut opens = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        opens.push(tokio::spawn(async move { PgStore::open(&url).await }));
    }
    for open in opens {
        open.await.expect("join").expect("every server opens the store");
    }
    let pool = sqlx::PgPool::connect(&url).await.expect("raw connect");
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.expect("count");
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres")).expect("dir").count();
    assert_eq!(usize::try_from(applied).expect("count"), files, "each migration applied exactly once");
}

#[tokio::test]
async fn text_sorts_by_bytes_whatever_the_database_collation() {
    let Some(server) = PostgresServer::shared().await else { return };
    // A database whose default collation is ICU English, where "a" sorts before "B"; the
    // schema's COLLATE "C" must keep SQLite's byte order ("B" before "a") for id tie-breaks.
    let admin = sqlx::PgPool::connect(&server.url("postgres")).await.expect("raw connect");
    let created =
        sqlx::query("CREATE DATABASE icu_en LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' TEMPLATE template0")
            .execute(&admin)
            .await;
    if skip_unless(created.is_ok(), &format!("this PostgreSQL cannot create an ICU database: {created:?}")) {
        return;
    }
    let store = cloudterm_store::open(&server.url("icu_en")).await.expect("open");
    for id in ["sbx_a", "sbx_B", "sbx_é", "sbx_b"] {
        store.insert_sandbox(&sandbox(id, "alice", 0)).await.expect("insert");
    }
    let ids: Vec<String> =
        store.list_sandboxes_by_owner("alice").await.expect("list").into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["sbx_B", "sbx_a", "sbx_b", "sbx_é"]);
    let order: Vec<String> = sqlx::query_scalar("SELECT s FROM (VALUES ('a'), ('B')) AS t (s) ORDER BY s")
        .fetch_all(&admin)
        .await
        .expect("q");
    assert_eq!(order, ["B", "a"], "the postgres database (C locale) sorts by bytes too");
}

#[tokio::test]
async fn text_with_nul_is_refused_as_a_conflict() {
    // SQLite stores NUL in text; PostgreSQL cannot. The write is refused as a conflict (a rule
    // of the store), not reported as an unavailable server.
    let Some(db) = postgres().await else { return };
    let got = db.store.insert_workspace(&workspace("ws_1", "alice", "a\0b", &[], 0)).await;
    assert!(matches!(&got, Err(StoreError::Conflict(msg)) if msg.contains("NUL")), "{got:?}");
    let got = db.store.insert_sandbox(&sandbox("sbx_\0", "alice", 0)).await;
    assert!(matches!(got, Err(StoreError::Conflict(_))), "{got:?}");
    let got = db.store.ensure_principal("a\0", workspace("ws_h", "a\0", "home", &[], 0), at(0)).await;
    assert!(matches!(got, Err(StoreError::Conflict(_))), "{got:?}");
    // Nothing was half-written, and JSON text keeps NUL escaped, so it is storable.
    assert!(db.store.list_workspaces_by_owner("alice", None).await.expect("list").is_empty());
    let mut with_nul_json = sandbox("sbx_1", "alice", 0);
    with_nul_json.metadata = serde_json::json!({"k": "a\u{0}b"});
    db.store.insert_sandbox(&with_nul_json).await.expect("insert");
    assert_eq!(db.store.get_sandbox("sbx_1").await.expect("get"), with_nul_json);
}
