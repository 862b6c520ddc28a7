//! The worker marketplace: publish, search and show. Any authenticated principal may search
//! and publish; only a worker's author publishes its new versions.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cloudterm_api_types::{
    ErrorEnvelope, PublishRequest, PublishResponse, WorkerHit, WorkerResponse, WorkerSearchResponse,
    WorkerVersionResponse,
};
use cloudterm_domain::marketplace::{PublishWorker, WorkerFile, WorkerVersion};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::state::AppState;

/// Publishes a version of a worker: a new worker (the caller becomes its author) or a new
/// version of the caller's own. Versions are immutable.
#[utoipa::path(post, path = "/marketplace/publish", tag = "marketplace", security(("bearer" = [])),
    request_body = PublishRequest,
    responses((status = 201, body = PublishResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "the name belongs to another author", body = ErrorEnvelope),
        (status = 409, description = "this version is already published", body = ErrorEnvelope),
        (status = 422, description = "a bad name, version (not semver), tag, command or file", body = ErrorEnvelope)))]
pub async fn publish_worker(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PublishRequest>,
) -> Result<(StatusCode, Json<PublishResponse>), ApiError> {
    let mut files = Vec::with_capacity(body.files.len());
    for file in body.files {
        let data = match (file.content, file.content_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => B64
                .decode(encoded.trim())
                .map_err(|err| ApiError::Unprocessable(format!("content_base64 of {:?}: {err}", file.path)))?,
            _ => {
                return Err(ApiError::Unprocessable(format!(
                    "file {:?}: give exactly one of content and content_base64",
                    file.path
                )))
            }
        };
        files.push(WorkerFile { path: file.path, data, mode: file.mode });
    }
    let request = PublishWorker {
        name: body.name,
        version: body.version,
        description: body.description,
        tags: body.tags,
        command: body.command,
        files,
    };
    let published = state.marketplace.publish(&caller.principal, request).await?;
    Ok((
        StatusCode::CREATED,
        Json(PublishResponse {
            worker_id: published.worker_id,
            name: published.name,
            version: published.version,
            author: published.author,
        }),
    ))
}

/// Query of the search.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Free text; each word matches as a prefix in names, tags and descriptions (any word).
    pub q: Option<String>,
    /// Only workers whose latest version carries exactly this tag.
    pub tag: Option<String>,
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
}

/// Ranked full-text search over names, descriptions and tags; without `q`, the most recently
/// published first.
#[utoipa::path(get, path = "/marketplace/search", tag = "marketplace", security(("bearer" = [])),
    params(SearchQuery),
    responses((status = 200, body = WorkerSearchResponse), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 422, description = "a bad limit or tag", body = ErrorEnvelope)))]
pub async fn search_workers(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<WorkerSearchResponse>, ApiError> {
    let found = state.marketplace.search(query.q.as_deref(), query.tag.as_deref(), query.limit).await?;
    Ok(Json(WorkerSearchResponse {
        workers: found
            .into_iter()
            .map(|hit| WorkerHit {
                worker_id: hit.id,
                name: hit.name,
                author: hit.author,
                version: hit.latest.version,
                description: hit.latest.description,
                tags: hit.latest.tags,
                score: hit.score,
            })
            .collect(),
    }))
}

/// A worker with every version, newest first.
#[utoipa::path(get, path = "/marketplace/{worker_id}", tag = "marketplace", security(("bearer" = [])),
    params(("worker_id" = String, Path, description = "worker id")),
    responses((status = 200, body = WorkerResponse), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn get_worker(
    State(state): State<AppState>,
    _caller: Caller,
    Path(worker_id): Path<String>,
) -> Result<Json<WorkerResponse>, ApiError> {
    let worker = state.marketplace.get(&worker_id).await?;
    Ok(Json(WorkerResponse {
        worker_id: worker.id,
        name: worker.name,
        author: worker.author,
        created_at: worker.created_at,
        latest_version: worker.versions.first().map(|v| v.version.clone()),
        versions: worker.versions.into_iter().map(version_response).collect(),
    }))
}

fn version_response(version: WorkerVersion) -> WorkerVersionResponse {
    WorkerVersionResponse {
        version: version.version,
        description: version.description,
        tags: version.tags,
        command: version.command,
        has_files: version.has_files,
        created_at: version.created_at,
    }
}
