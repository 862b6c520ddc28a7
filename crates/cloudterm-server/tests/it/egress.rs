//! The egress quota end to end on the linux runtime with `sandboxes.network = "nat"`: bytes a
//! sandbox sends to a stand-in for the internet show in `GET /sandboxes/{id}`, `/me` and the
//! metrics; from 80% of the limit responses about the sandbox warn; past it, sends fail while
//! exec keeps working and the violation is counted once. The process runtime refuses `nat`.

use std::time::Duration;

use cloudterm_server::{AppState, Config, Overrides};
use cloudterm_test_support::{RemoteHost, TestServer};
use serde_json::json;

use crate::sandboxes::Api;

/// Sends `bytes` bytes from inside the sandbox to `to:port`; `CONNECTED`, then `SENT n` or
/// `FAILED …` on stdout.
async fn send(api: &Api, id: &str, to: std::net::Ipv4Addr, port: u16, bytes: usize) -> (String, Option<String>) {
    let script = format!(
        "import socket\ntry:\n    s = socket.create_connection(('{to}', {port}), timeout=5)\n    print('CONNECTED')\n    \
         s.settimeout(5)\n    s.sendall(b'x' * {bytes})\n    s.shutdown(socket.SHUT_WR)\n    s.recv(1)\n    \
         print('SENT', {bytes})\nexcept Exception as e:\n    print('FAILED', repr(e))\n"
    );
    let response = api
        .raw(reqwest::Method::POST, &format!("/sandboxes/{id}/exec"))
        .json(&json!({"argv": ["python3", "-c", script]}))
        .send()
        .await
        .expect("exec");
    assert_eq!(response.status(), 200, "exec must keep working");
    let warning = response.headers().get("x-quota-warning").map(|v| v.to_str().unwrap_or_default().to_string());
    let body: serde_json::Value = response.json().await.expect("json");
    (body["stdout"].as_str().unwrap_or_default().to_string(), warning)
}

fn violations(metrics: &str) -> usize {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("quota_violations_total{type=\"egress\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_is_counted_warned_about_and_cut_at_the_limit() {
    let Some(server) = TestServer::start_runtime("linux", |c| {
        c.sandboxes.network = "nat".into();
        c.sandboxes.network_range = "10.214.0.0/24".into();
        c.sandboxes.warm_pool = 1;
        c.quotas.egress_mb = 1;
        c.quotas.principals.insert(
            "unmetered".into(),
            cloudterm_server::config::QuotaOverrideConfig { egress_mb: Some(0), ..Default::default() },
        );
    })
    .await
    else {
        return;
    };
    let (remote, links) = RemoteHost::new("srv", &["203.0.113.12"]);
    let outside = links[0].remote;
    let alice = Api::new(&server, "alice");
    // A default create comes from the warm pool: the limit is applied at the claim.
    let sandbox = alice.create(json!({})).await;
    let id = sandbox["id"].as_str().expect("id").to_string();
    const MIB: u64 = 1 << 20;

    let (out, warning) = send(&alice, &id, outside, remote.port, 500_000).await;
    assert!(out.contains("SENT 500000"), "{out}");
    assert_eq!(warning, None, "under 80%: no warning");
    let (status, got) = alice.call("GET", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(status, 200);
    let bytes = got["egress"]["bytes"].as_u64().expect("egress bytes");
    assert!((500_000..550_000).contains(&bytes), "{got}");
    assert_eq!(got["egress"]["limit_bytes"], MIB);
    assert_eq!(got["egress"]["cut"], false);

    let (out, warning) = send(&alice, &id, outside, remote.port, 350_000).await;
    assert!(out.contains("SENT 350000"), "{out}");
    let warning = warning.expect("at 80% the exec answer warns");
    let (kind, used) = warning.split_once(' ').expect("kind used/limit");
    assert_eq!(kind, "egress");
    assert!(used.ends_with(&format!("/{MIB}")), "{warning}");

    let (out, _) = send(&alice, &id, outside, remote.port, 400_000).await;
    assert!(out.contains("FAILED"), "past the limit sends fail: {out}");
    let (out, _) = send(&alice, &id, outside, remote.port, 10).await;
    assert!(out.contains("FAILED") && !out.contains("CONNECTED"), "{out}");
    let still = alice.sh(&id, "echo still here").await;
    assert_eq!(still["stdout"], "still here\n", "exec works past the egress limit");
    let response = alice.raw(reqwest::Method::GET, &format!("/sandboxes/{id}")).send().await.expect("get");
    assert!(response.headers().get("x-quota-warning").is_some(), "the sandbox's GET warns too");
    let got: serde_json::Value = response.json().await.expect("json");
    assert_eq!(got["egress"]["cut"], true, "{got}");
    assert!(remote.bytes_to(outside) <= MIB, "no more than the limit got out: {}", remote.bytes_to(outside));

    let metrics = alice.text("/metrics").await;
    assert_eq!(violations(&metrics), 1, "{metrics}");
    assert!(metrics.contains(&format!("sandbox_egress_bytes{{sandbox=\"{id}\"}}")), "{metrics}");
    let (_, me) = alice.call("GET", "/me", None).await;
    let egress = me["quota"].as_array().expect("quota").iter().find(|q| q["kind"] == "egress").cloned();
    let egress = egress.expect("/me shows egress");
    assert_eq!(egress["limit"], MIB);
    assert!(egress["used"].as_u64().expect("used") >= MIB, "{me}");
    assert_eq!(violations(&alice.text("/metrics").await), 1, "counted once per sandbox");

    // A principal whose override lifts the limit claims a pooled sandbox (which the pool gave
    // the default limit): counted, never cut, no limit shown.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.state().sandboxes.pool_ready().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the pool did not refill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pooled = server.state().sandboxes.pool_ready();
    let free = Api::new(&server, "unmetered");
    let free_id = free.create(json!({})).await["id"].as_str().expect("id").to_string();
    assert!(pooled.contains(&free_id), "the override's claim must come from the pool");
    let (out, warning) = send(&free, &free_id, outside, remote.port, 1_200_000).await;
    assert!(out.contains("SENT 1200000") && warning.is_none(), "{out} {warning:?}");
    let (_, got) = free.call("GET", &format!("/sandboxes/{free_id}"), None).await;
    assert!(got["egress"]["bytes"].as_u64().expect("bytes") >= 1_200_000 && got["egress"]["limit_bytes"].is_null());

    for (api, id) in [(&alice, &id), (&free, &free_id)] {
        let (status, _) = api.call("DELETE", &format!("/sandboxes/{id}"), None).await;
        assert_eq!(status, 204);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn the_process_runtime_refuses_nat() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let overrides = Overrides { data_dir: Some(data_dir.path().to_path_buf()), listen: Some("127.0.0.1:0".into()) };
    let mut config = Config::load(None, |_| None, &overrides).expect("config");
    config.runtime.kind = "process".into();
    config.sandboxes.network = "nat".into();
    config.validate().expect("the setting itself is valid");
    let err = match AppState::build(config).await {
        Ok(_) => panic!("the process runtime must refuse sandboxes.network = nat"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("sandboxes.network") && err.contains("process") && err.contains("linux"), "{err}");
}
