//! Binding the listeners, serving until told to stop, and stopping gracefully.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{parse_addr, Config};
use crate::console;
use crate::router::{app, Service};
use crate::state::AppState;

/// A server that is accepting connections.
pub struct RunningServer {
    /// Where the main listener (every service without a listener of its own) listens.
    pub main_addr: SocketAddr,
    /// The dedicated listeners, one per service that has one.
    pub service_addrs: Vec<(Service, SocketAddr)>,
    /// The application state, for tests that want to look inside.
    pub state: AppState,
    stop: watch::Sender<bool>,
    tasks: JoinSet<std::io::Result<()>>,
    grace: Duration,
}

/// Binds every configured listener and starts serving.
pub async fn start(state: AppState) -> anyhow::Result<RunningServer> {
    let config = &state.config;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut service_addrs = Vec::new();
    let mut main_services = Vec::new();
    for (service, (key, addr)) in Service::ALL.into_iter().zip(config.listeners.all()) {
        match addr {
            Some(addr) => {
                let bound = bind(key, addr).await?;
                service_addrs.push((service, bound.local_addr()?));
                spawn(&mut tasks, bound, app(&state, &[service]), stopped.clone());
            }
            None => main_services.push(service),
        }
    }
    let main = bind("listen", &config.listen).await?;
    let main_addr = main.local_addr()?;
    spawn(&mut tasks, main, app(&state, &main_services), stopped.clone());
    spawn_reaper(&mut tasks, state.clone(), stopped.clone());
    spawn_periodic_snapshots(&mut tasks, state.clone(), stopped.clone());
    spawn_preview_health(&mut tasks, state.clone(), stopped);
    let grace = Duration::from_secs(config.http.shutdown_grace_seconds);
    Ok(RunningServer { main_addr, service_addrs, state, stop, tasks, grace })
}

async fn bind(key: &str, addr: &str) -> anyhow::Result<TcpListener> {
    let addr = parse_addr(addr).map_err(|message| anyhow::anyhow!("invalid setting {key}: {message}"))?;
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({key})"))
}

fn spawn(
    tasks: &mut JoinSet<std::io::Result<()>>,
    listener: TcpListener,
    app: axum::Router,
    mut stopped: watch::Receiver<bool>,
) {
    tasks.spawn(async move {
        // TCP_NODELAY: answers, terminal keystrokes and proxied previews are small writes that
        // Nagle's algorithm would hold back until the peer's delayed ACK (up to 40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY on a connection");
            }
        });
        // With the peer's address: `POST /dev/token` answers only connections from loopback.
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await
    });
}

/// Stops sandboxes whose idle TTL passed, until shutdown.
fn spawn_reaper(tasks: &mut JoinSet<std::io::Result<()>>, state: AppState, mut stopped: watch::Receiver<bool>) {
    let interval = Duration::from_secs(state.config.sandboxes.reap_interval_seconds);
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        return Ok(());
                    }
                }
            }
            // With an idle pause, idle sandboxes are paused first; those whose pause ran out
            // (or that cannot pause) are taken out of service, snapshotted with their writable
            // layer while still running (frozen), then stopped.
            state.sandboxes.pause_idle().await;
            for idle in state.sandboxes.take_idle() {
                if state.config.snapshots.on_idle {
                    if let Some(snapshot) = state.snapshots.before_idle_stop(&idle).await {
                        state.metrics.snapshot_stored(&snapshot);
                    }
                }
                state.sandboxes.stop_idle(&idle).await;
            }
        }
    });
}

/// Takes the periodic ("daily") snapshots, until shutdown.
fn spawn_periodic_snapshots(
    tasks: &mut JoinSet<std::io::Result<()>>,
    state: AppState,
    mut stopped: watch::Receiver<bool>,
) {
    let seconds = state.config.snapshots.periodic_seconds;
    if seconds == 0 {
        return;
    }
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        return Ok(());
                    }
                }
            }
            let taken = state.snapshots.periodic().await;
            for snapshot in &taken {
                state.metrics.snapshot_stored(snapshot);
            }
            tracing::info!(snapshots = taken.len(), "periodic snapshots taken");
        }
    });
}

/// Checks every registered preview's targets (and promotes fallbacks), until shutdown.
fn spawn_preview_health(tasks: &mut JoinSet<std::io::Result<()>>, state: AppState, mut stopped: watch::Receiver<bool>) {
    let seconds = state.config.preview.health_interval_seconds;
    if seconds == 0 {
        return;
    }
    tasks.spawn(async move {
        loop {
            state.previews.check_all().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        return Ok(());
                    }
                }
            }
        }
    });
}

impl RunningServer {
    /// Stops accepting connections and waits for requests in flight, at most the configured
    /// grace period; what is still running after that is cut off.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        // Terminal sessions live in this process only: end them (their shells are killed when
        // the streams close) and tell their viewers, rather than leave sockets hanging.
        self.state.terminals.close_all();
        // Pooled sandboxes have no owner and no record: stop them rather than leave them for
        // the next start's recovery. Claimed sandboxes keep running and are re-attached.
        self.state.sandboxes.close_pool().await;
        let drained = tokio::time::timeout(self.grace, async {
            while let Some(joined) = self.tasks.join_next().await {
                joined.context("listener task panicked")?.context("listener failed")?;
            }
            anyhow::Ok(())
        })
        .await;
        match drained {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    grace_seconds = self.grace.as_secs(),
                    "requests still running after the grace period; cutting them off"
                );
                self.tasks.abort_all();
                Ok(())
            }
        }
    }
}

/// `cloudterm serve`: set up logging, open everything, serve until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::telemetry::init(&config.log);
    let started = std::time::Instant::now();
    // Listen for the signals before anything listens on a socket: a SIGTERM that arrives as soon as
    // `/health` answers must shut down gracefully, not hit the default action and kill the process.
    let shutdown = shutdown_signal()?;
    let state = AppState::build(config).await?;
    let server = start(state.clone()).await?;
    log_startup(&server, started.elapsed());
    shutdown.await;
    tracing::info!("shutting down: finishing requests in flight");
    server.shutdown().await
}

fn log_startup(server: &RunningServer, took: Duration) {
    let state = &server.state;
    let config = &state.config;
    tracing::info!(data_dir = %config.data_dir.display(), store = %config.store_url_redacted(), storage = %state.blobs.describe(), "opened the store and snapshot storage");
    if state.runtime.kind == cloudterm_runtime::RuntimeKind::Process {
        tracing::warn!(runtime = %state.runtime.kind, reason = %state.runtime.reason, "sandboxes will NOT be isolated from this host");
    } else {
        tracing::info!(runtime = %state.runtime.kind, reason = %state.runtime.reason, "picked the sandbox runtime");
    }
    tracing::info!(identity = %state.verifier.describe(), "identity");
    // The console lives with the Sandbox API it drives (see `router::app`).
    let console_addr = server
        .service_addrs
        .iter()
        .find(|(service, _)| *service == Service::Sandbox)
        .map_or(server.main_addr, |(_, a)| *a);
    match (console::vendor_missing(), state.dev_issuer.is_some()) {
        (Some(why), _) => tracing::warn!(reason = why, "this build has no browser console (`/` says how to build it)"),
        (None, true) => tracing::info!(
            "browser console: http://{console_addr}/ (sign in with a dev token minted there, from this machine)"
        ),
        (None, false) => {
            tracing::info!("browser console: http://{console_addr}/ (sign in with a token from your identity provider)")
        }
    }
    if state.dev_issuer.is_some() {
        tracing::info!(
            "get a token with: cloudterm token alice --data-dir {}   then: curl -H \"Authorization: Bearer $TOKEN\" http://{}/me",
            config.data_dir.display(),
            server.main_addr
        );
    }
    for (service, addr) in &server.service_addrs {
        tracing::info!(service = service.name(), "serving the {} service alone on http://{addr}", service.name());
    }
    tracing::info!(took_ms = took.as_millis() as u64, docs = %format!("http://{}/docs", server.main_addr), "listening on http://{}", server.main_addr);
}

/// Registers SIGINT and SIGTERM handlers now and returns the future that resolves on either.
/// Registration is synchronous so no signal can slip between start-up and the first poll.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
