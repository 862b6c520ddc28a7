//! Opening a byte stream to an agent: a plain Unix socket, or Firecracker's hybrid vsock
//! (connect to the VM's Unix socket, send `CONNECT <port>\n`, expect `OK <port>\n`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::AgentError;
use crate::AgentEndpoint;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn connect(endpoint: &AgentEndpoint) -> Result<UnixStream, AgentError> {
    let unreachable = |what: &str, e: &dyn std::fmt::Display| AgentError::Unreachable(format!("{what}: {e}"));
    match endpoint {
        AgentEndpoint::Unix(path) => tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path))
            .await
            .map_err(|e| unreachable(&path.display().to_string(), &e))?
            .map_err(|e| unreachable(&path.display().to_string(), &e)),
        AgentEndpoint::Vsock { uds, port } => {
            let handshake = async {
                let mut s = UnixStream::connect(uds).await.map_err(|e| unreachable(&uds.display().to_string(), &e))?;
                s.write_all(format!("CONNECT {port}\n").as_bytes())
                    .await
                    .map_err(|e| unreachable("vsock connect", &e))?;
                // Read the answer byte by byte: nothing after its newline may be consumed.
                let mut line = Vec::new();
                loop {
                    let b = s.read_u8().await.map_err(|e| unreachable("vsock connect", &e))?;
                    if b == b'\n' {
                        break;
                    }
                    line.push(b);
                    if line.len() > 64 {
                        return Err(AgentError::Protocol("vsock handshake answer too long".into()));
                    }
                }
                let line = String::from_utf8_lossy(&line);
                if !line.starts_with("OK ") {
                    return Err(AgentError::Unreachable(format!("vsock port {port}: {line}")));
                }
                Ok(s)
            };
            tokio::time::timeout(CONNECT_TIMEOUT, handshake).await.map_err(|e| unreachable("vsock connect", &e))?
        }
    }
}
