//! Upgraded streams: `GET /v1/pty` (an interactive terminal, framed) and `GET /v1/connect`
//! (raw bytes to a TCP port inside the sandbox, or that port's connected socket handed to the
//! host).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cloudterm_agent_protocol::frame::{self, FrameDecoder};
use cloudterm_agent_protocol::{PtyExit, PtyResize, UPGRADE_PTY, UPGRADE_TCP, UPGRADE_TCP_FD};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{openpty, Winsize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procs::{self, TreeGuard};
use crate::util::{full, query_param, ApiError, RespBody};
use crate::State;

fn wants_upgrade(req: &Request<Incoming>, token: &str) -> Result<(), ApiError> {
    let ok = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(token));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "upgrade_required",
            format!("this endpoint needs `Upgrade: {token}`"),
        ))
    }
}

fn switching(token: &'static str) -> Response<RespBody> {
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
    r.headers_mut().insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static(token));
    r
}

fn dim(q: &[(String, String)], name: &str, default: u16) -> Result<u16, ApiError> {
    match query_param(q, name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("{name} must be between 1 and 1000"))),
    }
}

fn set_winsize(fd: &OwnedFd, cols: u16, rows: u16) {
    let ws = Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

/// The default interactive program: the user's login shell.
fn default_shell() -> Vec<String> {
    let sh = if std::path::Path::new("/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
    vec![sh.into(), "-l".into()]
}

/// `GET /v1/pty?cols=&rows=&argv=&argv=` with `Upgrade: cloudterm-pty`.
pub async fn pty(
    state: Arc<State>,
    mut req: Request<Incoming>,
    q: Vec<(String, String)>,
) -> Result<Response<RespBody>, ApiError> {
    wants_upgrade(&req, UPGRADE_PTY)?;
    let cols = dim(&q, "cols", 80)?;
    let rows = dim(&q, "rows", 24)?;
    let argv: Vec<String> = q.iter().filter(|(k, _)| k == "argv").map(|(_, v)| v.clone()).collect();
    let argv = if argv.is_empty() { default_shell() } else { argv };
    let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "pty_failed", e);
    let ws = Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pair = openpty(Some(&ws), None).map_err(|e| internal(format!("openpty: {e}")))?;
    for fd in [&pair.master, &pair.slave] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| internal(format!("fcntl: {e}")))?;
    }
    fcntl(pair.master.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| internal(format!("fcntl: {e}")))?;
    let marker = state.spawner.new_marker();
    let env = state.spawner.env(&Default::default(), &marker, Some("xterm-256color"));
    let mut cmd = state.spawner.command(&argv, &state.spawner.workspace, &env, true);
    let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| internal(format!("dup: {e}")));
    cmd.stdin(dup(&pair.slave)?).stdout(dup(&pair.slave)?).stderr(dup(&pair.slave)?);
    let mut child = cmd.spawn().map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "spawn_failed", format!("cannot start {}: {e}", argv[0]))
    })?;
    drop(cmd);
    drop(pair.slave);
    let root = child.id().map(|p| p as i32).unwrap_or(0);
    state.spawner.register(root, &marker);
    let guard = TreeGuard { root, marker, spawner: state.spawner.clone(), armed: true };
    // SAFETY: `pair.master` is an open fd owned by the OwnedFd moved into the AsyncFd, which
    // keeps it open (and its number unchanged) until the AsyncFd is dropped.
    let master = unsafe { AsyncFd::register(pair.master) }.map_err(|e| internal(format!("asyncfd: {e}")))?;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let mut guard = guard;
        let Ok(upgraded) = upgrade.await else { return };
        let io = TokioIo::new(upgraded);
        let (mut rd, mut wr) = tokio::io::split(io);
        let master = Arc::new(master);
        // Client → terminal.
        let input = {
            let master = master.clone();
            tokio::spawn(async move {
                let mut dec = FrameDecoder::default();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    dec.push(&buf[..n]);
                    loop {
                        match dec.next_frame() {
                            Ok(Some((frame::KIND_DATA, data))) => {
                                if write_all(&master, &data).await.is_err() {
                                    return;
                                }
                            }
                            Ok(Some((frame::KIND_RESIZE, json))) => {
                                if let Ok(r) = serde_json::from_slice::<PtyResize>(&json) {
                                    set_winsize(master.get_ref(), r.cols.max(1), r.rows.max(1));
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => return,
                        }
                    }
                }
            })
        };
        let mut input = input;
        let mut exited: Option<i32> = None;
        loop {
            let read = async {
                let mut buf = vec![0u8; 32 * 1024];
                let mut g = master.readable().await?;
                match g.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(std::io::Error::from)) {
                    Ok(Ok(n)) => {
                        buf.truncate(n);
                        Ok(buf)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_would_block) => Err(std::io::ErrorKind::WouldBlock.into()),
                }
            };
            let drain_limit =
                if exited.is_some() { Duration::from_millis(300) } else { Duration::from_secs(86_400 * 365) };
            tokio::select! {
                r = tokio::time::timeout(drain_limit, read) => match r {
                    Err(_) => break,
                    Ok(Ok(data)) if data.is_empty() => break,
                    Ok(Ok(data)) => {
                        if wr.write_all(&frame::encode(frame::KIND_DATA, &data)).await.is_err() {
                            return; // client gone: the guard kills the tree
                        }
                    }
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // EIO: every slave fd closed.
                    Ok(Err(_)) => break,
                },
                st = child.wait(), if exited.is_none() => {
                    exited = Some(match st {
                        Ok(st) => match procs::status_parts(st) {
                            (Some(c), _) => c,
                            (None, Some(s)) => 128 + s,
                            _ => 255,
                        },
                        Err(_) => 255,
                    });
                }
                _ = &mut input, if exited.is_none() => {
                    // Client closed its side: hang up the terminal's programs.
                    return;
                }
            }
        }
        let code = match exited {
            Some(c) => c,
            None => match child.wait().await {
                Ok(st) => procs::status_parts(st).0.unwrap_or(255),
                Err(_) => 255,
            },
        };
        guard.armed = false;
        let exit = serde_json::to_vec(&PtyExit { code }).unwrap_or_default();
        let _ = wr.write_all(&frame::encode(frame::KIND_EXIT, &exit)).await;
        let _ = wr.shutdown().await;
        input.abort();
    });
    Ok(switching(UPGRADE_PTY))
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut g = fd.writable().await?;
        match g.try_io(|fd| nix::unistd::write(fd.get_ref().as_fd(), data).map_err(std::io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// `GET /v1/connect?port=N` with `Upgrade: cloudterm-tcp`: connects to `127.0.0.1:N` first
/// (502 if nothing listens), then pipes bytes both ways. With `Upgrade: cloudterm-tcp-fd`
/// (protocol 2, a Unix-socket channel only) the connected socket itself is handed to the host
/// instead (`hand_over`), so the agent is not on the data path at all.
pub async fn connect(mut req: Request<Incoming>, q: Vec<(String, String)>) -> Result<Response<RespBody>, ApiError> {
    let handoff = wants_upgrade(&req, UPGRADE_TCP_FD).is_ok();
    if !handoff {
        wants_upgrade(&req, UPGRADE_TCP)?;
    }
    let port = query_param(&q, "port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request("port must be 1..=65535"))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "connect_timeout", format!("port {port} did not answer"))
        })?
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "connect_failed", format!("port {port}: {e}")))?;
    // A pipe, not a stream of its own: forward each write as it comes (previews' small
    // requests and answers would otherwise wait on Nagle's algorithm). A handed-over socket
    // keeps the option.
    let _ = tcp.set_nodelay(true);
    let upgrade = hyper::upgrade::on(&mut req);
    if handoff {
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            if let Err(e) = hand_over(upgraded, tcp).await {
                eprintln!("cloudterm-agent: handing over port {port}: {e}");
            }
        });
        return Ok(switching(UPGRADE_TCP_FD));
    }
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut tcp = tcp;
        // 64 KiB each way instead of tokio's 8 KiB: a bulk download through a preview is
        // copied here once more than direct, so fewer, larger reads and writes matter.
        let _ = tokio::io::copy_bidirectional_with_sizes(&mut io, &mut tcp, 64 << 10, 64 << 10).await;
    });
    Ok(switching(UPGRADE_TCP))
}

/// Sends the connected socket to the host over the upgraded Unix connection: one byte
/// carrying the descriptor (`SCM_RIGHTS`), sent only after the host's one-byte request, so
/// the descriptor never rides on bytes the host's HTTP parser might read and drop.
async fn hand_over(upgraded: hyper::upgrade::Upgraded, tcp: tokio::net::TcpStream) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use tokio::io::Interest;
    let parts = upgraded
        .downcast::<TokioIo<tokio::net::UnixStream>>()
        .map_err(|_| std::io::Error::other("the control channel is not a Unix socket"))?;
    let mut unix = parts.io.into_inner();
    if parts.read_buf.is_empty() {
        let mut request = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), unix.read_exact(&mut request))
            .await
            .map_err(|_| std::io::Error::other("the host did not ask for the socket"))??;
    }
    let tcp = tcp.into_std()?;
    let fds = [tcp.as_raw_fd()];
    let message = [std::io::IoSlice::new(b"F")];
    loop {
        unix.writable().await?;
        let sent = unix.try_io(Interest::WRITABLE, || {
            sendmsg::<()>(unix.as_raw_fd(), &message, &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_NOSIGNAL, None)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}
