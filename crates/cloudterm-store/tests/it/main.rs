//! Integration tests of the store against both backends: a real SQLite file in a temp dir, and
//! a fresh database on a real PostgreSQL server (`cloudterm_test_support::PostgresServer`, one
//! server for the whole test binary). One test binary, one module per table group, shared
//! fixtures here.
//!
//! A behavioural test is written once, as `async fn name(db: TestDb)`, and `backends!(name)`
//! runs it on each backend as the tests `name::sqlite` and `name::postgres` (so
//! `cargo test -p cloudterm-store postgres` runs the PostgreSQL half). Without PostgreSQL
//! installed the `postgres` tests skip, or fail under `CI=true`.

/// Runs the test `async fn $name(db: TestDb)` once per backend, as `$name::sqlite` and
/// `$name::postgres`. Tokens after the name are arguments of `#[tokio::test(…)]`.
macro_rules! backends {
    ($name:ident $(, $($arg:tt)+)?) => {
        mod $name {
            #[tokio::test$(($($arg)+))?]
            async fn sqlite() {
                crate::run(crate::Backend::Sqlite, super::$name).await;
            }

            #[tokio::test$(($($arg)+))?]
            async fn postgres() {
                crate::run(crate::Backend::Postgres, super::$name).await;
            }
        }
    };
}

mod corrupt;
mod nul;
mod open;
mod postgres;
mod previews;
mod principals;
mod sandboxes;
mod server;
mod shares;
mod snapshots;
mod workers;
mod workspaces;

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cloudterm_store::{SandboxRecord, Store, WorkspaceRecord};
use cloudterm_test_support::PostgresServer;
use tempfile::TempDir;

/// The database a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh database on the shared PostgreSQL server.
    Postgres,
}

/// An open store on a fresh database, and what keeps that database alive.
pub struct TestDb {
    /// Which backend this is.
    pub backend: Backend,
    /// The url the store was opened with (`sqlite://…` or `postgres://…`).
    pub url: String,
    /// The open store.
    pub store: Arc<dyn Store>,
    /// SQLite: the temp dir holding `meta.db`.
    pub dir: Option<TempDir>,
}

/// Opens a store on a fresh database of `backend`; `None` when PostgreSQL is not installed here
/// and the test should stop (under `CI=true` that fails instead).
pub async fn test_db(backend: Backend) -> Option<TestDb> {
    match backend {
        Backend::Sqlite => Some(file_store().await),
        Backend::Postgres => {
            let url = PostgresServer::shared().await?.create_database().await;
            let store = cloudterm_store::open(&url).await.expect("open the postgres store");
            Some(TestDb { backend, url, store, dir: None })
        }
    }
}

/// Runs a test written once for both backends against `backend`; what `backends!` expands to.
pub async fn run<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(db) = test_db(backend).await {
        test(db).await;
    }
}

/// Opens a store on a new SQLite file in a new temp dir.
pub async fn file_store() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let store = cloudterm_store::open(&url).await.expect("open store");
    TestDb { backend: Backend::Sqlite, url, store, dir: Some(dir) }
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
