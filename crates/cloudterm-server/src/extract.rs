//! Extractors whose rejections are `ApiError`s: `ApiJson` for bodies, `Caller` for the token,
//! and `Peer`, the connection's remote address.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use cloudterm_domain::Principal;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body whose every failure (bad syntax, wrong shape, too large, wrong content type)
/// answers with the JSON envelope rather than axum's plain-text rejection.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => ApiError::Unprocessable(text),
        JsonRejection::JsonSyntaxError(_) => ApiError::BadRequest(text),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(text),
        JsonRejection::BytesRejection(_) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("request body is larger than http.max_body_bytes".into())
        }
        _ => ApiError::BadRequest(text),
    }
}

/// A query string whose parse failures answer with the JSON envelope (400).
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// The authenticated caller, from `Authorization: Bearer <JWT>`.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who the token names.
    pub principal: Principal,
    /// When the token stops being valid.
    pub expires_at: Option<DateTime<Utc>>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authenticate(state, &parts.headers).await
    }
}

/// Verifies the bearer token in `headers`; routes that are only sometimes protected
/// (`/metrics`) call this directly.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = bearer_token(headers)?;
    let verified = state.verifier.verify(token).await?;
    Ok(Caller { principal: Principal::new(verified.principal), expires_at: verified.expires_at })
}

/// The remote address of the connection, when the server was started with connect info (as
/// `serve::start` does); `None` for a router driven without a socket (`oneshot` in tests).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr)))
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::Unauthorized("missing bearer token: send Authorization: Bearer <JWT>".into());
    let value = headers.get(AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| ApiError::Unauthorized("authorization header is not ASCII".into()))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn bearer_tokens_are_found_case_insensitively() {
        assert_eq!(bearer_token(&headers("Bearer abc.def.ghi")).ok(), Some("abc.def.ghi"));
        assert_eq!(bearer_token(&headers("bearer  abc ")).ok(), Some("abc"));
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_refused() {
        for value in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer ", "abc.def.ghi", "Token abc"] {
            assert!(bearer_token(&headers(value)).is_err(), "{value:?} was accepted");
        }
        assert!(bearer_token(&HeaderMap::new()).is_err());
    }
}
