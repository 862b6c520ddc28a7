//! The registry of sessions: attach to an existing one or open a new one, exactly once per
//! name even when several clients attach at the same moment.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::session::{JoinError, Key, Session};
use crate::viewer::Viewer;
use crate::{check_session_name, check_size, Observer, Opened, TerminalError, TerminalSettings};

/// What a client asks to attach to.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    /// The sandbox (whose access the caller already checked).
    pub sandbox_id: String,
    /// A name to create or re-attach; `None` for a private session that ends with its viewer.
    pub session: Option<String>,
    /// The viewer's terminal width.
    pub cols: u16,
    /// The viewer's terminal height.
    pub rows: u16,
    /// The viewer only watches: its input and resizes are ignored, and it does not resize the
    /// session when it attaches.
    pub read_only: bool,
}

/// Why an attach failed: the hub's own reasons, or the opener's error as it gave it.
#[derive(Debug)]
pub enum AttachError<E> {
    /// Refused by the hub (bad input, limits, shutdown).
    Terminal(TerminalError),
    /// The opener failed.
    Open(E),
}

impl<E> From<TerminalError> for AttachError<E> {
    fn from(err: TerminalError) -> Self {
        AttachError::Terminal(err)
    }
}

enum Entry {
    /// Someone is opening this session's PTY; others wait until `done` closes, then look again.
    Opening {
        id: u64,
        done: watch::Receiver<()>,
    },
    Live(Arc<Session>),
}

pub(crate) struct Shared {
    pub(crate) settings: TerminalSettings,
    pub(crate) observer: Arc<dyn Observer>,
    /// Set once, at shutdown: every session ends and no new one starts.
    pub(crate) stop: watch::Sender<bool>,
    entries: Mutex<HashMap<Key, Entry>>,
    /// Screen cells held per sandbox, opening sessions included (see
    /// [`TerminalSettings::max_cells_per_sandbox`]). Locked last, never held while taking
    /// another lock.
    cells: Mutex<HashMap<String, usize>>,
    next_id: AtomicU64,
}

impl Shared {
    fn entries(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes what a sandbox's screens hold from `release` cells to `take` (a new session:
    /// 0 → its size; a resize: old → new size; an end: its size → 0). Refuses growth past the
    /// budget; shrinking always succeeds.
    pub(crate) fn swap_cells(&self, sandbox: &str, release: usize, take: usize) -> Result<(), TerminalError> {
        let mut cells = self.cells.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = cells.get(sandbox).copied().unwrap_or(0).saturating_sub(release);
        let limit = self.settings.max_cells_per_sandbox;
        if take > release && held + take > limit {
            return Err(TerminalError::TooManyCells { sandbox: sandbox.to_string(), limit });
        }
        match held + take {
            0 => cells.remove(sandbox),
            now => cells.insert(sandbox.to_string(), now),
        };
        Ok(())
    }

    /// Removes an ended session, unless its name already belongs to a newer one.
    pub(crate) fn forget(&self, session: &Arc<Session>) {
        let mut entries = self.entries();
        if matches!(entries.get(&session.key), Some(Entry::Live(live)) if Arc::ptr_eq(live, session)) {
            entries.remove(&session.key);
        }
    }
}

/// Removes an `Opening` entry whose opener failed or was cancelled, then wakes the waiters.
struct OpeningGuard<'a> {
    shared: &'a Shared,
    key: Key,
    id: u64,
    /// Cells reserved for the session; handed over to it once it started (then 0).
    cells: usize,
    _done: watch::Sender<()>,
}

impl Drop for OpeningGuard<'_> {
    fn drop(&mut self) {
        let mut entries = self.shared.entries();
        if matches!(entries.get(&self.key), Some(Entry::Opening { id, .. }) if *id == self.id) {
            entries.remove(&self.key);
        }
        drop(entries);
        if self.cells > 0 {
            let _ = self.shared.swap_cells(&self.key.0, self.cells, 0);
        }
    }
}

/// Every terminal session of this server.
#[derive(Clone)]
pub struct TerminalHub {
    shared: Arc<Shared>,
}

enum Step {
    Join(Arc<Session>),
    Wait(watch::Receiver<()>),
    Open(watch::Sender<()>, u64),
}

impl TerminalHub {
    /// An empty hub.
    pub fn new(settings: TerminalSettings, observer: Arc<dyn Observer>) -> TerminalHub {
        let (stop, _) = watch::channel(false);
        TerminalHub {
            shared: Arc::new(Shared {
                settings,
                observer,
                stop,
                entries: Mutex::new(HashMap::new()),
                cells: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &TerminalSettings {
        &self.shared.settings
    }

    /// Attaches a viewer to the named session of a sandbox, or to a new session that `open`
    /// starts (called at most once, with the size to open the PTY at). The caller must have
    /// checked the caller's access to the sandbox: the hub only knows names.
    pub async fn attach<F, Fut, E>(&self, request: AttachRequest, open: F) -> Result<Viewer, AttachError<E>>
    where
        F: FnOnce(u16, u16) -> Fut,
        Fut: Future<Output = Result<Opened, E>>,
    {
        check_size(request.cols, request.rows)?;
        if let Some(name) = &request.session {
            check_session_name(name)?;
        }
        let shared = &self.shared;
        let named = request.session.is_some();
        let key: Key = match request.session {
            Some(name) => (request.sandbox_id, name),
            None => (request.sandbox_id, format!("~{}", shared.next_id.fetch_add(1, Ordering::Relaxed))),
        };
        let (cols, rows, read_only) = (request.cols, request.rows, request.read_only);
        let (done, id) = loop {
            let step = {
                let mut entries = shared.entries();
                if *shared.stop.borrow() {
                    return Err(TerminalError::ShuttingDown.into());
                }
                match entries.get(&key) {
                    Some(Entry::Live(session)) => Step::Join(session.clone()),
                    Some(Entry::Opening { done, .. }) => Step::Wait(done.clone()),
                    None => {
                        let limit = shared.settings.max_sessions_per_sandbox;
                        if entries.keys().filter(|(sandbox, _)| *sandbox == key.0).count() >= limit {
                            return Err(TerminalError::TooManySessions { sandbox: key.0.clone(), limit }.into());
                        }
                        shared.swap_cells(&key.0, 0, usize::from(cols) * usize::from(rows))?;
                        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                        let (tx, rx) = watch::channel(());
                        entries.insert(key.clone(), Entry::Opening { id, done: rx });
                        Step::Open(tx, id)
                    }
                }
            };
            match step {
                Step::Join(session) => match session.join(cols, rows, read_only) {
                    Ok(viewer) => return Ok(viewer),
                    Err(JoinError::Full) => {
                        let limit = shared.settings.max_viewers_per_session;
                        return Err(TerminalError::TooManyViewers { session: key.1, limit }.into());
                    }
                    // Ended between the lookup and the join: forget it and open a new one.
                    Err(JoinError::Ended) => shared.forget(&session),
                },
                Step::Wait(mut done) => {
                    // Err once the opener is done (its sender dropped), whatever the outcome.
                    let _ = done.changed().await;
                }
                Step::Open(done, id) => break (done, id),
            }
        };
        // This call opens the session; others attaching to the name meanwhile wait for it.
        let cells = usize::from(cols) * usize::from(rows);
        let mut guard = OpeningGuard { shared, key: key.clone(), id, cells, _done: done };
        let opened = open(cols, rows).await.map_err(AttachError::Open)?;
        let (session, viewer) = Session::start(
            shared.clone(),
            key.clone(),
            named,
            opened.stream,
            opened.keepalive,
            (cols, rows),
            read_only,
        );
        shared.entries().insert(key, Entry::Live(session));
        // The session holds the cells now and gives them back when it ends.
        guard.cells = 0;
        drop(guard);
        Ok(viewer)
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.shared.entries().values().filter(|entry| matches!(entry, Entry::Live(_))).count()
    }

    /// Ends every session (their viewers see [`crate::End::Shutdown`]) and refuses new ones:
    /// called at server shutdown, because sessions live in this process only.
    pub fn close_all(&self) {
        self.shared.stop.send_replace(true);
    }
}
