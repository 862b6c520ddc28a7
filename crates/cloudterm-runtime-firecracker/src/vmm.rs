//! One Firecracker process: spawning it on its own API socket, finding it again after a
//! restart, waiting for it, and killing it. A [`Vmm`] knows nothing of sandboxes; the runtime
//! builds on it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::api::ApiClient;
use crate::error::FirecrackerError;
use crate::layout::{instance_id, VmDir};

/// Longest wait for a new Firecracker process to listen on its API socket.
const API_SOCKET_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for a killed Firecracker process to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A running Firecracker process.
#[derive(Debug, Clone)]
pub struct Vmm {
    pid: u32,
    api: ApiClient,
    /// The process's exit, as a sentence, once it happened. Only known for processes this
    /// server started; one found again after a restart is watched through `/proc`.
    exited: Option<watch::Receiver<Option<String>>>,
}

impl Vmm {
    /// Starts `binary --api-sock DIR/api.sock --id ID` with its output in `DIR/vmm.log`, in its
    /// own process group (a Ctrl-C of the server does not reach it, and it survives a server
    /// restart), and returns once the API socket accepts connections.
    pub async fn spawn(binary: &Path, dir: &VmDir, id: &str) -> Result<Vmm, FirecrackerError> {
        let socket = dir.api_socket();
        remove_if_present(&socket)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.vmm_log())
            .map_err(|err| FirecrackerError::io("cannot create the vmm log", err))?;
        let log_err = log.try_clone().map_err(|err| FirecrackerError::io("cannot open the vmm log", err))?;
        let mut child = tokio::process::Command::new(binary)
            .arg("--api-sock")
            .arg(&socket)
            .arg("--id")
            .arg(instance_id(id))
            .env_clear()
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|err| FirecrackerError::Spawn(format!("{}: {err}", binary.display())))?;
        let pid = child.id().ok_or_else(|| FirecrackerError::Spawn("the process exited at once".into()))?;
        // Reap it whenever it exits, and tell whoever watches.
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(err) => format!("lost: {err}"),
            };
            let _ = tx.send(Some(status));
        });
        let vmm = Vmm { pid, api: ApiClient::new(&socket), exited: Some(rx) };
        let deadline = Instant::now() + API_SOCKET_TIMEOUT;
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                return Ok(vmm);
            }
            if let Some(status) = vmm.exit_status() {
                return Err(FirecrackerError::Exited { status, output: log_tail(&dir.vmm_log()) });
            }
            if Instant::now() > deadline {
                vmm.kill().await;
                return Err(FirecrackerError::Timeout(format!(
                    "firecracker did not open its API socket within {} ms",
                    API_SOCKET_TIMEOUT.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The Firecracker process serving `dir`'s API socket with this pid, if it still runs (a
    /// recycled pid belongs to someone else and is not taken).
    pub fn find(dir: &VmDir, pid: u32) -> Option<Vmm> {
        is_ours(pid, &dir.api_socket()).then(|| Vmm { pid, api: ApiClient::new(dir.api_socket()), exited: None })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The API client of this process.
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// How the process ended, if it did.
    pub fn exit_status(&self) -> Option<String> {
        match &self.exited {
            Some(rx) => rx.borrow().clone(),
            None => (!is_ours(self.pid, self.api.socket())).then(|| "exited".to_owned()),
        }
    }

    /// Waits until the process exits (or forever); for start-up races with the guest.
    pub async fn exited(&self) -> String {
        match self.exited.clone() {
            Some(mut rx) => loop {
                if let Some(status) = rx.borrow_and_update().clone() {
                    return status;
                }
                if rx.changed().await.is_err() {
                    return "lost".to_owned();
                }
            },
            None => loop {
                if let Some(status) = self.exit_status() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            },
        }
    }

    /// Kills the process (SIGKILL: a VMM has nothing to flush that we rely on) and waits until it
    /// is gone, so its memory and sockets are released when this returns.
    pub async fn kill(&self) {
        if self.exit_status().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = tokio::time::timeout(KILL_TIMEOUT, self.exited()).await;
    }

    /// Resident memory of the process in bytes and its CPU time in microseconds.
    pub fn usage(&self) -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state(0) ppid(1) … utime(11) stime(12) … rss(21), in ticks and pages.
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let rss_pages: u64 = fields.get(21)?.parse().ok()?;
        Some((rss_pages * 4096, ticks * 10_000))
    }
}

/// True when `pid` is alive (not a zombie) and was started with `--api-sock socket`.
pub fn is_ours(pid: u32, socket: &Path) -> bool {
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    if !alive {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
    let wanted = socket.as_os_str().as_encoded_bytes();
    args.windows(2).any(|pair| pair[0] == b"--api-sock" && pair[1] == wanted)
}

/// The last 2000 characters of a log, trimmed, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
    let chars: Vec<char> = text.chars().collect();
    let start = chars.len().saturating_sub(2000);
    chars[start..].iter().collect::<String>().trim().to_owned()
}

/// Removes a file that may not exist.
pub fn remove_if_present(path: &PathBuf) -> Result<(), FirecrackerError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(FirecrackerError::io(&format!("cannot remove {}", path.display()), err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_ours_only_with_our_api_socket() {
        // `sh -c SCRIPT ARG0 ARG1`: the extra arguments stay on sh's command line.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5; true", "--api-sock", "/tmp/x/api.sock"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // Until the child has exec'd, /proc shows the test binary's command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_ours(pid, Path::new("/tmp/x/api.sock")) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let ours = is_ours(pid, Path::new("/tmp/x/api.sock"));
        let theirs = is_ours(pid, Path::new("/tmp/y/api.sock"));
        let _ = child.kill();
        let _ = child.wait();
        assert!(ours && !theirs);
        assert!(!is_ours(pid, Path::new("/tmp/x/api.sock")), "a reaped process is not ours");
    }

    #[test]
    fn log_tails_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "x".repeat(5000) + "\nlast line\n").expect("write");
        let tail = log_tail(&path);
        assert!(tail.len() <= 2000 && tail.ends_with("last line"), "{tail}");
        assert_eq!(log_tail(&dir.path().join("missing")), "");
    }
}
