//! Shared test plumbing: the privilege check, a runtime in a temp dir, and an HTTP client for
//! the agent socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use cloudterm_runtime::{AgentEndpoint, Limits, Runtime, SandboxHandle, SandboxSpec};
use cloudterm_runtime_linux::{LinuxRuntime, LinuxRuntimeConfig, NetworkConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the linux runtime tests need root".into());
    }
    if !Path::new("/proc/self/ns/user").exists() {
        return Some("the kernel has no user namespaces".into());
    }
    None
}

/// True when the tests can run; prints why not otherwise, and fails under `CI=true`.
pub fn can_run(test: &str) -> bool {
    match skip_reason() {
        None => true,
        Some(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: cannot run under CI=true: {why}");
            }
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// The agent binary to put in sandboxes: the real `cloudterm-agent` next to the test binary
/// (built on demand), or the Python stand-in when `CLOUDTERM_TEST_AGENT=fake`.
pub fn agent_binary() -> PathBuf {
    if std::env::var("CLOUDTERM_TEST_AGENT").as_deref() == Ok("fake") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fake_agent.py");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod fake agent");
        return path;
    }
    let exe = std::env::current_exe().expect("test exe");
    let debug = exe.parent().and_then(Path::parent).expect("target/debug");
    let agent = debug.join("cloudterm-agent");
    if !agent.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "cloudterm-agent"])
            .status()
            .expect("run cargo build -p cloudterm-agent");
        assert!(status.success(), "cargo build -p cloudterm-agent failed");
    }
    assert!(agent.exists(), "no cloudterm-agent at {}", agent.display());
    agent
}

/// A runtime with its own root directory, helper and workspace dirs.
pub struct TestRuntime {
    pub dir: tempfile::TempDir,
    pub runtime: LinuxRuntime,
}

impl TestRuntime {
    pub fn new() -> Self {
        Self::with_network(NetworkConfig::default())
    }

    /// A runtime whose sandboxes get this network.
    pub fn with_network(network: NetworkConfig) -> Self {
        let dir = tempfile::Builder::new().prefix("ctlinux").tempdir().expect("tempdir");
        // The sandbox's mapped root must be able to walk to its rootfs (see the docs).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
        let mut config = LinuxRuntimeConfig::new(
            dir.path().join("sandboxes"),
            agent_binary(),
            PathBuf::from(env!("CARGO_BIN_EXE_cloudterm-linux-helper")),
        );
        config.network = network;
        TestRuntime { runtime: LinuxRuntime::new(config), dir }
    }

    /// Another runtime over the same root directory: what a restarted server has.
    pub fn restarted(&self) -> LinuxRuntime {
        LinuxRuntime::new(self.runtime.config().clone())
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("sandboxes")
    }

    /// A spec whose state dir is `root_dir/<id>` (as the server lays it out) and whose
    /// workspace is a fresh directory.
    pub fn spec(&self, name: &str) -> SandboxSpec {
        let id = format!("sbx_{name}_{}", std::process::id());
        let workspace = self.dir.path().join("workspaces").join(&id);
        std::fs::create_dir_all(&workspace).expect("workspace");
        SandboxSpec {
            state_dir: self.root_dir().join(&id),
            id,
            workspace_dir: Some(workspace),
            image: None,
            env: vec![("CLOUDTERM_TEST".into(), "1".into())],
            limits: Limits::default(),
            mounts: Vec::new(),
            layer_dir: None,
        }
    }
}

impl Drop for TestRuntime {
    /// A failed assertion must not leave sandboxes (processes, mounts, cgroups) behind: stop
    /// whatever is still listed, from a fresh runtime on its own thread.
    fn drop(&mut self) {
        let config = self.runtime.config().clone();
        let cleaner = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let runtime = LinuxRuntime::new(config);
                for id in runtime.list().await.unwrap_or_default() {
                    if let Err(err) = runtime.stop(&id).await {
                        eprintln!("cleanup of {id} failed: {err}");
                    }
                }
            });
        });
        let _ = cleaner.join();
    }
}

/// What an exec returned.
#[derive(Debug)]
pub struct Output {
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }
}

pub fn socket_of(handle: &SandboxHandle) -> PathBuf {
    match &handle.agent {
        AgentEndpoint::Unix(path) => path.clone(),
        other => panic!("unexpected endpoint {other:?}"),
    }
}

/// `POST /v1/exec` that reports failures instead of panicking.
pub async fn try_exec(handle: &SandboxHandle, body: serde_json::Value) -> Result<Output, String> {
    let handle = tokio::spawn({
        let handle = handle.clone();
        async move { exec(&handle, body).await }
    });
    handle.await.map_err(|err| format!("exec failed: {err}"))
}

/// One HTTP/1.1 request to the agent.
pub async fn request(socket: &Path, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, Vec<u8>) {
    let stream = UnixStream::connect(socket).await.expect("connect agent socket");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "agent")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(120), sender.send_request(req))
        .await
        .expect("agent answered in time")
        .expect("send request");
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, bytes.to_vec())
}

/// Runs `sh -c command` in the sandbox.
pub async fn sh(handle: &SandboxHandle, command: &str) -> Output {
    exec(handle, serde_json::json!({"command": command, "timeout_ms": 60000})).await
}

/// `POST /v1/exec` with this body.
pub async fn exec(handle: &SandboxHandle, body: serde_json::Value) -> Output {
    let (status, bytes) = request(&socket_of(handle), "POST", "/v1/exec", Some(body)).await;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("exec answered {status}: {}", String::from_utf8_lossy(&bytes)));
    assert_eq!(status, 200, "exec failed: {value}");
    let decode = |key: &str| {
        let text = value[key].as_str().unwrap_or_default();
        String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(text).expect("base64")).into_owned()
    };
    Output {
        exit_code: value["exit_code"].as_i64(),
        signal: value["signal"].as_i64(),
        stdout: decode("stdout_base64"),
        stderr: decode("stderr_base64"),
    }
}
