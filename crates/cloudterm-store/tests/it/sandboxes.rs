//! Sandboxes: round-trip with JSON columns, listings, state and expiry updates, delete.

use cloudterm_store::{PreviewRecord, StoreError};

use crate::{at, sandbox, TestDb};

backends!(round_trip_conflict_and_not_found);
async fn round_trip_conflict_and_not_found(db: TestDb) {
    let mut sbx = sandbox("sbx_1", "alice", 0);
    sbx.workspace_id = None;
    sbx.image = None;
    db.store.insert_sandbox(&sbx).await.expect("insert");
    assert_eq!(db.store.get_sandbox("sbx_1").await.expect("get"), sbx);
    let full = sandbox("sbx_2", "alice", 1);
    db.store.insert_sandbox(&full).await.expect("insert full");
    assert_eq!(db.store.get_sandbox("sbx_2").await.expect("get full"), full);
    assert!(matches!(db.store.insert_sandbox(&sandbox("sbx_1", "bob", 2)).await, Err(StoreError::Conflict(_))));
    assert!(matches!(db.store.get_sandbox("sbx_nope").await, Err(StoreError::NotFound)));
}

backends!(listings_by_owner_and_state);
async fn listings_by_owner_and_state(db: TestDb) {
    db.store.insert_sandbox(&sandbox("sbx_b", "alice", 2)).await.expect("b");
    db.store.insert_sandbox(&sandbox("sbx_a", "alice", 1)).await.expect("a");
    db.store.insert_sandbox(&sandbox("sbx_c", "bob", 3)).await.expect("c");
    db.store.update_sandbox_state("sbx_b", "stopped", at(4)).await.expect("stop b");

    let mine: Vec<String> =
        db.store.list_sandboxes_by_owner("alice").await.expect("mine").into_iter().map(|s| s.id).collect();
    assert_eq!(mine, ["sbx_a", "sbx_b"]);

    let ids = |v: Vec<cloudterm_store::SandboxRecord>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let running = db.store.list_sandboxes_in_states(&["running"]).await.expect("running");
    assert_eq!(ids(running), ["sbx_a", "sbx_c"]);
    let both = db.store.list_sandboxes_in_states(&["stopped", "running"]).await.expect("both");
    assert_eq!(ids(both), ["sbx_a", "sbx_b", "sbx_c"]);
    assert!(db.store.list_sandboxes_in_states(&[]).await.expect("empty").is_empty());
    assert!(db.store.list_sandboxes_in_states(&["lost"]).await.expect("lost").is_empty());
}

backends!(state_and_expiry_updates);
async fn state_and_expiry_updates(db: TestDb) {
    db.store.insert_sandbox(&sandbox("sbx_1", "alice", 0)).await.expect("insert");
    db.store.update_sandbox_state("sbx_1", "paused", at(10)).await.expect("pause");
    db.store.update_sandbox_expiry("sbx_1", at(5000), at(11)).await.expect("keepalive");
    let got = db.store.get_sandbox("sbx_1").await.expect("get");
    assert_eq!(got.state, "paused");
    assert_eq!(got.expires_at, at(5000));
    assert_eq!(got.updated_at, at(11));
    assert_eq!(got.created_at, at(0));

    assert!(matches!(db.store.update_sandbox_state("nope", "x", at(1)).await, Err(StoreError::NotFound)));
    assert!(matches!(db.store.update_sandbox_expiry("nope", at(1), at(1)).await, Err(StoreError::NotFound)));

    // Compare-and-set: only one of two identical transitions wins.
    assert!(db.store.transition_sandbox_state("sbx_1", &["paused", "running"], "stopping", at(12)).await.expect("cas"));
    assert!(!db
        .store
        .transition_sandbox_state("sbx_1", &["paused", "running"], "stopping", at(13))
        .await
        .expect("cas 2"));
    let got = db.store.get_sandbox("sbx_1").await.expect("get");
    assert_eq!((got.state.as_str(), got.updated_at), ("stopping", at(12)));
    assert!(matches!(
        db.store.transition_sandbox_state("nope", &["running"], "x", at(1)).await,
        Err(StoreError::NotFound)
    ));
}

backends!(delete_removes_sandbox_and_its_previews);
async fn delete_removes_sandbox_and_its_previews(db: TestDb) {
    db.store.insert_sandbox(&sandbox("sbx_1", "alice", 0)).await.expect("insert");
    db.store
        .put_preview(&PreviewRecord {
            sandbox_id: "sbx_1".to_owned(),
            port: 8080,
            owner: "alice".to_owned(),
            public: false,
            fallback_sandbox_id: None,
            created_at: at(1),
        })
        .await
        .expect("preview");
    db.store.delete_sandbox("sbx_1").await.expect("delete");
    assert!(matches!(db.store.get_sandbox("sbx_1").await, Err(StoreError::NotFound)));
    assert!(matches!(db.store.get_preview("sbx_1", 8080).await, Err(StoreError::NotFound)));
    assert!(matches!(db.store.delete_sandbox("sbx_1").await, Err(StoreError::NotFound)));
}

backends!(racing_transitions_have_one_winner, flavor = "multi_thread", worker_threads = 8);
async fn racing_transitions_have_one_winner(db: TestDb) {
    db.store.insert_sandbox(&sandbox("sbx_1", "alice", 0)).await.expect("insert");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            store.transition_sandbox_state("sbx_1", &["running"], &format!("stopping-{i}"), at(i)).await
        }));
    }
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if task.await.expect("join").expect("transition") {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one compare-and-set wins: {winners:?}");
    let got = db.store.get_sandbox("sbx_1").await.expect("get");
    assert_eq!(got.state, format!("stopping-{}", winners[0]));
}
