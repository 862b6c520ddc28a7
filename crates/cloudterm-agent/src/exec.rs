//! `POST /v1/exec`: run a command to completion, buffered (JSON) or streamed (NDJSON).
//!
//! Buffered output is capped per stream (the rest is read and discarded, so the process runs
//! to completion); streamed output is pushed through a small bounded channel, so a slow
//! client slows the process down instead of growing memory. A timeout, or a client that goes
//! away, kills the whole process tree.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use cloudterm_agent_protocol::{
    ExecEvent, ExecRequest, ExecResponse, CONTENT_TYPE_NDJSON, DEFAULT_MAX_OUTPUT_BYTES, MAX_MAX_OUTPUT_BYTES,
};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::procs::{self, TreeGuard};
use crate::util::{json_response, ApiError, ChannelBody, RespBody};
use crate::State;

/// How long output is still read after the process exited (a background grandchild may hold
/// the pipes open; its later output is not part of this exec).
const DRAIN_GRACE: Duration = Duration::from_millis(1000);

struct Prepared {
    cmd: tokio::process::Command,
    marker: String,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    cap: usize,
}

/// The working directory a request names (absolute, or relative to the workspace), which must
/// be an existing directory; the workspace when it names none.
pub(crate) fn working_dir(state: &State, cwd: Option<&str>) -> Result<std::path::PathBuf, ApiError> {
    let cwd = match cwd {
        Some(c) => crate::paths::resolve(&state.spawner.workspace, c)?,
        None => state.spawner.workspace.clone(),
    };
    if !cwd.is_dir() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_cwd", format!("{} is not a directory", cwd.display())));
    }
    Ok(cwd)
}

fn prepare(state: &State, req: &ExecRequest) -> Result<Prepared, ApiError> {
    let argv = procs::argv_of(&req.argv, &req.command)?;
    let cwd = working_dir(state, req.cwd.as_deref())?;
    let stdin = match &req.stdin_base64 {
        Some(s) => Some(B64.decode(s).map_err(|e| ApiError::bad_request(format!("stdin_base64: {e}")))?),
        None => None,
    };
    let timeout = match req.timeout_ms {
        Some(0) => return Err(ApiError::bad_request("timeout_ms must be positive")),
        Some(ms) => Some(Duration::from_millis(ms)),
        None => None,
    };
    let cap = req.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
    if cap > MAX_MAX_OUTPUT_BYTES {
        return Err(ApiError::bad_request(format!("max_output_bytes may be at most {MAX_MAX_OUTPUT_BYTES}")));
    }
    let marker = state.spawner.new_marker();
    let env = state.spawner.env(&req.env, &marker, None);
    let mut cmd = state.spawner.command(&argv, &cwd, &env, false);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    Ok(Prepared { cmd, marker, stdin, timeout, cap: cap as usize })
}

/// What a failed spawn looks like to the caller: the shell's conventions (127 not found,
/// 126 not executable) with the reason on stderr.
fn spawn_failure(err: &std::io::Error) -> (i32, String) {
    let code = if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
    (code, format!("cloudterm-agent: cannot start command: {err}\n"))
}

fn feed_stdin(child: &mut Child, data: Option<Vec<u8>>) {
    if let (Some(mut pipe), Some(data)) = (child.stdin.take(), data) {
        tokio::spawn(async move {
            // A command that does not read its stdin closes the pipe: not an error.
            let _ = pipe.write_all(&data).await;
        });
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Waits for exit or timeout; on timeout kills the tree and reaps the child.
async fn wait_or_kill(
    child: &mut Child,
    timeout: Option<Duration>,
    root: i32,
    marker: &str,
) -> (std::io::Result<std::process::ExitStatus>, bool) {
    tokio::select! {
        st = child.wait() => (st, false),
        () = sleep_opt(timeout) => {
            // Inline, not `spawn_blocking`: at the sandbox's pids limit (a fork bomb is the
            // usual reason for a timeout) no new thread can be made, and tokio would panic.
            // The kill is a short /proc scan.
            procs::kill_tree(root, marker);
            (child.wait().await, true)
        }
    }
}

async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(out.len());
                if n > room {
                    truncated = true;
                }
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (out, truncated)
}

/// Runs the exec; answers JSON or an NDJSON stream.
pub async fn exec(state: Arc<State>, req: ExecRequest, stream: bool) -> Result<Response<RespBody>, ApiError> {
    let mut p = prepare(&state, &req)?;
    let start = Instant::now();
    let spawned = p.cmd.spawn();
    if stream {
        let (tx, body) = ChannelBody::channel(16);
        match spawned {
            Ok(child) => {
                tokio::spawn(run_streaming(state, child, p, tx, start));
            }
            Err(e) => {
                let (code, msg) = spawn_failure(&e);
                let _ = tx.try_send(Ok(event_line(&ExecEvent::Stderr { data: B64.encode(msg) })));
                let _ = tx.try_send(Ok(event_line(&ExecEvent::Exit {
                    exit_code: Some(code),
                    signal: None,
                    timed_out: false,
                    duration_ms: 0,
                })));
            }
        }
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE_NDJSON));
        return Ok(r);
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let (code, msg) = spawn_failure(&e);
            return Ok(json_response(
                StatusCode::OK,
                &ExecResponse {
                    exit_code: Some(code),
                    signal: None,
                    stdout_base64: String::new(),
                    stderr_base64: B64.encode(msg),
                    stdout_truncated: false,
                    stderr_truncated: false,
                    duration_ms: 0,
                    timed_out: false,
                },
            ));
        }
    };
    let root = child.id().map(|p| p as i32).unwrap_or(0);
    state.spawner.register(root, &p.marker);
    let mut guard = TreeGuard { root, marker: p.marker.clone(), spawner: state.spawner.clone(), armed: true };
    feed_stdin(&mut child, p.stdin.take());
    let out = child.stdout.take().map(|o| tokio::spawn(read_capped(o, p.cap)));
    let err = child.stderr.take().map(|o| tokio::spawn(read_capped(o, p.cap)));
    let (status, timed_out) = wait_or_kill(&mut child, p.timeout, root, &p.marker).await;
    let status = status.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "wait_failed", e.to_string()))?;
    let duration_ms = start.elapsed().as_millis() as u64;
    let collect = |h: Option<tokio::task::JoinHandle<(Vec<u8>, bool)>>| async move {
        let Some(mut h) = h else { return (Vec::new(), false) };
        match tokio::time::timeout(DRAIN_GRACE, &mut h).await {
            Ok(Ok(v)) => v,
            _ => {
                h.abort();
                (Vec::new(), true)
            }
        }
    };
    let ((stdout, stdout_truncated), (stderr, stderr_truncated)) = tokio::join!(collect(out), collect(err));
    // The command ended on its own: whatever it left running in the background stays.
    guard.armed = false;
    let (exit_code, signal) = procs::status_parts(status);
    Ok(json_response(
        StatusCode::OK,
        &ExecResponse {
            exit_code,
            signal,
            stdout_base64: B64.encode(stdout),
            stderr_base64: B64.encode(stderr),
            stdout_truncated,
            stderr_truncated,
            duration_ms,
            timed_out,
        },
    ))
}

fn event_line(ev: &ExecEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

async fn pump<R: AsyncRead + Unpin>(mut r: R, tx: Tx, stderr: bool) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let data = B64.encode(&buf[..n]);
                let ev = if stderr { ExecEvent::Stderr { data } } else { ExecEvent::Stdout { data } };
                if tx.send(Ok(event_line(&ev))).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn run_streaming(state: Arc<State>, mut child: Child, mut p: Prepared, tx: Tx, start: Instant) {
    let root = child.id().map(|p| p as i32).unwrap_or(0);
    state.spawner.register(root, &p.marker);
    let mut guard = TreeGuard { root, marker: p.marker.clone(), spawner: state.spawner.clone(), armed: true };
    feed_stdin(&mut child, p.stdin.take());
    let out = child.stdout.take().map(|o| tokio::spawn(pump(o, tx.clone(), false)));
    let err = child.stderr.take().map(|o| tokio::spawn(pump(o, tx.clone(), true)));
    let (status, timed_out) = tokio::select! {
        r = wait_or_kill(&mut child, p.timeout, root, &p.marker) => r,
        // The client went away: the guard kills the tree.
        () = tx.closed() => return,
    };
    for h in [out, err].into_iter().flatten() {
        let mut h = h;
        if tokio::time::timeout(DRAIN_GRACE, &mut h).await.is_err() {
            h.abort();
        }
    }
    guard.armed = false;
    let ev = match status {
        Ok(st) => {
            let (exit_code, signal) = procs::status_parts(st);
            ExecEvent::Exit { exit_code, signal, timed_out, duration_ms: start.elapsed().as_millis() as u64 }
        }
        Err(e) => ExecEvent::Error { message: format!("wait failed: {e}") },
    };
    let _ = tx.send(Ok(event_line(&ev))).await;
}
