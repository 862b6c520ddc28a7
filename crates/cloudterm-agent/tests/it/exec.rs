//! Exec: argv and shell commands, cwd, env, stdin, exit codes, caps, timeouts, streaming.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use cloudterm_runtime::agent_client::protocol::ExecRequest;
use cloudterm_runtime::{AgentError, ExecOutput};

use crate::{assert_no_proc_survives, Agent};

fn cmd(c: &str) -> ExecRequest {
    ExecRequest { command: Some(c.into()), ..Default::default() }
}

#[tokio::test]
async fn argv_runs_directly() {
    let a = Agent::start().await;
    let r = a
        .client
        .exec(&ExecRequest { argv: Some(vec!["echo".into(), "a  b".into(), "$HOME".into()]), ..Default::default() })
        .await
        .expect("exec");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "a  b $HOME\n", "argv is not shell-expanded");
    assert!(!r.timed_out);
}

#[tokio::test]
async fn command_with_cwd_env_stdin_and_exit_code() {
    let a = Agent::start().await;
    std::fs::create_dir(a.ws.join("sub")).expect("mkdir");
    let req = ExecRequest {
        command: Some("cat; pwd; echo \"$GREETING\"; echo oops >&2; exit 7".into()),
        cwd: Some("sub".into()),
        env: BTreeMap::from([("GREETING".into(), "hi there".into())]),
        stdin_base64: Some(base64::engine::general_purpose::STANDARD.encode(b"input\n")),
        ..Default::default()
    };
    let r = a.client.exec(&req).await.expect("exec");
    assert_eq!(r.exit_code, Some(7));
    assert_eq!(String::from_utf8_lossy(&r.stdout), format!("input\n{}/sub\nhi there\n", a.ws.display()));
    assert_eq!(String::from_utf8_lossy(&r.stderr), "oops\n");
}

#[tokio::test]
async fn environment_is_clean_and_agent_env_does_not_leak() {
    let a = Agent::start().await;
    let r = a.client.exec(&cmd("env")).await.expect("exec");
    let env = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(!env.contains("FOO_SECRET"), "the agent's own env leaked: {env}");
    assert!(!env.contains("hunter2"));
    assert!(env.contains("SANDBOX_VAR=from-sandbox"), "{env}");
    assert!(env.contains(&format!("HOME={}\n", a.ws.display())), "{env}");
    assert!(env.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"), "{env}");
    assert!(env.contains("LANG=C.UTF-8\n"), "{env}");
}

#[tokio::test]
async fn listener_fd_is_not_inherited() {
    let a = Agent::start().await;
    let r = a.client.exec(&cmd("ls -l /proc/self/fd/")).await.expect("exec");
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.exit_code, Some(0));
    assert!(!out.contains("socket:"), "a socket leaked into the child: {out}");
    // 0 = /dev/null, 1 and 2 = pipes, and ls's own directory fd; nothing else.
    let fds = out.lines().filter(|l| l.contains(" -> ")).count();
    assert!(fds <= 4, "unexpected fds: {out}");
}

#[tokio::test]
async fn missing_program_is_exit_127() {
    let a = Agent::start().await;
    let r = a
        .client
        .exec(&ExecRequest { argv: Some(vec!["/no/such/program".into()]), ..Default::default() })
        .await
        .expect("exec");
    assert_eq!(r.exit_code, Some(127));
    assert!(String::from_utf8_lossy(&r.stderr).contains("cannot start"));
}

#[tokio::test]
async fn bad_requests_are_400() {
    let a = Agent::start().await;
    for req in [
        ExecRequest::default(),
        ExecRequest { argv: Some(vec![]), ..Default::default() },
        ExecRequest { argv: Some(vec!["true".into()]), command: Some("true".into()), ..Default::default() },
        ExecRequest { timeout_ms: Some(0), ..cmd("true") },
        ExecRequest { max_output_bytes: Some(1 << 40), ..cmd("true") },
        ExecRequest { cwd: Some("does-not-exist".into()), ..cmd("true") },
    ] {
        match a.client.exec(&req).await {
            Err(AgentError::Remote { status: 400, .. }) => {}
            other => panic!("{req:?} gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn output_cap_truncates_and_memory_stays_bounded() {
    let a = Agent::start().await;
    let req = ExecRequest { max_output_bytes: Some(1024 * 1024), ..cmd("yes | head -c 50000000; echo done >&2") };
    let r = a.client.exec(&req).await.expect("exec");
    assert_eq!(r.exit_code, Some(0), "the command ran to completion");
    assert_eq!(r.stdout.len(), 1024 * 1024);
    assert!(r.stdout_truncated);
    assert!(r.stdout.chunks(2).all(|c| c == b"y\n" || c == b"y"));
    assert_eq!(r.stderr, b"done\n");
    assert!(!r.stderr_truncated);
    let peak = a.peak_rss_kib();
    assert!(peak < 48 * 1024, "agent peak RSS {peak} KiB for 50 MB of output");
}

#[tokio::test]
async fn timeout_kills_the_whole_tree_including_setsid_grandchildren() {
    let a = Agent::start().await;
    let start = std::time::Instant::now();
    let r = a
        .client
        .exec(&ExecRequest { timeout_ms: Some(500), ..cmd("setsid sleep 9137 & sh -c 'sleep 9138' & sleep 9139") })
        .await
        .expect("exec");
    assert!(r.timed_out);
    assert_eq!(r.exit_code, None);
    assert_eq!(r.signal, Some(9));
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    for n in ["sleep 9137", "sleep 9138", "sleep 9139"] {
        assert_no_proc_survives(n, Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn timeout_finds_orphaned_setsid_descendants() {
    // The shell exits at once, so the setsid'd sleep is re-parented away from the tree; the
    // marker variable still finds it when the timeout fires on the remaining stdout holder.
    let a = Agent::start().await;
    let r = a
        .client
        .exec(&ExecRequest { timeout_ms: Some(400), ..cmd("(setsid sleep 9140 &) ; sleep 9141") })
        .await
        .expect("exec");
    assert!(r.timed_out);
    assert_no_proc_survives("sleep 9140", Duration::from_secs(2)).await;
    assert_no_proc_survives("sleep 9141", Duration::from_secs(2)).await;
}

#[tokio::test]
async fn streaming_keeps_order_and_ends_with_exit() {
    let a = Agent::start().await;
    let mut s =
        a.client.exec_stream(&cmd("echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c; exit 5")).await.expect("stream");
    let mut events = Vec::new();
    while let Some(ev) = s.next().await {
        events.push(ev.expect("event"));
    }
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[0], ExecOutput::Stdout("a\n".into()));
    assert_eq!(events[1], ExecOutput::Stderr("b\n".into()));
    assert_eq!(events[2], ExecOutput::Stdout("c\n".into()));
    match &events[3] {
        ExecOutput::Exit { exit_code: Some(5), timed_out: false, duration_ms, .. } => assert!(*duration_ms >= 400),
        other => panic!("last event {other:?}"),
    }
}

#[tokio::test]
async fn streaming_timeout_kills() {
    let a = Agent::start().await;
    let mut s = a
        .client
        .exec_stream(&ExecRequest { timeout_ms: Some(300), ..cmd("echo x; sleep 9142") })
        .await
        .expect("stream");
    let mut last = None;
    while let Some(ev) = s.next().await {
        last = Some(ev.expect("event"));
    }
    assert!(matches!(last, Some(ExecOutput::Exit { timed_out: true, .. })), "{last:?}");
    assert_no_proc_survives("sleep 9142", Duration::from_secs(2)).await;
}

#[tokio::test]
async fn client_disconnect_kills_the_exec() {
    let a = Agent::start().await;
    let mut s = a.client.exec_stream(&cmd("echo started; sleep 9143")).await.expect("stream");
    assert_eq!(s.next().await.expect("event").expect("ok"), ExecOutput::Stdout("started\n".into()));
    assert!(!crate::live_procs_with("sleep 9143").is_empty());
    drop(s);
    assert_no_proc_survives("sleep 9143", Duration::from_secs(3)).await;

    // The buffered form too: the request future is dropped mid-flight.
    let client = a.client.clone();
    let h = tokio::spawn(async move { client.exec(&cmd("sleep 9144")).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while crate::live_procs_with("sleep 9144").is_empty() {
        assert!(std::time::Instant::now() < deadline, "exec never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.abort();
    assert_no_proc_survives("sleep 9144", Duration::from_secs(3)).await;
}

#[tokio::test]
async fn seccomp_denies_mount_and_namespaces_but_not_ordinary_work() {
    let a = Agent::start_with(&["--seccomp"]).await;
    let ok = a.client.exec(&cmd("true")).await.expect("exec");
    assert_eq!(ok.exit_code, Some(0));

    let r = a.client.exec(&cmd("unshare -m true")).await.expect("exec");
    assert_ne!(r.exit_code, Some(0));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Operation not permitted"),
        "{:?}",
        String::from_utf8_lossy(&r.stderr)
    );

    let target = a.dir.path().join("mnt");
    std::fs::create_dir(&target).expect("mkdir");
    let r = a.client.exec(&cmd(&format!("mount -t tmpfs x {}", target.display()))).await.expect("exec");
    assert_ne!(r.exit_code, Some(0));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&target.display().to_string()), "tmpfs got mounted");

    // The exact errno, straight from the syscalls.
    let py = "import ctypes,os; l=ctypes.CDLL(None,use_errno=True); \
              r=l.mount(b'x',b'TARGET',b'tmpfs',0,None); e1=ctypes.get_errno(); \
              r2=l.unshare(0x20000); e2=ctypes.get_errno(); \
              r3=l.syscall(435, 0, 0); e3=ctypes.get_errno(); \
              print(r,e1,r2,e2,r3,e3)"
        .replace("TARGET", &target.display().to_string());
    let r = a
        .client
        .exec(&ExecRequest { argv: Some(vec!["/usr/bin/python3".into(), "-c".into(), py]), ..Default::default() })
        .await
        .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "-1 1 -1 1 -1 38",
        "mount EPERM, unshare EPERM, clone3 ENOSYS; stderr {:?}",
        String::from_utf8_lossy(&r.stderr)
    );

    // Threads still work: glibc falls back from clone3 to clone.
    let r = a
        .client
        .exec(&ExecRequest {
            argv: Some(vec![
                "/usr/bin/python3".into(),
                "-c".into(),
                "import threading; t=threading.Thread(target=print, args=('ok',)); t.start(); t.join()".into(),
            ]),
            ..Default::default()
        })
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "ok\n", "{:?}", String::from_utf8_lossy(&r.stderr));

    // Without --seccomp the same call is not refused by a filter (EPERM only if unprivileged).
    let plain = Agent::start().await;
    let r = plain.client.exec(&cmd("grep Seccomp: /proc/self/status")).await.expect("exec");
    assert!(String::from_utf8_lossy(&r.stdout).contains("Seccomp:\t0"), "{:?}", String::from_utf8_lossy(&r.stdout));
    let r = a.client.exec(&cmd("grep -E 'Seccomp:|NoNewPrivs:' /proc/self/status")).await.expect("exec");
    let s = String::from_utf8_lossy(&r.stdout);
    assert!(s.contains("Seccomp:\t2") && s.contains("NoNewPrivs:\t1"), "{s}");
}

#[tokio::test]
async fn as_pid_1_orphans_are_reaped_and_signals_forwarded() {
    // Needs root (or user namespaces) for a pid namespace; with CI=true a skip is a failure.
    let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "cannot make a pid namespace (unshare --pid) under CI");
        eprintln!("skipping: cannot make a pid namespace here (needs root)");
        return;
    }
    let a = Agent::start_wrapped(&["unshare", "--pid", "--fork", "--mount-proc"], &[]).await;
    let info = a.client.info().await.expect("info");
    assert_eq!(info.pid, 2, "the agent runs beside a PID-1 init");
    let r = a.client.exec(&cmd("(setsid sleep 0.2 &); (sleep 0.1 &); echo ok")).await.expect("exec");
    assert_eq!(r.stdout, b"ok\n");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ps = a.client.exec(&cmd("ps -eo pid,stat,comm --no-headers")).await.expect("ps");
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(!ps.lines().any(|l| l.split_whitespace().nth(1).is_some_and(|s| s.starts_with('Z'))), "zombies left: {ps}");
    assert!(!ps.contains("sleep"), "{ps}");
    // SIGTERM to the init reaches the agent, and both exit.
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", a.child.id(), a.child.id())).expect("children");
    let init: i32 = children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("init pid");
    let status = std::process::Command::new("kill").args(["-TERM", &init.to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{init}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap_or_default().contains(") Z")
    {
        assert!(std::time::Instant::now() < deadline, "init did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
