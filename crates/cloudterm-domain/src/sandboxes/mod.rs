//! Sandboxes: lifecycle, validation of what clients ask for, and the registry of running ones.

mod egress;
mod live;
mod model;
mod ops;
mod pool;
mod pty;
mod service;
mod validate;

pub use egress::{EgressUsage, EGRESS};
pub use live::{ActivityGuard, LiveSandbox};
pub use model::{state, CreateSandbox, Sandbox, SandboxSettings};
pub use ops::{agent_error, check_command, exec_timeout, Busy};
pub use pty::open_terminal;
pub use service::{runtime_error, RecoveryReport, SandboxService};
