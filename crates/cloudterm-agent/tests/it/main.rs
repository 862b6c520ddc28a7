//! Integration tests of `cloudterm-agent`: each test starts the real binary on a Unix socket in
//! a fresh temp dir, with a cleaned environment, and drives it with the host's `AgentClient`.

mod endpoints;
mod exec;
mod files;
mod jobs;
mod streams;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use cloudterm_runtime::{AgentClient, AgentEndpoint};

/// A running agent; killed on drop.
pub struct Agent {
    /// The agent process.
    pub child: Child,
    /// Temp dir holding everything.
    pub dir: tempfile::TempDir,
    /// Canonical workspace path.
    pub ws: PathBuf,
    /// The socket.
    pub sock: PathBuf,
    /// A client of it.
    pub client: AgentClient,
}

impl Agent {
    /// Starts an agent.
    pub async fn start() -> Agent {
        Self::start_with(&[]).await
    }

    /// Starts an agent with extra arguments.
    pub async fn start_with(extra: &[&str]) -> Agent {
        Self::start_wrapped(&[], extra).await
    }

    /// Starts an agent under a wrapper command (e.g. `unshare --pid --fork`).
    pub async fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).expect("ws");
        let sock = dir.path().join("agent.sock");
        let bin = env!("CARGO_BIN_EXE_cloudterm-agent");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--workspace")
            .arg(&ws)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--env", "SANDBOX_VAR=from-sandbox"])
            .args(extra)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("FOO_SECRET", "hunter2")
            .spawn()
            .expect("agent starts");
        let client = AgentClient::new(AgentEndpoint::Unix(sock.clone()));
        client.wait_ready(Duration::from_secs(10)).await.expect("agent ready");
        let ws = std::fs::canonicalize(&ws).expect("canonical ws");
        Agent { child, dir, ws, sock, client }
    }

    /// Peak resident memory of the agent process, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first: the agent then kills every process it started.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Live (non-zombie) processes whose command line contains `needle`.
pub fn live_procs_with(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
            .unwrap_or(true);
        if cmd.contains(needle) && !zombie {
            out.push((pid, cmd));
        }
    }
    out
}

/// Waits until no live process matches `needle`; panics after `within`.
pub async fn assert_no_proc_survives(needle: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = live_procs_with(needle);
        if left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "processes survived: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
