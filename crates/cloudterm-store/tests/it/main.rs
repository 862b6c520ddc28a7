//! Integration tests of the SQLite store against a real database file in a temp dir: one test
//! binary, one module per table group, shared fixtures here.

mod corrupt;
mod open;
mod previews;
mod principals;
mod sandboxes;
mod shares;
mod snapshots;
mod workers;
mod workspaces;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cloudterm_store::{SandboxRecord, Store, WorkspaceRecord};
use tempfile::TempDir;

/// A store on a fresh SQLite file; the directory lives as long as this value.
pub struct TestDb {
    /// Keeps the temp dir alive.
    pub dir: TempDir,
    /// The `sqlite://…` url of the file.
    pub url: String,
    /// The open store.
    pub store: Arc<dyn Store>,
}

/// Opens a store on a new file in a new temp dir.
pub async fn file_store() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let store = cloudterm_store::open(&url).await.expect("open store");
    TestDb { dir, url, store }
}

/// A fixed time `secs` seconds (plus `millis`) after an arbitrary epoch, whole milliseconds so
/// it survives the store's millisecond precision.
pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_750_000_000_000 + secs * 1000 + 123).expect("valid time")
}

/// A workspace record with the given id, owner and name.
pub fn workspace(id: &str, owner: &str, name: &str, tags: &[&str], created: i64) -> WorkspaceRecord {
    WorkspaceRecord {
        id: id.to_owned(),
        owner: owner.to_owned(),
        name: name.to_owned(),
        description: format!("the {name} workspace"),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        is_home: false,
        created_at: at(created),
    }
}

/// A running sandbox record owned by `owner`.
pub fn sandbox(id: &str, owner: &str, created: i64) -> SandboxRecord {
    SandboxRecord {
        id: id.to_owned(),
        owner: owner.to_owned(),
        workspace_id: Some("ws_1".to_owned()),
        state: "running".to_owned(),
        runtime: "process".to_owned(),
        image: Some("ubuntu:24.04".to_owned()),
        limits: serde_json::json!({"memory_mb": 512, "cpus": 1.5, "pids": 256}),
        metadata: serde_json::json!({"purpose": "test", "nested": {"a": [1, 2, 3]}}),
        created_at: at(created),
        expires_at: at(created + 900),
        updated_at: at(created),
    }
}
