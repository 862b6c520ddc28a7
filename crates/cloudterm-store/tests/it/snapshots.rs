//! Snapshots: pending until ready, newest-first listing of ready ones, pinning, delete.

use cloudterm_store::{SnapshotLayerRecord, SnapshotRecord, SnapshotState, StoreError};

use crate::{at, TestDb};

fn snapshot(id: &str, workspace: &str, created: i64) -> SnapshotRecord {
    SnapshotRecord {
        id: id.to_owned(),
        workspace_id: workspace.to_owned(),
        owner: "alice".to_owned(),
        label: Some(format!("label of {id}")),
        kind: "manual".to_owned(),
        pinned: false,
        state: SnapshotState::Pending,
        object_key: format!("snapshots/alice/{id}.tar.zst"),
        size_bytes: 0,
        stored_bytes: 0,
        file_count: 0,
        sha256: None,
        layer: None,
        created_at: at(created),
    }
}

backends!(insert_is_pending_until_marked_ready);
async fn insert_is_pending_until_marked_ready(db: TestDb) {
    // Whatever the caller says, a new snapshot starts pending.
    let mut snap = snapshot("snap_1", "ws_1", 0);
    snap.state = SnapshotState::Ready;
    db.store.insert_snapshot(&snap).await.expect("insert");
    let got = db.store.get_snapshot("snap_1").await.expect("get");
    assert_eq!(got, SnapshotRecord { state: SnapshotState::Pending, ..snap.clone() });
    assert!(db.store.list_snapshots("ws_1").await.expect("list").is_empty());
    let pending = db.store.list_pending_snapshots().await.expect("pending");
    assert_eq!(pending, [got]);

    db.store.mark_snapshot_ready("snap_1", 4096, 1200, 7, Some("ab12"), None).await.expect("ready");
    let ready = db.store.get_snapshot("snap_1").await.expect("get ready");
    assert_eq!(
        ready,
        SnapshotRecord {
            state: SnapshotState::Ready,
            size_bytes: 4096,
            stored_bytes: 1200,
            file_count: 7,
            sha256: Some("ab12".to_owned()),
            ..snap.clone()
        }
    );
    assert_eq!(db.store.list_snapshots("ws_1").await.expect("list"), [ready]);
    assert!(db.store.list_pending_snapshots().await.expect("pending").is_empty());

    assert!(matches!(db.store.insert_snapshot(&snapshot("snap_1", "ws_1", 1)).await, Err(StoreError::Conflict(_))));
    assert!(matches!(db.store.mark_snapshot_ready("nope", 1, 1, 1, None, None).await, Err(StoreError::NotFound)));
    assert!(matches!(db.store.get_snapshot("nope").await, Err(StoreError::NotFound)));
}

backends!(a_writable_layer_is_stored_with_its_snapshot);
async fn a_writable_layer_is_stored_with_its_snapshot(db: TestDb) {
    let snap = snapshot("snap_l", "ws_1", 0);
    db.store.insert_snapshot(&snap).await.expect("insert");
    assert_eq!(db.store.get_snapshot("snap_l").await.expect("get").layer, None);
    let layer = SnapshotLayerRecord {
        object_key: "snapshots/alice/snap_l.layer.tar.zst".to_owned(),
        image: Some("python".to_owned()),
        size_bytes: 10 << 20,
        stored_bytes: 3 << 20,
        file_count: 812,
        sha256: "cd34".to_owned(),
        overlays: vec!["etc".to_owned(), "usr".to_owned()],
    };
    db.store.mark_snapshot_ready("snap_l", 1, 1, 1, Some("ab12"), Some(&layer)).await.expect("ready");
    let listed = db.store.list_snapshots("ws_1").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].layer.as_ref(), Some(&layer));
    assert_eq!(db.store.get_snapshot("snap_l").await.expect("get").layer, Some(layer));
}

backends!(list_is_newest_first_ready_only_per_workspace);
async fn list_is_newest_first_ready_only_per_workspace(db: TestDb) {
    for (id, ws, t) in [("snap_a", "ws_1", 1), ("snap_c", "ws_1", 3), ("snap_b", "ws_1", 2), ("snap_o", "ws_2", 4)] {
        db.store.insert_snapshot(&snapshot(id, ws, t)).await.expect("insert");
        db.store.mark_snapshot_ready(id, 1, 1, 1, None, None).await.expect("ready");
    }
    db.store.insert_snapshot(&snapshot("snap_pending", "ws_1", 9)).await.expect("pending");
    let ids: Vec<String> = db.store.list_snapshots("ws_1").await.expect("list").into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["snap_c", "snap_b", "snap_a"]);
    let pending: Vec<String> =
        db.store.list_pending_snapshots().await.expect("pending").into_iter().map(|s| s.id).collect();
    assert_eq!(pending, ["snap_pending"]);
}

backends!(pin_and_delete);
async fn pin_and_delete(db: TestDb) {
    db.store.insert_snapshot(&snapshot("snap_1", "ws_1", 0)).await.expect("insert");
    db.store.set_snapshot_pinned("snap_1", true).await.expect("pin");
    assert!(db.store.get_snapshot("snap_1").await.expect("get").pinned);
    db.store.set_snapshot_pinned("snap_1", true).await.expect("pin twice is fine");
    db.store.set_snapshot_pinned("snap_1", false).await.expect("unpin");
    assert!(!db.store.get_snapshot("snap_1").await.expect("get").pinned);
    assert!(matches!(db.store.set_snapshot_pinned("nope", true).await, Err(StoreError::NotFound)));
    db.store.delete_snapshot("snap_1").await.expect("delete");
    assert!(matches!(db.store.get_snapshot("snap_1").await, Err(StoreError::NotFound)));
    assert!(matches!(db.store.delete_snapshot("snap_1").await, Err(StoreError::NotFound)));
}
