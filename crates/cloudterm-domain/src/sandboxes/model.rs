//! The sandbox as the domain sees it, and the inputs its operations take.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudterm_runtime::Limits;

/// Lifecycle states, as stored and shown.
pub mod state {
    /// The runtime is starting the boundary and the agent.
    pub const STARTING: &str = "starting";
    /// The agent answers; the sandbox takes work.
    pub const RUNNING: &str = "running";
    /// Frozen by `POST /sandboxes/{id}/pause`: holds its memory and files, runs nothing, and
    /// resumes on the next operation that reaches it (or `/resume`).
    pub const PAUSED: &str = "paused";
    /// Stopped: deleted by its idle TTL, or found dead after a restart.
    pub const STOPPED: &str = "stopped";
    /// Could not be started, or ended on its own while it ran (its VM died, its agent exited).
    pub const FAILED: &str = "failed";
}

/// A sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// `sbx_…`.
    pub id: String,
    /// The principal that created it.
    pub owner: String,
    /// See [`state`].
    pub state: String,
    /// The runtime holding it (`linux`, `process`…).
    pub runtime: String,
    /// The workspace mounted at `/workspace`.
    pub workspace_id: String,
    /// The image, when not the default.
    pub image: Option<String>,
    /// Effective limits.
    pub limits: Limits,
    /// The idle TTL in seconds.
    pub timeout_seconds: u64,
    /// Free-form labels from the creator.
    pub metadata: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops if nothing uses it.
    pub expires_at: DateTime<Utc>,
}

/// What `POST /sandboxes` asks for; every field optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateSandbox {
    /// Image name or directory; `None` is the runtime's default.
    pub image: Option<String>,
    /// Environment of every process in the sandbox.
    pub env: BTreeMap<String, String>,
    /// Idle TTL in seconds.
    pub timeout_seconds: Option<u64>,
    /// Requested limits; unset ones take the defaults.
    pub limits: Limits,
    /// The workspace to mount; the caller's home workspace when `None`.
    pub workspace_id: Option<String>,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
}

/// Operator settings of the sandbox service.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Root of the workspace directories (`DATA_DIR/workspaces`).
    pub workspaces_dir: PathBuf,
    /// Root of the per-sandbox runtime state (`DATA_DIR/sandboxes`).
    pub state_dir: PathBuf,
    /// Idle TTL when the request names none.
    pub default_timeout_seconds: u64,
    /// Longest idle TTL a request may ask for.
    pub max_timeout_seconds: u64,
    /// Limits when the request names none.
    pub default_limits: Limits,
    /// The largest limits a request may ask for.
    pub max_limits: Limits,
    /// Quotas: running sandboxes per principal, execs per sandbox and hour, with
    /// per-principal overrides.
    pub quotas: crate::quotas::QuotaPolicy,
    /// Host directories that `mount` may expose (canonical paths).
    pub mount_allow: Vec<PathBuf>,
    /// Directories holding named images (`image: "name"` → `<dir>/name`).
    pub images_dir: Option<PathBuf>,
    /// Sandboxes kept started ahead of demand (default image, limits and environment), where
    /// the runtime supports it; 0 turns the warm pool off.
    pub warm_pool: usize,
    /// When set, an idle sandbox is first paused (frozen, resumed by the next operation) and
    /// only snapshotted and stopped after staying paused this long; `None` stops it at once.
    /// Runtimes that cannot pause stop it at once either way.
    pub idle_pause: Option<Duration>,
    /// Where workspaces' files live: size-limited volumes (enforced) or plain directories.
    pub volumes: std::sync::Arc<cloudterm_volumes::Volumes>,
}
