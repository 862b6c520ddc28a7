//! Free loopback ports for the services the fixtures start.

use std::net::TcpListener;

/// A loopback port that was free a moment ago (the caller's service binds it next; a race with
/// another process is possible, so fixtures retry their start).
pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| format!("bind: {err}"))?;
    listener.local_addr().map(|addr| addr.port()).map_err(|err| format!("local_addr: {err}"))
}
