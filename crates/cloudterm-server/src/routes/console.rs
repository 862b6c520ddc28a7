//! The browser console: its page at `/` and its files at `/console/{name}`, from the binary.
//!
//! These are UI routes like `/docs`, not API operations, so they are not in the OpenAPI
//! document. The page talks to the API as any client does (bearer tokens, `?token=` on the
//! terminal's WebSocket); it has no privileges of its own.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::console;
use crate::error::{ApiError, ErrorDetail};
use crate::state::AppState;

/// What the console page may load and connect to: only this server. Inline styles are allowed
/// because xterm.js writes its theme into a `<style>` element.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// The console's routes, for a listener that serves the Sandbox API (the console needs it).
pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/console/{name}", get(asset))
}

async fn index() -> Response {
    match console::vendor_missing() {
        None => with_headers(console::INDEX_HTML.as_bytes(), "text/html; charset=utf-8"),
        Some(why) => not_built(why),
    }
}

async fn asset(Path(name): Path<String>) -> Response {
    match console::file(&name) {
        Some(file) => with_headers(file.bytes, file.content_type),
        None => ApiError::NotFound(format!("no console file {name:?}")).into_response(),
    }
}

/// A file with the console's security headers. Files are revalidated on every load
/// (`no-cache`): they change with the binary, and there is no ETag to make that cheaper yet.
fn with_headers(bytes: &'static [u8], content_type: &'static str) -> Response {
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// `/` in a binary built without xterm.js: a page (a person reads it) that says how to fix it.
/// It carries an [`ErrorDetail`], so the envelope middleware leaves the page alone and logs why.
fn not_built(why: &str) -> Response {
    let page = format!(
        "<!doctype html><meta charset=utf-8><title>cloudterm: console not built</title>\
         <h1>The console is not in this build</h1>\
         <p>This binary was built without xterm.js ({}).</p>\
         <p>Install Node.js and npm, then run <code>npm ci</code> in <code>web/</code> and rebuild \
         (<code>cargo build --release --bins</code>). The API works without it: see <a href=\"/docs\">/docs</a>.</p>",
        html_escape(why)
    );
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, page).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.extensions_mut().insert(ErrorDetail(format!("the console is not in this build: {why}")));
    response
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_build_without_xterm_explains_how_to_build_the_console() {
        let response = not_built("cannot run npm: <not found>");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.extensions().get::<ErrorDetail>().is_some(), "the envelope middleware would replace it");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        let page = String::from_utf8_lossy(&body);
        assert!(page.contains("npm ci") && page.contains("web/"), "{page}");
        assert!(page.contains("&lt;not found&gt;"), "the reason is escaped: {page}");
    }
}
