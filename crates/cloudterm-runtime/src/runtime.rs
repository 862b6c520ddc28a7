//! The `Runtime` trait: what every isolation backend (linux, firecracker, process) provides.
//!
//! A backend only starts a boundary with the agent inside and hands back how to reach that
//! agent; everything a sandbox *does* (exec, files, PTY, ports) goes through the agent, so a
//! new backend is one implementation of this trait plus its tests.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::select::RuntimeKind;

/// Resource limits of one sandbox. `None` means the runtime's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in MiB (RAM; swap is not granted beyond it).
    pub memory_mb: Option<u64>,
    /// CPU quota in cores (e.g. 0.5, 2).
    pub cpus: Option<f64>,
    /// Most processes and threads at once.
    pub pids: Option<u64>,
    /// Size limit of the writable layer and workspace in MiB, where the runtime enforces one.
    pub disk_mb: Option<u64>,
}

/// A host directory exposed inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute host path (already checked against the operator's allow-list).
    pub host_path: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
}

/// Everything a runtime needs to start a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// The sandbox id (`sbx_…`); also its hostname.
    pub id: String,
    /// Host directory holding the workspace; appears at `/workspace` inside. `None` starts the
    /// sandbox with an empty placeholder there, for a warm-pool entry whose workspace comes
    /// with [`Runtime::claim_workspace`] (runtimes that cannot claim refuse `None`).
    pub workspace_dir: Option<PathBuf>,
    /// Host directory the runtime owns for this sandbox (sockets, writable layer, config).
    /// Never visible inside the sandbox.
    pub state_dir: PathBuf,
    /// Root image directory; `None` means the runtime's default image.
    pub image: Option<PathBuf>,
    /// Environment for processes started in the sandbox (never contains the user's token).
    pub env: Vec<(String, String)>,
    /// Resource limits.
    pub limits: Limits,
    /// Host directories to expose at start.
    pub mounts: Vec<Mount>,
    /// A writable layer to start from (a snapshot's, unpacked): a directory on the same file
    /// system as `state_dir` with one top-level directory per [`LayerTree::name`] that
    /// [`Runtime::writable_layer`] reported for a sandbox of the same image. The runtime moves
    /// it into place before the sandbox's root is assembled (so the directory is consumed).
    /// Only for runtimes with [`layer_owners`](Runtime::layer_owners).
    pub layer_dir: Option<PathBuf>,
}

/// One host directory of a sandbox's writable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerTree {
    /// Its name in a snapshot (one path component), and the top-level directory
    /// [`SandboxSpec::layer_dir`] gives it back under.
    pub name: String,
    /// Where it is on the host now.
    pub path: PathBuf,
    /// Whether it is an overlayfs upper directory (whiteouts and opaque directories mean
    /// something) rather than a plain tree.
    pub overlay_upper: bool,
}

/// What a running sandbox changed outside `/workspace` (installed packages, `/etc`, home
/// directories), as host directories to read while the sandbox is frozen.
pub struct WritableLayer {
    /// The trees, in the order to read them.
    pub trees: Vec<LayerTree>,
    /// The host uid/gid of the sandbox's root, and how many ids its user namespace maps: the
    /// layer's files belong to those ids.
    pub owner_base: u32,
    /// How many ids are mapped from `owner_base`.
    pub owner_count: u32,
    /// Whatever keeps the paths valid until the layer is dropped (e.g. a detached mount of
    /// the root without the mounts on top of it).
    pub hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for WritableLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritableLayer")
            .field("trees", &self.trees)
            .field("owner_base", &self.owner_base)
            .field("owner_count", &self.owner_count)
            .finish_non_exhaustive()
    }
}

/// How the control plane reaches a sandbox's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// A Unix socket on the host, outside the sandbox's file system.
    Unix(PathBuf),
    /// Firecracker's hybrid vsock: connect to `uds`, send `CONNECT <port>\n`.
    Vsock {
        /// The host-side Unix socket of the VM's vsock device.
        uds: PathBuf,
        /// The guest port the agent listens on.
        port: u32,
    },
}

/// A started sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxHandle {
    /// Where its agent listens.
    pub agent: AgentEndpoint,
    /// The host pid of the sandbox's first process, where there is one.
    pub pid: Option<u32>,
}

/// A sandbox that ended on its own, not through [`Runtime::stop`] (its VM died, its agent
/// exited). The server then records it failed and stops it, which removes whatever the
/// runtime has not cleaned up itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxExit {
    /// The sandbox.
    pub id: String,
    /// What happened, for the log (exit status, the guest's last output).
    pub reason: String,
}

/// Resource use of a running sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// CPU time used so far, microseconds.
    pub cpu_usec: u64,
    /// Processes and threads now.
    pub pids: u64,
}

/// What a runtime operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SandboxRuntimeError {
    /// No such sandbox in this runtime (stopped, never started, or cleaned up).
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// The runtime does not offer this operation (e.g. pause on the process runtime).
    #[error("the {runtime} runtime does not support {operation}")]
    NotSupported {
        /// The runtime.
        runtime: RuntimeKind,
        /// What was asked.
        operation: &'static str,
    },
    /// The spec cannot be honoured (bad image, impossible limits).
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// Starting or talking to the boundary failed.
    #[error("runtime failure: {0}")]
    Failed(String),
}

/// An isolation backend.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> RuntimeKind;

    /// Starts a boundary with the agent inside and returns how to reach the agent. Returns
    /// once the agent accepts connections.
    async fn start(&self, spec: &SandboxSpec) -> Result<SandboxHandle, SandboxRuntimeError>;

    /// Finds a sandbox started earlier (by this or a previous server process) that still runs.
    async fn attach(&self, id: &str) -> Result<SandboxHandle, SandboxRuntimeError>;

    /// Stops the sandbox and removes everything it held on the host: processes, mounts,
    /// cgroups, network devices and its state directory. Stopping a sandbox that is not
    /// running succeeds (it cleans up whatever is left).
    async fn stop(&self, id: &str) -> Result<(), SandboxRuntimeError>;

    /// Current resource use.
    async fn usage(&self, id: &str) -> Result<Usage, SandboxRuntimeError>;

    /// Exposes a host directory inside a running sandbox.
    async fn mount(&self, id: &str, mount: &Mount) -> Result<(), SandboxRuntimeError>;

    /// Puts `workspace_dir` at `/workspace` of a running sandbox that was started ahead of
    /// demand (a warm-pool entry) and has run nothing but its agent. Only runtimes whose
    /// [`supports_claim`](Runtime::supports_claim) is true implement it.
    async fn claim_workspace(&self, _id: &str, _workspace_dir: &Path) -> Result<(), SandboxRuntimeError> {
        Err(SandboxRuntimeError::NotSupported { runtime: self.kind(), operation: "claim_workspace" })
    }

    /// Whether sandboxes can be started before they are asked for and handed a workspace later
    /// ([`claim_workspace`](Runtime::claim_workspace)): what a warm pool needs.
    fn supports_claim(&self) -> bool {
        false
    }

    /// The writable layer of a running sandbox, for a snapshot. `None` when the runtime keeps
    /// none apart from the workspace (the process runtime writes to the host directly).
    async fn writable_layer(&self, _id: &str) -> Result<Option<WritableLayer>, SandboxRuntimeError> {
        Ok(None)
    }

    /// Whether [`SandboxSpec::layer_dir`] is honoured (a sandbox can start from a snapshot's
    /// writable layer), and if so the host uid/gid range its files must be owned by: the
    /// first id and how many (what [`WritableLayer::owner_base`] reports for a running one).
    fn layer_owners(&self) -> Option<(u32, u32)> {
        None
    }

    /// Brings what the sandbox wrote under `/workspace` back to its host directory, for a
    /// reader on the host (a workspace snapshot). Runtimes whose sandboxes write the host
    /// directory itself (linux, process) have nothing to do; one that keeps the workspace on a
    /// disk of its own (firecracker) reads that disk into a fresh directory and swaps it in.
    /// Best called with the sandbox paused, so nothing changes while it is read.
    async fn sync_workspace(&self, _id: &str) -> Result<(), SandboxRuntimeError> {
        Ok(())
    }

    /// Whether a running sandbox works on its own copy of the workspace (the firecracker
    /// runtime's workspace disk) rather than on the host directory. Then a restore cannot reach
    /// it (a new directory swapped in at the workspace's path is not what it sees), so a restore
    /// into a workspace one of its sandboxes runs on is refused; and a snapshot need not freeze
    /// it, since it never writes the host directory and [`sync_workspace`](Runtime::sync_workspace)
    /// reads its copy with it paused.
    fn keeps_workspace_copy(&self) -> bool {
        false
    }

    /// Sandboxes that end on their own, reported as they end, so the server records them at
    /// once instead of finding out at the next call. `None` where the runtime does not watch
    /// its sandboxes. Every call gives a new subscriber; one that falls behind is told how many
    /// reports it missed.
    fn exits(&self) -> Option<tokio::sync::broadcast::Receiver<SandboxExit>> {
        None
    }

    /// Ids of every sandbox this runtime holds on this host, running or left over, so the
    /// server can reconcile them with the store after a restart.
    async fn list(&self) -> Result<Vec<String>, SandboxRuntimeError>;

    /// Freezes every process of the sandbox (cgroup freezer, VM pause).
    async fn pause(&self, _id: &str) -> Result<(), SandboxRuntimeError> {
        Err(SandboxRuntimeError::NotSupported { runtime: self.kind(), operation: "pause" })
    }

    /// Thaws a paused sandbox.
    async fn resume(&self, _id: &str) -> Result<(), SandboxRuntimeError> {
        Err(SandboxRuntimeError::NotSupported { runtime: self.kind(), operation: "resume" })
    }

    /// Whether this runtime gives sandboxes an outbound network it controls: one whose bytes
    /// [`egress`](Runtime::egress) counts and [`limit_egress`](Runtime::limit_egress) caps.
    /// False for sandboxes without any network, and for the process runtime, whose agent uses
    /// the host's network unchecked.
    fn has_network(&self) -> bool {
        false
    }

    /// Bytes the sandbox has sent out so far; `None` without a network this runtime controls.
    async fn egress(&self, _id: &str) -> Result<Option<u64>, SandboxRuntimeError> {
        Ok(None)
    }

    /// A cheap upper bound of [`egress`](Runtime::egress) (it may also count traffic the
    /// runtime refused), to decide whether an exact reading is worth taking; `None` without a
    /// network this runtime controls.
    async fn egress_upper_bound(&self, id: &str) -> Result<Option<u64>, SandboxRuntimeError> {
        self.egress(id).await
    }

    /// Caps the bytes the sandbox may send out (`None`: no cap). Past the cap its outbound
    /// traffic is refused; everything else keeps working. Does nothing without a network.
    async fn limit_egress(&self, _id: &str, _limit_bytes: Option<u64>) -> Result<(), SandboxRuntimeError> {
        Ok(())
    }
}
