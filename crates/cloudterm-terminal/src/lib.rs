//! Terminal sessions that outlive their connections: one PTY in a sandbox, a server-side screen
//! that repaints viewers who attach late or fall behind, and a bounded fan-out to every viewer.
//!
//! A [`TerminalHub`] keeps the sessions of every sandbox, keyed by sandbox id and session name.
//! A session owns the framed PTY stream the sandbox's agent serves (`GET /v1/pty`, see
//! `cloudterm_agent_protocol::frame`) and three tasks: a reader that feeds every byte into a
//! `vt100` screen and a broadcast queue, a writer that forwards input and resizes, and a
//! supervisor that ends the session when the program exits, the stream breaks, the last viewer
//! left long enough ago, or the hub closes. Dropping the stream is what ends the program: the
//! agent kills the PTY's process tree when its client goes away.
//!
//! Nothing here knows HTTP or WebSockets (the server adapts a [`Viewer`] to a socket) or how a
//! PTY is opened (the caller passes an opener), so the whole crate is tested against an
//! in-memory stand-in for the agent.

mod hub;
mod limits;
mod screen;
mod session;
mod viewer;

#[cfg(test)]
mod tests;

use std::any::Any;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use hub::{AttachError, AttachRequest, TerminalHub};
pub use limits::{check_session_name, check_size, MAX_DIMENSION, MAX_SESSION_NAME};
pub use session::End;
pub use viewer::{Viewer, ViewerEvent, ViewerInput};

/// What a terminal session talks to: the agent's upgraded PTY stream.
pub trait PtyStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PtyStream for T {}

/// A freshly opened PTY, handed to the hub by the caller's opener.
pub struct Opened {
    /// The framed stream to the agent.
    pub stream: Box<dyn PtyStream>,
    /// Held for as long as the session lives and dropped when it ends: the server passes the
    /// guard that keeps the sandbox busy, so a sandbox with a terminal session never idles out
    /// under it.
    pub keepalive: Box<dyn Any + Send>,
}

/// Bounds and timings of terminal sessions.
#[derive(Debug, Clone)]
pub struct TerminalSettings {
    /// How long a named session with no viewer stays before its PTY is closed.
    pub idle_session: Duration,
    /// Sessions one sandbox may have at once (each holds a PTY and a screen in memory).
    pub max_sessions_per_sandbox: usize,
    /// Viewers one session may have at once.
    pub max_viewers_per_session: usize,
    /// Output chunks queued per session for its viewers. A viewer further behind than this is
    /// resynchronised with a repaint instead of being queued for, so memory stays bounded
    /// whatever a client does.
    pub queue_chunks: usize,
    /// Bytes of output the queue may hold: output is cut into chunks of at most
    /// `queue_bytes / queue_chunks` bytes (copied, so a queued chunk keeps nothing else alive),
    /// so the queue holds at most this much whatever size the agent's frames are.
    pub queue_bytes: usize,
    /// How long a viewer whose attach changed the session's size (or that attaches just after
    /// a resize) may wait for the program to redraw before its first repaint. `vt100` crops a
    /// screen it resizes, so a repaint taken at once shows a full-screen program's old layout
    /// cut to the new size; one taken after the program answered its SIGWINCH shows the
    /// program's own new layout. A program that does not redraw (a shell at its prompt) costs
    /// the viewer this long, once. Zero: repaint at once.
    pub redraw_wait: Duration,
    /// Output then this much silence counts as the program having redrawn (within
    /// `redraw_wait`). A program may write its redraw in more than one burst: a curses program
    /// first has curses refresh the old screen at the new size, then draws its new layout; on a
    /// loaded machine the gap between the two can pass this, and the first repaint then shows
    /// the old layout, the redraw following as output.
    pub redraw_quiet: Duration,
    /// Screen cells (columns × rows) the sessions of one sandbox may hold together. A cell costs
    /// the `vt100` screen about 32 bytes, twice that once a program used the alternate screen,
    /// so the default (one million) keeps a sandbox's screens under about 64 MiB whatever its
    /// clients ask for: one 1000 × 1000 terminal fits, and so do 16 of 250 × 250.
    pub max_cells_per_sandbox: usize,
}

impl Default for TerminalSettings {
    fn default() -> Self {
        TerminalSettings {
            idle_session: Duration::from_secs(600),
            max_sessions_per_sandbox: 16,
            max_viewers_per_session: 16,
            queue_chunks: 256,
            queue_bytes: 1 << 20,
            redraw_wait: Duration::from_millis(150),
            redraw_quiet: Duration::from_millis(50),
            max_cells_per_sandbox: 1_000_000,
        }
    }
}

/// What terminal operations fail with; the server maps each variant to one status.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// A bad size or session name.
    #[error("{0}")]
    InvalidInput(String),
    /// The sandbox has as many sessions as it may.
    #[error("sandbox {sandbox} has {limit} terminal sessions already, the most it may have")]
    TooManySessions {
        /// The sandbox.
        sandbox: String,
        /// The limit.
        limit: usize,
    },
    /// The session has as many viewers as it may.
    #[error("terminal session {session} has {limit} viewers already, the most it may have")]
    TooManyViewers {
        /// The session's name.
        session: String,
        /// The limit.
        limit: usize,
    },
    /// The sandbox's sessions would hold more screen cells than it may.
    #[error("the terminal sessions of sandbox {sandbox} would hold more than {limit} screen cells (columns × rows); use a smaller terminal or end a session")]
    TooManyCells {
        /// The sandbox.
        sandbox: String,
        /// The limit.
        limit: usize,
    },
    /// The hub is closing (server shutdown).
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Hears about sessions and viewers coming and going (the server's metrics).
pub trait Observer: Send + Sync + 'static {
    /// A session started.
    fn session_started(&self) {}
    /// A session ended.
    fn session_ended(&self) {}
    /// A viewer attached.
    fn viewer_attached(&self) {}
    /// A viewer left.
    fn viewer_detached(&self) {}
    /// A viewer fell behind and was repainted.
    fn viewer_resynced(&self) {}
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {}
