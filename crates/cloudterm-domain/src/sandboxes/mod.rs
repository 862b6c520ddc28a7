//! Sandboxes: lifecycle, validation of what clients ask for, and the registry of running ones.

mod egress;
mod live;
mod model;
pub(crate) mod ops;
mod pool;
mod pty;
mod service;
mod validate;

pub use egress::{EgressUsage, EGRESS};
pub use live::{ActivityGuard, LiveSandbox};
pub use model::{state, CreateSandbox, Sandbox, SandboxSettings};
pub use ops::{agent_error, check_command, exec_timeout, storage_exceeded, Busy, STORAGE_RETRY_AFTER_SECONDS};
pub use pty::open_terminal;
pub use service::{runtime_error, volume_error, RecoveryReport, SandboxService, StorageUsage};
