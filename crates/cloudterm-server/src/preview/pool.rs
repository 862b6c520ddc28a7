//! Idle HTTP/1.1 connections to preview targets, kept for reuse so a keep-alive client does
//! not pay for an agent connection, an upgrade and a TCP connect inside the sandbox on every
//! request.
//!
//! A connection goes back into the pool as soon as its response head arrived; it becomes
//! ready again only when that response's body is done, so `take` hands out only ready ones
//! and drops closed ones. Connections that a target closes (HTTP/1.0 servers, errors) are
//! never reused.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use hyper::client::conn::http1::SendRequest;

/// Most connections kept per target (ready or still answering).
const MAX_PER_TARGET: usize = 64;

/// A target: `(sandbox, port)`.
type Target = (String, u16);

/// Connections per target.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Target, Vec<SendRequest<Body>>>>,
}

impl Pool {
    /// A ready connection to the target, if one is kept.
    pub fn take(&self, sandbox_id: &str, port: u16) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        let key = (sandbox_id.to_owned(), port);
        let senders = idle.get_mut(&key)?;
        senders.retain(|sender| !sender.is_closed());
        let ready = senders.iter().position(SendRequest::is_ready).map(|at| senders.swap_remove(at));
        if senders.is_empty() {
            idle.remove(&key);
        }
        ready
    }

    /// Keeps a connection for reuse (it may still be answering the last request).
    pub fn give(&self, sandbox_id: &str, port: u16, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let senders = idle.entry((sandbox_id.to_owned(), port)).or_default();
            senders.retain(|sender| !sender.is_closed());
            if senders.len() < MAX_PER_TARGET {
                senders.push(sender);
            }
        }
    }
}
