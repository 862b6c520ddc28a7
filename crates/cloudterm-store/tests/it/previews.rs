//! Previews: upsert on (sandbox, port), lookups, listings, delete.

use cloudterm_store::{PreviewRecord, StoreError};

use crate::{at, sandbox, TestDb};

fn preview(sandbox_id: &str, port: u16, owner: &str, t: i64) -> PreviewRecord {
    PreviewRecord {
        sandbox_id: sandbox_id.to_owned(),
        port,
        owner: owner.to_owned(),
        public: false,
        fallback_sandbox_id: None,
        created_at: at(t),
    }
}

backends!(put_is_an_upsert_on_sandbox_and_port);
async fn put_is_an_upsert_on_sandbox_and_port(db: TestDb) {
    db.store.insert_sandbox(&sandbox("sbx_1", "alice", 0)).await.expect("sandbox");
    let first = preview("sbx_1", 65535, "alice", 1);
    assert_eq!(db.store.put_preview(&first).await.expect("put"), first);
    assert_eq!(db.store.get_preview("sbx_1", 65535).await.expect("get"), first);

    let update = PreviewRecord {
        public: true,
        fallback_sandbox_id: Some("sbx_2".to_owned()),
        created_at: at(50),
        ..first.clone()
    };
    let stored = db.store.put_preview(&update).await.expect("update");
    // public and fallback change; owner and creation time stay.
    assert_eq!(stored, PreviewRecord { created_at: at(1), ..update });
    assert_eq!(db.store.get_preview("sbx_1", 65535).await.expect("get"), stored);
    assert_eq!(db.store.list_previews_by_sandbox("sbx_1").await.expect("list").len(), 1);
}

backends!(listings_and_delete);
async fn listings_and_delete(db: TestDb) {
    db.store.insert_sandbox(&sandbox("sbx_1", "alice", 0)).await.expect("1");
    db.store.insert_sandbox(&sandbox("sbx_2", "bob", 0)).await.expect("2");
    db.store.put_preview(&preview("sbx_1", 8080, "alice", 2)).await.expect("a");
    db.store.put_preview(&preview("sbx_1", 3000, "alice", 3)).await.expect("b");
    db.store.put_preview(&preview("sbx_2", 80, "bob", 1)).await.expect("c");

    let mine = db.store.list_previews_by_owner("alice").await.expect("mine");
    let ports: Vec<u16> = mine.iter().map(|p| p.port).collect();
    assert_eq!(ports, [8080, 3000], "oldest first");
    let by_sandbox = db.store.list_previews_by_sandbox("sbx_1").await.expect("sbx");
    let ports: Vec<u16> = by_sandbox.iter().map(|p| p.port).collect();
    assert_eq!(ports, [3000, 8080], "by port");
    let all = db.store.list_previews().await.expect("all");
    let keys: Vec<(&str, u16)> = all.iter().map(|p| (p.sandbox_id.as_str(), p.port)).collect();
    assert_eq!(keys, [("sbx_2", 80), ("sbx_1", 8080), ("sbx_1", 3000)], "every owner's, oldest first");

    db.store.delete_preview("sbx_1", 8080).await.expect("delete");
    assert!(matches!(db.store.get_preview("sbx_1", 8080).await, Err(StoreError::NotFound)));
    assert!(matches!(db.store.delete_preview("sbx_1", 8080).await, Err(StoreError::NotFound)));
    assert_eq!(db.store.list_previews_by_owner("alice").await.expect("left").len(), 1);
}

backends!(preview_of_missing_sandbox_is_not_found);
async fn preview_of_missing_sandbox_is_not_found(db: TestDb) {
    let got = db.store.put_preview(&preview("sbx_ghost", 8080, "alice", 0)).await;
    assert!(matches!(got, Err(StoreError::NotFound)), "{got:?}");
}
