//! The `process` runtime: the agent as a plain child process in the workspace directory.
//!
//! It exists for machines where namespaces are unavailable (a laptop, a locked-down container)
//! and it DOES NOT ISOLATE: code in such a sandbox runs with the server's user and sees the
//! host. Selection logs that loudly. Stopping kills the agent and every process descended from
//! it that can still be found through `/proc`; a process that detached itself from the tree
//! (double fork) can escape, which is one more reason this runtime is only a fallback.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::runtime::{
    AgentEndpoint, Mount, Runtime, SandboxExit, SandboxHandle, SandboxRuntimeError, SandboxSpec, Usage,
};
use crate::select::RuntimeKind;

/// Longest wait for a new agent to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent gets to stop its processes after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Settings of the process runtime.
#[derive(Debug, Clone)]
pub struct ProcessRuntimeConfig {
    /// The `cloudterm-agent` binary.
    pub agent_binary: PathBuf,
    /// Host directory holding one state directory per sandbox (`<root>/<id>/`).
    pub root_dir: PathBuf,
}

/// Sandboxes as plain processes.
pub struct ProcessRuntime {
    config: ProcessRuntimeConfig,
    /// Agents started by this process that exit after their start (not re-attached ones).
    exits: tokio::sync::broadcast::Sender<SandboxExit>,
}

impl ProcessRuntime {
    /// A runtime that starts `config.agent_binary`.
    pub fn new(config: ProcessRuntimeConfig) -> Self {
        ProcessRuntime { config, exits: tokio::sync::broadcast::channel(256).0 }
    }

    fn state_dir(&self, id: &str) -> Result<PathBuf, SandboxRuntimeError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(SandboxRuntimeError::InvalidSpec(format!("invalid sandbox id {id:?}")));
        }
        Ok(self.config.root_dir.join(id))
    }
}

fn failed(what: &str, err: impl std::fmt::Display) -> SandboxRuntimeError {
    SandboxRuntimeError::Failed(format!("{what}: {err}"))
}

fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.sock")
}

fn pid_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.pid")
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<SandboxHandle, SandboxRuntimeError> {
        if spec.image.is_some() {
            return Err(SandboxRuntimeError::InvalidSpec("the process runtime cannot use an image".into()));
        }
        if !spec.mounts.is_empty() {
            return Err(SandboxRuntimeError::NotSupported { runtime: RuntimeKind::Process, operation: "mounts" });
        }
        let Some(workspace_dir) = &spec.workspace_dir else {
            return Err(SandboxRuntimeError::NotSupported { runtime: RuntimeKind::Process, operation: "warm pool" });
        };
        let state_dir = self.state_dir(&spec.id)?;
        tokio::fs::create_dir_all(&state_dir).await.map_err(|err| failed("cannot create the state dir", err))?;
        tokio::fs::create_dir_all(workspace_dir).await.map_err(|err| failed("cannot create the workspace", err))?;
        let socket = socket_path(&state_dir);
        let log = std::fs::File::create(state_dir.join("agent.log"))
            .map_err(|err| failed("cannot create the agent log", err))?;
        let log_err = log.try_clone().map_err(|err| failed("cannot open the agent log", err))?;

        let mut command = tokio::process::Command::new(&self.config.agent_binary);
        command
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--workspace")
            .arg(workspace_dir)
            .arg("--state-dir")
            .arg(state_dir.join("agent"))
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(workspace_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C meant for the server does not reach sandboxes,
            // and they outlive a server restart (which re-attaches to them).
            .process_group(0)
            .kill_on_drop(false);
        for (name, value) in &spec.env {
            command.arg("--env").arg(format!("{name}={value}"));
        }
        let mut child = command
            .spawn()
            .map_err(|err| failed(&format!("cannot start {}", self.config.agent_binary.display()), err))?;
        let pid = child.id().ok_or_else(|| failed("the agent exited at once", "no pid"))?;
        tokio::fs::write(pid_path(&state_dir), pid.to_string())
            .await
            .map_err(|err| failed("cannot write the pid file", err))?;
        // Reap the agent when it exits, so no zombie is left while this server runs. Once
        // `start` has returned (the receiver is gone), an exit is the sandbox ending.
        let (exited_tx, mut exited_rx) = tokio::sync::oneshot::channel();
        let (exits, id) = (self.exits.clone(), spec.id.clone());
        tokio::spawn(async move {
            let status = child.wait().await;
            let reason = match &status {
                Ok(status) => format!("the agent exited ({status})"),
                Err(err) => format!("the agent is gone ({err})"),
            };
            if exited_tx.send(status).is_err() {
                let _ = exits.send(SandboxExit { id, reason });
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                return Ok(SandboxHandle { agent: AgentEndpoint::Unix(socket), pid: Some(pid) });
            }
            if let Ok(status) = exited_rx.try_recv() {
                let tail = tokio::fs::read_to_string(state_dir.join("agent.log")).await.unwrap_or_default();
                let _ = self.stop(&spec.id).await;
                return Err(failed("the agent exited during start-up", format!("{status:?}: {}", tail.trim())));
            }
            if Instant::now() > deadline {
                let _ = self.stop(&spec.id).await;
                return Err(failed("the agent did not listen in time", format!("{} s", START_TIMEOUT.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn exits(&self) -> Option<tokio::sync::broadcast::Receiver<SandboxExit>> {
        Some(self.exits.subscribe())
    }

    async fn attach(&self, id: &str) -> Result<SandboxHandle, SandboxRuntimeError> {
        let state_dir = self.state_dir(id)?;
        let pid = read_pid(&state_dir).ok_or_else(|| SandboxRuntimeError::NotRunning(id.to_string()))?;
        let socket = socket_path(&state_dir);
        if !is_our_agent(pid, &socket) || tokio::net::UnixStream::connect(&socket).await.is_err() {
            return Err(SandboxRuntimeError::NotRunning(id.to_string()));
        }
        Ok(SandboxHandle { agent: AgentEndpoint::Unix(socket), pid: Some(pid) })
    }

    async fn stop(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        let state_dir = self.state_dir(id)?;
        if let Some(pid) = read_pid(&state_dir).filter(|pid| is_our_agent(*pid, &socket_path(&state_dir))) {
            let tree = descendants(pid);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while process_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Whatever the agent did not stop (and anything started since), killed outright.
            let mut all: HashSet<u32> = tree;
            all.extend(descendants(pid));
            all.insert(pid);
            for process in all {
                let _ = kill(Pid::from_raw(process as i32), Signal::SIGKILL);
            }
        }
        match tokio::fs::remove_dir_all(&state_dir).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(failed("cannot remove the state dir", err)),
        }
    }

    async fn usage(&self, id: &str) -> Result<Usage, SandboxRuntimeError> {
        let state_dir = self.state_dir(id)?;
        let pid = read_pid(&state_dir).ok_or_else(|| SandboxRuntimeError::NotRunning(id.to_string()))?;
        let mut usage = Usage::default();
        let mut tree = descendants(pid);
        tree.insert(pid);
        for process in tree {
            if let Some((rss, cpu)) = process_usage(process) {
                usage.memory_bytes += rss;
                usage.cpu_usec += cpu;
                usage.pids += 1;
            }
        }
        Ok(usage)
    }

    async fn mount(&self, _id: &str, _mount: &Mount) -> Result<(), SandboxRuntimeError> {
        Err(SandboxRuntimeError::NotSupported { runtime: RuntimeKind::Process, operation: "mount" })
    }

    async fn list(&self) -> Result<Vec<String>, SandboxRuntimeError> {
        let mut ids = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.config.root_dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(err) => return Err(failed("cannot list sandboxes", err)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(|err| failed("cannot list sandboxes", err))? {
            if let Some(name) = entry.file_name().to_str() {
                ids.push(name.to_string());
            }
        }
        Ok(ids)
    }
}

fn read_pid(state_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_path(state_dir)).ok()?.trim().parse().ok()
}

/// True when `pid` is an agent serving `socket` (a recycled pid belongs to someone else).
fn is_our_agent(pid: u32, socket: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let needle = format!("unix:{}", socket.display());
    cmdline.split(|byte| *byte == 0).any(|arg| arg == needle.as_bytes())
}

fn process_alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(false)
}

/// Every process whose parent chain leads to `root` (not including `root`).
fn descendants(root: u32) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
            if let Some(ppid) = parent_of(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = HashSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if found.insert(*child) {
                stack.push(*child);
            }
        }
    }
    found
}

/// Fields of `/proc/PID/stat` after the command name, which may itself contain spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Resident memory in bytes and CPU time in microseconds.
fn process_usage(pid: u32) -> Option<(u64, u64)> {
    let fields = stat_fields(pid)?;
    // After the name: state(0) ppid(1) … utime(11) stime(12) … rss(21), in pages and ticks.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some((rss_pages * 4096, ticks * 10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_the_root_are_refused() {
        let runtime =
            ProcessRuntime::new(ProcessRuntimeConfig { agent_binary: "/bin/false".into(), root_dir: "/tmp/x".into() });
        for id in ["", "..", "../x", "a/b", "sbx_1\0"] {
            assert!(runtime.state_dir(id).is_err(), "{id:?}");
        }
        assert_eq!(runtime.state_dir("sbx_abc").expect("valid"), PathBuf::from("/tmp/x/sbx_abc"));
    }

    #[test]
    fn descendants_follow_the_parent_chain() {
        let mut child =
            std::process::Command::new("sh").args(["-c", "sleep 5 & sleep 5; wait"]).spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(100));
        let tree = descendants(child.id());
        assert_eq!(tree.len(), 2, "two sleeps under sh: {tree:?}");
        let _ = child.kill();
        for pid in tree {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = child.wait();
    }
}
