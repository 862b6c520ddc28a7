//! Quotas end to end: the exec rate per sandbox over a rolling hour, running sandboxes per
//! principal, per-principal overrides, `X-Quota-Warning` from 80%, 429 with `Retry-After` and
//! the JSON envelope past the limit, the violation counter, and `/me` showing usage.

use std::collections::BTreeMap;

use cloudterm_server::config::QuotaOverrideConfig;
use cloudterm_test_support::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

use crate::sandboxes::Api;

/// One exec through the raw client: status, `X-Quota-Warning`, `Retry-After`, body.
async fn exec(api: &Api, sandbox: &str) -> (u16, Option<String>, Option<u64>, Value) {
    let response = api
        .raw(Method::POST, &format!("/sandboxes/{sandbox}/exec"))
        .json(&json!({"argv": ["true"]}))
        .send()
        .await
        .expect("exec");
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let warning = header("x-quota-warning");
    let retry = header("retry-after").and_then(|v| v.parse().ok());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, warning, retry, body)
}

fn quota<'a>(me: &'a Value, kind: &str) -> &'a Value {
    me["quota"].as_array().and_then(|q| q.iter().find(|e| e["kind"] == kind)).unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exec_rate_warns_then_refuses_per_sandbox() {
    let Some(server) = TestServer::start_runtime("process", |c| c.quotas.exec_per_hour = 5).await else { return };
    let alice = Api::new(&server, "alice");
    let sandbox = alice.create(json!({})).await["id"].as_str().expect("id").to_string();
    for n in 1..=3 {
        let (status, warning, _, body) = exec(&alice, &sandbox).await;
        assert_eq!((status, warning), (200, None), "exec {n}: {body}");
    }
    let (status, warning, _, _) = exec(&alice, &sandbox).await;
    assert_eq!((status, warning.as_deref()), (200, Some("exec_rate 4/5")));
    let (status, warning, _, _) = exec(&alice, &sandbox).await;
    assert_eq!((status, warning.as_deref()), (200, Some("exec_rate 5/5")));

    let (status, _, retry, body) = exec(&alice, &sandbox).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert!(retry.is_some_and(|s| s > 3000 && s <= 3600), "Retry-After {retry:?}");
    // Background jobs count as commands too.
    let (status, body) =
        alice.call("POST", &format!("/sandboxes/{sandbox}/background"), Some(json!({"command": "sleep 1"}))).await;
    assert_eq!(status, 429, "{body}");

    let (_, me) = alice.call("GET", "/me", None).await;
    assert_eq!(quota(&me, "exec_rate"), &json!({"kind": "exec_rate", "used": 5, "limit": 5}), "{me}");

    // The window is the sandbox's: another sandbox of the same principal still runs commands.
    let other = alice.create(json!({})).await["id"].as_str().expect("id").to_string();
    assert_eq!(exec(&alice, &other).await.0, 200);

    let metrics = alice.text("/metrics").await;
    assert!(metrics.contains("quota_violations_total{type=\"exec_rate\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn overrides_apply_to_their_principal_only() {
    let Some(server) = TestServer::start_runtime("process", |c| {
        c.quotas.max_sandboxes = 5;
        c.quotas.exec_per_hour = 2;
        c.quotas.principals = BTreeMap::from([(
            "bob".to_string(),
            QuotaOverrideConfig { max_sandboxes: Some(1), exec_per_hour: Some(0), egress_mb: None },
        )]);
    })
    .await
    else {
        return;
    };
    let alice = Api::new(&server, "alice");
    let bob = Api::new(&server, "bob");

    let bobs = bob.create(json!({})).await["id"].as_str().expect("id").to_string();
    let (status, body) = bob.call("POST", "/sandboxes", Some(json!({}))).await;
    assert_eq!(status, 429, "bob's one sandbox: {body}");
    for _ in 0..5 {
        assert_eq!(exec(&bob, &bobs).await.0, 200, "bob's exec rate is unlimited");
    }
    let (_, me) = bob.call("GET", "/me", None).await;
    assert_eq!(quota(&me, "sandboxes"), &json!({"kind": "sandboxes", "used": 1, "limit": 1}), "{me}");
    assert!(quota(&me, "exec_rate").get("limit").is_none(), "unlimited has no limit: {me}");

    // Alice has the defaults: five sandboxes, a warning from the fourth.
    let mut warnings = Vec::new();
    for _ in 0..5 {
        let response = alice.raw(Method::POST, "/sandboxes").json(&json!({})).send().await.expect("create");
        assert_eq!(response.status().as_u16(), 201);
        warnings.push(response.headers().get("x-quota-warning").map(|v| v.to_str().unwrap_or("").to_string()));
    }
    assert_eq!(warnings, [None, None, None, Some("sandboxes 4/5".to_string()), Some("sandboxes 5/5".to_string())]);
    let (status, _) = alice.call("POST", "/sandboxes", Some(json!({}))).await;
    assert_eq!(status, 429);
}
