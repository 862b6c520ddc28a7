//! Principals: first sight creates the home workspace, later calls change nothing, and racing
//! first requests agree on one record and one home.

use cloudterm_store::StoreError;

use crate::{at, workspace, TestDb};

backends!(ensure_creates_principal_and_home_once);
async fn ensure_creates_principal_and_home_once(db: TestDb) {
    assert!(matches!(db.store.get_principal("alice").await, Err(StoreError::NotFound)));

    // The caller's owner/is_home are overridden: the home belongs to the principal.
    let home = workspace("ws_home", "someone-else", "home", &["home"], 5);
    let created = db.store.ensure_principal("alice", home, at(5)).await.expect("ensure");
    assert_eq!(created.id, "alice");
    assert_eq!(created.home_workspace_id, "ws_home");
    assert_eq!(created.created_at, at(5));
    let ws = db.store.get_workspace("ws_home").await.expect("home workspace");
    assert_eq!(ws.owner, "alice");
    assert!(ws.is_home);

    // A later call with another home returns the original and creates nothing.
    let again = db
        .store
        .ensure_principal("alice", workspace("ws_other", "alice", "home2", &[], 9), at(9))
        .await
        .expect("ensure again");
    assert_eq!(again, created);
    assert!(matches!(db.store.get_workspace("ws_other").await, Err(StoreError::NotFound)));
    assert_eq!(db.store.get_principal("alice").await.expect("get"), created);
}

backends!(racing_first_requests_yield_one_home, flavor = "multi_thread", worker_threads = 8);
async fn racing_first_requests_yield_one_home(db: TestDb) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            let home = workspace(&format!("ws_home_{i}"), "bob", "home", &[], i);
            store.ensure_principal("bob", home, at(i)).await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("join").expect("ensure_principal"));
    }
    let first = results[0].clone();
    assert!(results.iter().all(|r| *r == first), "all callers see one record: {results:?}");
    let workspaces = db.store.list_workspaces_by_owner("bob", None).await.expect("list");
    assert_eq!(workspaces.len(), 1, "exactly one home workspace: {workspaces:?}");
    assert_eq!(workspaces[0].id, first.home_workspace_id);
    assert!(workspaces[0].is_home);
}

backends!(home_workspace_cannot_be_deleted_or_duplicated);
async fn home_workspace_cannot_be_deleted_or_duplicated(db: TestDb) {
    let p =
        db.store.ensure_principal("carol", workspace("ws_h", "carol", "home", &[], 0), at(0)).await.expect("ensure");
    match db.store.delete_workspace(&p.home_workspace_id).await {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("home"), "{msg}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // Still there, and the principal still points at it.
    db.store.get_workspace("ws_h").await.expect("home survives");

    // A second home for the same owner is refused by the one-home index.
    let mut second = workspace("ws_h2", "carol", "other-home", &[], 1);
    second.is_home = true;
    assert!(matches!(db.store.insert_workspace(&second).await, Err(StoreError::Conflict(_))));
}
