//! The Prometheus surface end to end: the seed's series with the seed's names, label values
//! that stay bounded and leave with their sandbox, `promtool check metrics` passing on a real
//! scrape, and a real Prometheus scraping the server and answering a query about it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use cloudterm_test_support::{skip_unless, PrometheusServer, TestServer};
use serde_json::json;

use crate::sandboxes::Api;

async fn scrape(server: &TestServer) -> String {
    reqwest::get(server.url("/metrics")).await.expect("metrics").text().await.expect("text")
}

/// The `value` of the one sample line that starts with `series` (name and labels, exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Drives the server through what every seed metric counts, on either runtime.
async fn the_seed_series_are_exported(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |config| config.quotas.max_sandboxes = 1).await else {
        return;
    };
    let alice = Api::new(&server, "alice");
    let sandbox = alice.create(json!({})).await["id"].as_str().expect("id").to_string();
    for _ in 0..2 {
        assert_eq!(alice.exec(&sandbox, json!({"argv": ["/bin/echo", "hi"]})).await["exit_code"], 0);
    }
    alice.sh(&sandbox, "true").await;
    // Over the one-sandbox quota: a 429 that the violation counter sees.
    let (status, body) = alice.call("POST", "/sandboxes", Some(json!({}))).await;
    assert_eq!(status, 429, "{body}");
    let (status, _) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": sandbox}))).await;
    assert_eq!(status, 201);

    let text = scrape(&server).await;
    let exec = format!("sandbox_exec_total{{sandbox=\"{sandbox}\",command=\"echo\"}}");
    assert_eq!(sample(&text, &exec), Some(2.0), "{exec} in:\n{text}");
    let shell = format!("sandbox_exec_total{{sandbox=\"{sandbox}\",command=\"true\"}}");
    assert_eq!(sample(&text, &shell), Some(1.0), "{shell} in:\n{text}");
    assert_eq!(sample(&text, "sandbox_created_total"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "sandbox_active"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "quota_violations_total{type=\"sandboxes\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "sandbox_exec_duration_seconds_count{command=\"echo\"}"), Some(2.0), "{text}");
    assert!(sample(&text, "snapshot_created_total{kind=\"manual\"}") >= Some(1.0), "{text}");
    assert!(sample(&text, "snapshot_size_bytes_count").is_some_and(|n| n >= 1.0), "{text}");
    for series in ["snapshot_restored_total", "http_requests_total{", "http_request_duration_seconds_bucket{"] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    let memory = sample(&text, &format!("sandbox_memory_bytes{{sandbox=\"{sandbox}\"}}"));
    assert!(memory.is_some(), "no memory gauge for the running sandbox:\n{text}");
    if runtime == "linux" {
        assert!(memory > Some(0.0), "{text}");
    }
    assert_promtool_accepts(&text);

    // Deleting the sandbox drops its series.
    let (status, _) = alice.call("DELETE", &format!("/sandboxes/{sandbox}"), None).await;
    assert_eq!(status, 204);
    let text = scrape(&server).await;
    assert!(!text.contains(&sandbox), "series of a deleted sandbox remain:\n{text}");
    assert_eq!(sample(&text, "sandbox_active"), Some(0.0), "{text}");

    // A sandbox started on demand by a workspace exec counts as created too.
    let (_, me) = alice.call("GET", "/me", None).await;
    let home = me["home_workspace_id"].as_str().expect("home workspace").to_string();
    let (status, ran) = alice.call("POST", &format!("/workspaces/{home}/exec"), Some(json!({"command": "true"}))).await;
    assert_eq!(status, 200, "{ran}");
    let text = scrape(&server).await;
    assert_eq!(sample(&text, "sandbox_created_total"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "sandbox_active"), Some(1.0), "{text}");
}

on_every_runtime!(the_seed_series_are_exported);

/// `promtool check metrics` (Debian's `prometheus` package) lints the exposition: exit 0.
fn assert_promtool_accepts(text: &str) {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if skip_unless(found, "no promtool (apt-get install prometheus)") {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_and_queries_the_server() {
    let Some(server) = TestServer::start_runtime("process", |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    let sandbox = alice.create(json!({})).await["id"].as_str().expect("id").to_string();
    alice.exec(&sandbox, json!({"argv": ["uname"]})).await;
    let Some(prometheus) = PrometheusServer::start(server.addr()).await else { return };
    let found = prometheus
        .query_until_found(&format!("sandbox_exec_total{{sandbox=\"{sandbox}\"}}"), Duration::from_secs(30))
        .await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["metric"]["command"], "uname");
    assert_eq!(found[0]["metric"]["job"], "cloudterm");
    assert_eq!(found[0]["value"][1], "1");
    // The target is healthy in Prometheus's own view (the scrape parsed).
    let up = prometheus.query_until_found("up{job=\"cloudterm\"} == 1", Duration::from_secs(10)).await;
    assert_eq!(up.len(), 1, "{up:?}");
}
