//! The terminal WebSocket end to end: the real server, the real agent, a real shell in a PTY,
//! and a real WebSocket client.

use std::time::{Duration, Instant};

use cloudterm_test_support::TestServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::sandboxes::Api;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Long enough for a shell to start and answer on a loaded CI machine.
const WAIT: Duration = Duration::from_secs(30);

/// A curses program that fills the screen with a layout checkable at any size.
const FULL_SCREEN: &str = include_str!("fixtures/fullscreen.py");

/// What the server sent.
#[derive(Debug)]
enum Frame {
    Bytes(Vec<u8>),
    Control(Value),
    Closed,
}

/// `ws://…/sandboxes/{id}/terminal?{query}` with the token in the header (or not: `None`).
async fn open(server: &TestServer, token: Option<&str>, id: &str, query: &str) -> Result<Ws, (u16, Value)> {
    let url = format!("ws://{}/sandboxes/{id}/terminal?{query}", server.addr());
    let mut request = url.into_client_request().expect("request");
    if let Some(token) = token {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(err) => panic!("connecting to the terminal: {err}"),
    }
}

async fn attach(server: &TestServer, api: &Api, id: &str, query: &str) -> Ws {
    open(server, Some(&api.token), id, query).await.unwrap_or_else(|(status, body)| panic!("attach: {status} {body}"))
}

async fn frame(ws: &mut Ws) -> Frame {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Binary(bytes))) => return Frame::Bytes(bytes.to_vec()),
            Some(Ok(Message::Text(text))) => {
                return Frame::Control(serde_json::from_str(text.as_str()).expect("control frames are JSON"))
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Frame::Closed,
            Some(Ok(_)) => {}
        }
    }
}

/// The first frame: a repaint of the session's screen.
async fn repaint(ws: &mut Ws) -> String {
    match frame(ws).await {
        Frame::Bytes(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            assert!(text.contains("\x1b[H\x1b[J"), "the first frame is not a repaint: {text:?}");
            text
        }
        other => panic!("expected a repaint, got {other:?}"),
    }
}

/// Reads terminal output until `needle` shows up; returns all of it.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        match frame(ws).await {
            Frame::Bytes(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("waiting for {needle:?} got {other:?} after {seen:?}"),
        }
    }
    seen
}

async fn type_in(ws: &mut Ws, text: &str) {
    ws.send(Message::Binary(text.as_bytes().to_vec().into())).await.expect("send input");
}

async fn control(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into())).await.expect("send control");
}

/// Runs `echo <tag>:$$:end` and returns the shell's pid, which tells one shell from another
/// (the typed command shows `$$`, only the output shows digits).
async fn shell_pid(ws: &mut Ws, tag: &str) -> String {
    type_in(ws, &format!("echo {tag}:$$:end\r")).await;
    let mut seen = String::new();
    loop {
        for (at, _) in seen.match_indices(&format!("{tag}:")) {
            let rest = &seen[at + tag.len() + 1..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty() && rest[digits.len()..].starts_with(":end") {
                return digits;
            }
        }
        match frame(ws).await {
            Frame::Bytes(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("waiting for the pid got {other:?} after {seen:?}"),
        }
    }
}

/// Keeps the last few hundred bytes of a flood, enough to find a marker split across frames.
fn keep_tail(text: &mut String) {
    if text.len() > 400 {
        let cut = (text.len() - 200..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        text.drain(..cut);
    }
}

async fn metrics(server: &TestServer) -> String {
    reqwest::get(server.url("/metrics")).await.expect("metrics").text().await.expect("text")
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn process_alive(api: &Api, id: &str, pid: &str) -> bool {
    api.sh(id, &format!("kill -0 {pid} 2>/dev/null && echo alive || echo gone")).await["stdout"]
        .as_str()
        .is_some_and(|out| out.contains("alive"))
}

async fn a_shell_runs_resizes_and_reports_its_exit_code(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = api.create(json!({})).await["id"].as_str().expect("id").to_string();
    let mut ws = attach(&server, &api, &id, "cols=80&rows=24").await;
    repaint(&mut ws).await;
    type_in(&mut ws, "echo hi-$((6*7))\r").await;
    read_until(&mut ws, "hi-42").await;
    control(&mut ws, json!({"type": "resize", "cols": 100, "rows": 30})).await;
    type_in(&mut ws, "stty size\r").await;
    read_until(&mut ws, "30 100").await;
    // Garbage control frames are answered, and the connection goes on.
    for garbage in [json!("not an object"), json!({"type": "resize", "cols": 0, "rows": 5}), json!({"type": "nope"})] {
        control(&mut ws, garbage).await;
        loop {
            match frame(&mut ws).await {
                Frame::Control(error) => {
                    assert_eq!(error["type"], "error", "{error}");
                    assert_eq!(error["code"], "bad_control", "{error}");
                    break;
                }
                Frame::Bytes(_) => {}
                Frame::Closed => panic!("a bad control frame closed the connection"),
            }
        }
    }
    ws.send(Message::Text("{{{".into())).await.expect("send");
    type_in(&mut ws, "echo still-$((1+1))\r").await;
    let mut seen = String::new();
    while !seen.contains("still-2") {
        match frame(&mut ws).await {
            Frame::Bytes(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Frame::Control(error) => assert_eq!(error["code"], "bad_control"),
            Frame::Closed => panic!("closed"),
        }
    }
    type_in(&mut ws, "exit 3\r").await;
    loop {
        match frame(&mut ws).await {
            Frame::Bytes(_) => {}
            Frame::Control(exit) => {
                assert_eq!(exit, json!({"type": "exit", "code": 3}));
                break;
            }
            Frame::Closed => panic!("closed without an exit message"),
        }
    }
    assert!(matches!(frame(&mut ws).await, Frame::Closed), "the server closes after the exit");
}

async fn a_named_session_survives_a_disconnect_and_is_repainted_at_the_new_size(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = api.create(json!({})).await["id"].as_str().expect("id").to_string();
    let mut ws = attach(&server, &api, &id, "session=main&cols=80&rows=24").await;
    repaint(&mut ws).await;
    let pid = shell_pid(&mut ws, "before").await;
    type_in(&mut ws, "echo marker-$((20+22))\r").await;
    read_until(&mut ws, "marker-42").await;
    ws.close(None).await.expect("close");
    drop(ws);

    let mut ws = attach(&server, &api, &id, "session=main&cols=50&rows=12").await;
    let screen = repaint(&mut ws).await;
    assert!(screen.contains("marker-42"), "the repaint lacks the earlier output: {screen:?}");
    assert_eq!(screen.matches("marker-42").count(), 1, "the repaint holds the screen once: {screen:?}");
    // No raw replay follows the repaint: the next output is the new command's.
    type_in(&mut ws, "stty size\r").await;
    let after = read_until(&mut ws, "12 50").await;
    assert!(!after.contains("marker-42"), "old output was replayed: {after:?}");
    assert_eq!(shell_pid(&mut ws, "after").await, pid, "the same shell kept running");
}

/// A real full-screen program (curses, `fixtures/fullscreen.py`) drawn at 80x24, its session
/// re-attached at 50x12: the first frame alone must show the program's own 50x12 layout, not
/// its 80x24 one cropped (which is all `vt100` holds until the program redraws on SIGWINCH).
async fn a_full_screen_program_is_repainted_at_the_new_size_on_reattach(runtime: &str) {
    // A bound far above a redraw's time: the repaint must be released by the redraw (checked
    // below), and a loaded machine must not make the test fail by hitting the bound. A curses
    // program writes twice after SIGWINCH (curses' refresh of the old screen, then the
    // program's new layout): the quiet time must outlast the gap between them, which on a
    // machine at load 10 can pass the default 50 ms (seen once in five runs).
    let redraw_wait = Duration::from_secs(5);
    let Some(server) = TestServer::start_runtime(runtime, |config| {
        config.terminal.redraw_wait_ms = redraw_wait.as_millis() as u64;
        config.terminal.redraw_quiet_ms = 500;
    })
    .await
    else {
        return;
    };
    let api = Api::new(&server, "alice");
    let id = api.create(json!({})).await["id"].as_str().expect("id").to_string();
    let check =
        api.sh(&id, "python3 -c \"import curses; curses.setupterm('xterm-256color'); print('curses-ok')\"").await;
    assert!(
        check["stdout"].as_str().is_some_and(|out| out.contains("curses-ok")),
        "the {runtime} sandbox needs python3 with curses and xterm-256color's terminfo: {check}"
    );
    let (status, body) = api
        .call("POST", &format!("/sandboxes/{id}/files"), Some(json!({"path": "fullscreen.py", "content": FULL_SCREEN})))
        .await;
    assert!((200..300).contains(&status), "writing the program: {status} {body}");
    let mut ws = attach(&server, &api, &id, "session=vim&cols=80&rows=24").await;
    repaint(&mut ws).await;
    type_in(&mut ws, "python3 fullscreen.py\r").await;
    read_until(&mut ws, "STATUS 80x24").await;
    ws.close(None).await.expect("close");
    drop(ws);

    let started = Instant::now();
    let mut ws = attach(&server, &api, &id, "session=vim&cols=50&rows=12").await;
    let first = match frame(&mut ws).await {
        Frame::Bytes(bytes) => bytes,
        other => panic!("expected a repaint, got {other:?}"),
    };
    let waited = started.elapsed();
    assert!(first.starts_with(b"\x1b[?1049h"), "the program is repainted on the alternate screen");
    let mut screen = vt100::Parser::new(
        std::num::NonZeroU16::new(12).expect("rows"),
        std::num::NonZeroU16::new(50).expect("cols"),
        0,
    );
    screen.process(&first);
    let rows: Vec<String> = screen.screen().rows(0, 50).collect();
    let shown = rows.join("\n");
    assert_eq!(rows.len(), 12, "{shown}");
    assert_eq!(rows[0], "=".repeat(50), "the top rule spans the new width:\n{shown}");
    for (i, row) in rows.iter().enumerate().take(11).skip(1) {
        let expected = format!("{:.<49}|", format!("row {:02}", i + 1));
        assert_eq!(*row, expected, "row {i} is the program's 50-column layout:\n{shown}");
    }
    assert_eq!(rows[11], "STATUS 50x12", "the status line is on the last row:\n{shown}");
    assert!(!shown.contains("80x24"), "80x24 leftovers:\n{shown}");
    assert!(waited < redraw_wait, "the repaint waited for the bound ({waited:?}), not for the redraw");
    // The program still runs and answers this viewer: a key makes it redraw, `q` ends it.
    type_in(&mut ws, "q").await;
    type_in(&mut ws, "echo back-$((40+2))\r").await;
    read_until(&mut ws, "back-42").await;
}

async fn viewers_share_a_session_and_read_only_ones_cannot_type(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = api.create(json!({})).await["id"].as_str().expect("id").to_string();
    let mut writer = attach(&server, &api, &id, "session=pair&cols=80&rows=24").await;
    repaint(&mut writer).await;
    let mut reader = attach(&server, &api, &id, "session=pair&mode=read&cols=40&rows=10").await;
    repaint(&mut reader).await;
    type_in(&mut writer, "echo shared-$((2*3))\r").await;
    read_until(&mut writer, "shared-6").await;
    read_until(&mut reader, "shared-6").await;
    type_in(&mut reader, "echo sneaky-$((3*3))\r").await;
    control(&mut reader, json!({"type": "resize", "cols": 20, "rows": 5})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    type_in(&mut writer, "stty size; echo probe-$((4*4))\r").await;
    let seen = read_until(&mut writer, "probe-16").await;
    assert!(seen.contains("24 80"), "the read-only viewer resized the terminal: {seen:?}");
    assert!(!seen.contains("sneaky"), "the read-only viewer's input reached the shell: {seen:?}");
    read_until(&mut reader, "probe-16").await;
}

/// A `read` grantee of the sandbox's workspace who asks for no `mode` gets a read-only view:
/// they cannot start a shell (409), they watch a running one, and nothing they type or resize
/// reaches it. A `write` grantee without `mode` types.
async fn a_reader_grantee_without_a_mode_watches_and_cannot_type(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    let rita = Api::new(&server, "rita");
    let wendy = Api::new(&server, "wendy");
    let (status, ws) = alice.call("POST", "/workspaces", Some(json!({"name": "shown"}))).await;
    assert_eq!(status, 201, "{ws}");
    let ws = ws["id"].as_str().expect("id").to_string();
    for (agent, permission) in [("rita", "read"), ("wendy", "write")] {
        let grant = json!({"agent_id": agent, "permission": permission});
        let (status, body) = alice.call("POST", &format!("/workspaces/{ws}/share"), Some(grant)).await;
        assert_eq!(status, 200, "{body}");
    }
    let id = alice.create(json!({"workspace_id": ws})).await["id"].as_str().expect("id").to_string();
    let (status, body) = open(&server, Some(&rita.token), &id, "session=demo").await.expect_err("no shell for her");
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");
    let mut owner = attach(&server, &alice, &id, "session=demo&cols=80&rows=24").await;
    repaint(&mut owner).await;
    let mut viewer = attach(&server, &rita, &id, "session=demo&cols=40&rows=10").await;
    repaint(&mut viewer).await;
    type_in(&mut owner, "echo shown-$((2*5))\r").await;
    read_until(&mut viewer, "shown-10").await;
    type_in(&mut viewer, "touch reader-was-here; echo typed-$((3*7))\r").await;
    control(&mut viewer, json!({"type": "resize", "cols": 20, "rows": 5})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    type_in(&mut owner, "stty size; ls; echo probe-$((4*4))\r").await;
    let seen = read_until(&mut owner, "probe-16").await;
    assert!(!seen.contains("typed-21"), "the reader's input reached the shell: {seen:?}");
    assert!(!seen.contains("reader-was-here"), "the reader's command ran: {seen:?}");
    assert!(seen.contains("24 80"), "the reader resized the terminal: {seen:?}");
    let listing = alice.sh(&id, "ls reader-was-here 2>&1 || true").await;
    assert!(listing["stdout"].as_str().is_some_and(|out| out.contains("No such file")), "{listing}");
    // A writer without a mode gets the writer's default: what she types runs.
    let mut writer = attach(&server, &wendy, &id, "session=demo").await;
    repaint(&mut writer).await;
    type_in(&mut writer, "echo writer-$((5*5))\r").await;
    read_until(&mut owner, "writer-25").await;
    drop((owner, viewer, writer));
    let (status, _) = alice.call("DELETE", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(status, 204);
}

/// An open terminal does not outlive a revocation: the moment a writer is revoked her
/// connection gets `access_revoked` and closes, and what she typed after does not run; the
/// session keeps running for the owner. A writer lowered to `read` is cut off too.
#[tokio::test]
async fn revoking_a_collaborator_closes_her_open_terminal() {
    let server = TestServer::start().await;
    let alice = Api::new(&server, "alice");
    let wendy = Api::new(&server, "wendy");
    let rita = Api::new(&server, "rita");
    let (status, ws) = alice.call("POST", "/workspaces", Some(json!({"name": "cut"}))).await;
    assert_eq!(status, 201, "{ws}");
    let ws = ws["id"].as_str().expect("id").to_string();
    for (agent, permission) in [("wendy", "write"), ("rita", "write")] {
        let grant = json!({"agent_id": agent, "permission": permission});
        let (status, body) = alice.call("POST", &format!("/workspaces/{ws}/share"), Some(grant)).await;
        assert_eq!(status, 200, "{body}");
    }
    let id = alice.create(json!({"workspace_id": ws})).await["id"].as_str().expect("id").to_string();
    let mut owner = attach(&server, &alice, &id, "session=team").await;
    repaint(&mut owner).await;
    let mut revoked = attach(&server, &wendy, &id, "session=team").await;
    repaint(&mut revoked).await;
    let mut lowered = attach(&server, &rita, &id, "session=team").await;
    repaint(&mut lowered).await;
    type_in(&mut revoked, "echo before-$((6*7))\r").await;
    read_until(&mut owner, "before-42").await;

    let (status, _) = alice.call("DELETE", &format!("/workspaces/{ws}/share/wendy"), None).await;
    assert_eq!(status, 204);
    let (status, _) = alice
        .call("POST", &format!("/workspaces/{ws}/share"), Some(json!({"agent_id": "rita", "permission": "read"})))
        .await;
    assert_eq!(status, 200);
    for viewer in [&mut revoked, &mut lowered] {
        let closing = loop {
            match frame(viewer).await {
                Frame::Bytes(_) => {}
                other => break other,
            }
        };
        match closing {
            Frame::Control(message) => assert_eq!(message["code"], "access_revoked", "{message}"),
            other => panic!("expected access_revoked, got {other:?}"),
        }
        // Whatever she still sends goes nowhere.
        let _ = viewer.send(Message::Binary(b"echo after-$((7*7))\r".to_vec().into())).await;
    }
    type_in(&mut owner, "echo probe-$((4*4))\r").await;
    let seen = read_until(&mut owner, "probe-16").await;
    assert!(!seen.contains("after-49"), "input after the revocation reached the shell: {seen:?}");
    // Lowered to read, rita may still watch.
    let mut watching = attach(&server, &rita, &id, "session=team").await;
    repaint(&mut watching).await;
    drop((owner, revoked, lowered, watching));
    let (status, _) = alice.call("DELETE", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(status, 204);
}

async fn sessions_end_when_unwatched_and_metrics_count_them(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |config| config.terminal.idle_session_seconds = 1).await
    else {
        return;
    };
    let api = Api::new(&server, "alice");
    let id = api.create(json!({})).await["id"].as_str().expect("id").to_string();
    let mut named = attach(&server, &api, &id, "session=short").await;
    repaint(&mut named).await;
    let mut unnamed = attach(&server, &api, &id, "").await;
    repaint(&mut unnamed).await;
    let named_pid = shell_pid(&mut named, "named").await;
    let unnamed_pid = shell_pid(&mut unnamed, "unnamed").await;
    assert_ne!(named_pid, unnamed_pid, "an unnamed session is a session of its own");
    let text = metrics(&server).await;
    assert!(text.contains("terminal_sessions_active 2"), "{text}");
    assert!(text.contains("terminal_connections_active 2"), "{text}");
    drop(unnamed);
    eventually("the unnamed session's shell ends with its viewer", async || {
        !process_alive(&api, &id, &unnamed_pid).await
    })
    .await;
    assert!(process_alive(&api, &id, &named_pid).await, "the named session must wait for its idle time");
    drop(named);
    eventually("the named session ends after its idle time", async || !process_alive(&api, &id, &named_pid).await)
        .await;
    eventually("the gauges go back to zero", async || {
        let text = metrics(&server).await;
        text.contains("terminal_sessions_active 0") && text.contains("terminal_connections_active 0")
    })
    .await;
    let mut again = attach(&server, &api, &id, "session=short").await;
    repaint(&mut again).await;
    assert_ne!(shell_pid(&mut again, "again").await, named_pid, "the name starts a new shell");
}

on_every_runtime!(
    a_shell_runs_resizes_and_reports_its_exit_code,
    a_named_session_survives_a_disconnect_and_is_repainted_at_the_new_size,
    a_full_screen_program_is_repainted_at_the_new_size_on_reattach,
    viewers_share_a_session_and_read_only_ones_cannot_type,
    a_reader_grantee_without_a_mode_watches_and_cannot_type,
    sessions_end_when_unwatched_and_metrics_count_them,
);

#[tokio::test]
async fn access_and_input_are_checked_before_the_upgrade() {
    let server = TestServer::start().await;
    let alice = Api::new(&server, "alice");
    let bob = Api::new(&server, "bob");
    let id = alice.create(json!({})).await["id"].as_str().expect("id").to_string();
    let refused = |result: Result<Ws, (u16, Value)>| result.expect_err("refused before the upgrade");

    let (status, body) = refused(open(&server, Some(&bob.token), &id, "").await);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = refused(open(&server, Some(&alice.token), "sbx_nope", "").await);
    assert_eq!(status, 404, "{body}");
    let (status, body) = refused(open(&server, None, &id, "").await);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, body) = refused(open(&server, None, &id, "token=not.a.jwt").await);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, _) = refused(open(&server, None, &id, &format!("token={}", bob.token)).await);
    assert_eq!(status, 404, "a query token is checked like a header token");
    for (query, expected) in [
        ("cols=0", 422),
        ("rows=1001", 422),
        ("cols=abc", 400),
        ("rows=-1", 400),
        ("session=bad%20name", 422),
        ("session=", 422),
        (&format!("session={}", "x".repeat(65)), 422),
        ("mode=admin", 422),
    ] {
        let (status, body) = refused(open(&server, Some(&alice.token), &id, query).await);
        assert_eq!(status, expected, "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{query}: the JSON envelope: {body}");
    }
    // Not a WebSocket: the envelope, not a hang.
    let response = alice.raw(reqwest::Method::GET, &format!("/sandboxes/{id}/terminal")).send().await.expect("get");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("envelope");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");

    // Browsers send the token in the query.
    let mut ws = open(&server, None, &id, &format!("token={}", alice.token)).await.expect("?token= works");
    repaint(&mut ws).await;
    type_in(&mut ws, "echo query-$((5+5))\r").await;
    read_until(&mut ws, "query-10").await;
}

/// A viewer whose socket is never read: the shell floods, the other viewer still gets
/// everything (or a repaint when it falls behind, the documented policy), the stalled one is
/// resynchronised, and the server's queue stays bounded.
#[tokio::test]
async fn a_viewer_that_never_reads_does_not_hold_back_the_others() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "alice");
    let id = api.create(json!({})).await["id"].as_str().expect("id").to_string();
    let mut fast = attach(&server, &api, &id, "session=flood&cols=80&rows=24").await;
    repaint(&mut fast).await;
    // A tiny receive buffer, so the kernel soaks up little of what the server sends.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    let stream = socket.connect(server.addr()).await.expect("connect");
    let url = format!("ws://{}/sandboxes/{id}/terminal?session=flood", server.addr());
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert("authorization", format!("Bearer {}", api.token).parse().expect("header"));
    let (mut slow, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.expect("slow");
    repaint(&mut slow).await;

    const FLOOD: usize = 12_000_000;
    let started = Instant::now();
    type_in(&mut fast, &format!("yes | head -c {FLOOD}; echo flood-$((5*5))-done\r")).await;
    let mut received = 0usize;
    let mut repaints = 0usize;
    let mut tail = String::new();
    while !tail.contains("flood-25-done") {
        match frame(&mut fast).await {
            Frame::Bytes(bytes) => {
                if bytes.starts_with(b"\x1b[?1049") {
                    repaints += 1;
                } else {
                    received += bytes.len();
                }
                tail.push_str(&String::from_utf8_lossy(&bytes));
                keep_tail(&mut tail);
            }
            other => panic!("the fast viewer got {other:?}"),
        }
    }
    assert!(
        repaints > 0 || received >= FLOOD,
        "the fast viewer got {received} of {FLOOD} bytes and no repaint in {:?}",
        started.elapsed()
    );
    // Once it reads again, the stalled viewer catches up through a repaint, not the backlog.
    // (Its fall-behind is noticed when its blocked send completes and it takes the next chunk,
    // so the resync counter is read after it caught up: before, it depends on timing.)
    let mut caught_up = String::new();
    let mut slow_bytes = 0usize;
    while !caught_up.contains("flood-25-done") {
        match frame(&mut slow).await {
            Frame::Bytes(bytes) => {
                slow_bytes += bytes.len();
                caught_up.push_str(&String::from_utf8_lossy(&bytes));
                keep_tail(&mut caught_up);
            }
            other => panic!("the slow viewer got {other:?}"),
        }
    }
    assert!(slow_bytes < FLOOD, "the slow viewer was sent the whole backlog ({slow_bytes} bytes)");
    let text = metrics(&server).await;
    let resyncs: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("terminal_viewer_resyncs_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the resync counter");
    assert!(resyncs >= 1, "the stalled viewer was never resynchronised: {text}");
    eprintln!(
        "flood: {FLOOD} bytes in {:?}; fast viewer {received} bytes + {repaints} repaints; slow viewer {slow_bytes} bytes; {resyncs} resyncs",
        started.elapsed()
    );
}

/// A program that never reads its input, and a paste far larger than every buffer on the way
/// (the client's and the server's sockets, the session's input queue, the agent's socket, the
/// PTY): the paste waits, and the output and the pings keep coming meanwhile, past the time a
/// silent client is dropped (the reader waits on the program, not on the client).
#[tokio::test]
async fn input_the_program_does_not_read_never_stops_output_or_pings() {
    let server = TestServer::start_with(|config| config.terminal.ping_seconds = 1).await;
    let api = Api::new(&server, "alice");
    let id = api.create(json!({})).await["id"].as_str().expect("id").to_string();
    let mut ws = attach(&server, &api, &id, "cols=80&rows=24").await;
    repaint(&mut ws).await;
    // Raw mode without echo: the PTY neither answers the paste nor drops it; it fills up.
    type_in(&mut ws, "stty raw -echo; i=0; while :; do i=$((i+1)); echo tick-$i-; sleep 0.2; done\r").await;
    read_until(&mut ws, "tick-2-").await;
    let (mut sink, mut stream) = ws.split();
    const PASTE_MESSAGES: usize = 32;
    let paste = tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
        for _ in 0..PASTE_MESSAGES {
            if sink.send(Message::Binary(chunk.clone())).await.is_err() {
                break;
            }
        }
        sink
    });
    // Ticks are numbered; find the highest one seen, across frame boundaries.
    let highest = |text: &str| {
        text.match_indices("tick-")
            .filter_map(|(at, _)| {
                let rest = &text[at + 5..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                rest[digits.len()..].starts_with('-').then(|| digits.parse::<u64>().ok()).flatten()
            })
            .max()
    };
    let mut tail = String::new();
    let mut first_tick = None;
    let mut last_tick = 0;
    let mut pings = 0;
    let deadline = Instant::now() + WAIT;
    // Five pings (five seconds at one a second) is past the three a silent client gets.
    while pings < 5 || first_tick.is_none_or(|first| last_tick < first + 10) {
        assert!(
            Instant::now() < deadline,
            "output or pings stopped while the paste waited: {pings} pings, ticks {first_tick:?}..{last_tick}"
        );
        let message = tokio::time::timeout(WAIT, stream.next()).await.expect("a frame in time");
        match message {
            Some(Ok(Message::Binary(bytes))) => {
                tail.push_str(&String::from_utf8_lossy(&bytes));
                if let Some(tick) = highest(&tail) {
                    first_tick.get_or_insert(tick);
                    last_tick = last_tick.max(tick);
                }
                keep_tail(&mut tail);
            }
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(err)) => panic!("the connection broke: {err}"),
            None => panic!("the server closed the connection"),
        }
    }
    assert!(
        !paste.is_finished(),
        "the whole {PASTE_MESSAGES} MiB paste was taken, so nothing waited: the test proves nothing"
    );
    paste.abort();
}

/// Collects what the server logs, to look for secrets in it.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_query_token_never_reaches_the_log() {
    use tower::ServiceExt;
    let server = TestServer::start().await;
    let token = server.token("alice");
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let app = cloudterm_server::router::app(server.state(), &cloudterm_server::Service::ALL);
    // Other tests' servers may have registered the request span while no subscriber wanted it,
    // racing this one's registration: make sure every callsite exists, then recompute.
    let warm_up = axum::http::Request::get("/health").body(axum::body::Body::empty()).expect("request");
    app.clone().oneshot(warm_up).await.expect("response");
    tracing::callsite::rebuild_interest_cache();
    captured.0.lock().expect("log buffer").clear();
    for query_token in [token.as_str(), "not.a.valid-token"] {
        let request = axum::http::Request::get(format!("/sandboxes/sbx_nope/terminal?cols=80&token={query_token}"))
            .body(axum::body::Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        assert!(matches!(response.status().as_u16(), 401 | 404), "{}", response.status());
    }
    let log = String::from_utf8(captured.0.lock().expect("log buffer").clone()).expect("utf-8 log");
    assert!(log.contains("/sandboxes/sbx_nope/terminal"), "the requests were not logged at all: {log}");
    assert!(!log.contains(&token) && !log.contains("not.a.valid-token"), "a token was logged: {log}");
    assert!(!log.contains("token="), "a query string was logged: {log}");
}

#[tokio::test]
async fn a_server_shutdown_tells_viewers_and_ends_their_shells() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "alice");
    let id = api.create(json!({})).await["id"].as_str().expect("id").to_string();
    let mut ws = attach(&server, &api, &id, "session=main").await;
    repaint(&mut ws).await;
    let pid = shell_pid(&mut ws, "pid").await;
    let stopping = tokio::spawn(server.stop());
    loop {
        match frame(&mut ws).await {
            Frame::Bytes(_) => {}
            Frame::Control(error) => {
                assert_eq!(error["code"], "shutting_down", "{error}");
                break;
            }
            Frame::Closed => panic!("closed without saying why"),
        }
    }
    let data_dir = stopping.await.expect("stop task");
    // The process runtime's sandboxes are host processes: the shell must be gone.
    let proc = format!("/proc/{pid}");
    let deadline = Instant::now() + WAIT;
    while std::path::Path::new(&proc).exists() {
        assert!(Instant::now() < deadline, "the shell {pid} outlived its session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful stop leaves sandboxes running; a server on the same data re-attaches them, and
    // dropping it stops them.
    drop(TestServer::restart_on(data_dir, |_| {}).await);
}
