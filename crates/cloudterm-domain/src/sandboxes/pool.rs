//! The warm pool: sandboxes started ahead of demand with the default image, limits and
//! environment, so a create that asks for nothing else is a claim (mount the caller's
//! workspace, one store write) and the boundary's creation stays off the request path.
//!
//! Pooled sandboxes have no store record and no owner; nothing but their agent has run in
//! them. A restart finds them in the runtime without a record and removes them, like any
//! other leftover; a graceful shutdown stops them through [`WarmPool::close`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudterm_runtime::{AgentClient, Limits, Runtime, SandboxSpec};

use crate::ids::new_id;

/// How long a pooled sandbox's agent gets to answer.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// First pause after a failed start; doubles up to [`MAX_BACKOFF`], so a broken host does not
/// spin creating sandboxes.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest a graceful shutdown waits for a pool start in flight.
const CLOSE_WAIT: Duration = Duration::from_secs(20);

/// A started sandbox waiting for an owner.
pub(crate) struct PooledSandbox {
    /// Its id (and hostname), kept when it is claimed.
    pub id: String,
    /// Its agent, already answering.
    pub agent: AgentClient,
    /// The egress limit it was given (the default), so a claim by an owner with the same
    /// limit needs no runtime call.
    pub egress_limit: Option<u64>,
}

/// Started sandboxes waiting to be claimed, refilled in the background.
pub(crate) struct WarmPool {
    runtime: Arc<dyn Runtime>,
    state_dir: PathBuf,
    limits: Limits,
    /// The default egress limit, bytes: set on every pooled sandbox in the background, off
    /// the claim's path.
    egress_limit: Option<u64>,
    size: usize,
    ready: Mutex<VecDeque<PooledSandbox>>,
    /// One filler task at a time: starts go one after the other, never a burst.
    filling: AtomicBool,
    closed: AtomicBool,
}

impl WarmPool {
    /// A pool of `size` sandboxes with `limits`; empty (and never filled) when `size` is 0 or
    /// the runtime cannot hand a workspace to a running sandbox.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        state_dir: PathBuf,
        limits: Limits,
        egress_limit: Option<u64>,
        size: usize,
    ) -> Arc<Self> {
        let size = if runtime.supports_claim() { size } else { 0 };
        Arc::new(WarmPool {
            runtime,
            state_dir,
            limits,
            egress_limit,
            size,
            ready: Mutex::new(VecDeque::new()),
            filling: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    /// Whether a sandbox with these limits (already resolved against the defaults) can come
    /// from the pool.
    pub fn fits(&self, limits: &Limits) -> bool {
        self.size > 0 && *limits == self.limits
    }

    /// How many sandboxes wait right now.
    pub fn ready_count(&self) -> usize {
        self.ready.lock().map(|ready| ready.len()).unwrap_or(0)
    }

    /// The ids of the waiting sandboxes, oldest first.
    pub fn ready_ids(&self) -> Vec<String> {
        self.ready.lock().map(|ready| ready.iter().map(|s| s.id.clone()).collect()).unwrap_or_default()
    }

    /// Takes a waiting sandbox, if there is one, and starts refilling.
    pub fn take(self: &Arc<Self>) -> Option<PooledSandbox> {
        let taken = self.ready.lock().ok().and_then(|mut ready| ready.pop_front());
        self.refill();
        taken
    }

    /// Starts sandboxes in the background until the pool is full (no-op when a filler runs,
    /// the pool is closed, or there is no tokio runtime).
    pub fn refill(self: &Arc<Self>) {
        if self.size == 0 || self.closed.load(Ordering::Acquire) || self.ready_count() >= self.size {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        if self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::clone(self);
        handle.spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            while !pool.closed.load(Ordering::Acquire) && pool.ready_count() < pool.size {
                match pool.start_one().await {
                    Ok(sandbox) => {
                        backoff = FIRST_BACKOFF;
                        pool.put_back(sandbox).await;
                    }
                    Err(message) => {
                        tracing::warn!(error = %message, retry_in_ms = backoff.as_millis() as u64, "warm pool: cannot start a sandbox");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            pool.filling.store(false, Ordering::Release);
            // A claim between the last check and the store above saw a filler running and
            // left the refill to it: look once more.
            pool.refill();
        });
    }

    /// Stops every waiting sandbox and starts no more (graceful shutdown). Waits for a start in
    /// flight to finish (the filler then stops that sandbox itself), because the process may
    /// exit right after this returns and a half-started sandbox would be left on the host.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        while self.filling.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drained: Vec<PooledSandbox> =
            self.ready.lock().map(|mut ready| ready.drain(..).collect()).unwrap_or_default();
        for sandbox in drained {
            self.discard(&sandbox.id).await;
        }
    }

    /// Stops a pooled sandbox that will not be used (a failed claim, a closed pool).
    pub async fn discard(&self, id: &str) {
        if let Err(err) = self.runtime.stop(id).await {
            tracing::warn!(sandbox = %id, error = %err, "warm pool: cannot stop a sandbox");
        }
    }

    async fn put_back(&self, sandbox: PooledSandbox) {
        if self.closed.load(Ordering::Acquire) {
            self.discard(&sandbox.id).await;
            return;
        }
        if let Ok(mut ready) = self.ready.lock() {
            ready.push_back(sandbox);
        }
    }

    async fn start_one(&self) -> Result<PooledSandbox, String> {
        let id = new_id("sbx");
        let spec = SandboxSpec {
            id: id.clone(),
            workspace_dir: None,
            state_dir: self.state_dir.join(&id),
            image: None,
            env: Vec::new(),
            limits: self.limits.clone(),
            mounts: Vec::new(),
            layer_dir: None,
        };
        let started = async {
            let handle = self.runtime.start(&spec).await.map_err(|err| err.to_string())?;
            if self.runtime.has_network() {
                self.runtime.limit_egress(&id, self.egress_limit).await.map_err(|err| err.to_string())?;
            }
            let agent = AgentClient::new(handle.agent);
            agent.wait_ready(AGENT_READY_TIMEOUT).await.map_err(|err| format!("agent did not answer: {err}"))?;
            Ok(agent)
        }
        .await;
        match started {
            Ok(agent) => Ok(PooledSandbox { id, agent, egress_limit: self.egress_limit }),
            Err(message) => {
                self.discard(&id).await;
                Err(message)
            }
        }
    }
}
