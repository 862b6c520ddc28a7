//! The Snapshot API end to end: real sandboxes, real storage (local disk and a real S3 server,
//! Garage), archives read back with the system's `tar`, and archives crafted to attack.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use cloudterm_server::config::{Config, S3Credentials};
use cloudterm_store::{SnapshotRecord, SnapshotState};
use cloudterm_test_support::{GarageServer, TestServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::sandboxes::Api;

fn id_of(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_else(|| panic!("no {field} in {value}")).to_string()
}

pub fn use_garage(config: &mut Config, garage: &GarageServer) {
    config.storage.backend = "s3".into();
    config.storage.s3_endpoint = Some(garage.endpoint().to_string());
    config.storage.s3_region = garage.region().to_string();
    config.storage.s3_bucket = Some(garage.bucket().to_string());
    config.storage.s3_prefix = "it".into();
    config.storage.s3_credentials = Some(S3Credentials {
        access_key_id: garage.access_key_id().to_string(),
        secret_access_key: garage.secret_access_key().to_string(),
    });
}

/// Files under the local snapshot root (the objects a local store holds).
fn local_objects(server: &TestServer) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&server.state().config.local_storage_path(), &mut out);
    out
}

/// What a crash mid-snapshot leaves in the store: a pending record of `owner`'s `id`.
pub fn crashed_snapshot(owner: &str, id: &str) -> SnapshotRecord {
    SnapshotRecord {
        id: id.into(),
        workspace_id: "ws_x".into(),
        owner: owner.into(),
        label: None,
        kind: "manual".into(),
        pinned: false,
        state: SnapshotState::Pending,
        object_key: format!("snapshots/{owner}/{id}.tar.zst"),
        size_bytes: 0,
        stored_bytes: 0,
        file_count: 0,
        sha256: None,
        layer: None,
        created_at: Utc::now(),
    }
}

async fn stored_keys(server: &TestServer) -> Vec<String> {
    server.state().blobs.list("snapshots").await.expect("list").into_iter().map(|o| o.key).collect()
}

/// Create, list, download (read by the system's tar), restore into a running sandbox, the
/// owner-only rule, delete.
async fn round_trip(runtime: &str, storage: &str) {
    let garage = if storage == "s3" {
        match GarageServer::start().await {
            Some(garage) => Some(garage),
            None => return,
        }
    } else {
        None
    };
    let Some(server) = TestServer::start_runtime(runtime, |config| {
        if let Some(garage) = &garage {
            use_garage(config, garage);
        }
    })
    .await
    else {
        return;
    };
    let alice = Api::new(&server, "alice");
    let mallory = Api::new(&server, "mallory");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    let out = alice
        .sh(
            &sandbox,
            "mkdir -p src && echo one > src/a.txt && ln -s a.txt src/link && head -c 3000000 /dev/urandom > big",
        )
        .await;
    assert_eq!(out["exit_code"], 0, "{out}");

    let (status, snapshot) =
        alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": sandbox, "label": "v1"}))).await;
    assert_eq!(status, 201, "{snapshot}");
    let snap = id_of(&snapshot, "snapshot_id");
    assert!(snap.starts_with("snap_"));
    assert_eq!((snapshot["label"].as_str(), snapshot["kind"].as_str()), (Some("v1"), Some("manual")));
    assert_eq!(snapshot["encrypted"], false);
    assert!(snapshot["file_count"].as_u64() >= Some(2), "{snapshot}");
    assert!(snapshot["size_bytes"].as_u64() >= Some(3_000_000), "{snapshot}");
    // The sandbox was thawed again.
    assert_eq!(alice.sh(&sandbox, "echo alive").await["stdout"], "alive\n");

    let (_, listed) = alice.call("GET", "/snapshot/list", None).await;
    assert_eq!(listed["snapshots"][0]["snapshot_id"], snap.as_str(), "{listed}");

    let archive = alice.bytes(&format!("/snapshot/{snap}/download")).await;
    assert_eq!(archive.len() as u64, snapshot["stored_bytes"].as_u64().expect("stored_bytes"));
    assert_eq!(hex::encode(Sha256::digest(&archive)), snapshot["sha256"].as_str().expect("sha256"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("s.tar.zst");
    std::fs::write(&file, &archive).expect("write");
    let listing = Command::new("tar").arg("--zstd").arg("-tvf").arg(&file).output().expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("src/a.txt") && listing.contains("src/link -> a.txt"), "{listing}");

    // Change the workspace, then restore into the running sandbox.
    alice.sh(&sandbox, "rm -rf src && echo junk > junk.txt").await;
    let (status, restored) =
        alice.call("POST", "/snapshot/restore", Some(json!({"snapshot_id": snap, "sandbox_id": sandbox}))).await;
    assert_eq!(status, 200, "{restored}");
    assert!(restored["restored_files"].as_u64() >= Some(2));
    let out = alice.sh(&sandbox, "cat src/a.txt; readlink src/link; test -e junk.txt && echo junk || echo clean").await;
    assert_eq!(out["stdout"], "one\na.txt\nclean\n", "{out}");

    // Another principal sees nothing of it.
    for (method, path, body) in [
        ("GET", format!("/snapshot/{snap}"), None),
        ("GET", format!("/snapshot/{snap}/download"), None),
        ("POST", format!("/snapshot/{snap}/pin"), Some(json!({"pinned": true}))),
        ("POST", "/snapshot/restore".to_string(), Some(json!({"snapshot_id": snap}))),
        ("POST", "/snapshot/create".to_string(), Some(json!({"sandbox_id": sandbox}))),
        ("DELETE", format!("/snapshot/{snap}"), None),
    ] {
        let (status, body) = mallory.call(method, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (_, listed) = mallory.call("GET", "/snapshot/list", None).await;
    assert_eq!(listed["snapshots"], json!([]));

    let (status, _) = alice.call("DELETE", &format!("/snapshot/{snap}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = alice.call("GET", &format!("/snapshot/{snap}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(stored_keys(&server).await, Vec::<String>::new(), "the object must leave storage");
}

async fn bad_input_is_refused_and_lists_nothing(runtime: &str, _storage: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    let cases = [
        (json!({"snapshot_id": "snap_nope"}), "/snapshot/restore", 404),
        (json!({"sandbox_id": "sbx_nope"}), "/snapshot/create", 404),
        (json!({"workspace_id": "ws_nope"}), "/snapshot/create", 404),
        (json!({"sandbox_id": "a", "workspace_id": "b"}), "/snapshot/create", 422),
        (json!({"label": "x".repeat(300)}), "/snapshot/create", 422),
        (json!({"surprise": 1}), "/snapshot/create", 422),
        (json!({}), "/snapshot/restore", 422),
    ];
    for (body, path, expected) in cases {
        let (status, answer) = alice.call("POST", path, Some(body.clone())).await;
        assert_eq!(status, expected, "{path} {body}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    let response = alice
        .raw(reqwest::Method::POST, "/snapshot/create")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);

    // Imports: garbage, and archives crafted to escape.
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = dir.path().join("a/b");
    std::fs::create_dir_all(&inner).expect("dirs");
    std::fs::write(dir.path().join("a/evil"), "pwned").expect("evil");
    let dotdot = dir.path().join("dotdot.tar.zst");
    let status = Command::new("tar")
        .current_dir(&inner)
        .args(["-P", "--zstd", "-cf"])
        .arg(&dotdot)
        .arg("../evil")
        .status()
        .expect("tar");
    assert!(status.success());
    let absolute = dir.path().join("absolute.tar.zst");
    let status = Command::new("tar")
        .args(["-P", "--zstd", "-cf"])
        .arg(&absolute)
        .arg(dir.path().join("a/evil"))
        .status()
        .expect("tar");
    assert!(status.success());
    for (name, bytes) in [
        ("garbage", b"definitely not zstd".to_vec()),
        ("dotdot", std::fs::read(&dotdot).expect("read")),
        ("absolute", std::fs::read(&absolute).expect("read")),
    ] {
        let response = alice.raw(reqwest::Method::POST, "/snapshot/import").body(bytes).send().await.expect("import");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{name}: {body}");
    }
    let (_, listed) = alice.call("GET", "/snapshot/list", None).await;
    assert_eq!(listed["snapshots"], json!([]), "a refused import must list nothing");
    assert_eq!(stored_keys(&server).await, Vec::<String>::new(), "a refused import must store nothing");
    let workspaces = server.data_dir().join("workspaces");
    let found = Command::new("find").arg(&workspaces).arg("-name").arg("evil").output().expect("find");
    assert_eq!(String::from_utf8_lossy(&found.stdout), "", "an import wrote outside its scratch dir");
}

macro_rules! on_every_storage {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    super::$test("linux", "local").await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    super::$test("process", "s3").await;
                }
            )*
        }
    };
}

on_every_storage!(round_trip);

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_4xx_and_leaves_nothing() {
    bad_input_is_refused_and_lists_nothing("process", "local").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_restore_into_a_workspace() {
    let server = TestServer::start().await;
    let alice = Api::new(&server, "alice");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("tree/docs")).expect("dirs");
    std::fs::write(dir.path().join("tree/docs/readme.md"), "imported\n").expect("file");
    let archive = dir.path().join("t.tar.zst");
    let status = Command::new("tar")
        .current_dir(dir.path().join("tree"))
        .args(["--zstd", "-cf"])
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    let response = alice
        .raw(reqwest::Method::POST, "/snapshot/import?label=brought")
        .body(std::fs::read(&archive).expect("read"))
        .send()
        .await
        .expect("import");
    assert_eq!(response.status().as_u16(), 201);
    let snapshot: Value = response.json().await.expect("json");
    assert_eq!((snapshot["kind"].as_str(), snapshot["label"].as_str()), (Some("import"), Some("brought")));
    let (status, restored) =
        alice.call("POST", "/snapshot/restore", Some(json!({"snapshot_id": id_of(&snapshot, "snapshot_id")}))).await;
    assert_eq!(status, 200, "{restored}");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    assert_eq!(alice.sh(&sandbox, "cat docs/readme.md").await["stdout"], "imported\n");
    let metrics = alice.text("/metrics").await;
    for series in [
        "snapshot_created_total{kind=\"import\"} 1",
        "snapshot_restored_total 1",
        "snapshot_duration_seconds_count{operation=\"import\"} 1",
        "snapshot_duration_seconds_count{operation=\"restore\"} 1",
        "snapshot_size_bytes_count 1",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_and_the_pinned() {
    let server = TestServer::start_with(|c| c.snapshots.retention = 2).await;
    let alice = Api::new(&server, "alice");
    let mut ids = Vec::new();
    for (i, pinned) in [(0, true), (1, false), (2, false), (3, false)] {
        let (status, snapshot) =
            alice.call("POST", "/snapshot/create", Some(json!({"label": format!("n{i}"), "pinned": pinned}))).await;
        assert_eq!(status, 201, "{snapshot}");
        ids.push(id_of(&snapshot, "snapshot_id"));
    }
    let (_, listed) = alice.call("GET", "/snapshot/list", None).await;
    let mut kept: Vec<String> =
        listed["snapshots"].as_array().expect("list").iter().map(|s| id_of(s, "snapshot_id")).collect();
    kept.sort();
    let mut expected = vec![ids[0].clone(), ids[2].clone(), ids[3].clone()];
    expected.sort();
    assert_eq!(kept, expected, "newest two plus the pinned one");
    assert_eq!(local_objects(&server).len(), 3, "the trimmed snapshot's object must be deleted");
    // Unpinning makes the old one subject to retention at the next snapshot.
    let (status, _) = alice.call("POST", &format!("/snapshot/{}/pin", ids[0]), Some(json!({"pinned": false}))).await;
    assert_eq!(status, 200);
    alice.call("POST", "/snapshot/create", Some(json!({}))).await;
    let (status, _) = alice.call("GET", &format!("/snapshot/{}", ids[0]), None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_restore_leaves_the_workspace_as_it_was() {
    let server = TestServer::start().await;
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    alice.sh(&sandbox, "echo original > f.txt").await;
    let (_, snapshot) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": sandbox}))).await;
    let snap = id_of(&snapshot, "snapshot_id");
    alice.sh(&sandbox, "echo changed > f.txt; echo new > g.txt").await;
    // Storage hands back other bytes than were stored.
    let objects = local_objects(&server);
    assert_eq!(objects.len(), 1);
    let mut bytes = std::fs::read(&objects[0]).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&objects[0], &bytes).expect("corrupt");
    let (status, body) = alice.call("POST", "/snapshot/restore", Some(json!({"snapshot_id": snap}))).await;
    assert_eq!(status, 503, "{body}");
    let out = alice.sh(&sandbox, "cat f.txt g.txt; ls -A").await;
    assert_eq!(out["stdout"], "changed\nnew\nf.txt\ng.txt\n", "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let owner_dir =
        std::fs::read_dir(server.data_dir().join("workspaces")).expect("dir").flatten().next().expect("owner");
    let leftovers: Vec<_> = std::fs::read_dir(owner_dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "scratch directories left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_snapshots_hold_no_plaintext() {
    let keys = tempfile::tempdir().expect("tempdir");
    let key_file = keys.path().join("snapshot.key");
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).expect("key");
    let server = TestServer::start_with(|c| c.snapshots.key_file = Some(key_file.clone())).await;
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    alice.sh(&sandbox, "for i in 1 2 3 4 5 6 7 8; do echo PLAINTEXT-MARKER-$i; done > secret.txt").await;
    let (status, snapshot) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": sandbox}))).await;
    assert_eq!(status, 201, "{snapshot}");
    assert_eq!(snapshot["encrypted"], true);
    let stored = std::fs::read(&local_objects(&server)[0]).expect("read");
    assert!(!stored.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "stored bytes are a plain zstd frame");
    assert!(!stored.windows(16).any(|w| w == b"PLAINTEXT-MARKER"), "plaintext in storage");
    alice.sh(&sandbox, "rm secret.txt").await;
    let (status, _) =
        alice.call("POST", "/snapshot/restore", Some(json!({"snapshot_id": id_of(&snapshot, "snapshot_id")}))).await;
    assert_eq!(status, 200);
    assert_eq!(alice.sh(&sandbox, "head -1 secret.txt").await["stdout"], "PLAINTEXT-MARKER-1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_after_a_crash_removes_partial_snapshots() {
    let server = TestServer::start().await;
    let alice = Api::new(&server, "alice");
    let (_, kept) = alice.call("POST", "/snapshot/create", Some(json!({}))).await;
    let kept = id_of(&kept, "snapshot_id");
    // What a crash mid-snapshot leaves: a pending record with part of its object, and an
    // object whose record never made it.
    let state = server.state();
    let pending = crashed_snapshot("alice", "snap_crashed");
    state.store.insert_snapshot(&pending).await.expect("pending");
    state.blobs.put_stream(&pending.object_key, &b"half an archive"[..]).await.expect("put");
    state.blobs.put_stream("snapshots/alice/snap_stray.tar.zst", &b"stray"[..]).await.expect("put");
    // And a restore's scratch directory, half extracted.
    let scratch = server.data_dir().join("workspaces/alice/.restore-tmp_crashed");
    std::fs::create_dir_all(scratch.join("deep/er")).expect("scratch");
    std::fs::write(scratch.join("deep/er/file"), "x").expect("scratch file");
    let data_dir = server.crash();
    let server = TestServer::restart_on(data_dir, |_| {}).await;
    assert!(!scratch.exists(), "a crashed restore's scratch directory must be removed");
    let mut keys = stored_keys(&server).await;
    keys.retain(|k| !k.contains(&kept));
    assert_eq!(keys, Vec::<String>::new(), "partial and stray objects must be collected");
    assert!(server.state().store.get_snapshot("snap_crashed").await.is_err(), "the pending record must go");
    let (status, _) = Api::new(&server, "alice").call("GET", &format!("/snapshot/{kept}"), None).await;
    assert_eq!(status, 200, "a complete snapshot must survive the clean-up");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stop_takes_a_snapshot() {
    let server = TestServer::start().await;
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({"timeout_seconds": 1})).await, "id");
    alice.sh(&sandbox, "echo kept > idle.txt").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, listed) = alice.call("GET", "/snapshot/list", None).await;
        if let Some(snapshot) = listed["snapshots"].as_array().and_then(|s| s.first()) {
            assert_eq!(snapshot["kind"], "idle");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no idle snapshot was taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_snapshots_cover_workspaces_with_running_sandboxes() {
    let server = TestServer::start_with(|c| c.snapshots.periodic_seconds = 1).await;
    let alice = Api::new(&server, "alice");
    let bob = Api::new(&server, "bob");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    alice.sh(&sandbox, "echo daily > d.txt").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, listed) = alice.call("GET", "/snapshot/list", None).await;
        if let Some(snapshot) = listed["snapshots"].as_array().and_then(|s| s.first()) {
            assert_eq!(snapshot["kind"], "daily");
            assert!(snapshot["file_count"].as_u64() >= Some(1), "{snapshot}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no periodic snapshot was taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Bob has no running sandbox: nothing of his is snapshotted.
    let (_, listed) = bob.call("GET", "/snapshot/list", None).await;
    assert_eq!(listed["snapshots"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_down_answers_503_and_lists_nothing_partial() {
    let Some(garage) = GarageServer::start().await else { return };
    let server = TestServer::start_with(|config| {
        use_garage(config, &garage);
        config.storage.s3_retry_seconds = 2;
    })
    .await;
    let alice = Api::new(&server, "alice");
    let sandbox = id_of(&alice.create(json!({})).await, "id");
    alice.sh(&sandbox, "head -c 20000000 /dev/urandom > big").await;
    let (status, first) = alice.call("POST", "/snapshot/create", Some(json!({}))).await;
    assert_eq!(status, 201, "{first}");
    drop(garage);
    let started = std::time::Instant::now();
    let (status, body) = alice.call("POST", "/snapshot/create", Some(json!({"label": "doomed"}))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    let (_, listed) = alice.call("GET", "/snapshot/list", None).await;
    let listed = listed["snapshots"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "only the complete snapshot is listed: {listed:?}");
    assert_eq!(listed[0]["snapshot_id"], first["snapshot_id"]);
    // The sandbox was thawed again.
    assert_eq!(alice.sh(&sandbox, "echo alive").await["stdout"], "alive\n");
}
