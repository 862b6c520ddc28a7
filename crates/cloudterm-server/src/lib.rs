//! The cloudterm HTTP server: the only crate that knows about axum, status codes and config.
//!
//! `router::app` builds a listener's application (routes, docs, middleware) over an
//! [`AppState`]; `serve::start` binds the listeners; `serve::run` is `cloudterm serve`.

pub mod config;
pub mod console;
pub mod error;
pub mod extract;
pub mod firecracker;
pub mod metrics;
pub mod middleware;
pub mod preview;
pub mod quota_warning;
pub mod router;
pub mod routes;
pub mod serve;
pub mod state;
pub mod telemetry;

pub use config::{Config, Overrides};
pub use router::Service;
pub use serve::{run, start, RunningServer};
pub use state::AppState;
