//! `GET /me` and the dev issuer's `GET /.well-known/jwks.json`.

use axum::extract::State;
use axum::Json;
use cloudterm_api_types::{ErrorEnvelope, Jwks, MeResponse, QuotaUsage};

use crate::error::ApiError;
use crate::extract::Caller;
use crate::state::AppState;

/// Who the token says you are, with your home workspace (created on first sight).
#[utoipa::path(
    get,
    path = "/me",
    tag = "identity",
    security(("bearer" = [])),
    responses(
        (status = 200, body = MeResponse),
        (status = 401, description = "no valid token", body = ErrorEnvelope),
    )
)]
pub async fn get_me(State(state): State<AppState>, caller: Caller) -> Result<Json<MeResponse>, ApiError> {
    let view = state.principals.whoami(&caller.principal).await?;
    let running = state.sandboxes.running_count(caller.principal.id());
    Ok(Json(MeResponse {
        principal: view.principal,
        home_workspace_id: view.home_workspace_id,
        created_at: view.created_at,
        token_expires_at: caller.expires_at,
        quota: vec![QuotaUsage {
            kind: "sandboxes".into(),
            used: running,
            limit: Some(state.sandboxes.max_sandboxes()),
        }],
    }))
}

/// The dev issuer's public keys; 404 when a real IdP is configured (it serves its own).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "identity",
    responses(
        (status = 200, body = Jwks),
        (status = 404, description = "the dev issuer is off", body = ErrorEnvelope),
    )
)]
pub async fn get_jwks(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match &state.dev_issuer {
        Some(issuer) => Ok(Json(issuer.jwks())),
        None => {
            Err(ApiError::NotFound("the dev issuer is off: keys come from the configured identity provider".into()))
        }
    }
}
