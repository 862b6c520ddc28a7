//! The binary serves exactly the declared endpoints: each declared one is routed (answers
//! something other than "no such endpoint"), undeclared ones are refused.

use cloudterm_runtime::agent_client::protocol::ENDPOINTS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Agent;

/// One raw HTTP/1.1 request; returns (status, body).
async fn raw(sock: &std::path::Path, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::UnixStream::connect(sock).await.expect("connect");
    let body = if method == "POST" { "{}" } else { "" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn every_declared_endpoint_is_routed() {
    let a = Agent::start().await;
    for (method, path) in ENDPOINTS {
        if *method == "POST" && (*path == "/v1/freeze" || *path == "/v1/thaw" || *path == "/v1/sync") {
            // Safe to call for real; covered elsewhere.
        }
        let concrete = path.replace("{id}", "job_missing");
        let (status, body) = raw(&a.sock, method, &concrete).await;
        assert!(
            !body.contains("no_such_endpoint") && status != 405,
            "{method} {path} is declared but not served: {status} {body}"
        );
    }
}

#[tokio::test]
async fn undeclared_endpoints_are_refused() {
    let a = Agent::start().await;
    for (method, path, want) in [
        ("GET", "/v1/secret", 404),
        ("GET", "/v2/info", 404),
        ("GET", "/", 404),
        ("GET", "/v1/info/", 404),
        ("POST", "/v1/jobs/job_1/logs", 405),
        ("DELETE", "/v1/info", 405),
        ("PATCH", "/v1/files", 405),
        ("GET", "/v1/jobs/job_1/logs/x", 404),
    ] {
        assert!(!ENDPOINTS.contains(&(method, path)));
        let (status, _) = raw(&a.sock, method, path).await;
        assert_eq!(status, want, "{method} {path}");
    }
}
