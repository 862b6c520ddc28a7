//! The Sandbox API: lifecycle, exec (buffered and SSE), files, keepalive, mounts and
//! background jobs. Every route needs a token; another principal's sandbox is "not found".

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use cloudterm_agent_protocol::{ExecRequest, JobInfo, JobRequest, JobState};
use cloudterm_api_types::{
    BackgroundRequest, CreateSandboxRequest, ErrorEnvelope, ExecRequestBody, ExecResponseBody, FileEntry, FileList,
    FileWritten, JobList, JobResponse, KeepaliveRequest, KeepaliveResponse, MountRequest, MountResponse, SandboxEgress,
    SandboxLimits, SandboxList, SandboxResponse, WriteFileRequest,
};
use cloudterm_domain::sandboxes::{exec_timeout, Busy};
use cloudterm_domain::{Access, CreateSandbox, Sandbox};
use cloudterm_runtime::{ByteStream, ExecOutput, ExecResult, Limits};
use futures_util::stream::{self, Stream};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::quota_warning::{EgressWarning, QuotaWarning};
use crate::state::AppState;

/// Creates and starts a sandbox; answers once its agent is ready.
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes", security(("bearer" = [])),
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, body = SandboxResponse),
        (status = 401, body = ErrorEnvelope), (status = 404, description = "unknown workspace or snapshot", body = ErrorEnvelope),
        (status = 422, description = "invalid limits, TTL, env or image", body = ErrorEnvelope),
        (status = 429, description = "too many running sandboxes", body = ErrorEnvelope),
        (status = 503, description = "the runtime failed", body = ErrorEnvelope),
    ))]
pub async fn create_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, QuotaWarning, Json<SandboxResponse>), ApiError> {
    // The home workspace must exist before a sandbox can default to it.
    state.principals.whoami(&caller.principal).await?;
    let limits = body.limits.unwrap_or_default();
    let request = CreateSandbox {
        image: body.image,
        env: body.env,
        timeout_seconds: body.timeout_seconds,
        limits: Limits { memory_mb: limits.memory_mb, cpus: limits.cpus, pids: limits.pids, disk_mb: limits.disk_mb },
        workspace_id: body.workspace_id,
        metadata: body.metadata,
    };
    let sandbox = match body.snapshot_id {
        Some(snapshot) => {
            let started = state.snapshots.start_sandbox(&caller.principal, &snapshot, request).await?;
            state.metrics.snapshot_restored();
            started
        }
        None => state.sandboxes.create(&caller.principal, request).await?,
    };
    let warning = QuotaWarning(Some(state.sandboxes.sandbox_quota(caller.principal.id())));
    Ok((StatusCode::CREATED, warning, Json(sandbox_response(sandbox))))
}

/// `GET /sandboxes` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListSandboxesQuery {
    /// Also list the running sandboxes others started on workspaces the caller owns or that
    /// are shared with the caller, and every entry's `permission`.
    #[serde(default)]
    pub include_shared: bool,
}

/// The caller's sandboxes; with `include_shared=true` also the running ones collaborators
/// started on the caller's own workspaces and on workspaces shared with the caller, each with
/// the caller's `permission`.
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes", security(("bearer" = [])), params(ListSandboxesQuery),
    responses((status = 200, body = SandboxList), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)))]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListSandboxesQuery>,
) -> Result<Json<SandboxList>, ApiError> {
    let owned = state.sandboxes.list(&caller.principal).await?;
    if !query.include_shared {
        return Ok(Json(SandboxList { sandboxes: owned.into_iter().map(sandbox_response).collect() }));
    }
    let with_permission = |sandbox, access: Access| SandboxResponse {
        permission: Some(access.as_str().to_string()),
        ..sandbox_response(sandbox)
    };
    let mut sandboxes: Vec<SandboxResponse> =
        owned.into_iter().map(|sandbox| with_permission(sandbox, Access::Owner)).collect();
    for (sandbox, access) in state.sandboxes.list_shared(&caller.principal).await? {
        sandboxes.push(with_permission(sandbox, access));
    }
    Ok(Json(SandboxList { sandboxes }))
}

/// One sandbox.
#[utoipa::path(get, path = "/sandboxes/{id}", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    responses((status = 200, body = SandboxResponse), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn get_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(EgressWarning, Json<SandboxResponse>), ApiError> {
    let mut response = sandbox_response(state.sandboxes.get(&caller.principal, &id).await?);
    let egress = state.sandboxes.egress_usage(&id).await;
    response.egress =
        egress.map(|usage| SandboxEgress { bytes: usage.bytes, limit_bytes: usage.limit_bytes, cut: usage.exceeded });
    Ok((EgressWarning(egress), Json(response)))
}

/// Stops the sandbox and removes it; its workspace stays.
#[utoipa::path(delete, path = "/sandboxes/{id}", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn delete_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.sandboxes.delete(&caller.principal, &id).await?;
    state.metrics.sandboxes().sandbox_deleted(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a command. With `Accept: text/event-stream` the output streams as `stdout`, `stderr`
/// and `exit` events.
#[utoipa::path(post, path = "/sandboxes/{id}/exec", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    request_body = ExecRequestBody,
    responses(
        (status = 200, description = "the result, or an SSE stream", body = ExecResponseBody),
        (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the sandbox is not running", body = ErrorEnvelope),
        (status = 422, description = "no command, or a bad timeout", body = ErrorEnvelope),
    ))]
pub async fn exec_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExecRequestBody>,
) -> Result<Response, ApiError> {
    let request = exec_request(body)?;
    run_exec(&state, &caller, &id, request, &headers).await
}

/// Runs a command in sandbox `id` for the caller, as JSON or as an SSE stream, counting it in
/// the exec metrics and answering `X-Quota-Warning`: the one exec path of the sandbox and
/// workspace routes.
pub(crate) async fn run_exec(
    state: &AppState,
    caller: &Caller,
    id: &str,
    request: ExecRequest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let program = crate::metrics::program_name(request.argv.as_deref(), request.command.as_deref());
    if wants_event_stream(headers) {
        let busy = state.sandboxes.exec_stream(&caller.principal, id, request).await?;
        state.metrics.sandboxes().exec_started(id, &program);
        let warning = QuotaWarning(state.sandboxes.exec_quota(&caller.principal, id));
        let storage = QuotaWarning(state.sandboxes.storage_quota_of_sandbox(id).await);
        let egress = EgressWarning(state.sandboxes.egress_warning(id).await);
        return Ok(
            (warning, storage, egress, Sse::new(exec_events(busy)).keep_alive(KeepAlive::default())).into_response()
        );
    }
    let started = std::time::Instant::now();
    let result = state.sandboxes.exec(&caller.principal, id, request).await?;
    state.metrics.sandboxes().exec_started(id, &program);
    state.metrics.sandboxes().exec_finished(&program, started.elapsed().as_secs_f64());
    let warning = QuotaWarning(state.sandboxes.exec_quota(&caller.principal, id));
    let storage = QuotaWarning(state.sandboxes.storage_quota_of_sandbox(id).await);
    // Read after the command: what it sent is what the warning should tell.
    let egress = EgressWarning(state.sandboxes.egress_warning(id).await);
    Ok((warning, storage, egress, Json(exec_response(result))).into_response())
}

/// Writes a file from JSON (`content` or `content_base64`).
#[utoipa::path(post, path = "/sandboxes/{id}/files", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    request_body = WriteFileRequest,
    responses((status = 201, body = FileWritten), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 429, description = "the workspace's storage limit", body = ErrorEnvelope)))]
pub async fn write_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<WriteFileRequest>,
) -> Result<(StatusCode, QuotaWarning, Json<FileWritten>), ApiError> {
    let data = match (body.content, body.content_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(encoded)) => Bytes::from(
            B64.decode(encoded.trim()).map_err(|err| ApiError::Unprocessable(format!("content_base64: {err}")))?,
        ),
        _ => return Err(ApiError::Unprocessable("give exactly one of content and content_base64".into())),
    };
    let written = state.sandboxes.write_file(&caller.principal, &id, &body.path, body.mode, data).await?;
    let warning = QuotaWarning(state.sandboxes.storage_quota_of_sandbox(&id).await);
    Ok((StatusCode::CREATED, warning, Json(FileWritten { path: written.path, size: written.size })))
}

/// Query of the directory listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// Directory to list (default `/workspace`).
    pub path: Option<String>,
}

/// Query of a raw upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Permission bits, octal (`755`).
    pub mode: Option<String>,
}

/// Lists a directory.
#[utoipa::path(get, path = "/sandboxes/{id}/files", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id"), FileQuery),
    responses((status = 200, body = FileList), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<Json<FileList>, ApiError> {
    let path = query.path.unwrap_or_else(|| ".".into());
    let listing = state.sandboxes.list_files(&caller.principal, &id, &path).await?;
    Ok(Json(FileList {
        path: listing.path,
        entries: listing
            .entries
            .into_iter()
            .map(|entry| FileEntry {
                name: entry.name,
                file_type: serde_json::to_value(entry.file_type)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "other".into()),
                size: entry.size,
                mode: entry.mode,
                modified_at: entry.modified_at,
            })
            .collect(),
    }))
}

/// Uploads raw bytes into a file, streamed (never held whole in memory). The path is
/// relative to `/workspace`; start it with `/` (`files//etc/x`) for an absolute path.
#[utoipa::path(put, path = "/sandboxes/{id}/files/{*path}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id"), ("path" = String, Path, description = "file path"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = FileWritten), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 429, description = "the workspace's storage limit", body = ErrorEnvelope)))]
pub async fn upload_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Body,
) -> Result<(StatusCode, QuotaWarning, Json<FileWritten>), ApiError> {
    let mode = match query.mode {
        Some(text) => Some(
            u32::from_str_radix(&text, 8).map_err(|_| ApiError::BadRequest(format!("mode {text:?} is not octal")))?,
        ),
        None => None,
    };
    let written = state.sandboxes.write_file_stream(&caller.principal, &id, &path, mode, SyncBody::new(body)).await?;
    let warning = QuotaWarning(state.sandboxes.storage_quota_of_sandbox(&id).await);
    Ok((StatusCode::CREATED, warning, Json(FileWritten { path: written.path, size: written.size })))
}

/// Downloads a file, streamed.
#[utoipa::path(get, path = "/sandboxes/{id}/files/{*path}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id"), ("path" = String, Path, description = "file path")),
    responses((status = 200, description = "the file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn download_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let busy = state.sandboxes.read_file(&caller.principal, &id, &path).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(byte_stream(busy))).into_response())
}

/// Freezes every process of the sandbox: it keeps its memory, files and terminal sessions and
/// uses no CPU. The next operation that reaches it (exec, files, terminal, preview) or `/resume`
/// thaws it. Needs `write`.
#[utoipa::path(post, path = "/sandboxes/{id}/pause", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    responses((status = 200, body = SandboxResponse, description = "the sandbox, now `paused`"),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "not running, or a runtime that cannot pause (process)")))]
pub async fn pause_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SandboxResponse>, ApiError> {
    Ok(Json(sandbox_response(state.sandboxes.pause(&caller.principal, &id).await?)))
}

/// Thaws a paused sandbox; a running one is left as it is. Needs `write`.
#[utoipa::path(post, path = "/sandboxes/{id}/resume", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    responses((status = 200, body = SandboxResponse, description = "the sandbox, now `running`"),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "not running or paused")))]
pub async fn resume_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SandboxResponse>, ApiError> {
    Ok(Json(sandbox_response(state.sandboxes.resume(&caller.principal, &id).await?)))
}

/// Restarts the idle clock, optionally with a new TTL.
#[utoipa::path(post, path = "/sandboxes/{id}/keepalive", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    request_body = KeepaliveRequest,
    responses((status = 200, body = KeepaliveResponse), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope)))]
pub async fn keepalive_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<KeepaliveResponse>, ApiError> {
    // The body is optional: an empty one keeps the sandbox's own TTL.
    let timeout = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let request: KeepaliveRequest = serde_json::from_slice(&body)
            .map_err(|err| ApiError::Unprocessable(format!("invalid keepalive body: {err}")))?;
        request.timeout_seconds
    };
    let expires_at = state.sandboxes.keepalive(&caller.principal, &id, timeout).await?;
    Ok(Json(KeepaliveResponse { expires_at }))
}

/// Exposes a host directory from the operator's allow-list inside the sandbox.
#[utoipa::path(post, path = "/sandboxes/{id}/mount", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    request_body = MountRequest,
    responses((status = 201, body = MountResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "host_path is not allowed", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the runtime cannot mount", body = ErrorEnvelope)))]
pub async fn mount_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MountRequest>,
) -> Result<(StatusCode, Json<MountResponse>), ApiError> {
    let mount = state.sandboxes.mount(&caller.principal, &id, &body.host_path, &body.target, body.read_only).await?;
    Ok((
        StatusCode::CREATED,
        Json(MountResponse {
            host_path: mount.host_path.display().to_string(),
            target: mount.target.display().to_string(),
            read_only: mount.read_only,
        }),
    ))
}

/// Starts a background job whose output outlives this request.
#[utoipa::path(post, path = "/sandboxes/{id}/background", tag = "background", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    request_body = BackgroundRequest,
    responses((status = 201, body = JobResponse), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)))]
pub async fn start_background(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BackgroundRequest>,
) -> Result<(StatusCode, QuotaWarning, EgressWarning, Json<JobResponse>), ApiError> {
    let request = JobRequest { argv: body.argv, command: body.command, cwd: body.cwd, env: body.env };
    let job = state.sandboxes.start_job(&caller.principal, &id, request).await?;
    let warning = QuotaWarning(state.sandboxes.exec_quota(&caller.principal, &id));
    let egress = EgressWarning(state.sandboxes.egress_warning(&id).await);
    Ok((StatusCode::CREATED, warning, egress, Json(job_response(job))))
}

/// The sandbox's background jobs.
#[utoipa::path(get, path = "/sandboxes/{id}/background", tag = "background", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    responses((status = 200, body = JobList), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn list_background(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobList>, ApiError> {
    let jobs = state.sandboxes.list_jobs(&caller.principal, &id).await?;
    Ok(Json(JobList { jobs: jobs.into_iter().map(job_response).collect() }))
}

/// Query of the logs route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep streaming until the job exits.
    #[serde(default)]
    pub follow: bool,
    /// Start at this byte of the output.
    #[serde(default)]
    pub offset: u64,
}

/// A job's output so far (`?follow=true` streams until it exits).
#[utoipa::path(get, path = "/sandboxes/{id}/background/{job_id}/logs", tag = "background", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id"), ("job_id" = String, Path, description = "job id"), LogsQuery),
    responses((status = 200, description = "stdout and stderr as produced", content_type = "text/plain", body = String),
        (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn background_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, job_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let busy = state.sandboxes.job_logs(&caller.principal, &id, &job_id, query.follow, query.offset).await?;
    let offset = busy.value.offset;
    let Busy { guard, value } = busy;
    let body = Body::from_stream(byte_stream(Busy { guard, value: value.stream }));
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
            (header::HeaderName::from_static("x-log-offset"), offset.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Stops a job: SIGTERM, then SIGKILL after a grace period.
#[utoipa::path(delete, path = "/sandboxes/{id}/background/{job_id}", tag = "background", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id"), ("job_id" = String, Path, description = "job id")),
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn stop_background(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, job_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.sandboxes.stop_job(&caller.principal, &id, &job_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn sandbox_response(sandbox: Sandbox) -> SandboxResponse {
    SandboxResponse {
        id: sandbox.id,
        state: sandbox.state,
        runtime: sandbox.runtime,
        workspace_id: sandbox.workspace_id,
        image: sandbox.image,
        created_at: sandbox.created_at,
        expires_at: sandbox.expires_at,
        timeout_seconds: sandbox.timeout_seconds,
        limits: SandboxLimits {
            memory_mb: sandbox.limits.memory_mb,
            cpus: sandbox.limits.cpus,
            pids: sandbox.limits.pids,
            disk_mb: sandbox.limits.disk_mb,
        },
        metadata: sandbox.metadata,
        permission: None,
        egress: None,
    }
}

pub(crate) fn exec_request(body: ExecRequestBody) -> Result<ExecRequest, ApiError> {
    let stdin_base64 = match (body.stdin, body.stdin_base64) {
        (Some(_), Some(_)) => return Err(ApiError::Unprocessable("give stdin or stdin_base64, not both".into())),
        (Some(text), None) => Some(B64.encode(text)),
        (None, Some(encoded)) => {
            B64.decode(encoded.trim()).map_err(|err| ApiError::Unprocessable(format!("stdin_base64: {err}")))?;
            Some(encoded)
        }
        (None, None) => None,
    };
    Ok(ExecRequest {
        argv: body.argv,
        command: body.command,
        cwd: body.cwd,
        env: body.env,
        stdin_base64,
        timeout_ms: Some(exec_timeout(body.timeout_seconds)?),
        max_output_bytes: None,
    })
}

/// A shell's convention: 128 + N when signal N ended the process.
fn exit_code(code: Option<i32>, signal: Option<i32>) -> i32 {
    code.unwrap_or_else(|| 128 + signal.unwrap_or(0))
}

pub(crate) fn exec_response(result: ExecResult) -> ExecResponseBody {
    ExecResponseBody {
        exit_code: exit_code(result.exit_code, result.signal),
        stdout: String::from_utf8_lossy(&result.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&result.stderr).into_owned(),
        duration_ms: result.duration_ms,
        timed_out: result.timed_out,
        stdout_truncated: result.stdout_truncated,
        stderr_truncated: result.stderr_truncated,
    }
}

fn job_response(job: JobInfo) -> JobResponse {
    let state = match job.state {
        JobState::Running => "running",
        JobState::Exited => "exited",
        JobState::Stopped => "stopped",
    };
    JobResponse {
        job_id: job.job_id,
        command: job.command,
        state: state.into(),
        exit_code: match job.state {
            JobState::Running => None,
            _ => Some(exit_code(job.exit_code, job.signal)),
        },
        started_at: job.started_at,
        ended_at: job.ended_at,
    }
}

pub(crate) fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("text/event-stream"))
}

/// Splits bytes into text without cutting a UTF-8 character in two across chunks.
#[derive(Default)]
struct Utf8Chunker {
    pending: Vec<u8>,
}

impl Utf8Chunker {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for the next chunk; invalid bytes
            // elsewhere are replaced.
            Err(err) if err.error_len().is_none() => err.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(valid);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }
}

/// The SSE events of a streamed exec: `stdout`, `stderr`, then `exit` with a JSON body.
pub(crate) fn exec_events(
    busy: Busy<cloudterm_runtime::ExecStream>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let state = (busy, Utf8Chunker::default(), Utf8Chunker::default(), false);
    stream::unfold(state, |(mut busy, mut out, mut err, finished)| async move {
        if finished {
            return None;
        }
        loop {
            let event = match busy.value.next().await {
                Some(Ok(ExecOutput::Stdout(bytes))) => {
                    let text = out.push(&bytes);
                    if text.is_empty() {
                        continue;
                    }
                    Event::default().event("stdout").data(text)
                }
                Some(Ok(ExecOutput::Stderr(bytes))) => {
                    let text = err.push(&bytes);
                    if text.is_empty() {
                        continue;
                    }
                    Event::default().event("stderr").data(text)
                }
                Some(Ok(ExecOutput::Exit { exit_code: code, signal, timed_out, duration_ms })) => {
                    let body = serde_json::json!({"exit_code": exit_code(code, signal), "timed_out": timed_out, "duration_ms": duration_ms});
                    return Some((Ok(Event::default().event("exit").data(body.to_string())), (busy, out, err, true)));
                }
                Some(Ok(ExecOutput::Error(message))) => Event::default().event("error").data(message),
                Some(Err(error)) => Event::default().event("error").data(error.to_string()),
                None => return None,
            };
            return Some((Ok(event), (busy, out, err, false)));
        }
    })
}

/// A response body from the agent's stream, holding the sandbox busy until it ends.
fn byte_stream(busy: Busy<ByteStream>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    stream::unfold(busy, |mut busy| async move {
        match busy.value.chunk().await? {
            Ok(bytes) => Some((Ok(bytes), busy)),
            Err(err) => Some((Err(std::io::Error::other(err.to_string())), busy)),
        }
    })
}

/// An axum request body made `Sync`, as the agent client's streaming upload wants. The
/// body is only ever polled from one task, so the wrapper costs nothing.
struct SyncBody(sync_wrapper::SyncWrapper<Body>);

impl SyncBody {
    fn new(body: Body) -> Self {
        SyncBody(sync_wrapper::SyncWrapper::new(body))
    }
}

impl http_body::Body for SyncBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(self.0.get_mut()).poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_characters_are_not_cut_between_chunks() {
        let mut chunker = Utf8Chunker::default();
        let snowman = "☃".as_bytes();
        assert_eq!(chunker.push(&snowman[..1]), "");
        assert_eq!(chunker.push(&snowman[1..]), "☃");
        assert_eq!(chunker.push(b"ok\xff!"), "ok\u{fffd}!");
    }

    #[test]
    fn signals_become_shell_exit_codes() {
        assert_eq!(exit_code(Some(3), None), 3);
        assert_eq!(exit_code(None, Some(9)), 137);
    }
}
