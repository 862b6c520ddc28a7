//! Sandbox runtimes: the `Runtime` trait every isolation backend implements, and how
//! cloudterm picks one.
//!
//! `serve` says at start-up which runtime it picked and why ([`select`]), and readiness
//! re-checks that the choice still holds ([`probe`]). Backends live in their own crates
//! (`cloudterm-runtime-linux`) or modules here (the process runtime), so Linux- or KVM-only
//! dependencies stay out of the rest.

pub mod agent_client;
mod process;
mod runtime;
mod select;

pub use agent_client::{
    AgentClient, AgentError, ByteStream, ExecOutput, ExecResult, ExecStream, JobLogs, PortStream, UpgradedStream,
};
pub use process::{ProcessRuntime, ProcessRuntimeConfig};
pub use runtime::{
    AgentEndpoint, LayerTree, Limits, Mount, Runtime, SandboxExit, SandboxHandle, SandboxRuntimeError, SandboxSpec,
    Usage, WritableLayer,
};
pub use select::{
    no_firecracker, probe, probe_with, select, select_with, FirecrackerProbe, RuntimeChoice, RuntimeError, RuntimeKind,
    Selection,
};
