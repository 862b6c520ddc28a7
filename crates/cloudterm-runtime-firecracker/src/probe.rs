//! Whether the firecracker runtime works on this host *now*: `/dev/kvm` opens, the binary and
//! the kernel are there, and a probe VM boots to an agent that answers within a bound. `auto`
//! selection picks Firecracker only on that proof (a `/dev/kvm` that exists but is too slow to
//! boot a guest, like nested software virtualization, fails the last step).

use std::time::{Duration, Instant};

use cloudterm_runtime::AgentEndpoint;

use crate::config::{FirecrackerConfig, Readiness};
use crate::layout::VmDir;
use crate::machine::{boot, check_kernel, MachineSpec};
use crate::runtime::wait_ready;

/// How long the probe VM may take to reach its agent.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The probe VM's memory, MiB.
const PROBE_MEMORY_MB: u64 = 128;

/// What can be checked without booting anything: `/dev/kvm`, the binary, the kernel and the
/// default root image. What readiness re-checks while the server runs.
pub fn preflight(config: &FirecrackerConfig) -> Result<String, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|err| format!("/dev/kvm cannot be opened read-write: {err}"))?;
    if !config.binary.is_file() {
        return Err(format!("the firecracker binary {} is missing", config.binary.display()));
    }
    check_kernel(&config.kernel).map_err(|err| err.to_string())?;
    if let Some(rootfs) = &config.default_rootfs {
        if !rootfs.is_file() {
            return Err(format!("the root image {} is missing", rootfs.display()));
        }
    }
    Ok(format!("/dev/kvm, {} and the kernel {} are usable", config.binary.display(), config.kernel.display()))
}

/// [`preflight`], then boots a probe VM from the configured kernel and root image and waits up
/// to `timeout` for what `config.readiness` asks (the agent over vsock). The VM and its
/// directory are removed either way.
pub async fn probe(config: &FirecrackerConfig, timeout: Duration) -> Result<String, String> {
    preflight(config)?;
    let dir = VmDir::new(config.root_dir.join(format!(".probe-{}", std::process::id())));
    std::fs::create_dir_all(dir.path()).map_err(|err| format!("cannot create {}: {err}", dir.path().display()))?;
    let outcome = probe_in(config, &dir, timeout).await;
    let _ = tokio::fs::remove_dir_all(dir.path()).await;
    outcome
}

async fn probe_in(config: &FirecrackerConfig, dir: &VmDir, timeout: Duration) -> Result<String, String> {
    let spec = MachineSpec {
        kernel: config.kernel.clone(),
        boot_args: format!(
            "{} -- --vm-init --listen vsock:{} --workspace /tmp",
            config.boot_args.trim(),
            config.agent_port
        ),
        vcpus: 1,
        memory_mb: PROBE_MEMORY_MB,
        rootfs: config.default_rootfs.clone(),
        root_writable: false,
        workspace: None,
    };
    let started = Instant::now();
    let vmm =
        boot(&config.binary, dir, "probe", &spec).await.map_err(|err| format!("a probe VM did not boot: {err}"))?;
    let endpoint = AgentEndpoint::Vsock { uds: dir.vsock_socket(), port: config.agent_port };
    let ready = tokio::select! {
        ready = wait_ready(&config.readiness, &endpoint, dir, timeout) => ready.map_err(|err| err.to_string()),
        status = vmm.exited() => Err(format!("the VM exited ({status}); {}", crate::runtime::guest_output(dir))),
    };
    vmm.kill().await;
    let what = match &config.readiness {
        Readiness::Agent => "its agent answered over vsock".to_owned(),
        Readiness::ConsoleLine(text) => format!("its console showed {text:?}"),
    };
    ready
        .map(|()| format!("a probe VM booted and {what} in {} ms", started.elapsed().as_millis()))
        .map_err(|err| format!("a probe VM did not come up: {err}"))
}

/// [`probe`] on a current-thread runtime of its own: for `select`, which runs on a blocking
/// thread at start-up.
pub fn probe_blocking(config: &FirecrackerConfig, timeout: Duration) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot run the firecracker probe: {err}"))?;
    runtime.block_on(probe(config, timeout))
}
