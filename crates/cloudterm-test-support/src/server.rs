//! `TestServer`: the real cloudterm server, serving real HTTP on an ephemeral port.

use std::net::SocketAddr;

use cloudterm_server::{AppState, Config, Overrides, RunningServer, Service};
use tempfile::TempDir;

/// A running server with its own data directory; dropping it stops the server and removes
/// the directory.
pub struct TestServer {
    running: Option<RunningServer>,
    data_dir: Option<TempDir>,
}

impl TestServer {
    /// A server with the embedded defaults (SQLite, local storage, dev issuer) in a fresh
    /// temp dir, on `127.0.0.1:0`.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Like [`TestServer::start`], after `adjust` has edited the config.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let overrides = Overrides { data_dir: Some(data_dir.path().to_path_buf()), listen: Some("127.0.0.1:0".into()) };
        let mut config = Config::load(None, |_| None, &overrides).expect("default config is valid");
        config.runtime.kind = "process".into();
        adjust(&mut config);
        config.validate().expect("adjusted config is valid");
        TestServer::start_config(config, data_dir).await
    }

    /// A server on the given runtime (`process` or `linux`); `None` when the runtime cannot
    /// run here and the test should stop (see [`crate::skip_unless`]: under `CI=true` that
    /// fails instead).
    ///
    /// `firecracker` runs only where `CLOUDTERM_TEST_FIRECRACKER_KERNEL` (a guest `vmlinux`) and
    /// `CLOUDTERM_TEST_FIRECRACKER_ROOTFS` (`cloudterm image build`) are set, on a host with
    /// hardware KVM (docs/firecracker.md); elsewhere it skips, even under `CI=true`: no CI
    /// machine can install Firecracker.
    pub async fn start_runtime(runtime: &str, adjust: impl FnOnce(&mut Config)) -> Option<TestServer> {
        if runtime == "linux"
            && crate::skip_unless(crate::linux_runtime_available(), "the linux runtime needs root and user namespaces")
        {
            return None;
        }
        let firecracker = if runtime == "firecracker" {
            let var = |name: &str| std::env::var_os(name).map(std::path::PathBuf::from);
            match (var("CLOUDTERM_TEST_FIRECRACKER_KERNEL"), var("CLOUDTERM_TEST_FIRECRACKER_ROOTFS")) {
                (Some(kernel), Some(rootfs)) => Some((kernel, rootfs)),
                _ => {
                    eprintln!("SKIP: set CLOUDTERM_TEST_FIRECRACKER_KERNEL and _ROOTFS on a hardware-KVM host to run this on firecracker");
                    return None;
                }
            }
        } else {
            None
        };
        let runtime = runtime.to_string();
        Some(
            TestServer::start_with(move |config| {
                config.runtime.kind = runtime;
                if let Some((kernel, rootfs)) = firecracker {
                    config.runtime.firecracker_kernel = Some(kernel);
                    config.runtime.firecracker_rootfs = Some(rootfs);
                }
                adjust(config);
            })
            .await,
        )
    }

    async fn start_config(config: Config, data_dir: TempDir) -> TestServer {
        // Like a real data dir: searchable by the unprivileged uid a linux sandbox's root is.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(data_dir.path(), std::fs::Permissions::from_mode(0o711));
        }
        if std::env::var_os("CLOUDTERM_TEST_LOG").is_some() {
            cloudterm_server::telemetry::init(&config.log);
        }
        let state = AppState::build(config).await.expect("server state builds");
        let running = cloudterm_server::start(state).await.expect("server starts");
        TestServer { running: Some(running), data_dir: Some(data_dir) }
    }

    fn running(&self) -> &RunningServer {
        self.running.as_ref().expect("server is running")
    }

    /// The main listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.running().main_addr
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// The address of a service's dedicated listener, if it has one.
    pub fn service_addr(&self, service: Service) -> Option<SocketAddr> {
        self.running().service_addrs.iter().find(|(s, _)| *s == service).map(|(_, addr)| *addr)
    }

    /// The server's state, to look inside.
    pub fn state(&self) -> &AppState {
        &self.running().state
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.as_ref().expect("data dir").path()
    }

    /// A dev-issuer token for `principal`, valid for an hour.
    pub fn token(&self, principal: &str) -> String {
        let issuer = self.state().dev_issuer.as_ref().expect("the dev issuer is on");
        issuer.mint(principal, std::time::Duration::from_secs(3600)).expect("mint")
    }

    /// Stops the server gracefully and returns its data directory, so a test can start
    /// another server on the same data.
    pub async fn stop(mut self) -> TempDir {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
        self.data_dir.take().expect("data dir")
    }

    /// Stops the server the way SIGKILL would for its sandboxes: the listeners and tasks are
    /// dropped, nothing is shut down gracefully (no pool is closed, no sandbox stopped).
    pub fn crash(mut self) -> TempDir {
        drop(self.running.take());
        self.data_dir.take().expect("data dir")
    }

    /// Starts a new server on a data directory a previous server used.
    pub async fn restart_on(data_dir: TempDir, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let overrides = Overrides { data_dir: Some(data_dir.path().to_path_buf()), listen: Some("127.0.0.1:0".into()) };
        let mut config = Config::load(None, |_| None, &overrides).expect("default config is valid");
        config.runtime.kind = "process".into();
        adjust(&mut config);
        TestServer::start_config(config, data_dir).await
    }
}

impl Drop for TestServer {
    /// Stops the server and every sandbox it started, so no test leaves processes, mounts or
    /// cgroups behind (sandboxes otherwise outlive their server on purpose). The sandboxes are
    /// stopped through a fresh runtime instance on a thread of its own, because the test's
    /// async runtime is blocked in this drop.
    fn drop(&mut self) {
        let Some(running) = self.running.take() else { return };
        let state = running.state.clone();
        drop(running);
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                let Ok(sandbox_runtime) = state.fresh_runtime() else { return };
                for id in sandbox_runtime.list().await.unwrap_or_default() {
                    if let Err(err) = sandbox_runtime.stop(&id).await {
                        eprintln!("test clean-up: cannot stop sandbox {id}: {err}");
                    }
                }
                // Workspace volumes stay mounted across a server's stop (for sandboxes that
                // outlive it); the temporary data dir goes, so they go first.
                state.sandboxes.volumes().unmount_all(state.sandboxes.workspaces_root()).await;
            });
        });
        let _ = cleanup.join();
    }
}
