//! The preview router: registering ports (`POST /preview/register`, `POST
//! /sandboxes/{id}/preview`), listing, unregistering, signed links, and `ANY
//! /preview/{sandbox_id}/{port}/{path}`, the reverse proxy into the sandbox.
//!
//! The management routes take a bearer token and need `write` on the sandbox's workspace
//! (listing shows the caller's previews and those on workspaces they administer). The proxy
//! routes decide access per preview (`preview::access`): public ones need nothing, private
//! ones a current member's token or a signed link, so they are outside the bearer-only rule
//! (listed as such in `tests/it/spec.rs`).

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{TimeZone, Utc};
use cloudterm_api_types::{
    ErrorEnvelope, PreviewKey, PreviewLinkRequest, PreviewLinkResponse, PreviewList, PreviewResponse,
    RegisterPreviewRequest, SandboxPreviewRequest,
};
use cloudterm_domain::previews::{validate_port, RegisterPreview};
use cloudterm_domain::Preview;

use crate::config::MAX_LINK_TTL_SECONDS;
use crate::error::ApiError;
use crate::extract::{ApiJson, Caller, Peer};
use crate::preview::access::{self, Grant};
use crate::preview::host::{self, Subdomain};
use crate::preview::proxy::{self, Forward};
use crate::preview::{rewrite, LinkClaims, PreviewError};
use crate::state::AppState;

/// Serves a port of a sandbox the caller may write (`write` on its workspace) through the
/// preview router (private; see `POST /preview/register` for public previews and fallbacks).
#[utoipa::path(post, path = "/sandboxes/{id}/preview", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "sandbox id")),
    request_body = SandboxPreviewRequest,
    responses(
        (status = 200, description = "the preview (a superset of {url, port})", body = PreviewResponse),
        (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 422, description = "a port outside 1-65535", body = ErrorEnvelope),
    ))]
pub async fn create_sandbox_preview(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SandboxPreviewRequest>,
) -> Result<Json<PreviewResponse>, ApiError> {
    let request = RegisterPreview {
        sandbox_id: id,
        port: body.port,
        fallback_sandbox_id: None,
        public: body.public.unwrap_or(false),
    };
    let preview = state.previews.register(&caller.principal, request).await?;
    Ok(Json(preview_response(&state, &headers, &preview)))
}

/// Registers a port of a sandbox the caller may write (`write` on its workspace), optionally public and with a fallback
/// sandbox; registering again updates `public` and the fallback.
#[utoipa::path(post, path = "/preview/register", tag = "previews", security(("bearer" = [])),
    request_body = RegisterPreviewRequest,
    responses(
        (status = 201, description = "the preview, with its URL", body = PreviewResponse),
        (status = 401, body = ErrorEnvelope),
        (status = 403, description = "a reader of the sandbox's (or fallback's) workspace", body = ErrorEnvelope),
        (status = 404, description = "no such sandbox (or fallback) on a workspace the caller is a member of", body = ErrorEnvelope),
        (status = 422, description = "a port outside 1-65535, or the sandbox as its own fallback", body = ErrorEnvelope),
    ))]
pub async fn register_preview(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterPreviewRequest>,
) -> Result<(StatusCode, Json<PreviewResponse>), ApiError> {
    let request = RegisterPreview {
        sandbox_id: body.sandbox_id,
        port: body.port,
        fallback_sandbox_id: body.fallback_sandbox_id,
        public: body.public.unwrap_or(false),
    };
    let preview = state.previews.register(&caller.principal, request).await?;
    Ok((StatusCode::CREATED, Json(preview_response(&state, &headers, &preview))))
}

/// The caller's previews, and those collaborators registered on sandboxes of workspaces the
/// caller owns or administers (`registered_by` says whose), with their health: `healthy` is
/// the primary's last check, `promoted` says requests go to the fallback (`active_sandbox_id`).
#[utoipa::path(get, path = "/preview/list", tag = "previews", security(("bearer" = [])),
    responses((status = 200, body = PreviewList), (status = 401, body = ErrorEnvelope)))]
pub async fn list_previews(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<PreviewList>, ApiError> {
    let previews = state.previews.list(&caller.principal).await?;
    Ok(Json(PreviewList { previews: previews.iter().map(|p| preview_response(&state, &headers, p)).collect() }))
}

/// Unregisters a preview (needs `write` on its sandbox's workspace, whoever registered it, so
/// owners and admins can take down what a collaborator exposed); every signed link to it stops
/// working (registering it again does not revive them).
#[utoipa::path(post, path = "/preview/unregister", tag = "previews", security(("bearer" = [])),
    request_body = PreviewKey,
    responses((status = 204), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "a reader of the sandbox's workspace", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)))]
pub async fn unregister_preview(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PreviewKey>,
) -> Result<StatusCode, ApiError> {
    state.previews.unregister(&caller.principal, &body.sandbox_id, body.port).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A signed, expiring link to a private preview (needs `write` on its sandbox's workspace):
/// opening it sets a cookie scoped to the preview's path, so a browser can follow the app
/// without a token. It works only while the preview's registration is live: unregistering,
/// or revoking the registrant, ends it.
#[utoipa::path(post, path = "/preview/link", tag = "previews", security(("bearer" = [])),
    request_body = PreviewLinkRequest,
    responses((status = 200, body = PreviewLinkResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "a reader of the sandbox's workspace", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, description = "a bad port or lifetime", body = ErrorEnvelope)))]
pub async fn create_preview_link(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PreviewLinkRequest>,
) -> Result<Json<PreviewLinkResponse>, ApiError> {
    let ttl = body.ttl_seconds.unwrap_or(state.config.preview.link_ttl_seconds);
    if !(1..=MAX_LINK_TTL_SECONDS).contains(&ttl) {
        return Err(ApiError::Unprocessable(format!("ttl_seconds must be 1 to {MAX_LINK_TTL_SECONDS}, got {ttl}")));
    }
    let preview = state.previews.get(&caller.principal, &body.sandbox_id, body.port).await?;
    let expires = Utc::now().timestamp().saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
    let token = state.preview_router.links.sign(&LinkClaims {
        sandbox_id: preview.sandbox_id.clone(),
        port: preview.port,
        generation: preview.generation(),
        expires,
    });
    let url = format!("{}?{}={token}", preview_url(&state, &headers, &preview), rewrite::LINK_PARAM);
    let expires_at = Utc.timestamp_opt(expires, 0).single().unwrap_or_else(Utc::now);
    Ok(Json(PreviewLinkResponse { url, expires_at }))
}

/// `/preview/{sandbox_id}/{port}` without the trailing slash: redirected to it, so relative
/// links in the target's pages resolve under the preview.
#[utoipa::path(method(get, post, put, delete, patch, options), path = "/preview/{sandbox_id}/{port}", tag = "previews",
    params(("sandbox_id" = String, Path, description = "sandbox id"), ("port" = String, Path, description = "port, 1-65535")),
    responses((status = 308, description = "to the same address with a trailing slash"),
        (status = 400, description = "not a port", body = ErrorEnvelope)))]
pub async fn proxy_bare(
    Path((_sandbox_id, port)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    path_port(&port)?;
    let location = match request.uri().query() {
        Some(query) => format!("{}/?{query}", request.uri().path()),
        None => format!("{}/", request.uri().path()),
    };
    let location = HeaderValue::from_str(&location).map_err(|_| ApiError::BadRequest("bad path".into()))?;
    Ok((StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response())
}

/// The target's root: see `/preview/{sandbox_id}/{port}/{path}`.
#[utoipa::path(method(get, post, put, delete, patch, options), path = "/preview/{sandbox_id}/{port}/", tag = "previews",
    params(("sandbox_id" = String, Path, description = "sandbox id"), ("port" = String, Path, description = "port, 1-65535")),
    responses((status = 200, description = "the target's answer, streamed")))]
pub async fn proxy_root(
    State(state): State<AppState>,
    peer: Peer,
    Path((sandbox_id, port)): Path<(String, String)>,
    request: Request,
) -> Response {
    proxy(&state, peer, &sandbox_id, &port, request).await.unwrap_or_else(IntoResponse::into_response)
}

/// Proxies to `127.0.0.1:{port}` inside the sandbox, through its agent: HTTP/1.1 with streamed
/// bodies both ways, WebSocket upgrades, `X-Forwarded-For/-Proto/-Host/-Prefix`, absolute
/// redirects and cookie paths moved under `/preview/{sandbox_id}/{port}`. Public previews
/// need nothing; private ones a current member's bearer token or a signed link (`?cloudterm_preview_token=`,
/// which sets a cookie and redirects to the address without it). The target's own answers
/// (also its 4xx/5xx) pass through unchanged.
#[utoipa::path(method(get, post, put, delete, patch, options), path = "/preview/{sandbox_id}/{port}/{*path}", tag = "previews",
    params(("sandbox_id" = String, Path, description = "sandbox id"), ("port" = String, Path, description = "port, 1-65535"),
        ("path" = String, Path, description = "path at the target")),
    responses(
        (status = 200, description = "the target's answer, streamed"),
        (status = 101, description = "switched protocols (WebSocket), spliced to the target"),
        (status = 303, description = "a signed link was used: the cookie is set, the token leaves the address"),
        (status = 400, description = "not a port", body = ErrorEnvelope),
        (status = 401, description = "a private preview without credentials, or an expired link", body = ErrorEnvelope),
        (status = 403, description = "a forged, foreign or revoked link", body = ErrorEnvelope),
        (status = 404, description = "no such live preview on a workspace the caller is a member of", body = ErrorEnvelope),
        (status = 502, description = "neither the target nor its fallback accepted a connection", body = ErrorEnvelope),
    ))]
pub async fn proxy_path(
    State(state): State<AppState>,
    peer: Peer,
    Path((sandbox_id, port, _path)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    proxy(&state, peer, &sandbox_id, &port, request).await.unwrap_or_else(IntoResponse::into_response)
}

async fn proxy(
    state: &AppState,
    Peer(peer): Peer,
    sandbox_id: &str,
    port: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let port = path_port(port)?;
    // The raw path after `/preview/{sandbox_id}/{port}/`, still percent-encoded: the target
    // decodes it, as it would without the proxy.
    let raw_path = request.uri().path().to_owned();
    let rest = raw_path.splitn(5, '/').nth(4).unwrap_or("");
    let (query_token, query) = rewrite::take_link_param(request.uri().query());
    let found = state.previews.find(sandbox_id, port).await?;
    let grant =
        access::authorize(state, sandbox_id, port, found.as_ref(), request.headers(), query_token.as_deref()).await?;
    let preview = found.ok_or_else(|| PreviewError::NotFound(format!("{sandbox_id}:{port}")))?;
    // On its subdomain a preview is at the host's root: nothing to move its paths under, and
    // the address the client sees is the one it sent.
    let subdomain = request.extensions().get::<Subdomain>().map(|subdomain| subdomain.original.path().to_owned());
    let (prefix, public_path) = match subdomain {
        Some(path) => (String::new(), path),
        None => (format!("/preview/{sandbox_id}/{port}"), raw_path.clone()),
    };
    let proto = proto(state);
    let set_cookie = match &grant {
        Grant::Link { token, from_query: true, expires } => Some(link_cookie(token, &prefix, *expires, proto)?),
        _ => None,
    };
    if let Some(cookie) = &set_cookie {
        if matches!(*request.method(), Method::GET | Method::HEAD) {
            let location = match &query {
                Some(query) => format!("{public_path}?{query}"),
                None => public_path.clone(),
            };
            let location = HeaderValue::from_str(&location).map_err(|_| ApiError::BadRequest("bad path".into()))?;
            let headers = [
                (header::LOCATION, location),
                (header::SET_COOKIE, cookie.clone()),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ];
            return Ok((StatusCode::SEE_OTHER, headers, Body::empty()).into_response());
        }
    }
    let path = rewrite::upstream_path(rest);
    let upstream_uri = match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let forward = Forward { preview: &preview, prefix, upstream_uri, peer, proto, set_cookie };
    Ok(proxy::forward(state, forward, request).await?)
}

/// The `{port}` path segment: digits only, 1–65535.
fn path_port(text: &str) -> Result<u16, ApiError> {
    let bad = || PreviewError::BadPort(format!("the port must be a number from 1 to 65535, got {text:?}"));
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad().into());
    }
    let port: u32 = text.parse().map_err(|_| bad())?;
    validate_port(port).map_err(|_| bad().into())
}

/// The cookie a signed link sets: only for this preview's path (on a subdomain: the whole
/// host, and only it, as the cookie names no `Domain`), gone when the link expires.
fn link_cookie(token: &str, prefix: &str, expires: i64, proto: &str) -> Result<HeaderValue, ApiError> {
    let max_age = (expires - Utc::now().timestamp()).max(0);
    let secure = if proto == "https" { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={token}; Path={prefix}/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
        rewrite::LINK_COOKIE
    ))
    .map_err(|_| ApiError::BadRequest("bad preview link".into()))
}

/// `https` when the configured base URL says so, else `http`.
fn proto(state: &AppState) -> &'static str {
    match &state.config.preview.base_url {
        Some(url) if url.starts_with("https://") => "https",
        _ => "http",
    }
}

/// Where previews are reached from outside: `preview.base_url`, else the dedicated preview
/// listener, else the address the client used.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.config.preview.base_url {
        return base.trim_end_matches('/').to_owned();
    }
    if let Some(addr) = &state.config.listeners.preview {
        return format!("http://{addr}");
    }
    match headers.get(header::HOST).and_then(|host| host.to_str().ok()) {
        Some(host) => format!("http://{host}"),
        None => format!("http://{}", state.config.listen),
    }
}

/// A preview's address: its subdomain when `preview.domain` is set (with the scheme and port
/// of `preview.base_url`, else of the address the client used), else the path form.
fn preview_url(state: &AppState, headers: &HeaderMap, preview: &Preview) -> String {
    let base = base_url(state, headers);
    if let Some(domain) = &state.config.preview.domain {
        let (scheme, authority) = base.split_once("://").unwrap_or(("http", &base));
        let listen_port = authority.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok());
        return host::url(scheme, domain, &preview.sandbox_id, preview.port, listen_port);
    }
    format!("{base}/preview/{}/{}/", preview.sandbox_id, preview.port)
}

fn preview_response(state: &AppState, headers: &HeaderMap, preview: &Preview) -> PreviewResponse {
    PreviewResponse {
        url: preview_url(state, headers, preview),
        sandbox_id: preview.sandbox_id.clone(),
        port: preview.port,
        public: preview.public,
        registered_by: preview.owner.clone(),
        healthy: preview.health.healthy.unwrap_or(false),
        fallback_sandbox_id: preview.fallback_sandbox_id.clone(),
        fallback_healthy: preview
            .fallback_sandbox_id
            .as_ref()
            .map(|_| preview.health.fallback_healthy.unwrap_or(false)),
        active_sandbox_id: preview.active_sandbox_id().to_owned(),
        promoted: preview.health.promoted,
        created_at: preview.created_at,
        checked_at: preview.health.checked_at,
    }
}
