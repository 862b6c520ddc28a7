//! The loop of `cloudterm attach`: keystrokes to binary frames, binary frames to the screen,
//! window size changes to `resize` control frames, until the session or the user ends it.

use std::io::{Read, Write};

use cloudterm_api_types::{TerminalClientMessage, TerminalServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::alternate::AlternateScreen;
use super::keys::{Matcher, Typed};
use super::tty;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How attach ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The shell exited with this code.
    Exited(i32),
    /// The user typed the detach keys; the session goes on without us.
    Detached,
    /// The server ended the connection for another reason, as it explained.
    Closed(String),
    /// SIGTERM or SIGHUP (this number) ended attach.
    Signalled(u8),
}

/// Keystrokes read ahead of the socket. Small: a paste waits in the terminal, not here.
const STDIN_QUEUE: usize = 16;

/// Reads stdin on a thread of its own: a blocking read of a terminal cannot be cancelled, so it
/// must not hold up the runtime when attach ends (the thread is left behind and ends with the
/// process). The channel closes at end of input.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
    let spawned = std::thread::Builder::new().name("attach-stdin".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    if spawned.is_err() {
        // No thread, no input: the receiver reports end of input at once and output still flows.
        eprintln!("cloudterm: cannot start the thread that reads the keyboard; showing output only");
    }
    rx
}

/// Moves bytes until the end; `size` is the size the connection was opened with.
pub async fn pump(
    mut ws: Ws,
    mut matcher: Matcher,
    mut size: (u16, u16),
    alternate: &mut AlternateScreen,
) -> Result<Ending, tungstenite::Error> {
    let mut keyboard = read_stdin();
    let mut keyboard_open = true;
    let mut winch = signal(SignalKind::window_change()).map_err(tungstenite::Error::Io)?;
    let mut term = signal(SignalKind::terminate()).map_err(tungstenite::Error::Io)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(tungstenite::Error::Io)?;
    let mut exit_code = None;
    let mut error = None;
    loop {
        tokio::select! {
            typed = keyboard.recv(), if keyboard_open => match typed {
                Some(bytes) => match matcher.feed(&bytes) {
                    Typed::Send(bytes) => {
                        if !bytes.is_empty() {
                            ws.send(Message::Binary(bytes.into())).await?;
                        }
                    }
                    Typed::Detach(before) => {
                        if !before.is_empty() {
                            ws.send(Message::Binary(before.into())).await?;
                        }
                        // A close the server sees at once, so the session is free for the next
                        // attach. Failing to say goodbye changes nothing for the user.
                        let _ = ws.close(None).await;
                        return Ok(Ending::Detached);
                    }
                },
                // End of piped input: keep showing output until the shell ends.
                None => keyboard_open = false,
            },
            _ = winch.recv() => {
                let now = tty::size();
                if now != size {
                    size = now;
                    let resize = TerminalClientMessage::Resize { cols: now.0, rows: now.1 };
                    let json = serde_json::to_string(&resize).map_err(|err| tungstenite::Error::Io(err.into()))?;
                    ws.send(Message::Text(json.into())).await?;
                }
            }
            _ = term.recv() => return Ok(Ending::Signalled(15)),
            _ = hangup.recv() => return Ok(Ending::Signalled(1)),
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    alternate.observe(&bytes);
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&bytes).and_then(|()| stdout.flush()).map_err(tungstenite::Error::Io)?;
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<TerminalServerMessage>(text.as_str()) {
                    Ok(TerminalServerMessage::Exit { code }) => exit_code = Some(code),
                    // A control frame of ours it did not understand: nothing the user can act on.
                    Ok(TerminalServerMessage::Error { code, .. }) if code == "bad_control" => {}
                    Ok(TerminalServerMessage::Error { code, message }) => error = Some(format!("{message} ({code})")),
                    // A message a newer server added.
                    Err(_) => {}
                },
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                // After the exit message, a connection that breaks instead of closing cleanly
                // changes nothing.
                Some(Err(_)) if exit_code.is_some() => break,
                Some(Err(err)) => return Err(err),
            },
        }
    }
    Ok(match (exit_code, error) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(message)) => Ending::Closed(message),
        (None, None) => Ending::Closed("the server closed the terminal connection".into()),
    })
}
