//! The `firecracker` backend of cloudterm's [`Runtime`](cloudterm_runtime::Runtime): one
//! Firecracker microVM per sandbox, configured over its API socket ([`api`], [`machine`]), the
//! agent reached through Firecracker's hybrid vsock socket, limits mapped to vCPUs, memory and
//! the workspace disk's size, and pause/resume through Firecracker snapshots kept in the
//! BlobStore ([`snapshot`]). `auto` selection only picks it when a probe VM boots to its agent
//! ([`probe`]). `docs/firecracker.md` says how to run it and what works so far.

pub mod api;
mod config;
pub mod disk;
mod error;
pub mod image;
mod layout;
pub mod machine;
mod models;
pub mod probe;
mod record;
mod runtime;
pub mod snapshot;
pub mod vmm;
pub mod workspace;

pub use config::{
    locate_binary, FirecrackerConfig, Readiness, AGENT_PORT, DEFAULT_BOOT_ARGS, DEFAULT_MEMORY_MB, DEFAULT_VCPUS,
    DEFAULT_WORKSPACE_DISK_MB,
};
pub use error::FirecrackerError;
pub use layout::VmDir;
pub use runtime::{rootfs_of, FirecrackerRuntime};
