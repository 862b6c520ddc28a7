//! Snapshots of a sandbox's writable layer end to end, on the linux runtime with real overlays:
//! packages installed under `/usr`, `/etc` changes, home directories and deleted image files
//! come back in a sandbox started from the snapshot (`POST /sandboxes {"snapshot_id"}`), with
//! their owners; a layer planted with symlinks cannot reach the host; the layer object leaves
//! storage with its snapshot.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use cloudterm_server::config::Config;
use cloudterm_test_support::{GarageServer, TestServer};
use serde_json::{json, Value};

use crate::sandboxes::Api;

fn id_of(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_else(|| panic!("no {field} in {value}")).to_string()
}

async fn stored_keys(server: &TestServer) -> Vec<String> {
    server.state().blobs.list("snapshots").await.expect("list").into_iter().map(|o| o.key).collect()
}

/// What a user does to a fresh sandbox outside its workspace, as its root.
const CHANGES: &str = "set -e
mkdir -p /opt/tool && echo v1 > /opt/tool/version
printf '#!/bin/sh\\necho hello-from-usr-local\\n' > /usr/local/bin/hello && chmod 755 /usr/local/bin/hello
mkdir -p /etc/myapp && echo conf > /etc/myapp/conf
test -e /usr/bin/tac && rm /usr/bin/tac
mkdir -p /home/user && echo notes > /home/user/notes && chown -R 1000:1000 /home/user
echo ws > /workspace/w.txt";

/// What a sandbox started from the snapshot must show.
const CHECKS: &str = "cat /opt/tool/version; hello; cat /etc/myapp/conf; \
    test -e /usr/bin/tac && echo tac-back || echo tac-gone; \
    stat -c %u:%g /home/user/notes; cat /home/user/notes; cat /workspace/w.txt; hostname";

async fn starts_from_the_layer(storage: &str, encrypted: bool) {
    let garage = if storage == "s3" {
        match GarageServer::start().await {
            Some(garage) => Some(garage),
            None => return,
        }
    } else {
        None
    };
    let keys = tempfile::tempdir().expect("tempdir");
    let key_file = keys.path().join("snapshot.key");
    std::fs::write(&key_file, format!("{}\n", "cd".repeat(32))).expect("key");
    let Some(server) = TestServer::start_runtime("linux", |config: &mut Config| {
        if let Some(garage) = &garage {
            crate::snapshots::use_garage(config, garage);
        }
        if encrypted {
            config.snapshots.key_file = Some(key_file.clone());
        }
    })
    .await
    else {
        return;
    };
    let alice = Api::new(&server, "alice");
    let first = id_of(&alice.create(json!({})).await, "id");
    let out = alice.sh(&first, CHANGES).await;
    assert_eq!(out["exit_code"], 0, "{out}");

    let (status, snapshot) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": first}))).await;
    assert_eq!(status, 201, "{snapshot}");
    let snap = id_of(&snapshot, "snapshot_id");
    let layer = &snapshot["layer"];
    assert!(layer["file_count"].as_u64() >= Some(4), "{snapshot}");
    assert!(layer["stored_bytes"].as_u64() > Some(0), "{snapshot}");
    assert_eq!(layer["sha256"].as_str().map(str::len), Some(64), "{snapshot}");
    assert_eq!(alice.sh(&first, "echo thawed").await["stdout"], "thawed\n");
    let keys = stored_keys(&server).await;
    assert!(keys.iter().any(|k| k.contains(&format!("{snap}.layer.tar.zst"))), "{keys:?}");
    // Both objects (workspace and layer) are sealed when a key is set, plain zstd otherwise.
    for key in keys.iter().filter(|k| k.contains(&snap)) {
        let mut stored = Vec::new();
        let mut reader = server.state().blobs.get_stream(key).await.expect("get");
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut stored).await.expect("read");
        let zstd_frame = stored.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(zstd_frame, !encrypted, "{key}: a plain zstd frame is stored exactly when not encrypted");
        if encrypted {
            assert!(!stored.windows(20).any(|w| w == b"hello-from-usr-local"), "plaintext in {key}");
        }
    }
    // The key stays on the host: the sandbox cannot read its file.
    let out = alice.sh(&first, &format!("cat {} || echo unreadable", key_file.display())).await;
    assert_eq!(out["stdout"], "unreadable\n", "{out}");

    // The workspace changes after the snapshot; the new sandbox gets the snapshot's.
    alice.sh(&first, "echo later > /workspace/w.txt").await;
    let (status, second) = alice.call("POST", "/sandboxes", Some(json!({"snapshot_id": snap}))).await;
    assert_eq!(status, 201, "{second}");
    let second = id_of(&second, "id");
    assert_ne!(second, first);
    let out = alice.sh(&second, CHECKS).await;
    assert_eq!(out["exit_code"], 0, "{out}");
    assert_eq!(
        out["stdout"],
        format!("v1\nhello-from-usr-local\nconf\ntac-gone\n1000:1000\nnotes\nws\n{second}\n"),
        "{out}"
    );
    // The two sandboxes' layers are separate copies.
    alice.sh(&second, "echo v2 > /opt/tool/version").await;
    assert_eq!(alice.sh(&first, "cat /opt/tool/version").await["stdout"], "v1\n");
    // What the sandbox's uid 1000 owns is an unprivileged host uid, not host uid 1000.
    let data = server.state().config.data_dir.clone();
    let notes = walk_find(&data.join("sandboxes").join(&second), "notes").expect("notes on the host");
    assert_eq!(std::fs::metadata(&notes).expect("stat").uid(), 101_000);

    // Deleting the snapshot removes both objects.
    let (status, _) = alice.call("DELETE", &format!("/snapshot/{snap}"), None).await;
    assert_eq!(status, 204);
    let keys = stored_keys(&server).await;
    assert!(!keys.iter().any(|k| k.contains(&snap)), "{keys:?}");
}

/// The first file called `name` under `dir` (not following symlinks).
fn walk_find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let kind = entry.file_type().ok()?;
        if kind.is_file() && entry.file_name() == name {
            return Some(path);
        }
        if kind.is_dir() {
            if let Some(found) = walk_find(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_starts_from_a_snapshots_writable_layer() {
    starts_from_the_layer("local", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_layer_on_s3_comes_back_too() {
    starts_from_the_layer("s3", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planted_symlink_in_a_layer_cannot_reach_the_host() {
    let Some(server) = TestServer::start_runtime("linux", |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    // A host directory the sandbox knows the path of: what the helper must never touch.
    let target = tempfile::tempdir().expect("target");
    std::fs::set_permissions(target.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    let plant = format!("rm -rf /var/tmp && ln -s {} /var/tmp && ls -ld /var/tmp", target.path().display());
    let out = alice.sh(&sandbox, &plant).await;
    assert_eq!(out["exit_code"], 0, "{out}");
    let (_, snapshot) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": sandbox}))).await;
    let snap = id_of(&snapshot, "snapshot_id");

    let (status, body) = alice.call("POST", "/sandboxes", Some(json!({"snapshot_id": snap}))).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("writable layer"), "{body}");
    let meta = std::fs::metadata(target.path()).expect("stat");
    assert_eq!((meta.permissions().mode() & 0o7777, meta.uid()), (0o700, 0), "the helper changed a host dir");
    // Nothing of the failed start is left: only the first sandbox runs, no layer scratch dir.
    let (_, listed) = alice.call("GET", "/sandboxes", None).await;
    let running: Vec<&Value> =
        listed["sandboxes"].as_array().expect("list").iter().filter(|s| s["state"] == "running").collect();
    assert_eq!(running.len(), 1, "{listed}");
    let state_root = server.state().config.data_dir.join("sandboxes");
    let scratch: Vec<_> = std::fs::read_dir(&state_root)
        .expect("state root")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".layer-"))
        .collect();
    assert!(scratch.is_empty(), "layer scratch left: {scratch:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn starting_from_a_snapshot_refuses_bad_input() {
    let Some(server) = TestServer::start_runtime("linux", |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    let mallory = Api::new(&server, "mallory");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    alice.sh(&sandbox, "touch /opt/marker").await;
    let (_, snapshot) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": sandbox}))).await;
    let snap = id_of(&snapshot, "snapshot_id");

    let (status, body) = alice.call("POST", "/sandboxes", Some(json!({"snapshot_id": "snap_nope"}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = mallory.call("POST", "/sandboxes", Some(json!({"snapshot_id": snap}))).await;
    assert_eq!(status, 404, "another principal's snapshot: {body}");
    let (status, body) =
        alice.call("POST", "/sandboxes", Some(json!({"snapshot_id": snap, "image": "something-else"}))).await;
    assert_eq!(status, 422, "an image the layer was not taken with: {body}");
    let (status, body) = alice.call("POST", "/sandboxes", Some(json!({"snapshot_id": 7}))).await;
    assert!((400..500).contains(&status), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stop_snapshots_the_layer_before_stopping() {
    let Some(server) = TestServer::start_runtime("linux", |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({"timeout_seconds": 1})).await, "id");
    alice.sh(&sandbox, "echo idle-layer > /root/kept").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let snapshot = loop {
        let (_, listed) = alice.call("GET", "/snapshot/list", None).await;
        if let Some(snapshot) = listed["snapshots"].as_array().and_then(|s| s.first()) {
            break snapshot.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no idle snapshot was taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(snapshot["kind"], "idle");
    assert!(snapshot["layer"].is_object(), "{snapshot}");
    let (status, second) =
        alice.call("POST", "/sandboxes", Some(json!({"snapshot_id": snapshot["snapshot_id"]}))).await;
    assert_eq!(status, 201, "{second}");
    let out = alice.sh(&id_of(&second, "id"), "cat /root/kept").await;
    assert_eq!(out["stdout"], "idle-layer\n", "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_collects_layer_objects_of_crashed_snapshots() {
    let server = TestServer::start().await;
    let state = server.state();
    let pending = crate::snapshots::crashed_snapshot("alice", "snap_crashed");
    state.store.insert_snapshot(&pending).await.expect("pending");
    for key in [
        "snapshots/alice/snap_crashed.tar.zst",
        "snapshots/alice/snap_crashed.layer.tar.zst",
        "snapshots/alice/snap_stray.layer.tar.zst.sealed",
    ] {
        state.blobs.put_stream(key, &b"partial"[..]).await.expect("put");
    }
    let report = state.snapshots.recover().await.expect("recover");
    assert_eq!(report.removed_pending, ["snap_crashed"]);
    assert_eq!(report.removed_strays, ["snapshots/alice/snap_stray.layer.tar.zst.sealed"]);
    assert!(stored_keys(&server).await.is_empty(), "{:?}", stored_keys(&server).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_process_runtime_a_snapshot_start_restores_the_workspace() {
    let Some(server) = TestServer::start_runtime("process", |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    alice.sh(&sandbox, "echo from-snapshot > kept.txt").await;
    let (_, snapshot) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": sandbox}))).await;
    assert!(snapshot["layer"].is_null(), "the process runtime keeps no layer: {snapshot}");
    alice.sh(&sandbox, "echo changed > kept.txt").await;
    let (status, second) =
        alice.call("POST", "/sandboxes", Some(json!({"snapshot_id": snapshot["snapshot_id"]}))).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(alice.sh(&id_of(&second, "id"), "cat kept.txt").await["stdout"], "from-snapshot\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_a_trimmed_snapshots_layer_object_too() {
    let Some(server) = TestServer::start_runtime("linux", |config: &mut Config| config.snapshots.retention = 1).await
    else {
        return;
    };
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    alice.sh(&sandbox, "echo one > /opt/marker").await;
    let (status, first) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": sandbox}))).await;
    assert_eq!(status, 201, "{first}");
    let first = id_of(&first, "snapshot_id");
    assert_eq!(stored_keys(&server).await.iter().filter(|k| k.contains(&first)).count(), 2, "workspace + layer");
    alice.sh(&sandbox, "echo two > /opt/marker").await;
    let (status, second) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": sandbox}))).await;
    assert_eq!(status, 201, "{second}");
    let second = id_of(&second, "snapshot_id");
    let keys = stored_keys(&server).await;
    assert!(!keys.iter().any(|k| k.contains(&first)), "the trimmed snapshot's objects stay: {keys:?}");
    assert_eq!(keys.iter().filter(|k| k.contains(&second)).count(), 2, "{keys:?}");
}
