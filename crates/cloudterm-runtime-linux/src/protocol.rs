//! The pipe protocol between [`LinuxRuntime`](crate::LinuxRuntime) and the helper: one JSON
//! object per line each way, one response per request, in order.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A host directory to expose inside a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountRequest {
    pub host_path: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything the helper needs to start one sandbox; limits already resolved to numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StartRequest {
    pub id: String,
    pub state_dir: PathBuf,
    /// `None`: an empty placeholder inside the runtime's record directory (warm pool).
    pub workspace_dir: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u64,
    pub mounts: Vec<MountRequest>,
    /// A snapshot's writable layer to move into place before the root is assembled (see
    /// `SandboxSpec::layer_dir`).
    #[serde(default)]
    pub layer_dir: Option<PathBuf>,
}

/// What the helper keeps about a sandbox beside libcontainer's state (`root_dir/<id>/record.json`),
/// so `stop` can clean up after a crash of the helper or the server, and the runtime can find
/// the sandbox's writable layer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub state_dir: PathBuf,
    pub userns: bool,
}

/// The name of the plain part of a default-image sandbox's writable layer: its root directory
/// without the mounts on top (`/root`, `/home`, `/opt`, `/var`…). Overlay parts are named after
/// their directory under `state_dir/layers/` (`usr`, `etc`; `root` for a configured image).
pub const ROOTFS_LAYER: &str = "rootfs";

/// A request to the helper.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HelperRequest {
    /// Create and start a container with the agent as its process.
    Start(StartRequest),
    /// Kill, delete and clean up everything of a sandbox (idempotent).
    Stop { id: String },
    /// Whether a sandbox runs, and where its agent listens.
    State { id: String },
    /// Resource use from the sandbox's cgroups.
    Usage { id: String },
    /// Freeze through the cgroup freezer.
    Pause { id: String },
    /// Thaw.
    Resume { id: String },
    /// Expose a host directory inside a running sandbox.
    Mount { id: String, mount: MountRequest },
    /// Mount the caller's workspace over `/workspace` of a pre-started sandbox that has run
    /// nothing but its agent (a warm-pool claim), without freezing it.
    ClaimWorkspace { id: String, workspace_dir: PathBuf },
    /// Ids under the root directory, running or left over.
    List,
    /// Create, start and delete a trivial container.
    Probe,
    /// Bytes the sandbox has sent out (its egress quota's count).
    Egress { id: String },
    /// Caps the bytes the sandbox may send out (`None`: no cap).
    LimitEgress { id: String, limit_bytes: Option<u64> },
}

/// Which `SandboxRuntimeError` a helper failure maps to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    NotRunning,
    InvalidSpec,
    NotSupported,
    Failed,
}

impl HelperRequest {
    /// Whether the request may take long (container creation or teardown). The runtime sends
    /// those to one helper and everything else to a second one, so a claim or a usage query
    /// never waits behind a sandbox being created.
    pub fn is_slow(&self) -> bool {
        matches!(self, HelperRequest::Start(_) | HelperRequest::Stop { .. } | HelperRequest::Probe)
    }
}

/// A response from the helper.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HelperResponse {
    Started {
        pid: u32,
        socket: PathBuf,
        userns: bool,
    },
    Done,
    State {
        running: bool,
        pid: Option<u32>,
        socket: Option<PathBuf>,
    },
    Usage {
        memory_bytes: u64,
        cpu_usec: u64,
        pids: u64,
    },
    List {
        ids: Vec<String>,
    },
    Probed {
        summary: String,
    },
    /// `bytes: None`: the sandbox has no network.
    Egress {
        bytes: Option<u64>,
    },
    Error {
        kind: FailureKind,
        message: String,
    },
}
