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
use crate::sandboxes::{agent_error, ActivityGuard, SandboxService};

/// How many targets one health pass checks at once.
const CHECK_CONCURRENCY: usize = 16;

/// How long `find` answers from memory. Every proxied request looks its preview up; from the
/// store that was a round trip through sqlx's worker thread (SQLite's file locks included) for
/// a record that almost never changes. This server's own register/unregister update the
/// cache at once; another server's (PostgreSQL, scaled out) are seen within this time.
const RECORD_TTL: Duration = Duration::from_secs(1);

/// Most records remembered; the cache starts over when full.
const RECORD_CAPACITY: usize = 4096;

/// Previews: records in the store, health in memory, connections through the agents.
pub struct PreviewService {
    store: Arc<dyn Store>,
    sandboxes: Arc<SandboxService>,
    observer: Arc<dyn PreviewObserver>,
    settings: PreviewSettings,
    /// Keyed by `(sandbox_id, port)` of the registration.
    health: RwLock<HashMap<(String, u16), PreviewHealth>>,
    /// Records `find` read from the store recently, with when (see [`RECORD_TTL`]).
    records: RwLock<HashMap<(String, u16), (PreviewRecord, Instant)>>,
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

    /// Registers (or updates `public` and the fallback of) a preview of one of the caller's
    /// sandboxes. Another principal's sandbox, as primary or fallback, is "not found". The
    /// targets are checked at once, so the answer says whether the port answers.
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
            created_at: Utc::now(),
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

    /// The caller's previews, oldest first.
    pub async fn list(&self, caller: &Principal) -> Result<Vec<Preview>, DomainError> {
        let records = self.store.list_previews_by_owner(caller.id()).await?;
        Ok(records.into_iter().map(|record| self.view(record)).collect())
    }

    /// One of the caller's previews; another principal's is "not found".
    pub async fn get(&self, caller: &Principal, sandbox_id: &str, port: u32) -> Result<Preview, DomainError> {
        let port = validate_port(port)?;
        match self.find(sandbox_id, port).await? {
            Some(preview) if preview.owner == caller.id() => Ok(preview),
            _ => Err(not_found(sandbox_id, port)),
        }
    }

    /// Unregisters one of the caller's previews, which also revokes its signed links.
    pub async fn unregister(&self, caller: &Principal, sandbox_id: &str, port: u32) -> Result<(), DomainError> {
        let preview = self.get(caller, sandbox_id, port).await?;
        match self.store.delete_preview(&preview.sandbox_id, preview.port).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(err) => return Err(err.into()),
        }
        self.forget_record(&preview.sandbox_id, preview.port);
        if let Ok(mut health) = self.health.write() {
            health.remove(&(preview.sandbox_id, preview.port));
        }
        Ok(())
    }

    /// The preview at `sandbox_id:port`, whoever owns it: the router decides who may reach it.
    ///
    /// A record read within [`RECORD_TTL`] is answered from memory while its sandbox is
    /// running; anything else (no such preview, a stopped or deleted sandbox) asks the store,
    /// so a deleted sandbox's previews are gone at once.
    pub async fn find(&self, sandbox_id: &str, port: u16) -> Result<Option<Preview>, DomainError> {
        if let Some(record) = self.cached_record(sandbox_id, port) {
            return Ok(Some(self.view(record)));
        }
        match self.store.get_preview(sandbox_id, port).await {
            Ok(record) => {
                self.remember_record(&record);
                Ok(Some(self.view(record)))
            }
            Err(StoreError::NotFound) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    fn cached_record(&self, sandbox_id: &str, port: u16) -> Option<PreviewRecord> {
        let record = {
            let records = self.records.read().ok()?;
            let (record, read_at) = records.get(&(sandbox_id.to_owned(), port))?;
            (read_at.elapsed() < RECORD_TTL).then(|| record.clone())?
        };
        self.sandboxes.live_sandbox(sandbox_id).map(|_| record)
    }

    fn remember_record(&self, record: &PreviewRecord) {
        if let Ok(mut records) = self.records.write() {
            if records.len() >= RECORD_CAPACITY {
                records.clear();
            }
            records.insert((record.sandbox_id.clone(), record.port), (record.clone(), Instant::now()));
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
