//! `cloudterm-agent`: the daemon that runs as the first process inside every sandbox and
//! serves the protocol of `cloudterm-agent-protocol` over HTTP/1.1 on one listening socket.
//!
//! ```text
//! cloudterm-agent (--listen-fd N | --listen unix:PATH | --listen vsock:PORT) --workspace DIR
//!                 [--state-dir DIR] [--env K=V]... [--seccomp] [--vm-init]
//! ```
//! The listener is either inherited (fd N, so the socket file never appears inside the
//! sandbox), bound at PATH, or, inside a Firecracker microVM, a vsock port the host reaches
//! through the VM's hybrid vsock socket. `--vm-init` (the agent as the microVM's init) first
//! mounts what no container runtime prepared there ([`vm_init`]). Start-up: refuse to be dumped or ptraced by sandbox processes
//! (`PR_SET_DUMPABLE` 0), split off an init process when running as PID 1 ([`init`]), make
//! the listener close-on-exec, then serve.
#![allow(unsafe_code)]

mod exec;
mod files;
mod init;
mod jobs;
mod paths;
mod procs;
mod pty;
mod seccomp;
mod server;
mod util;
mod vm_init;

use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cloudterm_agent_protocol::{InfoResponse, PROTOCOL_VERSION};

/// Shared state of the agent.
#[derive(Debug)]
pub struct State {
    /// How processes are started.
    pub spawner: Arc<procs::Spawner>,
    /// Background jobs.
    pub jobs: jobs::Jobs,
    /// Where job logs live.
    pub state_dir: PathBuf,
}

impl State {
    fn info(&self) -> InfoResponse {
        InfoResponse {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
            pid: std::process::id(),
            workspace: self.spawner.workspace.display().to_string(),
        }
    }
}

#[derive(Debug)]
enum Listen {
    Fd(RawFd),
    Path(PathBuf),
    Vsock(u32),
}

#[derive(Debug)]
struct Args {
    listen: Listen,
    workspace: PathBuf,
    state_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    seccomp: bool,
    vm_init: bool,
}

const USAGE: &str = "usage: cloudterm-agent (--listen-fd N | --listen unix:PATH | --listen vsock:PORT) --workspace DIR [--state-dir DIR] [--env K=V]... [--seccomp] [--vm-init]";

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut listen, mut workspace, mut state_dir, mut env, mut seccomp, mut vm_init) =
        (None, None, None, Vec::new(), false, false);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--listen-fd" => {
                listen = Some(Listen::Fd(value("--listen-fd")?.parse().map_err(|_| "--listen-fd needs a number")?))
            }
            "--listen" => {
                let v = value("--listen")?;
                listen = Some(if let Some(port) = v.strip_prefix("vsock:") {
                    Listen::Vsock(port.parse().map_err(|_| "--listen vsock:PORT needs a port number")?)
                } else {
                    Listen::Path(PathBuf::from(
                        v.strip_prefix("unix:").ok_or("--listen takes unix:PATH or vsock:PORT")?,
                    ))
                });
            }
            "--workspace" => workspace = Some(PathBuf::from(value("--workspace")?)),
            "--state-dir" => state_dir = Some(PathBuf::from(value("--state-dir")?)),
            "--env" => {
                let v = value("--env")?;
                let (k, val) = v.split_once('=').ok_or("--env takes K=V")?;
                env.push((k.to_owned(), val.to_owned()));
            }
            "--seccomp" => seccomp = true,
            "--vm-init" => vm_init = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen-fd or --listen is required")?,
        workspace: workspace.ok_or("--workspace is required")?,
        state_dir,
        env,
        seccomp,
        vm_init,
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("cloudterm-agent: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    close_inherited_fds_on_exec(match args.listen {
        Listen::Fd(fd) => Some(fd),
        Listen::Path(_) | Listen::Vsock(_) => None,
    });
    if args.vm_init {
        if let Err(e) = vm_init::prepare() {
            eprintln!("cloudterm-agent: preparing the microVM: {e}");
            return ExitCode::FAILURE;
        }
    }
    if std::process::id() == 1 {
        // Before any thread exists: the parent stays behind as the reaping init.
        init::split_off_init();
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloudterm-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Marks every inherited fd above stderr close-on-exec (the listener too: it is the control
/// channel), so nothing the agent was started with leaks into sandbox processes.
fn close_inherited_fds_on_exec(listen_fd: Option<RawFd>) {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<RawFd> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    for fd in fds {
        if fd > 2 || Some(fd) == listen_fd {
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let workspace =
        std::fs::canonicalize(&args.workspace).map_err(|e| format!("workspace {}: {e}", args.workspace.display()))?;
    let state_dir =
        args.state_dir.unwrap_or_else(|| std::env::temp_dir().join(format!(".cloudterm-agent-{}", std::process::id())));
    std::fs::create_dir_all(&state_dir).map_err(|e| format!("state dir {}: {e}", state_dir.display()))?;
    if args.seccomp {
        let filters = seccomp::build()?;
        // On the agent itself, before any thread exists, so every thread and every process it
        // starts inherits the filter (and `no_new_privs`).
        filters.apply().map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    let std_listener = match &args.listen {
        Listen::Vsock(_) => None,
        Listen::Fd(fd) => {
            // SAFETY: the runtime hands this fd over to us alone; nothing else owns it.
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(*fd) };
            // Children must never inherit the control channel.
            nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
                .map_err(|e| format!("fd {fd}: {e}"))?;
            Some(l)
        }
        Listen::Path(p) => {
            if std::fs::symlink_metadata(p).is_ok() {
                std::fs::remove_file(p).map_err(|e| format!("removing stale {}: {e}", p.display()))?;
            }
            // Bound sockets are close-on-exec (std uses SOCK_CLOEXEC).
            Some(std::os::unix::net::UnixListener::bind(p).map_err(|e| format!("bind {}: {e}", p.display()))?)
        }
    };
    if let Some(l) = &std_listener {
        l.set_nonblocking(true).map_err(|e| format!("listener: {e}"))?;
    }
    let state = Arc::new(State {
        spawner: Arc::new(procs::Spawner::new(workspace, args.env)),
        jobs: jobs::Jobs::default(),
        state_dir,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("signal: {e}"))?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| format!("signal: {e}"))?;
        let spawner = state.spawner.clone();
        let serving = async {
            match (std_listener, &args.listen) {
                (Some(l), _) => {
                    let listener = tokio::net::UnixListener::from_std(l).map_err(|e| format!("listener: {e}"))?;
                    let listener = &listener;
                    server::serve(move || async move { listener.accept().await.map(|(s, _)| s) }, state).await;
                }
                (None, Listen::Vsock(port)) => {
                    // Any CID: the host side is Firecracker's vsock device, whatever CID it gave us.
                    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
                    let listener =
                        tokio_vsock::VsockListener::bind(addr).map_err(|e| format!("vsock port {port}: {e}"))?;
                    let listener = &listener;
                    server::serve(move || async move { listener.accept().await.map(|(s, _)| s) }, state).await;
                }
                (None, _) => return Err("no listener".to_owned()),
            }
            Ok::<(), String>(())
        };
        tokio::select! {
            served = serving => served?,
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        // Every process the agent started lives in its own session, so none would die with
        // the agent: end them all before leaving.
        tokio::task::spawn_blocking(move || spawner.kill_all()).await.map_err(|e| format!("shutdown: {e}"))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_arguments() {
        let a = args(&["--listen", "unix:/tmp/a.sock", "--workspace", "/ws", "--env", "A=b=c", "--seccomp"])
            .expect("valid");
        assert!(matches!(a.listen, Listen::Path(ref p) if p == &PathBuf::from("/tmp/a.sock")));
        assert_eq!(a.env, vec![("A".to_owned(), "b=c".to_owned())]);
        assert!(a.seccomp);
        assert!(args(&["--listen-fd", "x", "--workspace", "/ws"]).is_err());
        assert!(args(&["--workspace", "/ws"]).is_err());
        assert!(args(&["--listen", "tcp:1", "--workspace", "/ws"]).is_err());
        let a = args(&["--listen", "vsock:1024", "--workspace", "/workspace", "--vm-init"]).expect("valid");
        assert!(matches!(a.listen, Listen::Vsock(1024)) && a.vm_init);
        assert!(args(&["--listen", "vsock:x", "--workspace", "/ws"]).is_err());
        assert!(!args(&["--listen", "unix:/a", "--workspace", "/ws"]).expect("valid").vm_init);
    }
}
