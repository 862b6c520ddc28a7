//! `open`: URL schemes, persistence across reopen with idempotent migrations (both backends),
//! the in-memory SQLite store, and what a closed store answers.

use cloudterm_store::{PgStore, SqliteStore, Store, StoreError, WorkspaceRecord};

use crate::{at, sandbox, workspace, Backend, TestDb};

#[tokio::test]
async fn unknown_schemes_are_unsupported() {
    for url in ["mysql://u:secret@localhost/db", "", "localhost/db"] {
        match cloudterm_store::open(url).await {
            Err(StoreError::Unsupported(msg)) => assert!(!msg.contains("secret"), "the url must not leak: {msg}"),
            Err(other) => panic!("{url:?}: expected Unsupported, got {other:?}"),
            Ok(_) => panic!("{url:?}: expected Unsupported, got a store"),
        }
    }
}

#[tokio::test]
async fn bad_postgres_urls_are_refused_without_leaking_the_password() {
    for url in ["postgres://u:secret@localhost:notaport/db", "postgresql://u:secret@[::1/db"] {
        match cloudterm_store::open(url).await {
            Err(StoreError::Unsupported(msg)) => {
                assert!(msg.starts_with("invalid postgres url"), "{msg}");
                assert!(!msg.contains("secret"), "the url must not leak: {msg}");
            }
            Err(other) => panic!("{url:?}: expected Unsupported, got {other:?}"),
            Ok(_) => panic!("{url:?}: expected Unsupported, got a store"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_without_leaking_the_password() {
    // Port 1 on loopback: nothing listens, the connection is refused until the pool gives up.
    match cloudterm_store::open("postgres://u:secret@127.0.0.1:1/db").await {
        Err(StoreError::Unavailable(msg)) => assert!(!msg.contains("secret"), "the url must not leak: {msg}"),
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("expected Unavailable, got a store"),
    }
}

#[tokio::test]
async fn memory_store_works_and_is_private() {
    let a = cloudterm_store::open("sqlite::memory:").await.expect("open a");
    let b = cloudterm_store::open("sqlite::memory:").await.expect("open b");
    a.ping().await.expect("ping");
    assert_eq!(a.backend_name(), "sqlite");
    a.insert_workspace(&workspace("ws_1", "alice", "main", &[], 0)).await.expect("insert");
    assert_eq!(a.get_workspace("ws_1").await.expect("get").name, "main");
    assert!(matches!(b.get_workspace("ws_1").await, Err(StoreError::NotFound)));
}

backends!(data_survives_reopen_and_migrations_apply_once);
async fn data_survives_reopen_and_migrations_apply_once(db: TestDb) {
    if let Some(dir) = &db.dir {
        assert!(dir.path().join("meta.db").exists());
    }
    db.store.ping().await.expect("ping");
    let expected_name = match db.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(db.store.backend_name(), expected_name);
    let home = WorkspaceRecord { is_home: true, ..workspace("ws_home", "alice", "home", &[], 0) };
    let principal = db.store.ensure_principal("alice", home, at(0)).await.expect("ensure");
    db.store.insert_sandbox(&sandbox("sbx_1", "alice", 1)).await.expect("sandbox");
    let url = db.url.clone();
    drop(db.store);

    // A second open runs the migrator again: it must apply nothing and keep every row.
    let again = cloudterm_store::open(&url).await.expect("reopen");
    assert_eq!(again.get_principal("alice").await.expect("principal"), principal);
    assert_eq!(again.get_sandbox("sbx_1").await.expect("sandbox"), sandbox("sbx_1", "alice", 1));
    let third = cloudterm_store::open(&url).await.expect("open a third time");
    assert_eq!(third.list_workspaces_by_owner("alice", None).await.expect("list").len(), 1);
}

backends!(a_closed_store_is_unavailable);
async fn a_closed_store_is_unavailable(db: TestDb) {
    let store: Box<dyn Store> = match db.backend {
        Backend::Sqlite => {
            let store = SqliteStore::open(&db.url).await.expect("open");
            store.close().await;
            Box::new(store)
        }
        Backend::Postgres => {
            let store = PgStore::open(&db.url).await.expect("open");
            store.close().await;
            Box::new(store)
        }
    };
    assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(store.get_workspace("ws_1").await, Err(StoreError::Unavailable(_))));
}
