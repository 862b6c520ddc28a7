//! Liveness, readiness and metrics, against the real server.

use cloudterm_test_support::TestServer;

use crate::support::*;

#[tokio::test]
async fn liveness_and_readiness_need_no_token() {
    let server = TestServer::start().await;
    let (status, body) = get(&server.url("/health"), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get(&server.url("/health/ready"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    let names: Vec<&str> =
        body["checks"].as_array().expect("checks").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["store", "storage", "runtime", "identity"]);
}

#[tokio::test]
async fn readiness_fails_when_storage_is_gone() {
    let server = TestServer::start().await;
    std::fs::remove_dir_all(server.data_dir().join("snapshots")).expect("remove snapshot storage");
    let (status, body) = get(&server.url("/health/ready"), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    let checks = body["checks"].as_array().expect("checks");
    let storage = checks.iter().find(|c| c["name"] == "storage").expect("storage check");
    assert_eq!(storage["ok"], false);
    assert!(storage["error"].as_str().is_some_and(|e| !e.is_empty()), "{storage}");
    assert!(checks.iter().filter(|c| c["name"] != "storage").all(|c| c["ok"] == true), "{body}");
    // Liveness is unaffected.
    assert_eq!(get(&server.url("/health"), None).await.0, 200);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let server = TestServer::start().await;
    let token = server.token("alice");
    for _ in 0..3 {
        assert_eq!(get(&server.url("/me"), Some(&token)).await.0, 200);
    }
    assert_eq!(get(&server.url("/me"), None).await.0, 401);
    assert_eq!(get(&server.url("/secret/raw/path/123"), None).await.0, 404);
    let text = reqwest::get(server.url("/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(text.contains(r#"http_requests_total{method="GET",route="/me",status="200"} 3"#), "{text}");
    assert!(text.contains(r#"http_requests_total{method="GET",route="/me",status="401"} 1"#), "{text}");
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    assert!(!text.contains("/secret/raw/path"), "raw paths must never become labels");
    assert!(text.contains("http_request_duration_seconds_bucket{"), "{text}");
    assert!(text.contains(r#"http_request_duration_seconds_count{method="GET",route="/me"} 4"#), "{text}");
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let server = TestServer::start_with(|config| config.metrics.require_auth = true).await;
    let (status, body) = get(&server.url("/metrics"), None).await;
    assert_unauthorized("metrics without a token", status, &body);
    let response = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth(server.token("ops"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
}
