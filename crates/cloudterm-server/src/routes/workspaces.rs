//! The Agent Workspace API: workspaces, sharing, the audit trail, exec delegated to a
//! workspace's sandbox and worker runs. Every permission is checked in the domain
//! (`cloudterm_domain::access`); a non-member gets 404, a member below the level 403.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use cloudterm_api_types::{
    AuditEntry, AuditList, Collaborator, CollaboratorList, CreateWorkspaceRequest, ErrorEnvelope, ExecRequestBody,
    ExecResponseBody, RunWorkerRequest, RunWorkerResponse, ShareRequest, ShareResponse, WorkspaceList,
    WorkspaceResponse,
};
use cloudterm_domain::sandboxes::exec_timeout;
use cloudterm_domain::workspaces::{CreateWorkspace, RunWorker};
use cloudterm_domain::Workspace;
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::quota_warning::QuotaWarning;
use crate::routes::sandboxes::{exec_request, exec_response, run_exec};
use crate::state::AppState;

/// Creates a named workspace owned by the caller.
#[utoipa::path(post, path = "/workspaces", tag = "workspaces", security(("bearer" = [])),
    request_body = CreateWorkspaceRequest,
    responses((status = 201, body = WorkspaceResponse), (status = 401, body = ErrorEnvelope),
        (status = 409, description = "the caller already has a workspace of that name", body = ErrorEnvelope),
        (status = 422, description = "a bad name, tag or description", body = ErrorEnvelope)))]
pub async fn create_workspace(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateWorkspaceRequest>,
) -> Result<(StatusCode, Json<WorkspaceResponse>), ApiError> {
    state.principals.whoami(&caller.principal).await?;
    let request = CreateWorkspace { name: body.name, tags: body.tags, description: body.description };
    let workspace = state.workspaces.create(&caller.principal, request).await?;
    Ok((StatusCode::CREATED, Json(workspace_response(workspace))))
}

/// Query of the workspace list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListWorkspacesQuery {
    /// Only workspaces carrying exactly this tag.
    pub tag: Option<String>,
    /// Also the workspaces shared with the caller, each with the caller's permission.
    #[serde(default)]
    pub include_shared: bool,
}

/// The caller's workspaces (the home workspace first), and with `include_shared=true` those
/// shared with them.
#[utoipa::path(get, path = "/workspaces", tag = "workspaces", security(("bearer" = [])),
    params(ListWorkspacesQuery),
    responses((status = 200, body = WorkspaceList), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 422, description = "a bad tag", body = ErrorEnvelope)))]
pub async fn list_workspaces(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListWorkspacesQuery>,
) -> Result<Json<WorkspaceList>, ApiError> {
    state.principals.whoami(&caller.principal).await?;
    let workspaces = state.workspaces.list(&caller.principal, query.tag.as_deref(), query.include_shared).await?;
    Ok(Json(WorkspaceList { workspaces: workspaces.into_iter().map(workspace_response).collect() }))
}

/// One workspace, with the caller's permission (needs `read`).
#[utoipa::path(get, path = "/workspaces/{id}", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "workspace id")),
    responses((status = 200, body = WorkspaceResponse), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn get_workspace(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(QuotaWarning, Json<WorkspaceResponse>), ApiError> {
    let mut response = workspace_response(state.workspaces.get(&caller.principal, &id).await?);
    let storage = state.workspaces.storage(&caller.principal, &id).await?;
    response.storage = storage.map(|usage| crate::routes::identity::storage_usage(&id, usage));
    Ok((QuotaWarning(storage.and_then(|usage| usage.status())), Json(response)))
}

/// Deletes a workspace with its snapshots, shares and files (needs `admin`). The home
/// workspace, and one a sandbox runs on, cannot be deleted (409).
#[utoipa::path(delete, path = "/workspaces/{id}", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "workspace id")),
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn delete_workspace(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.workspaces.delete(&caller.principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a command in the workspace's sandbox, starting one if none runs (from the workspace's
/// newest snapshot when it has one: installed packages come back). Needs `write`. As
/// `POST /sandboxes/{id}/exec`, including `Accept: text/event-stream`.
#[utoipa::path(post, path = "/workspaces/{id}/exec", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "workspace id")),
    request_body = ExecRequestBody,
    responses((status = 200, description = "the result, or an SSE stream", body = ExecResponseBody),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 429, description = "too many running sandboxes", body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)))]
pub async fn exec_workspace(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExecRequestBody>,
) -> Result<Response, ApiError> {
    state.principals.whoami(&caller.principal).await?;
    let request = exec_request(body)?;
    let sandbox = state.workspaces.exec_target(&caller.principal, &id, &request).await?;
    run_exec(&state, &caller, &sandbox, request, &headers).await
}

/// Grants a collaborator `read`, `write` or `admin` (or changes their grant). Needs `admin`.
#[utoipa::path(post, path = "/workspaces/{id}/share", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "workspace id")),
    request_body = ShareRequest,
    responses((status = 200, body = ShareResponse), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, description = "a bad permission or agent id, or the owner", body = ErrorEnvelope)))]
pub async fn share_workspace(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ShareRequest>,
) -> Result<Json<ShareResponse>, ApiError> {
    let share = state.workspaces.share(&caller.principal, &id, &body.agent_id, &body.permission).await?;
    Ok(Json(ShareResponse { agent_id: share.agent_id, permission: share.permission }))
}

/// Revokes a collaborator. Needs `admin`; the owner cannot be revoked (403).
#[utoipa::path(delete, path = "/workspaces/{id}/share/{agent_id}", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "workspace id"), ("agent_id" = String, Path, description = "the collaborator")),
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, description = "no such workspace, or no such grant", body = ErrorEnvelope)))]
pub async fn revoke_share(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, agent_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.workspaces.revoke(&caller.principal, &id, &agent_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The workspace's owner and grants. Needs `read`.
#[utoipa::path(get, path = "/workspaces/{id}/collaborators", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "workspace id")),
    responses((status = 200, body = CollaboratorList), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn list_collaborators(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CollaboratorList>, ApiError> {
    let workspace = state.workspaces.get(&caller.principal, &id).await?;
    let shares = state.workspaces.collaborators(&caller.principal, &id).await?;
    Ok(Json(CollaboratorList {
        owner: workspace.owner,
        collaborators: shares
            .into_iter()
            .map(|share| Collaborator {
                agent_id: share.agent_id,
                permission: share.permission,
                granted_by: share.granted_by,
                granted_at: share.granted_at,
            })
            .collect(),
    }))
}

/// Who granted and revoked what, and when, oldest first. Needs `admin`.
#[utoipa::path(get, path = "/workspaces/{id}/audit", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "workspace id")),
    responses((status = 200, body = AuditList), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)))]
pub async fn workspace_audit(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AuditList>, ApiError> {
    let entries = state.workspaces.audit(&caller.principal, &id).await?;
    Ok(Json(AuditList {
        entries: entries
            .into_iter()
            .map(|entry| AuditEntry {
                id: entry.id,
                actor: entry.actor,
                action: entry.action,
                subject: entry.subject,
                permission: entry.permission,
                at: entry.at,
            })
            .collect(),
    }))
}

/// Installs a marketplace worker's files into the workspace (`.workers/NAME/`) and runs its
/// command there, in the workspace's sandbox (started on demand). Needs `write`. The body is
/// optional.
#[utoipa::path(post, path = "/workspaces/{id}/workers/{worker_id}/run", tag = "workspaces", security(("bearer" = [])),
    params(("id" = String, Path, description = "workspace id"), ("worker_id" = String, Path, description = "worker id")),
    request_body = RunWorkerRequest,
    responses((status = 200, body = RunWorkerResponse), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, description = "no such workspace, worker or version", body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn run_worker(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, worker_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<RunWorkerResponse>, ApiError> {
    state.principals.whoami(&caller.principal).await?;
    let body: RunWorkerRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunWorkerRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|err| ApiError::Unprocessable(format!("invalid run body: {err}")))?
    };
    let request =
        RunWorker { version: body.version, env: body.env, timeout_ms: Some(exec_timeout(body.timeout_seconds)?) };
    let run = state.workspaces.run_worker(&caller.principal, &id, &worker_id, request).await?;
    Ok(Json(RunWorkerResponse {
        worker_id: run.worker_id,
        name: run.name,
        version: run.version,
        sandbox_id: run.sandbox_id,
        installed_files: run.installed_files,
        result: exec_response(run.result),
    }))
}

fn workspace_response(workspace: Workspace) -> WorkspaceResponse {
    WorkspaceResponse {
        id: workspace.id,
        name: workspace.name,
        owner: workspace.owner,
        tags: workspace.tags,
        description: workspace.description,
        is_home: workspace.is_home,
        permission: workspace.permission.as_str().to_string(),
        created_at: workspace.created_at,
        storage: None,
    }
}
