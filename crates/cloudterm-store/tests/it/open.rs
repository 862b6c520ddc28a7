//! `open`: URL schemes, the file store's persistence across reopen, and idempotent migrations.

use cloudterm_store::{StoreError, WorkspaceRecord};

use crate::{at, file_store, sandbox, workspace};

#[tokio::test]
async fn postgres_urls_are_unsupported_for_now() {
    for url in ["postgres://u:p@localhost/db", "postgresql://localhost/db"] {
        match cloudterm_store::open(url).await {
            Err(StoreError::Unsupported(msg)) => {
                assert!(msg.starts_with("postgresql store is not built yet"), "{msg}");
                assert!(!msg.contains("u:p"), "the url must not leak: {msg}");
            }
            Err(other) => panic!("expected Unsupported, got {other:?}"),
            Ok(_) => panic!("expected Unsupported, got a store"),
        }
    }
    assert!(matches!(cloudterm_store::open("mysql://localhost/db").await, Err(StoreError::Unsupported(_))));
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

#[tokio::test]
async fn file_is_created_and_data_survives_reopen() {
    let db = file_store().await;
    assert!(db.dir.path().join("meta.db").exists());
    db.store.ping().await.expect("ping");
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

#[tokio::test]
async fn a_closed_store_is_unavailable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let store = cloudterm_store::SqliteStore::open(&url).await.expect("open");
    store.close().await;
    use cloudterm_store::Store;
    assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))));
}
