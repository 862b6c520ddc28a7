//! The shared middleware on a test router: envelope, body limit, timeout, panics, request ids.

use std::time::Duration;

use axum::extract::Path;
use axum::routing::{self, post};
use axum::Router;
use cloudterm_server::error::ApiError;
use cloudterm_server::extract::ApiJson;
use cloudterm_server::AppState;
use cloudterm_test_support::TestServer;
use serde::Deserialize;
use serde_json::Value;

use crate::support::*;

#[derive(Deserialize)]
struct Item {
    name: String,
}

async fn create_item(ApiJson(item): ApiJson<Item>) -> Result<String, ApiError> {
    if item.name.is_empty() {
        return Err(ApiError::Unprocessable("name must not be empty".into()));
    }
    Ok(item.name)
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "too late"
}

async fn panics() -> &'static str {
    panic!("a bug with a secret in it: /etc/shadow")
}

async fn item(Path(id): Path<String>) -> String {
    id
}

/// Serves a test router through the real middleware stack of a real server's state.
async fn plumbed(server: &TestServer) -> String {
    let routes: Router<AppState> = Router::new()
        .route("/items", post(create_item))
        .route("/items/{id}", routing::get(item))
        .route("/slow", routing::get(slow))
        .route("/panic", routing::get(panics));
    let app = cloudterm_server::middleware::wrap(routes, server.state());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

async fn post_raw(url: &str, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn assert_envelope(case: &str, status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{case}: {body}");
    assert_eq!(body["error"]["code"], code, "{case}: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {body}");
}

#[tokio::test]
async fn bad_bodies_get_the_envelope_with_a_fitting_status() {
    let server = TestServer::start_with(|config| config.http.max_body_bytes = 1024).await;
    let base = plumbed(&server).await;
    let url = format!("{base}/items");
    let json = Some("application/json");
    let (status, body) = post_raw(&url, json, br#"{"name":"ok"}"#.to_vec()).await;
    assert_eq!(status, 200, "{body}");

    let cases = [
        ("malformed JSON", json, b"{\"name\":".to_vec(), 400, "bad_request"),
        ("wrong shape", json, br#"{"name": 5}"#.to_vec(), 422, "validation_failed"),
        ("missing field", json, b"{}".to_vec(), 422, "validation_failed"),
        ("not JSON at all", json, b"\xff\xfe\x00".to_vec(), 400, "bad_request"),
        ("no content type", None, br#"{"name":"x"}"#.to_vec(), 415, "unsupported_media_type"),
        (
            "over the body limit",
            json,
            format!("{{\"name\":\"{}\"}}", "a".repeat(4096)).into_bytes(),
            413,
            "payload_too_large",
        ),
        ("domain validation", json, br#"{"name":""}"#.to_vec(), 422, "validation_failed"),
    ];
    for (case, content_type, bytes, expected, code) in cases {
        let (status, body) = post_raw(&url, content_type, bytes).await;
        assert_envelope(case, status, &body, expected, code);
    }
}

#[tokio::test]
async fn timeouts_panics_and_unknown_routes_get_the_envelope() {
    let server = TestServer::start_with(|config| config.http.request_timeout_seconds = 1).await;
    let base = plumbed(&server).await;
    let (status, body) = get(&format!("{base}/slow"), None).await;
    assert_envelope("timeout", status, &body, 408, "timeout");
    let (status, body) = get(&format!("{base}/panic"), None).await;
    assert_envelope("panic", status, &body, 500, "internal");
    assert!(!body.to_string().contains("shadow"), "panic details leaked: {body}");
    let (status, body) = get(&format!("{base}/nowhere"), None).await;
    assert_envelope("unknown route", status, &body, 404, "not_found");
    let response = reqwest::Client::new().delete(format!("{base}/items")).send().await.expect("delete");
    assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    assert_envelope("wrong method", status, &body, 405, "method_not_allowed");
    // The server survives its handler's panic.
    assert_eq!(get(&format!("{base}/items/7"), None).await.0, 200);
}

#[tokio::test]
async fn request_ids_are_made_or_kept_and_routes_are_labelled_by_template() {
    let server = TestServer::start().await;
    let base = plumbed(&server).await;
    let client = reqwest::Client::new();
    let made = client.get(format!("{base}/items/41")).send().await.expect("request");
    let id = made.headers()["x-request-id"].to_str().expect("ascii").to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let kept =
        client.get(format!("{base}/items/42")).header("x-request-id", "trace-me-123").send().await.expect("request");
    assert_eq!(kept.headers()["x-request-id"], "trace-me-123");
    let errored = client.get(format!("{base}/nowhere")).send().await.expect("request");
    assert!(errored.headers().contains_key("x-request-id"), "errors carry the id too");

    let metrics = server.state().metrics.encode().expect("encode");
    assert!(metrics.contains(r#"route="/items/{id}""#), "{metrics}");
    assert!(!metrics.contains("/items/41") && !metrics.contains("/items/42"), "raw paths leaked into labels");
}
