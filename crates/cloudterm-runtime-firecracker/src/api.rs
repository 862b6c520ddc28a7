//! The client of one Firecracker process's API socket: JSON over HTTP/1.1 on a Unix socket,
//! one connection per request (Firecracker's API thread serves one at a time anyway), every
//! request bounded by a timeout so a wedged VMM cannot hang a caller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixStream;

/// Longest any single API call may take. Snapshot creation writes the whole guest memory, so
/// it gets [`SNAPSHOT_TIMEOUT`] instead.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a snapshot create or load may take (they copy or map the guest memory).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a call to the API socket can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be reached or the connection broke (the VMM is gone or wedged).
    #[error("firecracker api {path}: {message}")]
    Transport {
        /// The request path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Firecracker refused the request; `fault` is its `fault_message`.
    #[error("firecracker refused {method} {path} ({status}): {fault}")]
    Refused {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// The HTTP status Firecracker chose.
        status: u16,
        /// Firecracker's explanation.
        fault: String,
    },
}

/// A client of one VMM's API socket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    /// A client of the API socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ApiClient { socket: socket.into() }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `PUT path` with a JSON body; Firecracker answers 204 on success.
    pub async fn put(&self, path: &str, body: &impl Serialize) -> Result<(), ApiError> {
        self.call(Method::PUT, path, Some(body), API_TIMEOUT).await.map(drop)
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &impl Serialize) -> Result<(), ApiError> {
        self.call(Method::PATCH, path, Some(body), API_TIMEOUT).await.map(drop)
    }

    /// `PUT path` with a longer bound, for snapshot create and load.
    pub async fn put_slow(&self, path: &str, body: &impl Serialize) -> Result<(), ApiError> {
        self.call(Method::PUT, path, Some(body), SNAPSHOT_TIMEOUT).await.map(drop)
    }

    /// `GET path`, the answer's JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ApiError> {
        let body = self.call::<()>(Method::GET, path, None, API_TIMEOUT).await?;
        serde_json::from_slice(&body).map_err(|err| transport(path, format!("answer is not JSON: {err}")))
    }

    async fn call<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(|err| transport(path, err.to_string()))?,
            None => Vec::new(),
        };
        let exchange = async {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|err| transport(path, format!("connect {}: {err}", self.socket.display())))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|err| transport(path, err.to_string()))?;
            let driver = tokio::spawn(connection);
            let request = Request::builder()
                .method(method.clone())
                .uri(path)
                .header("host", "localhost")
                .header("accept", "application/json")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|err| transport(path, err.to_string()))?;
            let response = sender.send_request(request).await.map_err(|err| transport(path, err.to_string()))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|err| transport(path, err.to_string()))?.to_bytes();
            driver.abort();
            Ok::<_, ApiError>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| transport(path, format!("no answer within {} ms", timeout.as_millis())))??;
        if status.is_success() {
            return Ok(body);
        }
        Err(ApiError::Refused {
            method: method.to_string(),
            path: path.to_owned(),
            status: status.as_u16(),
            fault: fault_message(status, &body),
        })
    }
}

fn transport(path: &str, message: impl Into<String>) -> ApiError {
    ApiError::Transport { path: path.to_owned(), message: message.into() }
}

/// Firecracker's `{"fault_message": "..."}`, or the raw body when it is something else.
fn fault_message(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("fault_message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            if text.trim().is_empty() {
                status.to_string()
            } else {
                text.chars().take(500).collect()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_messages_are_unwrapped_and_anything_else_is_kept_short() {
        let status = StatusCode::BAD_REQUEST;
        assert_eq!(fault_message(status, br#"{"fault_message":"bad kernel"}"#), "bad kernel");
        assert_eq!(fault_message(status, b""), "400 Bad Request");
        assert_eq!(fault_message(status, &[b'x'; 2000]).len(), 500);
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_transport_error_naming_it() {
        let client = ApiClient::new("/nonexistent/api.sock");
        let err = client.put("/actions", &serde_json::json!({})).await.expect_err("no socket");
        assert!(matches!(err, ApiError::Transport { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/api.sock"), "{err}");
    }
}
