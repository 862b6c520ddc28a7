//! Who may do what on a workspace: the one permission check that every workspace, sandbox and
//! snapshot operation goes through.
//!
//! A sandbox and a snapshot belong to a workspace, so access to them *is* access to their
//! workspace: the owner, or a collaborator with a `read`, `write` or `admin` grant. Services ask
//! [`AccessControl`] for the level an operation needs and get the record back, never the other
//! way round, so no service compares owners by hand and none can forget the shares.
//!
//! Someone with no access at all gets "not found" (never reveal that a workspace exists); a
//! collaborator whose level is too low gets "forbidden", since they already know it exists.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudterm_store::{SandboxRecord, SnapshotRecord, SnapshotState, Store, StoreError, WorkspaceRecord};

use crate::error::DomainError;
use crate::principal::Principal;

/// What a principal may do on a workspace, ordered: each level includes those below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Not a member: the workspace, its sandboxes and snapshots do not exist for them.
    None,
    /// Sees the workspace, its files, sandboxes, snapshots and collaborators; watches terminals.
    Read,
    /// Adds exec, file writes, background jobs, sandboxes and snapshots of the workspace.
    Write,
    /// Adds share, revoke, the audit trail, and deleting the workspace and its snapshots.
    Admin,
    /// The owner: admin, and cannot be revoked.
    Owner,
}

impl Access {
    /// The name shown in the API (`none`, `read`, `write`, `admin`, `owner`).
    pub fn as_str(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
            Access::Owner => "owner",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A permission that can be granted to a collaborator (the owner's is not one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// See `Access::Read`.
    Read,
    /// See `Access::Write`.
    Write,
    /// See `Access::Admin`.
    Admin,
}

impl Grant {
    /// Parses `read`, `write` or `admin`; anything else is invalid input.
    pub fn parse(text: &str) -> Result<Grant, DomainError> {
        match text {
            "read" => Ok(Grant::Read),
            "write" => Ok(Grant::Write),
            "admin" => Ok(Grant::Admin),
            other => Err(DomainError::InvalidInput(format!("permission must be read, write or admin, got {other:?}"))),
        }
    }

    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        self.access().as_str()
    }

    /// The access level it gives.
    pub fn access(self) -> Access {
        match self {
            Grant::Read => Access::Read,
            Grant::Write => Access::Write,
            Grant::Admin => Access::Admin,
        }
    }
}

/// How long [`AccessControl::sandbox_member`] trusts a membership it read from the store.
const MEMBER_TTL: Duration = Duration::from_secs(1);

/// Most memberships remembered; the memory starts over when full.
const MEMBER_CAPACITY: usize = 4096;

/// Answers "what may this principal do here" from the store: workspace owners and shares.
#[derive(Clone)]
pub struct AccessControl {
    store: Arc<dyn Store>,
    /// `(principal, sandbox)` pairs found to have at least `read`, and when (see
    /// [`sandbox_member`](Self::sandbox_member)). Shared by every clone.
    recent_members: Arc<Mutex<HashMap<(String, String), Instant>>>,
}

impl AccessControl {
    /// A checker over the given store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        AccessControl { store, recent_members: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Whether the caller has at least `read` on the sandbox, for the preview proxy: every
    /// proxied request asks, and two store reads per request (sandbox, workspace) were most of
    /// the proxy's own CPU for small requests. A membership read from the store is trusted for
    /// [`MEMBER_TTL`]; [`forget_recent_members`](Self::forget_recent_members) ends that at once
    /// and runs on every withdrawal on this server before it answers, so a revocation still
    /// cuts access at once here (another server sharing the store sees it within the TTL).
    pub async fn sandbox_member(&self, caller: &Principal, id: &str) -> Result<(), DomainError> {
        let key = (caller.id().to_owned(), id.to_owned());
        let fresh = self
            .recent_members
            .lock()
            .ok()
            .and_then(|recent| recent.get(&key).map(|at| at.elapsed() < MEMBER_TTL))
            .unwrap_or(false);
        if fresh {
            return Ok(());
        }
        self.sandbox(caller, id, Access::Read).await?;
        if let Ok(mut recent) = self.recent_members.lock() {
            if recent.len() >= MEMBER_CAPACITY {
                recent.clear();
            }
            recent.insert(key, Instant::now());
        }
        Ok(())
    }

    /// Forgets every membership [`sandbox_member`](Self::sandbox_member) remembered.
    pub fn forget_recent_members(&self) {
        if let Ok(mut recent) = self.recent_members.lock() {
            recent.clear();
        }
    }

    /// The caller's access to a workspace they know the record of.
    pub async fn of(&self, caller: &Principal, workspace: &WorkspaceRecord) -> Result<Access, DomainError> {
        if workspace.owner == caller.id() {
            return Ok(Access::Owner);
        }
        match self.store.get_share(&workspace.id, caller.id()).await {
            Ok(share) => match Grant::parse(&share.permission) {
                Ok(grant) => Ok(grant.access()),
                Err(_) => {
                    // A row this code did not write; grant nothing rather than guess.
                    tracing::warn!(workspace = %workspace.id, agent = %caller.id(), permission = %share.permission, "unknown permission in a share; ignored");
                    Ok(Access::None)
                }
            },
            Err(StoreError::NotFound) => Ok(Access::None),
            Err(err) => Err(err.into()),
        }
    }

    /// The workspace and the caller's access to it, when they have at least `needed`.
    pub async fn workspace(
        &self,
        caller: &Principal,
        id: &str,
        needed: Access,
    ) -> Result<(WorkspaceRecord, Access), DomainError> {
        let what = || format!("workspace {id}");
        let workspace = match self.store.get_workspace(id).await {
            Ok(workspace) => workspace,
            Err(StoreError::NotFound) => return Err(DomainError::NotFound(what())),
            Err(err) => return Err(err.into()),
        };
        let access = self.of(caller, &workspace).await?;
        check(access, needed, what)?;
        Ok((workspace, access))
    }

    /// The sandbox and the caller's access to it (that is, to its workspace), when they have at
    /// least `needed`. A sandbox without a workspace is its creator's alone.
    pub async fn sandbox(
        &self,
        caller: &Principal,
        id: &str,
        needed: Access,
    ) -> Result<(SandboxRecord, Access), DomainError> {
        let what = || format!("sandbox {id}");
        let record = match self.store.get_sandbox(id).await {
            Ok(record) => record,
            Err(StoreError::NotFound) => return Err(DomainError::NotFound(what())),
            Err(err) => return Err(err.into()),
        };
        let access = self.of_parent(caller, record.workspace_id.as_deref(), &record.owner).await?;
        check(access, needed, what)?;
        Ok((record, access))
    }

    /// A ready snapshot and the caller's access to it (to its workspace), when they have at
    /// least `needed`. Pending snapshots do not exist yet for anyone.
    pub async fn snapshot(
        &self,
        caller: &Principal,
        id: &str,
        needed: Access,
    ) -> Result<(SnapshotRecord, Access), DomainError> {
        let what = || format!("snapshot {id}");
        let record = match self.store.get_snapshot(id).await {
            Ok(record) if record.state == SnapshotState::Ready => record,
            Ok(_) | Err(StoreError::NotFound) => return Err(DomainError::NotFound(what())),
            Err(err) => return Err(err.into()),
        };
        let access = self.of_parent(caller, Some(&record.workspace_id), &record.owner).await?;
        check(access, needed, what)?;
        Ok((record, access))
    }

    /// Ids of the workspaces on which the caller is owner or admin: whose sandboxes' previews
    /// they oversee (`GET /preview/list`), since they may revoke whoever registered them.
    pub async fn administered(&self, caller: &Principal) -> Result<HashSet<String>, DomainError> {
        let mut ids: HashSet<String> =
            self.store.list_workspaces_by_owner(caller.id(), None).await?.into_iter().map(|w| w.id).collect();
        for (workspace, permission) in self.store.list_workspaces_shared_with(caller.id()).await? {
            if Grant::parse(&permission).is_ok_and(|grant| grant.access() >= Access::Admin) {
                ids.insert(workspace.id);
            }
        }
        Ok(ids)
    }

    /// Access through a child's workspace; when that workspace is gone (or the child has none),
    /// only the child's recorded owner keeps it.
    async fn of_parent(&self, caller: &Principal, workspace: Option<&str>, owner: &str) -> Result<Access, DomainError> {
        let fallback = if owner == caller.id() { Access::Owner } else { Access::None };
        let Some(workspace) = workspace else { return Ok(fallback) };
        match self.store.get_workspace(workspace).await {
            Ok(workspace) => self.of(caller, &workspace).await,
            Err(StoreError::NotFound) => Ok(fallback),
            Err(err) => Err(err.into()),
        }
    }
}

/// Not a member: "not found". A member below `needed`: "forbidden", naming both levels.
fn check(access: Access, needed: Access, what: impl Fn() -> String) -> Result<(), DomainError> {
    if access == Access::None {
        return Err(DomainError::NotFound(what()));
    }
    if access < needed {
        return Err(DomainError::Forbidden(format!("{} needs {needed} permission; you have {access}", what())));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
