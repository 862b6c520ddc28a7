//! The preview router end to end: a real server, real sandboxes, a small Python web app
//! (`fixtures/preview_app.py`) started inside each as a background job and reached only
//! through `/preview/{sandbox}/{port}/…`, which goes through the sandbox's agent.

use std::time::{Duration, Instant};

use cloudterm_test_support::TestServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::sandboxes::Api;

pub(crate) const APP: &str = include_str!("fixtures/preview_app.py");

/// A server for preview tests: no warm pool (fewer sandboxes to start), fast health checks.
async fn server(runtime: &str) -> Option<TestServer> {
    TestServer::start_runtime(runtime, |config| {
        config.sandboxes.warm_pool = 0;
        config.preview.health_interval_seconds = 1;
    })
    .await
}

/// A port free on this host right now (the process runtime shares the host's network).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what} did not happen within {timeout:?}");
}

/// Creates a sandbox running the app on `port`, answering as `name`; returns its id.
pub(crate) async fn sandbox_with_app(api: &Api, port: u16, name: &str) -> String {
    let sandbox = api.create(json!({})).await;
    let id = sandbox["id"].as_str().expect("id").to_string();
    let (status, body) = api
        .call("POST", &format!("/sandboxes/{id}/files"), Some(json!({"path": "preview_app.py", "content": APP})))
        .await;
    assert_eq!(status, 201, "{body}");
    start_app(api, &id, port, name).await;
    id
}

/// Starts the app in the sandbox and waits until it listens; returns the job id.
pub(crate) async fn start_app(api: &Api, id: &str, port: u16, name: &str) -> String {
    let argv = json!(["python3", "preview_app.py", port.to_string(), name]);
    let (status, job) = api.call("POST", &format!("/sandboxes/{id}/background"), Some(json!({"argv": argv}))).await;
    assert_eq!(status, 201, "{job}");
    let probe = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 1)\" 2>/dev/null && echo up || echo down"
    );
    eventually("the app listens", Duration::from_secs(20), async || {
        api.sh(id, &probe).await["stdout"].as_str() == Some("up\n")
    })
    .await;
    job["job_id"].as_str().expect("job id").to_string()
}

pub(crate) async fn register(api: &Api, body: Value) -> Value {
    let (status, preview) = api.call("POST", "/preview/register", Some(body)).await;
    assert_eq!(status, 201, "register: {preview}");
    preview
}

pub(crate) fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map_or("/".to_string(), |at| rest[at..].to_string())
}

pub(crate) async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

async fn http_streams_headers_redirects_and_cookies(runtime: &str) {
    let Some(server) = server(runtime).await else { return };
    let alice = Api::new(&server, "alice");
    let port = free_port();
    let id = sandbox_with_app(&alice, port, "alpha").await;

    // The contract's route: {url, port}; private by default.
    let (status, preview) = alice.call("POST", &format!("/sandboxes/{id}/preview"), Some(json!({"port": port}))).await;
    assert_eq!(status, 200, "{preview}");
    let prefix = format!("/preview/{id}/{port}");
    assert_eq!(preview["url"], server.url(&format!("{prefix}/")));
    assert_eq!((preview["port"].as_u64(), preview["public"].as_bool()), (Some(u64::from(port)), Some(false)));
    assert_eq!(preview["healthy"], true, "checked at registration: {preview}");
    let base = server.url(&prefix);
    let http = client();

    // Headers both ways: X-Forwarded-*, the target's own Host, no bearer token inside.
    let response = http
        .get(format!("{base}/echo/a%20b?x=1&y=2"))
        .bearer_auth(&alice.token)
        .header("x-forwarded-for", "203.0.113.7")
        .header("cookie", "app=1")
        .send()
        .await
        .expect("echo");
    assert_eq!(response.status(), 200);
    let echo = json_of(response).await;
    assert_eq!(echo["name"], "alpha");
    assert_eq!(echo["path"], "/echo/a%20b?x=1&y=2");
    let headers = &echo["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], server.addr().to_string());
    assert_eq!(headers["x-forwarded-prefix"], prefix);
    assert_eq!(headers["host"], format!("localhost:{port}"));
    assert_eq!(headers["cookie"], "app=1");
    assert!(headers.get("authorization").is_none(), "the token reached the sandbox: {headers}");
    assert!(!echo.to_string().contains(&alice.token));

    // Keep-alive requests one after another reuse one pooled connection, and that connection
    // is the sandbox's own socket, handed over by the agent.
    let opened = async || -> u64 {
        let text = reqwest::get(server.url("/metrics")).await.expect("metrics").text().await.expect("text");
        let line = text.lines().find(|line| line.starts_with("preview_target_connections_total{path=\"socket\"}"));
        line.and_then(|line| line.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    };
    let before = opened().await;
    assert!(before >= 1, "the first request went through a handed-over socket");
    for _ in 0..20 {
        let response = http.get(format!("{base}/whoami")).bearer_auth(&alice.token).send().await.expect("whoami");
        assert_eq!(response.text().await.expect("text"), "alpha");
    }
    assert!(opened().await <= before + 1, "20 sequential requests opened {} connections", opened().await - before);

    // Without the trailing slash: redirected to it.
    let response = http.get(&base).bearer_auth(&alice.token).send().await.expect("bare");
    assert_eq!(response.status(), 308);
    assert_eq!(response.headers()["location"], format!("{prefix}/"));
    let root = json_of(http.get(format!("{base}/")).bearer_auth(&alice.token).send().await.expect("root")).await;
    assert_eq!(root["path"], "/");

    // Redirects and cookies stay under the prefix; the app's own errors pass through as they are.
    let response = http.get(format!("{base}/redirect")).bearer_auth(&alice.token).send().await.expect("redirect");
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], format!("{prefix}/landed"));
    let response = http.get(format!("{base}/cookie")).bearer_auth(&alice.token).send().await.expect("cookie");
    assert_eq!(response.headers()["set-cookie"], format!("sid=abc; Path={prefix}/; HttpOnly"));
    let response = http.get(format!("{base}/status/418")).bearer_auth(&alice.token).send().await.expect("418");
    assert_eq!(response.status(), 418);
    assert_eq!(response.text().await.expect("text"), "the app's own answer");

    // An upload streams through: 20 MiB in chunks, no Content-Length.
    let chunk = vec![7u8; 1024 * 1024];
    let expected = {
        let mut digest = Sha256::new();
        (0..20).for_each(|_| digest.update(&chunk));
        hex::encode(digest.finalize())
    };
    let stream = futures_util::stream::iter((0..20).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = http
        .post(format!("{base}/upload"))
        .bearer_auth(&alice.token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("upload");
    let echo = json_of(response).await;
    assert_eq!((echo["body_len"].as_u64(), echo["body_sha256"].as_str()), (Some(20 * 1024 * 1024), Some(&*expected)));

    // A 64 MiB download flows at the reader's pace: while the client holds off after the
    // first MiB, the app inside is blocked well short of the end (nothing buffers it whole).
    let total: u64 = 64 * 1024 * 1024;
    let mut download = http.get(format!("{base}/big?mb=64")).bearer_auth(&alice.token).send().await.expect("big");
    assert_eq!(download.status(), 200);
    assert_eq!(download.content_length(), Some(total));
    let mut digest = Sha256::new();
    let mut read = 0u64;
    while read < 1024 * 1024 {
        let chunk = download.chunk().await.expect("chunk").expect("more");
        digest.update(&chunk);
        read += chunk.len() as u64;
    }
    let progress = async || -> u64 {
        let response = http.get(format!("{base}/progress")).bearer_auth(&alice.token).send().await.expect("progress");
        json_of(response).await["sent"].as_u64().expect("sent")
    };
    // Wait until the app stops making progress (every buffer on the way is full).
    let mut last = progress().await;
    let mut still = 0;
    while still < 5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = progress().await;
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    assert!(
        last < total - 8 * 1024 * 1024,
        "the proxy buffered the body: the app sent {last} of {total} bytes while the client had read {read}"
    );
    while let Some(chunk) = download.chunk().await.expect("chunk") {
        digest.update(&chunk);
        read += chunk.len() as u64;
    }
    assert_eq!(read, total);
    let mut want = Sha256::new();
    let pattern: Vec<u8> = (0..64 * 1024 * 251).map(|i| (i % 251) as u8).collect();
    let mut left = total as usize;
    while left > 0 {
        let n = left.min(pattern.len());
        want.update(&pattern[..n]);
        left -= n;
    }
    assert_eq!(digest.finalize(), want.finalize(), "the download arrived intact");
}

async fn websockets_are_spliced_to_the_target(runtime: &str) {
    let Some(server) = server(runtime).await else { return };
    let alice = Api::new(&server, "alice");
    let port = free_port();
    let id = sandbox_with_app(&alice, port, "ws-app").await;
    register(&alice, json!({"sandbox_id": id, "port": port})).await;
    let url = format!("ws://{}/preview/{id}/{port}/ws", server.addr());
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert("authorization", format!("Bearer {}", alice.token).parse().expect("header"));
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.expect("websocket through the proxy");
    assert_eq!(response.status(), 101);
    for text in ["hello", "second message", &"x".repeat(5000)] {
        socket.send(Message::text(text)).await.expect("send");
        let answer = socket.next().await.expect("an answer").expect("frame");
        assert_eq!(answer, Message::text(format!("ws-app:{text}")));
    }
    socket.send(Message::binary(vec![0u8, 1, 2, 255])).await.expect("send binary");
    let answer = socket.next().await.expect("an answer").expect("frame");
    assert_eq!(answer.into_data().as_ref(), b"ws-app:\x00\x01\x02\xff");
    socket.close(None).await.expect("close");

    // Without credentials the upgrade is refused before anything reaches the sandbox.
    let anonymous = format!("ws://{}/preview/{id}/{port}/ws", server.addr());
    match tokio_tungstenite::connect_async(anonymous).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("an anonymous upgrade went through: {:?}", other.map(|(_, r)| r.status())),
    }
}

async fn links_cookies_strangers_and_bad_input(runtime: &str) {
    let Some(server) = server(runtime).await else { return };
    let alice = Api::new(&server, "alice");
    let bob = Api::new(&server, "bob");
    let port = free_port();
    let id = sandbox_with_app(&alice, port, "private").await;
    register(&alice, json!({"sandbox_id": id, "port": port})).await;
    let prefix = format!("/preview/{id}/{port}");
    let http = client();
    let get = async |path: &str, token: Option<&str>, cookie: Option<&str>| {
        let mut request = http.get(server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, json_of(response).await)
    };

    // A stranger cannot register, list, link, unregister or reach it; nobody anonymous either.
    let (status, body) = bob.call("POST", "/preview/register", Some(json!({"sandbox_id": id, "port": port}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) =
        bob.call("POST", "/preview/register", Some(json!({"sandbox_id": id, "port": port + 1, "public": true}))).await;
    assert_eq!(status, 404, "{body}");
    let (_, listed) = bob.call("GET", "/preview/list", None).await;
    assert_eq!(listed["previews"], json!([]));
    let (status, _) = bob.call("POST", "/preview/link", Some(json!({"sandbox_id": id, "port": port}))).await;
    assert_eq!(status, 404);
    let (status, _) = bob.call("POST", "/preview/unregister", Some(json!({"sandbox_id": id, "port": port}))).await;
    assert_eq!(status, 404);
    let (status, _, body) = get(&format!("{prefix}/echo"), Some(&bob.token), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, _, body) = get(&format!("/preview/{id}/{}/echo", port + 1), Some(&bob.token), None).await;
    assert_eq!(status, 404, "an unregistered port looks the same: {body}");
    let (status, _, body) = get(&format!("{prefix}/echo"), None, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, _, _) = get(&format!("/preview/sbx_nothere/{port}/echo"), None, None).await;
    assert_eq!(status, 401, "absent and private look the same to the anonymous");
    let (_, listed) = alice.call("GET", "/preview/list", None).await;
    assert_eq!(listed["previews"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["previews"][0]["healthy"], true);

    // A signed link: the first visit sets a cookie scoped to the preview and drops the token
    // from the address; the cookie alone then works, and never reaches the app.
    let (status, link) = alice.call("POST", "/preview/link", Some(json!({"sandbox_id": id, "port": port}))).await;
    assert_eq!(status, 200, "{link}");
    let link_path = path_of(link["url"].as_str().expect("url"));
    let (status, headers, _) = get(&format!("{link_path}&keep=1").replace("/?", "/echo?keep=0&"), None, None).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], format!("{prefix}/echo?keep=0&keep=1"));
    let set_cookie = headers["set-cookie"].to_str().expect("cookie").to_string();
    assert!(set_cookie.contains(&format!("Path={prefix}/")) && set_cookie.contains("HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("pair").to_string();
    let (status, _, echo) = get(&format!("{prefix}/echo"), None, Some(&format!("{cookie}; app=2"))).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["cookie"], "app=2", "the link cookie reached the app");

    // Forged, foreign and expired links.
    let token = cookie.split_once('=').expect("value").1.to_string();
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 3.., "AAA");
    let (status, _, body) = get(&format!("{prefix}/echo"), None, Some(&format!("cloudterm_preview={forged}"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let longer = token.replacen(&format!(".{port}."), &format!(".{}.", port + 1), 1);
    let (status, _, _) =
        get(&format!("/preview/{id}/{}/echo", port + 1), None, Some(&format!("cloudterm_preview={longer}"))).await;
    assert_eq!(status, 403, "a link edited to another port");
    let (status, _, _) =
        get(&format!("/preview/{id}/{}/echo?cloudterm_preview_token={token}", port + 1), None, None).await;
    assert_eq!(status, 403, "a link used for another port");
    let (status, short) =
        alice.call("POST", "/preview/link", Some(json!({"sandbox_id": id, "port": port, "ttl_seconds": 1}))).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, body) = get(&path_of(short["url"].as_str().expect("url")), None, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "expired: {body}");
    for ttl in [0, 604_801] {
        let (status, _) = alice
            .call("POST", "/preview/link", Some(json!({"sandbox_id": id, "port": port, "ttl_seconds": ttl})))
            .await;
        assert_eq!(status, 422, "ttl {ttl}");
    }

    // Revocable: unregistering ends the link, and registering again does not revive it.
    let (status, _) = alice.call("POST", "/preview/unregister", Some(json!({"sandbox_id": id, "port": port}))).await;
    assert_eq!(status, 204);
    let (status, _, _) = get(&format!("{prefix}/echo"), None, Some(&cookie)).await;
    assert_eq!(status, 404);
    register(&alice, json!({"sandbox_id": id, "port": port})).await;
    let (status, _, body) = get(&format!("{prefix}/echo"), None, Some(&cookie)).await;
    assert_eq!((status, body["error"]["message"].as_str()), (403, Some("the preview link was revoked")), "{body}");

    // Public: anyone, without credentials.
    let preview = register(&alice, json!({"sandbox_id": id, "port": port, "public": true})).await;
    assert_eq!(preview["public"], true);
    let (status, _, echo) = get(&format!("{prefix}/echo"), None, None).await;
    assert_eq!((status, echo["name"].as_str()), (200, Some("private")));

    // Bad ports are JSON 4xx, never 500.
    for bad in ["0", "70000", "abc", "-1", "+80", "080a"] {
        let (status, _, body) = get(&format!("/preview/{id}/{bad}/x"), Some(&alice.token), None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{bad}: {body}");
    }
    for bad in [json!(0), json!(70000), json!("abc"), json!(-1), json!(null)] {
        let (status, body) =
            alice.call("POST", "/preview/register", Some(json!({"sandbox_id": id, "port": bad}))).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let (status, body) = alice
        .call("POST", "/preview/register", Some(json!({"sandbox_id": id, "port": port, "fallback_sandbox_id": id})))
        .await;
    assert_eq!(status, 422, "{body}");

    // `..` in the path stays inside the target (sent raw, as a client that does not normalise).
    for (raw, want) in [("a/../../../../me", "/me"), ("%2e%2e/%2E%2e/sandboxes", "/sandboxes"), ("./x/./y", "/x/y")] {
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.expect("connect");
        let request = format!(
            "GET {prefix}/{raw} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            server.addr(),
            alice.token
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{raw}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).expect("body");
        let echo: Value = serde_json::from_str(body).expect("the app answered");
        assert_eq!((echo["name"].as_str(), echo["path"].as_str()), (Some("private"), Some(want)), "{raw}");
    }

    // Nothing listening on a registered port: 502 with the envelope.
    let dead = free_port();
    register(&alice, json!({"sandbox_id": id, "port": dead})).await;
    let (status, _, body) = get(&format!("/preview/{id}/{dead}/"), Some(&alice.token), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("bad_gateway")), "{body}");

    // A deleted sandbox's previews are gone at once, though the proxy remembers a preview's
    // record for a second (the public one was just used, so its record is remembered).
    let (status, _, _) = get(&format!("{prefix}/echo"), None, None).await;
    assert_eq!(status, 200);
    let (status, _) = alice.call("DELETE", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _, body) = get(&format!("{prefix}/echo"), Some(&alice.token), None).await;
    assert_eq!(status, 404, "{body}");
}

on_every_runtime!(
    http_streams_headers_redirects_and_cookies,
    websockets_are_spliced_to_the_target,
    links_cookies_strangers_and_bad_input
);

/// A fallback on the same port needs a network of its own per sandbox: linux only.
#[tokio::test]
async fn a_failing_primary_promotes_its_fallback_and_gets_it_back() {
    let Some(server) = server("linux").await else { return };
    let alice = Api::new(&server, "alice");
    let port = 8080;
    let primary = sandbox_with_app(&alice, port, "primary").await;
    let fallback = sandbox_with_app(&alice, port, "fallback").await;
    let bob = Api::new(&server, "bob");
    let bobs = bob.create(json!({})).await["id"].as_str().expect("id").to_string();
    let (status, _) = alice
        .call(
            "POST",
            "/preview/register",
            Some(json!({"sandbox_id": primary, "port": port, "fallback_sandbox_id": bobs})),
        )
        .await;
    assert_eq!(status, 404, "someone else's sandbox as the fallback");
    let preview = register(&alice, json!({"sandbox_id": primary, "port": port, "fallback_sandbox_id": fallback})).await;
    assert_eq!((preview["healthy"].as_bool(), preview["fallback_healthy"].as_bool()), (Some(true), Some(true)));
    assert_eq!(preview["active_sandbox_id"], primary);
    let whoami = format!("/preview/{primary}/{port}/whoami");
    assert_eq!(alice.text(&whoami).await, "primary");

    // The primary's app dies: the next request cannot connect and goes to the fallback.
    let (_, jobs) = alice.call("GET", &format!("/sandboxes/{primary}/background"), None).await;
    let job = jobs["jobs"][0]["job_id"].as_str().expect("job").to_string();
    let (status, _) = alice.call("DELETE", &format!("/sandboxes/{primary}/background/{job}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(alice.text(&whoami).await, "fallback");
    let (_, listed) = alice.call("GET", "/preview/list", None).await;
    let entry = &listed["previews"][0];
    assert_eq!(
        (entry["promoted"].as_bool(), entry["active_sandbox_id"].as_str()),
        (Some(true), Some(&*fallback)),
        "{entry}"
    );
    assert_eq!(entry["healthy"], false);
    let metrics = reqwest::get(server.url("/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("preview_fallback_promotions_total 1"), "{metrics}");

    // Back up: the health check gives the primary its requests back.
    start_app(&alice, &primary, port, "primary").await;
    eventually("the primary is healthy again", Duration::from_secs(20), async || {
        let (_, listed) = alice.call("GET", "/preview/list", None).await;
        listed["previews"][0]["healthy"] == true && listed["previews"][0]["promoted"] == false
    })
    .await;
    assert_eq!(alice.text(&whoami).await, "primary");

    // The health check alone promotes, too (no request needed).
    let (_, jobs) = alice.call("GET", &format!("/sandboxes/{primary}/background"), None).await;
    let running =
        jobs["jobs"].as_array().expect("jobs").iter().find(|j| j["state"] == "running").cloned().expect("job");
    let job = running["job_id"].as_str().expect("job");
    alice.call("DELETE", &format!("/sandboxes/{primary}/background/{job}"), None).await;
    eventually("the health check promotes the fallback", Duration::from_secs(20), async || {
        let (_, listed) = alice.call("GET", "/preview/list", None).await;
        listed["previews"][0]["promoted"] == true
    })
    .await;
    let metrics = reqwest::get(server.url("/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("preview_fallback_promotions_total 2"), "{metrics}");
    assert_eq!(alice.text(&whoami).await, "fallback");
}

/// A paused sandbox stays paused through health checks (counted healthy, not woken) and wakes
/// for the first request through its preview.
#[tokio::test]
async fn a_paused_sandbox_wakes_for_a_request_through_its_preview() {
    let Some(server) = server("linux").await else { return };
    let alice = Api::new(&server, "alice");
    let port = 8080;
    let id = sandbox_with_app(&alice, port, "sleeper").await;
    register(&alice, json!({"sandbox_id": id, "port": port})).await;
    let (status, paused) = alice.call("POST", &format!("/sandboxes/{id}/pause"), None).await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")), "{paused}");
    // Health checks run every second here: a few pass without waking it or failing it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(alice.call("GET", &format!("/sandboxes/{id}"), None).await.1["state"], "paused");
    let (_, listed) = alice.call("GET", "/preview/list", None).await;
    assert_eq!(listed["previews"][0]["healthy"], true, "{listed}");
    assert_eq!(alice.text(&format!("/preview/{id}/{port}/whoami")).await, "sleeper");
    assert_eq!(alice.call("GET", &format!("/sandboxes/{id}"), None).await.1["state"], "running");
}
