//! Shares and the audit trail: upsert, lookups, revoke, append order, survival of deletes.

use cloudterm_store::{NewAuditRecord, ShareRecord, StoreError};

use crate::{at, workspace, TestDb};

fn share(agent: &str, permission: &str, by: &str, t: i64) -> ShareRecord {
    ShareRecord {
        workspace_id: "ws_1".to_owned(),
        agent_id: agent.to_owned(),
        permission: permission.to_owned(),
        granted_by: by.to_owned(),
        granted_at: at(t),
    }
}

fn audit(action: &str, subject: &str, permission: Option<&str>, t: i64) -> NewAuditRecord {
    NewAuditRecord {
        workspace_id: "ws_1".to_owned(),
        actor: "alice".to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        permission: permission.map(str::to_owned),
        at: at(t),
    }
}

backends!(put_share_upserts_and_delete_revokes);
async fn put_share_upserts_and_delete_revokes(db: TestDb) {
    db.store.insert_workspace(&workspace("ws_1", "alice", "team", &[], 0)).await.expect("ws");
    db.store.put_share(&share("agent-b", "read", "alice", 1)).await.expect("share b");
    db.store.put_share(&share("agent-a", "write", "alice", 2)).await.expect("share a");
    assert_eq!(db.store.get_share("ws_1", "agent-b").await.expect("get"), share("agent-b", "read", "alice", 1));

    // A second put replaces permission, grantor and time; it is not a second row.
    db.store.put_share(&share("agent-b", "admin", "agent-a", 3)).await.expect("upgrade");
    assert_eq!(db.store.get_share("ws_1", "agent-b").await.expect("get"), share("agent-b", "admin", "agent-a", 3));
    let list = db.store.list_shares("ws_1").await.expect("list");
    assert_eq!(list, [share("agent-a", "write", "alice", 2), share("agent-b", "admin", "agent-a", 3)]);

    db.store.delete_share("ws_1", "agent-a").await.expect("revoke");
    assert!(matches!(db.store.get_share("ws_1", "agent-a").await, Err(StoreError::NotFound)));
    assert!(matches!(db.store.delete_share("ws_1", "agent-a").await, Err(StoreError::NotFound)));
    assert_eq!(db.store.list_shares("ws_1").await.expect("list").len(), 1);
}

backends!(share_on_missing_workspace_is_not_found);
async fn share_on_missing_workspace_is_not_found(db: TestDb) {
    let got = db.store.put_share(&share("agent-b", "read", "alice", 1)).await;
    assert!(matches!(got, Err(StoreError::NotFound)), "{got:?}");
}

backends!(audit_is_append_ordered_and_outlives_the_workspace);
async fn audit_is_append_ordered_and_outlives_the_workspace(db: TestDb) {
    db.store.insert_workspace(&workspace("ws_1", "alice", "team", &[], 0)).await.expect("ws");
    // Appended out of time order on purpose: the trail keeps append order.
    let first = db.store.append_audit(&audit("share", "agent-b", Some("read"), 5)).await.expect("1");
    let second = db.store.append_audit(&audit("share", "agent-b", Some("admin"), 4)).await.expect("2");
    let third = db.store.append_audit(&audit("revoke", "agent-b", None, 6)).await.expect("3");
    assert!(first.id < second.id && second.id < third.id);
    assert_eq!(third.permission, None);
    assert_eq!(second.at, at(4));

    let trail = db.store.list_audit("ws_1").await.expect("trail");
    assert_eq!(trail, [first.clone(), second, third]);
    assert_eq!(first.action, "share");
    assert!(db.store.list_audit("ws_other").await.expect("other").is_empty());

    db.store.delete_workspace("ws_1").await.expect("delete");
    assert_eq!(db.store.list_audit("ws_1").await.expect("kept").len(), 3);
}

backends!(grant_and_revoke_are_recorded_with_their_change_or_not_at_all);
async fn grant_and_revoke_are_recorded_with_their_change_or_not_at_all(db: TestDb) {
    // No workspace: the grant fails and nothing is recorded.
    let got =
        db.store.grant_share(&share("agent-b", "read", "alice", 1), &audit("share", "agent-b", Some("read"), 1)).await;
    assert!(matches!(got, Err(StoreError::NotFound)), "{got:?}");
    assert!(db.store.list_audit("ws_1").await.expect("trail").is_empty());

    db.store.insert_workspace(&workspace("ws_1", "alice", "team", &[], 0)).await.expect("ws");
    let entry = db
        .store
        .grant_share(&share("agent-b", "write", "alice", 2), &audit("share", "agent-b", Some("write"), 2))
        .await
        .expect("grant");
    assert_eq!(db.store.get_share("ws_1", "agent-b").await.expect("in force").permission, "write");
    assert_eq!(db.store.list_audit("ws_1").await.expect("trail"), std::slice::from_ref(&entry));

    // Revoking a grant that is not there records nothing.
    let got = db.store.revoke_share("ws_1", "agent-x", &audit("revoke", "agent-x", None, 3)).await;
    assert!(matches!(got, Err(StoreError::NotFound)), "{got:?}");
    assert_eq!(db.store.list_audit("ws_1").await.expect("trail").len(), 1);

    // An audit entry that cannot be stored takes its grant down with it (PostgreSQL refuses
    // text holding NUL; SQLite stores it, and then both are in).
    let refused = db
        .store
        .grant_share(&share("agent-c", "read", "alice", 4), &audit("share", "agent-c\0", Some("read"), 4))
        .await;
    let in_force = db.store.get_share("ws_1", "agent-c").await.is_ok();
    let recorded = db.store.list_audit("ws_1").await.expect("trail").len() == 2;
    assert_eq!((in_force, recorded), (refused.is_ok(), refused.is_ok()), "{refused:?}");
    if db.backend == crate::Backend::Postgres {
        assert!(refused.is_err(), "PostgreSQL cannot store NUL");
    }

    let revoked = db.store.revoke_share("ws_1", "agent-b", &audit("revoke", "agent-b", None, 5)).await.expect("revoke");
    assert!(matches!(db.store.get_share("ws_1", "agent-b").await, Err(StoreError::NotFound)));
    assert_eq!(db.store.list_audit("ws_1").await.expect("trail").last(), Some(&revoked));
}
