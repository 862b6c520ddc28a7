//! Forwarding one request to a preview's target: hyper's HTTP/1.1 client connection over the
//! connection the agent opens to the port (its socket, handed over), bodies streamed both ways (nothing is buffered
//! whole, so a 50 MiB download flows at the reader's pace), WebSocket and other upgrades
//! spliced byte for byte, and the fallback tried when the target cannot be connected to.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::response::Response;
use cloudterm_domain::sandboxes::ActivityGuard;
use cloudterm_domain::Preview;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::preview::pool::{Lease, Pool};
use crate::preview::{rewrite, PreviewError, Proxied};
use crate::state::AppState;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// How long a pooled connection may take to become ready before a new one is opened.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One request to forward.
pub struct Forward<'a> {
    /// The registration (its health says where to go).
    pub preview: &'a Preview,
    /// `/preview/{sandbox}/{port}`: what the target's absolute paths move under (empty on the
    /// preview's subdomain, where they stay as they are).
    pub prefix: String,
    /// Path and query to request from the target.
    pub upstream_uri: String,
    /// The client's address, for `X-Forwarded-For`.
    pub peer: Option<SocketAddr>,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// A cookie to set on the answer (a signed link was just used).
    pub set_cookie: Option<HeaderValue>,
}

/// How an attempt on one target failed.
enum Attempt {
    /// No connection could be made; the request was not sent and comes back for a retry.
    NoConnection(String, Box<Request>),
    /// The target broke the exchange after the request went out.
    Broken(String),
}

/// Forwards `request` and returns the target's answer (streamed), or the error to answer with.
pub async fn forward(state: &AppState, forward: Forward<'_>, request: Request) -> Result<Response, PreviewError> {
    let (mut parts, body) = request.into_parts();
    let upgrade = rewrite::wants_upgrade(&parts.headers);
    let client_upgrade = if upgrade { parts.extensions.remove::<OnUpgrade>() } else { None };
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = forward
        .upstream_uri
        .parse()
        .map_err(|_| PreviewError::BadPort(format!("cannot forward the path {:?}", forward.upstream_uri)))?;
    *outgoing.headers_mut() = upstream_headers(&parts.headers, &forward, upgrade);

    let preview = forward.preview;
    let mut target = preview.active_sandbox_id().to_owned();
    let (response, lease, guard) = loop {
        match attempt(state, &target, preview.port, outgoing, upgrade).await {
            Ok(answer) => break answer,
            Err(Attempt::NoConnection(why, request)) => {
                let fallback =
                    if target == preview.sandbox_id { state.previews.fail_over(preview, &why) } else { None };
                match fallback {
                    Some(fallback) => {
                        target = fallback;
                        outgoing = *request;
                    }
                    None => {
                        return Err(PreviewError::Unreachable(format!("the preview's target is unreachable: {why}")))
                    }
                }
            }
            Err(Attempt::Broken(why)) => {
                return Err(PreviewError::Unreachable(format!("the preview's target broke the exchange: {why}")))
            }
        }
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(splice(response, client_upgrade, guard));
    }
    let (mut parts, body) = response.into_parts();
    rewrite::strip_hop_by_hop(&mut parts.headers);
    rewrite_answer_headers(&mut parts.headers, &forward);
    let mut answer =
        Response::from_parts(parts, Body::new(GuardedBody { inner: body, done: false, lease, _guard: guard }));
    answer.extensions_mut().insert(Proxied);
    Ok(answer)
}

/// Sends on `target`: an idle pooled connection when there is one (and the request is not an
/// upgrade, which takes its connection for good), else a new one through the agent. Returns
/// the answer with the connection's lease (none for upgrades).
async fn attempt(
    state: &AppState,
    target: &str,
    port: u16,
    mut request: Request,
    upgrade: bool,
) -> Result<(hyper::Response<Incoming>, Option<Lease>, ActivityGuard), Attempt> {
    let guard = match state.previews.activity(target) {
        Ok(guard) => guard,
        Err(err) => return Err(Attempt::NoConnection(err.to_string(), Box::new(request))),
    };
    let pool = &state.preview_router.pool;
    if upgrade {
        // An upgrade takes its connection for good: always a new one.
        let mut sender = match open(state, target, port, true).await {
            Ok(sender) => sender,
            Err(why) => return Err(Attempt::NoConnection(why, Box::new(request))),
        };
        let response = sender.send_request(request).await.map_err(|err| Attempt::Broken(err.to_string()))?;
        return Ok((response, None, guard));
    }
    request = match send_on_idle(pool, target, port, request).await? {
        OnIdle::Sent(response, lease) => return Ok((response, Some(lease), guard)),
        OnIdle::NotSent(request) => request,
    };
    let slot = pool.connect_slot(target, port).await;
    // A connection may have come back while this request waited for its slot.
    request = match send_on_idle(pool, target, port, request).await? {
        OnIdle::Sent(response, lease) => return Ok((response, Some(lease), guard)),
        OnIdle::NotSent(request) => request,
    };
    let mut sender = match open(state, target, port, false).await {
        Ok(sender) => sender,
        Err(why) => return Err(Attempt::NoConnection(why, Box::new(request))),
    };
    // The slot covers the set-up only: a slow answer (a long poll) must not hold it.
    drop(slot);
    let response = sender.send_request(request).await.map_err(|err| Attempt::Broken(err.to_string()))?;
    Ok((response, Some(Lease::new(pool.clone(), target, port, sender)), guard))
}

/// What `send_on_idle` did.
enum OnIdle {
    /// Sent on a pooled connection: the answer and the connection's lease.
    Sent(hyper::Response<Incoming>, Lease),
    /// No idle connection was ready: the request comes back.
    NotSent(Request),
}

/// Sends on an idle pooled connection to the target, if one is ready.
async fn send_on_idle(pool: &Arc<Pool>, target: &str, port: u16, mut request: Request) -> Result<OnIdle, Attempt> {
    while let Some(mut sender) = pool.take(target, port) {
        // A pooled connection's last answer was read to its end, so it is ready at once or
        // within a wake-up; one that closed meanwhile fails here and is dropped.
        if !matches!(tokio::time::timeout(READY_WAIT, sender.ready()).await, Ok(Ok(()))) {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok(OnIdle::Sent(response, Lease::new(pool.clone(), target, port, sender))),
            // The connection closed as the request went; it was not sent.
            Err(mut err) => match err.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(Attempt::Broken(err.into_error().to_string())),
            },
        }
    }
    Ok(OnIdle::NotSent(request))
}

/// A new HTTP/1.1 connection to `127.0.0.1:port` inside the sandbox, through its agent.
async fn open(state: &AppState, target: &str, port: u16, upgrade: bool) -> Result<SendRequest<Body>, String> {
    let stream = state.previews.connect(target, port).await.map_err(|err| err.to_string())?;
    state.metrics.preview_connection_opened(stream.is_handed_over());
    let (sender, connection) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    tokio::spawn(async move {
        let result = if upgrade { connection.with_upgrades().await } else { connection.await };
        if let Err(err) = result {
            tracing::debug!(error = %err, "preview connection ended");
        }
    });
    Ok(sender)
}

/// Answers a switch of protocols: the target's 101 goes to the client, then the two upgraded
/// connections are copied into each other until either side closes.
fn splice(mut response: hyper::Response<Incoming>, client: Option<OnUpgrade>, guard: ActivityGuard) -> Response {
    let upstream = hyper::upgrade::on(&mut response);
    let (parts, _) = response.into_parts();
    tokio::spawn(async move {
        let _busy = guard;
        let Some(client) = client else { return };
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %err, "preview upgraded connection ended");
                }
            }
            Err(err) => tracing::debug!(error = %err, "preview upgrade failed"),
        }
    });
    let mut answer = Response::from_parts(parts, Body::empty());
    answer.extensions_mut().insert(Proxied);
    answer
}

/// The request's headers as the target gets them: no hop-by-hop headers (except the upgrade
/// pair when switching protocols), none of our credentials, the `X-Forwarded-*` set, and a
/// `Host` naming the target's own address (dev servers refuse unknown hosts).
fn upstream_headers(incoming: &HeaderMap, forward: &Forward<'_>, upgrade: bool) -> HeaderMap {
    let mut headers = incoming.clone();
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    rewrite::strip_hop_by_hop(&mut headers);
    if upgrade {
        if let Some(protocol) = upgrade_to {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
    }
    if crate::preview::access::bearer(&headers).is_some() {
        headers.remove(header::AUTHORIZATION);
    }
    rewrite::strip_link_cookie(&mut headers);
    let original_host = headers.remove(header::HOST);
    let host = format!("localhost:{}", forward.preview.port);
    if let Ok(value) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, value);
    }
    if let Some(peer) = forward.peer {
        let chain = match headers.get(X_FORWARDED_FOR).and_then(|value| value.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(forward.proto));
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    if !forward.prefix.is_empty() {
        if let Ok(prefix) = HeaderValue::from_str(&forward.prefix) {
            headers.insert(X_FORWARDED_PREFIX, prefix);
        }
    }
    headers
}

/// Moves the answer's redirects and cookies under the prefix, and adds the link cookie.
fn rewrite_answer_headers(headers: &mut HeaderMap, forward: &Forward<'_>) {
    if let Some(location) = headers.get(header::LOCATION).and_then(|value| value.to_str().ok()) {
        if let Some(moved) = rewrite::rewrite_location(location, &forward.prefix, forward.preview.port) {
            if let Ok(value) = HeaderValue::from_str(&moved) {
                headers.insert(header::LOCATION, value);
            }
        }
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|value| match value.to_str() {
            Ok(text) => HeaderValue::from_str(&rewrite::rewrite_set_cookie(text, &forward.prefix))
                .unwrap_or_else(|_| value.clone()),
            Err(_) => value.clone(),
        })
        .collect();
    headers.remove(header::SET_COOKIE);
    for cookie in cookies.into_iter().chain(forward.set_cookie.clone()) {
        headers.append(header::SET_COOKIE, cookie);
    }
}

/// The target's response body, holding its sandbox busy until the body is done or dropped
/// (a long download keeps the sandbox from idling out under it), and the connection's lease:
/// read to its end, the connection goes back to the pool.
struct GuardedBody {
    inner: Incoming,
    /// The last frame was read.
    done: bool,
    lease: Option<Lease>,
    _guard: ActivityGuard,
}

impl HttpBody for GuardedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        // A body with a known length that was read whole, or one without content (HEAD, 204,
        // 304), may be dropped before its end was polled: it is finished all the same.
        if self.done || self.inner.is_end_stream() {
            if let Some(lease) = &mut self.lease {
                lease.finished();
            }
        }
    }
}
