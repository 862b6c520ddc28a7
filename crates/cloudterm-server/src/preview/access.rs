//! Who may reach a preview: anyone when it is public; otherwise the bearer token of a current
//! member of the sandbox's workspace (the registrant gets no pass of its own: a revoked
//! registrant is a stranger), or a signed link (in the query once, then as a cookie scoped to
//! the preview's path) to a registration that is still live.
//!
//! The answers never reveal a private preview to someone who may not see it: no credentials
//! is 401 whether the preview exists or not, another principal's token is 404 either way.

use axum::http::header::{self, HeaderMap};
use cloudterm_domain::error::DomainError;
use cloudterm_domain::Preview;

use crate::error::ApiError;
use crate::preview::link::LinkError;
use crate::preview::{rewrite, PreviewError};
use crate::state::AppState;

/// Why a request may go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The preview is public.
    Public,
    /// The bearer token of a member (`read` or better) of the sandbox's workspace.
    Member,
    /// A valid signed link.
    Link {
        /// The link's token.
        token: String,
        /// It came in the query (not yet a cookie): set the cookie.
        from_query: bool,
        /// When it expires, Unix seconds.
        expires: i64,
    },
}

/// Decides whether the request may reach `sandbox_id:port` (whose registration is `preview`,
/// if any). `query_token` is the link parameter, already taken out of the query.
pub async fn authorize(
    state: &AppState,
    sandbox_id: &str,
    port: u16,
    preview: Option<&Preview>,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Grant, ApiError> {
    let not_found = || ApiError::from(PreviewError::NotFound(format!("{sandbox_id}:{port}")));
    if preview.is_some_and(|preview| preview.public) {
        return Ok(Grant::Public);
    }
    if let Some(token) = bearer(headers) {
        let verified = state.verifier.verify(token).await?;
        // Whoever holds the token, the registrant included, must be a member of the sandbox's
        // workspace *now*: read from the store at most a second ago, and forgotten on every
        // revocation on this server, so a revocation ends it at once. (`preview` is `None` too
        // when its registrant lost `write`.)
        let Some(_) = preview else { return Err(not_found()) };
        let member = cloudterm_domain::principal::Principal::new(verified.principal);
        return match state.sandboxes.check_member(&member, sandbox_id).await {
            Ok(()) => Ok(Grant::Member),
            Err(DomainError::NotFound(_) | DomainError::Forbidden(_)) => Err(not_found()),
            Err(err) => Err(err.into()),
        };
    }
    let candidates: Vec<(String, bool)> = match query_token {
        Some(token) => vec![(token.to_owned(), true)],
        None => rewrite::link_cookies(headers).into_iter().map(|token| (token, false)).collect(),
    };
    // The first link that grants this preview wins; if none does, the first one's refusal.
    let mut refusal = None;
    for (token, from_query) in candidates {
        match check_link(state, &token, sandbox_id, port, preview) {
            Ok(expires) => return Ok(Grant::Link { token, from_query, expires }),
            Err(err) => {
                refusal.get_or_insert(err);
            }
        }
    }
    Err(refusal.unwrap_or_else(|| PreviewError::NoCredentials.into()))
}

/// Whether a signed link grants `sandbox_id:port` (registered as `preview`): its expiry.
fn check_link(
    state: &AppState,
    token: &str,
    sandbox_id: &str,
    port: u16,
    preview: Option<&Preview>,
) -> Result<i64, ApiError> {
    let claims = state.preview_router.links.verify(token, chrono::Utc::now().timestamp()).map_err(|err| match err {
        LinkError::Expired => PreviewError::LinkExpired,
        LinkError::Invalid => PreviewError::LinkRefused("the preview link is not valid".into()),
    })?;
    if claims.sandbox_id != sandbox_id || claims.port != port {
        return Err(PreviewError::LinkRefused("the preview link is for another preview".into()).into());
    }
    let preview = preview.ok_or_else(|| ApiError::from(PreviewError::NotFound(format!("{sandbox_id}:{port}"))))?;
    if claims.generation != preview.generation() {
        return Err(PreviewError::LinkRefused("the preview link was revoked".into()).into());
    }
    Ok(claims.expires)
}

/// The bearer token, if the request sends one (`Authorization: Basic` is the target's).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|token| !token.is_empty())
}
