//! Rows that cannot be decoded surface as `StoreError::Corrupt`, never as a panic or a
//! silently wrong record.

use cloudterm_store::{PreviewRecord, ShareRecord, StoreError};

use crate::{at, sandbox, workspace, Backend, TestDb};

/// Runs one raw statement against the store's database, behind the store's back.
async fn tamper(db: &TestDb, sql: &str) {
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("raw connect");
            sqlx::query(sql).execute(&pool).await.expect("tamper");
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("raw connect");
            sqlx::query(sql).execute(&pool).await.expect("tamper");
            pool.close().await;
        }
    }
}

backends!(undecodable_rows_are_corrupt);
async fn undecodable_rows_are_corrupt(db: TestDb) {
    db.store.insert_sandbox(&sandbox("sbx_1", "alice", 0)).await.expect("sandbox");
    db.store.insert_workspace(&workspace("ws_1", "alice", "w", &[], 0)).await.expect("ws");
    db.store
        .put_preview(&PreviewRecord {
            sandbox_id: "sbx_1".to_owned(),
            port: 80,
            owner: "alice".to_owned(),
            public: true,
            fallback_sandbox_id: None,
            created_at: at(0),
        })
        .await
        .expect("preview");
    let share = ShareRecord {
        workspace_id: "ws_1".to_owned(),
        agent_id: "bob".to_owned(),
        permission: "read".to_owned(),
        granted_by: "alice".to_owned(),
        granted_at: at(0),
    };
    db.store.put_share(&share).await.expect("share");

    tamper(&db, "UPDATE sandboxes SET limits = 'not json' WHERE id = 'sbx_1'").await;
    tamper(&db, "UPDATE workspaces SET tags = '{\"a\":1}' WHERE id = 'ws_1'").await;
    tamper(&db, "UPDATE previews SET port = 70000 WHERE sandbox_id = 'sbx_1'").await;
    tamper(&db, "UPDATE shares SET granted_at = 9223372036854775807 WHERE agent_id = 'bob'").await;

    for got in [
        db.store.get_sandbox("sbx_1").await.map(|_| ()),
        db.store.list_sandboxes_by_owner("alice").await.map(|_| ()),
        db.store.get_workspace("ws_1").await.map(|_| ()),
        db.store.list_previews_by_owner("alice").await.map(|_| ()),
        db.store.get_share("ws_1", "bob").await.map(|_| ()),
    ] {
        assert!(matches!(got, Err(StoreError::Corrupt(_))), "{got:?}");
    }
}

#[tokio::test]
async fn error_messages_are_lower_case_without_period() {
    let errors = [
        StoreError::NotFound,
        StoreError::Conflict("x".to_owned()),
        StoreError::Unavailable("x".to_owned()),
        StoreError::Unsupported("x".to_owned()),
        StoreError::Corrupt("x".to_owned()),
    ];
    for err in errors {
        let msg = err.to_string();
        assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
        assert!(!msg.ends_with('.'), "{msg}");
    }
}
