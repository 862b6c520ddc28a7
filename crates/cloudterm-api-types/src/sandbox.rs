//! Bodies of the Sandbox API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Resource limits of a sandbox. In a request, unset fields take the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxLimits {
    /// Memory limit, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU quota in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Most processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Disk limit, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// `POST /sandboxes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// A named image from the server's image directory; the default image when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// Environment of every process in the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Idle TTL in seconds (default 900): the sandbox stops after this long without use.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Option<SandboxLimits>,
    /// The workspace mounted at `/workspace`; the caller's home workspace when absent.
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Start from this snapshot (an extension of the seed API): its files are restored into
    /// the workspace (`workspace_id`, or the snapshot's own), and on the linux runtime the
    /// sandbox gets the snapshotted sandbox's writable layer back (installed packages,
    /// `/etc`, home directories) and the image it ran.
    #[serde(default)]
    pub snapshot_id: Option<String>,
}

/// A sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxResponse {
    /// `sbx_…`.
    pub id: String,
    /// `starting`, `running`, `paused`, `stopped` or `failed`.
    pub state: String,
    /// `linux`, `firecracker` or `process`.
    pub runtime: String,
    /// The workspace at `/workspace`.
    pub workspace_id: String,
    /// The image, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops if unused.
    pub expires_at: DateTime<Utc>,
    /// The idle TTL, seconds.
    pub timeout_seconds: u64,
    /// Effective limits.
    pub limits: SandboxLimits,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
    /// The caller's permission on it (through its workspace): `owner`, `admin`, `write` or
    /// `read`. Only in `GET /sandboxes?include_shared=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    /// Outbound traffic so far (an extension): only in `GET /sandboxes/{id}`, and only for a
    /// running sandbox that has a network (`sandboxes.network = "nat"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<SandboxEgress>,
}

/// What a sandbox has sent out of the host, against its owner's egress quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxEgress {
    /// Bytes sent so far (counting any refused once the limit was reached).
    pub bytes: u64,
    /// The limit in bytes (`quotas.egress_mb`); absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    /// The limit is reached: outbound traffic is refused; exec, files and terminals still work.
    pub cut: bool,
}

/// `GET /sandboxes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// The caller's sandboxes, oldest first; with `include_shared=true`, then the running
    /// sandboxes on workspaces shared with the caller.
    pub sandboxes: Vec<SandboxResponse>,
}

/// `POST /sandboxes/{id}/keepalive`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveRequest {
    /// New idle TTL in seconds, from now; the sandbox's own TTL when absent.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// Answer of keepalive.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeepaliveResponse {
    /// The new idle deadline.
    pub expires_at: DateTime<Utc>,
}

/// `POST /sandboxes/{id}/mount`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MountRequest {
    /// Host directory; must lie under the operator's allow-list (`CLOUDTERM_MOUNT_ALLOW`).
    pub host_path: String,
    /// Absolute path inside the sandbox.
    pub target: String,
    /// Read-only (the default).
    #[serde(default = "default_true")]
    pub read_only: bool,
}

fn default_true() -> bool {
    true
}

/// Answer of mount.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MountResponse {
    /// The resolved host directory.
    pub host_path: String,
    /// Where it appears inside.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
}

/// `POST /sandboxes/{id}/exec`: exactly one of `command` and `argv`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequestBody {
    /// A shell command, run by `/bin/sh -c`.
    #[serde(default)]
    pub command: Option<String>,
    /// Program and arguments, run directly.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Working directory (default `/workspace`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Text written to stdin, then closed.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Bytes written to stdin (base64), instead of `stdin`.
    #[serde(default)]
    pub stdin_base64: Option<String>,
    /// Kill the whole process tree after this many seconds (default 60, at most 3600).
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
}

/// The result of a buffered exec.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResponseBody {
    /// Exit status; 128 + N when signal N ended the process (as a shell reports it).
    pub exit_code: i32,
    /// Standard output (UTF-8; invalid bytes replaced). At most 1 MiB; see `stdout_truncated`.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// Wall time.
    pub duration_ms: u64,
    /// The timeout fired and the process tree was killed.
    pub timed_out: bool,
    /// Standard output went past the cap; the rest was discarded.
    pub stdout_truncated: bool,
    /// Standard error went past the cap.
    pub stderr_truncated: bool,
}

/// `POST /sandboxes/{id}/files` (JSON): exactly one of `content` and `content_base64`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileRequest {
    /// Absolute (`/workspace/a.txt`) or relative to `/workspace`.
    pub path: String,
    /// UTF-8 content.
    #[serde(default)]
    pub content: Option<String>,
    /// Binary content, base64.
    #[serde(default)]
    pub content_base64: Option<String>,
    /// Permission bits, e.g. 493 (0o755); default 0o644.
    #[serde(default)]
    pub mode: Option<u32>,
}

/// Answer of a file write.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileWritten {
    /// The absolute path written.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// One directory entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Name within the directory.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub file_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification.
    pub modified_at: String,
}

/// `GET /sandboxes/{id}/files?path=DIR`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    /// The absolute directory.
    pub path: String,
    /// Its entries, by name.
    pub entries: Vec<FileEntry>,
}

/// `POST /sandboxes/{id}/background`: exactly one of `command` and `argv`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackgroundRequest {
    /// A shell command.
    #[serde(default)]
    pub command: Option<String>,
    /// Program and arguments.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A background job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobResponse {
    /// `job_…`.
    pub job_id: String,
    /// The command.
    pub command: String,
    /// `running`, `exited` or `stopped`.
    pub state: String,
    /// Exit status once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Start time.
    pub started_at: String,
    /// End time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
}

/// `GET /sandboxes/{id}/background`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    /// Jobs, oldest first.
    pub jobs: Vec<JobResponse>,
}
