//! `GET /me`, and the dev issuer's `GET /.well-known/jwks.json` and `POST /dev/token`.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use cloudterm_api_types::{DevTokenRequest, DevTokenResponse, ErrorEnvelope, Jwks, MeResponse, QuotaUsage};
use cloudterm_domain::sandboxes::StorageUsage;
use cloudterm_domain::sandboxes::EGRESS;
use cloudterm_domain::Access;
use cloudterm_identity::IdentityError;

use crate::error::ApiError;
use crate::extract::{ApiJson, Caller, Peer};
use crate::state::AppState;

/// Lifetime of a `POST /dev/token` token when the request names none: a working day.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// Bounds of a requested lifetime.
const DEV_TOKEN_TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=7 * 24 * 3600;

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
    Ok(Json(MeResponse {
        principal: view.principal,
        home_workspace_id: view.home_workspace_id,
        created_at: view.created_at,
        token_expires_at: caller.expires_at,
        quota: quota_usage(&state, &caller.principal).await,
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

/// Mints a dev-issuer token, as `cloudterm token PRINCIPAL` does, so the browser console can
/// sign in with one click. An extension of the contract that exists only while the dev issuer is
/// on (404 otherwise), and only for this machine: the connection must come from a loopback
/// address and name a loopback host, or the answer is 403. `cloudterm token` needs read access
/// to the data directory; this route asks for being on the machine instead, and the `Host`
/// check keeps a web page in the user's browser from reaching it through DNS rebinding.
#[utoipa::path(
    post,
    path = "/dev/token",
    tag = "identity",
    request_body = DevTokenRequest,
    responses(
        (status = 200, body = DevTokenResponse),
        (status = 403, description = "the request did not come from this machine (loopback)", body = ErrorEnvelope),
        (status = 404, description = "the dev issuer is off", body = ErrorEnvelope),
        (status = 422, description = "an empty or invalid principal, or a lifetime out of range", body = ErrorEnvelope),
    )
)]
pub async fn mint_dev_token(
    State(state): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    ApiJson(request): ApiJson<DevTokenRequest>,
) -> Result<Json<DevTokenResponse>, ApiError> {
    let Some(issuer) = &state.dev_issuer else {
        return Err(ApiError::NotFound(
            "the dev issuer is off: tokens come from the configured identity provider".into(),
        ));
    };
    only_from_this_machine(peer, &headers)?;
    let ttl = match request.ttl_seconds {
        None => DEV_TOKEN_TTL,
        Some(seconds) if DEV_TOKEN_TTL_RANGE.contains(&seconds) => Duration::from_secs(seconds),
        Some(seconds) => {
            return Err(ApiError::Unprocessable(format!(
                "ttl_seconds must be between {} and {}, got {seconds}",
                DEV_TOKEN_TTL_RANGE.start(),
                DEV_TOKEN_TTL_RANGE.end()
            )))
        }
    };
    let principal = request.principal.trim().to_string();
    let token = issuer.mint(&principal, ttl).map_err(|err| match err {
        IdentityError::InvalidPrincipal(_) | IdentityError::InvalidTtl(_) => ApiError::Unprocessable(err.to_string()),
        other => ApiError::Internal(format!("minting a dev token: {other}")),
    })?;
    let expires_at = chrono::Utc::now() + ttl;
    Ok(Json(DevTokenResponse { token, principal, expires_at }))
}

/// Refuses (403) a request that did not come from a loopback address, or that names a host
/// (`Host`, and `Origin` when a browser sends one) other than a loopback one.
fn only_from_this_machine(peer: Peer, headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |why: String| {
        Err(ApiError::Forbidden(format!(
            "dev tokens are minted only for requests from this machine ({why}); elsewhere run `cloudterm token PRINCIPAL` on the server"
        )))
    };
    match peer.0 {
        Some(addr) if addr.ip().to_canonical().is_loopback() => {}
        Some(addr) => return refuse(format!("this one came from {}", addr.ip())),
        None => return refuse("the connection's address is unknown".into()),
    }
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or_default();
    if !is_loopback_host(host) {
        return refuse(format!(
            "it names the host {host:?}; open the console at http://127.0.0.1:PORT/ or http://localhost:PORT/"
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).unwrap_or_default();
        if !is_loopback_host(host) {
            return refuse(format!("it comes from the page {origin:?}"));
        }
    }
    Ok(())
}

/// `localhost`, a `127.0.0.0/8` address or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(inside, _)| inside),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `/me`'s quotas: running sandboxes, the exec rate of the caller's busiest sandbox, the storage
/// of their home workspace when it has a limit (other workspaces show theirs in `GET
/// /workspaces/{id}`) and, where sandboxes have a network, the egress of the one that sent the
/// most.
async fn quota_usage(state: &AppState, caller: &cloudterm_domain::principal::Principal) -> Vec<QuotaUsage> {
    let sandboxes = state.sandboxes.sandbox_quota(caller.id());
    let limits = state.sandboxes.limits_for(caller.id());
    let busiest = state
        .sandboxes
        .running_ids_of(caller.id())
        .iter()
        .filter_map(|id| state.sandboxes.exec_quota(caller, id))
        .map(|status| status.used)
        .max()
        .unwrap_or(0);
    let mut quotas = vec![
        QuotaUsage {
            kind: sandboxes.kind.into(),
            used: sandboxes.used,
            limit: Some(sandboxes.limit),
            enforced: None,
            workspace_id: None,
        },
        QuotaUsage {
            kind: "exec_rate".into(),
            used: busiest,
            limit: limits.exec_per_hour,
            enforced: None,
            workspace_id: None,
        },
    ];
    if let Ok(home) = state.sandboxes.resolve_workspace(caller, None, Access::Read).await {
        if let Some(usage) = state.sandboxes.storage_usage(&home).await {
            quotas.push(storage_usage(&home.id, usage));
        }
    }
    if state.sandboxes.runtime().has_network() {
        let (egress, newly_exceeded) = state.sandboxes.busiest_egress(caller.id()).await;
        for _ in 0..newly_exceeded {
            state.metrics.quota_violated(EGRESS);
        }
        let used = egress.map_or(0, |usage| usage.bytes);
        quotas.push(QuotaUsage {
            kind: EGRESS.into(),
            used,
            limit: limits.egress_bytes(),
            enforced: None,
            workspace_id: None,
        });
    }
    quotas
}

/// A workspace's storage as a quota entry.
pub fn storage_usage(workspace_id: &str, usage: StorageUsage) -> QuotaUsage {
    QuotaUsage {
        kind: "storage".into(),
        used: usage.used_bytes,
        limit: usage.limit_bytes,
        enforced: Some(usage.enforced),
        workspace_id: Some(workspace_id.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(name.clone(), HeaderValue::from_str(value).expect("header"));
        }
        headers
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in ["localhost", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:8000", "127.1.2.3:1", "[::1]", "[::1]:8000"]
        {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in
            ["", "example.com", "evil.localhost.example.com:80", "10.0.0.1:8000", "[::2]:80", "0.0.0.0:8000", "[::1"]
        {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn only_loopback_peers_naming_loopback_hosts_get_dev_tokens() {
        let local = Peer(Some("127.0.0.1:5000".parse().expect("addr")));
        let mapped = Peer(Some("[::ffff:127.0.0.1]:5000".parse().expect("addr")));
        let remote = Peer(Some("192.0.2.7:5000".parse().expect("addr")));
        let good = headers(&[(header::HOST, "127.0.0.1:8000")]);
        assert!(only_from_this_machine(local, &good).is_ok());
        assert!(only_from_this_machine(mapped, &good).is_ok());
        assert!(only_from_this_machine(
            local,
            &headers(&[(header::HOST, "localhost:8000"), (header::ORIGIN, "http://localhost:8000")])
        )
        .is_ok());
        for (case, peer, headers) in [
            ("remote peer", remote, good.clone()),
            ("unknown peer", Peer(None), good.clone()),
            ("no host", local, HeaderMap::new()),
            ("rebound host", local, headers(&[(header::HOST, "attacker.example:8000")])),
            (
                "foreign origin",
                local,
                headers(&[(header::HOST, "127.0.0.1:8000"), (header::ORIGIN, "https://attacker.example")]),
            ),
            ("opaque origin", local, headers(&[(header::HOST, "127.0.0.1:8000"), (header::ORIGIN, "null")])),
        ] {
            let refused = only_from_this_machine(peer, &headers);
            assert!(matches!(refused, Err(ApiError::Forbidden(_))), "{case}: {refused:?}");
        }
    }
}
