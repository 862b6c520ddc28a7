//! Keys holding a NUL character name no record: every lookup answers "absent", on both
//! backends, although PostgreSQL cannot even receive such text (see `PgStore`).

use cloudterm_store::{PreviewRecord, ShareRecord, StoreError, WorkerVersionRecord};

use crate::{at, sandbox, workspace, TestDb};

backends!(keys_with_nul_read_as_absent);
async fn keys_with_nul_read_as_absent(db: TestDb) {
    db.store.insert_sandbox(&sandbox("sbx_1", "alice", 0)).await.expect("sandbox");
    db.store.insert_workspace(&workspace("ws_1", "alice", "w", &["t"], 0)).await.expect("workspace");
    let key = "ws_1\0";
    let share = ShareRecord {
        workspace_id: "ws_1".to_owned(),
        agent_id: "bob".to_owned(),
        permission: "read".to_owned(),
        granted_by: "alice".to_owned(),
        granted_at: at(0),
    };
    let preview = PreviewRecord {
        sandbox_id: "sbx_1".to_owned(),
        port: 80,
        owner: "alice".to_owned(),
        public: false,
        fallback_sandbox_id: None,
        created_at: at(0),
    };
    let version = WorkerVersionRecord {
        worker_id: "wkr_1".to_owned(),
        version: "1.0.0".to_owned(),
        description: String::new(),
        tags: Vec::new(),
        command: "run".to_owned(),
        files_key: None,
        created_at: at(0),
    };
    let not_found = [
        db.store.get_principal(key).await.map(|_| ()),
        db.store.get_workspace(key).await.map(|_| ()),
        db.store.delete_workspace(key).await,
        db.store.get_sandbox(key).await.map(|_| ()),
        db.store.update_sandbox_state(key, "stopped", at(1)).await,
        db.store.transition_sandbox_state(key, &["running"], "stopped", at(1)).await.map(|_| ()),
        db.store.update_sandbox_expiry(key, at(1), at(1)).await,
        db.store.delete_sandbox(key).await,
        db.store.get_snapshot(key).await.map(|_| ()),
        db.store.mark_snapshot_ready(key, 1, 1, 1, None, None).await,
        db.store.set_snapshot_pinned(key, true).await,
        db.store.delete_snapshot(key).await,
        db.store.get_share(key, "bob").await.map(|_| ()),
        db.store.get_share("ws_1", key).await.map(|_| ()),
        db.store.delete_share(key, "bob").await,
        db.store.get_worker(key).await.map(|_| ()),
        db.store.get_worker_by_name(key).await.map(|_| ()),
        db.store.get_preview(key, 80).await.map(|_| ()),
        db.store.delete_preview(key, 80).await,
        // Children of a parent that cannot exist.
        db.store.put_share(&ShareRecord { workspace_id: key.to_owned(), ..share.clone() }).await,
        db.store.put_preview(&PreviewRecord { sandbox_id: key.to_owned(), ..preview.clone() }).await.map(|_| ()),
        db.store.insert_worker_version(&WorkerVersionRecord { worker_id: key.to_owned(), ..version.clone() }).await,
    ];
    for (i, got) in not_found.into_iter().enumerate() {
        assert!(matches!(got, Err(StoreError::NotFound)), "call {i}: {got:?}");
    }
    assert!(db.store.list_workspaces_by_owner(key, None).await.expect("owner").is_empty());
    assert!(db.store.list_workspaces_by_owner("alice", Some(key)).await.expect("tag").is_empty());
    assert!(db.store.list_workspaces_shared_with(key).await.expect("shared").is_empty());
    assert!(db.store.list_sandboxes_by_owner(key).await.expect("sandboxes").is_empty());
    let running = db.store.list_sandboxes_in_states(&[key, "running"]).await.expect("states");
    assert_eq!(running.len(), 1, "the other states still match");
    assert!(db.store.list_snapshots(key).await.expect("snapshots").is_empty());
    assert!(db.store.list_shares(key).await.expect("shares").is_empty());
    assert!(db.store.list_audit(key).await.expect("audit").is_empty());
    assert!(db.store.list_worker_versions(key).await.expect("versions").is_empty());
    assert!(db.store.list_previews_by_owner(key).await.expect("previews").is_empty());
    assert!(db.store.list_previews_by_sandbox(key).await.expect("previews").is_empty());
    assert!(db.store.search_workers(Some(key), Some(key), 5).await.expect("search").is_empty());
    // A transition that expects an impossible state changes nothing.
    assert!(!db.store.transition_sandbox_state("sbx_1", &[key], "stopped", at(1)).await.expect("cas"));
}
