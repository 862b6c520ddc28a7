//! Idle HTTP/1.1 connections to preview targets, kept for reuse so a keep-alive client does
//! not pay for an agent connection, a socket hand-over and a TCP connect inside the sandbox
//! on every request.
//!
//! A connection comes back (`give`) only once its answer's body was read to the end
//! ([`Lease`], dropped with the body), so everything in the pool is idle or about to be: a
//! request never opens a new connection just because a kept one had not yet noticed that its
//! last answer ended (as when connections came back with the answer's head). Connections that
//! a target closes are never reused. New connections to one target are set up a few at a
//! time (`connect_slot`), so a burst of clients does not overflow the app's listen queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most idle connections kept per target.
const MAX_IDLE_PER_TARGET: usize = 64;

/// Most connections being set up at once per target. An app's listen queue can be short
/// (Python's `http.server` keeps 5): sixteen clients arriving together used to open sixteen
/// connections at once, the app's kernel dropped the handshakes it had no room for, and each
/// of those requests waited out a one-second SYN retransmit. A request beyond this waits for a
/// set-up slot, then takes a connection that came back meanwhile if there is one.
const MAX_CONNECTING_PER_TARGET: usize = 4;

/// A target: `(sandbox, port)`.
type Target = (String, u16);

/// One target's connections.
struct Connections {
    idle: Vec<SendRequest<Body>>,
    connecting: Arc<Semaphore>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections { idle: Vec::new(), connecting: Arc::new(Semaphore::new(MAX_CONNECTING_PER_TARGET)) }
    }
}

/// Idle connections per target, and the slots for setting up new ones.
#[derive(Default)]
pub struct Pool {
    targets: Mutex<HashMap<Target, Connections>>,
}

impl Pool {
    /// The most recently used idle connection to the target, if one is kept (it may still be
    /// finishing its last answer: the caller waits for `SendRequest::ready`).
    pub fn take(&self, sandbox_id: &str, port: u16) -> Option<SendRequest<Body>> {
        let mut targets = self.targets.lock().ok()?;
        let key = (sandbox_id.to_owned(), port);
        let connections = targets.get_mut(&key)?;
        let mut found = None;
        while let Some(sender) = connections.idle.pop() {
            if !sender.is_closed() {
                found = Some(sender);
                break;
            }
        }
        // Forget targets with nothing kept and nobody setting up a connection.
        if connections.idle.is_empty() && Arc::strong_count(&connections.connecting) == 1 {
            targets.remove(&key);
        }
        found
    }

    /// Keeps a connection whose last answer was read to the end.
    pub fn give(&self, sandbox_id: &str, port: u16, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut targets) = self.targets.lock() {
            let connections = targets.entry((sandbox_id.to_owned(), port)).or_default();
            connections.idle.retain(|sender| !sender.is_closed());
            if connections.idle.len() < MAX_IDLE_PER_TARGET {
                connections.idle.push(sender);
            }
        }
    }

    /// Waits for a slot to set up a new connection to the target (held until it is set up).
    pub async fn connect_slot(&self, sandbox_id: &str, port: u16) -> Option<OwnedSemaphorePermit> {
        let slots = {
            let mut targets = self.targets.lock().ok()?;
            targets.entry((sandbox_id.to_owned(), port)).or_default().connecting.clone()
        };
        slots.acquire_owned().await.ok()
    }
}

/// A connection lent to one exchange: it goes back to the pool when the lease is dropped
/// after [`Lease::finished`], and is closed otherwise (an answer abandoned halfway leaves the
/// connection in the middle of a body).
pub struct Lease {
    pool: Arc<Pool>,
    target: Target,
    sender: Option<SendRequest<Body>>,
    finished: bool,
}

impl Lease {
    /// Lends `sender` for an exchange with `sandbox_id:port`.
    pub fn new(pool: Arc<Pool>, sandbox_id: &str, port: u16, sender: SendRequest<Body>) -> Self {
        Lease { pool, target: (sandbox_id.to_owned(), port), sender: Some(sender), finished: false }
    }

    /// The answer was read to its end: the connection may serve another request.
    pub fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (true, Some(sender)) = (self.finished, self.sender.take()) {
            self.pool.give(&self.target.0, self.target.1, sender);
        }
    }
}
