//! `GET /health`, `GET /health/ready` and `GET /metrics`: the routes operators and probes use.

use std::future::Future;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudterm_api_types::{CheckResult, ErrorEnvelope, HealthResponse, ReadinessResponse};

use crate::error::ApiError;
use crate::extract::authenticate;
use crate::state::AppState;

/// Liveness: answers whenever the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = HealthResponse)))]
pub async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// Readiness: the store, snapshot storage, the runtime and identity all answer.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "every dependency is ready", body = ReadinessResponse),
        (status = 503, description = "some dependency is not", body = ReadinessResponse),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let runtime_kind = state.runtime.kind;
    let runtime_config = state.config.clone();
    let checks = vec![
        timed("store", state.store.backend_name(), async { state.store.ping().await.map_err(|err| err.to_string()) })
            .await,
        timed("storage", state.blobs.backend_name(), async {
            state.blobs.check().await.map_err(|err| err.to_string())
        })
        .await,
        timed("runtime", runtime_kind.as_str(), async move {
            let check =
                move || cloudterm_runtime::probe_with(runtime_kind, &|| crate::firecracker::readiness(&runtime_config));
            match tokio::task::spawn_blocking(check).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(err) => Err(format!("runtime probe failed: {err}")),
            }
        })
        .await,
        timed("identity", if state.dev_issuer.is_some() { "dev" } else { "jwks" }, async {
            state.verifier.readiness().await.map_err(|err| err.to_string())
        })
        .await,
    ];
    let all_ok = checks.iter().all(|check| check.ok);
    let status = if all_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = ReadinessResponse { status: if all_ok { "ready" } else { "not_ready" }.into(), checks };
    let mut response = (status, Json(body)).into_response();
    if !all_ok {
        // The body already explains; mark it so the envelope middleware keeps it.
        response.extensions_mut().insert(crate::error::ErrorDetail("readiness check failed".into()));
    }
    response
}

async fn timed(name: &str, backend: &str, check: impl Future<Output = Result<(), String>>) -> CheckResult {
    let started = Instant::now();
    let outcome = check.await;
    CheckResult {
        name: name.into(),
        ok: outcome.is_ok(),
        backend: backend.into(),
        error: outcome.err(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "metrics.require_auth is on and no valid token was sent", body = ErrorEnvelope),
    )
)]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if state.config.metrics.require_auth {
        authenticate(&state, &headers).await?;
    }
    refresh_sandbox_gauges(&state).await;
    let text = state.metrics.encode().map_err(|err| ApiError::Internal(format!("cannot encode metrics: {err}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// Reads every running sandbox's resource use for the per-sandbox gauges. Bounded: a runtime
/// that does not answer within a second leaves that sandbox out of this scrape.
async fn refresh_sandbox_gauges(state: &AppState) {
    let running = state.sandboxes.running_ids();
    let runtime = state.sandboxes.runtime();
    let mut usage = Vec::with_capacity(running.len());
    for id in &running {
        let read = tokio::time::timeout(std::time::Duration::from_secs(1), runtime.usage(id)).await;
        if let Ok(Ok(used)) = read {
            let egress =
                tokio::time::timeout(std::time::Duration::from_secs(1), state.sandboxes.egress_usage(id)).await;
            let egress = egress.ok().flatten();
            if egress.is_some_and(|usage| usage.newly_exceeded) {
                state.metrics.quota_violated(cloudterm_domain::sandboxes::EGRESS);
            }
            let reading = crate::metrics::SandboxUsage {
                memory_bytes: used.memory_bytes,
                cpu_seconds: used.cpu_usec as f64 / 1e6,
                pids: used.pids,
                egress_bytes: egress.map(|usage| usage.bytes),
            };
            usage.push((id.clone(), reading));
        }
    }
    state.metrics.sandboxes().refresh(state.sandboxes.created_total(), running.len(), &usage);
}
