//! Sessions against an in-memory stand-in for the agent: a duplex pipe speaking the PTY frames.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cloudterm_agent_protocol::frame::{self, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::*;

const WAIT: Duration = Duration::from_secs(5);

/// The agent's end of a PTY stream.
struct FakeAgent {
    io: DuplexStream,
    decoder: FrameDecoder,
}

impl FakeAgent {
    async fn output(&mut self, bytes: &[u8]) {
        self.io.write_all(&frame::encode(frame::KIND_DATA, bytes)).await.expect("agent writes");
    }

    async fn exit(&mut self, code: i32) {
        let json = format!("{{\"code\":{code}}}");
        self.io.write_all(&frame::encode(frame::KIND_EXIT, json.as_bytes())).await.expect("agent writes");
    }

    /// The next frame from the session; `None` once the session closed the stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("good frames") {
                return Some(frame);
            }
            let n = tokio::time::timeout(WAIT, self.io.read(&mut buf)).await.expect("a frame in time").ok()?;
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Waits until the session closed the stream (which makes the real agent kill the tree).
    async fn closed(&mut self) {
        while self.frame().await.is_some() {}
    }
}

/// An opener that hands the session one end of a fresh pipe, and the test the other.
fn pipe() -> (Opened, FakeAgent) {
    let (session, agent) = tokio::io::duplex(1 << 20);
    let opened = Opened { stream: Box::new(session), keepalive: Box::new(()) };
    (opened, FakeAgent { io: agent, decoder: FrameDecoder::default() })
}

#[derive(Default)]
struct Counts {
    sessions: AtomicI64,
    viewers: AtomicI64,
    resyncs: AtomicI64,
}

impl Observer for Counts {
    fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
    }
    fn session_ended(&self) {
        self.sessions.fetch_sub(1, Ordering::SeqCst);
    }
    fn viewer_attached(&self) {
        self.viewers.fetch_add(1, Ordering::SeqCst);
    }
    fn viewer_detached(&self) {
        self.viewers.fetch_sub(1, Ordering::SeqCst);
    }
    fn viewer_resynced(&self) {
        self.resyncs.fetch_add(1, Ordering::SeqCst);
    }
}

fn hub_with(settings: TerminalSettings) -> (TerminalHub, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    (TerminalHub::new(settings, counts.clone()), counts)
}

fn hub() -> (TerminalHub, Arc<Counts>) {
    hub_with(TerminalSettings::default())
}

fn request(session: Option<&str>, cols: u16, rows: u16) -> AttachRequest {
    AttachRequest { sandbox_id: "sbx_1".into(), session: session.map(String::from), cols, rows, read_only: false }
}

/// Attaches with a new pipe; the returned agent is `None` when an existing session was joined.
async fn attach(hub: &TerminalHub, request: AttachRequest) -> (Viewer, Option<FakeAgent>) {
    let (opened, agent) = pipe();
    let mut used = false;
    let viewer = hub
        .attach(request, |_, _| {
            used = true;
            async { Ok::<_, String>(opened) }
        })
        .await
        .expect("attach");
    (viewer, used.then_some(agent))
}

async fn next(viewer: &mut Viewer) -> ViewerEvent {
    tokio::time::timeout(WAIT, viewer.next()).await.expect("an event in time")
}

/// Reads output until `needle` shows up.
async fn output_until(viewer: &mut Viewer, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        match next(viewer).await {
            ViewerEvent::Output(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("expected output, got {other:?} after {seen:?}"),
        }
    }
    seen
}

fn screen_text(repaint: &[u8], cols: u16, rows: u16) -> String {
    let mut parser = vt100::Parser::new(
        std::num::NonZeroU16::new(rows).expect("rows"),
        std::num::NonZeroU16::new(cols).expect("cols"),
        0,
    );
    parser.process(repaint);
    parser.screen().contents()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn output_input_resize_and_exit() {
    let (hub, counts) = hub();
    let (mut viewer, agent) = attach(&hub, request(None, 80, 24)).await;
    let mut agent = agent.expect("a new session");
    assert!(matches!(next(&mut viewer).await, ViewerEvent::Repaint(_)), "a viewer starts with a repaint");
    agent.output(b"$ ").await;
    assert_eq!(output_until(&mut viewer, "$ ").await, "$ ");
    viewer.input(Bytes::from_static(b"ls\r")).await;
    assert_eq!(agent.frame().await, Some((frame::KIND_DATA, b"ls\r".to_vec())));
    viewer.resize(100, 30).expect("resize");
    assert_eq!(agent.frame().await, Some((frame::KIND_RESIZE, br#"{"cols":100,"rows":30}"#.to_vec())));
    assert!(viewer.resize(0, 30).is_err());
    agent.output(b"bye\r\n").await;
    agent.exit(3).await;
    assert_eq!(output_until(&mut viewer, "bye").await, "bye\r\n");
    assert_eq!(next(&mut viewer).await, ViewerEvent::Ended(End::Exited(3)));
    assert_eq!(next(&mut viewer).await, ViewerEvent::Ended(End::Exited(3)), "the end is sticky");
    agent.closed().await;
    eventually("the session is gone", || hub.sessions() == 0).await;
    assert_eq!(counts.sessions.load(Ordering::SeqCst), 0);
    drop(viewer);
    assert_eq!(counts.viewers.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_named_session_is_repainted_at_the_new_size_on_reattach() {
    let (hub, _) = hub();
    let (mut first, agent) = attach(&hub, request(Some("main"), 80, 24)).await;
    let mut agent = agent.expect("a new session");
    next(&mut first).await;
    agent.output(b"$ echo hi\r\nhi\r\n$ ").await;
    output_until(&mut first, "$ echo hi\r\nhi\r\n$ ").await;
    drop(first);
    agent.output(b"while away\r\n$ ").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut second, again) = attach(&hub, request(Some("main"), 40, 10)).await;
    assert!(again.is_none(), "the running session was re-attached");
    assert_eq!(agent.frame().await, Some((frame::KIND_RESIZE, br#"{"cols":40,"rows":10}"#.to_vec())));
    let ViewerEvent::Repaint(repaint) = next(&mut second).await else { panic!("no repaint first") };
    assert_eq!(screen_text(&repaint, 40, 10), "$ echo hi\nhi\n$ while away\n$ ");
    agent.output(b"new").await;
    assert_eq!(next(&mut second).await, ViewerEvent::Output(Bytes::from_static(b"new")), "no replay of old bytes");
}

#[tokio::test]
async fn an_unnamed_session_ends_with_its_viewer() {
    let (hub, counts) = hub();
    let (viewer, agent) = attach(&hub, request(None, 80, 24)).await;
    let (other, other_agent) = attach(&hub, request(None, 80, 24)).await;
    assert!(other_agent.is_some(), "unnamed sessions are never shared");
    assert_eq!(hub.sessions(), 2);
    drop(viewer);
    agent.expect("a new session").closed().await;
    eventually("one session left", || hub.sessions() == 1).await;
    drop(other);
    eventually("no session left", || counts.sessions.load(Ordering::SeqCst) == 0).await;
}

#[tokio::test]
async fn a_named_session_without_viewers_ends_after_the_idle_time() {
    let settings = TerminalSettings { idle_session: Duration::from_millis(300), ..TerminalSettings::default() };
    let (hub, _) = hub_with(settings);
    let (viewer, agent) = attach(&hub, request(Some("idle"), 80, 24)).await;
    let mut agent = agent.expect("a new session");
    drop(viewer);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Coming back within the idle time keeps it; leaving again restarts the clock.
    let (viewer, again) = attach(&hub, request(Some("idle"), 80, 24)).await;
    assert!(again.is_none());
    drop(viewer);
    let left = tokio::time::Instant::now();
    while agent.frame().await.is_some() {}
    assert!(left.elapsed() >= Duration::from_millis(250), "ended too early: {:?}", left.elapsed());
    eventually("the session is gone", || hub.sessions() == 0).await;
    let (_, fresh) = attach(&hub, request(Some("idle"), 80, 24)).await;
    assert!(fresh.is_some(), "the name starts a new session once the old one ended");
}

#[tokio::test]
async fn viewers_share_output_and_read_only_ones_cannot_type() {
    let (hub, _) = hub();
    let (mut writer, agent) = attach(&hub, request(Some("shared"), 80, 24)).await;
    let mut agent = agent.expect("a new session");
    let mut reader = hub
        .attach(AttachRequest { read_only: true, cols: 20, rows: 5, ..request(Some("shared"), 0, 0) }, |_, _| async {
            Err::<Opened, _>("must not open")
        })
        .await
        .expect("join");
    assert!(reader.read_only());
    next(&mut writer).await;
    next(&mut reader).await;
    agent.output(b"to both").await;
    output_until(&mut writer, "to both").await;
    output_until(&mut reader, "to both").await;
    reader.input(Bytes::from_static(b"rm -rf /\r")).await;
    reader.resize(10, 3).expect("a valid size is accepted, then ignored");
    writer.input(Bytes::from_static(b"ok")).await;
    assert_eq!(agent.frame().await, Some((frame::KIND_DATA, b"ok".to_vec())), "only the writer's input arrives");
}

#[tokio::test]
async fn a_viewer_that_falls_behind_is_repainted_and_others_get_everything() {
    let settings = TerminalSettings { queue_chunks: 4, ..TerminalSettings::default() };
    let (hub, counts) = hub_with(settings);
    let (mut fast, agent) = attach(&hub, request(Some("flood"), 20, 3)).await;
    let mut agent = agent.expect("a new session");
    let (mut slow, _) = attach(&hub, request(Some("flood"), 20, 3)).await;
    next(&mut fast).await;
    next(&mut slow).await;
    let mut got = String::new();
    for i in 0..50 {
        agent.output(format!("line {i}\r\n").as_bytes()).await;
        // The fast viewer keeps up; the slow one reads nothing.
        while !got.contains(&format!("line {i}\r\n")) {
            match next(&mut fast).await {
                ViewerEvent::Output(bytes) => got.push_str(&String::from_utf8_lossy(&bytes)),
                other => panic!("the fast viewer got {other:?}"),
            }
        }
    }
    let expected: String = (0..50).map(|i| format!("line {i}\r\n")).collect();
    assert_eq!(got, expected, "the fast viewer saw every byte once, in order");
    let ViewerEvent::Repaint(repaint) = next(&mut slow).await else { panic!("the slow viewer was not repainted") };
    assert_eq!(screen_text(&repaint, 20, 3), "line 48\nline 49");
    assert_eq!(counts.resyncs.load(Ordering::SeqCst), 1);
    agent.output(b"after").await;
    assert_eq!(next(&mut slow).await, ViewerEvent::Output(Bytes::from_static(b"after")));
}

#[tokio::test]
async fn concurrent_attaches_open_one_session() {
    let (hub, _) = hub();
    let opens = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    let mut agents = Vec::new();
    for _ in 0..8 {
        let (opened, agent) = pipe();
        agents.push(agent);
        let hub = hub.clone();
        let opens = opens.clone();
        tasks.push(tokio::spawn(async move {
            hub.attach(request(Some("race"), 80, 24), |_, _| async move {
                opens.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, String>(opened)
            })
            .await
            .expect("attach")
        }));
    }
    let mut viewers = Vec::new();
    for task in tasks {
        viewers.push(task.await.expect("task"));
    }
    assert_eq!(opens.load(Ordering::SeqCst), 1);
    assert_eq!(hub.sessions(), 1);
}

#[tokio::test]
async fn limits_failed_opens_and_shutdown() {
    let settings = TerminalSettings { max_sessions_per_sandbox: 2, max_viewers_per_session: 1, ..Default::default() };
    let (hub, counts) = hub_with(settings);
    let failed = hub.attach(request(Some("a"), 80, 24), |_, _| async { Err::<Opened, _>("agent down") }).await;
    assert!(matches!(failed, Err(AttachError::Open("agent down"))));
    let (mut a, agent_a) = attach(&hub, request(Some("a"), 80, 24)).await;
    assert!(agent_a.is_some(), "a failed open leaves the name free");
    let (_b, _) = attach(&hub, request(Some("b"), 80, 24)).await;
    let third = hub.attach(request(Some("c"), 80, 24), |_, _| async { Err::<Opened, _>("not called") }).await;
    assert!(matches!(third, Err(AttachError::Terminal(TerminalError::TooManySessions { limit: 2, .. }))));
    let other_sandbox = AttachRequest { sandbox_id: "sbx_2".into(), ..request(Some("c"), 80, 24) };
    let (_c, _) = attach(&hub, other_sandbox).await;
    let second_viewer = hub.attach(request(Some("a"), 80, 24), |_, _| async { Err::<Opened, _>("not called") }).await;
    assert!(matches!(second_viewer, Err(AttachError::Terminal(TerminalError::TooManyViewers { limit: 1, .. }))));
    for bad in [request(Some("no spaces"), 80, 24), request(Some("a"), 0, 24), request(None, 80, 1001)] {
        let refused = hub.attach(bad, |_, _| async { Err::<Opened, _>("not called") }).await;
        assert!(matches!(refused, Err(AttachError::Terminal(TerminalError::InvalidInput(_)))));
    }
    next(&mut a).await;
    hub.close_all();
    assert_eq!(next(&mut a).await, ViewerEvent::Ended(End::Shutdown));
    agent_a.expect("session a").closed().await;
    eventually("every session ended", || counts.sessions.load(Ordering::SeqCst) == 0).await;
    let late = hub.attach(request(Some("d"), 80, 24), |_, _| async { Err::<Opened, _>("not called") }).await;
    assert!(matches!(late, Err(AttachError::Terminal(TerminalError::ShuttingDown))));
}

#[tokio::test]
async fn a_broken_stream_ends_the_session() {
    let (hub, _) = hub();
    let (mut viewer, agent) = attach(&hub, request(Some("lost"), 80, 24)).await;
    next(&mut viewer).await;
    drop(agent);
    assert_eq!(next(&mut viewer).await, ViewerEvent::Ended(End::Lost));
    eventually("the session is gone", || hub.sessions() == 0).await;
}

#[tokio::test]
async fn garbage_from_the_agent_ends_the_session_without_a_panic() {
    let (hub, _) = hub();
    let (mut viewer, agent) = attach(&hub, request(None, 80, 24)).await;
    let mut agent = agent.expect("a new session");
    next(&mut viewer).await;
    agent.io.write_all(&[0, 0xff, 0xff, 0xff, 0xff]).await.expect("write");
    assert_eq!(next(&mut viewer).await, ViewerEvent::Ended(End::Lost));
}

#[tokio::test]
async fn a_sandboxs_screens_stay_within_its_cell_budget() {
    let settings = TerminalSettings { max_cells_per_sandbox: 100 * 50, ..Default::default() };
    let (hub, _) = hub_with(settings);
    let (a, agent_a) = attach(&hub, request(Some("a"), 100, 30)).await;
    // 3000 + 2400 cells is over 5000: refused before anything is opened.
    let refused = hub.attach(request(Some("b"), 80, 30), |_, _| async { Err::<Opened, _>("not called") }).await;
    assert!(matches!(refused, Err(AttachError::Terminal(TerminalError::TooManyCells { limit: 5000, .. }))));
    // Agents are kept: dropping one ends its session.
    let (b, _agent_b) = attach(&hub, request(Some("b"), 80, 20)).await;
    // Growing past the budget is refused and changes nothing; shrinking always works.
    assert!(matches!(a.resize(100, 40), Err(TerminalError::TooManyCells { .. })));
    b.resize(40, 20).expect("shrink");
    a.resize(100, 40).expect("grow into the freed cells");
    // Another sandbox has a budget of its own.
    let other = AttachRequest { sandbox_id: "sbx_2".into(), ..request(Some("a"), 100, 50) };
    let (_other, _agent_other) = attach(&hub, other).await;
    // A viewer asking for more than fits still joins, at the session's size.
    let (mut big, _) = attach(&hub, request(Some("a"), 200, 40)).await;
    assert!(matches!(next(&mut big).await, ViewerEvent::Repaint(_)));
    // An ended session gives its cells back.
    drop((a, big));
    let mut agent_a = agent_a.expect("session a");
    agent_a.exit(0).await;
    agent_a.closed().await;
    eventually("session a ended", || hub.sessions() == 2).await;
    let (_c, _agent_c) = attach(&hub, request(Some("c"), 100, 40)).await;
}

/// What a full-screen program (`vim`, `htop`) draws at a size, reduced to a layout a test can
/// check: a rule across the top row, numbered rows ending in `|` at the last column, a status
/// line on the bottom row, on the alternate screen.
fn full_screen(cols: u16, rows: u16) -> Vec<u8> {
    let width = usize::from(cols);
    let mut out = format!("\x1b[?1049h\x1b[H\x1b[2J{}", "=".repeat(width));
    for row in 2..rows {
        let line = format!("{:.<w$}|", format!("row {row:02}"), w = width - 1);
        out.push_str(&format!("\x1b[{row};1H{line}"));
    }
    out.push_str(&format!("\x1b[{rows};1HSTATUS {cols}x{rows}"));
    out.into_bytes()
}

/// A session at 80×24 showing [`full_screen`], its first viewer gone.
async fn full_screen_session(hub: &TerminalHub) -> FakeAgent {
    let (mut first, agent) = attach(hub, request(Some("vim"), 80, 24)).await;
    let mut agent = agent.expect("a new session");
    next(&mut first).await;
    agent.output(&full_screen(80, 24)).await;
    output_until(&mut first, "STATUS 80x24").await;
    agent
}

#[tokio::test]
async fn a_reattach_at_a_new_size_is_repainted_once_the_program_redrew() {
    let redraw_wait = Duration::from_secs(3);
    let (hub, counts) = hub_with(TerminalSettings { redraw_wait, ..TerminalSettings::default() });
    let mut agent = full_screen_session(&hub).await;
    let started = tokio::time::Instant::now();
    let (mut second, again) = attach(&hub, request(Some("vim"), 40, 10)).await;
    assert!(again.is_none(), "the running session was re-attached");
    // The program gets its SIGWINCH (the resize frame) and redraws for the new size.
    assert_eq!(agent.frame().await, Some((frame::KIND_RESIZE, br#"{"cols":40,"rows":10}"#.to_vec())));
    agent.output(&full_screen(40, 10)).await;
    let ViewerEvent::Repaint(repaint) = next(&mut second).await else { panic!("no repaint first") };
    assert!(started.elapsed() < redraw_wait, "released by the redraw, not the bound: {:?}", started.elapsed());
    let shown = screen_text(&repaint, 40, 10);
    assert_eq!(shown, screen_text(&full_screen(40, 10), 40, 10), "the program's own layout at 40x10");
    let rows: Vec<&str> = shown.lines().collect();
    assert_eq!(rows.len(), 10, "{shown}");
    assert_eq!(rows[9], "STATUS 40x10", "the status line is on the last row: {shown}");
    assert!(rows[1..9].iter().all(|row| row.len() == 40 && row.ends_with('|')), "{shown}");
    assert!(repaint.starts_with(b"\x1b[?1049h"), "repainted on the alternate screen");
    // The redraw is in the repaint only: the next event is the next output.
    agent.output(b"x").await;
    assert_eq!(next(&mut second).await, ViewerEvent::Output(Bytes::from_static(b"x")));
    assert_eq!(counts.resyncs.load(Ordering::SeqCst), 0, "a held repaint is not a resync");
}

#[tokio::test]
async fn a_program_that_does_not_redraw_is_repainted_cropped_after_the_bound() {
    let redraw_wait = Duration::from_millis(300);
    let (hub, _) = hub_with(TerminalSettings { redraw_wait, ..TerminalSettings::default() });
    let mut agent = full_screen_session(&hub).await;
    let started = tokio::time::Instant::now();
    let (mut second, _) = attach(&hub, request(Some("vim"), 40, 10)).await;
    assert_eq!(agent.frame().await, Some((frame::KIND_RESIZE, br#"{"cols":40,"rows":10}"#.to_vec())));
    let ViewerEvent::Repaint(repaint) = next(&mut second).await else { panic!("no repaint first") };
    assert!(started.elapsed() >= redraw_wait, "repainted after {:?}, before the bound", started.elapsed());
    // What vt100 makes of the old layout at 40x10: cropped, not reflowed (rows above the
    // cursor scroll off, columns are cut).
    let mut cropped = crate::screen::Screen::new(80, 24);
    cropped.process(&full_screen(80, 24));
    cropped.resize(40, 10);
    assert_eq!(screen_text(&repaint, 40, 10), cropped.text());
    assert_ne!(cropped.text(), screen_text(&full_screen(40, 10), 40, 10));
}

#[tokio::test]
async fn a_reattach_at_the_same_size_is_repainted_at_once() {
    // A bound longer than the test's patience: a held repaint would time `next` out.
    let settings = TerminalSettings { redraw_wait: Duration::from_secs(60), ..TerminalSettings::default() };
    let (hub, _) = hub_with(settings);
    let _agent = full_screen_session(&hub).await;
    let (mut second, _) = attach(&hub, request(Some("vim"), 80, 24)).await;
    let ViewerEvent::Repaint(repaint) = next(&mut second).await else { panic!("no repaint first") };
    assert_eq!(screen_text(&repaint, 80, 24), screen_text(&full_screen(80, 24), 80, 24));
}

#[tokio::test]
async fn the_output_queue_has_a_byte_budget() {
    // 4 chunks of at most 16 bytes: 64 bytes queued at most.
    let settings = TerminalSettings { queue_chunks: 4, queue_bytes: 64, ..TerminalSettings::default() };
    let (hub, counts) = hub_with(settings);
    let (mut fast, agent) = attach(&hub, request(Some("budget"), 80, 24)).await;
    let mut agent = agent.expect("a new session");
    let (mut slow, _) = attach(&hub, request(Some("budget"), 80, 24)).await;
    next(&mut fast).await;
    next(&mut slow).await;
    // Two frames of 48 bytes: two queue entries if frames were queued whole, six chunks here.
    let first = "a".repeat(47) + "\n";
    let second = "b".repeat(47) + "\n";
    agent.output(first.as_bytes()).await;
    assert_eq!(output_until(&mut fast, "\n").await, first, "a frame within the budget arrives whole");
    agent.output(second.as_bytes()).await;
    assert_eq!(output_until(&mut fast, "\n").await, second);
    // The slow viewer is 96 bytes behind, past the 64-byte budget: repainted, not queued for.
    let ViewerEvent::Repaint(_) = next(&mut slow).await else { panic!("the slow viewer was not repainted") };
    assert_eq!(counts.resyncs.load(Ordering::SeqCst), 1);
    // One frame larger than the whole budget cannot be queued for anyone: a repaint instead.
    agent.output(format!("{}END", "c".repeat(100)).as_bytes()).await;
    let ViewerEvent::Repaint(repaint) = next(&mut fast).await else { panic!("the fast viewer was not repainted") };
    assert!(screen_text(&repaint, 80, 24).ends_with("cEND"));
}

#[tokio::test]
async fn input_is_cut_into_small_chunks() {
    let (hub, _) = hub();
    let (viewer, agent) = attach(&hub, request(None, 80, 24)).await;
    let mut agent = agent.expect("a new session");
    let paste: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    viewer.input_handle().send(Bytes::from(paste.clone())).await;
    let mut got = Vec::new();
    while got.len() < paste.len() {
        let (kind, data) = agent.frame().await.expect("input frames");
        assert_eq!(kind, frame::KIND_DATA);
        assert!(data.len() <= 4096, "a {} byte input frame", data.len());
        got.extend_from_slice(&data);
    }
    assert_eq!(got, paste, "every byte once, in order");
}
