//! Test helpers: a real cloudterm server on `127.0.0.1:0`, a real identity provider serving
//! a JWKS, a real S3 service (Garage), a real PostgreSQL, a stand-in for the internet
//! (`RemoteHost`), and the one place that decides whether
//! a missing service skips or fails a test.

mod garage;
mod host;
mod idp;
mod ports;
mod postgres;
mod prometheus;
mod remote_host;
mod server;

pub use garage::GarageServer;
pub use host::{freezer_state, linux_runtime_available, sandbox_leftovers, sandbox_processes};
pub use idp::{IdpKey, JwksServer};
pub use postgres::PostgresServer;
pub use prometheus::PrometheusServer;
pub use remote_host::{Link, Received, RemoteHost};
pub use server::TestServer;

/// Called where a test needs something this machine may lack (root, a service, a binary).
/// Outside CI it prints why and returns `true` so the test can return early; with `CI=true`
/// a skip is a failure, so CI proves everything.
pub fn skip_unless(available: bool, why: &str) -> bool {
    if available {
        return false;
    }
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("CI=true and this test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
    true
}
