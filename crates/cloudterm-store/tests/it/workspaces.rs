//! Workspaces: round-trip, unique names per owner, tag filters, shared-with listing, delete.

use cloudterm_store::{ShareRecord, StoreError};

use crate::{at, workspace, TestDb};

backends!(round_trip_and_not_found);
async fn round_trip_and_not_found(db: TestDb) {
    let ws = workspace("ws_1", "alice", "proj", &["rust", "ml", "rust"], 3);
    db.store.insert_workspace(&ws).await.expect("insert");
    assert_eq!(db.store.get_workspace("ws_1").await.expect("get"), ws);
    assert!(matches!(db.store.get_workspace("ws_nope").await, Err(StoreError::NotFound)));
}

backends!(names_are_unique_per_owner);
async fn names_are_unique_per_owner(db: TestDb) {
    db.store.insert_workspace(&workspace("ws_1", "alice", "proj", &[], 0)).await.expect("first");
    let dup = db.store.insert_workspace(&workspace("ws_2", "alice", "proj", &[], 1)).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let same_id = db.store.insert_workspace(&workspace("ws_1", "alice", "other", &[], 1)).await;
    assert!(matches!(same_id, Err(StoreError::Conflict(_))), "{same_id:?}");
    // Another owner may use the name.
    db.store.insert_workspace(&workspace("ws_3", "bob", "proj", &[], 2)).await.expect("bob");
    // The refused insert left no tag rows or workspace behind.
    assert!(matches!(db.store.get_workspace("ws_2").await, Err(StoreError::NotFound)));
}

backends!(list_by_owner_oldest_first_with_tag_filter);
async fn list_by_owner_oldest_first_with_tag_filter(db: TestDb) {
    db.store.insert_workspace(&workspace("ws_b", "alice", "b", &["ml"], 2)).await.expect("b");
    db.store.insert_workspace(&workspace("ws_a", "alice", "a", &["rust", "ml"], 1)).await.expect("a");
    db.store.insert_workspace(&workspace("ws_c", "alice", "c", &["rust-lang"], 3)).await.expect("c");
    db.store.insert_workspace(&workspace("ws_x", "bob", "x", &["rust"], 0)).await.expect("x");

    let ids = |v: Vec<cloudterm_store::WorkspaceRecord>| v.into_iter().map(|w| w.id).collect::<Vec<_>>();
    let all = db.store.list_workspaces_by_owner("alice", None).await.expect("all");
    assert_eq!(ids(all), ["ws_a", "ws_b", "ws_c"]);
    let ml = db.store.list_workspaces_by_owner("alice", Some("ml")).await.expect("ml");
    assert_eq!(ids(ml), ["ws_a", "ws_b"]);
    // Exact tags only: "rust" does not match "rust-lang".
    let rust = db.store.list_workspaces_by_owner("alice", Some("rust")).await.expect("rust");
    assert_eq!(ids(rust), ["ws_a"]);
    let none = db.store.list_workspaces_by_owner("alice", Some("go")).await.expect("go");
    assert!(none.is_empty());
}

backends!(shared_with_lists_permission_and_delete_removes_shares);
async fn shared_with_lists_permission_and_delete_removes_shares(db: TestDb) {
    db.store.insert_workspace(&workspace("ws_1", "alice", "one", &[], 0)).await.expect("1");
    db.store.insert_workspace(&workspace("ws_2", "alice", "two", &[], 1)).await.expect("2");
    let share = |ws: &str, perm: &str, t: i64| ShareRecord {
        workspace_id: ws.to_owned(),
        agent_id: "agent-7".to_owned(),
        permission: perm.to_owned(),
        granted_by: "alice".to_owned(),
        granted_at: at(t),
    };
    db.store.put_share(&share("ws_2", "write", 5)).await.expect("share 2");
    db.store.put_share(&share("ws_1", "read", 6)).await.expect("share 1");

    let shared = db.store.list_workspaces_shared_with("agent-7").await.expect("shared");
    let got: Vec<(&str, &str)> = shared.iter().map(|(w, p)| (w.id.as_str(), p.as_str())).collect();
    assert_eq!(got, [("ws_2", "write"), ("ws_1", "read")]);
    assert_eq!(shared[0].0, workspace("ws_2", "alice", "two", &[], 1));
    assert!(db.store.list_workspaces_shared_with("alice").await.expect("none").is_empty());

    db.store.delete_workspace("ws_2").await.expect("delete");
    assert!(matches!(db.store.get_workspace("ws_2").await, Err(StoreError::NotFound)));
    assert!(matches!(db.store.get_share("ws_2", "agent-7").await, Err(StoreError::NotFound)));
    let shared = db.store.list_workspaces_shared_with("agent-7").await.expect("after");
    assert_eq!(shared.len(), 1);
    assert!(matches!(db.store.delete_workspace("ws_2").await, Err(StoreError::NotFound)));
    // The name is free again once deleted.
    db.store.insert_workspace(&workspace("ws_9", "alice", "two", &[], 9)).await.expect("reuse name");
}
