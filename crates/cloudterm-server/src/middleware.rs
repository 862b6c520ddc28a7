//! The HTTP plumbing every service shares: request ids, tracing, timeouts, body limits,
//! panics caught, metrics, and the JSON envelope on every error answer.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::{ApiError, ErrorDetail};
use crate::metrics::track_http;
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps a router in the shared middleware stack (outermost first: request id, tracing,
/// envelope, metrics, panic catching, timeout, body limit).
pub fn wrap(router: Router<AppState>, state: &AppState) -> Router {
    let timeout = state.config.request_timeout();
    let max_body = usize::try_from(state.config.http.max_body_bytes).unwrap_or(usize::MAX);
    router
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        .layer(CatchPanicLayer::custom(|_| ApiError::Internal("handler panicked".into()).into_response()))
        .layer(middleware::from_fn_with_state(state.clone(), track_http))
        .layer(middleware::from_fn(ensure_json_errors))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %request_id)
                })
                .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
        )
        .layer(SetSensitiveRequestHeadersLayer::new([axum::http::header::AUTHORIZATION]))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state.clone())
}

/// Answers 408 when a request runs longer than `http.request_timeout_seconds`, except on the
/// routes that stream or bound their own run time (exec, file transfers, followed logs),
/// listed in `router::UNTIMED_ROUTES`.
async fn request_timeout(State(timeout): State<std::time::Duration>, request: Request, next: Next) -> Response {
    let untimed = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|path| crate::router::UNTIMED_ROUTES.contains(&path.as_str()));
    if untimed {
        return next.run(request).await;
    }
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Gives error answers that did not come from `ApiError` (the router's 404 and 405, a
/// timeout's 408, a panic) the JSON envelope, and logs the cause of every 5xx.
async fn ensure_json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    // A preview target's own answers are its business, passed through as they are.
    let proxied = response.extensions().get::<crate::preview::Proxied>().is_some();
    if proxied || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let response = if response.extensions().get::<ErrorDetail>().is_some() {
        response
    } else {
        let (parts, _) = response.into_parts();
        let mut replaced = ApiError::from_status(status).into_response();
        for (name, value) in parts.headers.iter() {
            if name == axum::http::header::ALLOW || name == axum::http::header::RETRY_AFTER {
                replaced.headers_mut().insert(name.clone(), value.clone());
            }
        }
        replaced
    };
    if status.is_server_error() {
        if let Some(detail) = response.extensions().get::<ErrorDetail>() {
            tracing::error!(status = status.as_u16(), cause = %detail.0, "request failed");
        }
    }
    response
}
