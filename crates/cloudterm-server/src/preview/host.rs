//! Subdomain-style previews: with `preview.domain` set, a request whose host is
//! `{port}-{sandbox_id}.{domain}` is the preview of that port, served at the host's root (no
//! `/preview/{sandbox}/{port}` prefix, so apps that use absolute paths work unmodified).
//!
//! [`route_subdomain`] runs before routing: it turns such a request into the path form
//! (`/preview/{sandbox}/{port}/{path}`) and marks it [`Subdomain`], so the request takes the
//! very same route, access check and proxy as the path form, and only the prefix the answer's
//! redirects and cookies move under differs (none). Only the request's own host decides:
//! `X-Forwarded-Host` is never read, so nothing a client adds can pick another preview than
//! the host it connected to names, and the path of a subdomain request always stays inside
//! that host's preview.

use axum::extract::{Request, State};
use axum::http::header;
use axum::http::uri::{PathAndQuery, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::preview::PreviewError;
use crate::state::AppState;

/// Marks a request that arrived on a preview subdomain; holds the path and query the client
/// sent (the URI itself now carries the path form).
#[derive(Debug, Clone)]
pub struct Subdomain {
    /// Path and query as the client sent them.
    pub original: PathAndQuery,
}

/// What a request's host says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Not under the preview domain: the API.
    Other,
    /// `{port}-{sandbox_id}.{domain}`.
    Preview {
        /// The sandbox.
        sandbox_id: String,
        /// The port.
        port: u16,
    },
    /// Under the preview domain but not a preview's name.
    Invalid(String),
}

/// Reads `host` (a `Host` header value or a URI authority, with or without a port) against the
/// preview `domain`. Hosts compare case-insensitively, a trailing dot is ignored.
pub fn parse(host: &str, domain: &str) -> HostMatch {
    let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let Some(label) = name.strip_suffix(&domain).and_then(|rest| rest.strip_suffix('.')) else {
        return HostMatch::Other;
    };
    let invalid =
        || HostMatch::Invalid(format!("{host:?} is not a preview: expected {{port}}-{{sandbox_id}}.{domain}"));
    let Some((port, sandbox_id)) = label.split_once('-') else { return invalid() };
    let port_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let id_ok =
        !sandbox_id.is_empty() && sandbox_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match port.parse::<u16>() {
        Ok(port) if port_ok && id_ok && port != 0 => HostMatch::Preview { sandbox_id: sandbox_id.to_owned(), port },
        _ => invalid(),
    }
}

/// The host without its `:port` (IPv6 literals are never preview names; they stay whole).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// The address of the preview of `sandbox_id:port` on its subdomain: `scheme` and the
/// optional `:port` suffix are those the server is reached at.
pub fn url(scheme: &str, domain: &str, sandbox_id: &str, port: u16, listen_port: Option<u16>) -> String {
    let suffix = listen_port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{port}-{sandbox_id}.{}{suffix}/", domain.trim_end_matches('.'))
}

/// Before routing: a request for a preview subdomain becomes the path form, marked
/// [`Subdomain`]; a request for a name under the preview domain that is no preview is
/// refused (400) rather than served the API; every other request passes untouched.
pub async fn route_subdomain(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(domain) = state.config.preview.domain.as_deref() else { return next.run(request).await };
    // The authority of an absolute-form request line wins over `Host`, as RFC 9112 §3.2.2 says.
    let host = match request.uri().authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => match request.headers().get(header::HOST).and_then(|value| value.to_str().ok()) {
            Some(host) => host.to_owned(),
            None => return next.run(request).await,
        },
    };
    match parse(&host, domain) {
        HostMatch::Other => next.run(request).await,
        HostMatch::Invalid(why) => ApiError::from(PreviewError::BadHost(why)).into_response(),
        HostMatch::Preview { sandbox_id, port } => {
            let original = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            // `OPTIONS *` and the like have no path: they go to the target's root.
            let path = if original.as_str().starts_with('/') { original.as_str() } else { "/" };
            let Ok(uri) = format!("/preview/{sandbox_id}/{port}{path}").parse::<Uri>() else {
                return ApiError::BadRequest("bad path".into()).into_response();
            };
            *request.uri_mut() = uri;
            request.extensions_mut().insert(Subdomain { original });
            next.run(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview(sandbox_id: &str, port: u16) -> HostMatch {
        HostMatch::Preview { sandbox_id: sandbox_id.into(), port }
    }

    #[test]
    fn preview_hosts_are_recognised() {
        let d = "preview.example.com";
        assert_eq!(parse("8080-sbx_abc123.preview.example.com", d), preview("sbx_abc123", 8080));
        assert_eq!(parse("8080-sbx_abc123.preview.example.com:8443", d), preview("sbx_abc123", 8080));
        assert_eq!(parse("3000-SBX_ABC.Preview.Example.COM.", d), preview("sbx_abc", 3000));
        assert_eq!(parse("1-s.preview.example.com", d), preview("s", 1));
        assert_eq!(parse("8080-sbx_abc.preview.example.com", "preview.example.com."), preview("sbx_abc", 8080));
    }

    #[test]
    fn other_hosts_are_the_api() {
        let d = "preview.example.com";
        for host in [
            "preview.example.com",
            "preview.example.com:8000",
            "api.example.com",
            "127.0.0.1:8000",
            "[::1]:8000",
            "8080-sbx_a.preview.example.com.evil.org",
            "8080-sbx_a.notpreview.example.com",
            "8080-sbx_a.xpreview.example.com",
            "",
        ] {
            assert_eq!(parse(host, d), HostMatch::Other, "{host:?}");
        }
    }

    #[test]
    fn names_under_the_domain_that_are_no_preview_are_invalid() {
        let d = "preview.example.com";
        for host in [
            "www.preview.example.com",
            "sbx_a.preview.example.com",
            "0-sbx_a.preview.example.com",
            "65536-sbx_a.preview.example.com",
            "99999999999999999999-sbx_a.preview.example.com",
            "-sbx_a.preview.example.com",
            "8080-.preview.example.com",
            "+80-sbx_a.preview.example.com",
            "8080-sbx-a.preview.example.com",
            "8080-sbx_a.other.preview.example.com",
            "8080-sbx%2fa.preview.example.com",
            ".preview.example.com",
        ] {
            assert!(matches!(parse(host, d), HostMatch::Invalid(_)), "{host:?}: {:?}", parse(host, d));
        }
    }

    #[test]
    fn urls_name_the_subdomain() {
        assert_eq!(url("https", "preview.example.com", "sbx_a", 8080, None), "https://8080-sbx_a.preview.example.com/");
        assert_eq!(url("http", "preview.test.", "sbx_a", 3000, Some(8000)), "http://3000-sbx_a.preview.test:8000/");
    }
}
