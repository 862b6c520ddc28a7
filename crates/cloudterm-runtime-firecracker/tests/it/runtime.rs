//! The `Runtime` implementation end to end with the bare guest (ready when its console shows
//! the banner): start, attach (also from a second runtime, as after a server restart), usage,
//! pause into the BlobStore and resume, pause in memory, stop, and every way a start can fail
//! leaving nothing behind.

use std::time::{Duration, Instant};

use cloudterm_runtime::{AgentEndpoint, Runtime, SandboxRuntimeError};
use cloudterm_runtime_firecracker::{FirecrackerRuntime, Readiness, VmDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::guest::{self, Guest};
use crate::support::{console, eventually, processes_mentioning, Harness};

fn nothing_left(h: &Harness, id: &str) {
    assert!(processes_mentioning(&h.dir.path().display().to_string()).is_empty(), "a process of {id} outlived it");
    assert!(!h.root().join(id).exists(), "{id}'s directory is left");
}

#[tokio::test]
async fn a_sandbox_starts_pauses_into_the_store_resumes_where_it_was_and_stops_clean() {
    let Some(h) = Harness::new() else { return };
    let store = h.store().await;
    let runtime = h.runtime(Some(store.clone()));
    let spec = h.spec("sbx_life");
    let dir = VmDir::new(h.root().join("sbx_life"));

    let mut exits = runtime.exits().expect("the runtime reports VMs that die");
    let handle = runtime.start(&spec).await.expect("start");
    assert_eq!(handle.agent, AgentEndpoint::Vsock { uds: dir.vsock_socket(), port: 1024 });
    let pid = handle.pid.expect("a VMM pid");
    assert_eq!(runtime.attach("sbx_life").await.expect("attach").pid, Some(pid));
    assert_eq!(runtime.list().await.expect("list"), vec!["sbx_life".to_owned()]);
    let usage = runtime.usage("sbx_life").await.expect("usage");
    assert!(usage.memory_bytes > 0 && usage.memory_bytes < 64 << 20, "VMM RSS {}", usage.memory_bytes);

    assert!(eventually(Duration::from_secs(5), || guest::ticks(&console(&dir.console_log())).len() >= 3).await);
    let t = Instant::now();
    runtime.pause("sbx_life").await.expect("pause");
    eprintln!("pause into the store: {:?}", t.elapsed());
    let last = *guest::ticks(&console(&dir.console_log())).last().expect("ticks");
    assert!(processes_mentioning(&h.dir.path().display().to_string()).is_empty(), "the VMM is gone while paused");
    assert!(store.head("vms/sbx_life/1/memory").await.is_ok(), "the memory is in the store");
    assert_eq!(runtime.usage("sbx_life").await.expect("usage while paused").memory_bytes, 0);
    runtime.pause("sbx_life").await.expect("pausing a paused sandbox is a no-op");
    // A second runtime (a restarted server) sees it paused and can resume it.
    let restarted = h.runtime(Some(store.clone()));
    assert_eq!(restarted.attach("sbx_life").await.expect("attach while paused").pid, None);

    let t = Instant::now();
    restarted.resume("sbx_life").await.expect("resume");
    eprintln!("resume from the local copy: {:?}", t.elapsed());
    assert!(eventually(Duration::from_secs(5), || !guest::ticks(&console(&dir.console_log())).is_empty()).await);
    let first = guest::ticks(&console(&dir.console_log()))[0];
    assert!(first > last && first <= last + 2, "counter went {last} -> {first}");
    assert!(!dir.memory().exists(), "the local copy goes once resumed");
    let mut gone = false;
    for _ in 0..200 {
        if store.head("vms/sbx_life/1/memory").await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "and so do the objects (in the background)");
    let new_pid = restarted.attach("sbx_life").await.expect("attach").pid.expect("pid");
    assert_ne!(new_pid, pid);

    // Once more, with the local copy lost: resume fetches the snapshot from the store.
    restarted.pause("sbx_life").await.expect("second pause");
    assert!(store.head("vms/sbx_life/2/memory").await.is_ok(), "a second pause writes new keys");
    let last = *guest::ticks(&console(&dir.console_log())).last().expect("ticks");
    std::fs::remove_file(dir.memory()).expect("drop the local memory file");
    let t = Instant::now();
    restarted.resume("sbx_life").await.expect("resume from the store");
    eprintln!("resume from the store: {:?}", t.elapsed());
    assert!(eventually(Duration::from_secs(5), || !guest::ticks(&console(&dir.console_log())).is_empty()).await);
    let first = guest::ticks(&console(&dir.console_log()))[0];
    assert!(first > last && first <= last + 2, "counter went {last} -> {first}");

    restarted.stop("sbx_life").await.expect("stop");
    nothing_left(&h, "sbx_life");
    assert!(exits.try_recv().is_err(), "a VMM killed by pause or stop is no death");
    assert!(store.list("vms").await.expect("list").is_empty());
    assert!(matches!(restarted.attach("sbx_life").await, Err(SandboxRuntimeError::NotRunning(_))));
    restarted.stop("sbx_life").await.expect("stopping twice is fine");
}

#[tokio::test]
async fn without_a_store_pause_keeps_the_vm_in_memory() {
    let Some(h) = Harness::new() else { return };
    let runtime = h.runtime(None);
    let dir = VmDir::new(h.root().join("sbx_mem"));
    let handle = runtime.start(&h.spec("sbx_mem")).await.expect("start");
    assert!(eventually(Duration::from_secs(5), || guest::ticks(&console(&dir.console_log())).len() >= 2).await);
    let t = Instant::now();
    runtime.pause("sbx_mem").await.expect("pause");
    let paused = t.elapsed();
    let frozen = guest::ticks(&console(&dir.console_log()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(guest::ticks(&console(&dir.console_log())), frozen, "ticks while paused");
    assert_eq!(runtime.attach("sbx_mem").await.expect("attach").pid, handle.pid, "same VMM");
    let t = Instant::now();
    runtime.resume("sbx_mem").await.expect("resume");
    eprintln!("in-memory pause {paused:?}, resume {:?}", t.elapsed());
    assert!(
        eventually(Duration::from_secs(5), || guest::ticks(&console(&dir.console_log())).len() > frozen.len()).await
    );
    runtime.stop("sbx_mem").await.expect("stop");
    nothing_left(&h, "sbx_mem");
}

#[tokio::test]
async fn the_workspace_is_a_second_drive_made_from_the_host_directory() {
    let Some(h) = Harness::new() else { return };
    let runtime = h.runtime(None);
    runtime.start(&h.spec("sbx_ws")).await.expect("start");
    let image = VmDir::new(h.root().join("sbx_ws")).workspace_image();
    let out =
        std::process::Command::new("debugfs").arg("-R").arg("cat /hello.txt").arg(&image).output().expect("debugfs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the host\n");
    let vmm_log = std::fs::read_to_string(h.root().join("sbx_ws/vmm.log")).expect("vmm log");
    assert!(vmm_log.contains("/drives/workspace"), "the drive was attached: {vmm_log}");
    runtime.stop("sbx_ws").await.expect("stop");
    nothing_left(&h, "sbx_ws");
}

#[tokio::test]
async fn a_guest_whose_agent_never_answers_fails_the_start_and_is_cleaned_up() {
    let Some(h) = Harness::new() else { return };
    let mut config = h.config(h.ticker.clone());
    config.readiness = Readiness::Agent;
    config.ready_timeout_ms = 1500;
    let runtime = FirecrackerRuntime::new(config);
    let t = Instant::now();
    let err = runtime.start(&h.spec("sbx_noagent")).await.expect_err("no agent");
    assert!(t.elapsed() < Duration::from_secs(10), "bounded: {:?}", t.elapsed());
    let text = err.to_string();
    assert!(matches!(err, SandboxRuntimeError::Failed(_)), "{text}");
    assert!(text.contains("agent did not answer over vsock within 1500 ms"), "{text}");
    assert!(text.contains(guest::BANNER), "the console tail explains: {text}");
    nothing_left(&h, "sbx_noagent");
    assert!(runtime.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn a_vm_that_dies_during_start_fails_at_once_and_is_cleaned_up() {
    let Some(h) = Harness::new() else { return };
    let reset = guest::build(h.dir.path(), Guest::Reset);
    let mut config = h.config(reset);
    config.readiness = Readiness::ConsoleLine("never printed".into());
    config.ready_timeout_ms = 20_000;
    let runtime = FirecrackerRuntime::new(config);
    let t = Instant::now();
    let err = runtime.start(&h.spec("sbx_dies")).await.expect_err("the guest resets");
    assert!(t.elapsed() < Duration::from_secs(10), "not the ready timeout: {:?}", t.elapsed());
    assert!(err.to_string().contains("the VM exited"), "{err}");
    nothing_left(&h, "sbx_dies");
}

#[tokio::test]
async fn a_vm_that_dies_while_running_is_cleaned_up_and_reported_gone() {
    let Some(h) = Harness::new() else { return };
    let store = h.store().await;
    let runtime = h.runtime(Some(store));
    let mut exits = runtime.exits().expect("the runtime reports VMs that die");
    let handle = runtime.start(&h.spec("sbx_crash")).await.expect("start");
    kill(Pid::from_raw(handle.pid.expect("pid") as i32), Signal::SIGKILL).expect("kill the VMM");
    let exit = tokio::time::timeout(Duration::from_secs(5), exits.recv())
        .await
        .expect("reported within 5 s")
        .expect("an exit");
    assert_eq!(exit.id, "sbx_crash");
    assert!(exit.reason.contains("its VM exited") && exit.reason.contains("signal: 9"), "{}", exit.reason);
    assert!(!h.root().join("sbx_crash").exists(), "reported once cleaned up");
    assert!(
        eventually(Duration::from_secs(5), || !h.root().join("sbx_crash").exists()).await,
        "the dead VM's directory was not cleaned up"
    );
    nothing_left(&h, "sbx_crash");
    assert!(matches!(runtime.attach("sbx_crash").await, Err(SandboxRuntimeError::NotRunning(_))));
    assert!(matches!(runtime.pause("sbx_crash").await, Err(SandboxRuntimeError::NotRunning(_))));
    assert!(runtime.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn bad_kernels_images_and_ids_are_invalid_specs_and_leave_nothing() {
    let Some(h) = Harness::new() else { return };
    let bz = h.dir.path().join("bzImage");
    std::fs::write(&bz, b"MZ compressed").expect("write");
    let runtime = FirecrackerRuntime::new(h.config(bz));
    let err = runtime.start(&h.spec("sbx_badk")).await.expect_err("bad kernel");
    assert!(matches!(err, SandboxRuntimeError::InvalidSpec(_)), "{err}");
    nothing_left(&h, "sbx_badk");

    let runtime = h.runtime(None);
    let mut spec = h.spec("sbx_badi");
    spec.image = Some(h.dir.path().join("no-such-image.ext4"));
    let err = runtime.start(&spec).await.expect_err("bad image");
    assert!(matches!(err, SandboxRuntimeError::InvalidSpec(_)) && err.to_string().contains("no-such-image"), "{err}");
    nothing_left(&h, "sbx_badi");

    let deep = FirecrackerRuntime::new({
        let mut config = h.config(h.ticker.clone());
        config.root_dir = h.dir.path().join("d".repeat(120));
        config
    });
    let err = deep.start(&h.spec("sbx_deep")).await.expect_err("socket path too long");
    assert!(err.to_string().contains("too long for the VM's Unix sockets"), "{err}");

    let mut spec = h.spec("sbx_x");
    spec.id = "../escape".into();
    assert!(matches!(runtime.start(&spec).await, Err(SandboxRuntimeError::InvalidSpec(_))));
    assert!(matches!(runtime.attach("../escape").await, Err(SandboxRuntimeError::InvalidSpec(_))));
}
