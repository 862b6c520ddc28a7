//! Integration tests of the firecracker runtime against the real Firecracker binary and
//! `/dev/kvm`, with a bare guest the harness assembles (no guest kernel or agent needed).

mod boot;
mod guest;
mod image;
mod probe;
mod runtime;
mod snapshot;
mod support;
mod workspace;
