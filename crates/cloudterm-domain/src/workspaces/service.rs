//! `WorkspaceService`: create, list, get and delete workspaces; grant, revoke and audit access;
//! run commands and marketplace workers in a workspace's sandbox, started on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cloudterm_agent_protocol::ExecRequest;
use cloudterm_store::{AuditRecord, NewAuditRecord, ShareRecord, Store, StoreError, WorkspaceRecord};

use crate::access::{Access, AccessControl, Grant};
use crate::error::DomainError;
use crate::ids::new_id;
use crate::marketplace::{self, MarketplaceService};
use crate::previews::PreviewService;
use crate::principal::Principal;
use crate::sandboxes::{CreateSandbox, SandboxService, StorageUsage};
use crate::snapshots::SnapshotService;
use crate::workspaces::model::{CreateWorkspace, RunWorker, WorkerRun, Workspace};
use crate::workspaces::validate;

/// Where a worker's files are installed, relative to the workspace root (the agent resolves
/// relative paths there on every runtime).
const WORKERS_DIR: &str = ".workers";

/// Withdrawals a terminal connection may fall behind on before it re-checks regardless.
const WITHDRAWN_QUEUE: usize = 64;

/// Workspaces and what is shared of them.
pub struct WorkspaceService {
    store: Arc<dyn Store>,
    sandboxes: Arc<SandboxService>,
    snapshots: Arc<SnapshotService>,
    marketplace: Arc<MarketplaceService>,
    previews: Arc<PreviewService>,
    /// Principals just withdrawn from a workspace (revoked or lowered to `read`), for
    /// connections that outlive a request (terminals) to check their access again at once.
    withdrawn: tokio::sync::broadcast::Sender<String>,
    /// One lock per workspace whose sandbox is being found or started, so two execs arriving
    /// together on an idle workspace start one sandbox, not two.
    starting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl WorkspaceService {
    /// A service over the other services it delegates to.
    pub fn new(
        store: Arc<dyn Store>,
        sandboxes: Arc<SandboxService>,
        snapshots: Arc<SnapshotService>,
        marketplace: Arc<MarketplaceService>,
        previews: Arc<PreviewService>,
    ) -> Self {
        let (withdrawn, _) = tokio::sync::broadcast::channel(WITHDRAWN_QUEUE);
        WorkspaceService {
            store,
            sandboxes,
            snapshots,
            marketplace,
            previews,
            withdrawn,
            starting: Mutex::new(HashMap::new()),
        }
    }

    /// Announces every principal withdrawn from a workspace from now on. A long-lived
    /// connection (a terminal) checks its caller's access again when its caller is named, or
    /// when it lagged behind and may have missed it, since its access was checked only once,
    /// at the upgrade.
    pub fn withdrawals(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.withdrawn.subscribe()
    }

    fn access(&self) -> &AccessControl {
        self.sandboxes.access()
    }

    /// Creates a named workspace owned by the caller. A name the caller already uses (`home`
    /// included) is a conflict.
    pub async fn create(&self, caller: &Principal, request: CreateWorkspace) -> Result<Workspace, DomainError> {
        validate::name(&request.name)?;
        let description = request.description.unwrap_or_default();
        validate::description(&description)?;
        let tags = marketplace::validate::tags(&request.tags)?;
        let record = WorkspaceRecord {
            id: new_id("ws"),
            owner: caller.id().to_string(),
            name: request.name,
            description,
            tags,
            is_home: false,
            created_at: crate::clock::now(),
        };
        self.store.insert_workspace(&record).await.map_err(|err| match err {
            StoreError::Conflict(_) => {
                DomainError::Conflict(format!("you already have a workspace named {:?}", record.name))
            }
            other => other.into(),
        })?;
        Ok(view(record, Access::Owner))
    }

    /// The caller's workspaces, oldest first, then (with `include_shared`) those shared with
    /// them, oldest grant first; with `tag`, only those carrying it.
    pub async fn list(
        &self,
        caller: &Principal,
        tag: Option<&str>,
        include_shared: bool,
    ) -> Result<Vec<Workspace>, DomainError> {
        if let Some(tag) = tag {
            marketplace::validate::tag_filter(tag)?;
        }
        let mut out: Vec<Workspace> = self
            .store
            .list_workspaces_by_owner(caller.id(), tag)
            .await?
            .into_iter()
            .map(|record| view(record, Access::Owner))
            .collect();
        if include_shared {
            for (record, permission) in self.store.list_workspaces_shared_with(caller.id()).await? {
                let Ok(grant) = Grant::parse(&permission) else { continue };
                if tag.is_none_or(|tag| record.tags.iter().any(|t| t == tag)) {
                    out.push(view(record, grant.access()));
                }
            }
        }
        Ok(out)
    }

    /// A workspace the caller may read, with their permission.
    pub async fn get(&self, caller: &Principal, id: &str) -> Result<Workspace, DomainError> {
        let (record, access) = self.access().workspace(caller, id, Access::Read).await?;
        Ok(view(record, access))
    }

    /// The storage a workspace the caller may read uses, against its owner's limit (`None`:
    /// unlimited and not measured).
    pub async fn storage(&self, caller: &Principal, id: &str) -> Result<Option<StorageUsage>, DomainError> {
        let (record, _) = self.access().workspace(caller, id, Access::Read).await?;
        Ok(self.sandboxes.storage_usage(&record).await)
    }

    /// Deletes a workspace (admin): its snapshots, its record and shares, then its files. The
    /// home workspace cannot be deleted, nor one a sandbox still runs on.
    pub async fn delete(&self, caller: &Principal, id: &str) -> Result<(), DomainError> {
        let (record, _) = self.access().workspace(caller, id, Access::Admin).await?;
        if record.is_home {
            return Err(DomainError::Conflict("the home workspace cannot be deleted".into()));
        }
        let running = self.sandboxes.running_on_workspace(id).await?;
        if !running.is_empty() {
            return Err(DomainError::Conflict(format!(
                "sandboxes run on workspace {id} ({}); delete them first",
                running.join(", ")
            )));
        }
        self.snapshots.delete_all_of(id).await?;
        match self.store.delete_workspace(id).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(err) => return Err(err.into()),
        }
        // The record is gone: a failure here leaves files the operator must remove, not a
        // workspace the caller can see.
        if let Err(err) = self.sandboxes.remove_workspace_storage(&record).await {
            tracing::warn!(workspace = %id, error = %err, "cannot remove a deleted workspace's files");
        }
        tracing::info!(workspace = %id, by = %caller.id(), "workspace deleted");
        Ok(())
    }

    /// Grants (or changes) a collaborator's permission (admin), and records it.
    pub async fn share(
        &self,
        caller: &Principal,
        id: &str,
        agent_id: &str,
        permission: &str,
    ) -> Result<ShareRecord, DomainError> {
        let (record, _) = self.access().workspace(caller, id, Access::Admin).await?;
        let grant = Grant::parse(permission)?;
        validate::agent_id(agent_id)?;
        if agent_id == record.owner {
            return Err(DomainError::InvalidInput(format!(
                "{agent_id} owns workspace {id} and is always its admin; nothing to grant"
            )));
        }
        let share = ShareRecord {
            workspace_id: record.id.clone(),
            agent_id: agent_id.to_string(),
            permission: grant.as_str().to_string(),
            granted_by: caller.id().to_string(),
            granted_at: crate::clock::now(),
        };
        let entry = audit_entry(caller, id, "share", agent_id, Some(grant.as_str()));
        self.store.grant_share(&share, &entry).await?;
        if grant.access() < Access::Write {
            // Lowered to `read` (or granted it): nothing they exposed or run may keep going.
            self.withdraw(&record, agent_id).await;
        }
        Ok(share)
    }

    /// Revokes a collaborator (admin), and records it. The owner cannot be revoked.
    pub async fn revoke(&self, caller: &Principal, id: &str, agent_id: &str) -> Result<(), DomainError> {
        let (record, _) = self.access().workspace(caller, id, Access::Admin).await?;
        if agent_id == record.owner {
            return Err(DomainError::Forbidden("the owner of a workspace cannot be revoked".into()));
        }
        let entry = audit_entry(caller, id, "revoke", agent_id, None);
        match self.store.revoke_share(id, agent_id, &entry).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                return Err(DomainError::NotFound(format!("a share of workspace {id} with {agent_id}")))
            }
            Err(err) => return Err(err.into()),
        }
        self.withdraw(&record, agent_id).await;
        Ok(())
    }

    /// Ends what `agent_id` left running on the workspace once they may no longer write to it
    /// (revoked, or lowered to `read`). Their previews of its sandboxes go (and with them every
    /// signed link). The sandboxes they started there are stopped as an idle one is: taken out
    /// of service, an `idle` snapshot with the writable layer, then stopped, so nothing they
    /// started keeps running on the workspace or counts against their quota while they can no
    /// longer see or delete it, and the next workspace exec resumes from that snapshot.
    /// Waits for the stops, so when the revocation answers, they are done.
    ///
    /// Runs after the grant change is committed, so it fails nothing: a retry of the
    /// revocation would find no grant and never get here again. What it cannot do is logged;
    /// access is cut regardless (every request reads the grants, and a preview whose registrant
    /// lost `write` serves nothing).
    async fn withdraw(&self, workspace: &WorkspaceRecord, agent_id: &str) {
        // First, before anything can answer: the proxy's remembered memberships.
        self.access().forget_recent_members();
        // No receiver is not an error: no terminal is open.
        let _ = self.withdrawn.send(agent_id.to_string());
        let removed = self.previews.forget_registrant(&workspace.id, agent_id).await.unwrap_or_else(|err| {
            tracing::warn!(workspace = %workspace.id, agent = %agent_id, error = %err, "cannot remove a withdrawn collaborator's previews");
            0
        });
        let sandboxes = self.sandboxes.running_on_workspace_of(&workspace.id, agent_id).await.unwrap_or_else(|err| {
            tracing::warn!(workspace = %workspace.id, agent = %agent_id, error = %err, "cannot list a withdrawn collaborator's sandboxes");
            Vec::new()
        });
        for sandbox in sandboxes {
            if !self.sandboxes.take(&sandbox) {
                continue;
            }
            self.snapshots.before_idle_stop(&sandbox).await;
            self.sandboxes.stop_taken(&sandbox, "its owner's access to the workspace was withdrawn").await;
        }
        if removed > 0 {
            tracing::info!(workspace = %workspace.id, agent = %agent_id, previews = removed, "previews of a withdrawn collaborator removed");
        }
    }

    /// The workspace's grants, oldest first (read).
    pub async fn collaborators(&self, caller: &Principal, id: &str) -> Result<Vec<ShareRecord>, DomainError> {
        self.access().workspace(caller, id, Access::Read).await?;
        Ok(self.store.list_shares(id).await?)
    }

    /// Who granted and revoked what, when (admin), in order.
    pub async fn audit(&self, caller: &Principal, id: &str) -> Result<Vec<AuditRecord>, DomainError> {
        self.access().workspace(caller, id, Access::Admin).await?;
        Ok(self.store.list_audit(id).await?)
    }

    /// The sandbox that serves a workspace (write): the oldest one running on it, or a new one
    /// started for the caller, from the workspace's newest snapshot when it has one (see
    /// `SnapshotService::resume_workspace`).
    pub async fn sandbox_for(&self, caller: &Principal, id: &str) -> Result<String, DomainError> {
        let (record, _) = self.access().workspace(caller, id, Access::Write).await?;
        let lock = {
            let mut starting =
                self.starting.lock().map_err(|_| DomainError::Internal("workspace lock poisoned".into()))?;
            Arc::clone(starting.entry(id.to_string()).or_default())
        };
        let found = async {
            let _held = lock.lock().await;
            if let Some(running) = self.sandboxes.running_on_workspace(id).await?.into_iter().next() {
                return Ok(running);
            }
            let sandbox = self.snapshots.resume_workspace(caller, &record, CreateSandbox::default()).await?;
            tracing::info!(workspace = %id, sandbox = %sandbox.id, by = %caller.id(), "started a sandbox for a workspace exec");
            Ok::<_, DomainError>(sandbox.id)
        }
        .await;
        if let Ok(mut starting) = self.starting.lock() {
            // Forget the lock once nobody else holds or waits for it.
            if starting.get(id).is_some_and(|l| Arc::strong_count(l) == 2) {
                starting.remove(id);
            }
        }
        drop(lock);
        found
    }

    /// The sandbox a command for the workspace runs in (write), starting one if none runs. The
    /// command is checked first, so a bad one never starts a sandbox; the caller then runs it
    /// through the sandbox's own exec (quota, metrics and all).
    pub async fn exec_target(
        &self,
        caller: &Principal,
        id: &str,
        request: &ExecRequest,
    ) -> Result<String, DomainError> {
        crate::sandboxes::check_command(&request.command, &request.argv)?;
        self.sandbox_for(caller, id).await
    }

    /// Installs a worker's files into `.workers/NAME/` of the workspace (replacing an earlier
    /// install) and runs its command from the workspace root (write), with
    /// `CLOUDTERM_WORKER`, `CLOUDTERM_WORKER_VERSION` and `CLOUDTERM_WORKER_DIR` (relative to
    /// the workspace root) in its environment.
    pub async fn run_worker(
        &self,
        caller: &Principal,
        id: &str,
        worker_id: &str,
        request: RunWorker,
    ) -> Result<WorkerRun, DomainError> {
        // The workspace first: a stranger learns nothing about workers through it.
        self.access().workspace(caller, id, Access::Write).await?;
        let (worker, version) = self.marketplace.version(worker_id, request.version.as_deref()).await?;
        let files = self.marketplace.files(&version).await?;
        let sandbox = self.sandbox_for(caller, id).await?;
        let dir = format!("{WORKERS_DIR}/{}", worker.name);
        let clean = ExecRequest {
            argv: Some(vec!["rm".into(), "-rf".into(), "--".into(), dir.clone()]),
            timeout_ms: Some(60_000),
            ..ExecRequest::default()
        };
        let cleaned = self.sandboxes.exec(caller, &sandbox, clean).await?;
        if cleaned.exit_code != Some(0) {
            return Err(DomainError::Conflict(format!(
                "cannot replace {dir} in the workspace: {}",
                String::from_utf8_lossy(&cleaned.stderr).trim()
            )));
        }
        let installed = files.len() as u64;
        for file in files {
            let path = format!("{dir}/{}", file.path);
            self.sandboxes.write_file(caller, &sandbox, &path, file.mode, Bytes::from(file.data)).await?;
        }
        let mut env = request.env;
        env.insert("CLOUDTERM_WORKER".into(), worker.name.clone());
        env.insert("CLOUDTERM_WORKER_VERSION".into(), version.version.clone());
        env.insert("CLOUDTERM_WORKER_DIR".into(), dir);
        let run = ExecRequest {
            command: Some(version.command.clone()),
            env,
            timeout_ms: request.timeout_ms,
            ..ExecRequest::default()
        };
        let result = self.sandboxes.exec(caller, &sandbox, run).await?;
        Ok(WorkerRun {
            worker_id: worker.id,
            name: worker.name,
            version: version.version,
            sandbox_id: sandbox,
            installed_files: installed,
            result,
        })
    }
}

fn view(record: WorkspaceRecord, permission: Access) -> Workspace {
    Workspace {
        id: record.id,
        name: record.name,
        owner: record.owner,
        description: record.description,
        tags: record.tags,
        is_home: record.is_home,
        created_at: record.created_at,
        permission,
    }
}

/// An audit entry for `action` on `subject` by the caller, now.
fn audit_entry(caller: &Principal, id: &str, action: &str, subject: &str, permission: Option<&str>) -> NewAuditRecord {
    NewAuditRecord {
        workspace_id: id.to_string(),
        actor: caller.id().to_string(),
        action: action.to_string(),
        subject: subject.to_string(),
        permission: permission.map(str::to_string),
        at: crate::clock::now(),
    }
}
