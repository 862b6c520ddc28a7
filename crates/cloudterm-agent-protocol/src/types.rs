//! JSON request and response bodies of the agent's endpoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Error body of every non-2xx answer: `{code, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code (`not_found`, `bad_path`, `is_a_directory`, ...).
    pub code: String,
    /// Human sentence.
    pub message: String,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResponse {
    /// The agent's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The agent binary's version.
    pub agent_version: String,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// The agent's pid (in its own pid namespace).
    pub pid: u32,
    /// The workspace root (relative paths resolve against it; the default cwd and `$HOME`).
    pub workspace: String,
}

/// `POST /v1/exec`. Exactly one of `argv` and `command` must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments, run directly (looked up in `PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A shell command, run as `/bin/sh -c command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Working directory (absolute, or relative to the workspace); default the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment, applied over the sandbox's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Bytes written to the command's stdin, then stdin is closed. Absent: `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    /// Kill the whole process tree after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Cap of buffered output per stream (default [`crate::DEFAULT_MAX_OUTPUT_BYTES`], at most
    /// [`crate::MAX_MAX_OUTPUT_BYTES`]). Output past it is read and discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

/// Buffered answer of `POST /v1/exec`. Output is base64 so binary output survives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Exit status; `None` when a signal ended the process.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    /// Standard output, base64 (at most the cap).
    pub stdout_base64: String,
    /// Standard error, base64 (at most the cap).
    pub stderr_base64: String,
    /// Standard output exceeded the cap; the rest was discarded.
    pub stdout_truncated: bool,
    /// Standard error exceeded the cap; the rest was discarded.
    pub stderr_truncated: bool,
    /// Wall time from spawn to exit.
    pub duration_ms: u64,
    /// The timeout fired and the process tree was killed.
    pub timed_out: bool,
}

/// One line of a streamed exec (`Accept: application/x-ndjson`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// Bytes from standard output, base64.
    Stdout {
        /// Base64 bytes.
        data: String,
    },
    /// Bytes from standard error, base64.
    Stderr {
        /// Base64 bytes.
        data: String,
    },
    /// The last event.
    Exit {
        /// Exit status; `None` when a signal ended the process.
        exit_code: Option<i32>,
        /// The signal that ended the process.
        signal: Option<i32>,
        /// The timeout fired.
        timed_out: bool,
        /// Wall time from spawn to exit.
        duration_ms: u64,
    },
    /// The agent failed while streaming (the process tree was killed).
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// One file's metadata (`GET /v1/files/stat`, and entries of a listing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Last path component.
    pub name: String,
    /// The resolved absolute path.
    pub path: String,
    /// Kind (symbolic links are reported as such, not followed).
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Last modification, RFC 3339 UTC.
    pub modified_at: String,
}

/// `GET /v1/files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    /// The resolved absolute directory path.
    pub path: String,
    /// Entries sorted by name.
    pub entries: Vec<FileInfo>,
}

/// `PUT /v1/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFileResponse {
    /// The resolved absolute path written.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// `POST /v1/files/mkdir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    /// Directory to create.
    pub path: String,
    /// Create missing parents; an existing directory is then not an error.
    #[serde(default)]
    pub parents: bool,
}

/// `POST /v1/files/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// Path to remove (a symbolic link is removed, not its target).
    pub path: String,
    /// Remove a non-empty directory with its contents.
    #[serde(default)]
    pub recursive: bool,
}

/// `POST /v1/files/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    /// Existing path.
    pub from: String,
    /// New path (replaced if it is a file).
    pub to: String,
}

/// Answer of mkdir, remove and rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathResponse {
    /// The resolved absolute path acted on (for rename: the new path).
    pub path: String,
}

/// `POST /v1/jobs`. Exactly one of `argv` and `command`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Program and arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A shell command (`/bin/sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Working directory; default the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// State of a background job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Still running.
    Running,
    /// Ended on its own.
    Exited,
    /// Ended by `DELETE /v1/jobs/{id}`.
    Stopped,
}

/// A background job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// `job_…` id.
    pub job_id: String,
    /// The command as given (`command`, or `argv` joined by spaces).
    pub command: String,
    /// State.
    pub state: JobState,
    /// Exit status once ended (`None` if a signal ended it).
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC.
    pub ended_at: Option<String>,
    /// Bytes of output produced so far (logical log size).
    pub log_bytes: u64,
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    /// Every job the agent started, oldest first.
    pub jobs: Vec<JobInfo>,
}

/// A PTY resize frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyResize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// A PTY exit frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyExit {
    /// Exit status, or 128 + signal number when a signal ended the program.
    pub code: i32,
}

/// Answer of freeze and thaw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuiesceResponse {
    /// Processes signalled.
    pub processes: u32,
}
