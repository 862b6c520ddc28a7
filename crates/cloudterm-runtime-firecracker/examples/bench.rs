//! Timings of the firecracker runtime against the real `firecracker` with the tests' bare guest
//! (BENCHMARKS.md): a bare Firecracker boot (`--no-api --config-file`, spawn → first serial
//! byte) as the peer, our boot (spawn + API configuration + InstanceStart → first serial
//! byte), a runtime start (with and without the workspace disk), pause, snapshot, store,
//! load + resume, the runtime's resume, and the VMM's memory.
//!
//! ```sh
//! cargo run --release -p cloudterm-runtime-firecracker --example bench -- 30
//! ```

#[path = "../tests/it/guest.rs"]
#[allow(dead_code)] // the tests use more of it
mod guest;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cloudterm_blobstore::{BlobStore, BlobStoreConfig};
use cloudterm_runtime::{Limits, Runtime, SandboxSpec};
use cloudterm_runtime_firecracker::machine::{boot, MachineSpec};
use cloudterm_runtime_firecracker::snapshot::{self, SnapshotKeys};
use cloudterm_runtime_firecracker::{locate_binary, FirecrackerConfig, FirecrackerRuntime, Readiness, VmDir};
use tokio::io::AsyncReadExt;

const MEMORY_MB: u64 = 128;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn row(name: &str, samples: &mut [Duration]) {
    let (p50, p90) = (percentile(samples, 0.5), percentile(samples, 0.9));
    println!("| {name} | {} | {:.2} ms | {:.2} ms |", samples.len(), ms(p50), ms(p90));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn first_byte(path: &Path, since: Instant) -> Duration {
    loop {
        if std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false) {
            return since.elapsed();
        }
        if since.elapsed() > Duration::from_secs(10) {
            panic!("no console output in {}", path.display());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The peer: Firecracker configured by a file and started at once, output on its stdout.
async fn bare_boot(binary: &Path, kernel: &Path, dir: &Path) -> Duration {
    let config = dir.join("vm.json");
    let body = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": MEMORY_MB, "smt": false}
    });
    std::fs::write(&config, body.to_string()).expect("write the config");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .args(["--no-api", "--level", "Error", "--config-file"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn firecracker");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 256];
        let n = stdout.read(&mut chunk).await.expect("read");
        assert!(n > 0, "firecracker exited before the guest printed");
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"BOOT") {
            break;
        }
    }
    let took = started.elapsed();
    let _ = child.kill().await;
    took
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    // RUST_LOG=cloudterm_runtime_firecracker=debug shows where a resume's time goes.
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let binary = locate_binary(std::env::var_os("CLOUDTERM_FIRECRACKER_BIN").map(Into::into)).expect("firecracker");
    let tmp = tempfile::Builder::new().prefix("ctfcbench").tempdir().expect("tempdir");
    let kernel = guest::build(tmp.path(), guest::Guest::Ticker { delay_cycles: 100_000_000 });
    let store = BlobStore::open(BlobStoreConfig::Local { root: tmp.path().join("blobs") }).await.expect("store");
    let spec = MachineSpec {
        kernel: kernel.clone(),
        boot_args: "console=ttyS0".into(),
        vcpus: 1,
        memory_mb: MEMORY_MB,
        rootfs: None,
        root_writable: false,
        workspace: None,
    };

    let (mut bare, mut ours, mut pause, mut create, mut upload, mut restore, mut rss) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let peer_dir = tmp.path().join(format!("peer{i}"));
        std::fs::create_dir_all(&peer_dir).expect("dir");
        bare.push(bare_boot(&binary, &kernel, &peer_dir).await);

        let dir = VmDir::new(tmp.path().join(format!("vm{i}")));
        std::fs::create_dir_all(dir.path()).expect("dir");
        let started = Instant::now();
        let vmm = boot(&binary, &dir, "bench", &spec).await.expect("boot");
        ours.push(first_byte(&dir.console_log(), started).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss.push(rss_kib(vmm.pid()));
        let t = Instant::now();
        snapshot::pause(&vmm).await.expect("pause");
        pause.push(t.elapsed());
        let t = Instant::now();
        snapshot::create(&vmm, &dir).await.expect("create");
        create.push(t.elapsed());
        let keys = SnapshotKeys::for_sandbox(&format!("bench{i}"), 1);
        let t = Instant::now();
        snapshot::upload(&store, &keys, &dir).await.expect("upload");
        upload.push(t.elapsed());
        vmm.kill().await;
        let t = Instant::now();
        let restored = snapshot::restore(&binary, &dir, "bench").await.expect("restore");
        restore.push(t.elapsed());
        restored.kill().await;
        snapshot::discard(&store, &keys).await.expect("discard");
        let _ = std::fs::remove_dir_all(dir.path());
        let _ = std::fs::remove_dir_all(&peer_dir);
    }

    // The runtime end to end: create → ready (console banner), with and without a workspace.
    let mut config = FirecrackerConfig::new(binary.clone(), kernel.clone(), tmp.path().join("vms"));
    config.readiness = Readiness::ConsoleLine(guest::BANNER.into());
    config.default_memory_mb = MEMORY_MB;
    config.snapshots = Some(store.clone());
    let runtime = FirecrackerRuntime::new(config);
    let (mut start_ws, mut start_nows, mut rt_pause, mut rt_resume) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let workspace = tmp.path().join(format!("ws{i}"));
        std::fs::create_dir_all(&workspace).expect("ws");
        std::fs::write(workspace.join("a.txt"), "x").expect("ws file");
        let mut sandbox = SandboxSpec {
            id: format!("sbx_{i}"),
            workspace_dir: Some(workspace),
            state_dir: tmp.path().join("state"),
            image: None,
            env: vec![],
            limits: Limits::default(),
            mounts: vec![],
            layer_dir: None,
        };
        let t = Instant::now();
        runtime.start(&sandbox).await.expect("start");
        start_ws.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        runtime.pause(&sandbox.id).await.expect("pause");
        rt_pause.push(t.elapsed());
        let t = Instant::now();
        runtime.resume(&sandbox.id).await.expect("resume");
        rt_resume.push(t.elapsed());
        runtime.stop(&sandbox.id).await.expect("stop");
        // Without a workspace disk (the placeholder path of the harness is not used).
        sandbox.id = format!("sbx_nows_{i}");
        sandbox.limits.disk_mb = Some(8);
        let t = Instant::now();
        runtime.start(&sandbox).await.expect("start");
        start_nows.push(t.elapsed());
        runtime.stop(&sandbox.id).await.expect("stop");
    }

    println!("| step | n | p50 | p90 |\n|---|---|---|---|");
    row("peer: bare `firecracker --no-api --config-file`, spawn → first serial byte", &mut bare);
    row("spawn + API config + InstanceStart → first serial byte (`machine::boot`)", &mut ours);
    row("`Runtime::start` → ready (1 GiB workspace disk made by mkfs.ext4 -d)", &mut start_ws);
    row("`Runtime::start` → ready (8 MiB workspace disk)", &mut start_nows);
    row("pause (`PATCH /vm Paused`)", &mut pause);
    row("snapshot create, 128 MiB guest (`PUT /snapshot/create`)", &mut create);
    row("store both files in the local BlobStore (SHA-256 on the way)", &mut upload);
    row("new process + load + resume from local files (`snapshot::restore`)", &mut restore);
    row("`Runtime::pause` (pause + snapshot + store + kill)", &mut rt_pause);
    row("`Runtime::resume` from the local copy", &mut rt_resume);
    rss.sort();
    println!(
        "\nVMM RSS of a running 128 MiB bare guest: median {} KiB, max {} KiB",
        rss[rss.len() / 2],
        rss[rss.len() - 1]
    );
}
