//! Integration tests of the linux runtime: real sandboxes with the real agent, attacked from
//! inside. They need root (and skip with a reason otherwise, or fail under `CI=true`).

mod isolation;
mod network;
/// Shared with the server's tests (this crate cannot depend on `cloudterm-test-support`).
#[path = "../../../cloudterm-test-support/src/remote_host.rs"]
mod remote;
mod support;
