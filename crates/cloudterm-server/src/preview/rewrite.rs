//! Pure rewriting between the public path and the target's view: the path sent upstream,
//! hop-by-hop headers, `Location` and `Set-Cookie` of answers, our own credentials kept out.
//!
//! A target inside a sandbox believes it is served at `/`; the browser sees it under
//! `/preview/{sandbox}/{port}`. Redirects to absolute paths and cookies scoped to a path are
//! moved under that prefix so they keep working.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Name of the cookie a signed link sets (scoped to the preview's path).
pub const LINK_COOKIE: &str = "cloudterm_preview";
/// Query parameter carrying a signed link's token.
pub const LINK_PARAM: &str = "cloudterm_preview_token";

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The path to request from the target: the part after the prefix, always starting with `/`,
/// with `.` and `..` segments (also as `%2e`) resolved so a request cannot climb above the
/// target's root. `%2f` stays data, as it is for the target.
pub fn upstream_path(rest: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        let dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
        let dotdot = |s: &str| {
            let lower = s.to_ascii_lowercase();
            matches!(lower.as_str(), ".." | "%2e%2e" | ".%2e" | "%2e.")
        };
        if dot(segment) {
            trailing_slash = i == last;
        } else if dotdot(segment) {
            out.pop();
            trailing_slash = i == last;
        } else if segment.is_empty() {
            trailing_slash = i == last && i != 0;
        } else {
            out.push(segment);
            trailing_slash = false;
        }
    }
    let mut path = format!("/{}", out.join("/"));
    if trailing_slash && !out.is_empty() {
        path.push('/');
    }
    path
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// Whether a request asks to switch protocols (a WebSocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// Takes the signed-link parameter out of a query string: `(token, the rest)`.
pub fn take_link_param(query: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(query) = query else { return (None, None) };
    let mut token = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix(LINK_PARAM).and_then(|v| v.strip_prefix('=')) {
            Some(value) => {
                token = Some(value.to_owned());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    (token, (!rest.is_empty()).then(|| rest.join("&")))
}

/// Most link cookies of one request that are checked.
const MAX_LINK_COOKIES: usize = 8;

/// The values of our link cookie in a request's `Cookie` headers (a few at most). There can
/// be several: another preview's app on a sibling subdomain can set one for the parent domain
/// from script, and must not be able to shadow the real one.
pub fn link_cookies(headers: &HeaderMap) -> Vec<String> {
    cookie_pairs(headers)
        .filter(|(name, _)| *name == LINK_COOKIE)
        .map(|(_, value)| value.to_owned())
        .take(MAX_LINK_COOKIES)
        .collect()
}

/// Removes our link cookie from the `Cookie` headers, keeping the target's own cookies.
pub fn strip_link_cookie(headers: &mut HeaderMap) {
    let kept: Vec<String> = cookie_pairs(headers)
        .filter(|(name, _)| *name != LINK_COOKIE)
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, value);
        }
    }
}

fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// `Location` as the browser must see it: an absolute path (or an absolute URL naming the
/// target's own loopback address) moves under `prefix`; anything else (relative, another
/// host, already under the prefix) stays. `None`: unchanged.
pub fn rewrite_location(location: &str, prefix: &str, port: u16) -> Option<String> {
    let path = ["http://localhost", "http://127.0.0.1", "http://[::1]"]
        .iter()
        .find_map(|host| {
            let rest = location.strip_prefix(host)?;
            let rest = rest.strip_prefix(&format!(":{port}")).unwrap_or(rest);
            (rest.is_empty() || rest.starts_with(['/', '?', '#'])).then_some(rest)
        })
        .unwrap_or(location);
    let under_prefix = path == prefix || path.starts_with(&format!("{prefix}/"));
    if !path.starts_with('/') || path.starts_with("//") || under_prefix {
        return (path != location).then(|| if path.is_empty() { format!("{prefix}/") } else { path.to_owned() });
    }
    Some(format!("{prefix}{path}"))
}

/// `Set-Cookie` as the browser must see it: `Path=/x` becomes `Path={prefix}/x` (a cookie
/// for the target's root stays inside this preview, not every path of the host), and
/// `Domain` goes (the target names `localhost`, which the browser would refuse).
pub fn rewrite_set_cookie(value: &str, prefix: &str) -> String {
    let mut parts = value.split(';');
    let mut out = vec![parts.next().unwrap_or_default().trim().to_owned()];
    for attribute in parts {
        let attribute = attribute.trim();
        let (name, val) = attribute.split_once('=').unwrap_or((attribute, ""));
        if name.eq_ignore_ascii_case("domain") {
            continue;
        }
        if name.eq_ignore_ascii_case("path") {
            let val = val.trim();
            let under = val == prefix || val.starts_with(&format!("{prefix}/"));
            let path = if under || !val.starts_with('/') { val.to_owned() } else { format!("{prefix}{val}") };
            out.push(format!("Path={path}"));
        } else {
            out.push(attribute.to_owned());
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_target() {
        let cases = [
            ("", "/"),
            ("index.html", "/index.html"),
            ("a/b/", "/a/b/"),
            ("a/./b", "/a/b"),
            ("../../etc/passwd", "/etc/passwd"),
            ("a/../../../../x", "/x"),
            ("%2e%2e/%2E%2e/secret", "/secret"),
            (".%2e/x", "/x"),
            ("a/..", "/"),
            ("a//b", "/a/b"),
            ("a%2fb", "/a%2fb"),
            ("..", "/"),
        ];
        for (rest, want) in cases {
            assert_eq!(upstream_path(rest), want, "{rest:?}");
        }
    }

    #[test]
    fn locations_move_under_the_prefix() {
        let p = "/preview/sbx_a/8080";
        let cases = [
            ("/login", Some("/preview/sbx_a/8080/login")),
            ("/", Some("/preview/sbx_a/8080/")),
            ("/a?b=1#c", Some("/preview/sbx_a/8080/a?b=1#c")),
            ("http://localhost:8080/x", Some("/preview/sbx_a/8080/x")),
            ("http://127.0.0.1:8080", Some("/preview/sbx_a/8080/")),
            ("/preview/sbx_a/8080/done", None),
            ("relative/page", None),
            ("//evil.example/x", None),
            ("https://example.com/x", None),
            ("http://localhost:9999/x", None),
        ];
        for (location, want) in cases {
            assert_eq!(rewrite_location(location, p, 8080).as_deref(), want, "{location:?}");
        }
    }

    #[test]
    fn cookies_are_scoped_to_the_preview() {
        let p = "/preview/sbx_a/8080";
        assert_eq!(rewrite_set_cookie("sid=1; Path=/; HttpOnly", p), "sid=1; Path=/preview/sbx_a/8080/; HttpOnly");
        assert_eq!(rewrite_set_cookie("a=b; path=/app; Domain=localhost", p), "a=b; Path=/preview/sbx_a/8080/app");
        assert_eq!(rewrite_set_cookie("a=b", p), "a=b");
        assert_eq!(rewrite_set_cookie("a=b; Path=/preview/sbx_a/8080/x", p), "a=b; Path=/preview/sbx_a/8080/x");
    }

    #[test]
    fn the_link_parameter_and_cookie_are_taken_out() {
        assert_eq!(
            take_link_param(Some("a=1&cloudterm_preview_token=T.x&b=2")),
            (Some("T.x".into()), Some("a=1&b=2".into()))
        );
        assert_eq!(take_link_param(Some("cloudterm_preview_token=T")), (Some("T".into()), None));
        assert_eq!(take_link_param(Some("a=1")), (None, Some("a=1".into())));
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("sid=1; cloudterm_preview=SECRET; x=y"));
        assert_eq!(link_cookies(&headers), ["SECRET"]);
        headers.append(header::COOKIE, HeaderValue::from_static("cloudterm_preview=OTHER"));
        assert_eq!(link_cookies(&headers), ["SECRET", "OTHER"]);
        strip_link_cookie(&mut headers);
        assert_eq!(headers[header::COOKIE], "sid=1; x=y");
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));
        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        ws.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&ws));
    }
}
