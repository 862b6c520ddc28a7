//! The principal service: who a caller is, and their home workspace, made on first sight.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use cloudterm_store::{Store, WorkspaceRecord};

use crate::error::DomainError;
use crate::ids::new_id;
use crate::principal::Principal;

/// How many principals are remembered in memory before the cache starts over.
const CACHE_CAPACITY: usize = 10_000;

/// A principal as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalView {
    /// The principal id from the token.
    pub principal: String,
    /// Its home workspace.
    pub home_workspace_id: String,
    /// When it was first seen.
    pub created_at: DateTime<Utc>,
}

/// Resolves principals, creating each one (and its home workspace) the first time it is seen.
///
/// Principal records never change once made, so a bounded in-memory cache answers repeat
/// callers without touching the store; it holds no state the store does not also hold.
pub struct PrincipalService {
    store: Arc<dyn Store>,
    cache: RwLock<HashMap<String, PrincipalView>>,
}

impl PrincipalService {
    /// A service over the given metadata store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        PrincipalService { store, cache: RwLock::new(HashMap::new()) }
    }

    /// Returns the caller's principal record, creating it and its home workspace if new.
    pub async fn whoami(&self, principal: &Principal) -> Result<PrincipalView, DomainError> {
        if let Some(view) = self.cached(principal.id()) {
            return Ok(view);
        }
        let now = crate::clock::now();
        let home = WorkspaceRecord {
            id: new_id("ws"),
            owner: principal.id().to_string(),
            name: "home".to_string(),
            description: "home workspace".to_string(),
            tags: Vec::new(),
            is_home: true,
            created_at: now,
        };
        let record = self.store.ensure_principal(principal.id(), home, now).await?;
        let view = PrincipalView {
            principal: record.id,
            home_workspace_id: record.home_workspace_id,
            created_at: record.created_at,
        };
        self.remember(view.clone());
        Ok(view)
    }

    fn cached(&self, id: &str) -> Option<PrincipalView> {
        self.cache.read().ok().and_then(|cache| cache.get(id).cloned())
    }

    fn remember(&self, view: PrincipalView) {
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(view.principal.clone(), view);
        }
    }
}
