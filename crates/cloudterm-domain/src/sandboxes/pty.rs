//! Interactive terminals: a PTY inside a running sandbox, opened through its agent.
//!
//! The caller first gets an [`ActivityGuard`] from `SandboxService::use_running` (which is the
//! access check: `read` on the sandbox's workspace to watch, `write` to type; a non-member gets
//! "not found"), so a terminal session can check access when a viewer attaches and open the PTY
//! only when no session of that name runs yet.

use cloudterm_runtime::UpgradedStream;

use crate::error::DomainError;
use crate::sandboxes::live::ActivityGuard;
use crate::sandboxes::ops::{agent_error, Busy};

/// Opens the sandbox's login shell on a PTY of `cols` × `rows`: the agent's framed stream
/// (`GET /v1/pty`), with the guard that keeps the sandbox busy for as long as it is held.
/// Closing the stream kills the shell's process tree.
pub async fn open_terminal(guard: ActivityGuard, cols: u16, rows: u16) -> Result<Busy<UpgradedStream>, DomainError> {
    let value = guard.sandbox().agent.pty(cols, rows, &[]).await.map_err(agent_error)?;
    Ok(Busy { guard, value })
}
