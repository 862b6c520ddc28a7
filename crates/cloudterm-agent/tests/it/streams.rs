//! Upgraded streams (PTY, port connect) and freeze/thaw.

use std::time::Duration;

use cloudterm_runtime::agent_client::protocol::frame::{self, FrameDecoder};
use cloudterm_runtime::agent_client::protocol::{JobRequest, PtyExit, PtyResize};
use cloudterm_runtime::{AgentError, UpgradedStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Agent;

/// Reads frames until the exit frame; returns (terminal output, exit code).
async fn read_until_exit(io: &mut UpgradedStream) -> (String, i32) {
    let mut dec = FrameDecoder::default();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n =
            tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await.expect("pty answers").expect("read");
        assert!(n > 0, "stream ended without an exit frame; output so far {:?}", String::from_utf8_lossy(&out));
        dec.push(&buf[..n]);
        while let Some((kind, payload)) = dec.next_frame().expect("frame") {
            match kind {
                frame::KIND_DATA => out.extend_from_slice(&payload),
                frame::KIND_EXIT => {
                    let e: PtyExit = serde_json::from_slice(&payload).expect("exit json");
                    return (String::from_utf8_lossy(&out).into_owned(), e.code);
                }
                k => panic!("unexpected frame kind {k}"),
            }
        }
    }
}

#[tokio::test]
async fn pty_runs_the_login_shell_and_reports_the_exit_code() {
    let a = Agent::start().await;
    let mut io = a.client.pty(80, 24, &[]).await.expect("pty");
    io.write_all(&frame::encode(frame::KIND_DATA, b"echo hi; exit 3\n")).await.expect("write");
    let (out, code) = read_until_exit(&mut io).await;
    assert!(out.contains("hi\r\n"), "terminal output {out:?}");
    assert_eq!(code, 3);
}

#[tokio::test]
async fn pty_resize_changes_stty_size() {
    let a = Agent::start().await;
    let mut io = a.client.pty(80, 24, &["/bin/sh".to_owned()]).await.expect("pty");
    io.write_all(&frame::encode(frame::KIND_DATA, b"stty size; echo TERM=$TERM\n")).await.expect("write");
    let first = read_until(&mut io, "TERM=xterm-256color").await;
    assert!(first.contains("24 80\r\n"), "{first:?}");
    let resize = serde_json::to_vec(&PtyResize { cols: 100, rows: 40 }).expect("json");
    io.write_all(&frame::encode(frame::KIND_RESIZE, &resize)).await.expect("resize");
    io.write_all(&frame::encode(frame::KIND_DATA, b"stty size; exit\n")).await.expect("write");
    let (out, code) = read_until_exit(&mut io).await;
    assert_eq!(code, 0);
    assert!(out.contains("40 100\r\n"), "{out:?}");
}

/// Reads data frames until the output contains `needle`.
async fn read_until(io: &mut UpgradedStream, needle: &str) -> String {
    let mut dec = FrameDecoder::default();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n =
            tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await.expect("pty answers").expect("read");
        assert!(n > 0, "stream ended; output so far {:?}", String::from_utf8_lossy(&out));
        dec.push(&buf[..n]);
        while let Some((kind, payload)) = dec.next_frame().expect("frame") {
            assert_eq!(kind, frame::KIND_DATA);
            out.extend_from_slice(&payload);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pty_client_disconnect_kills_the_shell() {
    let a = Agent::start().await;
    let mut io =
        a.client.pty(80, 24, &["/bin/sh".to_owned(), "-c".to_owned(), "sleep 9160".to_owned()]).await.expect("pty");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while crate::live_procs_with("sleep 9160").is_empty() {
        assert!(std::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    io.shutdown().await.expect("shutdown");
    drop(io);
    crate::assert_no_proc_survives("sleep 9160", Duration::from_secs(3)).await;
}

#[tokio::test]
async fn connect_pipes_bytes_to_a_port_inside() {
    let a = Agent::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let mut io = a.client.connect_port(port).await.expect("connect");
    assert!(io.is_handed_over(), "over a Unix socket the agent hands over its connected socket");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(io);
    let p2 = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&p2).await.expect("write");
        wr
    });
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut got)).await.expect("echo in time").expect("read");
    assert_eq!(got, payload);
    let wr = writer.await.expect("writer");
    io = rd.unsplit(wr);
    drop(io);

    // The piped form (vsock hosts, protocol-1 clients) still works: raw HTTP upgrade, then
    // bytes through the agent.
    let unix = tokio::net::UnixStream::connect(&a.sock).await.expect("agent socket");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(unix)).await.expect("handshake");
    tokio::spawn(conn.with_upgrades());
    let request = hyper::Request::get(format!("/v1/connect?port={port}"))
        .header("host", "agent")
        .header("connection", "upgrade")
        .header("upgrade", "cloudterm-tcp")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("send");
    assert_eq!(response.status(), 101);
    let mut piped = hyper_util::rt::TokioIo::new(hyper::upgrade::on(response).await.expect("upgraded"));
    piped.write_all(b"through the agent").await.expect("write");
    let mut echoed = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(10), piped.read_exact(&mut echoed)).await.expect("in time").expect("read");
    assert_eq!(&echoed, b"through the agent");

    // Nothing listening: 502.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    match a.client.connect_port(free).await {
        Err(AgentError::Remote { status: 502, code, .. }) => assert_eq!(code, "connect_failed"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn freeze_stops_progress_and_thaw_resumes_it() {
    let a = Agent::start().await;
    let counter = a.ws.join("counter");
    let j = a
        .client
        .start_job(&JobRequest {
            command: Some(
                "i=0; while true; do i=$((i+1)); echo $i > counter.tmp; mv counter.tmp counter; sleep 0.02; done"
                    .into(),
            ),
            ..Default::default()
        })
        .await
        .expect("job");
    let read = || std::fs::read_to_string(&counter).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(read() > 0, "the counter runs");
    let n = a.client.freeze().await.expect("freeze");
    assert!(n >= 1, "froze {n} processes");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frozen = read();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(read(), frozen, "the counter advanced while frozen");
    a.client.thaw().await.expect("thaw");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(read() > frozen, "the counter did not resume");
    a.client.sync().await.expect("sync");
    a.client.stop_job(&j.job_id, Some(Duration::from_millis(500))).await.expect("stop");
}
