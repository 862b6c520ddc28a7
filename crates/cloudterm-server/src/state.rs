//! `AppState`: the handles every handler shares, built once from the config at start-up.

use std::ops::Deref;
use std::sync::Arc;

use anyhow::Context;
use cloudterm_blobstore::{BlobStore, BlobStoreConfig};
use cloudterm_domain::{PrincipalService, SandboxService, SandboxSettings};
use cloudterm_identity::{DevIssuer, Verifier, VerifierConfig};
use cloudterm_runtime::{Limits, ProcessRuntime, ProcessRuntimeConfig, Runtime, RuntimeChoice, RuntimeKind, Selection};
use cloudterm_store::Store;

use crate::config::Config;
use crate::metrics::Metrics;

/// The shared application, cheap to clone into every request.
#[derive(Clone)]
pub struct AppState(Arc<App>);

/// What the handlers reach through [`AppState`].
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// Metadata.
    pub store: Arc<dyn Store>,
    /// Snapshot bytes.
    pub blobs: BlobStore,
    /// The runtime in use and why it was chosen.
    pub runtime: Selection,
    /// Verifies bearer tokens.
    pub verifier: Verifier,
    /// The built-in issuer, when no real IdP is configured.
    pub dev_issuer: Option<DevIssuer>,
    /// Principals and their home workspaces.
    pub principals: PrincipalService,
    /// Sandboxes.
    pub sandboxes: SandboxService,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

impl AppState {
    /// Opens every port the config names: store (migrations run here), blob storage, the
    /// runtime choice and identity.
    pub async fn build(config: Config) -> anyhow::Result<AppState> {
        create_private_dir(&config.data_dir)?;
        let store_url = config.store_url();
        let store = cloudterm_store::open(&store_url)
            .await
            .with_context(|| format!("cannot open the metadata store (store.url = {store_url})"))?;
        let blobs = BlobStore::open(BlobStoreConfig::Local {
            root: config.local_storage_path(),
        })
        .await
        .context("cannot open snapshot storage (storage.local_path)")?;
        let choice: RuntimeChoice = config.runtime.kind.parse().map_err(anyhow::Error::msg)?;
        let runtime = tokio::task::spawn_blocking(move || cloudterm_runtime::select(choice))
            .await
            .context("runtime probe panicked")?
            .context("cannot use the requested runtime (runtime.kind)")?;
        let (verifier, dev_issuer) = if config.uses_external_idp() {
            let verifier = Verifier::remote(verifier_config(&config))
                .await
                .context("cannot configure the identity provider (auth.*)")?;
            (verifier, None)
        } else {
            let issuer = DevIssuer::load_or_create(&config.data_dir)
                .context("cannot load or create the dev issuer key")?;
            (Verifier::dev(&issuer), Some(issuer))
        };
        let principals = PrincipalService::new(store.clone());
        let sandbox_runtime = build_runtime(&config, &runtime)?;
        let sandboxes = SandboxService::new(store.clone(), sandbox_runtime, sandbox_settings(&config)?);
        let recovered = sandboxes.recover().await.map_err(|err| anyhow::anyhow!("cannot recover sandboxes: {err}"))?;
        if recovered != Default::default() {
            tracing::info!(reattached = ?recovered.reattached, stopped = ?recovered.marked_stopped, cleaned_up = ?recovered.cleaned_up, "recovered sandboxes after a restart");
        }
        Ok(AppState(Arc::new(App {
            config,
            store,
            blobs,
            runtime,
            verifier,
            dev_issuer,
            principals,
            sandboxes,
            metrics: Metrics::new(),
        })))
    }
}

fn verifier_config(config: &Config) -> VerifierConfig {
    let auth = &config.auth;
    VerifierConfig {
        issuer: auth.issuer.clone(),
        jwks_url: auth.jwks_url.clone(),
        audiences: auth.audience.clone(),
        principal_claim: auth.principal_claim.clone(),
        leeway: std::time::Duration::from_secs(auth.leeway_seconds),
        jwks_refresh_min_interval: std::time::Duration::from_secs(
            auth.jwks_refresh_min_interval_seconds,
        ),
        jwks_max_age: std::time::Duration::from_secs(auth.jwks_max_age_seconds),
        ..VerifierConfig::default()
    }
}

/// Creates the data directory readable by its owner only: it holds the issuer's private key
/// and every principal's files.
fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| {
            format!(
                "cannot create the data directory {} (data_dir)",
                path.display()
            )
        })
}

/// Finds a helper binary: the configured path, else beside the running executable (or its
/// parent directory, where test binaries live in `target/*/deps/`), else by name in `PATH`.
pub fn locate_binary(configured: Option<&std::path::Path>, name: &str) -> std::path::PathBuf {
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    std::path::PathBuf::from(name)
}

fn build_runtime(config: &Config, selection: &Selection) -> anyhow::Result<Arc<dyn Runtime>> {
    let agent_binary = locate_binary(config.runtime.agent_path.as_deref(), "cloudterm-agent");
    let root_dir = config.data_dir.join("sandboxes");
    match selection.kind {
        RuntimeKind::Process => Ok(Arc::new(ProcessRuntime::new(ProcessRuntimeConfig { agent_binary, root_dir }))),
        RuntimeKind::Linux => Ok(Arc::new(ProcessRuntime::new(ProcessRuntimeConfig { agent_binary, root_dir }))),
        RuntimeKind::Firecracker => anyhow::bail!("the firecracker runtime is not built yet"),
    }
}

fn sandbox_settings(config: &Config) -> anyhow::Result<SandboxSettings> {
    let sandboxes = &config.sandboxes;
    let mut mount_allow = Vec::new();
    for dir in &sandboxes.mount_allow {
        match std::fs::canonicalize(dir) {
            Ok(real) => mount_allow.push(real),
            Err(err) => tracing::warn!(dir = %dir.display(), error = %err, "ignoring a sandboxes.mount_allow entry that does not resolve"),
        }
    }
    Ok(SandboxSettings {
        workspaces_dir: config.data_dir.join("workspaces"),
        state_dir: config.data_dir.join("sandboxes"),
        default_timeout_seconds: sandboxes.default_timeout_seconds,
        max_timeout_seconds: sandboxes.max_timeout_seconds,
        default_limits: Limits {
            memory_mb: Some(sandboxes.default_memory_mb),
            cpus: Some(sandboxes.default_cpus),
            pids: Some(sandboxes.default_pids),
            disk_mb: None,
        },
        max_limits: Limits {
            memory_mb: Some(sandboxes.max_memory_mb),
            cpus: Some(sandboxes.max_cpus),
            pids: Some(sandboxes.max_pids),
            disk_mb: None,
        },
        max_sandboxes_per_principal: config.quotas.max_sandboxes,
        mount_allow,
        images_dir: config.runtime.images_dir.clone(),
    })
}
