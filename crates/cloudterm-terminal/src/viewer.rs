//! A viewer: one connection's view of a session.
//!
//! Backpressure policy: every viewer reads the session's one bounded queue
//! ([`crate::TerminalSettings::queue_chunks`] chunks holding at most
//! [`crate::TerminalSettings::queue_bytes`]). A viewer that falls further behind than that (a
//! slow or stalled client) loses its place; its next event is a repaint of the current screen,
//! and it goes on from there. So the program and the other viewers never wait for it, and the
//! server holds at most one queue per session, whatever its viewers do.
//!
//! A viewer that attaches just after the session was resized (its own attach at a new size,
//! typically) waits for the program's redraw before its first repaint: see [`Hold`].

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

use crate::session::{End, Output, Session};
use crate::{check_size, TerminalError};

/// Output chunks that are already queued are sent together up to this size, so a flood of small
/// chunks becomes fewer, larger messages.
const BATCH: usize = 64 * 1024;

/// What a viewer shows next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerEvent {
    /// Program output, in order.
    Output(Bytes),
    /// The whole screen: the first event after attaching, and what a viewer that fell behind
    /// gets instead of what it missed. It clears and redraws the screen of a terminal of the
    /// session's size.
    Repaint(Bytes),
    /// The session ended; every later call answers this again.
    Ended(End),
}

/// What a viewer shows first.
pub(crate) enum First {
    /// This repaint, taken when the viewer subscribed.
    Repaint(Bytes),
    /// A repaint taken once the program redrew after a resize.
    Hold(Hold),
}

/// Waiting for a program to redraw after a resize: until output came and then `redraw_quiet`
/// passed with none (`quiet_until`), or until `deadline` (`redraw_wait` after the resize) for a
/// program that does not redraw. Then the repaint is taken and the viewer subscribes afresh, so
/// the redraw is shown once, inside the repaint.
#[derive(Debug)]
pub(crate) struct Hold {
    pub(crate) deadline: Instant,
    pub(crate) quiet_until: Option<Instant>,
}

/// One attached viewer. Dropping it detaches; a named session then waits for viewers for the
/// idle time, an unnamed one ends.
pub struct Viewer {
    session: Arc<Session>,
    rx: broadcast::Receiver<Output>,
    read_only: bool,
    first: Option<First>,
    ended: Option<End>,
}

/// A viewer's input side, apart from it: [`Viewer::next`] takes `&mut`, and a connection must
/// be able to wait for the program to take its input while it keeps sending output (a program
/// that does not read its input must not freeze what the client sees).
#[derive(Clone)]
pub struct ViewerInput {
    session: Arc<Session>,
    read_only: bool,
}

impl std::fmt::Debug for ViewerInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewerInput")
            .field("session", &self.session.name())
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl ViewerInput {
    /// Sends keystrokes (or a paste) to the program; ignored for a read-only viewer. Waits
    /// while the session's input queue is full (the program is not reading its input).
    pub async fn send(&self, data: Bytes) {
        if !self.read_only && !data.is_empty() {
            self.session.input(data).await;
        }
    }

    /// Resizes the session's terminal; ignored for a read-only viewer. Refused when the
    /// sandbox's screens would hold more cells than it may (the size stays as it was).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), TerminalError> {
        check_size(cols, rows)?;
        if !self.read_only {
            self.session.resize(cols, rows)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("sandbox", &self.session.key.0)
            .field("session", &self.session.name())
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Viewer {
    pub(crate) fn new(session: Arc<Session>, rx: broadcast::Receiver<Output>, first: First, read_only: bool) -> Viewer {
        session.shared.observer.viewer_attached();
        Viewer { session, rx, read_only, first: Some(first), ended: None }
    }

    /// The input side, for a task of its own.
    pub fn input_handle(&self) -> ViewerInput {
        ViewerInput { session: self.session.clone(), read_only: self.read_only }
    }

    /// True when this viewer's input and resizes are ignored.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The session's name (`~N` for an unnamed one).
    pub fn session(&self) -> &str {
        self.session.name()
    }

    /// The next thing to show. Cancel-safe: it may be raced against the client's input.
    pub async fn next(&mut self) -> ViewerEvent {
        match self.first.take() {
            Some(First::Repaint(repaint)) => return ViewerEvent::Repaint(repaint),
            Some(First::Hold(hold)) => {
                self.first = Some(First::Hold(hold));
                self.wait_for_redraw().await;
                return self.repaint_now(false);
            }
            None => {}
        }
        if let Some(end) = self.ended {
            return ViewerEvent::Ended(end);
        }
        let first = match self.rx.recv().await {
            Ok(Output::Data(data)) => data,
            Ok(Output::End(end)) => return self.end(end),
            Err(RecvError::Lagged(_)) => return self.repaint_now(true),
            Err(RecvError::Closed) => {
                let end = self.session.lock().ended.unwrap_or(End::Lost);
                return self.end(end);
            }
        };
        let mut batch: Option<BytesMut> = None;
        while batch.as_ref().map_or(first.len(), BytesMut::len) < BATCH {
            match self.rx.try_recv() {
                Ok(Output::Data(more)) => {
                    batch.get_or_insert_with(|| BytesMut::from(&first[..])).extend_from_slice(&more)
                }
                Ok(Output::End(end)) => {
                    self.ended = Some(end);
                    break;
                }
                Err(TryRecvError::Lagged(_)) => return self.repaint_now(true),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        ViewerEvent::Output(batch.map_or(first, BytesMut::freeze))
    }

    /// Sends keystrokes (or a paste) to the program; ignored for a read-only viewer. Waits
    /// while the program is not reading its input (a connection sends through
    /// [`Viewer::input_handle`] instead, so that wait does not hold back its output).
    pub async fn input(&self, data: Bytes) {
        self.input_handle().send(data).await;
    }

    /// Resizes the session's terminal; ignored for a read-only viewer. Refused when the
    /// sandbox's screens would hold more cells than it may (the size stays as it was).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), TerminalError> {
        self.input_handle().resize(cols, rows)
    }

    /// Waits out a [`Hold`]: output (read from the queue only to see that it came; the repaint
    /// will hold it) then `redraw_quiet` of silence, the deadline, or the session's end.
    /// Cancel-safe: the progress stays in `self.first`.
    async fn wait_for_redraw(&mut self) {
        let quiet = self.session.shared.settings.redraw_quiet;
        loop {
            let Some(First::Hold(hold)) = &self.first else { return };
            let until = hold.quiet_until.map_or(hold.deadline, |quiet_until| quiet_until.min(hold.deadline));
            let heard = match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Ok(Output::Data(_)) | Err(RecvError::Lagged(_))) => true,
                // The time is up, or the session ended: repaint what there is.
                Err(_) | Ok(Ok(Output::End(_)) | Err(RecvError::Closed)) => false,
            };
            match &mut self.first {
                Some(First::Hold(hold)) if heard => hold.quiet_until = Some(Instant::now() + quiet),
                _ => self.first = None,
            }
        }
    }

    /// Starts again from the current screen: after attaching with a [`Hold`], or when the
    /// viewer fell off the queue (`resynced`, which the observer counts). After the end, the
    /// final screen is still shown once before the end is reported.
    fn repaint_now(&mut self, resynced: bool) -> ViewerEvent {
        let state = self.session.lock();
        let repaint = state.screen.repaint();
        match (&state.output, state.ended) {
            (Some(output), None) => self.rx = output.subscribe(),
            (_, end) => self.ended = Some(end.unwrap_or(End::Lost)),
        }
        drop(state);
        if resynced {
            self.session.shared.observer.viewer_resynced();
        }
        ViewerEvent::Repaint(repaint)
    }

    fn end(&mut self, end: End) -> ViewerEvent {
        self.ended = Some(end);
        ViewerEvent::Ended(end)
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.session.viewers.send_modify(|n| *n = n.saturating_sub(1));
        self.session.shared.observer.viewer_detached();
    }
}
