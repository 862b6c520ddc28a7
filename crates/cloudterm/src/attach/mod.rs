//! `cloudterm attach SANDBOX [--session NAME]`: the local terminal on a terminal session of a
//! sandbox, over the same WebSocket as the browser console (`GET /sandboxes/{id}/terminal`,
//! docs/terminal.md).
//!
//! It connects first (so a refusal is an ordinary error on a terminal left alone), then puts the
//! local terminal in raw mode and moves bytes both ways until the shell exits (attach exits with
//! its code), the detach keys are typed (exit 0, the shell keeps running), or the connection
//! ends. `tty.rs` owns the local terminal, `keys.rs` the detach keys, `alternate.rs` what has to
//! be undone on the display, `pump.rs` the loop.

mod alternate;
mod keys;
mod pump;
mod tty;

use std::process::ExitCode;

use reqwest::Url;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub use keys::DetachKeys;
use pump::Ending;

use crate::client::Client;

/// Options of `cloudterm attach`.
#[derive(clap::Args)]
pub struct AttachArgs {
    /// The sandbox id.
    pub sandbox: String,
    /// The session to attach to, created if it does not run yet. Sessions outlive attach: detach
    /// and come back later to the same shell and screen, from here or from the browser console.
    #[arg(long, default_value = "main", value_name = "NAME")]
    pub session: String,
    /// Keys that detach and leave the shell running, docker's format: `ctrl-]` (the default,
    /// telnet's escape key), `ctrl-p,ctrl-q` (docker's), or letters.
    #[arg(long, env = "CLOUDTERM_DETACH_KEYS", default_value = keys::DEFAULT, value_parser = DetachKeys::parse)]
    pub detach_keys: DetachKeys,
}

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The server URL cannot become a WebSocket URL.
    #[error("{0} is not an http:// or https:// URL")]
    BadUrl(String),
    /// The server answered the upgrade with an error (401, 404, 409, 422, 503).
    #[error("{status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached, or the WebSocket broke.
    #[error("terminal connection to {url}: {source}")]
    Connection {
        /// The server.
        url: String,
        /// What went wrong.
        source: tungstenite::Error,
    },
    /// The local terminal could not be set up.
    #[error("local terminal: {0}")]
    Tty(#[from] std::io::Error),
    /// `wss://` needs TLS support this build does not have.
    #[error("wss:// (an https:// server URL) is not supported by this build of cloudterm attach")]
    NoTls,
}

/// Runs `cloudterm attach`; the exit code is the shell's when it exits, 0 on detach, 2 on an
/// error (with the message on stderr), 128 + the signal when SIGTERM or SIGHUP ended attach.
pub fn run(client: &Client, args: AttachArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}")),
    };
    let ending = runtime.block_on(attach(client, &args));
    // The thread reading stdin may be blocked in a read that nothing can cancel: do not wait
    // for it.
    runtime.shutdown_background();
    match ending {
        Ok(Ending::Exited(code)) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Ok(Ending::Detached) => {
            eprintln!(
                "cloudterm: detached from session {} of {}; the shell keeps running (cloudterm attach {} --session {} to come back)",
                args.session, args.sandbox, args.sandbox, args.session
            );
            ExitCode::SUCCESS
        }
        Ok(Ending::Closed(message)) => fail(&message),
        Ok(Ending::Signalled(signal)) => ExitCode::from(128 + signal),
        Err(err) => fail(&err.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("cloudterm: {message}");
    ExitCode::from(2)
}

async fn attach(client: &Client, args: &AttachArgs) -> Result<Ending, AttachError> {
    let (cols, rows) = tty::size();
    let url = terminal_url(client, &args.sandbox, &args.session, cols, rows)?;
    let mut request =
        url.as_str().into_client_request().map_err(|source| AttachError::Connection { url: client.url(), source })?;
    let bearer = format!("Bearer {}", client.token())
        .parse()
        .map_err(|_| AttachError::Refused { status: 401, message: "the token is not a valid header value".into() })?;
    request.headers_mut().insert("authorization", bearer);
    let ws = match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            return Err(AttachError::Refused { status, message: refusal(body) });
        }
        Err(tungstenite::Error::Url(tungstenite::error::UrlError::TlsFeatureNotEnabled)) => {
            return Err(AttachError::NoTls)
        }
        Err(source) => return Err(AttachError::Connection { url: client.url(), source }),
    };
    let raw = tty::RawMode::enable()?;
    let mut alternate = alternate::AlternateScreen::default();
    let ending = pump::pump(ws, keys::Matcher::new(args.detach_keys.clone()), (cols, rows), &mut alternate).await;
    if raw.active() {
        tty::reset_display(alternate.on());
    }
    drop(raw);
    ending.map_err(|source| AttachError::Connection { url: client.url(), source })
}

/// `ws[s]://…/sandboxes/{id}/terminal?cols=&rows=&session=`.
fn terminal_url(client: &Client, sandbox: &str, session: &str, cols: u16, rows: u16) -> Result<Url, AttachError> {
    let (cols, rows) = (cols.to_string(), rows.to_string());
    let query = [("cols", Some(cols.as_str())), ("rows", Some(rows.as_str())), ("session", Some(session))];
    let mut url =
        client.endpoint(&["sandboxes", sandbox, "terminal"], &query).map_err(|_| AttachError::BadUrl(client.url()))?;
    let scheme = match url.scheme() {
        "http" => "ws",
        "https" => "wss",
        _ => return Err(AttachError::BadUrl(client.url())),
    };
    url.set_scheme(scheme).map_err(|()| AttachError::BadUrl(client.url()))?;
    Ok(url)
}

/// The message of an error envelope, else the body as text.
fn refusal(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_the_terminal_route_over_websocket() {
        let client = Client::new("https://example.test/base/".into(), Some("t".into())).expect("client");
        let url = terminal_url(&client, "sbx_1", "main", 120, 40).expect("url");
        assert_eq!(url.as_str(), "wss://example.test/base/sandboxes/sbx_1/terminal?cols=120&rows=40&session=main");
        let client = Client::new("http://127.0.0.1:8000".into(), Some("t".into())).expect("client");
        // An id typed by a user stays one path segment.
        let url = terminal_url(&client, "../x", "main", 80, 24).expect("url");
        assert_eq!(url.path(), "/sandboxes/..%2Fx/terminal");
        assert_eq!(url.scheme(), "ws");
    }

    #[test]
    fn refusals_carry_the_servers_message() {
        assert_eq!(
            refusal(br#"{"error":{"code":"not_found","message":"sandbox sbx_1 not found"}}"#),
            "sandbox sbx_1 not found"
        );
        assert_eq!(refusal(b"bad gateway"), "bad gateway");
    }
}
