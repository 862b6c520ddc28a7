//! The per-workspace storage quota end to end on the linux runtime: a sandbox writing past
//! its workspace's limit gets `ENOSPC` (the files written before stay), an upload through the
//! API past it is a 429 with `Retry-After` that `quota_violations_total{type="storage"}`
//! counts, `X-Quota-Warning: storage <used>/<limit>` from 80%, `/me` and `GET /workspaces/{id}`
//! show usage, a restore bigger than the limit is refused with the workspace unchanged,
//! per-principal overrides, data surviving a crashed server, and no mount or loop device left
//! behind. On the process runtime the limit is only reported.

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudterm_server::config::QuotaOverrideConfig;
use cloudterm_test_support::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

use crate::sandboxes::Api;

const MIB: u64 = 1 << 20;

fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap_or_else(|| panic!("no id in {value}")).to_string()
}

fn storage_of(me: &Value) -> Value {
    let quotas = me["quota"].as_array().cloned().unwrap_or_default();
    quotas.into_iter().find(|q| q["kind"] == "storage").unwrap_or(Value::Null)
}

/// Loop devices whose backing file is under `dir`, and mounts at or below it.
fn leftovers_under(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let losetup =
        Command::new("losetup").arg("--list").arg("--noheadings").arg("--output").arg("NAME,BACK-FILE").output();
    let loops = losetup.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let needle = dir.to_string_lossy().into_owned();
    loops.lines().chain(mounts.lines()).filter(|line| line.contains(&needle)).map(str::to_string).collect()
}

/// Drops the server (which stops its sandboxes and unmounts what it mounted for the test's
/// temporary data dir) and asserts nothing of it is left on the host.
fn assert_no_leftovers(server: TestServer) {
    let data: PathBuf = server.data_dir().to_path_buf();
    drop(server);
    assert_eq!(leftovers_under(&data), Vec::<String>::new(), "mounts or loop devices left behind");
}

/// A PUT upload: status, `X-Quota-Warning` lines, `Retry-After`, body.
async fn upload(api: &Api, sandbox: &str, path: &str, bytes: usize) -> (u16, Vec<String>, Option<u64>, Value) {
    let response = api
        .raw(Method::PUT, &format!("/sandboxes/{sandbox}/files/{path}"))
        .body(vec![7u8; bytes])
        .send()
        .await
        .expect("upload");
    let status = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("x-quota-warning")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, warnings, retry, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_cannot_write_past_its_workspace_limit() {
    let Some(server) = TestServer::start_runtime("linux", |c| c.quotas.storage_mb = 16).await else { return };
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({})).await);

    // dd from inside the sandbox: ENOSPC at the limit, the file written before intact.
    let out = alice
        .sh(&sandbox, "echo kept > /workspace/kept.txt && dd if=/dev/zero of=/workspace/big bs=1M count=40 conv=fsync")
        .await;
    assert_ne!(out["exit_code"], 0, "40 MiB into a 16 MiB workspace: {out}");
    assert!(out["stderr"].as_str().unwrap_or("").contains("No space left on device"), "{out}");
    let out = alice.sh(&sandbox, "cat /workspace/kept.txt && stat -c %s /workspace/big").await;
    let text = out["stdout"].as_str().unwrap_or("").to_string();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("kept"), "{out}");
    let big: u64 = lines.next().and_then(|l| l.parse().ok()).expect("size of big");
    assert!(big > 14 * MIB && big <= 16 * MIB, "the sandbox got its limit, no more: {big}");

    // /me shows the home workspace against its limit, enforced.
    let (_, me) = alice.call("GET", "/me", None).await;
    let storage = storage_of(&me);
    assert_eq!(storage["limit"], 16 * MIB, "{me}");
    assert_eq!(storage["enforced"], true, "{me}");
    assert!(storage["used"].as_u64().unwrap_or(0) > 14 * MIB, "{me}");
    let home = storage["workspace_id"].as_str().expect("workspace id").to_string();

    // An upload through the API past the limit: 429 with Retry-After and the envelope, counted.
    let (status, _, retry, body) = upload(&alice, &sandbox, "more.bin", 4 * MIB as usize).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert!(retry.is_some_and(|s| s > 0), "Retry-After {retry:?}");
    let metrics = alice.text("/metrics").await;
    assert!(metrics.contains("quota_violations_total{type=\"storage\"} 1"), "{metrics}");
    let out = alice.sh(&sandbox, "ls -a /workspace").await;
    assert!(!out["stdout"].as_str().unwrap_or("").contains("more.bin"), "no partial upload left: {out}");

    // Room again: uploads pass, and from 80% they warn.
    alice.sh(&sandbox, "rm /workspace/big").await;
    let (status, warnings, _, body) = upload(&alice, &sandbox, "small.bin", MIB as usize).await;
    assert_eq!((status, warnings.len()), (201, 0), "{body}");
    let (status, warnings, _, body) = upload(&alice, &sandbox, "large.bin", 12 * MIB as usize).await;
    assert_eq!(status, 201, "{body}");
    let warning = warnings.iter().find(|w| w.starts_with("storage ")).unwrap_or_else(|| panic!("{warnings:?}"));
    let (used, limit) = warning["storage ".len()..].split_once('/').expect("used/limit");
    assert_eq!(limit, (16 * MIB).to_string());
    assert!(used.parse::<u64>().expect("used") >= 13 * MIB, "{warning}");

    // The workspace's own GET shows it too, with the header.
    let response = alice.raw(Method::GET, &format!("/workspaces/{home}")).send().await.expect("get");
    let header = response.headers().get("x-quota-warning").and_then(|v| v.to_str().ok()).map(str::to_string);
    let workspace: Value = response.json().await.expect("json");
    assert_eq!(workspace["storage"]["limit"], 16 * MIB, "{workspace}");
    assert!(header.is_some_and(|h| h.starts_with("storage ")), "{workspace}");

    assert_no_leftovers(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_past_the_limit_are_refused_and_overrides_apply() {
    let Some(server) = TestServer::start_runtime("linux", |c| {
        c.quotas.storage_mb = 8;
        c.sandboxes.warm_pool = 0;
        c.quotas.principals.insert("bob".into(), QuotaOverrideConfig { storage_mb: Some(64), ..Default::default() });
    })
    .await
    else {
        return;
    };
    let alice = Api::new(&server, "alice");
    let bob = Api::new(&server, "bob");

    // Bob's override: 20 MiB fit in his 64.
    let (status, project) = bob.call("POST", "/workspaces", Some(json!({"name": "big"}))).await;
    assert_eq!(status, 201, "{project}");
    let project = id_of(&project);
    let bobs = id_of(&bob.create(json!({"workspace_id": project})).await);
    let out = bob.sh(&bobs, "head -c 20M /dev/urandom > /workspace/data.bin && echo ok").await;
    assert_eq!(out["stdout"], "ok\n", "{out}");
    let (status, snapshot) = bob.call("POST", "/snapshot/create", Some(json!({"workspace_id": project}))).await;
    assert_eq!(status, 201, "{snapshot}");
    let snapshot = snapshot["snapshot_id"].as_str().expect("snapshot id").to_string();
    let (status, body) = bob
        .call("POST", &format!("/workspaces/{project}/share"), Some(json!({"agent_id": "alice", "permission": "read"})))
        .await;
    assert_eq!(status, 200, "{body}");

    // Alice has the default 8 MiB: the 20 MiB snapshot does not go into her workspace.
    let hers = id_of(&alice.create(json!({})).await);
    alice.sh(&hers, "echo mine > /workspace/mine.txt").await;
    let (status, body) =
        alice.call("POST", "/snapshot/restore", Some(json!({"snapshot_id": snapshot, "sandbox_id": hers}))).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    let out = alice.sh(&hers, "cat /workspace/mine.txt; ls -A /workspace").await;
    assert_eq!(out["stdout"], "mine\nmine.txt\n", "the workspace is unchanged: {out}");
    let (_, me) = alice.call("GET", "/me", None).await;
    assert_eq!(storage_of(&me)["limit"], 8 * MIB, "{me}");

    // A full workspace can still be restored: the new tree is unpacked beside the old one in
    // the volume's root reserve, so 6 MiB restore over 8 MiB of files in an 8 MiB limit.
    alice.sh(&hers, "head -c 6M /dev/urandom > /workspace/six.bin").await;
    let (status, own) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": hers}))).await;
    assert_eq!(status, 201, "{own}");
    let out = alice.sh(&hers, "head -c 8M /dev/zero > /workspace/fill.bin; echo $?").await;
    assert_ne!(out["stdout"], "0\n", "the workspace is full: {out}");
    let body = json!({"snapshot_id": own["snapshot_id"], "sandbox_id": hers});
    let (status, restored) = alice.call("POST", "/snapshot/restore", Some(body)).await;
    assert_eq!(status, 200, "{restored}");
    let out = alice.sh(&hers, "ls -A /workspace; stat -c %s /workspace/six.bin").await;
    assert_eq!(out["stdout"], format!("mine.txt\nsix.bin\n{}\n", 6 * MIB), "{out}");

    // Into Bob's own workspace it fits (old and new tree side by side while it is unpacked).
    let (status, body) = bob.call("POST", "/snapshot/restore", Some(json!({"snapshot_id": snapshot}))).await;
    assert_eq!(status, 200, "{body}");
    let out = bob.sh(&bobs, "stat -c %s /workspace/data.bin").await;
    assert_eq!(out["stdout"], format!("{}\n", 20 * MIB), "{out}");

    // Deleting the workspace removes its volume: no mount, no image, no loop device.
    assert_eq!(bob.call("DELETE", &format!("/sandboxes/{bobs}"), None).await.0, 204);
    assert_eq!(bob.call("DELETE", &format!("/workspaces/{project}"), None).await.0, 204);
    let bob_dir = server.data_dir().join("workspaces").join("bob");
    let left: Vec<String> = std::fs::read_dir(&bob_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&project))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "the workspace's directory and image are gone");
    assert_eq!(leftovers_under(&bob_dir), Vec::<String>::new());

    assert_no_leftovers(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_files_survive_a_crashed_server_and_stay_limited() {
    let Some(server) = TestServer::start_runtime("linux", |c| {
        c.quotas.storage_mb = 8;
        c.sandboxes.warm_pool = 0;
    })
    .await
    else {
        return;
    };
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({})).await);
    alice.sh(&sandbox, "echo durable > /workspace/a.txt").await;
    // What SIGKILL leaves: sandboxes and mounts as they were, nothing shut down.
    let data = server.crash();

    let server = TestServer::restart_on(data, |c| {
        c.runtime.kind = "linux".into();
        c.quotas.storage_mb = 8;
        c.sandboxes.warm_pool = 0;
    })
    .await;
    let alice = Api::new(&server, "alice");
    let out = alice.sh(&sandbox, "cat /workspace/a.txt; head -c 20M /dev/zero > /workspace/big; echo $?").await;
    let stdout = out["stdout"].as_str().unwrap_or("");
    assert!(stdout.starts_with("durable\n"), "{out}");
    assert_ne!(stdout.lines().last(), Some("0"), "still limited after the restart: {out}");
    let fresh = id_of(&alice.create(json!({})).await);
    let out = alice.sh(&fresh, "cat /workspace/a.txt").await;
    assert_eq!(out["stdout"], "durable\n", "{out}");
    assert_no_leftovers(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_process_runtime_reports_storage_without_enforcing_it() {
    let Some(server) = TestServer::start_runtime("process", |c| c.quotas.storage_mb = 1).await else { return };
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({})).await);
    let (status, _, _, body) = upload(&alice, &sandbox, "two.bin", 2 * MIB as usize).await;
    assert_eq!(status, 201, "nothing enforces the limit here: {body}");
    let (_, me) = alice.call("GET", "/me", None).await;
    let storage = storage_of(&me);
    assert_eq!(storage["enforced"], false, "{me}");
    assert_eq!(storage["limit"], MIB, "{me}");
    assert!(storage["used"].as_u64().unwrap_or(0) >= 2 * MIB, "{me}");
    assert_no_leftovers(server);
}
