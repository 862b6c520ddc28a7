//! The contract between the cloudterm control plane and the in-sandbox agent.
//!
//! The agent speaks HTTP/1.1 over one byte stream (a Unix socket, or vsock in a microVM). This
//! crate names every endpoint ([`ENDPOINTS`]), the JSON bodies ([`types`]), the exec event
//! stream ([`ExecEvent`]), the PTY frame format ([`frame`]) and the query-string encoding
//! ([`query`]). It depends on `serde` only, so both the agent (a small static binary) and the
//! host client build against the same definitions. `docs/agent-protocol.md` documents it; a
//! test fails when an endpoint here is missing from that document, and the agent's tests fail
//! when it serves anything not declared here.

pub mod frame;
pub mod query;
pub mod types;

pub use types::*;

/// Version of this protocol. Bumped on every behaviour change; the host refuses agents whose
/// version is outside [`MIN_PROTOCOL_VERSION`]`..=`[`PROTOCOL_VERSION`].
pub const PROTOCOL_VERSION: u32 = 2;

/// Oldest agent protocol version this host side still talks to.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// `GET`: agent and protocol version, hostname, pid, workspace.
pub const PATH_INFO: &str = "/v1/info";
/// `POST`: run a command to completion (buffered JSON or streamed NDJSON).
pub const PATH_EXEC: &str = "/v1/exec";
/// `GET` (download, raw) and `PUT` (upload, raw) one file.
pub const PATH_FILES: &str = "/v1/files";
/// `GET`: list a directory.
pub const PATH_FILES_LIST: &str = "/v1/files/list";
/// `GET`: stat one path.
pub const PATH_FILES_STAT: &str = "/v1/files/stat";
/// `POST`: create a directory.
pub const PATH_FILES_MKDIR: &str = "/v1/files/mkdir";
/// `POST`: remove a file or directory.
pub const PATH_FILES_REMOVE: &str = "/v1/files/remove";
/// `POST`: rename a path.
pub const PATH_FILES_RENAME: &str = "/v1/files/rename";
/// `POST` (start) and `GET` (list) background jobs.
pub const PATH_JOBS: &str = "/v1/jobs";
/// `DELETE`: stop a job. Template; `{id}` is the job id.
pub const PATH_JOB: &str = "/v1/jobs/{id}";
/// `GET`: a job's combined output. Template; `{id}` is the job id.
pub const PATH_JOB_LOGS: &str = "/v1/jobs/{id}/logs";
/// `GET` with `Upgrade: cloudterm-pty`: an interactive terminal.
pub const PATH_PTY: &str = "/v1/pty";
/// `GET` with `Upgrade: cloudterm-tcp`: a byte pipe to `127.0.0.1:port` inside the sandbox
/// (`cloudterm-tcp-fd`: the connected socket itself, handed to the host).
pub const PATH_CONNECT: &str = "/v1/connect";
/// `POST`: SIGSTOP every process group the agent started.
pub const PATH_FREEZE: &str = "/v1/freeze";
/// `POST`: SIGCONT every process group the agent started.
pub const PATH_THAW: &str = "/v1/thaw";
/// `POST`: `sync(2)`, before a snapshot.
pub const PATH_SYNC: &str = "/v1/sync";

/// Every `(method, path)` the agent serves. Paths are templates: a `{name}` segment matches
/// one non-empty path segment. Every endpoint is host-only: the channel to the agent exists
/// only on the host side (an inherited fd or a host socket), never inside the sandbox.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", PATH_INFO),
    ("POST", PATH_EXEC),
    ("GET", PATH_FILES),
    ("PUT", PATH_FILES),
    ("GET", PATH_FILES_LIST),
    ("GET", PATH_FILES_STAT),
    ("POST", PATH_FILES_MKDIR),
    ("POST", PATH_FILES_REMOVE),
    ("POST", PATH_FILES_RENAME),
    ("POST", PATH_JOBS),
    ("GET", PATH_JOBS),
    ("DELETE", PATH_JOB),
    ("GET", PATH_JOB_LOGS),
    ("GET", PATH_PTY),
    ("GET", PATH_CONNECT),
    ("POST", PATH_FREEZE),
    ("POST", PATH_THAW),
    ("POST", PATH_SYNC),
];

/// `Upgrade` token of the PTY stream.
pub const UPGRADE_PTY: &str = "cloudterm-pty";
/// `Upgrade` token of the TCP port stream.
pub const UPGRADE_TCP: &str = "cloudterm-tcp";
/// `Upgrade` token asking the agent to hand over the connected TCP socket itself (protocol 2,
/// Unix-socket channels only): after the `101` the host sends one byte, and the agent answers
/// with one byte carrying the socket's descriptor (`SCM_RIGHTS`).
pub const UPGRADE_TCP_FD: &str = "cloudterm-tcp-fd";
/// Content type of a streamed exec (one JSON [`ExecEvent`] per line).
pub const CONTENT_TYPE_NDJSON: &str = "application/x-ndjson";
/// Response header of `GET /v1/jobs/{id}/logs`: the logical offset of the first byte sent
/// (larger than the requested offset when older output was already rotated away).
pub const HEADER_LOG_OFFSET: &str = "x-cloudterm-log-offset";
/// Default cap of buffered exec output per stream, bytes.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// Largest cap a request may ask for, bytes.
pub const MAX_MAX_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;
/// Default grace between SIGTERM and SIGKILL when a job is stopped, milliseconds.
pub const DEFAULT_STOP_GRACE_MS: u64 = 5000;

/// Whether the template `pattern` (segments like `{id}` match any one non-empty segment)
/// matches `path`; returns the captured segment values in order.
pub fn match_path(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    let mut captures = Vec::new();
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return Some(captures),
            (Some(p), Some(g)) if p.starts_with('{') && p.ends_with('}') => {
                if g.is_empty() {
                    return None;
                }
                captures.push(g.to_owned());
            }
            (Some(p), Some(g)) if p == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests;
