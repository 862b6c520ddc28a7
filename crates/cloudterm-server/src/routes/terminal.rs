//! `GET /sandboxes/{id}/terminal`: a WebSocket onto a terminal session in the sandbox.
//!
//! Every check happens before the upgrade, so a refusal is an ordinary JSON error: the token
//! (from `Authorization: Bearer`, or `?token=` because browsers cannot set headers on a
//! WebSocket; this is the only route that reads it), the size, session name and mode (422),
//! the sandbox (another principal's is 404), and the session (opening the PTY, 503 when the
//! agent cannot). After it, binary frames carry terminal bytes both ways and text frames carry
//! JSON control messages (`TerminalClientMessage`, `TerminalServerMessage`). Sessions, their
//! screens and the backpressure policy live in `cloudterm-terminal`; docs/terminal.md has the
//! protocol.
//!
//! A connection is two tasks: this one sends output, pings and goodbyes; a reader task takes
//! the client's frames and hands input to the session, waiting when the program does not read
//! it. Waiting there never holds back the output (a program that ignores its input must not
//! freeze what the client sees, nor the pings that keep the connection alive).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use cloudterm_api_types::{ErrorEnvelope, TerminalClientMessage, TerminalServerMessage};
use cloudterm_domain::sandboxes::open_terminal;
use cloudterm_domain::{Access, DomainError, Principal};
use cloudterm_terminal::{
    check_session_name, check_size, AttachRequest, End, Opened, Viewer, ViewerEvent, ViewerInput,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::extract::{authenticate, ApiQuery, Caller};
use crate::state::AppState;

/// Size of a terminal when the query names none.
const DEFAULT_COLS: u16 = 80;
const DEFAULT_ROWS: u16 = 24;

/// Largest WebSocket message a client may send (a paste); the session splits it for the agent.
const MAX_MESSAGE: usize = 1 << 20;

/// A send that makes no progress this long means the client stopped reading (its socket
/// buffers are full): the connection is closed. Falling behind without stalling only costs the
/// viewer a repaint (see `cloudterm_terminal::viewer`).
const STALLED_SEND: Duration = Duration::from_secs(30);

/// Pings (every `terminal.ping_seconds`) keep idle connections alive through proxies and reveal
/// dead peers: a client that sent nothing (not even a pong, which browsers send by themselves)
/// for this many ping intervals is gone.
const SILENT_PINGS: u32 = 3;

/// Control answers (`bad_control`) the reader task may have waiting for the sender.
const REPLIES: usize = 4;

/// Query of the terminal route. Not `Debug`: it holds the token.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TerminalQuery {
    /// Terminal width, 1 to 1000 (default 80).
    pub cols: Option<u16>,
    /// Terminal height, 1 to 1000 (default 24).
    pub rows: Option<u16>,
    /// A session to create or re-attach: 1 to 64 characters of `A-Z a-z 0-9 _ -`. Without it,
    /// a private session that ends when this connection closes.
    pub session: Option<String>,
    /// `write` or `read`: a read-only viewer's input and resizes are ignored, and it can only
    /// watch a running named session. The default is `write` for callers who may write on the
    /// sandbox's workspace and `read` for those with `read` only.
    pub mode: Option<String>,
    /// The token, for clients that cannot send `Authorization` (browsers). The header wins
    /// when both are given.
    pub token: Option<String>,
}

/// Opens a terminal: upgrades to a WebSocket attached to a shell in the sandbox. Binary frames
/// carry raw terminal bytes both ways; text frames carry JSON control messages: `resize` from
/// the client, `exit` (then close) and `error` from the server. The first binary frame is a
/// repaint of the session's current screen.
#[utoipa::path(get, path = "/sandboxes/{id}/terminal", tag = "terminal", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id"), TerminalQuery),
    responses(
        (status = 101, description = "switched to the WebSocket protocol (see docs/terminal.md)"),
        (status = 400, description = "not a WebSocket upgrade, or a malformed query", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the sandbox is not running, or has as many sessions (or the session as many viewers) as it may", body = ErrorEnvelope),
        (status = 422, description = "a bad size, session name or mode", body = ErrorEnvelope),
        (status = 503, description = "the sandbox's agent cannot open a terminal", body = ErrorEnvelope),
    ))]
pub async fn terminal(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<TerminalQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let caller = terminal_caller(&state, &headers, query.token.as_deref()).await?;
    let (cols, rows) = (query.cols.unwrap_or(DEFAULT_COLS), query.rows.unwrap_or(DEFAULT_ROWS));
    check_size(cols, rows)?;
    if let Some(name) = &query.session {
        check_session_name(name)?;
    }
    let asked = match query.mode.as_deref() {
        None => None,
        Some("write") => Some(Access::Write),
        Some("read") => Some(Access::Read),
        Some(other) => return Err(ApiError::Unprocessable(format!("mode must be read or write, got {other:?}"))),
    };
    // A collaborator with `read` watches: read-only by default, refused when asking to type.
    let access = state.sandboxes.access_to(&caller.principal, &id).await?;
    let needed = asked.unwrap_or(if access >= Access::Write { Access::Write } else { Access::Read });
    let read_only = needed == Access::Read;
    let guard = state.sandboxes.use_running(&caller.principal, &id, needed).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::BadRequest(format!("this route needs a WebSocket upgrade: {}", rejection.body_text()))
    })?;
    let request_sandbox = id.clone();
    let request = AttachRequest { sandbox_id: id, session: query.session, cols, rows, read_only };
    let viewer = state
        .terminals
        .attach(request, |cols, rows| async move {
            // Reached only when no session of that name runs: a watcher cannot start a shell.
            if read_only {
                return Err(DomainError::Conflict(
                    "a read-only viewer can only watch a running named session (?session=NAME)".into(),
                ));
            }
            let busy = open_terminal(guard, cols, rows).await?;
            Ok::<_, DomainError>(Opened { stream: Box::new(busy.value), keepalive: Box::new(busy.guard) })
        })
        .await?;
    let expires_at = caller.expires_at;
    let ping_every = Duration::from_secs(state.config.terminal.ping_seconds.max(1));
    // Subscribed before the upgrade, so a revocation from here on is not missed.
    let watch = AccessWatch {
        state: state.clone(),
        principal: caller.principal,
        sandbox_id: request_sandbox,
        needed,
        withdrawals: state.workspaces.withdrawals(),
    };
    Ok(upgrade
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(socket, viewer, expires_at, ping_every, watch))
        .into_response())
}

/// The caller from the `Authorization` header, or else from `?token=`.
async fn terminal_caller(state: &AppState, headers: &HeaderMap, token: Option<&str>) -> Result<Caller, ApiError> {
    match token {
        Some(token) if !headers.contains_key(AUTHORIZATION) => {
            let verified = state.verifier.verify(token.trim()).await?;
            Ok(Caller { principal: Principal::new(verified.principal), expires_at: verified.expires_at })
        }
        _ => authenticate(state, headers).await,
    }
}

type Sink = SplitSink<WebSocket, Message>;

/// Why the connection closes, as the client is told.
struct Closing {
    message: Option<TerminalServerMessage>,
    code: u16,
    reason: &'static str,
}

/// The connection's caller and the level it was let in with, to check again when the caller
/// is withdrawn from a workspace: access is checked per request everywhere else, and a
/// terminal connection must not outlive a revocation.
struct AccessWatch {
    state: AppState,
    principal: Principal,
    sandbox_id: String,
    needed: Access,
    withdrawals: tokio::sync::broadcast::Receiver<String>,
}

impl AccessWatch {
    /// Waits for a withdrawal that may concern the caller (it names them, or some were missed)
    /// after which the caller no longer has the level they were let in with. Never returns
    /// while they keep it.
    async fn lost(&mut self) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let concerns = match self.withdrawals.recv().await {
                Ok(who) => who == self.principal.id(),
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return std::future::pending().await,
            };
            if !concerns {
                continue;
            }
            match self.state.sandboxes.access_to(&self.principal, &self.sandbox_id).await {
                Ok(access) if access >= self.needed => {}
                Ok(_) | Err(DomainError::NotFound(_) | DomainError::Forbidden(_)) => return,
                // The store could not say: keep the connection, as a failed check would not
                // have refused it at the upgrade either; the next withdrawal checks again.
                Err(err) => {
                    tracing::warn!(sandbox = %self.sandbox_id, error = %err, "cannot re-check a terminal viewer's access")
                }
            }
        }
    }
}

/// When the client was last heard from, and whether its reader is waiting for the program to
/// take input (then its frames wait in the socket, and its silence is not the client's).
struct Heard {
    at: Instant,
    waiting_on_program: bool,
}

/// Shared by a connection's two tasks.
type HeardCell = Arc<Mutex<Heard>>;

/// Records that a frame arrived now (and whether its input is now waiting for the program).
fn note_heard(cell: &HeardCell, waiting_on_program: bool) {
    let mut heard = cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *heard = Heard { at: Instant::now(), waiting_on_program };
}

/// Aborts the reader task when the connection ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Moves frames between the socket and the viewer until either side ends, the token expires
/// or the caller loses the access they attached with: output, pings and answers go out from
/// here; the client's frames are read by [`read_client`] in a task of its own, so input the
/// program does not take never stops the output.
async fn serve(
    socket: WebSocket,
    mut viewer: Viewer,
    expires_at: Option<DateTime<Utc>>,
    ping_every: Duration,
    mut watch: AccessWatch,
) {
    let (mut sink, stream) = socket.split();
    let token_left = expires_at.map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO));
    let token_expiry = tokio::time::sleep(token_left.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
    tokio::pin!(token_expiry);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let silent_limit = ping_every * SILENT_PINGS;
    let last_heard: HeardCell = Arc::new(Mutex::new(Heard { at: Instant::now(), waiting_on_program: false }));
    let (replies_tx, mut replies) = mpsc::channel(REPLIES);
    let _reader = AbortOnDrop(tokio::spawn(read_client(stream, viewer.input_handle(), last_heard.clone(), replies_tx)));
    // One future for the whole connection: a check in progress is not dropped when another
    // branch fires.
    let lost = watch.lost();
    tokio::pin!(lost);
    let closing = loop {
        // Biased, output last: an answer to a control frame goes out before any output the
        // client's later input caused (the reader queues it before it passes that input on),
        // and a flood of output cannot starve the pings.
        tokio::select! {
            biased;
            reply = replies.recv() => match reply {
                Some(message) => {
                    if !send_json(&mut sink, &message).await {
                        return;
                    }
                }
                // The reader ended: the client closed, or its socket broke.
                None => return,
            },
            _ = ping.tick() => {
                let silent = {
                    let heard = last_heard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    !heard.waiting_on_program && heard.at.elapsed() > silent_limit
                };
                if silent {
                    return;
                }
                if !send(&mut sink, Message::Ping(bytes::Bytes::new())).await {
                    return;
                }
            }
            () = &mut lost => break Closing {
                message: Some(TerminalServerMessage::Error {
                    code: "access_revoked".into(),
                    message: "your access to this sandbox's workspace was revoked or lowered".into(),
                }),
                code: close_code::POLICY,
                reason: "access revoked",
            },
            _ = &mut token_expiry, if token_left.is_some() => break Closing {
                message: Some(TerminalServerMessage::Error {
                    code: "token_expired".into(),
                    message: "the token expired; reconnect with a fresh one (the session keeps running)".into(),
                }),
                code: close_code::POLICY,
                reason: "token expired",
            },
            event = viewer.next() => match event {
                ViewerEvent::Output(bytes) | ViewerEvent::Repaint(bytes) => {
                    if !send(&mut sink, Message::Binary(bytes)).await {
                        return;
                    }
                }
                ViewerEvent::Ended(end) => break ended(end),
            },
        }
    };
    // Detach before the goodbye, so a client that reconnects at once finds the session free.
    drop(viewer);
    if let Some(message) = &closing.message {
        if !send_json(&mut sink, message).await {
            return;
        }
    }
    let frame = CloseFrame { code: closing.code, reason: closing.reason.into() };
    let _ = send(&mut sink, Message::Close(Some(frame))).await;
}

/// Reads the client's frames until it closes: input to the program (waiting while the program
/// does not read it, which leaves the client's further frames in its socket), resizes, and
/// `bad_control` answers handed to the sender. Ends (dropping `replies`, which ends the
/// connection) when the client closes or its socket breaks.
async fn read_client(
    mut stream: SplitStream<WebSocket>,
    input: ViewerInput,
    last_heard: HeardCell,
    replies: mpsc::Sender<TerminalServerMessage>,
) {
    while let Some(Ok(message)) = stream.next().await {
        note_heard(&last_heard, false);
        match message {
            Message::Binary(bytes) => {
                note_heard(&last_heard, true);
                input.send(bytes).await;
                note_heard(&last_heard, false);
            }
            Message::Text(text) => {
                let refused = match serde_json::from_str::<TerminalClientMessage>(text.as_str()) {
                    Ok(TerminalClientMessage::Resize { cols, rows }) => {
                        input.resize(cols, rows).err().map(|e| e.to_string())
                    }
                    Err(err) => Some(format!("not a control message: {err}")),
                };
                if let Some(message) = refused {
                    let error = TerminalServerMessage::Error { code: "bad_control".into(), message };
                    if replies.send(error).await.is_err() {
                        return;
                    }
                }
            }
            Message::Close(_) => return,
            // axum answers pings itself; a pong only proves the client is there.
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

/// What the client is told when the session ends.
fn ended(end: End) -> Closing {
    let error =
        |code: &str, message: &str| Some(TerminalServerMessage::Error { code: code.into(), message: message.into() });
    match end {
        End::Exited(code) => {
            Closing { message: Some(TerminalServerMessage::Exit { code }), code: close_code::NORMAL, reason: "exited" }
        }
        End::Shutdown => Closing {
            message: error("shutting_down", "the server is shutting down"),
            code: close_code::RESTART,
            reason: "shutting down",
        },
        End::Lost | End::IdleTimeout | End::Detached => Closing {
            message: error("terminal_lost", "the terminal's connection to the sandbox ended"),
            code: close_code::ERROR,
            reason: "terminal lost",
        },
    }
}

/// Sends one message; false when the client is gone or stalled (see [`STALLED_SEND`]).
async fn send(sink: &mut Sink, message: Message) -> bool {
    matches!(tokio::time::timeout(STALLED_SEND, sink.send(message)).await, Ok(Ok(())))
}

async fn send_json(sink: &mut Sink, message: &TerminalServerMessage) -> bool {
    match serde_json::to_string(message) {
        Ok(json) => send(sink, Message::Text(json.into())).await,
        Err(_) => false,
    }
}
