//! The `linux` backend of cloudterm's [`Runtime`](cloudterm_runtime::Runtime): user, mount, pid,
//! net, uts, ipc and cgroup namespaces, an overlay root and cgroup limits, all through youki's
//! `libcontainer`.
//!
//! libcontainer is not thread-safe (it `chdir`s the whole process around its notify socket) and
//! must never run in a fork of the multi-threaded server, so every container operation happens in
//! a single-threaded helper process (`cloudterm-linux-helper`, [`helper_main`]) that
//! [`LinuxRuntime`] spawns lazily and drives over a pipe with one JSON line per request and
//! response. The helper serializes all container work; if it dies, the next call restarts it.
//! Containers survive a helper (or server) restart: they are found again under the runtime's
//! root directory.

mod config;
mod helper;
mod layer;
pub mod network;
mod protocol;
mod runtime;

pub use config::{LinuxRuntimeConfig, DEFAULT_CPUS, DEFAULT_MEMORY_MB, DEFAULT_PIDS};
pub use helper::helper_main;
pub use network::{NetworkConfig, NetworkMode};
pub use runtime::{probe, LinuxRuntime};
