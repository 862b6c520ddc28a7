//! The HTTP/1.1 server: the route table (every entry must be declared in
//! `cloudterm_agent_protocol::ENDPOINTS`, which a test checks), dispatch, and the accept loop.

use std::sync::Arc;

use bytes::Bytes;
use cloudterm_agent_protocol as proto;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::util::{json_response, ApiError, RespBody};
use crate::{exec, files, jobs, pty, State};

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Info,
    Exec,
    Download,
    Upload,
    List,
    Stat,
    Mkdir,
    Remove,
    Rename,
    StartJob,
    ListJobs,
    StopJob,
    JobLogs,
    Pty,
    Connect,
    Freeze,
    Thaw,
    Sync,
}

/// The route table: the only place requests are dispatched from.
pub const ROUTES: &[(&str, &str, Route)] = &[
    ("GET", proto::PATH_INFO, Route::Info),
    ("POST", proto::PATH_EXEC, Route::Exec),
    ("GET", proto::PATH_FILES, Route::Download),
    ("PUT", proto::PATH_FILES, Route::Upload),
    ("GET", proto::PATH_FILES_LIST, Route::List),
    ("GET", proto::PATH_FILES_STAT, Route::Stat),
    ("POST", proto::PATH_FILES_MKDIR, Route::Mkdir),
    ("POST", proto::PATH_FILES_REMOVE, Route::Remove),
    ("POST", proto::PATH_FILES_RENAME, Route::Rename),
    ("POST", proto::PATH_JOBS, Route::StartJob),
    ("GET", proto::PATH_JOBS, Route::ListJobs),
    ("DELETE", proto::PATH_JOB, Route::StopJob),
    ("GET", proto::PATH_JOB_LOGS, Route::JobLogs),
    ("GET", proto::PATH_PTY, Route::Pty),
    ("GET", proto::PATH_CONNECT, Route::Connect),
    ("POST", proto::PATH_FREEZE, Route::Freeze),
    ("POST", proto::PATH_THAW, Route::Thaw),
    ("POST", proto::PATH_SYNC, Route::Sync),
];

/// Finds the route of `(method, path)`: `Ok((route, captures))`, `Err(true)` when the path
/// exists with another method, `Err(false)` when it does not exist.
pub fn find_route(method: &str, path: &str) -> Result<(Route, Vec<String>), bool> {
    let mut path_known = false;
    for (m, pattern, route) in ROUTES {
        if let Some(caps) = proto::match_path(pattern, path) {
            if *m == method {
                return Ok((*route, caps));
            }
            path_known = true;
        }
    }
    Err(path_known)
}

/// Largest JSON request body accepted.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

async fn json_body<T: DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_JSON_BODY);
    let bytes: Bytes = limited
        .collect()
        .await
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "bad_body", format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))
}

/// Handles one request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<RespBody>, std::convert::Infallible> {
    Ok(match dispatch(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    })
}

async fn dispatch(state: Arc<State>, req: Request<Incoming>) -> Result<Response<RespBody>, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let q = proto::query::parse(req.uri().query().unwrap_or(""));
    let (route, caps) = match find_route(method.as_str(), &path) {
        Ok(r) => r,
        Err(true) => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} {path} is not served"),
            ))
        }
        Err(false) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_endpoint",
                format!("{method} {path} is not an endpoint"),
            ))
        }
    };
    let id = caps.first().cloned().unwrap_or_default();
    match route {
        Route::Info => Ok(json_response(StatusCode::OK, &state.info())),
        Route::Exec => {
            let stream = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains(proto::CONTENT_TYPE_NDJSON));
            let body: proto::ExecRequest = json_body(req.into_body()).await?;
            exec::exec(state, body, stream).await
        }
        Route::Download => files::download(state, q).await,
        Route::Upload => files::upload(state, q, req.into_body()).await,
        Route::List => files::list(state, q).await,
        Route::Stat => files::stat(state, q).await,
        Route::Mkdir => files::mkdir(state, json_body(req.into_body()).await?).await,
        Route::Remove => files::remove(state, json_body(req.into_body()).await?).await,
        Route::Rename => files::rename(state, json_body(req.into_body()).await?).await,
        Route::StartJob => jobs::start(state, json_body(req.into_body()).await?).await,
        Route::ListJobs => jobs::list(state).await,
        Route::StopJob => jobs::stop(state, &id, q).await,
        Route::JobLogs => jobs::logs(state, &id, q).await,
        Route::Pty => pty::pty(state, req, q).await,
        Route::Connect => pty::connect(req, q).await,
        Route::Freeze => {
            let n = state.spawner.signal_all(nix::sys::signal::Signal::SIGSTOP);
            Ok(json_response(StatusCode::OK, &proto::QuiesceResponse { processes: n }))
        }
        Route::Thaw => {
            let n = state.spawner.signal_all(nix::sys::signal::Signal::SIGCONT);
            Ok(json_response(StatusCode::OK, &proto::QuiesceResponse { processes: n }))
        }
        Route::Sync => {
            let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
    }
}

/// Accepts connections forever.
/// Serves connections from `accept` (a Unix socket's or, in a microVM, a vsock listener's)
/// until the task is dropped.
pub async fn serve<S, F, Fut>(mut accept: F, state: Arc<State>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let stream = match accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cloudterm-agent: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_declared_in_the_protocol() {
        for (m, p, r) in ROUTES {
            assert!(
                proto::ENDPOINTS.contains(&(*m, *p)),
                "the agent serves {m} {p} ({r:?}) which the protocol does not declare"
            );
        }
    }

    #[test]
    fn every_declared_endpoint_is_served() {
        for (m, p) in proto::ENDPOINTS {
            assert!(
                ROUTES.iter().any(|(rm, rp, _)| rm == m && rp == p),
                "the protocol declares {m} {p} but the agent does not serve it"
            );
        }
    }

    #[test]
    fn unknown_paths_and_methods_are_refused() {
        assert_eq!(find_route("GET", "/v1/nope"), Err(false));
        assert_eq!(find_route("DELETE", "/v1/info"), Err(true));
        assert_eq!(find_route("GET", "/v1/jobs/job_1/logs").map(|r| r.1), Ok(vec!["job_1".to_owned()]));
    }
}
