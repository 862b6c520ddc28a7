//! Small helpers shared by the handlers: the error type, response bodies, RFC 3339 times.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cloudterm_agent_protocol::ErrorBody;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

/// The body type of every response.
pub type RespBody = BoxBody<Bytes, io::Error>;

/// An error answered as `{code, message}` with a status.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Human sentence.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Maps an I/O error on `path` to a status.
    pub fn io(err: &io::Error, path: &std::path::Path) -> Self {
        use io::ErrorKind as K;
        let p = path.display();
        let (status, code) = match err.kind() {
            K::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            K::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            K::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            K::IsADirectory => (StatusCode::CONFLICT, "is_a_directory"),
            K::NotADirectory => (StatusCode::CONFLICT, "not_a_directory"),
            K::DirectoryNotEmpty => (StatusCode::CONFLICT, "directory_not_empty"),
            K::InvalidInput | K::InvalidFilename => (StatusCode::BAD_REQUEST, "bad_path"),
            K::CrossesDevices => (StatusCode::CONFLICT, "cross_device"),
            K::StorageFull | K::QuotaExceeded => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "io_error"),
        };
        Self::new(status, code, format!("{p}: {err}"))
    }

    /// The response.
    pub fn into_response(self) -> Response<RespBody> {
        let body = ErrorBody { code: self.code.to_owned(), message: self.message };
        let mut r = json_response(StatusCode::OK, &body);
        *r.status_mut() = self.status;
        r
    }
}

/// A full body.
pub fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A JSON response.
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<RespBody> {
    let bytes = serde_json::to_vec(value)
        .unwrap_or_else(|e| format!("{{\"code\":\"internal\",\"message\":\"{e}\"}}").into_bytes());
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// A streamed body fed by a bounded channel: the producer blocks when the client reads
/// slowly, so memory stays bounded; dropping the body (client gone) closes the channel.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl ChannelBody {
    /// A body and the sender that feeds it.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Result<Bytes, io::Error>>, RespBody) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, BoxBody::new(ChannelBody { rx }))
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// Formats a time as RFC 3339 UTC with second precision.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Query parameter lookup (the last value wins).
pub fn query_param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A boolean query parameter (`true`/`1`).
pub fn query_bool(q: &[(String, String)], name: &str) -> bool {
    matches!(query_param(q, name), Some("true" | "1" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_210_096)), "2024-02-29T12:34:56Z");
    }
}
