//! What runs inside a sandbox: exec, files and background jobs, forwarded to its agent.
//!
//! Each call holds the sandbox busy (its idle clock cannot fire) for as long as it runs;
//! streamed answers carry the guard with them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudterm_agent_protocol::{ExecRequest, FileInfo, JobInfo, JobRequest, ListResponse, WriteFileResponse};
use cloudterm_runtime::{AgentError, ByteStream, ExecResult, ExecStream, JobLogs};

use crate::access::Access;
use crate::error::DomainError;
use crate::principal::Principal;
use crate::quotas::QuotaStatus;
use crate::sandboxes::live::ActivityGuard;
use crate::sandboxes::service::SandboxService;

/// Default exec timeout when the request names none.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest exec timeout a request may ask for.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);

/// A streamed answer together with the guard that keeps its sandbox busy.
pub struct Busy<T> {
    /// Keeps the sandbox from idling out while the stream runs.
    pub guard: ActivityGuard,
    /// The stream.
    pub value: T,
}

/// Seconds a client is told to wait after a write failed for lack of space: nothing frees
/// space by itself, so this is a pause for deleting files (or asking for a bigger quota).
pub const STORAGE_RETRY_AFTER_SECONDS: u64 = 60;

/// The refusal of a write that did not fit in the workspace.
pub fn storage_exceeded(detail: &str) -> DomainError {
    DomainError::QuotaExceeded {
        kind: "storage",
        message: format!("the workspace is out of storage: {detail}"),
        retry_after_seconds: STORAGE_RETRY_AFTER_SECONDS,
    }
}

/// Maps what the agent said to the domain: its 4xx answers keep their meaning, and a write
/// the workspace's file system refused for lack of space (`ENOSPC`/`EDQUOT`, the agent's
/// `no_space`) is the storage quota.
pub fn agent_error(err: AgentError) -> DomainError {
    match err {
        AgentError::Remote { code, message, .. } if code == "no_space" => storage_exceeded(&message),
        AgentError::Remote { status: 404, message, .. } => DomainError::NotFound(message),
        AgentError::Remote { status: 409, message, .. } => DomainError::Conflict(message),
        AgentError::Remote { status, message, .. } if (400..500).contains(&status) => {
            DomainError::InvalidInput(message)
        }
        AgentError::Remote { message, .. } => DomainError::Unavailable(format!("sandbox agent failed: {message}")),
        AgentError::Unreachable(why) => DomainError::Unavailable(format!("sandbox agent unreachable: {why}")),
        AgentError::Protocol(why) => DomainError::Internal(format!("sandbox agent protocol: {why}")),
    }
}

/// Checks an exec or job request: exactly one of `command` and `argv`, a bounded timeout.
pub fn check_command(command: &Option<String>, argv: &Option<Vec<String>>) -> Result<(), DomainError> {
    match (command, argv) {
        (Some(command), None) if !command.trim().is_empty() => Ok(()),
        (None, Some(argv)) if !argv.is_empty() && !argv[0].is_empty() => Ok(()),
        (Some(_), Some(_)) => Err(DomainError::InvalidInput("give either command or argv, not both".into())),
        _ => Err(DomainError::InvalidInput("a non-empty command or argv is required".into())),
    }
}

/// The timeout to pass to the agent, in milliseconds.
pub fn exec_timeout(seconds: Option<f64>) -> Result<u64, DomainError> {
    let timeout = match seconds {
        None => DEFAULT_EXEC_TIMEOUT,
        Some(s) if !s.is_finite() || s <= 0.0 => {
            return Err(DomainError::InvalidInput(format!("timeout_seconds must be positive, got {s}")))
        }
        Some(s) if s > MAX_EXEC_TIMEOUT.as_secs_f64() => {
            return Err(DomainError::InvalidInput(format!(
                "timeout_seconds must be at most {}, got {s}",
                MAX_EXEC_TIMEOUT.as_secs()
            )))
        }
        Some(s) => Duration::from_secs_f64(s),
    };
    Ok(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
}

impl SandboxService {
    /// Counts one command (exec or background job) against the sandbox's exec-rate quota, or
    /// refuses it with the time until the oldest exec leaves the hour.
    fn admit_exec(&self, caller: &Principal, guard: &ActivityGuard) -> Result<(), DomainError> {
        let Some(limit) = self.limits_for(caller.id()).exec_per_hour else { return Ok(()) };
        guard.sandbox().execs.admit(limit, Instant::now()).map(|_| ()).map_err(|wait| DomainError::QuotaExceeded {
            kind: "exec_rate",
            message: format!("{limit} commands per hour is this sandbox's limit"),
            retry_after_seconds: wait.as_secs().max(1),
        })
    }

    /// The exec-rate use of a running sandbox under the caller's limit, for `X-Quota-Warning`
    /// after a command the caller was allowed to run there; `None` when the rate is unlimited
    /// or the sandbox is not running.
    pub fn exec_quota(&self, caller: &Principal, id: &str) -> Option<QuotaStatus> {
        let limit = self.limits_for(caller.id()).exec_per_hour?;
        let live = self.live_sandbox(id)?;
        Some(QuotaStatus { kind: "exec_rate", used: live.execs.used(Instant::now()), limit })
    }

    /// Runs a command to completion and returns its output (capped).
    pub async fn exec(&self, caller: &Principal, id: &str, request: ExecRequest) -> Result<ExecResult, DomainError> {
        check_command(&request.command, &request.argv)?;
        let guard = self.use_running(caller, id, Access::Write).await?;
        self.admit_exec(caller, &guard)?;
        guard.sandbox().agent.exec(&request).await.map_err(agent_error)
    }

    /// Runs a command and streams its output; dropping the stream kills the command.
    pub async fn exec_stream(
        &self,
        caller: &Principal,
        id: &str,
        request: ExecRequest,
    ) -> Result<Busy<ExecStream>, DomainError> {
        check_command(&request.command, &request.argv)?;
        let guard = self.use_running(caller, id, Access::Write).await?;
        self.admit_exec(caller, &guard)?;
        let value = guard.sandbox().agent.exec_stream(&request).await.map_err(agent_error)?;
        Ok(Busy { guard, value })
    }

    /// Writes a whole file from memory.
    pub async fn write_file(
        &self,
        caller: &Principal,
        id: &str,
        path: &str,
        mode: Option<u32>,
        data: Bytes,
    ) -> Result<WriteFileResponse, DomainError> {
        check_path(path)?;
        check_mode(mode)?;
        let guard = self.use_running(caller, id, Access::Write).await?;
        guard.sandbox().agent.write_file_bytes(path, mode, data).await.map_err(agent_error)
    }

    /// Streams a request body into a file without holding it in memory.
    pub async fn write_file_stream<B>(
        &self,
        caller: &Principal,
        id: &str,
        path: &str,
        mode: Option<u32>,
        body: B,
    ) -> Result<WriteFileResponse, DomainError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        check_path(path)?;
        check_mode(mode)?;
        let guard = self.use_running(caller, id, Access::Write).await?;
        guard.sandbox().agent.write_file(path, mode, body).await.map_err(agent_error)
    }

    /// Streams a file out.
    pub async fn read_file(&self, caller: &Principal, id: &str, path: &str) -> Result<Busy<ByteStream>, DomainError> {
        check_path(path)?;
        let guard = self.use_running(caller, id, Access::Read).await?;
        let value = guard.sandbox().agent.read_file(path).await.map_err(agent_error)?;
        Ok(Busy { guard, value })
    }

    /// Lists a directory.
    pub async fn list_files(&self, caller: &Principal, id: &str, path: &str) -> Result<ListResponse, DomainError> {
        check_path(path)?;
        let guard = self.use_running(caller, id, Access::Read).await?;
        guard.sandbox().agent.list(path).await.map_err(agent_error)
    }

    /// Metadata of one path.
    pub async fn stat_file(&self, caller: &Principal, id: &str, path: &str) -> Result<FileInfo, DomainError> {
        check_path(path)?;
        let guard = self.use_running(caller, id, Access::Read).await?;
        guard.sandbox().agent.stat(path).await.map_err(agent_error)
    }

    /// Starts a background job; its output is kept by the agent beyond this request.
    pub async fn start_job(&self, caller: &Principal, id: &str, request: JobRequest) -> Result<JobInfo, DomainError> {
        check_command(&request.command, &request.argv)?;
        let guard = self.use_running(caller, id, Access::Write).await?;
        self.admit_exec(caller, &guard)?;
        guard.sandbox().agent.start_job(&request).await.map_err(agent_error)
    }

    /// The sandbox's background jobs.
    pub async fn list_jobs(&self, caller: &Principal, id: &str) -> Result<Vec<JobInfo>, DomainError> {
        let guard = self.use_running(caller, id, Access::Read).await?;
        guard.sandbox().agent.list_jobs().await.map_err(agent_error)
    }

    /// A job's output so far, or followed until it exits.
    pub async fn job_logs(
        &self,
        caller: &Principal,
        id: &str,
        job_id: &str,
        follow: bool,
        offset: u64,
    ) -> Result<Busy<JobLogs>, DomainError> {
        check_job_id(job_id)?;
        let guard = self.use_running(caller, id, Access::Read).await?;
        let value = guard.sandbox().agent.job_logs(job_id, follow, offset).await.map_err(agent_error)?;
        Ok(Busy { guard, value })
    }

    /// Stops a job: SIGTERM, then SIGKILL after the agent's grace period.
    pub async fn stop_job(&self, caller: &Principal, id: &str, job_id: &str) -> Result<JobInfo, DomainError> {
        check_job_id(job_id)?;
        let guard = self.use_running(caller, id, Access::Write).await?;
        guard.sandbox().agent.stop_job(job_id, None).await.map_err(agent_error)
    }
}

fn check_path(path: &str) -> Result<(), DomainError> {
    if path.is_empty() || path.contains('\0') || path.len() > 4096 {
        return Err(DomainError::InvalidInput("path must be non-empty, without NUL, at most 4096 bytes".into()));
    }
    Ok(())
}

fn check_mode(mode: Option<u32>) -> Result<(), DomainError> {
    match mode {
        Some(mode) if mode > 0o7777 => Err(DomainError::InvalidInput(format!("mode {mode:o} has bits beyond 0o7777"))),
        _ => Ok(()),
    }
}

fn check_job_id(job_id: &str) -> Result<(), DomainError> {
    if job_id.starts_with("job_") && job_id.len() <= 64 && job_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(DomainError::NotFound(format!("job {job_id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_of_command_and_argv() {
        assert!(check_command(&Some("ls".into()), &None).is_ok());
        assert!(check_command(&None, &Some(vec!["ls".into()])).is_ok());
        assert!(check_command(&None, &None).is_err());
        assert!(check_command(&Some("  ".into()), &None).is_err());
        assert!(check_command(&None, &Some(vec![])).is_err());
        assert!(check_command(&Some("ls".into()), &Some(vec!["ls".into()])).is_err());
    }

    #[test]
    fn exec_timeouts_are_bounded() {
        assert_eq!(exec_timeout(None).ok(), Some(60_000));
        assert_eq!(exec_timeout(Some(0.5)).ok(), Some(500));
        for bad in [0.0, -1.0, f64::INFINITY, f64::NAN, 3601.0] {
            assert!(exec_timeout(Some(bad)).is_err(), "{bad}");
        }
    }
}
