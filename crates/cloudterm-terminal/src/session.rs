//! One terminal session: the PTY stream, its screen, its viewers, and the tasks that move bytes
//! and decide when it ends.
//!
//! Output is processed under the state lock (screen first, then the broadcast queue), and a
//! viewer subscribes and takes its repaint under the same lock, so what a viewer receives is
//! exactly the screen at attach time followed by every byte after it: nothing lost, nothing
//! twice. The reader never waits for a viewer: the broadcast queue is bounded and a viewer that
//! falls off its end is repainted instead (see `viewer.rs`).
//!
//! Both queues have a byte budget, not only a length: output is cut into chunks of
//! `queue_bytes / capacity` bytes and input into [`INPUT_CHUNK`]s, each copied into its own
//! buffer, so what a session holds for its viewers and its program does not depend on how large
//! the agent's frames or the clients' messages are.

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use cloudterm_agent_protocol::frame::{self, FrameDecoder};
use cloudterm_agent_protocol::{PtyExit, PtyResize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::hub::Shared;
use crate::screen::Screen;
use crate::viewer::{First, Hold, Viewer};
use crate::{PtyStream, TerminalError};

/// Input frames queued towards the agent per session. A client typing faster than the program
/// reads waits here (its own socket then fills); the connection keeps sending output meanwhile
/// (the server reads a client's input in a task of its own).
const INPUT_QUEUE: usize = 64;

/// Largest input chunk sent in one frame, copied out of the client's message: the input queue
/// holds at most `INPUT_QUEUE × INPUT_CHUNK` = 256 KiB per session, and never keeps a whole
/// 1 MiB paste alive for its last chunk.
pub(crate) const INPUT_CHUNK: usize = 4 * 1024;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The program exited with this code (128 + signal when a signal ended it).
    Exited(i32),
    /// The stream to the agent broke (the sandbox stopped, or the agent failed).
    Lost,
    /// A named session had no viewer for the idle time.
    IdleTimeout,
    /// An unnamed session's viewer left.
    Detached,
    /// The server is shutting down.
    Shutdown,
}

/// What the reader hands to viewers.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// Program output.
    Data(Bytes),
    /// The session ended (the last message).
    End(End),
}

/// Sessions are keyed by sandbox id and session name.
pub(crate) type Key = (String, String);

pub(crate) struct State {
    pub(crate) screen: Screen,
    /// `None` once the session ended: dropping the sender tells every receiver.
    pub(crate) output: Option<broadcast::Sender<Output>>,
    pub(crate) ended: Option<End>,
    /// When the size last changed and when output last came: a viewer attaching within
    /// `redraw_wait` of a resize waits for the program's redraw before its repaint.
    resized_at: Option<Instant>,
    output_at: Option<Instant>,
}

pub(crate) struct Session {
    pub(crate) key: Key,
    /// Named sessions wait for viewers to come back; unnamed ones end with their viewer.
    named: bool,
    state: Mutex<State>,
    /// Largest output chunk queued for viewers (the queue's byte budget over its capacity).
    chunk: usize,
    input: mpsc::Sender<Bytes>,
    /// The size the writer should set; a watch, so a burst of resizes (a window being dragged)
    /// becomes one frame and a resize never waits behind queued input.
    size: watch::Sender<(u16, u16)>,
    pub(crate) viewers: watch::Sender<usize>,
    pub(crate) shared: Arc<Shared>,
}

impl Session {
    /// Starts a session on a freshly opened stream, with its first viewer already attached (so
    /// an unnamed session cannot end before its viewer exists).
    pub(crate) fn start(
        shared: Arc<Shared>,
        key: Key,
        named: bool,
        stream: Box<dyn PtyStream>,
        keepalive: Box<dyn Any + Send>,
        (cols, rows): (u16, u16),
        read_only: bool,
    ) -> (Arc<Session>, Viewer) {
        // tokio rounds the capacity up to a power of two: the budget is split over that.
        let capacity = shared.settings.queue_chunks.max(1).next_power_of_two();
        let chunk = (shared.settings.queue_bytes / capacity).max(1);
        let (tx, rx) = broadcast::channel(capacity);
        let screen = Screen::new(cols, rows);
        let repaint = screen.repaint();
        let (input, input_rx) = mpsc::channel(INPUT_QUEUE);
        let (size, size_rx) = watch::channel((cols, rows));
        let (viewers, _) = watch::channel(1);
        let session = Arc::new(Session {
            key,
            named,
            state: Mutex::new(State { screen, output: Some(tx), ended: None, resized_at: None, output_at: None }),
            chunk,
            input,
            size,
            viewers,
            shared,
        });
        session.shared.observer.session_started();
        let (reader, writer) = tokio::io::split(stream);
        let reader = tokio::spawn(read_loop(session.clone(), reader));
        let writer = tokio::spawn(write_loop(writer, input_rx, size_rx));
        tokio::spawn(supervise(session.clone(), reader, writer, keepalive));
        // Opened at this viewer's size: the program draws for it from the start.
        let viewer = Viewer::new(session.clone(), rx, First::Repaint(repaint), read_only);
        (session, viewer)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The session's name as the client gave it (`~N` for unnamed ones).
    pub(crate) fn name(&self) -> &str {
        &self.key.1
    }

    /// Attaches another viewer. A viewer that may write also sets the size (the latest
    /// viewer's window wins, as in tmux's `latest` policy), so its repaint is correct for it:
    /// when the size changed within `redraw_wait`, the repaint is taken once the program
    /// redrew (see [`Session::redraw_hold`]).
    pub(crate) fn join(self: &Arc<Self>, cols: u16, rows: u16, read_only: bool) -> Result<Viewer, JoinError> {
        let mut state = self.lock();
        if state.ended.is_some() {
            return Err(JoinError::Ended);
        }
        if *self.viewers.borrow() >= self.shared.settings.max_viewers_per_session {
            return Err(JoinError::Full);
        }
        let Some(output) = &state.output else { return Err(JoinError::Ended) };
        let rx = output.subscribe();
        if !read_only {
            // Over the sandbox's cell budget, the viewer still joins, at the session's size
            // (as a read-only viewer would): its resizes say why if it asks again.
            let _ = self.resize_locked(&mut state, cols, rows);
        }
        self.viewers.send_modify(|n| *n += 1);
        let first = match self.redraw_hold(&state) {
            Some(hold) => First::Hold(hold),
            None => First::Repaint(state.screen.repaint()),
        };
        drop(state);
        Ok(Viewer::new(self.clone(), rx, first, read_only))
    }

    /// Whether a viewer attaching now should wait for the program to redraw: the size changed
    /// less than `redraw_wait` ago, and the program has not yet answered with output followed
    /// by `redraw_quiet` of silence. `vt100` crops a resized screen (no reflow), so until the
    /// program redraws, the screen holds its old layout cut to the new size.
    fn redraw_hold(&self, state: &State) -> Option<Hold> {
        let settings = &self.shared.settings;
        let resized_at = state.resized_at?;
        let deadline = resized_at + settings.redraw_wait;
        let now = Instant::now();
        if deadline <= now {
            return None;
        }
        let quiet_until = state.output_at.filter(|at| *at > resized_at).map(|at| at + settings.redraw_quiet);
        if quiet_until.is_some_and(|quiet| quiet <= now) {
            return None;
        }
        Some(Hold { deadline, quiet_until })
    }

    /// Queues input for the program; waits while the input queue is full. Input after the
    /// end is dropped.
    pub(crate) async fn input(&self, data: Bytes) {
        for chunk in data.chunks(INPUT_CHUNK) {
            if self.input.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                return;
            }
        }
    }

    /// Resizes the screen now and the PTY as soon as the writer gets to it; refused when the
    /// sandbox's screens would hold more cells than it may.
    pub(crate) fn resize(&self, cols: u16, rows: u16) -> Result<(), TerminalError> {
        let mut state = self.lock();
        self.resize_locked(&mut state, cols, rows)
    }

    fn resize_locked(&self, state: &mut State, cols: u16, rows: u16) -> Result<(), TerminalError> {
        let now = state.screen.size();
        // After the end the cells were given back: nothing may take them again.
        if now == (cols, rows) || state.ended.is_some() {
            return Ok(());
        }
        self.shared.swap_cells(&self.key.0, cells(now), cells((cols, rows)))?;
        state.screen.resize(cols, rows);
        state.resized_at = Some(Instant::now());
        self.size.send_replace((cols, rows));
        Ok(())
    }

    /// Program output: into the screen, then to the viewers in chunks of the queue's budget.
    fn output(&self, data: &[u8]) {
        let mut state = self.lock();
        state.screen.process(data);
        state.output_at = Some(Instant::now());
        if let Some(output) = &state.output {
            for chunk in data.chunks(self.chunk) {
                // An error only means nobody is watching right now; the screen has it.
                let _ = output.send(Output::Data(Bytes::copy_from_slice(chunk)));
            }
        }
    }

    /// Ends the session once: records why, tells the viewers, closes the queue.
    pub(crate) fn finish(&self, end: End) {
        let mut state = self.lock();
        Self::finish_locked(&mut state, end);
    }

    pub(crate) fn finish_locked(state: &mut State, end: End) {
        if state.ended.is_some() {
            return;
        }
        state.ended = Some(end);
        if let Some(output) = state.output.take() {
            let _ = output.send(Output::End(end));
        }
    }

    /// Ends the session if it still has no viewer; checked under the lock `join` takes, so a
    /// viewer attaching at that moment either gets in first or finds the session ended.
    fn finish_if_unwatched(&self, end: End) -> bool {
        let mut state = self.lock();
        if *self.viewers.borrow() > 0 {
            return false;
        }
        Self::finish_locked(&mut state, end);
        true
    }
}

/// Screen cells of a `(cols, rows)` size.
fn cells((cols, rows): (u16, u16)) -> usize {
    usize::from(cols) * usize::from(rows)
}

/// Why a viewer could not join an existing session.
#[derive(Debug)]
pub(crate) enum JoinError {
    /// The session ended meanwhile; the hub opens a new one.
    Ended,
    /// It has as many viewers as it may.
    Full,
}

/// Reads the agent's frames: data into the screen and the queue, the exit code at the end.
async fn read_loop(session: Arc<Session>, mut reader: ReadHalf<Box<dyn PtyStream>>) -> End {
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let end = 'read: loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break End::Lost,
            Ok(n) => n,
            Err(err) => {
                tracing::debug!(session = %session.name(), error = %err, "terminal stream broke");
                break End::Lost;
            }
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some((frame::KIND_DATA, data))) => session.output(&data),
                Ok(Some((frame::KIND_EXIT, json))) => {
                    let code = serde_json::from_slice::<PtyExit>(&json).map(|exit| exit.code).unwrap_or(255);
                    break 'read End::Exited(code);
                }
                // A kind a newer agent added: nothing this side needs.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(session = %session.name(), error = %err, "bad frame from the agent");
                    break 'read End::Lost;
                }
            }
        }
    };
    session.finish(end);
    end
}

/// Forwards input and resizes to the agent.
async fn write_loop(
    mut writer: WriteHalf<Box<dyn PtyStream>>,
    mut input: mpsc::Receiver<Bytes>,
    mut size: watch::Receiver<(u16, u16)>,
) {
    loop {
        let frame = tokio::select! {
            biased;
            changed = size.changed() => {
                if changed.is_err() {
                    return;
                }
                let (cols, rows) = *size.borrow_and_update();
                match serde_json::to_vec(&PtyResize { cols, rows }) {
                    Ok(json) => frame::encode(frame::KIND_RESIZE, &json),
                    Err(_) => continue,
                }
            }
            data = input.recv() => match data {
                Some(data) => frame::encode(frame::KIND_DATA, &data),
                None => return,
            },
        };
        if writer.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Decides when the session ends, then tears it down: both halves of the stream are dropped
/// (the agent kills the program's tree), the hub forgets the session, the keepalive goes.
async fn supervise(
    session: Arc<Session>,
    mut reader: JoinHandle<End>,
    writer: JoinHandle<()>,
    keepalive: Box<dyn Any + Send>,
) {
    let mut viewers = session.viewers.subscribe();
    let mut stop = session.shared.stop.subscribe();
    let idle = if session.named { session.shared.settings.idle_session } else { Duration::ZERO };
    let mut reader_done = false;
    let end = loop {
        let unwatched = *viewers.borrow_and_update() == 0;
        let deadline = tokio::time::Instant::now() + idle;
        tokio::select! {
            end = &mut reader => {
                reader_done = true;
                break end.unwrap_or(End::Lost);
            }
            changed = viewers.changed() => {
                if changed.is_err() {
                    break End::Lost;
                }
            }
            _ = tokio::time::sleep_until(deadline), if unwatched => {
                let end = if session.named { End::IdleTimeout } else { End::Detached };
                if session.finish_if_unwatched(end) {
                    break end;
                }
            }
            _ = stop.wait_for(|stop| *stop) => break End::Shutdown,
        }
    };
    session.finish(end);
    reader.abort();
    writer.abort();
    // Wait for both halves to be dropped, so the stream is closed when this returns (a
    // finished handle must not be awaited twice).
    if !reader_done {
        let _ = reader.await;
    }
    let _ = writer.await;
    // Ended, so the size no longer changes: give its cells back (before the hub forgets it, so
    // a session gone from the hub holds no cells).
    let size = session.lock().screen.size();
    let _ = session.shared.swap_cells(&session.key.0, cells(size), 0);
    session.shared.forget(&session);
    drop(keepalive);
    session.shared.observer.session_ended();
    tracing::debug!(sandbox = %session.key.0, session = %session.name(), ?end, "terminal session ended");
}
