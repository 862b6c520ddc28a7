//! [`FirecrackerRuntime`]: the `Runtime` the server holds. One Firecracker process per sandbox
//! in `root_dir/<id>/`; a registry of the VMs this process knows, each behind its own lock so
//! operations on one sandbox are serialized and others go on; a watcher per VMM that tears a
//! sandbox down when its VM dies on its own, so nothing is left half alive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloudterm_runtime::{
    AgentClient, AgentEndpoint, Mount, Runtime, RuntimeKind, SandboxExit, SandboxHandle, SandboxRuntimeError,
    SandboxSpec, Usage,
};
use tokio::sync::Mutex;

use crate::config::{FirecrackerConfig, Readiness};
use crate::error::FirecrackerError;
use crate::layout::{valid_id, VmDir};
use crate::machine::{boot_after, MachineSpec};
use crate::record::{self, VmPhase, VmRecord};
use crate::snapshot::{self, SnapshotKeys};
use crate::vmm::{log_tail, Vmm};
use crate::workspace;

/// Longest kernel command line Firecracker passes on (x86_64 `COMMAND_LINE_SIZE`).
const MAX_CMDLINE: usize = 2048;
/// Longest Unix socket path (`sun_path` without its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// One VM this process knows.
#[derive(Debug)]
struct Entry {
    /// The VMM, while there is one.
    vmm: Option<Vmm>,
    phase: VmPhase,
    /// Pauses into the store so far.
    generation: u64,
    /// Set once the sandbox is stopped: a watcher or a queued operation finding it leaves it be.
    gone: bool,
    /// The host directory its workspace disk was made from and is read back into.
    workspace: Option<PathBuf>,
    /// The workspace directory holds what the disk holds: read back since the guest last ran.
    synced: bool,
}

type Slot = Arc<Mutex<Entry>>;

/// The firecracker runtime. Cheap to share behind an `Arc<dyn Runtime>`.
pub struct FirecrackerRuntime {
    config: FirecrackerConfig,
    vms: Arc<StdMutex<HashMap<String, Slot>>>,
    /// Sandboxes being started, with their workspace directories (not recorded yet).
    starting: StdMutex<HashMap<String, PathBuf>>,
    /// VMs that died, reported once cleaned up.
    exits: tokio::sync::broadcast::Sender<SandboxExit>,
}

impl std::fmt::Debug for FirecrackerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirecrackerRuntime").field("config", &self.config).finish_non_exhaustive()
    }
}

fn not_running(id: &str) -> SandboxRuntimeError {
    SandboxRuntimeError::NotRunning(id.to_owned())
}

impl FirecrackerRuntime {
    /// A runtime with this configuration. Nothing is started until the first call.
    pub fn new(config: FirecrackerConfig) -> Self {
        FirecrackerRuntime {
            config,
            vms: Arc::new(StdMutex::new(HashMap::new())),
            starting: StdMutex::new(HashMap::new()),
            exits: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &FirecrackerConfig {
        &self.config
    }

    fn vm_dir(&self, id: &str) -> Result<VmDir, SandboxRuntimeError> {
        if !valid_id(id) {
            return Err(SandboxRuntimeError::InvalidSpec(format!("invalid sandbox id {id:?}")));
        }
        Ok(VmDir::new(self.config.root_dir.join(id)))
    }

    fn endpoint(&self, dir: &VmDir) -> AgentEndpoint {
        AgentEndpoint::Vsock { uds: dir.vsock_socket(), port: self.config.agent_port }
    }

    fn slot(&self, id: &str) -> Option<Slot> {
        self.vms.lock().ok()?.get(id).cloned()
    }

    fn forget(vms: &StdMutex<HashMap<String, Slot>>, id: &str) {
        if let Ok(mut vms) = vms.lock() {
            vms.remove(id);
        }
    }

    /// The VM of `id`: from the registry, else found again from its record (after a restart).
    fn find(&self, id: &str) -> Result<Slot, SandboxRuntimeError> {
        if let Some(slot) = self.slot(id) {
            return Ok(slot);
        }
        let dir = self.vm_dir(id)?;
        let record = record::read(&dir).ok_or_else(|| not_running(id))?;
        let vmm = match record.phase {
            VmPhase::PausedInStore => None,
            VmPhase::Running | VmPhase::PausedInMemory => {
                Some(record.pid.and_then(|pid| Vmm::find(&dir, pid)).ok_or_else(|| not_running(id))?)
            }
        };
        let slot = Arc::new(Mutex::new(Entry {
            vmm: vmm.clone(),
            phase: record.phase,
            generation: record.generation,
            gone: false,
            workspace: record.workspace.clone(),
            synced: false,
        }));
        let mut vms = self.vms.lock().map_err(|_| SandboxRuntimeError::Failed("vm registry poisoned".into()))?;
        let slot = vms.entry(id.to_owned()).or_insert(slot).clone();
        drop(vms);
        if let Some(vmm) = vmm {
            self.watch(id, &slot, vmm);
        }
        Ok(slot)
    }

    /// Tears the sandbox down if `vmm` exits while the sandbox still counts on it.
    fn watch(&self, id: &str, slot: &Slot, vmm: Vmm) {
        let (id, slot, vms, dir) = (id.to_owned(), Arc::clone(slot), Arc::clone(&self.vms), self.vm_dir(id).ok());
        let store = self.config.snapshots.clone();
        let root = self.config.root_dir.clone();
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let status = vmm.exited().await;
            let mut entry = slot.lock().await;
            let current = entry.vmm.as_ref().map(Vmm::pid) == Some(vmm.pid());
            if entry.gone || !current {
                return; // stopped, or paused into the store and restored since: not a death
            }
            let output = dir.as_ref().map(guest_output).unwrap_or_default();
            tracing::error!(sandbox = %id, %status, %output, "the sandbox's VM died; cleaning it up");
            entry.gone = true;
            entry.vmm = None;
            Self::forget(&vms, &id);
            if let Some(store) = store {
                let _ = snapshot::discard_all(&store, &id).await;
            }
            if let Some(dir) = dir {
                // What the guest wrote before it died is the workspace's now.
                finish_workspace(&id, &dir, entry.workspace.as_deref(), &root).await;
                let _ = tokio::fs::remove_dir_all(dir.path()).await;
            }
            drop(entry);
            let _ = exits.send(SandboxExit { id, reason: format!("its VM exited ({status}); {output}") });
        });
    }

    fn machine_spec(&self, spec: &SandboxSpec, dir: &VmDir) -> Result<(MachineSpec, u64), SandboxRuntimeError> {
        let invalid = |message: String| SandboxRuntimeError::InvalidSpec(message);
        if !spec.mounts.is_empty() {
            return Err(SandboxRuntimeError::NotSupported { runtime: RuntimeKind::Firecracker, operation: "mounts" });
        }
        if spec.layer_dir.is_some() {
            return Err(invalid("the firecracker runtime cannot start from a writable layer yet".into()));
        }
        let memory_mb = spec.limits.memory_mb.unwrap_or(self.config.default_memory_mb);
        let vcpus = match spec.limits.cpus {
            None => self.config.default_vcpus,
            // A VM gets whole vCPUs: a quota of 0.5 is one vCPU, 1.5 two.
            Some(cpus) if cpus.is_finite() && cpus > 0.0 && cpus <= 32.0 => cpus.ceil() as u8,
            Some(cpus) => return Err(invalid(format!("cpu limit {cpus} is out of range (at most 32 vCPUs)"))),
        };
        let disk_mb = spec.limits.disk_mb.unwrap_or(self.config.default_workspace_disk_mb);
        let mut boot_args = format!(
            "{} -- --vm-init --listen vsock:{} --workspace /workspace",
            self.config.boot_args.trim(),
            self.config.agent_port
        );
        for (name, value) in &spec.env {
            let pair = format!("{name}={value}");
            if pair.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"') {
                return Err(invalid(format!(
                    "environment variable {name}: the firecracker runtime passes the environment on the kernel command line, which cannot hold whitespace, quotes or control characters"
                )));
            }
            boot_args.push_str(" --env ");
            boot_args.push_str(&pair);
        }
        if boot_args.len() > MAX_CMDLINE {
            return Err(invalid(format!(
                "the environment is too large for the kernel command line ({MAX_CMDLINE} bytes)"
            )));
        }
        let machine = MachineSpec {
            kernel: self.config.kernel.clone(),
            boot_args,
            vcpus,
            memory_mb,
            // The sandbox's own copy: what the guest writes outside /workspace stays in it.
            rootfs: self.base_rootfs(spec).map(|_| dir.root_image()),
            root_writable: true,
            workspace: spec.workspace_dir.as_ref().map(|_| dir.workspace_image()),
        };
        Ok((machine, disk_mb))
    }

    /// The root image the sandbox's copy is made from: its image's, else the default.
    fn base_rootfs(&self, spec: &SandboxSpec) -> Option<PathBuf> {
        match &spec.image {
            Some(image) => Some(rootfs_of(image)),
            None => self.config.default_rootfs.clone(),
        }
    }

    async fn boot_sandbox(&self, spec: &SandboxSpec, dir: &VmDir) -> Result<Vmm, FirecrackerError> {
        let (machine, disk_mb) =
            self.machine_spec(spec, dir).map_err(|err| FirecrackerError::Invalid(err.to_string()))?;
        let workspace_disk = async {
            if let Some(workspace) = &spec.workspace_dir {
                tokio::fs::create_dir_all(workspace)
                    .await
                    .map_err(|err| FirecrackerError::io("cannot create the workspace", err))?;
                crate::disk::make_ext4(workspace, &dir.workspace_image(), disk_mb, "workspace").await?;
            }
            Ok(())
        };
        let base = self.base_rootfs(spec);
        if let Some(base) = &base {
            crate::machine::check_image("root image", base)?;
        }
        let root_copy = async {
            if let Some(base) = &base {
                crate::disk::copy_sparse(base, &dir.root_image()).await?;
            }
            Ok::<_, FirecrackerError>(())
        };
        let disks = async { tokio::try_join!(workspace_disk, root_copy).map(|_| ()) };
        let vmm = boot_after(&self.config.binary, dir, &spec.id, &machine, disks).await?;
        let timeout = Duration::from_millis(self.config.ready_timeout_ms);
        let endpoint = self.endpoint(dir);
        let ready = tokio::select! {
            ready = wait_ready(&self.config.readiness, &endpoint, dir, timeout) => ready,
            status = vmm.exited() => Err(FirecrackerError::Exited { status, output: guest_output(dir) }),
        };
        match ready {
            Ok(()) => Ok(vmm),
            Err(err) => {
                vmm.kill().await;
                Err(err)
            }
        }
    }

    async fn remove_files(&self, id: &str, dir: &VmDir) -> Result<(), SandboxRuntimeError> {
        if let Some(store) = &self.config.snapshots {
            snapshot::discard_all(store, id).await?;
        }
        match tokio::fs::remove_dir_all(dir.path()).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(SandboxRuntimeError::Failed(format!("cannot remove {}: {err}", dir.path().display()))),
        }
    }

    async fn write_record(dir: &VmDir, entry: &Entry, agent_port: u32) -> Result<(), FirecrackerError> {
        let record = VmRecord {
            pid: entry.vmm.as_ref().map(Vmm::pid),
            phase: entry.phase,
            agent_port,
            generation: entry.generation,
            workspace: entry.workspace.clone(),
        };
        record::write(dir, &record)
    }

    /// [`Runtime::start`] once the spec is checked: boots, records, registers and watches.
    async fn start_recorded(
        &self,
        spec: &SandboxSpec,
        dir: &VmDir,
        workspace_dir: PathBuf,
    ) -> Result<SandboxHandle, SandboxRuntimeError> {
        let dir = dir.clone();
        tokio::fs::create_dir_all(dir.path())
            .await
            .map_err(|err| SandboxRuntimeError::Failed(format!("cannot create {}: {err}", dir.path().display())))?;
        let vmm = match self.boot_sandbox(spec, &dir).await {
            Ok(vmm) => vmm,
            Err(err) => {
                let _ = self.remove_files(&spec.id, &dir).await;
                return Err(err.into());
            }
        };
        let entry = Entry {
            vmm: Some(vmm.clone()),
            phase: VmPhase::Running,
            generation: 0,
            gone: false,
            workspace: Some(workspace_dir),
            synced: false,
        };
        if let Err(err) = Self::write_record(&dir, &entry, self.config.agent_port).await {
            vmm.kill().await;
            let _ = self.remove_files(&spec.id, &dir).await;
            return Err(err.into());
        }
        let slot = Arc::new(Mutex::new(entry));
        if let Ok(mut vms) = self.vms.lock() {
            vms.insert(spec.id.clone(), Arc::clone(&slot));
        }
        self.watch(&spec.id, &slot, vmm.clone());
        Ok(SandboxHandle { agent: self.endpoint(&dir), pid: Some(vmm.pid()) })
    }

    /// Asks the guest's agent to write its dirty pages to its disks (`sync(2)`), so the
    /// workspace disk read next holds everything written so far. Bounded; a guest without an
    /// agent (readiness by console line) is not asked, and one that does not answer leaves the
    /// disk as of its last journal commit (ext4 commits every few seconds).
    async fn guest_sync(&self, id: &str, dir: &VmDir) {
        if self.config.readiness != Readiness::Agent {
            return;
        }
        let agent = AgentClient::new(self.endpoint(dir));
        match tokio::time::timeout(GUEST_SYNC_TIMEOUT, agent.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(sandbox = %id, error = %err, "the guest did not sync its disks"),
            Err(_) => tracing::warn!(sandbox = %id, "the guest did not sync its disks in time"),
        }
    }

    /// Reads a VM's workspace disk back into its workspace directory; the VM must be paused
    /// (or gone). Does nothing for a VM without a workspace.
    async fn read_back(
        &self,
        id: &str,
        dir: &VmDir,
        entry: &Entry,
        usage: workspace::ImageUse,
    ) -> Result<(), FirecrackerError> {
        let Some(target) = &entry.workspace else { return Ok(()) };
        let started = Instant::now();
        workspace::sync_back(id, &dir.workspace_image(), target, dir.path(), usage).await?;
        tracing::debug!(sandbox = %id, ms = started.elapsed().as_millis() as u64, "workspace disk read back");
        Ok(())
    }

    /// The sandbox that already runs on `workspace`, if any (its record says so).
    async fn vm_on_workspace(&self, workspace: &Path) -> Option<String> {
        for id in self.list().await.ok()? {
            let Ok(dir) = self.vm_dir(&id) else { continue };
            if record::read(&dir).and_then(|record| record.workspace).as_deref() == Some(workspace) {
                return Some(id);
            }
        }
        let starting = self.starting.lock().ok()?;
        starting.iter().find(|(_, ws)| ws.as_path() == workspace).map(|(id, _)| id.clone())
    }
}

/// How long the guest gets to sync its disks before its workspace disk is read.
const GUEST_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// After a VM is gone for good (stopped, or dead): reads its workspace disk back into the
/// workspace directory, replaying the guest's journal in place. A disk that cannot be read is
/// kept beside the VM directories (`<root>/<id>.workspace.ext4`, never listed as a sandbox)
/// for an operator, and the failure logged with where it is: the guest's last writes are not
/// deleted with the VM.
async fn finish_workspace(id: &str, dir: &VmDir, target: Option<&Path>, root: &Path) {
    let Some(target) = target else { return };
    let image = dir.workspace_image();
    if !image.exists() {
        return;
    }
    let Err(err) = workspace::sync_back(id, &image, target, dir.path(), workspace::ImageUse::Finished).await else {
        return;
    };
    let kept = root.join(format!("{id}.workspace.ext4"));
    match tokio::fs::rename(&image, &kept).await {
        Ok(()) => {
            tracing::error!(sandbox = %id, error = %err, kept = %kept.display(), "the VM's workspace disk could not be read back; the disk is kept")
        }
        Err(rename) => {
            tracing::error!(sandbox = %id, error = %err, %rename, "the VM's workspace disk could not be read back nor kept; the guest's writes since start are lost")
        }
    }
}

/// The root image of `image`: the file itself, or for an image directory `DIR` the `DIR.ext4`
/// beside it that `cloudterm image build DIR` writes.
pub fn rootfs_of(image: &Path) -> PathBuf {
    if image.is_dir() {
        let mut file = image.as_os_str().to_owned();
        file.push(".ext4");
        PathBuf::from(file)
    } else {
        image.to_owned()
    }
}

/// The guest's console, else Firecracker's own log, shortened to its start and end: what
/// explains a VM that did not come up, short enough for an error message and a log line.
pub(crate) fn guest_output(dir: &VmDir) -> String {
    let console = log_tail(&dir.console_log());
    if !console.is_empty() {
        return format!("console: {}", excerpt(&console, 200, 300));
    }
    let vmm = log_tail(&dir.vmm_log());
    if !vmm.is_empty() {
        return format!("firecracker: {}", excerpt(&vmm, 0, 500));
    }
    "(no output)".to_owned()
}

/// The first `head` and last `tail` characters of `text`, joined by ` … ` when cut, its lines
/// joined by ` | `.
fn excerpt(text: &str, head: usize, tail: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= head + tail {
        return text.replace('\n', " | ");
    }
    let start: String = chars[..head].iter().collect();
    let end: String = chars[chars.len() - tail..].iter().collect();
    format!("{start} … {end}").replace('\n', " | ")
}

/// Polls until the guest is ready by `readiness`, or `timeout` passes.
pub(crate) async fn wait_ready(
    readiness: &Readiness,
    endpoint: &AgentEndpoint,
    dir: &VmDir,
    timeout: Duration,
) -> Result<(), FirecrackerError> {
    let deadline = Instant::now() + timeout;
    let agent = AgentClient::new(endpoint.clone());
    let mut pause = Duration::from_millis(1);
    loop {
        let ready = match readiness {
            Readiness::Agent => {
                matches!(tokio::time::timeout(Duration::from_secs(1), agent.info()).await, Ok(Ok(_)))
            }
            Readiness::ConsoleLine(text) => {
                tokio::fs::read(dir.console_log()).await.is_ok_and(|bytes| contains(&bytes, text.as_bytes()))
            }
        };
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = match readiness {
                Readiness::Agent => "its agent did not answer over vsock".to_owned(),
                Readiness::ConsoleLine(text) => format!("its console did not show {text:?}"),
            };
            return Err(FirecrackerError::Timeout(format!(
                "the VM booted but {what} within {} ms; {}",
                timeout.as_millis(),
                guest_output(dir)
            )));
        }
        tokio::time::sleep(pause).await;
        // Fine-grained: every millisecond of polling is a millisecond of start-up time.
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|window| window == needle)
}

#[async_trait]
impl Runtime for FirecrackerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Firecracker
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<SandboxHandle, SandboxRuntimeError> {
        let dir = self.vm_dir(&spec.id)?;
        // sun_path holds 108 bytes with its NUL; longer socket paths fail deep inside Firecracker.
        if dir.vsock_socket().as_os_str().len() > MAX_SOCKET_PATH {
            return Err(SandboxRuntimeError::Failed(format!(
                "the runtime state directory {} is too long for the VM's Unix sockets (at most {MAX_SOCKET_PATH} bytes); set a shorter runtime.state_dir",
                self.config.root_dir.display()
            )));
        }
        if spec.workspace_dir.is_none() {
            return Err(SandboxRuntimeError::NotSupported {
                runtime: RuntimeKind::Firecracker,
                operation: "warm pool",
            });
        }
        if self.slot(&spec.id).is_some() {
            return Err(SandboxRuntimeError::InvalidSpec(format!("sandbox {} is already running", spec.id)));
        }
        // Each VM has its own copy of the workspace, read back over the directory when it
        // stops: two VMs on one workspace would overwrite each other's files.
        let workspace_dir = spec.workspace_dir.clone().unwrap_or_default();
        if let Some(other) = self.vm_on_workspace(&workspace_dir).await {
            return Err(SandboxRuntimeError::NotSupported {
                runtime: RuntimeKind::Firecracker,
                operation: if other == spec.id {
                    "starting a sandbox twice"
                } else {
                    "two sandboxes on one workspace (each VM has its own copy of the workspace)"
                },
            });
        }
        if let Ok(mut starting) = self.starting.lock() {
            starting.insert(spec.id.clone(), workspace_dir.clone());
        }
        let started = self.start_recorded(spec, &dir, workspace_dir).await;
        if let Ok(mut starting) = self.starting.lock() {
            starting.remove(&spec.id);
        }
        started
    }

    async fn attach(&self, id: &str) -> Result<SandboxHandle, SandboxRuntimeError> {
        let dir = self.vm_dir(id)?;
        let slot = self.find(id)?;
        let entry = slot.lock().await;
        if entry.gone {
            return Err(not_running(id));
        }
        Ok(SandboxHandle { agent: self.endpoint(&dir), pid: entry.vmm.as_ref().map(Vmm::pid) })
    }

    async fn stop(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        let dir = self.vm_dir(id)?;
        let slot = self.find(id).ok();
        match &slot {
            Some(slot) => {
                let mut entry = slot.lock().await;
                if entry.gone {
                    // The watcher or an earlier stop has read the disk back already.
                    Self::forget(&self.vms, id);
                    return self.remove_files(id, &dir).await;
                }
                entry.gone = true;
                if let Some(vmm) = entry.vmm.take() {
                    vmm.kill().await;
                }
                Self::forget(&self.vms, id);
                finish_workspace(id, &dir, entry.workspace.as_deref(), &self.config.root_dir).await;
                self.remove_files(id, &dir).await
            }
            None => {
                // Whatever is left: a VMM whose record was never written still runs with our
                // socket on its command line.
                let record = record::read(&dir);
                if let Some(vmm) = record.as_ref().and_then(|r| r.pid).and_then(|pid| Vmm::find(&dir, pid)) {
                    vmm.kill().await;
                }
                let target = record.and_then(|r| r.workspace);
                finish_workspace(id, &dir, target.as_deref(), &self.config.root_dir).await;
                self.remove_files(id, &dir).await
            }
        }
    }

    async fn usage(&self, id: &str) -> Result<Usage, SandboxRuntimeError> {
        let slot = self.find(id)?;
        let entry = slot.lock().await;
        if entry.gone {
            return Err(not_running(id));
        }
        let Some(vmm) = &entry.vmm else { return Ok(Usage::default()) };
        let (memory_bytes, cpu_usec) = vmm.usage().ok_or_else(|| not_running(id))?;
        // Processes inside the guest are the agent's to count; the host sees one VMM.
        Ok(Usage { memory_bytes, cpu_usec, pids: 0 })
    }

    async fn mount(&self, _id: &str, _mount: &Mount) -> Result<(), SandboxRuntimeError> {
        Err(SandboxRuntimeError::NotSupported { runtime: RuntimeKind::Firecracker, operation: "mount" })
    }

    async fn sync_workspace(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        let dir = self.vm_dir(id)?;
        let slot = self.find(id)?;
        let mut entry = slot.lock().await;
        if entry.gone {
            return Err(not_running(id));
        }
        if entry.synced {
            return Ok(());
        }
        match entry.phase {
            VmPhase::PausedInMemory | VmPhase::PausedInStore => {
                self.read_back(id, &dir, &entry, workspace::ImageUse::InUse).await?;
                entry.synced = true;
            }
            VmPhase::Running => {
                // Paused only while the disk is read; the guest runs on afterwards.
                let vmm = entry.vmm.clone().ok_or_else(|| not_running(id))?;
                self.guest_sync(id, &dir).await;
                snapshot::pause(&vmm).await?;
                let read = self.read_back(id, &dir, &entry, workspace::ImageUse::InUse).await;
                let resumed = snapshot::resume(&vmm).await;
                read?;
                resumed?;
            }
        }
        Ok(())
    }

    fn keeps_workspace_copy(&self) -> bool {
        true
    }

    fn exits(&self) -> Option<tokio::sync::broadcast::Receiver<SandboxExit>> {
        Some(self.exits.subscribe())
    }

    async fn list(&self) -> Result<Vec<String>, SandboxRuntimeError> {
        let mut ids = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.config.root_dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(err) => return Err(SandboxRuntimeError::Failed(format!("cannot list sandboxes: {err}"))),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|err| SandboxRuntimeError::Failed(format!("cannot list sandboxes: {err}")))?
        {
            if let Some(name) = entry.file_name().to_str().filter(|name| valid_id(name) && !name.starts_with('.')) {
                ids.push(name.to_owned());
            }
        }
        Ok(ids)
    }

    async fn pause(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        let dir = self.vm_dir(id)?;
        let slot = self.find(id)?;
        let mut entry = slot.lock().await;
        if entry.gone {
            return Err(not_running(id));
        }
        if entry.phase != VmPhase::Running {
            return Ok(());
        }
        let vmm = entry.vmm.clone().ok_or_else(|| not_running(id))?;
        self.guest_sync(id, &dir).await;
        snapshot::pause(&vmm).await?;
        // The host's view of the workspace follows the guest's at every pause. A disk that
        // cannot be read does not keep the sandbox from pausing; `sync_workspace` tries again
        // and fails for whoever needs the files (a snapshot).
        match self.read_back(id, &dir, &entry, workspace::ImageUse::InUse).await {
            Ok(()) => entry.synced = true,
            Err(err) => tracing::warn!(sandbox = %id, error = %err, "cannot read the workspace disk back at pause"),
        }
        let Some(store) = &self.config.snapshots else {
            entry.phase = VmPhase::PausedInMemory;
            return Ok(Self::write_record(&dir, &entry, self.config.agent_port).await?);
        };
        let keys = SnapshotKeys::for_sandbox(id, entry.generation + 1);
        let saved = async {
            snapshot::create(&vmm, &dir).await?;
            snapshot::upload(store, &keys, &dir).await
        }
        .await;
        if let Err(err) = saved {
            // The guest is intact in its VMM: let it run on and report the failure.
            for path in [dir.vmstate(), dir.memory()] {
                let _ = tokio::fs::remove_file(path).await;
            }
            let _ = snapshot::discard(store, &keys).await;
            let _ = snapshot::resume(&vmm).await;
            entry.synced = false;
            return Err(err.into());
        }
        // Record first: a crash from here on leaves a record that points at the store.
        entry.phase = VmPhase::PausedInStore;
        entry.generation += 1;
        entry.vmm = None;
        Self::write_record(&dir, &entry, self.config.agent_port).await?;
        vmm.kill().await;
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        let dir = self.vm_dir(id)?;
        let slot = self.find(id)?;
        let mut entry = slot.lock().await;
        if entry.gone {
            return Err(not_running(id));
        }
        match entry.phase {
            VmPhase::Running => Ok(()),
            VmPhase::PausedInMemory => {
                let vmm = entry.vmm.clone().ok_or_else(|| not_running(id))?;
                snapshot::resume(&vmm).await?;
                entry.phase = VmPhase::Running;
                entry.synced = false;
                Ok(Self::write_record(&dir, &entry, self.config.agent_port).await?)
            }
            VmPhase::PausedInStore => {
                let store = self.config.snapshots.as_ref().ok_or_else(|| {
                    SandboxRuntimeError::Failed(format!(
                        "sandbox {id} is paused in a snapshot store that is not configured"
                    ))
                })?;
                let keys = SnapshotKeys::for_sandbox(id, entry.generation);
                let started = Instant::now();
                if !snapshot::is_local(&dir) {
                    snapshot::download(store, &keys, &dir).await?;
                }
                let fetched = started.elapsed();
                let vmm = snapshot::restore(&self.config.binary, &dir, id).await?;
                let restored = started.elapsed();
                entry.vmm = Some(vmm.clone());
                entry.phase = VmPhase::Running;
                entry.synced = false;
                if let Err(err) = Self::write_record(&dir, &entry, self.config.agent_port).await {
                    vmm.kill().await;
                    entry.vmm = None;
                    entry.phase = VmPhase::PausedInStore;
                    return Err(err.into());
                }
                drop(entry);
                self.watch(id, &slot, vmm);
                // Only now is the snapshot no longer the sandbox's only copy. Deleting it (a
                // large file: tens of milliseconds) is no part of the resume; the next pause
                // writes other keys.
                let (store, sandbox) = (store.clone(), id.to_owned());
                tokio::spawn(async move {
                    if let Err(err) = snapshot::discard(&store, &keys).await {
                        tracing::warn!(%sandbox, error = %err, "cannot delete a resumed VM's snapshot objects");
                    }
                });
                tracing::debug!(sandbox = %id, fetch_ms = fetched.as_millis() as u64, restore_ms = restored.as_millis() as u64, total_ms = started.elapsed().as_millis() as u64, "resumed a VM from its snapshot");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudterm_runtime::Limits;

    fn runtime() -> FirecrackerRuntime {
        FirecrackerRuntime::new(FirecrackerConfig::new("/bin/false".into(), "/vmlinux".into(), "/tmp/fc".into()))
    }

    fn spec() -> SandboxSpec {
        SandboxSpec {
            id: "sbx_1".into(),
            workspace_dir: Some("/tmp/ws".into()),
            state_dir: "/tmp/state".into(),
            image: None,
            env: vec![],
            limits: Limits::default(),
            mounts: vec![],
            layer_dir: None,
        }
    }

    #[test]
    fn limits_map_to_whole_vcpus_memory_and_the_workspace_disk() {
        let rt = runtime();
        let dir = VmDir::new("/tmp/fc/sbx_1");
        let mut s = spec();
        s.limits = Limits { memory_mb: Some(256), cpus: Some(1.5), pids: None, disk_mb: Some(64) };
        let (machine, disk) = rt.machine_spec(&s, &dir).expect("valid");
        assert_eq!((machine.vcpus, machine.memory_mb, disk), (2, 256, 64));
        assert_eq!(machine.rootfs, None, "no image, no default: no root disk");
        s.image = Some("/images/base.ext4".into());
        let (machine, _) = rt.machine_spec(&s, &dir).expect("valid");
        assert_eq!((machine.rootfs, machine.root_writable), (Some(dir.root_image()), true), "its own copy, writable");
        assert_eq!(machine.workspace, Some(dir.workspace_image()));
        assert!(
            machine.boot_args.ends_with("-- --vm-init --listen vsock:1024 --workspace /workspace"),
            "{}",
            machine.boot_args
        );
        s.limits.cpus = Some(f64::NAN);
        assert!(matches!(rt.machine_spec(&s, &dir), Err(SandboxRuntimeError::InvalidSpec(_))));
        s.limits.cpus = Some(33.0);
        assert!(matches!(rt.machine_spec(&s, &dir), Err(SandboxRuntimeError::InvalidSpec(_))));
    }

    #[test]
    fn environment_that_cannot_ride_the_kernel_command_line_is_refused() {
        let rt = runtime();
        let dir = VmDir::new("/tmp/fc/sbx_1");
        let mut s = spec();
        s.env = vec![("A".into(), "b=c".into())];
        let (machine, _) = rt.machine_spec(&s, &dir).expect("plain values pass");
        assert!(machine.boot_args.ends_with("--env A=b=c"), "{}", machine.boot_args);
        for bad in ["two words", "quo\"te", "new\nline"] {
            s.env = vec![("A".into(), bad.into())];
            assert!(matches!(rt.machine_spec(&s, &dir), Err(SandboxRuntimeError::InvalidSpec(_))), "{bad:?}");
        }
        s.env = vec![("A".into(), "x".repeat(3000))];
        assert!(matches!(rt.machine_spec(&s, &dir), Err(SandboxRuntimeError::InvalidSpec(_))));
    }

    #[test]
    fn long_guest_output_keeps_its_start_and_end_on_one_line() {
        assert_eq!(excerpt("short\ntext", 10, 10), "short | text");
        let long = format!("BOOT\n{}\nlast", "tick\n".repeat(500));
        let cut = excerpt(&long, 10, 10);
        assert!(cut.starts_with("BOOT | ") && cut.ends_with(" | last") && cut.contains(" … "), "{cut}");
        assert!(cut.chars().count() < 40);
    }

    #[test]
    fn mounts_and_layers_are_refused_plainly() {
        let rt = runtime();
        let dir = VmDir::new("/tmp/fc/sbx_1");
        let mut s = spec();
        s.mounts = vec![Mount { host_path: "/srv".into(), target: "/srv".into(), read_only: true }];
        assert!(matches!(rt.machine_spec(&s, &dir), Err(SandboxRuntimeError::NotSupported { .. })));
        let mut s = spec();
        s.layer_dir = Some("/tmp/layer".into());
        assert!(matches!(rt.machine_spec(&s, &dir), Err(SandboxRuntimeError::InvalidSpec(_))));
    }
}
