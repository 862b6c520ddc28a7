//! `cloudterm-bench terminal`: a WebSocket terminal client that speaks cloudterm's protocol and
//! ttyd's, and times the same three things on either: connect → first prompt, keystroke echo
//! round trip, and an output flood.
//!
//! cloudterm (docs/terminal.md): token in `Authorization`, binary frames are raw bytes both ways,
//! text frames JSON control. ttyd (its `src/protocol.c`, `src/server.h`): subprotocol `tty`, the
//! first client message is JSON `{"AuthToken":"","columns":C,"rows":R}` (which spawns the
//! command), then input is a message `'0'` + bytes, and output frames are `'0'` + bytes (`'1'`
//! sets the title, `'2'` sends preferences: skipped).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which server is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// cloudterm's `GET /sandboxes/{id}/terminal`.
    Cloudterm,
    /// ttyd's `/ws`.
    Ttyd,
}

/// A terminal size every measurement uses.
const COLS: u16 = 80;
const ROWS: u16 = 24;

/// Longest wait for anything; a benchmark that hangs says so instead.
const PATIENCE: Duration = Duration::from_secs(60);

/// How cloudterm's repaints start (docs/terminal.md): a viewer that fell behind gets one of
/// these instead of the output it missed, so its bytes are screen state, not program output.
const REPAINT_START: &[u8] = b"\x1b[?1049";

/// One terminal connection.
pub struct Term {
    ws: Ws,
    protocol: Protocol,
    /// Repaints received so far (cloudterm only), and their bytes.
    repaints: usize,
    repaint_bytes: usize,
}

impl Term {
    /// Connects (and, for ttyd, sends the message that starts the shell).
    pub async fn connect(protocol: Protocol, url: &str, token: &str) -> anyhow::Result<Term> {
        let mut request = url.into_client_request()?;
        match protocol {
            Protocol::Cloudterm => {
                request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
            }
            Protocol::Ttyd => {
                request.headers_mut().insert("sec-websocket-protocol", "tty".parse()?);
            }
        }
        let (ws, _) =
            tokio_tungstenite::connect_async(request).await.with_context(|| format!("connecting to {url}"))?;
        let mut term = Term { ws, protocol, repaints: 0, repaint_bytes: 0 };
        if protocol == Protocol::Ttyd {
            let hello = serde_json::json!({ "AuthToken": "", "columns": COLS, "rows": ROWS }).to_string();
            term.ws.send(Message::Binary(hello.into_bytes().into())).await?;
        }
        Ok(term)
    }

    /// Sends keystrokes.
    pub async fn input(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let message = match self.protocol {
            Protocol::Cloudterm => Message::Binary(bytes.to_vec().into()),
            Protocol::Ttyd => {
                let mut framed = Vec::with_capacity(bytes.len() + 1);
                framed.push(b'0');
                framed.extend_from_slice(bytes);
                Message::Binary(framed.into())
            }
        };
        self.ws.send(message).await?;
        Ok(())
    }

    /// The next output bytes (control frames skipped); an error when the connection ends.
    pub async fn output(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next()).await.context("no output for a minute")?;
            match message {
                Some(Ok(Message::Binary(bytes))) => match self.protocol {
                    Protocol::Cloudterm => {
                        if bytes.starts_with(REPAINT_START) {
                            self.repaints += 1;
                            self.repaint_bytes += bytes.len();
                        }
                        return Ok(bytes.to_vec());
                    }
                    Protocol::Ttyd if bytes.first() == Some(&b'0') => return Ok(bytes[1..].to_vec()),
                    Protocol::Ttyd => {}
                },
                Some(Ok(Message::Text(text))) if self.protocol == Protocol::Ttyd && text.as_str().starts_with('0') => {
                    return Ok(text.as_bytes()[1..].to_vec())
                }
                Some(Ok(Message::Close(_))) | None => bail!("the terminal closed"),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
            }
        }
    }

    /// Reads output until `needle` shows up in it; returns how many bytes that took.
    pub async fn until(&mut self, needle: &[u8]) -> anyhow::Result<usize> {
        let mut tail: Vec<u8> = Vec::new();
        let mut total = 0;
        loop {
            let bytes = self.output().await?;
            total += bytes.len();
            tail.extend_from_slice(&bytes);
            if tail.windows(needle.len()).any(|w| w == needle) {
                return Ok(total);
            }
            let keep = tail.len().min(needle.len());
            tail.drain(..tail.len() - keep);
        }
    }

    /// Reads whatever arrives within `quiet`, to start the next measurement from silence.
    pub async fn drain(&mut self, quiet: Duration) {
        while let Ok(Ok(_)) = tokio::time::timeout(quiet, self.output()).await {}
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Bash's prompt ends with `$ ` or `# `; the first one of a fresh shell is what a user waits for.
pub async fn first_prompt(term: &mut Term) -> anyhow::Result<()> {
    let mut seen: Vec<u8> = Vec::new();
    loop {
        seen.extend_from_slice(&term.output().await?);
        if seen.windows(2).any(|w| w == b"$ " || w == b"# ") {
            return Ok(());
        }
    }
}

/// Connect → first prompt, `n` times, each a new shell.
pub async fn connect_to_prompt(protocol: Protocol, url: &str, token: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut term = Term::connect(protocol, url, token).await?;
        first_prompt(&mut term).await?;
        samples.push(started.elapsed());
        term.close().await;
        // Let the shell go before the next one starts.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(samples)
}

/// Keystroke → its echo at a bash prompt (readline echoes each key), `n` times. Every 64 keys
/// Ctrl-U clears the line, so it never grows long, and the redraw is drained, untimed.
pub async fn echo_round_trip(term: &mut Term, n: usize) -> anyhow::Result<Vec<Duration>> {
    let keys = b"abcdefghijklmnopqrstuvwxyz";
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        if i % 64 == 0 {
            term.input(b"\x15").await?;
            term.drain(Duration::from_millis(30)).await;
        }
        let key = keys[i % keys.len()];
        let started = Instant::now();
        term.input(&[key]).await?;
        term.until(&[key]).await?;
        samples.push(started.elapsed());
    }
    term.input(b"\x15").await?;
    term.drain(Duration::from_millis(30)).await;
    Ok(samples)
}

/// One output flood.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// From Enter to the marker printed after the flood.
    pub elapsed: Duration,
    /// Program output that arrived as output: more than the flood's size when all of it arrived
    /// (the terminal turns `\n` into `\r\n`), fewer when a viewer that fell behind was repainted
    /// instead of sent what it missed.
    pub delivered: usize,
    /// Repaints received instead of missed output (cloudterm only; ttyd has none).
    pub repaints: usize,
}

/// `yes | head -c MB` at the prompt: time from Enter to the marker printed after it, and what
/// arrived meanwhile.
pub async fn flood(term: &mut Term, megabytes: usize) -> anyhow::Result<Flood> {
    let command = format!("yes | head -c {megabytes}M; echo FLOOD''DONE\r");
    term.input(command.as_bytes()).await?;
    // The echo of the command line itself, so the timing starts at Enter.
    term.until(b"DONE").await?;
    let (repaints, repaint_bytes) = (term.repaints, term.repaint_bytes);
    let started = Instant::now();
    let received = term.until(b"FLOODDONE").await?;
    let elapsed = started.elapsed();
    let repaint_bytes = term.repaint_bytes - repaint_bytes;
    let flood = Flood { elapsed, delivered: received - repaint_bytes, repaints: term.repaints - repaints };
    term.drain(Duration::from_millis(100)).await;
    Ok(flood)
}
