//! The Snapshot API: create, restore, list, delete, pin, download and import. Every route needs
//! a token; another principal's snapshot is "not found".

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudterm_api_types::{
    CreateSnapshotRequest, ErrorEnvelope, PinSnapshotRequest, RestoreSnapshotRequest, RestoreSnapshotResponse,
    SnapshotLayerInfo, SnapshotList, SnapshotResponse,
};
use cloudterm_domain::snapshots::{CreateSnapshot, RestoreSnapshot, Snapshot, SnapshotKind};
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::state::AppState;

/// Snapshots a workspace while its sandboxes keep running (they are frozen while it is read).
/// Answers once the snapshot is durably stored.
#[utoipa::path(post, path = "/snapshot/create", tag = "snapshots", security(("bearer" = [])),
    request_body = CreateSnapshotRequest,
    responses(
        (status = 201, body = SnapshotResponse),
        (status = 401, body = ErrorEnvelope), (status = 404, description = "unknown sandbox or workspace", body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 503, description = "storage failed; nothing was kept", body = ErrorEnvelope),
    ))]
pub async fn create_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<SnapshotResponse>), ApiError> {
    state.principals.whoami(&caller.principal).await?;
    let request = CreateSnapshot {
        sandbox_id: body.sandbox_id,
        workspace_id: body.workspace_id,
        label: body.label,
        pinned: body.pinned,
    };
    let started = std::time::Instant::now();
    let snapshot = state.snapshots.create(&caller.principal, request, SnapshotKind::Manual).await;
    state.metrics.snapshot_took("create", started);
    let snapshot = state.metrics.snapshot_created(snapshot)?;
    Ok((StatusCode::CREATED, Json(snapshot_response(snapshot))))
}

/// Restores a snapshot into a workspace (its own by default): extracted and verified beside it,
/// then swapped in atomically. Running sandboxes on the workspace see the restored files.
#[utoipa::path(post, path = "/snapshot/restore", tag = "snapshots", security(("bearer" = [])),
    request_body = RestoreSnapshotRequest,
    responses(
        (status = 200, body = RestoreSnapshotResponse),
        (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 422, description = "the archive holds something unsafe", body = ErrorEnvelope),
        (status = 503, description = "storage failed or the stored bytes do not verify; the workspace is unchanged", body = ErrorEnvelope),
    ))]
pub async fn restore_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RestoreSnapshotRequest>,
) -> Result<Json<RestoreSnapshotResponse>, ApiError> {
    let request =
        RestoreSnapshot { snapshot_id: body.snapshot_id, sandbox_id: body.sandbox_id, workspace_id: body.workspace_id };
    let started = std::time::Instant::now();
    let restored = state.snapshots.restore(&caller.principal, request).await;
    state.metrics.snapshot_took("restore", started);
    let restored = restored?;
    state.metrics.snapshot_restored();
    Ok(Json(RestoreSnapshotResponse {
        snapshot_id: restored.snapshot_id,
        workspace_id: restored.workspace_id,
        restored_files: restored.restored_files,
    }))
}

/// `?workspace_id=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this workspace's snapshots.
    pub workspace_id: Option<String>,
}

/// The caller's snapshots, newest first.
#[utoipa::path(get, path = "/snapshot/list", tag = "snapshots", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = SnapshotList), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn list_snapshots(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<SnapshotList>, ApiError> {
    state.principals.whoami(&caller.principal).await?;
    let snapshots = state.snapshots.list(&caller.principal, query.workspace_id.as_deref()).await?;
    Ok(Json(SnapshotList { snapshots: snapshots.into_iter().map(snapshot_response).collect() }))
}

/// One snapshot.
#[utoipa::path(get, path = "/snapshot/{snapshot_id}", tag = "snapshots", security(("bearer" = [])),
    params(("snapshot_id" = String, Path, description = "snapshot id")),
    responses((status = 200, body = SnapshotResponse), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn get_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SnapshotResponse>, ApiError> {
    Ok(Json(snapshot_response(state.snapshots.get(&caller.principal, &id).await?)))
}

/// Deletes a snapshot from storage and from the list.
#[utoipa::path(delete, path = "/snapshot/{snapshot_id}", tag = "snapshots", security(("bearer" = [])),
    params(("snapshot_id" = String, Path, description = "snapshot id")),
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn delete_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.snapshots.delete(&caller.principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pins (exempt from retention) or unpins a snapshot.
#[utoipa::path(post, path = "/snapshot/{snapshot_id}/pin", tag = "snapshots", security(("bearer" = [])),
    params(("snapshot_id" = String, Path, description = "snapshot id")),
    request_body = PinSnapshotRequest,
    responses((status = 200, body = SnapshotResponse), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn pin_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PinSnapshotRequest>,
) -> Result<Json<SnapshotResponse>, ApiError> {
    Ok(Json(snapshot_response(state.snapshots.set_pinned(&caller.principal, &id, body.pinned).await?)))
}

/// The archive as stored, streamed: a `.tar.zst` (`tar --zstd -x` reads it) unless encrypted.
#[utoipa::path(get, path = "/snapshot/{snapshot_id}/download", tag = "snapshots", security(("bearer" = [])),
    params(("snapshot_id" = String, Path, description = "snapshot id")),
    responses((status = 200, description = "the stored archive", content_type = "application/zstd", body = Vec<u8>),
        (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn download_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (snapshot, reader) = state.snapshots.download(&caller.principal, &id).await?;
    let (content_type, extension) = if snapshot.encrypted {
        ("application/octet-stream", "tar.zst.sealed")
    } else {
        ("application/zstd", "tar.zst")
    };
    let headers = [
        (header::CONTENT_TYPE, content_type.to_string()),
        (header::CONTENT_LENGTH, reader.size_bytes().to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}.{extension}\"", snapshot.id)),
        (header::ETAG, format!("\"{}\"", snapshot.sha256)),
    ];
    Ok((headers, Body::from_stream(ReaderStream::with_capacity(reader, 256 << 10))).into_response())
}

/// `?workspace_id=&label=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// The workspace the snapshot belongs to (default: the caller's home workspace).
    pub workspace_id: Option<String>,
    /// A label.
    pub label: Option<String>,
}

/// Turns an uploaded `.tar.zst` into a snapshot. The archive is checked as strictly as any
/// restore (no absolute paths, `..`, escaping links, devices, setuid bits) before it is kept.
#[utoipa::path(post, path = "/snapshot/import", tag = "snapshots", security(("bearer" = [])),
    params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/zstd", description = "a .tar.zst archive"),
    responses((status = 201, body = SnapshotResponse), (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, description = "not a safe .tar.zst", body = ErrorEnvelope)))]
pub async fn import_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ImportQuery>,
    body: Body,
) -> Result<(StatusCode, Json<SnapshotResponse>), ApiError> {
    state.principals.whoami(&caller.principal).await?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = StreamReader::new(stream);
    let started = std::time::Instant::now();
    let snapshot = state.snapshots.import(&caller.principal, query.workspace_id.as_deref(), query.label, reader).await;
    state.metrics.snapshot_took("import", started);
    let snapshot = state.metrics.snapshot_created(snapshot)?;
    Ok((StatusCode::CREATED, Json(snapshot_response(snapshot))))
}

fn snapshot_response(snapshot: Snapshot) -> SnapshotResponse {
    SnapshotResponse {
        snapshot_id: snapshot.id,
        workspace_id: snapshot.workspace_id,
        label: snapshot.label,
        size_bytes: snapshot.size_bytes,
        stored_bytes: snapshot.stored_bytes,
        file_count: snapshot.file_count,
        sha256: snapshot.sha256,
        kind: snapshot.kind,
        pinned: snapshot.pinned,
        encrypted: snapshot.encrypted,
        layer: snapshot.layer.map(|layer| SnapshotLayerInfo {
            image: layer.image,
            size_bytes: layer.size_bytes,
            stored_bytes: layer.stored_bytes,
            file_count: layer.file_count,
            sha256: layer.sha256,
        }),
        created_at: snapshot.created_at,
    }
}
