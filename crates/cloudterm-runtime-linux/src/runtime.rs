//! [`LinuxRuntime`]: the `Runtime` implementation the server holds. It owns two helper
//! processes (spawned on first use, restarted when they die): one for the slow requests
//! (create, tear down) and one for the quick ones (claims, mounts, state, usage, freezer), each
//! sent one request at a time. `start` waits for the new sandbox's agent to answer HTTP.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloudterm_runtime::{
    AgentEndpoint, Mount, Runtime, RuntimeKind, SandboxHandle, SandboxRuntimeError, SandboxSpec, Usage, WritableLayer,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

use crate::config::LinuxRuntimeConfig;
use crate::network::NetworkMode;
use crate::protocol::{FailureKind, HelperRequest, HelperResponse, MountRequest, StartRequest};

/// Longest a single helper operation may take before the helper is considered hung.
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

struct HelperProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One helper process, spawned on first use.
type HelperLane = Arc<Mutex<Option<HelperProcess>>>;

/// The linux namespaces runtime. Cheap to share behind an `Arc<dyn Runtime>`.
pub struct LinuxRuntime {
    config: LinuxRuntimeConfig,
    /// Creates and tears down sandboxes (tens of milliseconds each).
    slow: HelperLane,
    /// Everything else (sub-millisecond work), so it never queues behind a creation.
    quick: HelperLane,
}

impl std::fmt::Debug for LinuxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxRuntime").field("config", &self.config).finish_non_exhaustive()
    }
}

fn failed(message: impl Into<String>) -> SandboxRuntimeError {
    SandboxRuntimeError::Failed(message.into())
}

impl LinuxRuntime {
    /// A runtime with this configuration. Nothing is spawned until the first call.
    pub fn new(config: LinuxRuntimeConfig) -> Self {
        LinuxRuntime { config, slow: Arc::new(Mutex::new(None)), quick: Arc::new(Mutex::new(None)) }
    }

    /// The configuration in use.
    pub fn config(&self) -> &LinuxRuntimeConfig {
        &self.config
    }

    fn spawn_helper(config: &LinuxRuntimeConfig) -> Result<HelperProcess, SandboxRuntimeError> {
        let mut command = Command::new(&config.helper_binary);
        command
            .arg("--root-dir")
            .arg(&config.root_dir)
            .arg("--agent-binary")
            .arg(&config.agent_binary)
            .arg("--userns-base")
            .arg(config.userns_base.to_string())
            .arg("--userns-size")
            .arg(config.userns_size.to_string());
        if let Some(image) = &config.default_image {
            command.arg("--default-image").arg(image);
        }
        let network = &config.network;
        let join = |items: Vec<String>| items.join(",");
        command
            .arg("--network")
            .arg(network.mode.as_str())
            .arg("--network-range")
            .arg(network.range.to_string())
            .arg("--network-deny")
            .arg(join(network.deny.iter().map(ToString::to_string).collect()))
            .arg("--network-dns")
            .arg(join(network.dns.iter().map(ToString::to_string).collect()));
        let mut child = command
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(false)
            .spawn()
            .map_err(|err| failed(format!("cannot start {}: {err}", config.helper_binary.display())))?;
        let stdin = child.stdin.take().ok_or_else(|| failed("helper has no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| failed("helper has no stdout"))?;
        Ok(HelperProcess { child, stdin, stdout: BufReader::new(stdout) })
    }

    /// Sends one request to the helper and reads its answer. Runs in its own task holding the
    /// helper lock, so a caller that gives up half-way cannot leave an unread answer behind.
    async fn call(&self, request: HelperRequest) -> Result<HelperResponse, SandboxRuntimeError> {
        let helper = Arc::clone(if request.is_slow() { &self.slow } else { &self.quick });
        let config = self.config.clone();
        let task = tokio::spawn(async move {
            let mut guard = helper.lock().await;
            let line = serde_json::to_string(&request).map_err(|err| failed(err.to_string()))? + "\n";
            for attempt in 0..2 {
                if guard.is_none() {
                    *guard = Some(Self::spawn_helper(&config)?);
                }
                let Some(process) = guard.as_mut() else { continue };
                let written = async {
                    process.stdin.write_all(line.as_bytes()).await?;
                    process.stdin.flush().await
                }
                .await;
                if let Err(err) = written {
                    // The helper died since the last call: restart it and send again once.
                    if let Some(mut old) = guard.take() {
                        let _ = old.child.kill().await;
                    }
                    if attempt == 1 {
                        return Err(failed(format!("linux helper is not accepting requests: {err}")));
                    }
                    continue;
                }
                let mut answer = String::new();
                let read = tokio::time::timeout(HELPER_TIMEOUT, process.stdout.read_line(&mut answer)).await;
                return match read {
                    Ok(Ok(n)) if n > 0 => serde_json::from_str::<HelperResponse>(&answer)
                        .map_err(|err| failed(format!("bad answer from the linux helper: {err}"))),
                    other => {
                        if let Some(mut old) = guard.take() {
                            let _ = old.child.kill().await;
                        }
                        Err(failed(match other {
                            Err(_) => "the linux helper did not answer in time (restarted)".to_owned(),
                            _ => "the linux helper died during the request (restarted)".to_owned(),
                        }))
                    }
                };
            }
            Err(failed("linux helper unavailable"))
        });
        task.await.map_err(|err| failed(format!("helper task failed: {err}")))?
    }

    fn map_error(response: HelperResponse, id: &str) -> SandboxRuntimeError {
        match response {
            HelperResponse::Error { kind, message } => match kind {
                FailureKind::NotRunning => SandboxRuntimeError::NotRunning(id.to_owned()),
                FailureKind::InvalidSpec => SandboxRuntimeError::InvalidSpec(message),
                FailureKind::NotSupported => {
                    SandboxRuntimeError::NotSupported { runtime: RuntimeKind::Linux, operation: "this operation" }
                }
                FailureKind::Failed => SandboxRuntimeError::Failed(message),
            },
            other => failed(format!("unexpected answer from the linux helper: {other:?}")),
        }
    }

    async fn expect_done(&self, request: HelperRequest, id: &str) -> Result<(), SandboxRuntimeError> {
        match self.call(request).await? {
            HelperResponse::Done => Ok(()),
            other => Err(Self::map_error(other, id)),
        }
    }

    fn start_request(&self, spec: &SandboxSpec) -> Result<StartRequest, SandboxRuntimeError> {
        let memory_mb = spec.limits.memory_mb.unwrap_or(self.config.default_memory_mb);
        if !(4..=(1 << 22)).contains(&memory_mb) {
            return Err(SandboxRuntimeError::InvalidSpec(format!("memory limit {memory_mb} MiB is out of range")));
        }
        let cpus = spec.limits.cpus.unwrap_or(self.config.default_cpus);
        if !cpus.is_finite() || !(0.01..=1024.0).contains(&cpus) {
            return Err(SandboxRuntimeError::InvalidSpec(format!("cpu limit {cpus} is out of range")));
        }
        let pids = spec.limits.pids.unwrap_or(self.config.default_pids);
        if !(2..=(1 << 22)).contains(&pids) {
            return Err(SandboxRuntimeError::InvalidSpec(format!("pids limit {pids} is out of range")));
        }
        Ok(StartRequest {
            id: spec.id.clone(),
            state_dir: spec.state_dir.clone(),
            workspace_dir: spec.workspace_dir.clone(),
            image: spec.image.clone(),
            env: spec.env.clone(),
            memory_bytes: memory_mb << 20,
            cpus,
            pids,
            mounts: spec
                .mounts
                .iter()
                .map(|m| MountRequest {
                    host_path: m.host_path.clone(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            layer_dir: spec.layer_dir.clone(),
        })
    }

    /// Creates, runs and deletes a throw-away container (its process is `/usr/bin/true`)
    /// through the helper: proof that this host can run linux sandboxes. Returns a sentence
    /// for the start-up log.
    pub async fn probe(&self) -> Result<String, String> {
        match self.call(HelperRequest::Probe).await {
            Ok(HelperResponse::Probed { summary }) => Ok(summary),
            Ok(HelperResponse::Error { message, .. }) => Err(message),
            Ok(other) => Err(format!("unexpected answer: {other:?}")),
            Err(err) => Err(err.to_string()),
        }
    }
}

/// [`LinuxRuntime::probe`] for a configuration: what `auto` selection and readiness call.
pub async fn probe(config: &LinuxRuntimeConfig) -> Result<String, String> {
    LinuxRuntime::new(config.clone()).probe().await
}

/// One HTTP/1.1 `GET /v1/info` on the agent socket: any HTTP answer means the agent serves.
async fn agent_answers(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket).await else { return false };
    let request = b"GET /v1/info HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => filled += n,
        }
    }
    head.starts_with(b"HTTP/1.")
}

/// Polls until the agent answers or `timeout` passes.
async fn wait_ready(socket: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), agent_answers(socket)).await;
        if matches!(attempt, Ok(true)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: String = text.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
    tail.trim().to_owned()
}

#[async_trait]
impl Runtime for LinuxRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Linux
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<SandboxHandle, SandboxRuntimeError> {
        let request = self.start_request(spec)?;
        let started = Instant::now();
        let (pid, socket) = match self.call(HelperRequest::Start(request)).await? {
            HelperResponse::Started { pid, socket, .. } => (pid, socket),
            other => return Err(Self::map_error(other, &spec.id)),
        };
        let helper_done = started.elapsed();
        let ready = wait_ready(&socket, Duration::from_millis(self.config.ready_timeout_ms)).await;
        tracing::debug!(sandbox = %spec.id, helper_ms = helper_done.as_millis() as u64, ready_ms = (started.elapsed() - helper_done).as_millis() as u64, "linux sandbox started");
        if !ready {
            let log = log_tail(&spec.state_dir.join("agent.log"));
            let _ = self.stop(&spec.id).await;
            return Err(failed(format!(
                "the agent of {} did not answer within {} ms; its output: {log}",
                spec.id, self.config.ready_timeout_ms
            )));
        }
        Ok(SandboxHandle { agent: AgentEndpoint::Unix(socket), pid: Some(pid) })
    }

    async fn attach(&self, id: &str) -> Result<SandboxHandle, SandboxRuntimeError> {
        match self.call(HelperRequest::State { id: id.to_owned() }).await? {
            HelperResponse::State { running: true, pid, socket: Some(socket) } => {
                Ok(SandboxHandle { agent: AgentEndpoint::Unix(socket), pid })
            }
            HelperResponse::State { .. } => Err(SandboxRuntimeError::NotRunning(id.to_owned())),
            other => Err(Self::map_error(other, id)),
        }
    }

    async fn stop(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        match self.expect_done(HelperRequest::Stop { id: id.to_owned() }, id).await {
            // An id that cannot exist has nothing to clean up.
            Err(SandboxRuntimeError::NotRunning(_)) => Ok(()),
            other => other,
        }
    }

    async fn usage(&self, id: &str) -> Result<Usage, SandboxRuntimeError> {
        match self.call(HelperRequest::Usage { id: id.to_owned() }).await? {
            HelperResponse::Usage { memory_bytes, cpu_usec, pids } => Ok(Usage { memory_bytes, cpu_usec, pids }),
            other => Err(Self::map_error(other, id)),
        }
    }

    async fn mount(&self, id: &str, mount: &Mount) -> Result<(), SandboxRuntimeError> {
        let mount = MountRequest {
            host_path: mount.host_path.clone(),
            target: mount.target.clone(),
            read_only: mount.read_only,
        };
        self.expect_done(HelperRequest::Mount { id: id.to_owned(), mount }, id).await
    }

    async fn claim_workspace(&self, id: &str, workspace_dir: &Path) -> Result<(), SandboxRuntimeError> {
        let request = HelperRequest::ClaimWorkspace { id: id.to_owned(), workspace_dir: workspace_dir.to_owned() };
        self.expect_done(request, id).await
    }

    async fn writable_layer(&self, id: &str) -> Result<Option<WritableLayer>, SandboxRuntimeError> {
        let config = self.config.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || crate::layer::writable_layer(&config, &id))
            .await
            .map_err(|err| failed(format!("layer lookup panicked: {err}")))?
            .map(Some)
    }

    fn layer_owners(&self) -> Option<(u32, u32)> {
        Some((self.config.userns_base, self.config.userns_size))
    }

    fn supports_claim(&self) -> bool {
        true
    }

    async fn list(&self) -> Result<Vec<String>, SandboxRuntimeError> {
        match self.call(HelperRequest::List).await? {
            HelperResponse::List { ids } => Ok(ids),
            other => Err(Self::map_error(other, "")),
        }
    }

    async fn pause(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        self.expect_done(HelperRequest::Pause { id: id.to_owned() }, id).await
    }

    async fn resume(&self, id: &str) -> Result<(), SandboxRuntimeError> {
        self.expect_done(HelperRequest::Resume { id: id.to_owned() }, id).await
    }

    fn has_network(&self) -> bool {
        self.config.network.mode == NetworkMode::Nat
    }

    async fn egress(&self, id: &str) -> Result<Option<u64>, SandboxRuntimeError> {
        if !self.has_network() {
            return Ok(None);
        }
        match self.call(HelperRequest::Egress { id: id.to_owned() }).await? {
            HelperResponse::Egress { bytes } => Ok(bytes),
            other => Err(Self::map_error(other, id)),
        }
    }

    /// What the host side of the sandbox's veth received: everything the sandbox sent,
    /// Ethernet headers and refused packets included, so never less than the quota's count. A
    /// file read in this process, where [`egress`](Runtime::egress) asks the helper to run `nft`.
    async fn egress_upper_bound(&self, id: &str) -> Result<Option<u64>, SandboxRuntimeError> {
        if !self.has_network() {
            return Ok(None);
        }
        let path = format!("/sys/class/net/{}/statistics/rx_bytes", crate::helper::veth_name(id));
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(_) => Ok(None),
        }
    }

    async fn limit_egress(&self, id: &str, limit_bytes: Option<u64>) -> Result<(), SandboxRuntimeError> {
        if !self.has_network() {
            return Ok(());
        }
        self.expect_done(HelperRequest::LimitEgress { id: id.to_owned(), limit_bytes }, id).await
    }
}
