//! `SandboxService`: the sandbox lifecycle (create, list, get, delete, keepalive, idle stop,
//! recovery after a restart) on top of the Store and a Runtime.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudterm_runtime::{AgentClient, Limits, Mount, Runtime, SandboxRuntimeError, SandboxSpec};
use cloudterm_store::{SandboxRecord, Store, StoreError, WorkspaceRecord};
use cloudterm_volumes::{VolumeError, Volumes};

use crate::access::{Access, AccessControl};
use crate::error::DomainError;
use crate::ids::new_id;
use crate::principal::{storage_name, Principal};
use crate::quotas::{QuotaLimits, QuotaStatus};
use crate::sandboxes::live::{ActivityGuard, LiveSandbox};
use crate::sandboxes::model::{state, CreateSandbox, Sandbox, SandboxSettings};
use crate::sandboxes::pool::{PooledSandbox, WarmPool};
use crate::sandboxes::validate;

/// Name prefix of the directories snapshots' writable layers are unpacked into.
const LAYER_SCRATCH_PREFIX: &str = ".layer-";

/// How long a new sandbox's agent gets to answer.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Sandboxes: records in the store, boundaries in the runtime, agents reached through clients.
pub struct SandboxService {
    store: Arc<dyn Store>,
    access: AccessControl,
    runtime: Arc<dyn Runtime>,
    settings: SandboxSettings,
    live: RwLock<HashMap<String, Arc<LiveSandbox>>>,
    /// Sandboxes being created, per owner: counted against the quota before they run.
    starting: Mutex<HashMap<String, u64>>,
    pool: Arc<WarmPool>,
    /// Sandboxes handed to a caller since start-up, however they were asked for (create,
    /// workspace exec, a start from a snapshot): what `sandbox_created_total` counts.
    created: AtomicU64,
}

impl SandboxService {
    /// A service over `store` and `runtime`.
    pub fn new(store: Arc<dyn Store>, runtime: Arc<dyn Runtime>, settings: SandboxSettings) -> Self {
        let pool_limits = validate::effective_limits(&Limits::default(), &settings).unwrap_or_default();
        let pool = WarmPool::new(
            Arc::clone(&runtime),
            settings.state_dir.clone(),
            pool_limits,
            settings.quotas.defaults.egress_bytes(),
            settings.warm_pool,
        );
        SandboxService {
            pool,
            access: AccessControl::new(Arc::clone(&store)),
            store,
            runtime,
            settings,
            live: RwLock::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
            created: AtomicU64::new(0),
        }
    }

    /// How many sandboxes were handed to callers since start-up.
    pub fn created_total(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// The permission check every operation here goes through (shared with the services that
    /// build on sandboxes).
    pub fn access(&self) -> &AccessControl {
        &self.access
    }

    /// The runtime in use.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// Starts filling the warm pool in the background (after [`recover`](Self::recover), so
    /// recovery does not mistake pooled sandboxes for leftovers).
    pub fn fill_pool(&self) {
        self.pool.refill();
    }

    /// Ids of the sandboxes waiting in the warm pool right now, next to be claimed first.
    pub fn pool_ready(&self) -> Vec<String> {
        self.pool.ready_ids()
    }

    /// Stops the warm pool's sandboxes (graceful shutdown); claimed sandboxes keep running.
    pub async fn close_pool(&self) {
        self.pool.close().await;
    }

    /// Ids of every running sandbox (what `sandbox_active` counts and the usage gauges cover).
    pub fn running_ids(&self) -> Vec<String> {
        self.live.read().map(|live| live.keys().cloned().collect()).unwrap_or_default()
    }

    /// Ids of the running sandboxes `owner` started.
    pub fn running_ids_of(&self, owner: &str) -> Vec<String> {
        let live = self.live.read();
        live.map(|live| live.values().filter(|s| s.owner == owner).map(|s| s.id.clone()).collect()).unwrap_or_default()
    }

    /// Running (or starting) sandboxes of `owner`: what the quota counts.
    pub fn running_count(&self, owner: &str) -> u64 {
        let live = self.live.read().map(|live| live.values().filter(|s| s.owner == owner).count()).unwrap_or(0);
        let starting = self.starting.lock().map(|s| s.get(owner).copied().unwrap_or(0)).unwrap_or(0);
        live as u64 + starting
    }

    /// The quota limits that apply to `principal`.
    pub fn limits_for(&self, principal: &str) -> QuotaLimits {
        self.settings.quotas.limits_for(principal)
    }

    /// Running sandboxes of `owner` against their limit, for `X-Quota-Warning` and `/me`.
    pub fn sandbox_quota(&self, owner: &str) -> QuotaStatus {
        QuotaStatus { kind: "sandboxes", used: self.running_count(owner), limit: self.limits_for(owner).max_sandboxes }
    }

    /// Creates and starts a sandbox for `caller`.
    pub async fn create(&self, caller: &Principal, request: CreateSandbox) -> Result<Sandbox, DomainError> {
        self.create_with_layer(caller, request, None).await
    }

    /// Creates and starts a sandbox that starts from a writable layer unpacked into
    /// `layer_dir` (see [`SandboxSpec::layer_dir`]; never from the warm pool). The directory
    /// is gone afterwards, whether the start worked or not.
    pub(crate) async fn create_with_layer(
        &self,
        caller: &Principal,
        request: CreateSandbox,
        layer_dir: Option<PathBuf>,
    ) -> Result<Sandbox, DomainError> {
        let created = self.create_inner(caller, request, layer_dir.clone()).await;
        if let Some(dir) = layer_dir.filter(|dir| dir.exists()) {
            // Left over when the start failed before the runtime moved it into place.
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        created
    }

    async fn create_inner(
        &self,
        caller: &Principal,
        request: CreateSandbox,
        layer_dir: Option<PathBuf>,
    ) -> Result<Sandbox, DomainError> {
        let limits = validate::effective_limits(&request.limits, &self.settings)?;
        let timeout_seconds = validate::timeout_seconds(request.timeout_seconds, &self.settings)?;
        validate::environment(&request.env)?;
        validate::metadata(&request.metadata)?;
        let image = self.resolve_image(request.image.as_deref())?;
        let workspace = self.resolve_workspace(caller, request.workspace_id.as_deref(), Access::Write).await?;
        let _reservation = self.reserve(caller.id())?;

        let poolable = image.is_none() && request.env.is_empty() && layer_dir.is_none() && self.pool.fits(&limits);
        let pooled = poolable.then(|| self.pool.take()).flatten();
        if let Some(pooled) = pooled {
            let claim = Claim { caller, workspace: &workspace, limits: &limits, timeout_seconds, request: &request };
            match self.claim(pooled, claim).await {
                Ok(sandbox) => return Ok(sandbox),
                Err(err) => tracing::warn!(error = %err, "warm pool claim failed; starting a sandbox instead"),
            }
        }

        let id = new_id("sbx");
        let now = crate::clock::now();
        let expires_at = now + chrono::Duration::seconds(timeout_seconds as i64);
        let record = SandboxRecord {
            id: id.clone(),
            owner: caller.id().to_string(),
            workspace_id: Some(workspace.id.clone()),
            state: state::STARTING.to_string(),
            runtime: self.runtime.kind().as_str().to_string(),
            image: request.image.clone(),
            limits: limits_json(&limits, timeout_seconds),
            metadata: serde_json::to_value(&request.metadata).unwrap_or_default(),
            created_at: now,
            expires_at,
            updated_at: now,
        };
        self.store.insert_sandbox(&record).await?;

        let spec = SandboxSpec {
            id: id.clone(),
            // Set once the workspace's storage is ready, below.
            workspace_dir: None,
            state_dir: self.settings.state_dir.join(&id),
            image,
            env: request.env.into_iter().collect(),
            limits: limits.clone(),
            mounts: Vec::new(),
            layer_dir,
        };
        let started = async {
            let files = self.prepare_workspace(&workspace).await?;
            let spec = SandboxSpec { workspace_dir: Some(files), ..spec };
            let handle = self.runtime.start(&spec).await.map_err(runtime_error)?;
            // Before the caller can run anything: a sandbox without its limit would be a way
            // around the quota.
            self.apply_egress_limit(&id, caller.id()).await.map_err(runtime_error)?;
            let agent = AgentClient::new(handle.agent);
            agent
                .wait_ready(AGENT_READY_TIMEOUT)
                .await
                .map_err(|err| DomainError::Unavailable(format!("sandbox agent did not answer: {err}")))?;
            Ok::<_, DomainError>(agent)
        }
        .await;
        let agent = match started {
            Ok(agent) => agent,
            Err(err) => {
                tracing::warn!(sandbox = %id, error = %err, "sandbox failed to start");
                let _ = self.runtime.stop(&id).await;
                let _ = self.store.update_sandbox_state(&id, state::FAILED, Utc::now()).await;
                return Err(err);
            }
        };
        let live = LiveSandbox::new(
            id.clone(),
            caller.id().to_string(),
            agent,
            Duration::from_secs(timeout_seconds),
            expires_at,
        );
        // The stored deadline (creation + TTL) is within the start-up time of the live one;
        // only keepalive rewrites it, which saves a synchronous write on every create.
        live.touch();
        self.store.update_sandbox_state(&id, state::RUNNING, Utc::now()).await?;
        if let Ok(mut registry) = self.live.write() {
            registry.insert(id.clone(), live);
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        tracing::info!(sandbox = %id, owner = %caller.id(), runtime = %self.runtime.kind(), "sandbox started");
        self.get(caller, &id).await
    }

    /// Hands a pooled sandbox to the caller: their workspace at `/workspace`, a record, the
    /// registry. On failure the pooled sandbox is stopped and nothing is recorded.
    async fn claim(&self, pooled: PooledSandbox, claim: Claim<'_>) -> Result<Sandbox, DomainError> {
        let id = pooled.id.clone();
        let claimed = async {
            let workspace_dir = self.prepare_workspace(claim.workspace).await?;
            self.runtime.claim_workspace(&id, &workspace_dir).await.map_err(runtime_error)?;
            // The pool gave it the default limit; only an owner with an override needs another.
            if self.limits_for(claim.caller.id()).egress_bytes() != pooled.egress_limit {
                self.apply_egress_limit(&id, claim.caller.id()).await.map_err(runtime_error)?;
            }
            let now = crate::clock::now();
            let expires_at = now + chrono::Duration::seconds(claim.timeout_seconds as i64);
            let record = SandboxRecord {
                id: id.clone(),
                owner: claim.caller.id().to_string(),
                workspace_id: Some(claim.workspace.id.clone()),
                state: state::RUNNING.to_string(),
                runtime: self.runtime.kind().as_str().to_string(),
                image: None,
                limits: limits_json(claim.limits, claim.timeout_seconds),
                metadata: serde_json::to_value(&claim.request.metadata).unwrap_or_default(),
                created_at: now,
                expires_at,
                updated_at: now,
            };
            self.store.insert_sandbox(&record).await?;
            Ok::<_, DomainError>(record)
        }
        .await;
        let record = match claimed {
            Ok(record) => record,
            Err(err) => {
                self.pool.discard(&id).await;
                return Err(err);
            }
        };
        let live = LiveSandbox::new(
            id.clone(),
            claim.caller.id().to_string(),
            pooled.agent,
            Duration::from_secs(claim.timeout_seconds),
            record.expires_at,
        );
        live.touch();
        if let Ok(mut registry) = self.live.write() {
            registry.insert(id.clone(), live);
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        tracing::info!(sandbox = %id, owner = %claim.caller.id(), runtime = %self.runtime.kind(), "sandbox claimed from the warm pool");
        Ok(self.view(record))
    }

    /// The caller's sandboxes, oldest first.
    pub async fn list(&self, caller: &Principal) -> Result<Vec<Sandbox>, DomainError> {
        let records = self.store.list_sandboxes_by_owner(caller.id()).await?;
        Ok(records.into_iter().map(|record| self.view(record)).collect())
    }

    /// The running (or paused) sandboxes others started on workspaces the caller owns or that
    /// are shared with the caller, each with the caller's access (`Owner` on their own
    /// workspaces, else the grant's); oldest first. The owner sees collaborators' sandboxes so
    /// that what runs on their workspace is never hidden from them.
    pub async fn list_shared(&self, caller: &Principal) -> Result<Vec<(Sandbox, Access)>, DomainError> {
        let mut shared: HashMap<String, Access> = self
            .store
            .list_workspaces_by_owner(caller.id(), None)
            .await?
            .into_iter()
            .map(|workspace| (workspace.id, Access::Owner))
            .collect();
        for (workspace, permission) in self.store.list_workspaces_shared_with(caller.id()).await? {
            if let Ok(grant) = crate::access::Grant::parse(&permission) {
                shared.insert(workspace.id, grant.access());
            }
        }
        if shared.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.store.list_sandboxes_in_states(&[state::STARTING, state::RUNNING, state::PAUSED]).await?;
        Ok(records
            .into_iter()
            .filter(|record| record.owner != caller.id())
            .filter_map(|record| {
                let access = *shared.get(record.workspace_id.as_deref()?)?;
                Some((self.view(record), access))
            })
            .collect())
    }

    /// A sandbox the caller may read (one on a workspace they own or were granted); anyone
    /// else's is "not found".
    pub async fn get(&self, caller: &Principal, id: &str) -> Result<Sandbox, DomainError> {
        let (record, _) = self.access.sandbox(caller, id, Access::Read).await?;
        Ok(self.view(record))
    }

    /// Checks that the caller has at least `needed` on the sandbox's workspace (`NotFound` for
    /// a non-member, `Forbidden` below the level): for services that act on a sandbox without
    /// going through its agent (previews).
    pub async fn check_access(&self, caller: &Principal, id: &str, needed: Access) -> Result<(), DomainError> {
        self.access.sandbox(caller, id, needed).await.map(|_| ())
    }

    /// Whether the caller has at least `read` on the sandbox, answered from memory for up to a
    /// second (see [`AccessControl::sandbox_member`]): for the preview proxy's every request.
    pub async fn check_member(&self, caller: &Principal, id: &str) -> Result<(), DomainError> {
        self.access.sandbox_member(caller, id).await
    }

    /// Stops the sandbox, removes everything it held on the host and forgets it. The
    /// workspace stays.
    pub async fn delete(&self, caller: &Principal, id: &str) -> Result<(), DomainError> {
        self.access.sandbox(caller, id, Access::Write).await?;
        self.forget_live(id);
        self.runtime.stop(id).await.map_err(runtime_error)?;
        match self.store.delete_sandbox(id).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Sets a new idle TTL starting now.
    pub async fn keepalive(
        &self,
        caller: &Principal,
        id: &str,
        timeout_seconds: Option<u64>,
    ) -> Result<DateTime<Utc>, DomainError> {
        let live = self.running(caller, id, Access::Write).await?;
        let seconds = match timeout_seconds {
            Some(seconds) => validate::timeout_seconds(Some(seconds), &self.settings)?,
            None => {
                let record = self.store.get_sandbox(id).await?;
                record
                    .limits
                    .get("timeout_seconds")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(self.settings.default_timeout_seconds)
            }
        };
        let expires_at = live.set_timeout(Duration::from_secs(seconds));
        self.store.update_sandbox_expiry(id, expires_at, Utc::now()).await?;
        Ok(expires_at)
    }

    /// Exposes an allowed host directory inside a running sandbox.
    pub async fn mount(
        &self,
        caller: &Principal,
        id: &str,
        host_path: &str,
        target: &str,
        read_only: bool,
    ) -> Result<Mount, DomainError> {
        let live = self.running(caller, id, Access::Write).await?;
        let target = validate::mount_target(target)?;
        let host_path = validate::allowed_host_path(host_path, &self.settings.mount_allow)?.ok_or_else(|| {
            DomainError::Forbidden("host_path is not under an allowed directory (CLOUDTERM_MOUNT_ALLOW)".into())
        })?;
        let _busy = live.activity();
        let mount = Mount { host_path, target, read_only };
        self.runtime.mount(id, &mount).await.map_err(runtime_error)?;
        Ok(mount)
    }

    /// A running sandbox on which the caller has at least `needed`, marked busy for as long as
    /// the guard lives. Every operation that reaches the agent goes through here, so the
    /// permission check cannot be skipped.
    pub async fn use_running(
        &self,
        caller: &Principal,
        id: &str,
        needed: Access,
    ) -> Result<ActivityGuard, DomainError> {
        Ok(self.running(caller, id, needed).await?.activity())
    }

    /// The caller's access to a sandbox (through its workspace); "not found" when none.
    pub async fn access_to(&self, caller: &Principal, id: &str) -> Result<Access, DomainError> {
        Ok(self.access.sandbox(caller, id, Access::Read).await?.1)
    }

    async fn running(&self, caller: &Principal, id: &str, needed: Access) -> Result<Arc<LiveSandbox>, DomainError> {
        // The check reads the store even for a live sandbox: a grant may have been revoked.
        let (record, _) = self.access.sandbox(caller, id, needed).await?;
        match self.live_sandbox(id) {
            Some(live) => {
                self.wake(&live).await?;
                Ok(live)
            }
            None => Err(DomainError::Conflict(format!("sandbox {id} is {}, not running", record.state))),
        }
    }

    /// Freezes every process of a running sandbox (`POST /sandboxes/{id}/pause`): it keeps its
    /// memory, files and terminals, uses no CPU, and its idle clock keeps running. Any later
    /// operation that reaches it resumes it first. Pausing a paused sandbox changes nothing.
    pub async fn pause(&self, caller: &Principal, id: &str) -> Result<Sandbox, DomainError> {
        let (record, _) = self.access.sandbox(caller, id, Access::Write).await?;
        let live = self
            .live_sandbox(id)
            .ok_or_else(|| DomainError::Conflict(format!("sandbox {id} is {}, not running", record.state)))?;
        let runtime = &self.runtime;
        if live.transition(true, || runtime.pause(id)).await.map_err(runtime_error)? {
            tracing::info!(sandbox = %id, "paused");
            self.store.update_sandbox_state(id, state::PAUSED, Utc::now()).await?;
        }
        self.get(caller, id).await
    }

    /// Thaws a paused sandbox (`POST /sandboxes/{id}/resume`); resuming a running one changes
    /// nothing.
    pub async fn resume(&self, caller: &Principal, id: &str) -> Result<Sandbox, DomainError> {
        self.running(caller, id, Access::Write).await?;
        self.get(caller, id).await
    }

    /// Resumes `live` if it is paused, so the operation about to reach its agent is answered.
    /// For callers that reach a sandbox without [`use_running`](Self::use_running) (previews).
    pub async fn wake(&self, live: &LiveSandbox) -> Result<(), DomainError> {
        let runtime = &self.runtime;
        if live.transition(false, || runtime.resume(&live.id)).await.map_err(runtime_error)? {
            tracing::info!(sandbox = %live.id, "resumed");
            live.restart_clock();
            self.store.update_sandbox_state(&live.id, state::RUNNING, Utc::now()).await?;
        }
        Ok(())
    }

    /// With an idle pause configured: pauses every running sandbox whose idle deadline passed
    /// and holds it paused for the pause's length (recorded, so it holds across a restart);
    /// [`take_idle`](Self::take_idle) stops it when that runs out. A sandbox the runtime cannot
    /// pause stays idle and is stopped as before. Returns the paused ids.
    pub async fn pause_idle(&self) -> Vec<String> {
        let Some(hold) = self.settings.idle_pause else { return Vec::new() };
        let now = Utc::now();
        let idle: Vec<Arc<LiveSandbox>> = match self.live.read() {
            Ok(live) => live.values().filter(|s| !s.is_paused() && s.is_idle(now)).cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut paused = Vec::new();
        for live in idle {
            let runtime = &self.runtime;
            match live.transition(true, || runtime.pause(&live.id)).await {
                Ok(true) => {
                    let until = live.hold_until(Utc::now() + chrono::Duration::from_std(hold).unwrap_or_default());
                    tracing::info!(sandbox = %live.id, %until, "idle timeout: paused");
                    let now = Utc::now();
                    if let Err(err) = self.store.update_sandbox_state(&live.id, state::PAUSED, now).await {
                        tracing::warn!(sandbox = %live.id, error = %err, "cannot record the idle pause");
                    }
                    if let Err(err) = self.store.update_sandbox_expiry(&live.id, until, now).await {
                        tracing::warn!(sandbox = %live.id, error = %err, "cannot record the idle pause's end");
                    }
                    paused.push(live.id.clone());
                }
                Ok(false) => {}
                Err(SandboxRuntimeError::NotSupported { .. }) => {}
                Err(err) => {
                    tracing::warn!(sandbox = %live.id, error = %err, "cannot pause an idle sandbox; stopping it")
                }
            }
        }
        paused
    }

    /// Stops every running sandbox whose idle deadline passed. Returns the stopped ids.
    pub async fn reap_idle(&self) -> Vec<String> {
        let taken = self.take_idle();
        for id in &taken {
            self.stop_idle(id).await;
        }
        taken
    }

    /// Takes every running sandbox whose idle deadline passed out of service (no new
    /// operation reaches it) without stopping it yet, so its files and writable layer can be
    /// snapshotted first; [`stop_idle`](Self::stop_idle) then stops each. Returns their ids.
    pub fn take_idle(&self) -> Vec<String> {
        let now = Utc::now();
        let idle: Vec<Arc<LiveSandbox>> = match self.live.read() {
            Ok(live) => live.values().filter(|s| s.is_idle(now)).cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut stopped = Vec::new();
        for sandbox in idle {
            // Re-check under the registry lock: an operation may have started meanwhile.
            let still_idle = self.live.write().ok().map(|mut live| {
                if sandbox.is_idle(Utc::now()) {
                    live.remove(&sandbox.id);
                    true
                } else {
                    false
                }
            });
            if still_idle == Some(true) {
                stopped.push(sandbox.id.clone());
            }
        }
        stopped
    }

    /// Stops a sandbox [`take_idle`](Self::take_idle) took.
    pub async fn stop_idle(&self, id: &str) {
        self.stop_taken(id, "idle timeout").await;
    }

    /// Takes one running sandbox out of service whether or not it is idle (no new operation
    /// reaches it; those in flight end when it stops), so it can be snapshotted and stopped
    /// like an idle one: for a collaborator's sandbox when their access to its workspace is
    /// revoked. `false` when it was not running.
    pub fn take(&self, id: &str) -> bool {
        self.forget_live(id).is_some()
    }

    /// Stops a sandbox taken out of service ([`take_idle`](Self::take_idle),
    /// [`take`](Self::take)) and records it `stopped`; `why` goes to the log. Failures are
    /// logged: the sandbox is out of service either way.
    pub async fn stop_taken(&self, id: &str, why: &str) {
        tracing::info!(sandbox = %id, reason = why, "stopping sandbox");
        if let Err(err) = self.runtime.stop(id).await {
            tracing::warn!(sandbox = %id, reason = why, error = %err, "stopping a sandbox failed");
        }
        if let Err(err) = self.store.update_sandbox_state(id, state::STOPPED, Utc::now()).await {
            tracing::warn!(sandbox = %id, reason = why, error = %err, "cannot record the stop");
        }
    }

    /// A new, empty directory beside the sandboxes' state directories (same file system, so
    /// the runtime can move a writable layer from it into a new sandbox's state), for a
    /// snapshot's layer to be unpacked into.
    pub(crate) fn layer_scratch_dir(&self) -> Result<PathBuf, DomainError> {
        let root = &self.settings.state_dir;
        std::fs::create_dir_all(root).map_err(|err| DomainError::Internal(format!("cannot create {root:?}: {err}")))?;
        let dir = root.join(format!("{LAYER_SCRATCH_PREFIX}{}", new_id("tmp")));
        std::fs::create_dir(&dir)
            .map_err(|err| DomainError::Internal(format!("cannot create a scratch dir: {err}")))?;
        Ok(dir)
    }

    /// Layer scratch directories a crash left behind (removed at start-up).
    pub(crate) fn leftover_layer_dirs(&self) -> Vec<PathBuf> {
        let entries = std::fs::read_dir(&self.settings.state_dir).into_iter().flatten().flatten();
        entries
            .filter(|e| e.file_name().to_string_lossy().starts_with(LAYER_SCRATCH_PREFIX))
            .map(|e| e.path())
            .collect()
    }

    /// After a restart: re-attach to sandboxes that still run, mark the rest stopped, and
    /// clean up whatever the runtime holds that the store does not know as running.
    pub async fn recover(&self) -> Result<RecoveryReport, DomainError> {
        let mut report = RecoveryReport::default();
        // Volumes first: a sandbox re-attached or started below needs its workspace mounted.
        let volumes = self.settings.volumes.recover(&self.settings.workspaces_dir).await.map_err(volume_error)?;
        for (root, why) in &volumes.failed {
            tracing::error!(root = %root.display(), error = %why, "a workspace volume does not mount; its workspace fails until an operator repairs it");
        }
        report.volumes_mounted = volumes.mounted;
        let records = self.store.list_sandboxes_in_states(&[state::STARTING, state::RUNNING, state::PAUSED]).await?;
        for record in records {
            let was_paused = record.state == state::PAUSED;
            // Thaw every sandbox before asking its agent: a paused one to see that it still
            // answers (it is frozen again below), a running one because a crash in the middle
            // of a snapshot leaves the sandboxes frozen for its walk (the thaw never ran), and
            // a frozen agent would read as dead and its sandbox be stopped for nothing.
            let _ = self.runtime.resume(&record.id).await;
            let attached = match self.runtime.attach(&record.id).await {
                Ok(handle) => {
                    let agent = AgentClient::new(handle.agent);
                    agent.wait_ready(Duration::from_secs(2)).await.ok().map(|_| agent)
                }
                Err(_) => None,
            };
            match attached {
                Some(agent) if record.state != state::STARTING => {
                    // The limit may have changed with the configuration.
                    if let Err(err) = self.apply_egress_limit(&record.id, &record.owner).await {
                        tracing::warn!(sandbox = %record.id, error = %err, "cannot re-apply the egress limit");
                    }
                    let timeout = record
                        .limits
                        .get("timeout_seconds")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(self.settings.default_timeout_seconds);
                    let live = LiveSandbox::new(
                        record.id.clone(),
                        record.owner.clone(),
                        agent,
                        Duration::from_secs(timeout),
                        record.expires_at,
                    );
                    if was_paused {
                        let runtime = &self.runtime;
                        if let Err(err) = live.transition(true, || runtime.pause(&record.id)).await {
                            tracing::warn!(sandbox = %record.id, error = %err, "cannot pause again after a restart; it runs");
                            self.store.update_sandbox_state(&record.id, state::RUNNING, Utc::now()).await?;
                        }
                    }
                    if let Ok(mut registry) = self.live.write() {
                        registry.insert(record.id.clone(), live);
                    }
                    report.reattached.push(record.id);
                }
                _ => {
                    let _ = self.runtime.stop(&record.id).await;
                    self.store.update_sandbox_state(&record.id, state::STOPPED, Utc::now()).await?;
                    report.marked_stopped.push(record.id);
                }
            }
        }
        let held = self.runtime.list().await.map_err(runtime_error)?;
        for id in held {
            if self.live_sandbox(&id).is_none() {
                self.runtime.stop(&id).await.map_err(runtime_error)?;
                report.cleaned_up.push(id);
            }
        }
        Ok(report)
    }

    /// Records sandboxes that end on their own (a VM that died, an agent that exited) as
    /// `failed` as soon as the runtime reports them: out of the live registry (and so out of
    /// the quota), `failed` in the store, so `GET /sandboxes/{id}` says so before anyone tries
    /// to use it. Runs in the background until the service is dropped; does nothing on a
    /// runtime that does not report exits.
    pub fn watch_exits(self: &Arc<Self>) {
        use tokio::sync::broadcast::error::RecvError;
        let Some(mut exits) = self.runtime.exits() else { return };
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let received = exits.recv().await;
                let Some(service) = service.upgrade() else { return };
                match received {
                    Ok(exit) => service.record_exit(&exit.id, &exit.reason).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "missed reports of sandboxes that ended; checking every running one");
                        service.check_running().await;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// A running sandbox ended on its own: forgotten and recorded `failed`. One that is not in
    /// the registry was stopped on purpose (delete, idle stop) or never ran here: left be.
    async fn record_exit(&self, id: &str, reason: &str) {
        if self.forget_live(id).is_none() {
            return;
        }
        tracing::warn!(sandbox = %id, %reason, "the sandbox ended on its own; recorded as failed");
        // Whatever the runtime did not remove itself (a dead agent's socket and state).
        if let Err(err) = self.runtime.stop(id).await {
            tracing::warn!(sandbox = %id, error = %err, "cannot clean up after a sandbox that ended");
        }
        if let Err(err) = self.store.update_sandbox_state(id, state::FAILED, Utc::now()).await {
            tracing::warn!(sandbox = %id, error = %err, "cannot record a sandbox that ended as failed");
        }
    }

    /// Asks the runtime about every running sandbox and records the gone ones `failed`.
    async fn check_running(&self) {
        for id in self.running_ids() {
            if let Err(SandboxRuntimeError::NotRunning(_)) = self.runtime.attach(&id).await {
                self.record_exit(&id, "found gone").await;
            }
        }
    }

    /// The running sandbox `id`, whoever owns it. No access check: only for callers that did
    /// their own (the preview router decides who may reach a preview) or act for the system
    /// (health checks, which must not reset the idle clock, so they use the agent directly).
    pub fn live_sandbox(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.live.read().ok().and_then(|live| live.get(id).cloned())
    }

    fn forget_live(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.live.write().ok().and_then(|mut live| live.remove(id))
    }

    /// Workspace `id` if the caller has at least `needed` on it, or their home workspace when
    /// `None`; a workspace they are not a member of is "not found".
    pub async fn resolve_workspace(
        &self,
        caller: &Principal,
        id: Option<&str>,
        needed: Access,
    ) -> Result<WorkspaceRecord, DomainError> {
        match id {
            Some(id) => Ok(self.access.workspace(caller, id, needed).await?.0),
            None => {
                let principal = self.store.get_principal(caller.id()).await.map_err(|err| match err {
                    StoreError::NotFound => DomainError::Internal("principal has no record".into()),
                    other => other.into(),
                })?;
                Ok(self.store.get_workspace(&principal.home_workspace_id).await?)
            }
        }
    }

    /// The workspace of a sandbox on which the caller has at least `needed`.
    pub async fn workspace_of(
        &self,
        caller: &Principal,
        sandbox_id: &str,
        needed: Access,
    ) -> Result<WorkspaceRecord, DomainError> {
        let (record, _) = self.access.sandbox(caller, sandbox_id, needed).await?;
        let id = record
            .workspace_id
            .ok_or_else(|| DomainError::Conflict(format!("sandbox {sandbox_id} has no workspace")))?;
        Ok(self.store.get_workspace(&id).await?)
    }

    /// Ids of the running sandboxes that have `workspace_id` mounted, whoever started them
    /// (collaborators start sandboxes on shared workspaces), oldest first.
    pub async fn running_on_workspace(&self, workspace_id: &str) -> Result<Vec<String>, DomainError> {
        let records = self.store.list_sandboxes_in_states(&[state::RUNNING, state::PAUSED]).await?;
        Ok(records
            .into_iter()
            .filter(|r| r.workspace_id.as_deref() == Some(workspace_id) && self.live_sandbox(&r.id).is_some())
            .map(|r| r.id)
            .collect())
    }

    /// Ids of the running sandboxes that `owner` started on `workspace_id`, oldest first.
    pub async fn running_on_workspace_of(&self, workspace_id: &str, owner: &str) -> Result<Vec<String>, DomainError> {
        let records = self.store.list_sandboxes_in_states(&[state::RUNNING, state::PAUSED]).await?;
        Ok(records
            .into_iter()
            .filter(|r| {
                r.workspace_id.as_deref() == Some(workspace_id)
                    && r.owner == owner
                    && self.live_sandbox(&r.id).is_some()
            })
            .map(|r| r.id)
            .collect())
    }

    /// `DATA_DIR/workspaces`: every owner's workspace directories are below it.
    pub fn workspaces_root(&self) -> &std::path::Path {
        &self.settings.workspaces_dir
    }

    /// `DATA_DIR/workspaces/<storage name of the owner>/<workspace id>`: the workspace's
    /// directory, or the mount point of its volume.
    pub fn workspace_root(&self, owner: &str, workspace_id: &str) -> PathBuf {
        self.settings.workspaces_dir.join(storage_name(owner)).join(storage_name(workspace_id))
    }

    /// Where the workspace's files are (what sandboxes see at `/workspace`): its root, or the
    /// `files` directory of its volume.
    pub fn workspace_dir(&self, owner: &str, workspace_id: &str) -> PathBuf {
        self.settings.volumes.files_dir(&self.workspace_root(owner, workspace_id))
    }

    /// The workspaces' storage.
    pub fn volumes(&self) -> &Volumes {
        &self.settings.volumes
    }

    /// Makes the workspace's storage ready (its volume created or mounted, with its owner's
    /// storage limit, when limits are enforced) and returns where its files are. Every path
    /// that puts files into a workspace or hands it to a sandbox comes through here.
    pub async fn prepare_workspace(&self, workspace: &WorkspaceRecord) -> Result<PathBuf, DomainError> {
        let root = self.workspace_root(&workspace.owner, &workspace.id);
        let limit = self.limits_for(&workspace.owner).storage_bytes();
        self.settings.volumes.prepare(&root, limit).await.map_err(volume_error)
    }

    /// The workspace's storage use against its owner's limit, for `/me`, the workspace's
    /// `GET` and `X-Quota-Warning`; `None` for an unlimited plain directory (measuring one
    /// walks its whole tree, which no limit asks for).
    pub async fn storage_usage(&self, workspace: &WorkspaceRecord) -> Option<StorageUsage> {
        let root = self.workspace_root(&workspace.owner, &workspace.id);
        let limit = self.limits_for(&workspace.owner).storage_bytes();
        if limit.is_none() && !Volumes::image_path(&root).exists() {
            return None;
        }
        let usage = self.settings.volumes.usage(&root).await;
        let (used_bytes, enforced_limit) = match usage {
            Ok(usage) => (usage.used_bytes, usage.enforced_limit_bytes),
            Err(err) => {
                tracing::warn!(workspace = %workspace.id, error = %err, "cannot measure a workspace's storage");
                (0, None)
            }
        };
        Some(StorageUsage {
            used_bytes,
            // What the file system enforces when it does (a shrink it refused keeps the old).
            limit_bytes: enforced_limit.or(limit),
            enforced: enforced_limit.is_some(),
        })
    }

    /// The storage quota of the workspace a sandbox runs on, for `X-Quota-Warning` after an
    /// exec or a file write; `None` when there is no limit, the sandbox has no workspace, or
    /// limits are only reported (measuring a plain directory walks its whole tree: too dear
    /// for every command; `/me` and `GET /workspaces/{id}` still measure it).
    pub async fn storage_quota_of_sandbox(&self, sandbox_id: &str) -> Option<QuotaStatus> {
        if !self.settings.volumes.enforced() {
            return None;
        }
        let record = self.store.get_sandbox(sandbox_id).await.ok()?;
        let workspace = self.store.get_workspace(record.workspace_id.as_deref()?).await.ok()?;
        self.limits_for(&workspace.owner).storage_mb?;
        self.storage_usage(&workspace).await?.status()
    }

    /// Deletes the workspace's files and its volume.
    pub async fn remove_workspace_storage(&self, workspace: &WorkspaceRecord) -> Result<(), DomainError> {
        let root = self.workspace_root(&workspace.owner, &workspace.id);
        self.settings.volumes.remove(&root).await.map_err(volume_error)
    }

    fn resolve_image(&self, image: Option<&str>) -> Result<Option<PathBuf>, DomainError> {
        let Some(name) = image else { return Ok(None) };
        let Some(dir) = &self.settings.images_dir else {
            return Err(DomainError::InvalidInput(format!(
                "unknown image {name:?}: no images are configured (runtime.images_dir)"
            )));
        };
        let valid = !name.is_empty()
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !name.starts_with('.');
        let path = dir.join(name);
        if !valid || !path.is_dir() {
            return Err(DomainError::InvalidInput(format!("unknown image {name:?}")));
        }
        Ok(Some(path))
    }

    fn reserve(&self, owner: &str) -> Result<Reservation<'_>, DomainError> {
        let mut starting = self.starting.lock().map_err(|_| DomainError::Internal("quota lock poisoned".into()))?;
        let live = self.live.read().map(|live| live.values().filter(|s| s.owner == owner).count()).unwrap_or(0) as u64;
        let pending = starting.get(owner).copied().unwrap_or(0);
        let max = self.limits_for(owner).max_sandboxes;
        if live + pending >= max {
            return Err(DomainError::QuotaExceeded {
                kind: "sandboxes",
                message: format!("{max} running sandboxes is the limit; delete one first"),
                retry_after_seconds: 10,
            });
        }
        *starting.entry(owner.to_string()).or_insert(0) += 1;
        Ok(Reservation { service: self, owner: owner.to_string() })
    }

    fn view(&self, record: SandboxRecord) -> Sandbox {
        let live = self.live_sandbox(&record.id);
        let limits = limits_from_json(&record.limits);
        let timeout_seconds = record
            .limits
            .get("timeout_seconds")
            .and_then(|v| v.as_u64())
            .unwrap_or(self.settings.default_timeout_seconds);
        let metadata: BTreeMap<String, String> = serde_json::from_value(record.metadata.clone()).unwrap_or_default();
        Sandbox {
            id: record.id,
            owner: record.owner,
            state: record.state,
            runtime: record.runtime,
            workspace_id: record.workspace_id.unwrap_or_default(),
            image: record.image,
            limits,
            timeout_seconds,
            metadata,
            created_at: record.created_at,
            expires_at: live.map(|live| live.expires_at()).unwrap_or(record.expires_at),
        }
    }
}

/// A workspace's storage use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageUsage {
    /// Bytes its files take.
    pub used_bytes: u64,
    /// Its limit; `None`: unlimited.
    pub limit_bytes: Option<u64>,
    /// Whether writes past the limit fail (a volume), or the limit is only reported.
    pub enforced: bool,
}

impl StorageUsage {
    /// As a quota status (`storage <used>/<limit>`), when there is a limit.
    pub fn status(&self) -> Option<QuotaStatus> {
        Some(QuotaStatus { kind: "storage", used: self.used_bytes, limit: self.limit_bytes? })
    }
}

/// Maps volume failures: a limit below use is a conflict the caller can resolve, the rest is
/// the host's storage failing.
pub fn volume_error(err: VolumeError) -> DomainError {
    match err {
        VolumeError::BelowUse { .. } => DomainError::Conflict(err.to_string()),
        other => DomainError::Unavailable(format!("workspace storage: {other}")),
    }
}

/// What `recover` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Still running; serving again.
    pub reattached: Vec<String>,
    /// Gone while the server was down; recorded as stopped.
    pub marked_stopped: Vec<String>,
    /// Held by the runtime without a running record; removed.
    pub cleaned_up: Vec<String>,
    /// Workspace volumes that were not mounted (after a reboot) and are again.
    pub volumes_mounted: Vec<PathBuf>,
}

/// What a warm-pool claim needs from the create request.
struct Claim<'a> {
    caller: &'a Principal,
    workspace: &'a WorkspaceRecord,
    limits: &'a Limits,
    timeout_seconds: u64,
    request: &'a CreateSandbox,
}

/// A quota slot held while a sandbox starts.
struct Reservation<'a> {
    service: &'a SandboxService,
    owner: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut starting) = self.service.starting.lock() {
            if let Some(count) = starting.get_mut(&self.owner) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    starting.remove(&self.owner);
                }
            }
        }
    }
}

/// Maps runtime failures: a missing sandbox is a conflict (it is not running), an
/// unsupported operation too, a bad spec is bad input, anything else is unavailable.
pub fn runtime_error(err: SandboxRuntimeError) -> DomainError {
    match err {
        SandboxRuntimeError::NotRunning(id) => DomainError::Conflict(format!("sandbox {id} is not running")),
        SandboxRuntimeError::NotSupported { .. } => DomainError::Conflict(err.to_string()),
        SandboxRuntimeError::InvalidSpec(message) => DomainError::InvalidInput(message),
        SandboxRuntimeError::Failed(message) => DomainError::Unavailable(format!("sandbox runtime failed: {message}")),
    }
}

fn limits_json(limits: &Limits, timeout_seconds: u64) -> serde_json::Value {
    serde_json::json!({
        "memory_mb": limits.memory_mb,
        "cpus": limits.cpus,
        "pids": limits.pids,
        "disk_mb": limits.disk_mb,
        "timeout_seconds": timeout_seconds,
    })
}

fn limits_from_json(value: &serde_json::Value) -> Limits {
    Limits {
        memory_mb: value.get("memory_mb").and_then(|v| v.as_u64()),
        cpus: value.get("cpus").and_then(|v| v.as_f64()),
        pids: value.get("pids").and_then(|v| v.as_u64()),
        disk_mb: value.get("disk_mb").and_then(|v| v.as_u64()),
    }
}
