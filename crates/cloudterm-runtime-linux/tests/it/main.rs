//! Integration tests of the linux runtime: real sandboxes with the real agent, attacked from
//! inside. They need root (and skip with a reason otherwise, or fail under `CI=true`).

mod isolation;
mod network;
mod remote;
mod support;
