//! Configuration of the linux runtime.

use std::path::PathBuf;

use crate::network::NetworkConfig;

/// Memory limit of a sandbox whose spec sets none, MiB.
pub const DEFAULT_MEMORY_MB: u64 = 512;
/// CPU quota of a sandbox whose spec sets none, cores.
pub const DEFAULT_CPUS: f64 = 1.0;
/// Process limit of a sandbox whose spec sets none.
pub const DEFAULT_PIDS: u64 = 256;

/// How the linux runtime is set up on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxRuntimeConfig {
    /// Host directory for the runtime's per-sandbox records and libcontainer state
    /// (`root_dir/<id>/`), e.g. `DATA/sandboxes`. Never visible inside a sandbox.
    pub root_dir: PathBuf,
    /// The `cloudterm-agent` binary; bind-mounted read-only at `/.cloudterm/agent` inside.
    pub agent_binary: PathBuf,
    /// The `cloudterm-linux-helper` binary.
    pub helper_binary: PathBuf,
    /// Root image directory (e.g. made by `debootstrap bookworm DIR`). `None`: the host's
    /// `/usr`, `/bin`, `/lib*`, `/sbin` read-only under a generated `/etc`.
    pub default_image: Option<PathBuf>,
    /// Memory limit when the spec sets none, MiB.
    pub default_memory_mb: u64,
    /// CPU quota when the spec sets none, cores.
    pub default_cpus: f64,
    /// Process limit when the spec sets none.
    pub default_pids: u64,
    /// First host uid/gid that container uid/gid 0 maps to, when user namespaces work.
    pub userns_base: u32,
    /// How many uids/gids are mapped.
    pub userns_size: u32,
    /// How long `start` waits for the agent to answer, milliseconds.
    pub ready_timeout_ms: u64,
    /// Outbound network: none (the default) or NAT through the host.
    pub network: NetworkConfig,
}

impl LinuxRuntimeConfig {
    /// A configuration with the default limits, image and uid range.
    pub fn new(root_dir: PathBuf, agent_binary: PathBuf, helper_binary: PathBuf) -> Self {
        LinuxRuntimeConfig {
            root_dir,
            agent_binary,
            helper_binary,
            default_image: None,
            default_memory_mb: DEFAULT_MEMORY_MB,
            default_cpus: DEFAULT_CPUS,
            default_pids: DEFAULT_PIDS,
            userns_base: 100_000,
            userns_size: 65_536,
            ready_timeout_ms: 10_000,
            network: NetworkConfig::default(),
        }
    }
}
