//! The helper process: a single-threaded loop that reads one JSON request per line on stdin,
//! does the container work with libcontainer and answers one JSON line on stdout.
//!
//! It runs as real root on the host, in the host's mount namespace: it assembles each sandbox's
//! root file system there (so the mounts are invisible from inside the sandbox and easy to
//! clean up), binds the agent's listening socket on the host and hands it to the container as
//! fd 3, and keeps libcontainer's state under `root_dir/<id>/lc`.

mod net;
mod rootfs;
mod spec;
pub(crate) mod sys;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{close, dup2, Pid};

use crate::network::{parse_addrs, parse_net, parse_nets, NetworkConfig};
use crate::protocol::{FailureKind, HelperRequest, HelperResponse, MountRequest, Record, StartRequest};
pub(crate) use net::veth_name;
use rootfs::{IdMap, Layout};

/// Entry point of the `cloudterm-linux-helper` binary.
pub fn helper_main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--userns-holder") {
        return userns_holder();
    }
    // CVE-2019-5736: a container process must never be able to open (and overwrite) the binary
    // that created it through /proc/<pid>/exe, so run from a sealed in-memory copy.
    if let Err(err) = pentacle::ensure_sealed() {
        eprintln!("cloudterm-linux-helper: cannot seal its own binary: {err}");
        return ExitCode::FAILURE;
    }
    let options = match HelperOptions::parse(&args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("cloudterm-linux-helper: {err:#}");
            return ExitCode::from(2);
        }
    };
    // libcontainer logs through `tracing`; `CLOUDTERM_HELPER_LOG=debug` shows it on stderr.
    if let Ok(filter) = std::env::var("CLOUDTERM_HELPER_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(io::stderr)
            .try_init();
    }
    // libcontainer would pass systemd socket activation fds on to the container.
    std::env::remove_var("LISTEN_FDS");
    let network = net::Network::new(options.network.clone());
    let mut helper = Helper { options, userns: None, network };
    let stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    for line in stdin.lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let response = match serde_json::from_str::<HelperRequest>(&line) {
            Ok(request) => helper.handle(request),
            Err(err) => failure(FailureKind::Failed, format!("malformed helper request: {err}")),
        };
        let mut text = serde_json::to_string(&response).unwrap_or_else(|err| {
            format!(r#"{{"result":"error","kind":"failed","message":"cannot encode response: {err}"}}"#)
        });
        text.push('\n');
        if stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            break;
        }
        reap_children();
    }
    ExitCode::SUCCESS
}

/// `--userns-holder`: enters a fresh user namespace, says so, and stays until stdin closes, so
/// the helper can write its mapping and open it for idmapped mounts.
fn userns_holder() -> ExitCode {
    if let Err(err) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
        eprintln!("cloudterm-linux-helper: cannot create a user namespace: {err}");
        return ExitCode::FAILURE;
    }
    println!("ready");
    let _ = io::stdout().flush();
    let mut sink = Vec::new();
    let _ = io::stdin().read_to_end(&mut sink);
    ExitCode::SUCCESS
}

fn failure(kind: FailureKind, message: String) -> HelperResponse {
    HelperResponse::Error { kind, message }
}

/// Reaps exited children (container init processes are the helper's children).
fn reap_children() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

struct HelperOptions {
    root_dir: PathBuf,
    agent_binary: PathBuf,
    default_image: Option<PathBuf>,
    userns_base: u32,
    userns_size: u32,
    network: NetworkConfig,
}

impl HelperOptions {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut root_dir = None;
        let mut agent_binary = None;
        let mut default_image = None;
        let mut userns_base = 100_000;
        let mut userns_size = 65_536;
        let mut network = NetworkConfig::default();
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            let value = iter.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
            match flag.as_str() {
                "--root-dir" => root_dir = Some(PathBuf::from(value)),
                "--agent-binary" => agent_binary = Some(PathBuf::from(value)),
                "--default-image" => default_image = Some(PathBuf::from(value)),
                "--userns-base" => userns_base = value.parse()?,
                "--userns-size" => userns_size = value.parse()?,
                "--network" => network.mode = value.parse().map_err(|err: String| anyhow!(err))?,
                "--network-range" => network.range = parse_net(value).map_err(|err| anyhow!(err))?,
                "--network-deny" => network.deny = parse_nets(value).map_err(|err| anyhow!(err))?,
                "--network-dns" => network.dns = parse_addrs(value).map_err(|err| anyhow!(err))?,
                other => bail!("unknown argument {other}"),
            }
        }
        Ok(HelperOptions {
            root_dir: root_dir.ok_or_else(|| anyhow!("--root-dir is required"))?,
            agent_binary: agent_binary.ok_or_else(|| anyhow!("--agent-binary is required"))?,
            default_image,
            userns_base,
            userns_size,
            network,
        })
    }
}

struct Failure {
    kind: FailureKind,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure { kind: FailureKind::Failed, message: format!("{err:#}") }
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure { kind: FailureKind::InvalidSpec, message: message.into() }
}

fn not_running(id: &str) -> Failure {
    Failure { kind: FailureKind::NotRunning, message: id.to_owned() }
}

fn lc_error(what: &str, err: libcontainer::error::LibcontainerError) -> Failure {
    Failure { kind: FailureKind::Failed, message: format!("{what}: {err}") }
}

/// Sandbox ids become directory and cgroup names: keep them boring.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !id.starts_with('-')
}

struct Helper {
    options: HelperOptions,
    /// The user namespace used for idmapped mounts, created on first use; `Err` says why user
    /// namespaces are off on this host.
    userns: Option<Result<OwnedFd, String>>,
    network: net::Network,
}

impl Helper {
    fn handle(&mut self, request: HelperRequest) -> HelperResponse {
        let result = match request {
            HelperRequest::Start(req) => self.start(req),
            HelperRequest::Stop { id } => self.stop(&id).map(|()| HelperResponse::Done),
            HelperRequest::State { id } => self.state(&id),
            HelperRequest::Usage { id } => self.usage(&id),
            HelperRequest::Pause { id } => self.pause_resume(&id, true),
            HelperRequest::Resume { id } => self.pause_resume(&id, false),
            HelperRequest::Mount { id, mount } => self.mount(&id, &mount, true),
            HelperRequest::ClaimWorkspace { id, workspace_dir } => {
                let mount =
                    MountRequest { host_path: workspace_dir, target: PathBuf::from("/workspace"), read_only: false };
                self.mount(&id, &mount, false)
            }
            HelperRequest::List => self.list(),
            HelperRequest::Probe => self.probe(),
            HelperRequest::Egress { id } => self.egress(&id),
            HelperRequest::LimitEgress { id, limit_bytes } => self.limit_egress(&id, limit_bytes),
        };
        result.unwrap_or_else(|f| failure(f.kind, f.message))
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.options.root_dir.join(id)
    }

    fn container_root(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("lc")
    }

    fn record(&self, id: &str) -> Option<Record> {
        let text = fs::read(self.sandbox_dir(id).join("record.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn load(&self, id: &str) -> Option<Container> {
        let dir = self.container_root(id).join(id);
        if !dir.join("state.json").exists() {
            return None;
        }
        let mut container = Container::load(dir).ok()?;
        let _ = container.refresh_status();
        Some(container)
    }

    /// A user namespace with the sandbox mapping, or `None` where they (or idmapped mounts)
    /// do not work; then sandboxes run without one.
    fn userns(&mut self) -> Option<OwnedFd> {
        if self.userns.is_none() {
            let made =
                make_userns(self.options.userns_base, self.options.userns_size).map_err(|err| format!("{err:#}"));
            if let Err(why) = &made {
                eprintln!("cloudterm-linux-helper: running sandboxes without a user namespace: {why}");
            }
            self.userns = Some(made);
        }
        match &self.userns {
            Some(Ok(fd)) => fd.try_clone().ok(),
            _ => None,
        }
    }

    fn start(&mut self, req: StartRequest) -> Result<HelperResponse, Failure> {
        if !valid_id(&req.id) {
            return Err(invalid(format!("invalid sandbox id {:?}", req.id)));
        }
        if !req.state_dir.is_absolute() || req.workspace_dir.as_ref().is_some_and(|dir| !dir.is_absolute()) {
            return Err(invalid("state_dir and workspace_dir must be absolute"));
        }
        if let Some(dir) = req.workspace_dir.as_ref().filter(|dir| !dir.is_dir()) {
            return Err(invalid(format!("workspace {} is not a directory", dir.display())));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(Failure { kind: FailureKind::Failed, message: "the linux runtime needs root".into() });
        }
        let sandbox_dir = self.sandbox_dir(&req.id);
        if sandbox_dir.exists() {
            if let Some(container) = self.load(&req.id) {
                if matches!(container.status(), ContainerStatus::Running | ContainerStatus::Paused) {
                    return Err(invalid(format!("sandbox {} is already running", req.id)));
                }
            }
            self.stop(&req.id)?;
        }
        fs::create_dir_all(&self.options.root_dir).context("cannot create the runtime root")?;
        // 0711: the sandbox's root (an unprivileged uid on the host) must be able to walk to
        // its rootfs and notify socket, but nobody may list what is here.
        fs::set_permissions(&self.options.root_dir, fs::Permissions::from_mode(0o711))
            .context("cannot set the mode of the runtime root")?;
        fs::create_dir(&sandbox_dir).context("cannot create the sandbox record directory")?;
        fs::set_permissions(&sandbox_dir, fs::Permissions::from_mode(0o711))
            .context("cannot set the mode of the sandbox record directory")?;
        let mut req = req;
        if req.workspace_dir.is_none() {
            // A warm-pool sandbox: an empty directory that stop removes with the record.
            let placeholder = sandbox_dir.join("pool-workspace");
            fs::create_dir(&placeholder).context("cannot create the placeholder workspace")?;
            req.workspace_dir = Some(placeholder);
        }
        let userns = self.userns();
        let record = Record { id: req.id.clone(), state_dir: req.state_dir.clone(), userns: userns.is_some() };
        fs::write(sandbox_dir.join("record.json"), serde_json::to_vec(&record).map_err(anyhow::Error::from)?)
            .context("cannot write the sandbox record")?;
        let agent = self.options.agent_binary.clone();
        match self.start_container(&req, userns.as_ref(), &agent, true) {
            Ok(pid) => Ok(HelperResponse::Started {
                pid,
                socket: Layout { state_dir: req.state_dir.clone() }.socket(),
                userns: userns.is_some(),
            }),
            Err(mut err) => {
                // What the container's init said before it failed is the useful part.
                let log = fs::read_to_string(Layout { state_dir: req.state_dir.clone() }.log()).unwrap_or_default();
                let log = log.trim();
                if !log.is_empty() {
                    let start = log.len().saturating_sub(2000);
                    let start = (start..log.len()).find(|i| log.is_char_boundary(*i)).unwrap_or(log.len());
                    err.message = format!("{}; container output: {}", err.message, &log[start..]);
                }
                let _ = self.stop(&req.id);
                Err(err)
            }
        }
    }

    /// Assembles the rootfs, creates the container, gives it its network (unless
    /// `with_network` is false) and starts it; returns the init's host pid.
    fn start_container(
        &mut self,
        req: &StartRequest,
        userns: Option<&OwnedFd>,
        agent: &Path,
        with_network: bool,
    ) -> Result<u32, Failure> {
        let layout = Layout { state_dir: req.state_dir.clone() };
        fs::create_dir_all(&layout.state_dir).context("cannot create the state directory")?;
        fs::set_permissions(&layout.state_dir, fs::Permissions::from_mode(0o711))
            .context("cannot set the mode of the state directory")?;
        if userns.is_some() {
            check_traversable(&layout.state_dir)?;
            check_traversable(&self.container_root(&req.id))?;
        }
        let idmap = userns.map(|ns| IdMap { userns: ns, root: self.options.userns_base });
        let image = req.image.clone().or_else(|| self.options.default_image.clone());
        if let Some(image) = &image {
            if !image.is_dir() {
                return Err(invalid(format!("image {} is not a directory", image.display())));
            }
        }
        let phase = Instant::now();
        if let Some(layer) = &req.layer_dir {
            rootfs::place_layer(layer, &layout, image.is_some())
                .map_err(|err| invalid(format!("cannot start from the snapshot's writable layer: {err:#}")))?;
        }
        let resolv_conf = self.network.resolv_conf();
        let etc = rootfs::EtcInputs { resolv_conf: &resolv_conf };
        let rootfs =
            rootfs::assemble(req, &layout, &self.options.root_dir, image.as_deref(), agent, idmap.as_ref(), &etc)
                .map_err(|err| match req.layer_dir {
                    // What the sandbox wrote decides whether its layer fits (a planted symlink
                    // where the helper needs a directory): the caller's input, not our failure.
                    Some(_) => invalid(format!("cannot start from the snapshot's writable layer: {err:#}")),
                    None => Failure::from(err),
                })?;
        if std::env::var_os("CLOUDTERM_HELPER_TIMING").is_some() {
            eprintln!("helper timing: rootfs assembled in {:?}", phase.elapsed());
        }

        let nofile_max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(_, hard)| hard)
            .unwrap_or(1024);
        let spec = spec::build_spec(
            req,
            &spec::SpecInputs {
                rootfs: &rootfs,
                userns: userns.map(|_| (self.options.userns_base, self.options.userns_size)),
                nofile_max,
            },
        )?;
        fs::create_dir_all(layout.bundle()).context("cannot create the bundle")?;
        // The spec holds the sandbox's environment: root only.
        fs::set_permissions(layout.bundle(), fs::Permissions::from_mode(0o700))
            .context("cannot restrict the bundle")?;
        spec.save(layout.bundle().join("config.json")).map_err(|err| anyhow!("cannot write config.json: {err}"))?;

        let socket = layout.socket();
        let _ = fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).context("cannot bind the agent socket")?;
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).context("cannot restrict the agent socket")?;
        let devnull = File::open("/dev/null").context("cannot open /dev/null")?;
        let log =
            OpenOptions::new().create(true).append(true).open(layout.log()).context("cannot open the agent log")?;
        let log_err = log.try_clone().context("cannot duplicate the agent log")?;

        let builder = ContainerBuilder::new(req.id.clone(), SyscallType::default())
            .with_root_path(self.container_root(&req.id))
            .map_err(|err| lc_error("invalid container root", err))?
            .with_preserved_fds(1)
            .with_stdin(devnull)
            .with_stdout(log)
            .with_stderr(log_err)
            .validate_id()
            .map_err(|err| lc_error("invalid container id", err))?
            .as_init(layout.bundle())
            .with_systemd(false)
            .with_detach(true);
        let timing = std::env::var_os("CLOUDTERM_HELPER_TIMING").is_some();
        let phase = Instant::now();
        let mut container = with_fd3(listener.as_raw_fd(), || builder.build())?
            .map_err(|err| lc_error("cannot create the container", err))?;
        drop(listener);
        let pid = container.pid().ok_or_else(|| anyhow!("the container has no pid"))?;
        let created = phase.elapsed();
        bring_up_loopback(pid.as_raw())?;
        let loopback = phase.elapsed();
        if with_network {
            // The probe's container (`with_network` false) has no use for one.
            self.network.attach(&req.id, pid.as_raw(), &self.options.root_dir)?;
        }
        let network = phase.elapsed();
        container.start().map_err(|err| lc_error("cannot start the container", err))?;
        if timing {
            eprintln!(
                "helper timing: create {created:?}, loopback {:?}, network {:?}, start {:?}",
                loopback - created,
                network - loopback,
                phase.elapsed() - network
            );
        }
        Ok(pid.as_raw() as u32)
    }

    fn stop(&mut self, id: &str) -> Result<(), Failure> {
        if !valid_id(id) {
            return Err(not_running(id));
        }
        let mut problems = Vec::new();
        let record = self.record(id);
        if let Some(mut container) = self.load(id) {
            if container.status() == ContainerStatus::Paused {
                let _ = container.resume();
            }
            let pid = container.pid();
            if let Err(err) = container.delete(true) {
                problems.push(format!("libcontainer delete: {err}"));
            }
            if let Some(pid) = pid {
                wait_gone(pid);
            }
        }
        if let Err(err) = remove_cgroups(id) {
            problems.push(format!("{err:#}"));
        }
        if let Err(err) = self.network.detach(id, &self.options.root_dir) {
            problems.push(format!("network: {err:#}"));
        }
        if let Some(record) = &record {
            if let Err(err) = rootfs::remove_tree(&record.state_dir) {
                problems.push(format!("{err:#}"));
            }
        }
        if let Err(err) = rootfs::remove_tree(&self.sandbox_dir(id)) {
            problems.push(format!("{err:#}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("cleaning up sandbox {id}: {}", problems.join("; ")).into())
        }
    }

    fn state(&mut self, id: &str) -> Result<HelperResponse, Failure> {
        let not_running = HelperResponse::State { running: false, pid: None, socket: None };
        if !valid_id(id) {
            return Ok(not_running);
        }
        let (Some(container), Some(record)) = (self.load(id), self.record(id)) else {
            return Ok(not_running);
        };
        let socket = Layout { state_dir: record.state_dir }.socket();
        let running =
            matches!(container.status(), ContainerStatus::Running | ContainerStatus::Paused) && socket.exists();
        Ok(HelperResponse::State {
            running,
            pid: container.pid().map(|pid| pid.as_raw() as u32),
            socket: running.then_some(socket),
        })
    }

    fn usage(&mut self, id: &str) -> Result<HelperResponse, Failure> {
        if !valid_id(id) || self.load(id).is_none() {
            return Err(not_running(id));
        }
        let read = |path: PathBuf| -> Option<u64> { fs::read_to_string(path).ok()?.trim().parse().ok() };
        let v1 = Path::new("/sys/fs/cgroup/memory").is_dir();
        let group = format!("cloudterm/{id}");
        let cg = Path::new("/sys/fs/cgroup");
        let (memory, cpu_usec, pids) = if v1 {
            let memory = read(cg.join("memory").join(&group).join("memory.usage_in_bytes"));
            let cpu_ns = read(cg.join("cpuacct").join(&group).join("cpuacct.usage"))
                .or_else(|| read(cg.join("cpu,cpuacct").join(&group).join("cpuacct.usage")));
            let pids = read(cg.join("pids").join(&group).join("pids.current"));
            (memory, cpu_ns.map(|ns| ns / 1000), pids)
        } else {
            let dir = cg.join(&group);
            let cpu = fs::read_to_string(dir.join("cpu.stat")).ok().and_then(|text| {
                text.lines().find_map(|line| line.strip_prefix("usage_usec ").and_then(|v| v.trim().parse().ok()))
            });
            (read(dir.join("memory.current")), cpu, read(dir.join("pids.current")))
        };
        let Some(memory_bytes) = memory else {
            return Err(not_running(id));
        };
        Ok(HelperResponse::Usage { memory_bytes, cpu_usec: cpu_usec.unwrap_or(0), pids: pids.unwrap_or(0) })
    }

    fn egress(&mut self, id: &str) -> Result<HelperResponse, Failure> {
        if !valid_id(id) || self.load(id).is_none() {
            return Err(not_running(id));
        }
        Ok(HelperResponse::Egress { bytes: self.network.egress_bytes(id)? })
    }

    fn limit_egress(&mut self, id: &str, limit_bytes: Option<u64>) -> Result<HelperResponse, Failure> {
        if !valid_id(id) || self.load(id).is_none() {
            return Err(not_running(id));
        }
        self.network.set_limit(id, &self.options.root_dir, limit_bytes)?;
        Ok(HelperResponse::Done)
    }

    fn pause_resume(&mut self, id: &str, pause: bool) -> Result<HelperResponse, Failure> {
        let Some(mut container) = valid_id(id).then(|| self.load(id)).flatten() else {
            return Err(not_running(id));
        };
        let result = if pause {
            if container.status() == ContainerStatus::Paused {
                return Ok(HelperResponse::Done);
            }
            container.pause()
        } else {
            if container.status() == ContainerStatus::Running {
                return Ok(HelperResponse::Done);
            }
            container.resume()
        };
        result.map_err(|err| lc_error(if pause { "cannot pause" } else { "cannot resume" }, err))?;
        Ok(HelperResponse::Done)
    }

    /// Mounts a host directory into a running sandbox: on the host under the sandbox's shared
    /// rootfs mount, from where it propagates into the sandbox's slave copy. With `freeze` the
    /// sandbox is frozen meanwhile, so it cannot swap a directory on the way for a symlink;
    /// a warm-pool claim skips that, as nothing but the agent has run in the sandbox yet.
    fn mount(&mut self, id: &str, mount: &MountRequest, freeze: bool) -> Result<HelperResponse, Failure> {
        let Some(mut container) = valid_id(id).then(|| self.load(id)).flatten() else {
            return Err(not_running(id));
        };
        let Some(record) = self.record(id) else { return Err(not_running(id)) };
        if !matches!(container.status(), ContainerStatus::Running | ContainerStatus::Paused) {
            return Err(not_running(id));
        }
        let rel = rootfs::relative_target(&mount.target).map_err(|err| invalid(format!("{err:#}")))?;
        if !mount.host_path.is_absolute() || !mount.host_path.is_dir() {
            return Err(invalid(format!("mount source {} is not a directory", mount.host_path.display())));
        }
        let userns = if record.userns { self.userns() } else { None };
        if record.userns && userns.is_none() {
            return Err(anyhow!("the sandbox uses a user namespace the helper cannot recreate").into());
        }
        let idmap = userns.as_ref().map(|ns| IdMap { userns: ns, root: self.options.userns_base });
        let was_running = freeze && container.status() == ContainerStatus::Running;
        if was_running {
            container.pause().map_err(|err| lc_error("cannot freeze the sandbox", err))?;
        }
        let rootfs = Layout { state_dir: record.state_dir }.rootfs();
        let result = rootfs::make_mountpoint(&rootfs, &rel, false, idmap.as_ref())
            .and_then(|target| rootfs::bind(&mount.host_path, &target, mount.read_only, idmap.as_ref()));
        if was_running {
            container.resume().map_err(|err| lc_error("cannot thaw the sandbox", err))?;
        }
        result?;
        Ok(HelperResponse::Done)
    }

    fn list(&mut self) -> Result<HelperResponse, Failure> {
        let mut ids = Vec::new();
        if let Ok(entries) = fs::read_dir(&self.options.root_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if valid_id(&name) && (path.join("record.json").exists() || path.join("lc").exists()) {
                    ids.push(name);
                }
            }
        }
        ids.sort();
        Ok(HelperResponse::List { ids })
    }

    /// Runs `/usr/bin/true` as the "agent" of a throw-away sandbox and deletes it again.
    fn probe(&mut self) -> Result<HelperResponse, Failure> {
        let started = Instant::now();
        let id = format!("probe-{}", std::process::id());
        let scratch = self.options.root_dir.join(".probe");
        let _ = self.stop(&id);
        let _ = rootfs::remove_tree(&scratch);
        fs::create_dir_all(scratch.join("workspace")).context("cannot create the probe workspace")?;
        let req = StartRequest {
            id: id.clone(),
            state_dir: scratch.join("state"),
            workspace_dir: Some(scratch.join("workspace")),
            image: None,
            env: Vec::new(),
            memory_bytes: 64 << 20,
            cpus: 1.0,
            pids: 16,
            mounts: Vec::new(),
            layer_dir: None,
        };
        let true_bin = fs::canonicalize("/usr/bin/true").context("no /usr/bin/true on this host")?;
        fs::create_dir_all(self.sandbox_dir(&id)).context("cannot create the probe record")?;
        let userns = self.userns();
        let record = Record { id: id.clone(), state_dir: req.state_dir.clone(), userns: userns.is_some() };
        fs::write(self.sandbox_dir(&id).join("record.json"), serde_json::to_vec(&record).map_err(anyhow::Error::from)?)
            .context("cannot write the probe record")?;
        let result = self.start_container(&req, userns.as_ref(), &true_bin, false).and_then(|pid| {
            let status = waitpid(Pid::from_raw(pid as i32), None).context("cannot wait for the probe")?;
            match status {
                WaitStatus::Exited(_, 0) => Ok(()),
                other => Err(anyhow!("probe container ended with {other:?}").into()),
            }
        });
        let cleaned = self.stop(&id);
        let _ = rootfs::remove_tree(&scratch);
        result?;
        cleaned?;
        Ok(HelperResponse::Probed {
            summary: format!(
                "created, ran and deleted a container in {} ms ({})",
                started.elapsed().as_millis(),
                if userns.is_some() { "user namespace with idmapped mounts" } else { "no user namespace" }
            ),
        })
    }
}

/// With a user namespace the sandbox's root is an unprivileged host uid, and libcontainer
/// opens the rootfs and its notify socket as that uid: every ancestor must be searchable.
fn check_traversable(dir: &Path) -> anyhow::Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else { continue };
        if meta.permissions().mode() & 0o001 == 0 {
            bail!(
                "{} is not searchable by other users (mode {:o}); the sandbox's mapped root must \
                 reach {}: chmod o+x it or choose another data directory",
                ancestor.display(),
                meta.permissions().mode() & 0o7777,
                dir.display()
            );
        }
    }
    Ok(())
}

/// Runs `f` with `fd` duplicated onto fd 3 (without close-on-exec) so the container inherits
/// it as its first preserved fd, then puts back whatever fd 3 was.
fn with_fd3<T>(fd: RawFd, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    const TARGET: RawFd = 3;
    if fd == TARGET {
        fcntl(TARGET, FcntlArg::F_SETFD(FdFlag::empty())).context("cannot clear close-on-exec")?;
        let out = f();
        let _ = fcntl(TARGET, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        return Ok(out);
    }
    let saved = fcntl(TARGET, FcntlArg::F_DUPFD_CLOEXEC(10)).ok();
    dup2(fd, TARGET).context("cannot place the agent socket on fd 3")?;
    let out = f();
    match saved {
        Some(saved) => {
            let _ = dup2(saved, TARGET);
            let _ = fcntl(TARGET, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
            let _ = close(saved);
        }
        None => {
            let _ = close(TARGET);
        }
    }
    Ok(out)
}

/// A new network namespace has `lo` down; bring it up from the host side (the helper is
/// single-threaded, so switching its network namespace for a moment is safe).
fn bring_up_loopback(pid: i32) -> anyhow::Result<()> {
    use libcontainer::network::link::LinkClient;
    use libcontainer::network::wrapper::create_network_client;
    let host = File::open("/proc/self/ns/net").context("cannot open the host network namespace")?;
    let sandbox = File::open(format!("/proc/{pid}/ns/net")).context("cannot open the sandbox network namespace")?;
    setns(&sandbox, CloneFlags::CLONE_NEWNET).context("cannot enter the sandbox network namespace")?;
    let result = LinkClient::new(create_network_client())
        .and_then(|mut client| client.set_up(1))
        .map_err(|err| anyhow!("cannot bring up lo: {err}"));
    if let Err(err) = setns(&host, CloneFlags::CLONE_NEWNET) {
        // Staying in a sandbox's network namespace would be wrong for every later sandbox.
        eprintln!("cloudterm-linux-helper: cannot return to the host network namespace: {err}");
        std::process::exit(1);
    }
    result
}

/// Waits (briefly) until a process has exited, reaping it when it is the helper's child.
fn wait_gone(pid: Pid) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return,
            Err(_) => {
                if !Path::new(&format!("/proc/{}", pid.as_raw())).exists() {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills whatever is left in the sandbox's cgroups (after a crash libcontainer may have lost
/// track) and removes them.
fn remove_cgroups(id: &str) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("cloudterm").join(id)];
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            dirs.push(entry.path().join("cloudterm").join(id));
        }
    }
    let mut left = Vec::new();
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
            // A frozen v1 cgroup would hold the killed processes forever.
            let _ = fs::write(dir.join("freezer.state"), "THAWED");
            reap_children();
            if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                break;
            }
            if Instant::now() > deadline {
                left.push(dir.display().to_string());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        bail!("cgroups left: {}", left.join(", "))
    }
}

/// Creates a user namespace with the sandbox mapping (held by a short-lived child) and checks
/// that idmapped mounts work with it.
fn make_userns(base: u32, size: u32) -> anyhow::Result<OwnedFd> {
    let mut child = Command::new("/proc/self/exe")
        .arg("--userns-holder")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot spawn the user namespace holder")?;
    let result = (|| {
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the user namespace holder failed");
        }
        let pid = child.id();
        let map = format!("0 {base} {size}\n");
        fs::write(format!("/proc/{pid}/uid_map"), &map).context("cannot write uid_map")?;
        fs::write(format!("/proc/{pid}/gid_map"), &map).context("cannot write gid_map")?;
        let ns: OwnedFd = File::open(format!("/proc/{pid}/ns/user"))?.into();
        let probe = sys::open_tree_clone(Path::new("/usr"), false).context("open_tree")?;
        sys::mount_setattr(&probe, sys::MOUNT_ATTR_RDONLY, Some(&ns)).context("idmapped mounts do not work")?;
        Ok(ns)
    })();
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    result
}
