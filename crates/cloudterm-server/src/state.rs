//! `AppState`: the handles every handler shares, built once from the config at start-up.

use std::ops::Deref;
use std::sync::Arc;

use anyhow::Context;
use cloudterm_blobstore::{BlobStore, BlobStoreConfig, S3Config};
use cloudterm_domain::previews::PreviewSettings;
use cloudterm_domain::{
    MarketplaceService, MarketplaceSettings, PreviewService, PrincipalService, SandboxService, SandboxSettings,
    SnapshotService, SnapshotSettings, WorkspaceService,
};
use cloudterm_identity::{DevIssuer, Verifier, VerifierConfig};
use cloudterm_runtime::{Limits, ProcessRuntime, ProcessRuntimeConfig, Runtime, RuntimeChoice, RuntimeKind, Selection};
use cloudterm_runtime_linux::{LinuxRuntime, LinuxRuntimeConfig, NetworkMode};
use cloudterm_store::Store;
use cloudterm_volumes::Volumes;

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
    pub sandboxes: Arc<SandboxService>,
    /// Snapshots of workspaces.
    pub snapshots: Arc<SnapshotService>,
    /// Workspaces, sharing, exec delegation and worker runs.
    pub workspaces: WorkspaceService,
    /// The worker marketplace.
    pub marketplace: Arc<MarketplaceService>,
    /// Terminal sessions, which outlive their WebSocket connections.
    pub terminals: cloudterm_terminal::TerminalHub,
    /// Registered previews, their health and fallbacks.
    pub previews: Arc<PreviewService>,
    /// The preview proxy's link key and connection pool.
    pub preview_router: crate::preview::PreviewRouter,
    /// Where the runtime keeps per-sandbox state.
    pub runtime_state_root: std::path::PathBuf,
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
    /// A new instance of the sandbox runtime over the same state, for tools that must act on
    /// sandboxes from another async runtime (test clean-up, maintenance commands).
    pub fn fresh_runtime(&self) -> anyhow::Result<Arc<dyn Runtime>> {
        build_runtime(&self.config, &self.runtime, self.runtime_state_root.clone(), &self.blobs)
    }

    /// Opens every port the config names: store (migrations run here), blob storage, the
    /// runtime choice and identity.
    pub async fn build(config: Config) -> anyhow::Result<AppState> {
        create_private_dir(&config.data_dir)?;
        let store_url = config.store_url();
        let store = cloudterm_store::open(&store_url)
            .await
            .with_context(|| format!("cannot open the metadata store (store.url = {})", config.store_url_redacted()))?;
        let blobs = open_blob_store(&config).await?;
        let choice: RuntimeChoice = config.runtime.kind.parse().map_err(anyhow::Error::msg)?;
        let probe_config = config.clone();
        let runtime = tokio::task::spawn_blocking(move || {
            cloudterm_runtime::select_with(choice, &|| crate::firecracker::probe(&probe_config))
        })
        .await
        .context("runtime probe panicked")?
        .context("cannot use the requested runtime (runtime.kind)")?;
        let (verifier, dev_issuer) = if config.uses_external_idp() {
            let verifier = Verifier::remote(verifier_config(&config))
                .await
                .context("cannot configure the identity provider (auth.*)")?;
            (verifier, None)
        } else {
            let issuer =
                DevIssuer::load_or_create(&config.data_dir).context("cannot load or create the dev issuer key")?;
            (Verifier::dev(&issuer), Some(issuer))
        };
        let principals = PrincipalService::new(store.clone());
        let state_root = runtime_state_dir(&config, runtime.kind)?;
        let sandbox_runtime = build_runtime(&config, &runtime, state_root.clone(), &blobs)?;
        let state_root_for_app = state_root.clone();
        let sandboxes = Arc::new(SandboxService::new(
            store.clone(),
            sandbox_runtime,
            sandbox_settings(&config, state_root, &runtime)?,
        ));
        // Before recovery, so a sandbox that dies while it re-attaches the others is recorded.
        sandboxes.watch_exits();
        let recovered = sandboxes.recover().await.map_err(|err| anyhow::anyhow!("cannot recover sandboxes: {err}"))?;
        if recovered != Default::default() {
            tracing::info!(reattached = ?recovered.reattached, stopped = ?recovered.marked_stopped, cleaned_up = ?recovered.cleaned_up, volumes_mounted = ?recovered.volumes_mounted, "recovered sandboxes after a restart");
        }
        sandboxes.fill_pool();
        let snapshots = Arc::new(SnapshotService::new(
            store.clone(),
            blobs.clone(),
            Arc::clone(&sandboxes),
            snapshot_settings(&config)?,
        ));
        let cleaned = snapshots.recover().await.map_err(|err| anyhow::anyhow!("cannot recover snapshots: {err}"))?;
        if cleaned != Default::default() {
            tracing::info!(pending = ?cleaned.removed_pending, strays = ?cleaned.removed_strays, aborted_uploads = cleaned.aborted_uploads, "cleaned up after interrupted snapshots");
        }
        // Worker files are staged here while packed or read back; leftovers of a crash go.
        let scratch_dir = config.data_dir.join("marketplace-tmp");
        let _ = std::fs::remove_dir_all(&scratch_dir);
        let marketplace =
            Arc::new(MarketplaceService::new(store.clone(), blobs.clone(), MarketplaceSettings { scratch_dir }));
        let metrics = Metrics::new();
        let previews = Arc::new(PreviewService::new(
            store.clone(),
            Arc::clone(&sandboxes),
            Arc::new(metrics.clone()),
            PreviewSettings::default(),
        ));
        let workspaces = WorkspaceService::new(
            store.clone(),
            Arc::clone(&sandboxes),
            Arc::clone(&snapshots),
            Arc::clone(&marketplace),
            Arc::clone(&previews),
        );
        let preview_router = crate::preview::PreviewRouter {
            links: crate::preview::LinkSigner::load(config.preview.secret_file.as_deref(), &config.data_dir)?,
            pool: std::sync::Arc::default(),
        };
        let terminals = cloudterm_terminal::TerminalHub::new(terminal_settings(&config), Arc::new(metrics.clone()));
        Ok(AppState(Arc::new(App {
            config,
            store,
            blobs,
            runtime,
            verifier,
            dev_issuer,
            principals,
            sandboxes,
            snapshots,
            workspaces,
            marketplace,
            terminals,
            previews,
            preview_router,
            runtime_state_root: state_root_for_app,
            metrics,
        })))
    }
}

/// Terminal sessions: the configured idle time and redraw wait, the crate's limits.
pub(crate) fn terminal_settings(config: &Config) -> cloudterm_terminal::TerminalSettings {
    cloudterm_terminal::TerminalSettings {
        idle_session: std::time::Duration::from_secs(config.terminal.idle_session_seconds),
        redraw_wait: std::time::Duration::from_millis(config.terminal.redraw_wait_ms),
        redraw_quiet: std::time::Duration::from_millis(config.terminal.redraw_quiet_ms),
        ..cloudterm_terminal::TerminalSettings::default()
    }
}

/// Snapshot policy, with the encryption key read from its file.
fn snapshot_settings(config: &Config) -> anyhow::Result<SnapshotSettings> {
    let key = match &config.snapshots.key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "invalid setting snapshots.key_file (CLOUDTERM_SNAPSHOT_KEY_FILE): cannot read {}",
                    path.display()
                )
            })?;
            let bytes: [u8; 32] = hex::decode(text.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
                anyhow::anyhow!(
                    "invalid setting snapshots.key_file (CLOUDTERM_SNAPSHOT_KEY_FILE): {} must hold 64 hex characters (e.g. `openssl rand -hex 32`)",
                    path.display()
                )
            })?;
            Some(cloudterm_domain::snapshots::Key::from_bytes(bytes))
        }
        None => None,
    };
    Ok(SnapshotSettings { retention: config.snapshots.retention, key, ..SnapshotSettings::default() })
}

/// Opens snapshot storage. S3 credentials come from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
/// (`AWS_SESSION_TOKEN`), read here and not in the config file so secrets stay out of it; unset,
/// an AWS machine's own role is used. (Uploads a crashed server left unfinished are aborted by
/// the snapshot service's start-up recovery.) Credentials set in the config struct itself
/// (embedding, tests) win over the environment.
async fn open_blob_store(config: &Config) -> anyhow::Result<BlobStore> {
    let storage = &config.storage;
    let (blob_config, keys) = match storage.backend.as_str() {
        "s3" => {
            let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
            let endpoint = storage.s3_endpoint.clone();
            let s3 = S3Config {
                allow_http: endpoint.as_deref().is_some_and(|url| url.starts_with("http://")),
                endpoint,
                region: storage.s3_region.clone(),
                bucket: storage.s3_bucket.clone().unwrap_or_default(),
                prefix: storage.s3_prefix.clone(),
                path_style: storage.s3_path_style,
                access_key_id: storage
                    .s3_credentials
                    .as_ref()
                    .map(|c| c.access_key_id.clone())
                    .or_else(|| env("AWS_ACCESS_KEY_ID")),
                secret_access_key: storage
                    .s3_credentials
                    .as_ref()
                    .map(|c| c.secret_access_key.clone())
                    .or_else(|| env("AWS_SECRET_ACCESS_KEY")),
                session_token: env("AWS_SESSION_TOKEN"),
                retry_budget: std::time::Duration::from_secs(storage.s3_retry_seconds),
                ..S3Config::default()
            };
            (BlobStoreConfig::S3(s3), "storage.s3_*, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY")
        }
        _ => (BlobStoreConfig::Local { root: config.local_storage_path() }, "storage.local_path"),
    };
    let blobs = BlobStore::open(blob_config).await.with_context(|| format!("cannot open snapshot storage ({keys})"))?;
    Ok(blobs)
}

fn verifier_config(config: &Config) -> VerifierConfig {
    let auth = &config.auth;
    VerifierConfig {
        issuer: auth.issuer.clone(),
        jwks_url: auth.jwks_url.clone(),
        audiences: auth.audience.clone(),
        principal_claim: auth.principal_claim.clone(),
        leeway: std::time::Duration::from_secs(auth.leeway_seconds),
        jwks_refresh_min_interval: std::time::Duration::from_secs(auth.jwks_refresh_min_interval_seconds),
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
        // Searchable but not listable by others: a linux sandbox's root user is an unprivileged
        // host uid, and the kernel walks the path to its root file system as that uid. The
        // secrets inside (the issuer key) sit in 0700 directories of their own.
        .mode(0o711)
        .create(path)
        .with_context(|| format!("cannot create the data directory {} (data_dir)", path.display()))
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

fn build_runtime(
    config: &Config,
    selection: &Selection,
    root_dir: std::path::PathBuf,
    blobs: &BlobStore,
) -> anyhow::Result<Arc<dyn Runtime>> {
    let agent_binary = locate_binary(config.runtime.agent_path.as_deref(), "cloudterm-agent");
    let network = config.sandbox_network()?;
    if network.mode != NetworkMode::None && selection.kind != RuntimeKind::Linux {
        anyhow::bail!(
            "invalid setting sandboxes.network (CLOUDTERM_SANDBOX_NETWORK): \"{}\" needs the linux runtime, and the \
             {} runtime was chosen ({}); the process runtime has no network namespace to give a sandbox \
             (its agent uses the host's network as it is). Use runtime.kind = linux, or sandboxes.network = none",
            network.mode,
            selection.kind,
            selection.reason
        );
    }
    if network.mode == NetworkMode::None && config.quotas.egress_mb > 0 {
        tracing::warn!("quotas.egress_mb has nothing to count: sandboxes.network is none, so sandboxes have no egress");
    }
    match selection.kind {
        RuntimeKind::Process => Ok(Arc::new(ProcessRuntime::new(ProcessRuntimeConfig { agent_binary, root_dir }))),
        RuntimeKind::Linux => {
            let helper_binary = locate_binary(config.runtime.linux_helper_path.as_deref(), "cloudterm-linux-helper");
            let mut linux = LinuxRuntimeConfig::new(root_dir, agent_binary, helper_binary);
            linux.default_memory_mb = config.sandboxes.default_memory_mb;
            linux.default_cpus = config.sandboxes.default_cpus;
            linux.default_pids = config.sandboxes.default_pids;
            linux.network = network;
            Ok(Arc::new(LinuxRuntime::new(linux)))
        }
        RuntimeKind::Firecracker => Ok(Arc::new(crate::firecracker::build(config, root_dir, blobs.clone())?)),
    }
}

/// The workspaces' storage: size-limited volumes where limits can be enforced (the linux
/// runtime, as root, with loop devices and e2fsprogs), plain directories whose usage is only
/// reported otherwise; the log says which, and why.
fn workspace_volumes(config: &Config, selection: &Selection) -> Volumes {
    let limited = config.quotas.storage_mb > 0 || config.quotas.principals.values().any(|o| o.storage_mb > Some(0));
    let enforceable = match selection.kind {
        RuntimeKind::Linux => Volumes::probe(),
        other => Err(format!("the {other} runtime shares the host's file system with its sandboxes")),
    };
    match enforceable {
        Ok(()) => {
            if limited {
                tracing::info!("workspace storage limits are enforced (an ext4 volume per workspace)");
            }
            Volumes::enforcing()
        }
        Err(why) => {
            if limited {
                tracing::warn!(reason = %why, "workspace storage limits are only reported, not enforced");
            }
            Volumes::reporting(why)
        }
    }
}

fn sandbox_settings(
    config: &Config,
    state_dir: std::path::PathBuf,
    selection: &Selection,
) -> anyhow::Result<SandboxSettings> {
    let sandboxes = &config.sandboxes;
    let mut mount_allow = Vec::new();
    for dir in &sandboxes.mount_allow {
        match std::fs::canonicalize(dir) {
            Ok(real) => mount_allow.push(real),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "ignoring a sandboxes.mount_allow entry that does not resolve")
            }
        }
    }
    Ok(SandboxSettings {
        workspaces_dir: config.data_dir.join("workspaces"),
        state_dir,
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
        quotas: quota_policy(&config.quotas),
        mount_allow,
        images_dir: config.runtime.images_dir.clone(),
        warm_pool: sandboxes.warm_pool,
        idle_pause: (sandboxes.idle_pause_seconds > 0)
            .then(|| std::time::Duration::from_secs(sandboxes.idle_pause_seconds)),
        volumes: Arc::new(workspace_volumes(config, selection)),
    })
}

/// The directory of per-sandbox runtime state. A linux sandbox's root is an unprivileged host
/// uid, and the kernel walks the path to the sandbox's root file system as that uid, so every
/// directory above it must be searchable by others. When the default place (inside the data
/// dir) is not (a data dir under a 0700 home such as `/root`), state goes to
/// `/var/lib/cloudterm/runtime-<hash of the data dir>` instead, and the log says so; a
/// configured `runtime.state_dir` that cannot work is an error.
fn runtime_state_dir(config: &Config, kind: RuntimeKind) -> anyhow::Result<std::path::PathBuf> {
    let wanted = config.runtime_state_dir();
    if kind != RuntimeKind::Linux {
        return Ok(wanted);
    }
    let Some(blocker) = unsearchable_ancestor(&wanted) else { return Ok(wanted) };
    if config.runtime.state_dir.is_some() {
        anyhow::bail!(
            "invalid setting runtime.state_dir (CLOUDTERM_RUNTIME_STATE_DIR): {} is not searchable by other users, which linux sandboxes need",
            blocker.display()
        );
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(config.data_dir.as_os_str().as_encoded_bytes());
    let fallback = std::path::PathBuf::from(format!("/var/lib/cloudterm/runtime-{}", hex::encode(&digest[..6])));
    tracing::info!(
        blocked_by = %blocker.display(),
        state_dir = %fallback.display(),
        "the data dir is not searchable by other users; keeping linux sandbox state elsewhere (set runtime.state_dir to choose)"
    );
    std::fs::create_dir_all(&fallback).with_context(|| format!("cannot create {}", fallback.display()))?;
    Ok(fallback)
}

/// The first existing directory above (or at) `path` that others cannot search, if any.
fn unsearchable_ancestor(path: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .filter_map(|dir| std::fs::metadata(dir).ok().map(|meta| (dir, meta)))
        .find(|(_, meta)| meta.is_dir() && meta.permissions().mode() & 0o001 == 0)
        .map(|(dir, _)| dir.to_path_buf())
}

/// The domain's quota policy from the `[quotas]` section.
fn quota_policy(quotas: &crate::config::QuotaConfig) -> cloudterm_domain::quotas::QuotaPolicy {
    use cloudterm_domain::quotas::{QuotaLimits, QuotaOverride, QuotaPolicy};
    QuotaPolicy {
        defaults: QuotaLimits {
            max_sandboxes: quotas.max_sandboxes,
            exec_per_hour: (quotas.exec_per_hour > 0).then_some(quotas.exec_per_hour),
            storage_mb: (quotas.storage_mb > 0).then_some(quotas.storage_mb),
            egress_mb: (quotas.egress_mb > 0).then_some(quotas.egress_mb),
        },
        overrides: quotas
            .principals
            .iter()
            .map(|(id, o)| {
                let changes = QuotaOverride {
                    max_sandboxes: o.max_sandboxes,
                    exec_per_hour: o.exec_per_hour,
                    storage_mb: o.storage_mb,
                    egress_mb: o.egress_mb,
                };
                (id.clone(), changes)
            })
            .collect(),
    }
}
