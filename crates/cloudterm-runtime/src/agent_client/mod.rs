//! The host side of the agent protocol: [`AgentClient`] talks HTTP/1.1 to a sandbox's agent
//! over its [`AgentEndpoint`] (a Unix socket, or Firecracker's hybrid vsock socket after a
//! `CONNECT <port>` handshake). One connection per operation; upgraded streams (PTY, port
//! connect) keep theirs. The client is a cheap `Clone` with no global state, so the server can
//! keep one per sandbox. The request and response types are those of
//! `cloudterm-agent-protocol` (re-exported as [`protocol`]).

mod port;
mod transport;

pub use port::PortStream;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
pub use cloudterm_agent_protocol as protocol;
use cloudterm_agent_protocol::{
    query, ErrorBody, ExecEvent, ExecRequest, ExecResponse, FileInfo, InfoResponse, JobInfo, JobList, JobRequest,
    ListResponse, MkdirRequest, PathResponse, QuiesceResponse, RemoveRequest, RenameRequest, WriteFileResponse,
};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::AgentEndpoint;

/// A bidirectional byte stream after an HTTP upgrade (PTY or TCP port).
pub type UpgradedStream = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// What talking to an agent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent could not be reached (not started yet, gone, or the socket is missing).
    #[error("agent unreachable: {0}")]
    Unreachable(String),
    /// The agent answered something this client does not understand (or an incompatible
    /// protocol version).
    #[error("agent protocol error: {0}")]
    Protocol(String),
    /// The agent refused the request; `status` is the HTTP status it chose (404 not found,
    /// 400 bad input, 409 conflict, ...), which the server can pass on.
    #[error("agent refused ({status}): {code}: {message}")]
    Remote {
        /// HTTP status.
        status: u16,
        /// Stable code (`not_found`, `bad_path`, ...).
        code: String,
        /// Human sentence.
        message: String,
    },
}

/// Result of a buffered exec, with the output decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Exit status; `None` when a signal ended the process.
    pub exit_code: Option<i32>,
    /// The signal that ended the process.
    pub signal: Option<i32>,
    /// Standard output (at most the cap).
    pub stdout: Vec<u8>,
    /// Standard error (at most the cap).
    pub stderr: Vec<u8>,
    /// Standard output was cut at the cap.
    pub stdout_truncated: bool,
    /// Standard error was cut at the cap.
    pub stderr_truncated: bool,
    /// Wall time.
    pub duration_ms: u64,
    /// The timeout killed the process tree.
    pub timed_out: bool,
}

/// One decoded event of a streamed exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// Standard output bytes.
    Stdout(Bytes),
    /// Standard error bytes.
    Stderr(Bytes),
    /// The process ended (last event).
    Exit {
        /// Exit status; `None` when a signal ended it.
        exit_code: Option<i32>,
        /// The signal that ended it.
        signal: Option<i32>,
        /// The timeout fired.
        timed_out: bool,
        /// Wall time.
        duration_ms: u64,
    },
    /// The agent failed mid-stream.
    Error(String),
}

/// A streamed exec; dropping it closes the connection, which makes the agent kill the
/// process tree.
#[derive(Debug)]
pub struct ExecStream {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

impl ExecStream {
    /// The next event; `None` after the exit event (or when the stream ended).
    pub async fn next(&mut self) -> Option<Result<ExecOutput, AgentError>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return Some(decode_event(&line[..line.len() - 1]));
            }
            if self.done {
                if self.buf.is_empty() {
                    return None;
                }
                let line = std::mem::take(&mut self.buf);
                return Some(decode_event(&line));
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(AgentError::Unreachable(format!("exec stream broke: {e}"))));
                }
                None => self.done = true,
            }
        }
    }
}

fn decode_event(line: &[u8]) -> Result<ExecOutput, AgentError> {
    let ev: ExecEvent =
        serde_json::from_slice(line).map_err(|e| AgentError::Protocol(format!("bad exec event: {e}")))?;
    let b64 = |s: &str| B64.decode(s).map(Bytes::from).map_err(|e| AgentError::Protocol(format!("bad base64: {e}")));
    Ok(match ev {
        ExecEvent::Stdout { data } => ExecOutput::Stdout(b64(&data)?),
        ExecEvent::Stderr { data } => ExecOutput::Stderr(b64(&data)?),
        ExecEvent::Exit { exit_code, signal, timed_out, duration_ms } => {
            ExecOutput::Exit { exit_code, signal, timed_out, duration_ms }
        }
        ExecEvent::Error { message } => ExecOutput::Error(message),
    })
}

/// A streamed response body (file download, job logs).
#[derive(Debug)]
pub struct ByteStream {
    body: Incoming,
}

impl ByteStream {
    /// The next chunk; `None` at the end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, AgentError>> {
        loop {
            match self.body.frame().await? {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        return Some(Ok(d));
                    }
                }
                Err(e) => return Some(Err(AgentError::Unreachable(format!("stream broke: {e}")))),
            }
        }
    }

    /// Reads everything (for small bodies and tests).
    pub async fn read_to_end(mut self) -> Result<Vec<u8>, AgentError> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    /// The raw hyper body, e.g. to hand to an HTTP response unchanged.
    pub fn into_incoming(self) -> Incoming {
        self.body
    }
}

/// A job's output from [`AgentClient::job_logs`].
#[derive(Debug)]
pub struct JobLogs {
    /// Logical offset of the first byte of `stream` (past the asked one when older output was
    /// already rotated away).
    pub offset: u64,
    /// The bytes.
    pub stream: ByteStream,
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// A client of one sandbox's agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    endpoint: Arc<AgentEndpoint>,
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full_body(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query::encode(pairs))
    }
}

impl AgentClient {
    /// A client of the agent at `endpoint`. Connects lazily, per operation.
    pub fn new(endpoint: AgentEndpoint) -> Self {
        Self { endpoint: Arc::new(endpoint) }
    }

    /// Where the agent is.
    pub fn endpoint(&self) -> &AgentEndpoint {
        &self.endpoint
    }

    async fn send(&self, req: Request<BoxBody>) -> Result<Response<Incoming>, AgentError> {
        let io = transport::connect(&self.endpoint).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| AgentError::Unreachable(format!("handshake: {e}")))?;
        let conn = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        // If the caller gives up before the answer arrives, the connection must close, so the
        // agent notices and stops the work (an exec is killed when its client goes away).
        // After the answer, dropping the body closes it.
        let guard = AbortOnDrop(Some(conn));
        let resp =
            sender.send_request(req).await.map_err(|e| AgentError::Unreachable(format!("request failed: {e}")))?;
        guard.disarm();
        Ok(resp)
    }

    fn request(method: Method, uri: &str, body: BoxBody) -> Result<Request<BoxBody>, AgentError> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, "agent")
            .body(body)
            .map_err(|e| AgentError::Protocol(format!("building request: {e}")))
    }

    /// Sends and turns a non-2xx answer into [`AgentError::Remote`].
    async fn send_ok(&self, req: Request<BoxBody>) -> Result<Response<Incoming>, AgentError> {
        let resp = self.send(req).await?;
        if resp.status().is_success() || resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => AgentError::Remote { status, code: e.code, message: e.message },
            Err(_) => AgentError::Remote {
                status,
                code: "unknown".into(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            },
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        json: Option<Vec<u8>>,
    ) -> Result<T, AgentError> {
        let body = json.map(full_body).unwrap_or_else(|| full_body(Bytes::new()));
        let mut req = Self::request(method, uri, body)?;
        req.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        let resp = self.send_ok(req).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| AgentError::Unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Protocol(format!("unexpected answer: {e}")))
    }

    fn json<T: serde::Serialize>(v: &T) -> Result<Option<Vec<u8>>, AgentError> {
        serde_json::to_vec(v).map(Some).map_err(|e| AgentError::Protocol(e.to_string()))
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<InfoResponse, AgentError> {
        self.call(Method::GET, protocol::PATH_INFO, None).await
    }

    /// Polls [`Self::info`] until the agent answers or `timeout` passes, then checks that its
    /// protocol version is one this client speaks.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<InfoResponse, AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        let info = loop {
            match tokio::time::timeout_at(deadline, self.info()).await {
                Ok(Ok(i)) => break i,
                Ok(Err(AgentError::Unreachable(e))) => {
                    if tokio::time::Instant::now() + delay >= deadline {
                        return Err(AgentError::Unreachable(format!("not ready after {timeout:?}: {e}")));
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(AgentError::Unreachable(format!("not ready after {timeout:?}"))),
            }
        };
        if !(protocol::MIN_PROTOCOL_VERSION..=protocol::PROTOCOL_VERSION).contains(&info.protocol_version) {
            return Err(AgentError::Protocol(format!(
                "agent speaks protocol {}, this host speaks {}..={}",
                info.protocol_version,
                protocol::MIN_PROTOCOL_VERSION,
                protocol::PROTOCOL_VERSION
            )));
        }
        Ok(info)
    }

    /// `POST /v1/exec`, buffered.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecResult, AgentError> {
        let r: ExecResponse = self.call(Method::POST, protocol::PATH_EXEC, Self::json(req)?).await?;
        let dec = |s: &str| B64.decode(s).map_err(|e| AgentError::Protocol(format!("bad base64: {e}")));
        Ok(ExecResult {
            exit_code: r.exit_code,
            signal: r.signal,
            stdout: dec(&r.stdout_base64)?,
            stderr: dec(&r.stderr_base64)?,
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
            duration_ms: r.duration_ms,
            timed_out: r.timed_out,
        })
    }

    /// `POST /v1/exec`, streamed (`Accept: application/x-ndjson`).
    pub async fn exec_stream(&self, req: &ExecRequest) -> Result<ExecStream, AgentError> {
        let body = serde_json::to_vec(req).map_err(|e| AgentError::Protocol(e.to_string()))?;
        let mut r = Self::request(Method::POST, protocol::PATH_EXEC, full_body(body))?;
        r.headers_mut()
            .insert(hyper::header::ACCEPT, hyper::header::HeaderValue::from_static(protocol::CONTENT_TYPE_NDJSON));
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        let resp = self.send_ok(r).await?;
        Ok(ExecStream { body: resp.into_body(), buf: Vec::new(), done: false })
    }

    /// `GET /v1/files?path=`: the file's bytes, streamed.
    pub async fn read_file(&self, path: &str) -> Result<ByteStream, AgentError> {
        let r =
            Self::request(Method::GET, &with_query(protocol::PATH_FILES, &[("path", path)]), full_body(Bytes::new()))?;
        Ok(ByteStream { body: self.send_ok(r).await?.into_body() })
    }

    /// `PUT /v1/files?path=&mode=`: streams `body` into the file (atomically replaced).
    pub async fn write_file<B>(&self, path: &str, mode: Option<u32>, body: B) -> Result<WriteFileResponse, AgentError>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mode = mode.map(|m| format!("{m:o}"));
        let mut q = vec![("path", path)];
        if let Some(m) = &mode {
            q.push(("mode", m.as_str()));
        }
        let body = body.map_err(Into::into).boxed();
        let r = Self::request(Method::PUT, &with_query(protocol::PATH_FILES, &q), body)?;
        let resp = self.send_ok(r).await?;
        let bytes = resp.into_body().collect().await.map_err(|e| AgentError::Unreachable(e.to_string()))?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Protocol(format!("unexpected answer: {e}")))
    }

    /// [`Self::write_file`] from bytes in memory.
    pub async fn write_file_bytes(
        &self,
        path: &str,
        mode: Option<u32>,
        data: impl Into<Bytes>,
    ) -> Result<WriteFileResponse, AgentError> {
        self.write_file(path, mode, Full::new(data.into())).await
    }

    /// `GET /v1/files/list?path=`.
    pub async fn list(&self, path: &str) -> Result<ListResponse, AgentError> {
        self.call(Method::GET, &with_query(protocol::PATH_FILES_LIST, &[("path", path)]), None).await
    }

    /// `GET /v1/files/stat?path=`.
    pub async fn stat(&self, path: &str) -> Result<FileInfo, AgentError> {
        self.call(Method::GET, &with_query(protocol::PATH_FILES_STAT, &[("path", path)]), None).await
    }

    /// `POST /v1/files/mkdir`.
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<PathResponse, AgentError> {
        let req = MkdirRequest { path: path.to_owned(), parents };
        self.call(Method::POST, protocol::PATH_FILES_MKDIR, Self::json(&req)?).await
    }

    /// `POST /v1/files/remove`.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<PathResponse, AgentError> {
        let req = RemoveRequest { path: path.to_owned(), recursive };
        self.call(Method::POST, protocol::PATH_FILES_REMOVE, Self::json(&req)?).await
    }

    /// `POST /v1/files/rename`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<PathResponse, AgentError> {
        let req = RenameRequest { from: from.to_owned(), to: to.to_owned() };
        self.call(Method::POST, protocol::PATH_FILES_RENAME, Self::json(&req)?).await
    }

    /// `POST /v1/jobs`.
    pub async fn start_job(&self, req: &JobRequest) -> Result<JobInfo, AgentError> {
        self.call(Method::POST, protocol::PATH_JOBS, Self::json(req)?).await
    }

    /// `GET /v1/jobs`.
    pub async fn list_jobs(&self) -> Result<Vec<JobInfo>, AgentError> {
        let l: JobList = self.call(Method::GET, protocol::PATH_JOBS, None).await?;
        Ok(l.jobs)
    }

    /// `GET /v1/jobs/{id}/logs?follow=&offset=`.
    pub async fn job_logs(&self, id: &str, follow: bool, offset: u64) -> Result<JobLogs, AgentError> {
        let path = protocol::PATH_JOB_LOGS.replace("{id}", &query::encode(&[("", id)])[1..]);
        let offset_s = offset.to_string();
        let uri = with_query(&path, &[("follow", if follow { "true" } else { "false" }), ("offset", &offset_s)]);
        let resp = self.send_ok(Self::request(Method::GET, &uri, full_body(Bytes::new()))?).await?;
        let offset = resp
            .headers()
            .get(protocol::HEADER_LOG_OFFSET)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| AgentError::Protocol(format!("missing {} header", protocol::HEADER_LOG_OFFSET)))?;
        Ok(JobLogs { offset, stream: ByteStream { body: resp.into_body() } })
    }

    /// `DELETE /v1/jobs/{id}`: SIGTERM, then SIGKILL after `grace` (default 5 s); returns the
    /// job once it ended.
    pub async fn stop_job(&self, id: &str, grace: Option<Duration>) -> Result<JobInfo, AgentError> {
        let path = protocol::PATH_JOB.replace("{id}", &query::encode(&[("", id)])[1..]);
        let grace_s = grace.map(|g| g.as_millis().to_string());
        let q: Vec<(&str, &str)> = grace_s.as_deref().map(|g| vec![("grace_ms", g)]).unwrap_or_default();
        self.call(Method::DELETE, &with_query(&path, &q), None).await
    }

    async fn upgrade(&self, uri: &str, token: &'static str) -> Result<UpgradedStream, AgentError> {
        Ok(hyper_util::rt::TokioIo::new(self.upgrade_raw(uri, token).await?))
    }

    async fn upgrade_raw(&self, uri: &str, token: &'static str) -> Result<hyper::upgrade::Upgraded, AgentError> {
        let mut r = Self::request(Method::GET, uri, full_body(Bytes::new()))?;
        r.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
        r.headers_mut().insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static(token));
        let resp = self.send_ok(r).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(AgentError::Protocol(format!("expected 101, got {}", resp.status())));
        }
        hyper::upgrade::on(resp).await.map_err(|e| AgentError::Protocol(format!("upgrade failed: {e}")))
    }

    /// `GET /v1/pty` upgraded: a framed terminal stream (see
    /// [`protocol::frame`]). Empty `argv` runs the user's login shell.
    pub async fn pty(&self, cols: u16, rows: u16, argv: &[String]) -> Result<UpgradedStream, AgentError> {
        let (c, r) = (cols.to_string(), rows.to_string());
        let mut q: Vec<(&str, &str)> = vec![("cols", &c), ("rows", &r)];
        q.extend(argv.iter().map(|a| ("argv", a.as_str())));
        self.upgrade(&with_query(protocol::PATH_PTY, &q), protocol::UPGRADE_PTY).await
    }

    /// `GET /v1/connect?port=` upgraded: a byte stream to `127.0.0.1:port` inside the sandbox.
    /// Over a Unix socket the agent hands over its connected socket (`cloudterm-tcp-fd`), so
    /// the bytes do not pass through it; over vsock, or with an agent of protocol 1 (which
    /// answers `upgrade_required`), the bytes are piped through the agent (`cloudterm-tcp`).
    pub async fn connect_port(&self, port: u16) -> Result<PortStream, AgentError> {
        let uri = with_query(protocol::PATH_CONNECT, &[("port", &port.to_string())]);
        if let AgentEndpoint::Unix(_) = *self.endpoint {
            match self.upgrade_raw(&uri, protocol::UPGRADE_TCP_FD).await {
                Ok(upgraded) => {
                    let parts = upgraded
                        .downcast::<hyper_util::rt::TokioIo<tokio::net::UnixStream>>()
                        .map_err(|_| AgentError::Protocol("socket hand-over: not a Unix connection".into()))?;
                    if !parts.read_buf.is_empty() {
                        return Err(AgentError::Protocol("socket hand-over: bytes before the request".into()));
                    }
                    return Ok(PortStream::Socket(port::receive_socket(parts.io.into_inner()).await?));
                }
                Err(AgentError::Remote { code, .. }) if code == "upgrade_required" => {}
                Err(err) => return Err(err),
            }
        }
        Ok(PortStream::Piped(self.upgrade(&uri, protocol::UPGRADE_TCP).await?))
    }

    /// `POST /v1/freeze`: SIGSTOP every process the agent started; returns how many.
    pub async fn freeze(&self) -> Result<u32, AgentError> {
        let r: QuiesceResponse = self.call(Method::POST, protocol::PATH_FREEZE, None).await?;
        Ok(r.processes)
    }

    /// `POST /v1/thaw`: SIGCONT them again.
    pub async fn thaw(&self) -> Result<u32, AgentError> {
        let r: QuiesceResponse = self.call(Method::POST, protocol::PATH_THAW, None).await?;
        Ok(r.processes)
    }

    /// `POST /v1/sync`: flush the sandbox's file systems (before a snapshot).
    pub async fn sync(&self) -> Result<(), AgentError> {
        let _: serde_json::Value = self.call(Method::POST, protocol::PATH_SYNC, None).await?;
        Ok(())
    }
}
