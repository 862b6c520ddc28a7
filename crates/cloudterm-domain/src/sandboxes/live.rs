//! Sandboxes running on this host: their agent clients and idle clocks.
//!
//! The store holds every sandbox's record; this registry holds what only a running sandbox
//! has (a connection to its agent, work in flight). It is rebuilt from the store and the
//! runtime at start-up (`SandboxService::recover`), so it holds no state the two do not.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudterm_runtime::AgentClient;

use crate::quotas::ExecWindow;

/// A running sandbox.
pub struct LiveSandbox {
    /// Its id.
    pub id: String,
    /// Its owner.
    pub owner: String,
    /// The client of its agent.
    pub agent: AgentClient,
    timeout: Mutex<Duration>,
    expires_at: Mutex<DateTime<Utc>>,
    inflight: AtomicUsize,
    /// Its execs over the last hour, for the exec-rate quota.
    pub execs: ExecWindow,
    paused: AtomicBool,
    /// Held across a pause or resume, so two of them never interleave their runtime calls and
    /// the flag always says what the runtime did last.
    transition: tokio::sync::Mutex<()>,
    /// Seen past its egress limit (the violation is counted once).
    egress_exceeded: AtomicBool,
}

impl LiveSandbox {
    /// A sandbox that was just started or re-attached.
    pub fn new(
        id: String,
        owner: String,
        agent: AgentClient,
        timeout: Duration,
        expires_at: DateTime<Utc>,
    ) -> Arc<Self> {
        Arc::new(LiveSandbox {
            id,
            owner,
            agent,
            timeout: Mutex::new(timeout),
            expires_at: Mutex::new(expires_at),
            inflight: AtomicUsize::new(0),
            execs: ExecWindow::default(),
            paused: AtomicBool::new(false),
            transition: tokio::sync::Mutex::new(()),
            egress_exceeded: AtomicBool::new(false),
        })
    }

    /// When it stops if nothing uses it.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at.lock().map(|at| *at).unwrap_or_else(|poisoned| *poisoned.into_inner())
    }

    /// Pushes the idle deadline to `now + timeout` (used on every operation) and returns it.
    pub fn touch(&self) -> DateTime<Utc> {
        let timeout = self.timeout.lock().map(|t| *t).unwrap_or_else(|poisoned| *poisoned.into_inner());
        let deadline = crate::clock::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::zero());
        if let Ok(mut expires_at) = self.expires_at.lock() {
            if deadline > *expires_at {
                *expires_at = deadline;
            }
        }
        deadline
    }

    /// Restarts the idle clock from now with the sandbox's own TTL, even when that is earlier
    /// than the current deadline (after a resume from an idle pause, whose deadline was the end
    /// of the pause).
    pub fn restart_clock(&self) -> DateTime<Utc> {
        let timeout = self.timeout.lock().map(|t| *t).unwrap_or_else(|poisoned| *poisoned.into_inner());
        self.hold_until(crate::clock::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::zero()))
    }

    /// Sets the idle deadline to `deadline`, keeping the TTL (an idle pause's end).
    pub fn hold_until(&self, deadline: DateTime<Utc>) -> DateTime<Utc> {
        if let Ok(mut expires_at) = self.expires_at.lock() {
            *expires_at = deadline;
        }
        deadline
    }

    /// Sets a new idle TTL and deadline (keepalive).
    pub fn set_timeout(&self, timeout: Duration) -> DateTime<Utc> {
        if let Ok(mut current) = self.timeout.lock() {
            *current = timeout;
        }
        let deadline = crate::clock::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::zero());
        if let Ok(mut expires_at) = self.expires_at.lock() {
            *expires_at = deadline;
        }
        deadline
    }

    /// True when the deadline passed and no operation is in flight.
    pub fn is_idle(&self, now: DateTime<Utc>) -> bool {
        self.inflight.load(Ordering::SeqCst) == 0 && now >= self.expires_at()
    }

    /// True while its processes are frozen by a pause (not by a snapshot's short freeze).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Runs a pause or resume (`pause` says which) under the transition lock: `act` is called
    /// only when the sandbox is not already in that state, and the flag is set only when it
    /// succeeds. Returns whether anything changed.
    pub async fn transition<F, Fut, E>(&self, pause: bool, act: F) -> Result<bool, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let _held = self.transition.lock().await;
        if self.is_paused() == pause {
            return Ok(false);
        }
        act().await?;
        self.paused.store(pause, Ordering::SeqCst);
        Ok(true)
    }

    /// Records that the sandbox was seen past its egress limit; true only the first time.
    pub fn mark_egress_exceeded(&self) -> bool {
        !self.egress_exceeded.swap(true, Ordering::SeqCst)
    }

    /// Marks an operation in flight until the guard drops; the idle clock restarts then.
    pub fn activity(self: &Arc<Self>) -> ActivityGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        ActivityGuard { live: self.clone() }
    }
}

/// Holds a sandbox busy; streams keep one for as long as they run.
pub struct ActivityGuard {
    live: Arc<LiveSandbox>,
}

impl ActivityGuard {
    /// The sandbox this guard keeps busy.
    pub fn sandbox(&self) -> &Arc<LiveSandbox> {
        &self.live
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.live.touch();
        self.live.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}
