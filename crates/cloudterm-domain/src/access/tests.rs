//! The permission check against a real (in-memory SQLite) store.

use chrono::Utc;
use cloudterm_store::ShareRecord;

use super::*;

async fn store_with_shares() -> Arc<dyn Store> {
    let store = cloudterm_store::open("sqlite::memory:").await.expect("store");
    let workspace = WorkspaceRecord {
        id: "ws_1".into(),
        owner: "alice".into(),
        name: "project".into(),
        description: String::new(),
        tags: Vec::new(),
        is_home: false,
        created_at: Utc::now(),
    };
    store.insert_workspace(&workspace).await.expect("workspace");
    for (agent, permission) in [("reader", "read"), ("writer", "write"), ("admin", "admin"), ("odd", "superuser")] {
        let share = ShareRecord {
            workspace_id: "ws_1".into(),
            agent_id: agent.into(),
            permission: permission.into(),
            granted_by: "alice".into(),
            granted_at: Utc::now(),
        };
        store.put_share(&share).await.expect("share");
    }
    store
}

#[tokio::test]
async fn levels_come_from_ownership_and_grants() {
    let access = AccessControl::new(store_with_shares().await);
    let cases = [
        ("alice", Access::Owner),
        ("admin", Access::Admin),
        ("writer", Access::Write),
        ("reader", Access::Read),
        ("stranger", Access::None),
        // A permission this code never writes grants nothing.
        ("odd", Access::None),
    ];
    for (who, expected) in cases {
        let got = match access.workspace(&Principal::new(who), "ws_1", Access::Read).await {
            Ok((_, level)) => level,
            Err(DomainError::NotFound(_)) => Access::None,
            Err(err) => panic!("{who}: {err}"),
        };
        assert_eq!(got, expected, "{who}");
    }
}

#[tokio::test]
async fn strangers_get_not_found_and_members_below_the_level_get_forbidden() {
    let access = AccessControl::new(store_with_shares().await);
    let stranger = access.workspace(&Principal::new("stranger"), "ws_1", Access::Read).await;
    assert!(matches!(stranger, Err(DomainError::NotFound(_))), "{stranger:?}");
    let missing = access.workspace(&Principal::new("alice"), "ws_nope", Access::Read).await;
    assert!(matches!(missing, Err(DomainError::NotFound(_))), "{missing:?}");
    let reader = access.workspace(&Principal::new("reader"), "ws_1", Access::Write).await;
    assert!(matches!(reader, Err(DomainError::Forbidden(_))), "{reader:?}");
    let writer = access.workspace(&Principal::new("writer"), "ws_1", Access::Admin).await;
    assert!(matches!(writer, Err(DomainError::Forbidden(_))), "{writer:?}");
    assert!(access.workspace(&Principal::new("admin"), "ws_1", Access::Admin).await.is_ok());
    // Only the owner has the owner's level.
    let admin = access.workspace(&Principal::new("admin"), "ws_1", Access::Owner).await;
    assert!(matches!(admin, Err(DomainError::Forbidden(_))), "{admin:?}");
}

#[test]
fn grants_parse_strictly() {
    assert_eq!(Grant::parse("write").ok(), Some(Grant::Write));
    for bad in ["", "owner", "none", "Admin", "read ", "rw"] {
        assert!(matches!(Grant::parse(bad), Err(DomainError::InvalidInput(_))), "{bad:?}");
    }
    assert!(Access::Owner > Access::Admin && Access::Admin > Access::Write && Access::Write > Access::Read);
}
