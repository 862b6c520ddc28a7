//! Snapshots and restores on a runtime whose sandboxes keep their own copy of the workspace
//! (the firecracker runtime's workspace disk): the snapshot service asks the runtime to bring
//! the copy back before it reads the workspace (without freezing the sandbox, which never
//! writes the directory read), fails the snapshot when it cannot, and refuses a restore while
//! such a sandbox runs on the workspace.
//!
//! The runtime here is the process runtime (a real agent) wrapped so that it behaves like one
//! that copies: `sync_workspace` writes what "the guest" wrote into the workspace directory,
//! as the firecracker runtime's read-back does (that read-back is tested against the real
//! Firecracker in its own crate; no agent runs in a guest on the build machines).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cloudterm_blobstore::{BlobStore, BlobStoreConfig};
use cloudterm_domain::quotas::QuotaPolicy;
use cloudterm_domain::snapshots::{CreateSnapshot, RestoreSnapshot, SnapshotKind};
use cloudterm_domain::{
    CreateSandbox, DomainError, Principal, PrincipalService, SandboxService, SandboxSettings, SnapshotService,
    SnapshotSettings,
};
use cloudterm_runtime::{
    Limits, Mount, ProcessRuntime, ProcessRuntimeConfig, Runtime, RuntimeKind, SandboxHandle, SandboxRuntimeError,
    SandboxSpec, Usage,
};

/// The file "the guest" wrote, which only `sync_workspace` brings to the host.
const GUEST_FILE: &str = "written-in-the-vm.txt";

/// The process runtime, behaving like a runtime that keeps its own copy of the workspace.
struct CopyingRuntime {
    inner: ProcessRuntime,
    workspaces: Mutex<Vec<(String, PathBuf)>>,
    unreadable: AtomicBool,
    syncs: AtomicUsize,
    pauses: AtomicUsize,
}

#[async_trait]
impl Runtime for CopyingRuntime {
    fn kind(&self) -> RuntimeKind {
        self.inner.kind()
    }
    async fn start(&self, spec: &SandboxSpec) -> Result<SandboxHandle, SandboxRuntimeError> {
        if let (Ok(mut workspaces), Some(dir)) = (self.workspaces.lock(), &spec.workspace_dir) {
            workspaces.push((spec.id.clone(), dir.clone()));
        }
        self.inner.start(spec).await
    }
    async fn attach(&self, id: &str) -> Result<SandboxHandle, SandboxRuntimeError> {
        self.inner.attach(id).await
    }
    async fn stop(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        self.inner.stop(id).await
    }
    async fn usage(&self, id: &str) -> Result<Usage, SandboxRuntimeError> {
        self.inner.usage(id).await
    }
    async fn mount(&self, id: &str, mount: &Mount) -> Result<(), SandboxRuntimeError> {
        self.inner.mount(id, mount).await
    }
    async fn list(&self) -> Result<Vec<String>, SandboxRuntimeError> {
        self.inner.list().await
    }
    async fn sync_workspace(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.unreadable.load(Ordering::SeqCst) {
            return Err(SandboxRuntimeError::Failed("cannot read the VM's workspace disk: spoiled".into()));
        }
        let dir = self.workspaces.lock().ok().and_then(|w| w.iter().find(|(s, _)| s == id).map(|(_, d)| d.clone()));
        let dir = dir.ok_or_else(|| SandboxRuntimeError::NotRunning(id.into()))?;
        std::fs::write(dir.join(GUEST_FILE), "from the guest\n").map_err(|e| SandboxRuntimeError::Failed(e.to_string()))
    }
    fn keeps_workspace_copy(&self) -> bool {
        true
    }
    async fn pause(&self, _id: &str) -> Result<(), SandboxRuntimeError> {
        self.pauses.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn resume(&self, _id: &str) -> Result<(), SandboxRuntimeError> {
        Ok(())
    }
}

fn agent_binary() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/cloudterm-agent");
    if path.is_file() {
        return Some(path);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "build the agent first (cargo build --workspace --bins)");
    eprintln!("SKIP: no agent at {} (cargo build --workspace --bins)", path.display());
    None
}

#[tokio::test]
async fn snapshots_bring_the_copy_back_first_and_restores_wait_for_its_sandbox() {
    let Some(agent_binary) = agent_binary() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let store = cloudterm_store::open(&format!("sqlite://{}", data.join("db.sqlite").display())).await.expect("store");
    let blobs = BlobStore::open(BlobStoreConfig::Local { root: data.join("blobs") }).await.expect("blobs");
    let runtime = Arc::new(CopyingRuntime {
        inner: ProcessRuntime::new(ProcessRuntimeConfig { agent_binary, root_dir: data.join("sandboxes") }),
        workspaces: Mutex::new(Vec::new()),
        unreadable: AtomicBool::new(false),
        syncs: AtomicUsize::new(0),
        pauses: AtomicUsize::new(0),
    });
    let mut quotas = QuotaPolicy::default();
    quotas.defaults.max_sandboxes = 4;
    let settings = SandboxSettings {
        workspaces_dir: data.join("workspaces"),
        state_dir: data.join("sandboxes"),
        default_timeout_seconds: 900,
        max_timeout_seconds: 86_400,
        default_limits: Limits::default(),
        max_limits: Limits::default(),
        quotas,
        mount_allow: vec![],
        images_dir: None,
        warm_pool: 0,
        idle_pause: None,
        volumes: Arc::new(cloudterm_volumes::Volumes::reporting("test")),
    };
    let sandboxes = Arc::new(SandboxService::new(store.clone(), runtime.clone(), settings));
    let snapshots = SnapshotService::new(store.clone(), blobs, sandboxes.clone(), SnapshotSettings::default());
    let alice = Principal::new("alice");
    PrincipalService::new(store.clone()).whoami(&alice).await.expect("principal");
    let sandbox = sandboxes.create(&alice, CreateSandbox::default()).await.expect("create");
    let workspace = sandboxes.workspace_of(&alice, &sandbox.id, cloudterm_domain::Access::Read).await.expect("ws");
    let files = sandboxes.workspace_dir(&workspace.owner, &workspace.id);
    assert!(!files.join(GUEST_FILE).exists(), "only the runtime's copy has it so far");

    // The snapshot asks for the copy first: its archive holds the guest's file.
    let request = CreateSnapshot { sandbox_id: Some(sandbox.id.clone()), ..CreateSnapshot::default() };
    let taken = snapshots.create(&alice, request.clone(), SnapshotKind::Manual).await.expect("snapshot");
    assert_eq!(runtime.syncs.load(Ordering::SeqCst), 1);
    assert_eq!(runtime.pauses.load(Ordering::SeqCst), 0, "no freeze: the sandbox never writes the directory");
    assert_eq!(taken.file_count, 1, "the guest's file is in the archive: {taken:?}");

    // A copy that cannot be read fails the snapshot instead of storing stale files.
    runtime.unreadable.store(true, Ordering::SeqCst);
    let err = snapshots.create(&alice, request, SnapshotKind::Manual).await.expect_err("unreadable copy");
    assert!(
        matches!(&err, DomainError::Unavailable(m) if m.contains("workspace disk: spoiled") && m.contains(&sandbox.id)),
        "{err:?}"
    );
    assert_eq!(snapshots.list(&alice, None).await.expect("list").len(), 1, "no second snapshot");

    // A restore while the sandbox runs on its own copy: refused, nothing changed.
    let restore = RestoreSnapshot { snapshot_id: taken.id.clone(), sandbox_id: None, workspace_id: None };
    std::fs::remove_file(files.join(GUEST_FILE)).expect("remove on the host");
    let err = snapshots.restore(&alice, restore.clone()).await.expect_err("in use");
    assert!(matches!(&err, DomainError::Conflict(m) if m.contains(&sandbox.id) && m.contains("stop it")), "{err:?}");
    assert!(!files.join(GUEST_FILE).exists());

    // Once it is stopped, the same restore brings the guest's file back from the archive.
    sandboxes.delete(&alice, &sandbox.id).await.expect("delete");
    snapshots.restore(&alice, restore).await.expect("restore");
    assert_eq!(std::fs::read_to_string(files.join(GUEST_FILE)).expect("restored"), "from the guest\n");
}
