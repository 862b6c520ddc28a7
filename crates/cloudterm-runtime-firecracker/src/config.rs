//! Configuration of the firecracker runtime: where Firecracker and the guest kernel are, how
//! big a VM is by default, and how the runtime knows a guest is ready.

use std::path::PathBuf;

use cloudterm_blobstore::BlobStore;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_PORT: u32 = 1024;
/// Guest memory of a sandbox whose spec sets none, MiB.
pub const DEFAULT_MEMORY_MB: u64 = 512;
/// vCPUs of a sandbox whose spec sets none.
pub const DEFAULT_VCPUS: u8 = 1;
/// Size of the workspace disk of a sandbox whose spec sets none, MiB.
pub const DEFAULT_WORKSPACE_DISK_MB: u64 = 1024;
/// The kernel command line before the agent's arguments: the console on the serial port, a
/// reboot or panic ends the VM (Firecracker exits, and the runtime sees a dead VM) instead of
/// hanging, no PCI probing (Firecracker has virtio-mmio devices only), the agent as init.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet init=/.cloudterm/agent";

/// How the runtime decides that a new VM is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The agent answers `GET /v1/info` over vsock (what sandboxes need).
    Agent,
    /// The guest printed a line containing this text on its console: for guests without an
    /// agent (a kernel under test, the bare guest of this crate's tests).
    ConsoleLine(String),
}

/// How the firecracker runtime is set up on this host.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    /// The `firecracker` binary.
    pub binary: PathBuf,
    /// The uncompressed guest kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// Host directory holding one directory per VM (`root_dir/<id>/`).
    pub root_dir: PathBuf,
    /// The ext4 root image of sandboxes that name none (`cloudterm image build`); `None` boots
    /// without a root disk (only useful with [`Readiness::ConsoleLine`]).
    pub default_rootfs: Option<PathBuf>,
    /// The kernel command line before the agent's arguments.
    pub boot_args: String,
    /// The guest vsock port of the agent.
    pub agent_port: u32,
    /// Guest memory when the spec sets none, MiB.
    pub default_memory_mb: u64,
    /// vCPUs when the spec sets none.
    pub default_vcpus: u8,
    /// Workspace disk size when the spec sets none, MiB.
    pub default_workspace_disk_mb: u64,
    /// How long `start` waits for the guest to be ready, milliseconds.
    pub ready_timeout_ms: u64,
    /// What "ready" means.
    pub readiness: Readiness,
    /// Where paused VMs are kept. `None`: pause only stops the vCPUs and the VMM keeps the
    /// guest's memory.
    pub snapshots: Option<BlobStore>,
}

impl FirecrackerConfig {
    /// A configuration with the default sizes, boot arguments and readiness (the agent).
    pub fn new(binary: PathBuf, kernel: PathBuf, root_dir: PathBuf) -> Self {
        FirecrackerConfig {
            binary,
            kernel,
            root_dir,
            default_rootfs: None,
            boot_args: DEFAULT_BOOT_ARGS.to_owned(),
            agent_port: AGENT_PORT,
            default_memory_mb: DEFAULT_MEMORY_MB,
            default_vcpus: DEFAULT_VCPUS,
            default_workspace_disk_mb: DEFAULT_WORKSPACE_DISK_MB,
            ready_timeout_ms: 10_000,
            readiness: Readiness::Agent,
            snapshots: None,
        }
    }
}

/// The `firecracker` binary: `configured` if set, else the first `firecracker` on `PATH`.
pub fn locate_binary(configured: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("firecracker")).find(|candidate| candidate.is_file())
}
