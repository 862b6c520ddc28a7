//! Isolation, proven by trying the attack from inside a real sandbox through the public API.
//! Parametrized by runtime: every isolating runtime (linux now, firecracker later) runs it.

use std::io::{Read, Write};

use cloudterm_test_support::TestServer;
use serde_json::json;

use crate::sandboxes::Api;

async fn start(runtime: &str, adjust: impl FnOnce(&mut cloudterm_server::Config)) -> Option<(TestServer, Api, String)> {
    let server = TestServer::start_runtime(runtime, adjust).await?;
    let api = Api::new(&server, "alice");
    let sandbox = api.create(json!({"limits": {"memory_mb": 256, "pids": 64}})).await;
    let id = sandbox["id"].as_str().expect("id").to_string();
    Some((server, api, id))
}

async fn host_files_and_the_data_dir_are_invisible(runtime: &str) {
    let Some((server, api, id)) = start(runtime, |_| {}).await else { return };
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let inside = api.sh(&id, "cat /etc/shadow 2>&1; ls -A /root /home /srv 2>&1").await["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let host_root_entry = host_shadow.lines().find(|l| l.starts_with("root:")).unwrap_or("no-root-line");
    assert!(!inside.contains(host_root_entry), "the host's /etc/shadow is visible");
    let data_dir = server.data_dir().display().to_string();
    let result = api.sh(&id, &format!("ls {data_dir} 2>&1; test -e {data_dir}/cloudterm.db && echo DB-VISIBLE")).await;
    assert!(!result["stdout"].as_str().unwrap_or_default().contains("DB-VISIBLE"), "the data dir is visible: {result}");
    let marker = format!("/tmp/cloudterm-host-marker-{id}");
    std::fs::write(&marker, "host secret").expect("marker");
    let result = api.sh(&id, &format!("cat {marker} 2>&1")).await;
    let _ = std::fs::remove_file(&marker);
    assert!(!result["stdout"].as_str().unwrap_or_default().contains("host secret"), "host /tmp is visible");
}

async fn only_its_own_processes_are_visible(runtime: &str) {
    let Some((_server, api, id)) = start(runtime, |_| {}).await else { return };
    let result = api.sh(&id, "ls /proc | grep -c '^[0-9]'").await;
    let count: u32 = result["stdout"].as_str().unwrap_or("0").trim().parse().unwrap_or(999);
    assert!(count < 10, "the sandbox sees {count} processes");
    let result = api.sh(&id, "cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert!(result["stdout"].as_str().unwrap_or_default().contains("agent"), "pid 1 is not the agent: {result}");
}

async fn the_hosts_loopback_is_unreachable(runtime: &str) {
    let Some((_server, api, id)) = start(runtime, |_| {}).await else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let probe = format!(
        "python3 -c \"import socket; s=socket.socket(); s.settimeout(2); s.connect(('127.0.0.1', {port})); print('CONNECTED')\" 2>&1 || true"
    );
    let result = api.sh(&id, &probe).await;
    assert!(
        !result["stdout"].as_str().unwrap_or_default().contains("CONNECTED"),
        "reached the host's loopback: {result}"
    );
    let accepted = listener.accept();
    if let Ok((mut stream, _)) = accepted {
        let _ = stream.write_all(b"x");
        let mut buf = [0u8; 1];
        let _ = stream.read(&mut buf);
        panic!("the host listener accepted a connection from the sandbox");
    }
}

async fn mount_is_refused(runtime: &str) {
    let Some((_server, api, id)) = start(runtime, |_| {}).await else { return };
    let result =
        api.sh(&id, "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m; echo rc=$?; unshare -m true; echo rc2=$?").await;
    let out = result["stdout"].as_str().unwrap_or_default();
    assert!(!out.contains("rc=0") && !out.contains("rc2=0"), "mount or unshare succeeded: {result}");
}

async fn memory_over_the_limit_is_killed_and_the_server_stays_healthy(runtime: &str) {
    let Some((server, api, id)) = start(runtime, |_| {}).await else { return };
    let result = api
        .exec(
            &id,
            json!({"command": "python3 -c 'b = bytearray(700 * 1024 * 1024); print(len(b))'", "timeout_seconds": 60}),
        )
        .await;
    assert_ne!(result["exit_code"], 0, "700 MiB fit under a 256 MiB limit: {result}");
    assert!(!result["stdout"].as_str().unwrap_or_default().contains("734003200"));
    assert_eq!(reqwest::get(server.url("/health")).await.expect("health").status(), 200);
    assert_eq!(api.sh(&id, "echo still-here").await["stdout"], "still-here\n");
}

async fn a_fork_bomb_stops_at_the_pids_limit(runtime: &str) {
    let Some((server, api, id)) = start(runtime, |_| {}).await else { return };
    // The bomb runs until the exec's timeout kills its whole tree; meanwhile the host counts
    // the sandbox's processes.
    let exec_path = format!("/sandboxes/{id}/exec");
    let bomb =
        api.call("POST", &exec_path, Some(json!({"command": "bash -c 'b(){ while :; do b & sleep 0.05; done; }; b' 2>/dev/null", "timeout_seconds": 6})));
    let sampler = async {
        let mut peak = 0;
        for _ in 0..40 {
            peak = peak.max(cloudterm_test_support::sandbox_processes(&id).len());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        peak
    };
    let ((status, result), peak) = tokio::join!(bomb, sampler);
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["timed_out"], true, "{result}");
    assert!(peak >= 32, "the bomb never got near the limit ({peak} processes)");
    assert!(peak <= 64, "{peak} processes under a limit of 64");
    assert_eq!(reqwest::get(server.url("/health")).await.expect("health").status(), 200);
    // The tree was killed with the timeout, so the sandbox answers again.
    let mut answered = false;
    for _ in 0..20 {
        let (status, body) =
            api.call("POST", &format!("/sandboxes/{id}/exec"), Some(json!({"command": "echo ok"}))).await;
        if status == 200 && body["stdout"] == "ok\n" {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(answered, "the sandbox never answered again after the fork bomb");
}

async fn another_principals_workspace_is_unreachable(runtime: &str) {
    let Some((server, alice, alice_box)) = start(runtime, |_| {}).await else { return };
    alice.sh(&alice_box, "echo alice-secret > secret.txt").await;
    let bob = Api::new(&server, "bob");
    let bob_box = bob.create(json!({})).await["id"].as_str().expect("id").to_string();
    let result = bob.sh(&bob_box, "grep -rs alice-secret / --exclude-dir=proc --exclude-dir=sys 2>/dev/null | head -3; cat ../*/secret.txt ../../*/*/secret.txt 2>&1").await;
    assert!(
        !result["stdout"].as_str().unwrap_or_default().contains("alice-secret"),
        "bob read alice's workspace: {result}"
    );
    // Through the file API, `../` resolves inside bob's own sandbox too.
    let (status, body) =
        bob.call("GET", &format!("/sandboxes/{bob_box}/files/..%2F..%2F..%2Fworkspace%2Fsecret.txt"), None).await;
    assert!(status == 404 || !body.to_string().contains("alice-secret"), "{status} {body}");
}

async fn dot_dot_paths_resolve_inside_the_sandbox(runtime: &str) {
    let Some((_server, api, id)) = start(runtime, |_| {}).await else { return };
    let (status, _) = api
        .call(
            "POST",
            &format!("/sandboxes/{id}/files"),
            Some(json!({"path": "../../../../tmp/escape.txt", "content": "x"})),
        )
        .await;
    assert_eq!(status, 201);
    assert!(
        !std::path::Path::new("/tmp/escape.txt").exists()
            || std::fs::read_to_string("/tmp/escape.txt").map(|t| t != "x").unwrap_or(true),
        "a ../ write landed on the host"
    );
    assert_eq!(
        api.sh(&id, "cat /tmp/escape.txt").await["stdout"],
        "x",
        "the write stays inside the sandbox's own /tmp"
    );
    let body = api.text(&format!("/sandboxes/{id}/files/..%2F..%2F..%2Fetc%2Fhostname")).await;
    assert!(body.contains(&id), "../etc/hostname is not the sandbox's own: {body}");
}

async fn the_cgroup_limits_cannot_be_raised_from_inside(runtime: &str) {
    let Some((_server, api, id)) = start(runtime, |_| {}).await else { return };
    let result = api.sh(&id, "for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; do echo max > $f 2>/dev/null && echo WROTE $f; done; true").await;
    assert!(!result["stdout"].as_str().unwrap_or_default().contains("WROTE"), "{result}");
}

async fn host_mounts_come_only_from_the_allow_list_and_read_only(runtime: &str) {
    let allowed = tempfile::tempdir().expect("allowed dir");
    std::fs::write(allowed.path().join("data.txt"), "shared").expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(allowed.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let allow = allowed.path().to_path_buf();
    let Some((_server, api, id)) = start(runtime, move |config| config.sandboxes.mount_allow = vec![allow]).await
    else {
        return;
    };
    let host_path = allowed.path().display().to_string();
    let (status, body) = api
        .call("POST", &format!("/sandboxes/{id}/mount"), Some(json!({"host_path": host_path, "target": "/mnt/shared"})))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["read_only"], true);
    assert_eq!(api.sh(&id, "cat /mnt/shared/data.txt").await["stdout"], "shared");
    let result = api.sh(&id, "echo pwned > /mnt/shared/data.txt; echo rc=$?").await;
    assert!(!result["stdout"].as_str().unwrap_or_default().contains("rc=0"), "a read-only mount was writable");
    assert_eq!(std::fs::read_to_string(allowed.path().join("data.txt")).expect("read"), "shared");
    for outside in ["/etc", "/root", &format!("{host_path}/../")] {
        let (status, body) = api
            .call("POST", &format!("/sandboxes/{id}/mount"), Some(json!({"host_path": outside, "target": "/mnt/x"})))
            .await;
        assert_eq!(status, 403, "{outside}: {body}");
    }
}

async fn the_agents_control_channel_is_unreachable_from_inside(runtime: &str) {
    let Some((_server, api, id)) = start(runtime, |_| {}).await else { return };
    // The agent's memory and file descriptors are closed to the sandbox's own root.
    let result = api.sh(&id, "ls -l /proc/1/fd/ 2>&1 | head -3; cat /proc/1/environ 2>&1 | head -c 100").await;
    let out = result["stdout"].as_str().unwrap_or_default();
    assert!(!out.contains("socket:"), "the agent's fds are visible: {out}");
    // No Unix socket the sandbox can see answers like the agent.
    let probe = r#"python3 - <<'PY'
import socket
paths = set()
for line in open('/proc/net/unix').read().splitlines()[1:]:
    fields = line.split()
    if len(fields) >= 8 and fields[7].startswith('/'):
        paths.add(fields[7])
for path in sorted(paths):
    try:
        s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect(path)
        s.sendall(b'GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n')
        if b'protocol_version' in s.recv(4096):
            print('AGENT-REACHED', path)
    except OSError:
        pass
print('scanned', len(paths))
PY"#;
    let result = api.sh(&id, probe).await;
    let out = result["stdout"].as_str().unwrap_or_default();
    assert!(out.contains("scanned"), "{result}");
    assert!(!out.contains("AGENT-REACHED"), "code inside reached the agent's control socket: {out}");
}

macro_rules! on_isolating_runtimes {
    ($($name:ident),* $(,)?) => {
        mod linux {
            $( #[tokio::test] async fn $name() { super::$name("linux").await } )*
        }
    };
}

on_isolating_runtimes!(
    host_files_and_the_data_dir_are_invisible,
    only_its_own_processes_are_visible,
    the_hosts_loopback_is_unreachable,
    mount_is_refused,
    memory_over_the_limit_is_killed_and_the_server_stays_healthy,
    a_fork_bomb_stops_at_the_pids_limit,
    another_principals_workspace_is_unreachable,
    dot_dot_paths_resolve_inside_the_sandbox,
    the_cgroup_limits_cannot_be_raised_from_inside,
    host_mounts_come_only_from_the_allow_list_and_read_only,
    the_agents_control_channel_is_unreachable_from_inside,
);
