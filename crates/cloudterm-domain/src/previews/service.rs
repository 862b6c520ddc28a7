//! `PreviewService`: registering previews, deciding where their requests go, opening the byte
//! stream to a port through the sandbox's agent, and the health checks that promote a
//! fallback when the primary stops answering.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use cloudterm_runtime::PortStream;
use cloudterm_store::{PreviewRecord, Store, StoreError};
use futures_util::StreamExt;

use crate::access::Access;
use crate::error::DomainError;
use crate::previews::model::{
    validate_port, Preview, PreviewHealth, PreviewObserver, PreviewSettings, RegisterPreview,
};
use crate::principal::Principal;
use crate::sandboxes::{agent_error, state, ActivityGuard, SandboxService};

/// Every sandbox state: a preview's record lives as long as its sandbox's, whatever its state.
const ALL_STATES: [&str; 5] = [state::STARTING, state::RUNNING, state::PAUSED, state::STOPPED, state::FAILED];

/// How many targets one health pass checks at once.
const CHECK_CONCURRENCY: usize = 16;

/// How long `find` answers from memory. Every proxied request looks its preview up; from the
/// store that was a round trip through sqlx's worker thread (SQLite's file locks included) for
/// a record that almost never changes. This server's own register/unregister update the
/// cache at once; another server's (PostgreSQL, scaled out) are seen within this time.
const RECORD_TTL: Duration = Duration::from_secs(1);

/// Most records remembered; the cache starts over when full.
const RECORD_CAPACITY: usize = 4096;

/// A live preview record as `find` remembers it: the record (a fallback the registrant lost
/// already removed), whether one was, and when it was read.
type LiveRecord = (PreviewRecord, bool, Instant);

/// Previews: records in the store, health in memory, connections through the agents.
pub struct PreviewService {
    store: Arc<dyn Store>,
    sandboxes: Arc<SandboxService>,
    observer: Arc<dyn PreviewObserver>,
    settings: PreviewSettings,
    /// Keyed by `(sandbox_id, port)` of the registration.
    health: RwLock<HashMap<(String, u16), PreviewHealth>>,
    /// Live records `find` read from the store recently: the record (a fallback the registrant
    /// lost already removed), whether one was, and when (see [`RECORD_TTL`]).
    records: RwLock<HashMap<(String, u16), LiveRecord>>,
}

impl PreviewService {
    /// A service over the store and the running sandboxes.
    pub fn new(
        store: Arc<dyn Store>,
        sandboxes: Arc<SandboxService>,
        observer: Arc<dyn PreviewObserver>,
        settings: PreviewSettings,
    ) -> Self {
        PreviewService {
            store,
            sandboxes,
            observer,
            settings,
            health: RwLock::new(HashMap::new()),
            records: RwLock::new(HashMap::new()),
        }
    }

    /// Registers (or updates `public` and the fallback of) a preview of a sandbox on which the
    /// caller has `write`, as primary and as fallback; a non-member's sandbox is "not found".
    /// The targets are checked at once, so the answer says whether the port answers.
    pub async fn register(&self, caller: &Principal, request: RegisterPreview) -> Result<Preview, DomainError> {
        let port = validate_port(request.port)?;
        // Exposing a port is a write on the sandbox's workspace (a reader may only watch).
        self.sandboxes.check_access(caller, &request.sandbox_id, Access::Write).await?;
        if let Some(fallback) = &request.fallback_sandbox_id {
            if *fallback == request.sandbox_id {
                return Err(DomainError::InvalidInput("fallback_sandbox_id must name another sandbox".into()));
            }
            self.sandboxes.check_access(caller, fallback, Access::Write).await?;
        }
        let record = PreviewRecord {
            sandbox_id: request.sandbox_id,
            port,
            owner: caller.id().to_owned(),
            public: request.public,
            fallback_sandbox_id: request.fallback_sandbox_id,
            created_at: crate::clock::now(),
        };
        let stored = self.store.put_preview(&record).await.map_err(|err| match err {
            StoreError::NotFound => DomainError::NotFound(format!("sandbox {}", record.sandbox_id)),
            other => other.into(),
        })?;
        self.forget_record(&stored.sandbox_id, stored.port);
        let preview = self.view(stored);
        self.check(&preview).await;
        Ok(self.view_of(&preview))
    }

    /// The caller's previews, then those others registered on sandboxes of workspaces the
    /// caller owns or administers (they can revoke the registrant, so they must be able to see
    /// what it exposes), oldest first.
    pub async fn list(&self, caller: &Principal) -> Result<Vec<Preview>, DomainError> {
        let mut records = self.store.list_previews_by_owner(caller.id()).await?;
        let administered = self.sandboxes.access().administered(caller).await?;
        if !administered.is_empty() {
            // Two reads whatever the numbers (not one per preview): every preview and the
            // workspace of every sandbox a preview can name.
            let workspace_of: HashMap<String, String> = self
                .store
                .list_sandboxes_in_states(&ALL_STATES)
                .await?
                .into_iter()
                .filter_map(|sandbox| Some((sandbox.id, sandbox.workspace_id?)))
                .collect();
            let foreign = self.store.list_previews().await?.into_iter().filter(|record| {
                record.owner != caller.id()
                    && workspace_of.get(&record.sandbox_id).is_some_and(|ws| administered.contains(ws))
            });
            records.extend(foreign);
            records.sort_by_key(|record| record.created_at);
        }
        Ok(records.into_iter().map(|record| self.view(record)).collect())
    }

    /// A live preview (see [`find`](Self::find)) that the caller may manage: signing links to
    /// it needs `write` on its sandbox's workspace, as registering does (a writer could make it
    /// public anyway). A non-member gets "not found", a reader "forbidden".
    pub async fn get(&self, caller: &Principal, sandbox_id: &str, port: u32) -> Result<Preview, DomainError> {
        let port = validate_port(port)?;
        self.sandboxes.check_access(caller, sandbox_id, Access::Write).await?;
        self.find(sandbox_id, port).await?.ok_or_else(|| not_found(sandbox_id, port))
    }

    /// Unregisters a preview, which also revokes its signed links. Needs `write` on its
    /// sandbox's workspace, whoever registered it: an owner or admin must be able to take down
    /// what a collaborator exposed (a writer may delete the whole sandbox anyway). Works on a
    /// preview whose registrant lost access too, so it can be cleaned up.
    pub async fn unregister(&self, caller: &Principal, sandbox_id: &str, port: u32) -> Result<(), DomainError> {
        let port = validate_port(port)?;
        self.sandboxes.check_access(caller, sandbox_id, Access::Write).await?;
        match self.store.delete_preview(sandbox_id, port).await {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(not_found(sandbox_id, port)),
            Err(err) => return Err(err.into()),
        }
        self.forget_record(sandbox_id, port);
        self.forget_health(sandbox_id, port);
        Ok(())
    }

    /// Removes every preview `principal` registered on a sandbox of `workspace_id`: called when
    /// their access to it is revoked or lowered below `write`, so those previews and their
    /// signed links end at once (and stay ended if access is granted again). Returns how many.
    pub async fn forget_registrant(&self, workspace_id: &str, principal: &str) -> Result<usize, DomainError> {
        let mut removed = 0;
        for record in self.store.list_previews_by_owner(principal).await? {
            let on_workspace = match self.store.get_sandbox(&record.sandbox_id).await {
                Ok(sandbox) => sandbox.workspace_id.as_deref() == Some(workspace_id),
                Err(StoreError::NotFound) => false,
                Err(err) => return Err(err.into()),
            };
            if !on_workspace {
                continue;
            }
            match self.store.delete_preview(&record.sandbox_id, record.port).await {
                Ok(()) | Err(StoreError::NotFound) => {}
                Err(err) => return Err(err.into()),
            }
            self.forget_record(&record.sandbox_id, record.port);
            self.forget_health(&record.sandbox_id, record.port);
            removed += 1;
        }
        // A preview of another registrant whose *fallback* is on this workspace was remembered
        // with that fallback; forget everything so the next request checks again.
        self.forget_all_records();
        Ok(removed)
    }

    fn forget_health(&self, sandbox_id: &str, port: u16) {
        if let Ok(mut health) = self.health.write() {
            health.remove(&(sandbox_id.to_owned(), port));
        }
    }

    /// The preview at `sandbox_id:port` if it is live, whoever registered it: the router
    /// decides who may reach it. A preview lives only while its registrant may still register
    /// it (`write` on the sandbox's workspace): one whose registrant was revoked or lowered to
    /// `read` is `None`, so neither it nor a link signed for it serves anything, even when its
    /// record outlives the revocation (a race with [`forget_registrant`](Self::forget_registrant)).
    /// A fallback on a sandbox the registrant lost is dropped the same way.
    ///
    /// A live record (registrant checked, fallback settled) found within [`RECORD_TTL`] is
    /// answered from memory while its sandbox is running: every proxied request looks its
    /// preview up, and the store reads behind it were most of the proxy's own CPU per request.
    /// This server's register, unregister and revocations forget records at once; anything
    /// else (no such preview, a stopped or deleted sandbox) asks the store.
    pub async fn find(&self, sandbox_id: &str, port: u16) -> Result<Option<Preview>, DomainError> {
        if let Some((record, fallback_dropped)) = self.cached_record(sandbox_id, port) {
            return Ok(Some(self.live_view(record, fallback_dropped)));
        }
        let mut record = match self.store.get_preview(sandbox_id, port).await {
            Ok(record) => record,
            Err(StoreError::NotFound) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let registrant = Principal::new(record.owner.clone());
        if !self.may_serve(&registrant, sandbox_id).await? {
            return Ok(None);
        }
        let mut fallback_dropped = false;
        if let Some(fallback) = record.fallback_sandbox_id.clone() {
            if !self.may_serve(&registrant, &fallback).await? {
                record.fallback_sandbox_id = None;
                fallback_dropped = true;
            }
        }
        self.remember_record(&record, fallback_dropped);
        Ok(Some(self.live_view(record, fallback_dropped)))
    }

    /// The preview of a live record; a dropped fallback is never reported as promoted.
    fn live_view(&self, record: PreviewRecord, fallback_dropped: bool) -> Preview {
        let mut preview = self.view(record);
        if fallback_dropped {
            preview.health.promoted = false;
        }
        preview
    }

    /// Whether `registrant` may still expose ports of the sandbox (`write`).
    async fn may_serve(&self, registrant: &Principal, sandbox_id: &str) -> Result<bool, DomainError> {
        match self.sandboxes.check_access(registrant, sandbox_id, Access::Write).await {
            Ok(()) => Ok(true),
            Err(DomainError::NotFound(_) | DomainError::Forbidden(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn cached_record(&self, sandbox_id: &str, port: u16) -> Option<(PreviewRecord, bool)> {
        let cached = {
            let records = self.records.read().ok()?;
            let (record, fallback_dropped, read_at) = records.get(&(sandbox_id.to_owned(), port))?;
            (read_at.elapsed() < RECORD_TTL).then(|| (record.clone(), *fallback_dropped))?
        };
        self.sandboxes.live_sandbox(sandbox_id).map(|_| cached)
    }

    fn remember_record(&self, record: &PreviewRecord, fallback_dropped: bool) {
        if let Ok(mut records) = self.records.write() {
            if records.len() >= RECORD_CAPACITY {
                records.clear();
            }
            records
                .insert((record.sandbox_id.clone(), record.port), (record.clone(), fallback_dropped, Instant::now()));
        }
    }

    fn forget_all_records(&self) {
        if let Ok(mut records) = self.records.write() {
            records.clear();
        }
    }

    fn forget_record(&self, sandbox_id: &str, port: u16) {
        if let Ok(mut records) = self.records.write() {
            records.remove(&(sandbox_id.to_owned(), port));
        }
    }

    /// Marks the running sandbox busy for as long as the guard lives (a request through a
    /// preview is use, like an exec: it keeps the idle clock from firing).
    pub fn activity(&self, sandbox_id: &str) -> Result<ActivityGuard, DomainError> {
        self.sandboxes
            .live_sandbox(sandbox_id)
            .map(|live| live.activity())
            .ok_or_else(|| DomainError::Conflict(format!("sandbox {sandbox_id} is not running")))
    }

    /// Opens a byte stream to `127.0.0.1:port` inside the running sandbox, through its agent.
    pub async fn connect(&self, sandbox_id: &str, port: u16) -> Result<PortStream, DomainError> {
        let live = self
            .sandboxes
            .live_sandbox(sandbox_id)
            .ok_or_else(|| DomainError::Conflict(format!("sandbox {sandbox_id} is not running")))?;
        self.sandboxes.wake(&live).await?;
        match tokio::time::timeout(self.settings.connect_timeout, live.agent.connect_port(port)).await {
            Ok(result) => result.map_err(agent_error),
            Err(_) => Err(DomainError::Unavailable(format!(
                "port {port} of sandbox {sandbox_id} did not accept a connection within {:?}",
                self.settings.connect_timeout
            ))),
        }
    }

    /// A request could not reach the primary: promotes the fallback, if there is one and it is
    /// not promoted already. Returns the sandbox to retry on.
    pub fn fail_over(&self, preview: &Preview, why: &str) -> Option<String> {
        let fallback = preview.fallback_sandbox_id.clone()?;
        if preview.health.promoted {
            return None;
        }
        // Concurrent failures promote once: the map, not the caller's copy, decides.
        let mut newly = false;
        self.set_health(preview, |health| {
            health.healthy = Some(false);
            newly = !health.promoted;
            health.promoted = true;
        });
        if newly {
            tracing::warn!(sandbox = %preview.sandbox_id, port = preview.port, %fallback, reason = why, "preview promoted to its fallback: a request could not connect");
            self.observer.promoted(&preview.sandbox_id, preview.port, &fallback);
        }
        Some(fallback)
    }

    /// One health pass over every registered preview: a TCP connect to each target through
    /// its agent (which does not count as use of the sandbox). Promotes the fallback of a
    /// primary that fails while the fallback answers; gives a recovered primary its requests
    /// back.
    pub async fn check_all(&self) {
        let records = match self.store.list_previews().await {
            Ok(records) => records,
            Err(err) => {
                tracing::warn!(error = %err, "preview health check: cannot list previews");
                return;
            }
        };
        let previews: Vec<Preview> = records.into_iter().map(|record| self.view(record)).collect();
        if let Ok(mut health) = self.health.write() {
            health.retain(|key, _| previews.iter().any(|p| (p.sandbox_id.as_str(), p.port) == (key.0.as_str(), key.1)));
        }
        futures_util::stream::iter(previews.iter())
            .for_each_concurrent(CHECK_CONCURRENCY, |preview| self.check(preview))
            .await;
    }

    /// Checks one preview's targets and applies promotion or restoration.
    async fn check(&self, preview: &Preview) {
        let healthy = self.answers(&preview.sandbox_id, preview.port).await;
        let fallback_healthy = match &preview.fallback_sandbox_id {
            Some(fallback) => Some(self.answers(fallback, preview.port).await),
            None => None,
        };
        let mut promoted_now = None;
        let mut restored = false;
        self.set_health(preview, |health| {
            health.healthy = Some(healthy);
            health.fallback_healthy = fallback_healthy;
            health.checked_at = Some(Utc::now());
            if healthy && health.promoted {
                health.promoted = false;
                restored = true;
            } else if !healthy && !health.promoted && fallback_healthy == Some(true) {
                health.promoted = true;
                promoted_now = preview.fallback_sandbox_id.clone();
            }
        });
        if let Some(fallback) = promoted_now {
            tracing::warn!(sandbox = %preview.sandbox_id, port = preview.port, %fallback, "preview promoted to its fallback: the primary failed its health check");
            self.observer.promoted(&preview.sandbox_id, preview.port, &fallback);
        }
        if restored {
            tracing::info!(sandbox = %preview.sandbox_id, port = preview.port, "preview primary answers again; requests go back to it");
            self.observer.restored(&preview.sandbox_id, preview.port);
        }
    }

    /// Whether something accepts connections on the port inside the sandbox. A paused sandbox
    /// counts as answering without being asked (asking would hang on its frozen agent, and
    /// the first request through the preview resumes it).
    async fn answers(&self, sandbox_id: &str, port: u16) -> bool {
        let Some(live) = self.sandboxes.live_sandbox(sandbox_id) else { return false };
        if live.is_paused() {
            return true;
        }
        matches!(tokio::time::timeout(self.settings.connect_timeout, live.agent.connect_port(port)).await, Ok(Ok(_)))
    }

    fn set_health(&self, preview: &Preview, update: impl FnOnce(&mut PreviewHealth)) {
        if let Ok(mut health) = self.health.write() {
            update(health.entry((preview.sandbox_id.clone(), preview.port)).or_default());
        }
    }

    fn view(&self, record: PreviewRecord) -> Preview {
        let health = self
            .health
            .read()
            .ok()
            .and_then(|health| health.get(&(record.sandbox_id.clone(), record.port)).cloned())
            .unwrap_or_default();
        Preview {
            sandbox_id: record.sandbox_id,
            port: record.port,
            owner: record.owner,
            public: record.public,
            fallback_sandbox_id: record.fallback_sandbox_id,
            created_at: record.created_at,
            health,
        }
    }

    fn view_of(&self, preview: &Preview) -> Preview {
        let health = self
            .health
            .read()
            .ok()
            .and_then(|health| health.get(&(preview.sandbox_id.clone(), preview.port)).cloned())
            .unwrap_or_default();
        Preview { health, ..preview.clone() }
    }
}

fn not_found(sandbox_id: &str, port: u16) -> DomainError {
    DomainError::NotFound(format!("preview {sandbox_id}:{port}"))
}
