//! What every test here needs: the real Firecracker binary (or a skip saying why), `/dev/kvm`,
//! the bare guest, and a runtime configured for it in a temp dir.

use std::path::PathBuf;
use std::time::Duration;

use cloudterm_blobstore::{BlobStore, BlobStoreConfig};
use cloudterm_runtime::{Limits, SandboxSpec};
use cloudterm_runtime_firecracker::machine::MachineSpec;
use cloudterm_runtime_firecracker::{locate_binary, FirecrackerConfig, FirecrackerRuntime, Readiness};
use tempfile::TempDir;

use crate::guest::{self, Guest, BANNER};

/// About 40 ms between ticks on a 2.5 GHz TSC.
pub const TICK_CYCLES: u64 = 100_000_000;

/// The firecracker binary, or `None` after printing why the test is skipped.
///
/// No package registry ships Firecracker, so CI machines cannot install it: this is the one skip
/// allowed under `CI=true` (docs/firecracker.md says how to build it). With the binary present,
/// a missing `/dev/kvm` is a real failure under CI.
pub fn firecracker() -> Option<PathBuf> {
    let Some(binary) = locate_binary(std::env::var_os("CLOUDTERM_FIRECRACKER_BIN").map(PathBuf::from)) else {
        eprintln!("SKIP: no firecracker binary (set CLOUDTERM_FIRECRACKER_BIN or put firecracker on PATH; docs/firecracker.md)");
        return None;
    };
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm");
    if let Err(err) = kvm {
        let reason = format!("/dev/kvm cannot be opened read-write: {err}");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason} (CI=true: not skipping)");
        eprintln!("SKIP: {reason}");
        return None;
    }
    Some(binary)
}

/// A temp dir with the bare guests built in it and a VM root under it.
pub struct Harness {
    /// Everything the test made; removed on drop.
    pub dir: TempDir,
    /// The firecracker binary.
    pub binary: PathBuf,
    /// The ticking guest.
    pub ticker: PathBuf,
}

impl Harness {
    /// `None` when the test must skip (see [`firecracker`]).
    pub fn new() -> Option<Harness> {
        let binary = firecracker()?;
        let dir = tempfile::Builder::new().prefix("ctfc").tempdir().expect("tempdir");
        let ticker = guest::build(dir.path(), Guest::Ticker { delay_cycles: TICK_CYCLES });
        Some(Harness { dir, binary, ticker })
    }

    /// Where the runtime keeps its VMs.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("vms")
    }

    /// A runtime that boots `kernel` and calls a VM ready once its console shows the banner.
    pub fn config(&self, kernel: PathBuf) -> FirecrackerConfig {
        let mut config = FirecrackerConfig::new(self.binary.clone(), kernel, self.root());
        config.readiness = Readiness::ConsoleLine(BANNER.to_owned());
        config.ready_timeout_ms = 5_000;
        config.default_memory_mb = 128;
        config.default_workspace_disk_mb = 16;
        config
    }

    /// A local BlobStore under the temp dir.
    pub async fn store(&self) -> BlobStore {
        BlobStore::open(BlobStoreConfig::Local { root: self.dir.path().join("blobs") }).await.expect("blob store")
    }

    /// The ticker runtime, pausing into `store` when given.
    pub fn runtime(&self, store: Option<BlobStore>) -> FirecrackerRuntime {
        let mut config = self.config(self.ticker.clone());
        config.snapshots = store;
        FirecrackerRuntime::new(config)
    }

    /// A sandbox spec with a workspace holding one file.
    pub fn spec(&self, id: &str) -> SandboxSpec {
        let workspace = self.dir.path().join("ws").join(id);
        std::fs::create_dir_all(&workspace).expect("workspace");
        std::fs::write(workspace.join("hello.txt"), "hello from the host\n").expect("workspace file");
        SandboxSpec {
            id: id.to_owned(),
            workspace_dir: Some(workspace),
            state_dir: self.dir.path().join("state").join(id),
            image: None,
            env: vec![],
            limits: Limits::default(),
            mounts: vec![],
            layer_dir: None,
        }
    }
}

impl Drop for Harness {
    /// A test that panics before it stops its VMs would leave their VMMs running: every
    /// process still naming the test's directory is killed.
    fn drop(&mut self) {
        for pid in processes_mentioning(&self.dir.path().display().to_string()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Reads a console log (empty if missing).
pub fn console(path: &std::path::Path) -> String {
    std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
}

/// Polls `check` every 5 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check()
}

/// Every live process whose command line mentions `needle` (a test's temp dir).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true);
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// A bare guest's machine: `kernel` on the serial console, one vCPU, 128 MiB, no drives.
pub fn machine(kernel: std::path::PathBuf) -> MachineSpec {
    MachineSpec {
        kernel,
        boot_args: "console=ttyS0".into(),
        vcpus: 1,
        memory_mb: 128,
        rootfs: None,
        root_writable: false,
        workspace: None,
    }
}
