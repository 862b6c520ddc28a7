//! Attacks from inside a sandbox: each test starts real sandboxes and tries to break out.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use cloudterm_runtime::{Mount, Runtime};

use crate::support::*;

/// Mount points of the host (the test's mount namespace) that mention `needle`.
fn host_mounts_with(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

fn cgroup_dirs(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/cgroup").expect("cgroup root").flatten() {
        let dir = entry.path().join("cloudterm").join(id);
        if dir.exists() {
            found.push(dir.display().to_string());
        }
    }
    if Path::new("/sys/fs/cgroup/cloudterm").join(id).exists() {
        found.push(format!("/sys/fs/cgroup/cloudterm/{id}"));
    }
    found
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn host_files_and_data_dir_are_invisible() {
    if !can_run("host_files_and_data_dir_are_invisible") {
        return;
    }
    let t = TestRuntime::new();
    let spec = t.spec("hostfiles");
    let h = t.runtime.start(&spec).await.expect("start");

    let shadow = sh(&h, "cat /etc/shadow").await;
    assert!(shadow.ok(), "{shadow:?}");
    assert!(shadow.stdout.starts_with("root:*:19000:"), "not the generated /etc: {shadow:?}");
    if let Ok(host) = std::fs::read_to_string("/etc/shadow") {
        assert_ne!(shadow.stdout, host, "the host's /etc/shadow is visible");
    }
    let passwd = sh(&h, "cat /etc/passwd").await;
    assert_eq!(passwd.stdout.lines().count(), 3, "generated passwd only: {passwd:?}");

    let homes = sh(&h, "ls -A /root /home /srv 2>/dev/null | grep -v ':$' | grep -v '^$' | wc -l").await;
    assert_eq!(homes.stdout.trim(), "0", "host home directories leak: {homes:?}");
    let var = sh(&h, "ls -A /var").await;
    assert!(!var.stdout.contains("spool") && !var.stdout.contains("mail"), "host /var leaks: {var:?}");

    for path in [
        t.root_dir(),
        spec.state_dir.clone(),
        spec.workspace_dir.clone().expect("workspace"),
        t.dir.path().to_path_buf(),
        std::env::current_dir().expect("cwd"),
    ] {
        let out = sh(&h, &format!("test -e '{}' && echo visible || echo absent", path.display())).await;
        assert_eq!(out.stdout.trim(), "absent", "{} is visible inside", path.display());
    }
    // Host path *names* appear in /proc/self/mountinfo (as with every container runtime);
    // their contents must not be reachable, which the loop above checks.
    t.runtime.stop(&spec.id).await.expect("stop");
}

#[tokio::test]
async fn only_the_sandboxes_own_processes_are_visible() {
    if !can_run("only_the_sandboxes_own_processes_are_visible") {
        return;
    }
    let t = TestRuntime::new();
    let spec = t.spec("procs");
    let h = t.runtime.start(&spec).await.expect("start");
    let out = sh(&h, "ls /proc | grep -cE '^[0-9]+$'; tr '\\0' ' ' < /proc/1/cmdline").await;
    let mut lines = out.stdout.lines();
    let count: usize = lines.next().and_then(|l| l.trim().parse().ok()).expect("count");
    assert!(count <= 6, "too many processes visible: {out:?}");
    assert!(lines.next().unwrap_or_default().contains("/.cloudterm/agent"), "pid 1 is not the agent: {out:?}");
    let host_pid = std::process::id();
    let out = sh(&h, &format!("test -e /proc/{host_pid}/cmdline && tr '\\0' ' ' < /proc/{host_pid}/cmdline")).await;
    assert!(!out.stdout.contains("it-"), "the test process is visible: {out:?}");
    t.runtime.stop(&spec.id).await.expect("stop");
}

#[tokio::test]
async fn host_loopback_is_unreachable_but_own_loopback_works() {
    if !can_run("host_loopback_is_unreachable_but_own_loopback_works") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("host listener");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let t = TestRuntime::new();
    let spec = t.spec("net");
    let h = t.runtime.start(&spec).await.expect("start");
    let out = sh(
        &h,
        &format!(
            "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')\""
        ),
    )
    .await;
    assert!(!out.stdout.contains("CONNECTED"), "reached the host's loopback: {out:?}");
    assert!(listener.accept().is_err(), "the host listener got a connection");
    let own = sh(
        &h,
        "python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); \
         socket.create_connection(s.getsockname(), timeout=2); print('LO OK')\"",
    )
    .await;
    assert!(own.stdout.contains("LO OK"), "lo is not up inside: {own:?}");
    let devs = sh(&h, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(devs.stdout.trim(), "lo", "network devices besides lo: {devs:?}");
    t.runtime.stop(&spec.id).await.expect("stop");
}

#[tokio::test]
async fn mount_and_nested_namespaces_are_refused() {
    if !can_run("mount_and_nested_namespaces_are_refused") {
        return;
    }
    let t = TestRuntime::new();
    let spec = t.spec("mount");
    let h = t.runtime.start(&spec).await.expect("start");
    let out = sh(&h, "mkdir -p /tmp/x && mount -t tmpfs none /tmp/x && echo MOUNTED").await;
    assert!(!out.stdout.contains("MOUNTED"), "mount succeeded: {out:?}");
    let out = sh(&h, "mount --bind /workspace /tmp/x && echo MOUNTED").await;
    assert!(!out.stdout.contains("MOUNTED"), "bind mount succeeded: {out:?}");
    // A nested user namespace would hand back CAP_SYS_ADMIN over a new mount namespace.
    let out = sh(&h, "unshare -U -r -m sh -c 'mount -t tmpfs none /tmp/x && echo MOUNTED'").await;
    assert!(!out.stdout.contains("MOUNTED"), "nested user namespace mount succeeded: {out:?}");
    t.runtime.stop(&spec.id).await.expect("stop");
}

#[tokio::test]
async fn a_700_mib_allocation_is_killed_under_256_mib() {
    if !can_run("a_700_mib_allocation_is_killed_under_256_mib") {
        return;
    }
    let t = TestRuntime::new();
    let mut spec = t.spec("oom");
    spec.limits.memory_mb = Some(256);
    let h = t.runtime.start(&spec).await.expect("start");
    let group = format!("/sys/fs/cgroup/memory/cloudterm/{}", spec.id);
    if Path::new(&group).exists() {
        assert_eq!(read_u64(&format!("{group}/memory.limit_in_bytes")), Some(256 << 20));
        if Path::new(&format!("{group}/memory.memsw.limit_in_bytes")).exists() {
            assert_eq!(read_u64(&format!("{group}/memory.memsw.limit_in_bytes")), Some(256 << 20));
        }
    }
    let out = sh(
        &h,
        "python3 -c 'b = bytearray(700 * 1024 * 1024); b[::4096] = b\"x\" * len(b[::4096]); print(\"SURVIVED\")'",
    )
    .await;
    eprintln!("700 MiB allocation: exit {:?}, signal {:?}, stderr {:?}", out.exit_code, out.signal, out.stderr.trim());
    assert!(!out.stdout.contains("SURVIVED"), "700 MiB fit under 256 MiB: {out:?}");
    assert!(!out.ok(), "{out:?}");
    // The host (this test) is fine, and so is the sandbox's agent.
    let again = sh(&h, "echo alive").await;
    assert_eq!(again.stdout.trim(), "alive");
    let usage = t.runtime.usage(&spec.id).await.expect("usage");
    assert!(usage.memory_bytes <= 256 << 20, "{usage:?}");
    t.runtime.stop(&spec.id).await.expect("stop");
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    if !can_run("a_fork_bomb_stops_at_the_pids_limit") {
        return;
    }
    let t = TestRuntime::new();
    let mut spec = t.spec("forkbomb");
    spec.limits.pids = Some(64);
    let h = t.runtime.start(&spec).await.expect("start");
    let pids_dir = format!("/sys/fs/cgroup/pids/cloudterm/{}", spec.id);
    let v1 = Path::new(&pids_dir).exists();
    if v1 {
        assert_eq!(std::fs::read_to_string(format!("{pids_dir}/pids.max")).expect("pids.max").trim(), "64");
    }
    let watcher = {
        let current = format!("{pids_dir}/pids.current");
        std::thread::spawn(move || {
            let mut peak = 0;
            let end = Instant::now() + Duration::from_secs(8);
            while Instant::now() < end {
                if let Some(n) = read_u64(&current) {
                    peak = peak.max(n);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    // The agent itself may fail to answer while every pid is taken.
    let bomb =
        try_exec(&h, serde_json::json!({"argv": ["timeout", "5", "bash", "-c", ":(){ :|:& };:"], "timeout_ms": 7000}))
            .await;
    eprintln!("fork bomb: {bomb:?}");
    let peak = watcher.join().expect("watcher");
    if v1 {
        eprintln!("fork bomb: peak pids.current = {peak}");
        assert!(peak <= 64, "pids.current reached {peak} over a limit of 64");
        assert!(peak >= 32, "the bomb never got going (peak {peak})");
    }
    // Either the sandbox answers again, or stop kills it cleanly.
    let mut answered = false;
    for _ in 0..20 {
        let out =
            tokio::time::timeout(Duration::from_secs(3), try_exec(&h, serde_json::json!({"command": "echo alive"})))
                .await;
        if matches!(&out, Ok(Ok(o)) if o.stdout.trim() == "alive") {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("fork bomb: sandbox answered afterwards: {answered}");
    t.runtime.stop(&spec.id).await.expect("stop");
    assert!(cgroup_dirs(&spec.id).is_empty(), "cgroups left: {:?}", cgroup_dirs(&spec.id));
}

#[tokio::test]
async fn hostname_workspace_and_overlay_layer() {
    if !can_run("hostname_workspace_and_overlay_layer") {
        return;
    }
    let t = TestRuntime::new();
    let spec = t.spec("fs");
    std::fs::write(spec.workspace_dir.as_deref().expect("workspace").join("from-host.txt"), "hello from host")
        .expect("write");
    let h = t.runtime.start(&spec).await.expect("start");

    let out = sh(&h, "hostname; cat /etc/hostname; pwd; echo $HOME").await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, [spec.id.as_str(), spec.id.as_str(), "/workspace", "/workspace"], "{out:?}");

    let out =
        sh(&h, "cat /workspace/from-host.txt && echo written > /workspace/from-sandbox.txt && mkdir -p /workspace/d/e")
            .await;
    assert!(out.ok() && out.stdout.contains("hello from host"), "{out:?}");
    let written = spec.workspace_dir.as_deref().expect("workspace").join("from-sandbox.txt");
    assert_eq!(std::fs::read_to_string(&written).expect("file on host"), "written\n");
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&written).expect("meta").uid();
    eprintln!("workspace file written inside is owned by host uid {owner}");
    assert_eq!(owner, 0, "idmapped workspace: files written by the sandbox's root belong to host root");

    let out =
        sh(&h, "mkdir -p /usr/local/lib && echo layer > /usr/local/lib/x && pip --version >/dev/null 2>&1; echo done")
            .await;
    assert!(out.ok(), "{out:?}");
    let out = sh(&h, "cat /usr/local/lib/x").await;
    assert_eq!(out.stdout.trim(), "layer", "overlay upper did not persist: {out:?}");
    assert!(!Path::new("/usr/local/lib/x").exists(), "the write reached the host's /usr");
    let out = sh(&h, "echo nope > /workspace/../usr/bin/evil 2>&1; ls -la /usr/bin/evil").await;
    assert!(!Path::new("/usr/bin/evil").exists(), "{out:?}");

    t.runtime.stop(&spec.id).await.expect("stop");
    assert!(!spec.state_dir.exists(), "state dir (with the upper layer) survived stop");
    assert!(
        spec.workspace_dir.as_deref().expect("workspace").join("from-sandbox.txt").exists(),
        "stop must keep the workspace"
    );
    // A new sandbox with the same id starts from a clean layer.
    let h = t.runtime.start(&spec).await.expect("restart");
    let out = sh(&h, "test -e /usr/local/lib/x && echo present || echo gone").await;
    assert_eq!(out.stdout.trim(), "gone");
    t.runtime.stop(&spec.id).await.expect("stop");
}

#[tokio::test]
async fn cgroup_limits_cannot_be_raised_from_inside() {
    if !can_run("cgroup_limits_cannot_be_raised_from_inside") {
        return;
    }
    let t = TestRuntime::new();
    let mut spec = t.spec("cgroupfs");
    spec.limits.memory_mb = Some(128);
    let h = t.runtime.start(&spec).await.expect("start");
    let out = sh(
        &h,
        "ls -A /sys/fs/cgroup | wc -l; \
         for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max; do \
           echo 9999999999 > $f 2>/dev/null && echo RAISED; done; \
         mkdir -p /tmp/cg && mount -t cgroup -o memory none /tmp/cg 2>/dev/null && echo MOUNTED; \
         touch /sys/fs/cgroup/x 2>/dev/null && echo WROTE; echo end",
    )
    .await;
    assert!(
        !out.stdout.contains("RAISED") && !out.stdout.contains("MOUNTED") && !out.stdout.contains("WROTE"),
        "{out:?}"
    );
    assert_eq!(out.stdout.lines().next(), Some("0"), "/sys/fs/cgroup is not empty inside: {out:?}");
    let group = format!("/sys/fs/cgroup/memory/cloudterm/{}/memory.limit_in_bytes", spec.id);
    if Path::new(&group).exists() {
        assert_eq!(read_u64(&group), Some(128 << 20));
    }
    t.runtime.stop(&spec.id).await.expect("stop");
}

#[tokio::test]
async fn two_sandboxes_cannot_see_each_other() {
    if !can_run("two_sandboxes_cannot_see_each_other") {
        return;
    }
    let t = TestRuntime::new();
    let spec_a = t.spec("twin_a");
    let spec_b = t.spec("twin_b");
    let a = t.runtime.start(&spec_a).await.expect("start a");
    let b = t.runtime.start(&spec_b).await.expect("start b");
    let out = sh(&a, "echo secret-a > /workspace/secret-a; echo secret-a > /tmp/secret-a; echo secret-a > /usr/local/secret-a; (sleep 300 >/dev/null 2>&1 &) ; echo ok").await;
    assert!(out.ok(), "{out:?}");
    let out = sh(&b, "find / -xdev -name 'secret-a' 2>/dev/null; find /tmp /usr/local /workspace -name 'secret-a' 2>/dev/null; echo end").await;
    assert!(!out.stdout.contains("secret-a"), "b sees a's files: {out:?}");
    assert_eq!(sh(&a, "pgrep -x sleep | wc -l").await.stdout.trim(), "1", "a's sleep is not running");
    assert_eq!(sh(&b, "pgrep -x sleep | wc -l").await.stdout.trim(), "0", "b sees a's processes");
    let out = sh(
        &b,
        &format!(
            "test -e '{}' && echo visible || echo absent",
            spec_a.workspace_dir.as_deref().expect("workspace").display()
        ),
    )
    .await;
    assert_eq!(out.stdout.trim(), "absent");
    t.runtime.stop(&spec_a.id).await.expect("stop a");
    t.runtime.stop(&spec_b.id).await.expect("stop b");
}

#[tokio::test]
async fn stop_leaves_nothing_behind_and_is_idempotent() {
    if !can_run("stop_leaves_nothing_behind_and_is_idempotent") {
        return;
    }
    let t = TestRuntime::new();
    let spec = t.spec("cleanup");
    let h = t.runtime.start(&spec).await.expect("start");
    let pid = h.pid.expect("pid");
    sh(&h, "(sleep 300 >/dev/null 2>&1 &); echo x > /workspace/keep").await;
    assert!(t.runtime.list().await.expect("list").contains(&spec.id));
    assert!(!cgroup_dirs(&spec.id).is_empty());
    assert!(!host_mounts_with(&spec.id).is_empty());

    t.runtime.stop(&spec.id).await.expect("stop");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the agent still runs");
    assert!(host_mounts_with(&spec.id).is_empty(), "mounts left: {:?}", host_mounts_with(&spec.id));
    assert!(cgroup_dirs(&spec.id).is_empty(), "cgroups left: {:?}", cgroup_dirs(&spec.id));
    assert!(!spec.state_dir.exists(), "state dir left");
    assert!(!t.root_dir().join(&spec.id).exists(), "runtime record left");
    assert!(!t.runtime.list().await.expect("list").contains(&spec.id));
    assert!(spec.workspace_dir.as_deref().expect("workspace").join("keep").exists(), "the workspace must survive");
    let leftover = std::process::Command::new("pgrep").args(["-f", "sleep 300"]).output().expect("pgrep");
    let _ = leftover; // other tests may run `sleep 300` too; the cgroup check above is exact.

    t.runtime.stop(&spec.id).await.expect("second stop is fine");
    t.runtime.stop("sbx_never_existed").await.expect("stopping an unknown id is fine");
    assert!(matches!(t.runtime.attach(&spec.id).await, Err(cloudterm_runtime::SandboxRuntimeError::NotRunning(_))));
}

#[tokio::test]
async fn a_new_runtime_reattaches_and_cleans_up_leftovers() {
    if !can_run("a_new_runtime_reattaches_and_cleans_up_leftovers") {
        return;
    }
    let t = TestRuntime::new();
    let spec = t.spec("reattach");
    let h = t.runtime.start(&spec).await.expect("start");
    // A "restarted server": a second runtime (and helper) over the same root directory.
    let second = cloudterm_runtime_linux::LinuxRuntime::new(t.runtime.config().clone());
    assert_eq!(second.list().await.expect("list"), vec![spec.id.clone()]);
    let again = second.attach(&spec.id).await.expect("attach");
    assert_eq!(again.agent, h.agent);
    assert_eq!(sh(&again, "echo still-here").await.stdout.trim(), "still-here");
    second.stop(&spec.id).await.expect("stop from the new runtime");
    assert!(second.list().await.expect("list").is_empty());
    assert!(cgroup_dirs(&spec.id).is_empty());
    assert!(host_mounts_with(&spec.id).is_empty());
}

#[tokio::test]
async fn pause_resume_usage_and_mounts() {
    if !can_run("pause_resume_usage_and_mounts") {
        return;
    }
    let t = TestRuntime::new();
    let shared = t.dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("shared");
    std::fs::write(shared.join("data.txt"), "shared data").expect("write");
    let mut spec = t.spec("pause");
    spec.mounts.push(Mount { host_path: shared.clone(), target: "/mnt/at-start".into(), read_only: true });
    let h = t.runtime.start(&spec).await.expect("start");

    let out =
        sh(&h, "cat /mnt/at-start/data.txt; echo x > /mnt/at-start/new 2>/dev/null && echo WROTE; echo end").await;
    assert!(out.stdout.contains("shared data") && !out.stdout.contains("WROTE"), "{out:?}");

    t.runtime
        .mount(&spec.id, &Mount { host_path: shared.clone(), target: "/mnt/live".into(), read_only: true })
        .await
        .expect("live mount");
    let out = sh(&h, "cat /mnt/live/data.txt; echo x > /mnt/live/new 2>/dev/null && echo WROTE; mount -o remount,rw /mnt/live 2>/dev/null && echo REMOUNTED; echo end").await;
    assert!(out.stdout.contains("shared data"), "live mount not visible: {out:?}");
    assert!(!out.stdout.contains("WROTE") && !out.stdout.contains("REMOUNTED"), "{out:?}");
    t.runtime
        .mount(&spec.id, &Mount { host_path: shared.clone(), target: "/mnt/rw".into(), read_only: false })
        .await
        .expect("rw mount");
    let out = sh(&h, "echo from-sandbox > /mnt/rw/rw.txt && echo ok").await;
    assert!(out.ok(), "{out:?}");
    assert!(shared.join("rw.txt").exists());
    assert!(t
        .runtime
        .mount(&spec.id, &Mount { host_path: shared.clone(), target: "/mnt/../etc".into(), read_only: true })
        .await
        .is_err());

    let usage = t.runtime.usage(&spec.id).await.expect("usage");
    eprintln!("usage: {usage:?}");
    assert!(usage.memory_bytes > 0 && usage.pids >= 1, "{usage:?}");

    t.runtime.pause(&spec.id).await.expect("pause");
    let freezer = format!("/sys/fs/cgroup/freezer/cloudterm/{}/freezer.state", spec.id);
    if Path::new(&freezer).exists() {
        assert_eq!(std::fs::read_to_string(&freezer).expect("state").trim(), "FROZEN");
    }
    let frozen = tokio::time::timeout(Duration::from_millis(500), sh(&h, "echo hi")).await;
    assert!(frozen.is_err(), "a paused sandbox answered");
    t.runtime.resume(&spec.id).await.expect("resume");
    assert_eq!(sh(&h, "echo thawed").await.stdout.trim(), "thawed");
    t.runtime.stop(&spec.id).await.expect("stop");
    assert!(shared.join("data.txt").exists(), "stop must not touch mounted host dirs");
    assert!(host_mounts_with(&spec.id).is_empty());
}

#[tokio::test]
async fn probe_and_start_timing() {
    if !can_run("probe_and_start_timing") {
        return;
    }
    let t = TestRuntime::new();
    let summary = t.runtime.probe().await.expect("probe");
    eprintln!("probe: {summary}");
    let mut times = Vec::new();
    for round in 0..5 {
        let spec = t.spec(&format!("timing{round}"));
        let started = Instant::now();
        let h = t.runtime.start(&spec).await.expect("start");
        times.push(started.elapsed());
        let exec_started = Instant::now();
        sh(&h, "true").await;
        eprintln!("round {round}: create -> agent ready {:?}, first exec {:?}", times[round], exec_started.elapsed());
        let stop_started = Instant::now();
        t.runtime.stop(&spec.id).await.expect("stop");
        eprintln!("round {round}: stop {:?}", stop_started.elapsed());
    }
    times.sort();
    eprintln!("create -> agent ready: min {:?}, median {:?}, max {:?}", times[0], times[2], times[4]);
}

/// Builds a tiny image (a shell, `cat`, `id` and the libraries they and the agent need).
fn tiny_image(dir: &Path, agent: &Path) -> std::path::PathBuf {
    let image = dir.join("image");
    let copy = |host: &Path| {
        let real = std::fs::canonicalize(host).expect("canonicalize");
        let rel = host.strip_prefix("/").expect("absolute");
        // /lib64 and /lib are usrmerge symlinks on the host: store everything under usr/.
        let rel = match rel.components().next().and_then(|c| c.as_os_str().to_str()) {
            Some("lib" | "lib64" | "bin" | "sbin") => Path::new("usr").join(rel),
            _ => rel.to_path_buf(),
        };
        let target = image.join(rel);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&real, &target).expect("copy");
    };
    let bins = ["/bin/sh", "/usr/bin/cat", "/usr/bin/id", "/usr/bin/mkdir"];
    for bin in bins {
        copy(Path::new(bin));
    }
    let ldd = std::process::Command::new("ldd").arg(agent).args(bins).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split_whitespace().find(|w| w.starts_with('/') && !w.ends_with(':')).map(Path::new);
        if let Some(path) = path {
            copy(path);
        }
    }
    for (link, target) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")] {
        let _ = std::os::unix::fs::symlink(target, image.join(link));
    }
    std::fs::create_dir_all(image.join("etc")).expect("etc");
    std::fs::write(image.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(image.join("image-marker"), "from the image\n").expect("marker");
    image
}

#[tokio::test]
async fn a_configured_image_replaces_the_default() {
    if !can_run("a_configured_image_replaces_the_default") {
        return;
    }
    let t = TestRuntime::new();
    let image = tiny_image(t.dir.path(), &agent_binary());
    let mut spec = t.spec("image");
    spec.image = Some(image.clone());
    let h = t.runtime.start(&spec).await.expect("start with an image");
    let out = sh(&h, "cat /image-marker && cat /etc/hostname && id -u && mkdir -p /usr/local && echo layer > /usr/local/x && cat /usr/local/x && cat /etc/passwd").await;
    assert!(out.ok(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[..4], ["from the image", spec.id.as_str(), "0", "layer"], "{out:?}");
    assert_eq!(lines[4], "root:x:0:0:root:/root:/bin/sh", "the image's own /etc is kept: {out:?}");
    assert!(!image.join("usr/local/x").exists(), "the image was written to");
    t.runtime.stop(&spec.id).await.expect("stop");
    assert!(host_mounts_with(&spec.id).is_empty());
}
