//! `ApiError`: the one place where a failure becomes an HTTP status and a JSON envelope.
//!
//! Handlers return `Result<_, ApiError>`; domain, auth and extractor errors convert into it.
//! For 5xx answers the client gets a generic sentence while the cause goes into the log, so
//! internal details (paths, SQL, hostnames) never reach a caller.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudterm_api_types::ErrorEnvelope;
use cloudterm_domain::DomainError;
use cloudterm_identity::AuthError;
use cloudterm_terminal::{AttachError, TerminalError};

use crate::preview::PreviewError;

/// Every way a request can fail, as the HTTP contract sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed input (bad JSON, wrong query string).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: absent, or someone else's (never say which).
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 408: the request took longer than the configured timeout.
    #[error("request timed out")]
    Timeout,
    /// 409: exists already, or wrong lifecycle state.
    #[error("{0}")]
    Conflict(String),
    /// 413: body over the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: wrong content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: over a quota or rate; carries the seconds after which to retry.
    #[error("{message}")]
    TooManyRequests {
        /// Which quota (`sandboxes`, `exec_rate`…): the `type` label of `quota_violations_total`.
        kind: &'static str,
        /// What limit was hit.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after_seconds: u64,
    },
    /// 502: a preview's target did not answer (nothing listens on the port, the sandbox is
    /// not running, or the target broke the exchange).
    #[error("{0}")]
    BadGateway(String),
    /// 503: a dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug. The message is logged, never sent.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The status and stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Timeout => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The error for a status that something other than a handler produced (the router's
    /// fallback, a tower layer): used to give those answers the same envelope.
    pub fn from_status(status: StatusCode) -> ApiError {
        match status {
            StatusCode::BAD_REQUEST => ApiError::BadRequest("bad request".into()),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized("authentication required".into()),
            StatusCode::FORBIDDEN => ApiError::Forbidden("forbidden".into()),
            StatusCode::NOT_FOUND => ApiError::NotFound("no such route".into()),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::REQUEST_TIMEOUT => ApiError::Timeout,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge("request body too large".into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType("unsupported media type".into()),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable("invalid request".into()),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable("service unavailable".into()),
            _ => ApiError::Internal(format!("unexpected status {status}")),
        }
    }
}

/// Marks a response as already carrying the JSON envelope, so the envelope middleware leaves
/// it alone, and carries the real cause of a 5xx to the logging middleware.
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

/// Response extension on a 429: which quota was exceeded.
#[derive(Debug, Clone, Copy)]
pub struct QuotaViolation(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = self.to_string();
        let message = if status.is_server_error() && !matches!(self, ApiError::Unavailable(_) | ApiError::BadGateway(_))
        {
            "internal error; the server log has the details".to_string()
        } else {
            detail.clone()
        };
        let mut response = (status, axum::Json(ErrorEnvelope::new(code, message))).into_response();
        if let ApiError::TooManyRequests { retry_after_seconds, kind, .. } = &self {
            if let Ok(value) = HeaderValue::from_str(&retry_after_seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            // The metrics middleware counts it: one place sees every refusal.
            response.extensions_mut().insert(QuotaViolation(kind));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorDetail(detail));
        response
    }
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::InvalidInput(message) => ApiError::Unprocessable(message),
            DomainError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            DomainError::Conflict(message) => ApiError::Conflict(message),
            DomainError::Forbidden(message) => ApiError::Forbidden(message),
            DomainError::QuotaExceeded { kind, message, retry_after_seconds } => {
                ApiError::TooManyRequests { kind, message, retry_after_seconds }
            }
            DomainError::Unavailable(message) => ApiError::Unavailable(message),
            DomainError::Internal(message) => ApiError::Internal(message),
        }
    }
}

impl From<TerminalError> for ApiError {
    fn from(err: TerminalError) -> Self {
        match err {
            TerminalError::InvalidInput(message) => ApiError::Unprocessable(message),
            err @ (TerminalError::TooManySessions { .. }
            | TerminalError::TooManyViewers { .. }
            | TerminalError::TooManyCells { .. }) => ApiError::Conflict(err.to_string()),
            err @ TerminalError::ShuttingDown => ApiError::Unavailable(err.to_string()),
        }
    }
}

impl From<AttachError<DomainError>> for ApiError {
    fn from(err: AttachError<DomainError>) -> Self {
        match err {
            AttachError::Terminal(err) => err.into(),
            AttachError::Open(err) => err.into(),
        }
    }
}

impl From<PreviewError> for ApiError {
    fn from(err: PreviewError) -> Self {
        match err {
            PreviewError::BadPort(message) | PreviewError::BadHost(message) => ApiError::BadRequest(message),
            err @ (PreviewError::NoCredentials | PreviewError::LinkExpired) => ApiError::Unauthorized(err.to_string()),
            PreviewError::LinkRefused(message) => ApiError::Forbidden(message),
            err @ PreviewError::NotFound(_) => ApiError::NotFound(err.to_string()),
            PreviewError::Unreachable(message) => ApiError::BadGateway(message),
            PreviewError::Domain(err) => err.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::KeysUnavailable(why) => ApiError::Unavailable(format!("identity provider unavailable: {why}")),
            other => ApiError::Unauthorized(format!("invalid token: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn envelope_of(response: Response) -> ErrorEnvelope {
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("envelope json")
    }

    #[tokio::test]
    async fn server_errors_hide_their_details() {
        let response = ApiError::Internal("sqlite at /secret/path exploded".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let detail = response.extensions().get::<ErrorDetail>().cloned().expect("detail for the log");
        assert!(detail.0.contains("/secret/path"));
        let body = envelope_of(response).await;
        assert_eq!(body.error.code, "internal");
        assert!(!body.error.message.contains("/secret/path"));
    }

    #[tokio::test]
    async fn quota_errors_carry_retry_after() {
        let response =
            ApiError::TooManyRequests { kind: "exec_rate", message: "exec rate".into(), retry_after_seconds: 42 }
                .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
        assert_eq!(envelope_of(response).await.error.code, "quota_exceeded");
    }

    #[test]
    fn domain_errors_map_to_the_contract() {
        let cases = [
            (DomainError::InvalidInput("x".into()), StatusCode::UNPROCESSABLE_ENTITY),
            (DomainError::NotFound("sandbox".into()), StatusCode::NOT_FOUND),
            (DomainError::Conflict("x".into()), StatusCode::CONFLICT),
            (DomainError::Forbidden("x".into()), StatusCode::FORBIDDEN),
            (DomainError::Unavailable("x".into()), StatusCode::SERVICE_UNAVAILABLE),
            (DomainError::Internal("x".into()), StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (err, status) in cases {
            assert_eq!(ApiError::from(err).status_and_code().0, status);
        }
    }

    #[test]
    fn preview_errors_map_to_the_contract() {
        let cases = [
            (PreviewError::BadPort("x".into()), StatusCode::BAD_REQUEST),
            (PreviewError::NoCredentials, StatusCode::UNAUTHORIZED),
            (PreviewError::LinkExpired, StatusCode::UNAUTHORIZED),
            (PreviewError::LinkRefused("x".into()), StatusCode::FORBIDDEN),
            (PreviewError::NotFound("x".into()), StatusCode::NOT_FOUND),
            (PreviewError::Unreachable("x".into()), StatusCode::BAD_GATEWAY),
        ];
        for (err, status) in cases {
            assert_eq!(ApiError::from(err).status_and_code().0, status);
        }
    }
}
