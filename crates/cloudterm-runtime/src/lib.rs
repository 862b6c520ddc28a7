//! Sandbox runtimes: which isolation boundary cloudterm uses, and how it picks one.
//!
//! The sandbox issue adds the `Runtime` trait's lifecycle (start a boundary with the agent
//! inside, hand back a stream to it, stop, usage) and its backends. The foundation owns the
//! choice itself, because `serve` must say at start-up which runtime it picked and why, and
//! readiness must re-check that the choice still holds.

mod select;

pub use select::{probe, select, RuntimeChoice, RuntimeError, RuntimeKind, Selection};
