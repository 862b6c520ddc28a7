//! The server's configuration: one TOML file, `CLOUDTERM_*` environment overrides, command-line
//! flags on top, then validation that names the bad key.
//!
//! Precedence, lowest first: built-in defaults, the file (`--config` / `CLOUDTERM_CONFIG`),
//! the environment, then flags. Every setting is declared once in [`SETTINGS`], which drives
//! both the environment overrides and the `--help` table, so the two cannot drift apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything `cloudterm serve` can be told.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where SQLite, local snapshots, workspaces and the dev issuer's key live.
    pub data_dir: PathBuf,
    /// The listener that serves every service without a listener of its own.
    pub listen: String,
    /// Optional dedicated listeners, one per service.
    pub listeners: ListenersConfig,
    /// Logging.
    pub log: LogConfig,
    /// HTTP plumbing limits.
    pub http: HttpConfig,
    /// `/metrics`.
    pub metrics: MetricsConfig,
    /// Identity: the dev issuer or a real IdP.
    pub auth: AuthConfig,
    /// The metadata store.
    pub store: StoreConfig,
    /// Snapshot storage.
    pub storage: StorageConfig,
    /// Snapshot policy: retention, encryption, automatic snapshots.
    pub snapshots: SnapshotConfig,
    /// The sandbox runtime.
    pub runtime: RuntimeConfig,
    /// Sandbox defaults and bounds.
    pub sandboxes: SandboxConfig,
    /// Default limits per principal.
    pub quotas: QuotaConfig,
    /// Terminal sessions.
    pub terminal: TerminalConfig,
    /// The preview router.
    pub preview: PreviewConfig,
}

/// Dedicated listeners: serve one service alone on its own address (the seed's 8000–8003).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// The Sandbox API (and the terminal).
    pub sandbox: Option<String>,
    /// The Snapshot API.
    pub snapshot: Option<String>,
    /// The Agent Workspace API and the marketplace.
    pub workspace: Option<String>,
    /// The preview router.
    pub preview: Option<String>,
}

/// Log format and filter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (for people) or `json` (one object a line, for log shippers).
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `cloudterm_server=debug,info`.
    pub level: String,
}

/// Limits every route shares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted by buffered routes, in bytes.
    pub max_body_bytes: u64,
    /// Longest a buffered request may take, in seconds.
    pub request_timeout_seconds: u64,
    /// How long shutdown waits for requests in flight, in seconds.
    pub shutdown_grace_seconds: u64,
}

/// `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Require a valid token to read `/metrics`.
    pub require_auth: bool,
}

/// Identity. With `issuer` or `jwks_url` set, the dev issuer is off.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// OIDC issuer URL; its discovery document names the JWKS.
    pub issuer: Option<String>,
    /// JWKS URL, when the IdP has no discovery document (or to pin it).
    pub jwks_url: Option<String>,
    /// Accepted audiences; a token must carry one of them.
    pub audience: Vec<String>,
    /// The claim that names the principal.
    pub principal_claim: String,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Least time between two JWKS refreshes caused by unknown key ids, in seconds.
    pub jwks_refresh_min_interval_seconds: u64,
    /// Refresh the JWKS when older than this, in seconds.
    pub jwks_max_age_seconds: u64,
}

/// The metadata store.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (default: `DATA_DIR/cloudterm.db`) or `postgres://…`.
    pub url: Option<String>,
}

/// Snapshot storage.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `local` or `s3`.
    pub backend: String,
    /// Local backend root (default `DATA_DIR/snapshots`).
    pub local_path: Option<PathBuf>,
    /// S3 endpoint URL (`https://s3.example.com`, `http://127.0.0.1:3900`); unset means AWS.
    /// Credentials are never in this file: they come from `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (or the AWS machine's own role).
    pub s3_endpoint: Option<String>,
    /// S3 signing region (Garage's default is `garage`).
    pub s3_region: String,
    /// S3 bucket; required with `backend = "s3"`. cloudterm never creates it.
    pub s3_bucket: Option<String>,
    /// Every object goes under this prefix in the bucket, so one bucket can serve several
    /// installations.
    pub s3_prefix: String,
    /// Path-style requests (`endpoint/bucket/key`), which need no wildcard DNS; `false` for
    /// virtual-hosted (`bucket.endpoint/key`).
    pub s3_path_style: bool,
    /// How long a failing S3 request is retried, with exponential backoff and jitter, before
    /// the operation fails (and the API answers 503).
    pub s3_retry_seconds: u64,
    /// S3 keys given by a program embedding the server (tests); never read from the file or
    /// the environment's `CLOUDTERM_*` settings, so a config file never holds secrets.
    #[serde(skip)]
    pub s3_credentials: Option<S3Credentials>,
}

/// An S3 access key pair. `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// The sandbox runtime.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `auto`, `linux`, `firecracker` or `process`.
    pub kind: String,
    /// The `cloudterm-agent` binary (default: beside the `cloudterm` binary, else `PATH`).
    pub agent_path: Option<PathBuf>,
    /// The `cloudterm-linux-helper` binary (default: beside the `cloudterm` binary, else `PATH`).
    pub linux_helper_path: Option<PathBuf>,
    /// A directory of named images (`"image": "NAME"` → `images_dir/NAME`).
    pub images_dir: Option<PathBuf>,
    /// Where per-sandbox runtime state lives (writable layers, agent sockets). Default
    /// `DATA_DIR/sandboxes`; see [`Config::runtime_state_dir`].
    pub state_dir: Option<PathBuf>,
    /// The `firecracker` binary (default: `firecracker` on `PATH`).
    pub firecracker_bin: Option<PathBuf>,
    /// The guest kernel of the firecracker runtime, an uncompressed `vmlinux`. Unset: the
    /// firecracker runtime is unavailable (`auto` passes it over).
    pub firecracker_kernel: Option<PathBuf>,
    /// The root image (ext4, `cloudterm image build`) of firecracker sandboxes that name no image.
    pub firecracker_rootfs: Option<PathBuf>,
}

/// Sandbox defaults and bounds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Idle TTL when a request names none, seconds.
    pub default_timeout_seconds: u64,
    /// Longest idle TTL a request may ask for, seconds.
    pub max_timeout_seconds: u64,
    /// Memory limit when a request names none, MiB.
    pub default_memory_mb: u64,
    /// Largest memory limit a request may ask for, MiB.
    pub max_memory_mb: u64,
    /// CPU quota when a request names none, cores.
    pub default_cpus: f64,
    /// Largest CPU quota, cores.
    pub max_cpus: f64,
    /// Process limit when a request names none.
    pub default_pids: u64,
    /// Largest process limit.
    pub max_pids: u64,
    /// Host directories `POST /sandboxes/{id}/mount` may expose (none by default).
    pub mount_allow: Vec<PathBuf>,
    /// How often idle sandboxes are looked for, seconds.
    pub reap_interval_seconds: u64,
    /// Sandboxes kept started ahead of demand, so a create with the default image, limits and
    /// environment is a claim instead of a start (runtimes that support it: linux).
    pub warm_pool: usize,
    /// Seconds an idle sandbox stays paused (frozen, resumed by its next operation) before it
    /// is snapshotted and stopped; 0 stops it as soon as its idle TTL runs out.
    pub idle_pause_seconds: u64,
    /// Outbound network of linux sandboxes: `none` (only `lo`; the default, so an existing
    /// deployment keeps its sandboxes offline) or `nat` (a veth per sandbox, masqueraded out of
    /// the host). The process runtime cannot do `nat` and refuses to start with it.
    pub network: String,
    /// The private range sandbox addresses come from with `nat`, one /30 each.
    pub network_range: String,
    /// Destination networks sandboxes may not reach, besides loopback, link-local (cloud
    /// metadata), multicast, the host itself and other sandboxes, which are always refused.
    pub network_deny: Vec<String>,
    /// Name servers for sandboxes (reachable on port 53 even inside a denied range); empty: the
    /// host's own non-loopback ones.
    pub network_dns: Vec<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            default_timeout_seconds: 900,
            max_timeout_seconds: 86_400,
            default_memory_mb: 512,
            max_memory_mb: 16_384,
            default_cpus: 1.0,
            max_cpus: 64.0,
            default_pids: 512,
            max_pids: 32_768,
            mount_allow: Vec::new(),
            reap_interval_seconds: 1,
            warm_pool: 2,
            idle_pause_seconds: 0,
            network: "none".into(),
            network_range: cloudterm_runtime_linux::network::DEFAULT_RANGE.into(),
            network_deny: cloudterm_runtime_linux::network::DEFAULT_DENY.iter().map(|net| net.to_string()).collect(),
            network_dns: Vec::new(),
        }
    }
}

/// Snapshot policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Newest unpinned snapshots kept per workspace.
    pub retention: usize,
    /// A file holding the 32-byte snapshot key as 64 hex characters. Set, every new snapshot
    /// is encrypted (XChaCha20-Poly1305 STREAM) and storage never sees plaintext.
    pub key_file: Option<PathBuf>,
    /// Snapshot a sandbox's workspace when its idle TTL stops it.
    pub on_idle: bool,
    /// Every this many seconds, snapshot each workspace that has a running sandbox (kind
    /// `daily`); 0 turns it off.
    pub periodic_seconds: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig { retention: 5, key_file: None, on_idle: true, periodic_seconds: 86_400 }
    }
}

/// Terminal sessions (`GET /sandboxes/{id}/terminal`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminalConfig {
    /// How long a named session with no viewer keeps its shell, seconds (0: it ends when its
    /// last viewer leaves).
    pub idle_session_seconds: u64,
    /// How long a viewer that re-attaches at a new size may wait for a full-screen program to
    /// redraw before its first repaint, milliseconds (0: repaint at once, the old layout
    /// cropped). See `docs/terminal.md`.
    pub redraw_wait_ms: u64,
    /// Output then this much silence, milliseconds, counts as the program having redrawn
    /// (within `redraw_wait_ms`).
    pub redraw_quiet_ms: u64,
    /// Seconds between the server's pings on a terminal connection; one that sends nothing
    /// (not even a pong) for three of them is closed. Lower it behind a proxy that drops
    /// connections idle for less than this.
    pub ping_seconds: u64,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        TerminalConfig { idle_session_seconds: 600, redraw_wait_ms: 150, redraw_quiet_ms: 50, ping_seconds: 30 }
    }
}

/// The preview router (`/preview/...`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreviewConfig {
    /// The public base URL previews are reached at (`https://cloudterm.example.com`), used to
    /// build the URLs the API hands out and `X-Forwarded-Proto`; unset, the request's `Host`
    /// (or the dedicated preview listener's address) with `http`.
    pub base_url: Option<String>,
    /// A file holding the key that signs preview links (64+ hex characters); unset,
    /// `DATA_DIR/preview/link.key`, created on first start. Servers sharing a store must share it.
    pub secret_file: Option<PathBuf>,
    /// Seconds between health checks of every registered preview (0: off).
    pub health_interval_seconds: u64,
    /// Lifetime of a signed link when the request names none, seconds.
    pub link_ttl_seconds: u64,
    /// Serve previews also at `{port}-{sandbox_id}.{domain}` (wildcard DNS and certificate
    /// pointing at this server), at the host's root, and hand out those URLs.
    pub domain: Option<String>,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        PreviewConfig {
            base_url: None,
            secret_file: None,
            health_interval_seconds: 10,
            link_ttl_seconds: 3600,
            domain: None,
        }
    }
}

/// Default limits per principal.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Running sandboxes per principal.
    pub max_sandboxes: u64,
    /// Commands (execs and background jobs) per sandbox over a rolling hour; 0: unlimited.
    pub exec_per_hour: u64,
    /// MiB per workspace (enforced on the linux runtime as root: writes past it fail); 0:
    /// unlimited.
    pub storage_mb: u64,
    /// Bytes each sandbox may send out, MiB (with `sandboxes.network = "nat"`); 0: unlimited.
    pub egress_mb: u64,
    /// Per-principal overrides (`[quotas.principals.alice]`), file only.
    pub principals: std::collections::BTreeMap<String, QuotaOverrideConfig>,
}

/// What one principal's quotas differ in from the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaOverrideConfig {
    /// Running sandboxes.
    pub max_sandboxes: Option<u64>,
    /// Commands per sandbox and hour; 0: unlimited.
    pub exec_per_hour: Option<u64>,
    /// MiB per workspace; 0: unlimited.
    pub storage_mb: Option<u64>,
    /// Egress per sandbox, MiB; 0: unlimited.
    pub egress_mb: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir(),
            listen: "127.0.0.1:8000".into(),
            listeners: ListenersConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            auth: AuthConfig::default(),
            store: StoreConfig::default(),
            storage: StorageConfig::default(),
            snapshots: SnapshotConfig::default(),
            runtime: RuntimeConfig::default(),
            sandboxes: SandboxConfig::default(),
            quotas: QuotaConfig::default(),
            terminal: TerminalConfig::default(),
            preview: PreviewConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), level: "info".into() }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { max_body_bytes: 16 * 1024 * 1024, request_timeout_seconds: 60, shutdown_grace_seconds: 30 }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: None,
            jwks_url: None,
            audience: Vec::new(),
            principal_claim: "sub".into(),
            leeway_seconds: 30,
            jwks_refresh_min_interval_seconds: 30,
            jwks_max_age_seconds: 600,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "local".into(),
            local_path: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_bucket: None,
            s3_prefix: "cloudterm".into(),
            s3_path_style: true,
            s3_retry_seconds: 30,
            s3_credentials: None,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            kind: "auto".into(),
            agent_path: None,
            linux_helper_path: None,
            images_dir: None,
            state_dir: None,
            firecracker_bin: None,
            firecracker_kernel: None,
            firecracker_rootfs: None,
        }
    }
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_sandboxes: 10,
            exec_per_hour: 0,
            storage_mb: 0,
            egress_mb: 0,
            principals: std::collections::BTreeMap::new(),
        }
    }
}

/// The data directory when none is configured: `$XDG_DATA_HOME/cloudterm`,
/// `$HOME/.local/share/cloudterm`, or `./cloudterm-data` when neither is set.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("cloudterm");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/cloudterm");
    }
    PathBuf::from("cloudterm-data")
}

/// Longest lifetime of a signed preview link, seconds (a week).
pub const MAX_LINK_TTL_SECONDS: u64 = 604_800;

/// Why the configuration cannot be used. The message always names the key or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema (unknown key, wrong type).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// An environment variable has a value of the wrong form.
    #[error("invalid {var} (config key {key}): {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// The config key it overrides.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("invalid setting {key} ({env}): {message}")]
    Invalid {
        /// The config key.
        key: &'static str,
        /// The environment variable that also sets it.
        env: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// One setting: its config key, its environment variable, and what it means.
pub struct Setting {
    /// Dotted key in the TOML file.
    pub key: &'static str,
    /// The `CLOUDTERM_*` variable that overrides it.
    pub env: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

fn parse_u64(text: &str) -> Result<u64, String> {
    text.trim().parse().map_err(|_| format!("expected a whole number, got {text:?}"))
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`; anything else unchanged.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {text:?}")),
    }
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn list(text: &str) -> Vec<String> {
    text.split(',').filter_map(non_empty).collect()
}

/// Every setting, in the order `--help` lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "data_dir",
        env: "CLOUDTERM_DATA_DIR",
        help: "data directory (default ~/.local/share/cloudterm)",
        apply: |c, v| {
            c.data_dir = PathBuf::from(v);
            Ok(())
        },
    },
    Setting {
        key: "listen",
        env: "CLOUDTERM_LISTEN",
        help: "address serving every service (default 127.0.0.1:8000)",
        apply: |c, v| {
            c.listen = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "listeners.sandbox",
        env: "CLOUDTERM_LISTEN_SANDBOX",
        help: "serve the Sandbox API alone here too (seed: :8000)",
        apply: |c, v| {
            c.listeners.sandbox = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "listeners.snapshot",
        env: "CLOUDTERM_LISTEN_SNAPSHOT",
        help: "serve the Snapshot API alone here too (seed: :8001)",
        apply: |c, v| {
            c.listeners.snapshot = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "listeners.workspace",
        env: "CLOUDTERM_LISTEN_WORKSPACE",
        help: "serve the Workspace and marketplace API alone here too (seed: :8002)",
        apply: |c, v| {
            c.listeners.workspace = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "listeners.preview",
        env: "CLOUDTERM_LISTEN_PREVIEW",
        help: "serve the preview router alone here too (seed: :8003)",
        apply: |c, v| {
            c.listeners.preview = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "log.format",
        env: "CLOUDTERM_LOG_FORMAT",
        help: "text or json (default text)",
        apply: |c, v| {
            c.log.format = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "log.level",
        env: "CLOUDTERM_LOG",
        help: "tracing filter (default info)",
        apply: |c, v| {
            c.log.level = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "http.max_body_bytes",
        env: "CLOUDTERM_HTTP_MAX_BODY_BYTES",
        help: "largest buffered request body (default 16 MiB)",
        apply: |c, v| {
            c.http.max_body_bytes = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "http.request_timeout_seconds",
        env: "CLOUDTERM_HTTP_REQUEST_TIMEOUT_SECONDS",
        help: "request timeout (default 60)",
        apply: |c, v| {
            c.http.request_timeout_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "http.shutdown_grace_seconds",
        env: "CLOUDTERM_HTTP_SHUTDOWN_GRACE_SECONDS",
        help: "wait for requests in flight on shutdown (default 30)",
        apply: |c, v| {
            c.http.shutdown_grace_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "metrics.require_auth",
        env: "CLOUDTERM_METRICS_REQUIRE_AUTH",
        help: "require a token for /metrics (default false)",
        apply: |c, v| {
            c.metrics.require_auth = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        key: "auth.issuer",
        env: "CLOUDTERM_AUTH_ISSUER",
        help: "OIDC issuer URL of a real IdP; turns the dev issuer off",
        apply: |c, v| {
            c.auth.issuer = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "auth.jwks_url",
        env: "CLOUDTERM_AUTH_JWKS_URL",
        help: "JWKS URL of a real IdP; turns the dev issuer off",
        apply: |c, v| {
            c.auth.jwks_url = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "auth.audience",
        env: "CLOUDTERM_AUTH_AUDIENCE",
        help: "accepted audiences, comma-separated",
        apply: |c, v| {
            c.auth.audience = list(v);
            Ok(())
        },
    },
    Setting {
        key: "auth.principal_claim",
        env: "CLOUDTERM_AUTH_PRINCIPAL_CLAIM",
        help: "claim naming the principal (default sub)",
        apply: |c, v| {
            c.auth.principal_claim = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "auth.leeway_seconds",
        env: "CLOUDTERM_AUTH_LEEWAY_SECONDS",
        help: "clock leeway for exp/nbf (default 30)",
        apply: |c, v| {
            c.auth.leeway_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "auth.jwks_refresh_min_interval_seconds",
        env: "CLOUDTERM_AUTH_JWKS_REFRESH_MIN_INTERVAL_SECONDS",
        help: "least time between unknown-kid refreshes (default 30)",
        apply: |c, v| {
            c.auth.jwks_refresh_min_interval_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "auth.jwks_max_age_seconds",
        env: "CLOUDTERM_AUTH_JWKS_MAX_AGE_SECONDS",
        help: "refresh the JWKS when older (default 600)",
        apply: |c, v| {
            c.auth.jwks_max_age_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "store.url",
        env: "CLOUDTERM_STORE_URL",
        help: "metadata store: sqlite://PATH (default DATA_DIR/cloudterm.db) or postgres://USER@HOST/DB (password from PGPASSWORD or ~/.pgpass)",
        apply: |c, v| {
            c.store.url = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "storage.backend",
        env: "CLOUDTERM_STORAGE",
        help: "snapshot storage: local (default) or s3",
        apply: |c, v| {
            c.storage.backend = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "snapshots.retention",
        env: "CLOUDTERM_SNAPSHOT_RETENTION",
        help: "newest unpinned snapshots kept per workspace (default 5)",
        apply: |c, v| {
            c.snapshots.retention = usize::try_from(parse_u64(v)?).map_err(|_| "too large".to_string())?;
            Ok(())
        },
    },
    Setting {
        key: "snapshots.key_file",
        env: "CLOUDTERM_SNAPSHOT_KEY_FILE",
        help: "file with a 32-byte key as 64 hex characters; set, every snapshot is stored encrypted",
        apply: |c, v| {
            c.snapshots.key_file = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "snapshots.on_idle",
        env: "CLOUDTERM_SNAPSHOT_ON_IDLE",
        help: "snapshot a sandbox's workspace when its idle TTL stops it (default true)",
        apply: |c, v| {
            c.snapshots.on_idle = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        key: "snapshots.periodic_seconds",
        env: "CLOUDTERM_SNAPSHOT_PERIODIC_SECONDS",
        help: "snapshot every workspace with a running sandbox this often (default 86400, daily; 0 off)",
        apply: |c, v| {
            c.snapshots.periodic_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.local_path",
        env: "CLOUDTERM_STORAGE_LOCAL_PATH",
        help: "local snapshot root (default DATA_DIR/snapshots)",
        apply: |c, v| {
            c.storage.local_path = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "storage.s3_endpoint",
        env: "CLOUDTERM_S3_ENDPOINT",
        help: "S3 endpoint URL (default: AWS); keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        apply: |c, v| {
            c.storage.s3_endpoint = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "storage.s3_region",
        env: "CLOUDTERM_S3_REGION",
        help: "S3 signing region (default us-east-1; Garage: garage)",
        apply: |c, v| {
            c.storage.s3_region = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "storage.s3_bucket",
        env: "CLOUDTERM_S3_BUCKET",
        help: "S3 bucket, required with storage.backend = s3",
        apply: |c, v| {
            c.storage.s3_bucket = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "storage.s3_prefix",
        env: "CLOUDTERM_S3_PREFIX",
        help: "key prefix inside the bucket (default cloudterm)",
        apply: |c, v| {
            c.storage.s3_prefix = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "storage.s3_path_style",
        env: "CLOUDTERM_S3_PATH_STYLE",
        help: "path-style S3 URLs (default true); false for virtual-hosted",
        apply: |c, v| {
            c.storage.s3_path_style = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.s3_retry_seconds",
        env: "CLOUDTERM_S3_RETRY_SECONDS",
        help: "how long an S3 request is retried (backoff with jitter) before it fails (default 30)",
        apply: |c, v| {
            c.storage.s3_retry_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "runtime.kind",
        env: "CLOUDTERM_RUNTIME",
        help: "auto (default), linux, firecracker or process",
        apply: |c, v| {
            c.runtime.kind = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "runtime.agent_path",
        env: "CLOUDTERM_AGENT_PATH",
        help: "the cloudterm-agent binary (default: beside cloudterm, else PATH)",
        apply: |c, v| {
            c.runtime.agent_path = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "runtime.linux_helper_path",
        env: "CLOUDTERM_LINUX_HELPER_PATH",
        help: "the cloudterm-linux-helper binary (default: beside cloudterm, else PATH)",
        apply: |c, v| {
            c.runtime.linux_helper_path = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "runtime.state_dir",
        env: "CLOUDTERM_RUNTIME_STATE_DIR",
        help: "per-sandbox runtime state (default DATA_DIR/sandboxes)",
        apply: |c, v| {
            c.runtime.state_dir = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "runtime.firecracker_bin",
        env: "CLOUDTERM_FIRECRACKER_BIN",
        help: "the firecracker binary (default: firecracker on PATH)",
        apply: |c, v| {
            c.runtime.firecracker_bin = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "runtime.firecracker_kernel",
        env: "CLOUDTERM_FIRECRACKER_KERNEL",
        help: "guest kernel (uncompressed vmlinux) of the firecracker runtime; unset: no firecracker",
        apply: |c, v| {
            c.runtime.firecracker_kernel = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "runtime.firecracker_rootfs",
        env: "CLOUDTERM_FIRECRACKER_ROOTFS",
        help: "default root image (ext4 from `cloudterm image build`) of firecracker sandboxes",
        apply: |c, v| {
            c.runtime.firecracker_rootfs = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "runtime.images_dir",
        env: "CLOUDTERM_IMAGES_DIR",
        help: "directory of named images (image root directories)",
        apply: |c, v| {
            c.runtime.images_dir = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.default_timeout_seconds",
        env: "CLOUDTERM_SANDBOX_TIMEOUT_SECONDS",
        help: "idle TTL of a sandbox when the request names none (default 900)",
        apply: |c, v| {
            c.sandboxes.default_timeout_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.default_memory_mb",
        env: "CLOUDTERM_SANDBOX_MEMORY_MB",
        help: "memory limit of a sandbox when the request names none (default 512)",
        apply: |c, v| {
            c.sandboxes.default_memory_mb = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.default_pids",
        env: "CLOUDTERM_SANDBOX_PIDS",
        help: "process limit of a sandbox when the request names none (default 512)",
        apply: |c, v| {
            c.sandboxes.default_pids = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.warm_pool",
        env: "CLOUDTERM_WARM_POOL",
        help: "sandboxes kept started ahead of demand with the default image and limits (default 2; 0 turns it off)",
        apply: |c, v| {
            c.sandboxes.warm_pool = usize::try_from(parse_u64(v)?).map_err(|_| "too large".to_string())?;
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.idle_pause_seconds",
        env: "CLOUDTERM_IDLE_PAUSE_SECONDS",
        help: "seconds an idle sandbox stays paused, resumed by its next use, before it is snapshotted and stopped (default 0: stop at once)",
        apply: |c, v| {
            c.sandboxes.idle_pause_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.mount_allow",
        env: "CLOUDTERM_MOUNT_ALLOW",
        help: "colon-separated host directories that /sandboxes/{id}/mount may expose",
        apply: |c, v| {
            c.sandboxes.mount_allow = v.split(':').filter_map(non_empty).map(PathBuf::from).collect();
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.network",
        env: "CLOUDTERM_SANDBOX_NETWORK",
        help: "outbound network of linux sandboxes: none (only loopback) or nat (through the host) (default none)",
        apply: |c, v| {
            c.sandboxes.network = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.network_range",
        env: "CLOUDTERM_SANDBOX_NETWORK_RANGE",
        help: "private range of sandbox addresses with network = nat, one /30 each (default 10.88.0.0/16)",
        apply: |c, v| {
            c.sandboxes.network_range = v.trim().to_string();
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.network_deny",
        env: "CLOUDTERM_SANDBOX_NETWORK_DENY",
        help: "comma-separated networks sandboxes may not reach (default the private ranges; loopback, link-local, the host and other sandboxes are always refused)",
        apply: |c, v| {
            c.sandboxes.network_deny = v.split(',').filter_map(non_empty).collect();
            Ok(())
        },
    },
    Setting {
        key: "sandboxes.network_dns",
        env: "CLOUDTERM_SANDBOX_NETWORK_DNS",
        help: "comma-separated name servers for sandboxes (default: the host's non-loopback ones)",
        apply: |c, v| {
            c.sandboxes.network_dns = v.split(',').filter_map(non_empty).collect();
            Ok(())
        },
    },
    Setting {
        key: "quotas.max_sandboxes",
        env: "CLOUDTERM_QUOTA_MAX_SANDBOXES",
        help: "running sandboxes per principal (default 10)",
        apply: |c, v| {
            c.quotas.max_sandboxes = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "quotas.exec_per_hour",
        env: "CLOUDTERM_QUOTA_EXEC_PER_HOUR",
        help: "commands (execs and background jobs) per sandbox over a rolling hour; 0 = unlimited (default 0)",
        apply: |c, v| {
            c.quotas.exec_per_hour = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "quotas.storage_mb",
        env: "CLOUDTERM_QUOTA_STORAGE_MB",
        help: "MiB per workspace; enforced (writes past it fail) on the linux runtime as root, reported only otherwise; 0 = unlimited (default 0)",
        apply: |c, v| {
            c.quotas.storage_mb = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "quotas.egress_mb",
        env: "CLOUDTERM_QUOTA_EGRESS_MB",
        help: "MiB each sandbox may send out (network = nat); past it its outbound traffic is refused; 0 = unlimited (default 0)",
        apply: |c, v| {
            c.quotas.egress_mb = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "terminal.idle_session_seconds",
        env: "CLOUDTERM_TERMINAL_IDLE_SECONDS",
        help: "a named terminal session with no viewer keeps its shell this long (default 600)",
        apply: |c, v| {
            c.terminal.idle_session_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "terminal.redraw_wait_ms",
        env: "CLOUDTERM_TERMINAL_REDRAW_WAIT_MS",
        help: "a viewer re-attaching at a new size waits up to this long for a full-screen program to redraw before its first repaint (default 150; 0 = at once)",
        apply: |c, v| {
            c.terminal.redraw_wait_ms = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "terminal.redraw_quiet_ms",
        env: "CLOUDTERM_TERMINAL_REDRAW_QUIET_MS",
        help: "output then this much silence counts as a program's redraw after a resize (default 50)",
        apply: |c, v| {
            c.terminal.redraw_quiet_ms = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "terminal.ping_seconds",
        env: "CLOUDTERM_TERMINAL_PING_SECONDS",
        help: "seconds between pings on a terminal connection; a client silent for three of them is dropped (default 30)",
        apply: |c, v| {
            c.terminal.ping_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "preview.base_url",
        env: "CLOUDTERM_PREVIEW_BASE_URL",
        help: "public base URL of the preview router, e.g. https://cloudterm.example.com (default: the request's Host, http)",
        apply: |c, v| {
            c.preview.base_url = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "preview.secret_file",
        env: "CLOUDTERM_PREVIEW_SECRET_FILE",
        help: "key that signs preview links, 64+ hex characters (default DATA_DIR/preview/link.key, created)",
        apply: |c, v| {
            c.preview.secret_file = non_empty(v).map(PathBuf::from);
            Ok(())
        },
    },
    Setting {
        key: "preview.health_interval_seconds",
        env: "CLOUDTERM_PREVIEW_HEALTH_INTERVAL_SECONDS",
        help: "seconds between health checks of registered previews (default 10; 0 off)",
        apply: |c, v| {
            c.preview.health_interval_seconds = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "preview.domain",
        env: "CLOUDTERM_PREVIEW_DOMAIN",
        help: "also serve previews at {port}-{sandbox_id}.DOMAIN, at the root, and hand out those URLs (needs wildcard DNS; default off)",
        apply: |c, v| {
            c.preview.domain = non_empty(v);
            Ok(())
        },
    },
    Setting {
        key: "preview.link_ttl_seconds",
        env: "CLOUDTERM_PREVIEW_LINK_TTL_SECONDS",
        help: "lifetime of a signed preview link when the request names none (default 3600)",
        apply: |c, v| {
            c.preview.link_ttl_seconds = parse_u64(v)?;
            Ok(())
        },
    },
];

/// A DNS name previews can live under: two or more labels of letters, digits and inner
/// hyphens, 1–63 characters each (a trailing dot allowed).
fn valid_domain(domain: &str) -> bool {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The environment variable of a config key.
fn env_for(key: &str) -> &'static str {
    SETTINGS.iter().find(|setting| setting.key == key).map(|setting| setting.env).unwrap_or("no variable")
}

/// Flags given on the command line; they override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
}

impl Config {
    /// Loads the file (if any), applies the environment read through `env`, then `overrides`,
    /// and validates. `env` is a parameter so tests need not touch the process environment.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        for setting in SETTINGS {
            if let Some(value) = env(setting.env) {
                (setting.apply)(&mut config, &value).map_err(|message| ConfigError::Env {
                    var: setting.env,
                    key: setting.key,
                    message,
                })?;
            }
        }
        if let Some(data_dir) = &overrides.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(listen) = &overrides.listen {
            config.listen = listen.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Loads from the real process environment.
    pub fn load_from_env(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load(file, |name| std::env::var(name).ok(), overrides)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|err| ConfigError::Parse { path: path.to_path_buf(), message: err.to_string() })
    }

    /// The `sandboxes.network*` settings as the linux runtime takes them, or which one is wrong.
    pub fn sandbox_network(&self) -> Result<cloudterm_runtime_linux::NetworkConfig, ConfigError> {
        use cloudterm_runtime_linux::network::{parse_addrs, parse_net, parse_nets};
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, env: env_for(key), message };
        let sandboxes = &self.sandboxes;
        let network = cloudterm_runtime_linux::NetworkConfig {
            mode: sandboxes.network.parse().map_err(|message| invalid("sandboxes.network", message))?,
            range: parse_net(&sandboxes.network_range)
                .map_err(|message| invalid("sandboxes.network_range", message))?,
            deny: parse_nets(&sandboxes.network_deny.join(","))
                .map_err(|message| invalid("sandboxes.network_deny", message))?,
            dns: parse_addrs(&sandboxes.network_dns.join(","))
                .map_err(|message| invalid("sandboxes.network_dns", message))?,
        };
        network.validate().map_err(|message| invalid("sandboxes.network_range", message))?;
        Ok(network)
    }

    /// Checks every value that deserialization alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, env: env_for(key), message };
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        parse_addr(&self.listen).map_err(|message| invalid("listen", message))?;
        for (key, addr) in self.listeners.all() {
            if let Some(addr) = addr {
                parse_addr(addr).map_err(|message| invalid(key, message))?;
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", format!("expected text or json, got {:?}", self.log.format)));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|err| invalid("log.level", format!("not a tracing filter: {err}")))?;
        if self.http.max_body_bytes == 0 {
            return Err(invalid("http.max_body_bytes", "must be greater than 0".into()));
        }
        if self.http.request_timeout_seconds == 0 {
            return Err(invalid("http.request_timeout_seconds", "must be greater than 0".into()));
        }
        if self.terminal.ping_seconds == 0 {
            return Err(invalid("terminal.ping_seconds", "must be greater than 0".into()));
        }
        if self.terminal.redraw_wait_ms > 10_000 {
            let message = format!(
                "{} would leave a re-attaching terminal blank too long; at most 10000",
                self.terminal.redraw_wait_ms
            );
            return Err(invalid("terminal.redraw_wait_ms", message));
        }
        // Longer than redraw_wait_ms only means the bound decides; past 10 s it is a typo.
        if self.terminal.redraw_quiet_ms > 10_000 {
            let message = format!("{} is not a pause between writes; at most 10000", self.terminal.redraw_quiet_ms);
            return Err(invalid("terminal.redraw_quiet_ms", message));
        }
        for (key, url) in [("auth.issuer", &self.auth.issuer), ("auth.jwks_url", &self.auth.jwks_url)] {
            if let Some(url) = url {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid(key, format!("expected an http(s) URL, got {url:?}")));
                }
            }
        }
        if self.auth.principal_claim.trim().is_empty() {
            return Err(invalid("auth.principal_claim", "must not be empty".into()));
        }
        if self.auth.leeway_seconds > 300 {
            return Err(invalid(
                "auth.leeway_seconds",
                format!("{} is too lax; at most 300", self.auth.leeway_seconds),
            ));
        }
        let store_url = self.store_url();
        if !(store_url.starts_with("sqlite:")
            || store_url.starts_with("postgres://")
            || store_url.starts_with("postgresql://"))
        {
            let shown = redact_url_password(&store_url);
            return Err(invalid("store.url", format!("expected sqlite://PATH or postgres://…, got {shown:?}")));
        }
        match self.storage.backend.as_str() {
            "local" => {}
            "s3" => {
                if self.storage.s3_bucket.as_deref().is_none_or(|bucket| bucket.trim().is_empty()) {
                    return Err(invalid("storage.s3_bucket", "required when storage.backend is s3".into()));
                }
                if self.storage.s3_region.trim().is_empty() {
                    return Err(invalid("storage.s3_region", "must not be empty".into()));
                }
            }
            other => return Err(invalid("storage.backend", format!("expected local or s3, got {other:?}"))),
        }
        if let Some(endpoint) = &self.storage.s3_endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(invalid("storage.s3_endpoint", format!("expected an http(s) URL, got {endpoint:?}")));
            }
        }
        if self.storage.s3_prefix.split('/').any(|segment| segment == "..") {
            return Err(invalid("storage.s3_prefix", format!("must not contain .., got {:?}", self.storage.s3_prefix)));
        }
        self.runtime
            .kind
            .parse::<cloudterm_runtime::RuntimeChoice>()
            .map_err(|message| invalid("runtime.kind", message))?;
        self.sandbox_network()?;
        if let Some(url) = &self.preview.base_url {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|host| host.is_empty() || host.contains(['/', '?', '#'])) {
                return Err(invalid(
                    "preview.base_url",
                    format!(
                        "expected an http(s) URL without a path, such as https://cloudterm.example.com, got {url:?}"
                    ),
                ));
            }
        }
        if let Some(domain) = &self.preview.domain {
            if !valid_domain(domain) {
                return Err(invalid(
                    "preview.domain",
                    format!("expected a DNS name with at least two labels and no port, such as preview.example.com, got {domain:?}"),
                ));
            }
        }
        if !(1..=MAX_LINK_TTL_SECONDS).contains(&self.preview.link_ttl_seconds) {
            return Err(invalid(
                "preview.link_ttl_seconds",
                format!("must be 1 to {MAX_LINK_TTL_SECONDS}, got {}", self.preview.link_ttl_seconds),
            ));
        }
        Ok(())
    }

    /// True when a real IdP is configured, which turns the dev issuer off.
    pub fn uses_external_idp(&self) -> bool {
        self.auth.issuer.is_some() || self.auth.jwks_url.is_some()
    }

    /// The store URL, defaulting to SQLite in the data dir.
    pub fn store_url(&self) -> String {
        match &self.store.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("cloudterm.db").display()),
        }
    }

    /// [`store_url`](Self::store_url) with any password replaced by `***`, for logs and errors.
    pub fn store_url_redacted(&self) -> String {
        redact_url_password(&self.store_url())
    }

    /// The local snapshot root, defaulting to `DATA_DIR/snapshots`.
    pub fn local_storage_path(&self) -> PathBuf {
        self.storage.local_path.clone().unwrap_or_else(|| self.data_dir.join("snapshots"))
    }

    /// Where per-sandbox runtime state lives: `runtime.state_dir`, else `DATA_DIR/sandboxes`.
    pub fn runtime_state_dir(&self) -> PathBuf {
        self.runtime.state_dir.clone().unwrap_or_else(|| self.data_dir.join("sandboxes"))
    }

    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.http.request_timeout_seconds)
    }
}

impl ListenersConfig {
    /// Each dedicated listener with its config key.
    pub fn all(&self) -> [(&'static str, Option<&String>); 4] {
        [
            ("listeners.sandbox", self.sandbox.as_ref()),
            ("listeners.snapshot", self.snapshot.as_ref()),
            ("listeners.workspace", self.workspace.as_ref()),
            ("listeners.preview", self.preview.as_ref()),
        ]
    }
}

/// Parses `HOST:PORT`; `localhost` is accepted as `127.0.0.1`.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let normalized = text.trim().replacen("localhost:", "127.0.0.1:", 1);
    normalized.parse().map_err(|_| format!("expected HOST:PORT such as 127.0.0.1:8000, got {text:?}"))
}

/// The settings table for `cloudterm serve --help`.
pub fn settings_help() -> String {
    let mut out = String::from("Settings (config file key, environment variable, meaning):\n");
    for setting in SETTINGS {
        out.push_str(&format!("  {:<42} {:<48} {}\n", setting.key, setting.env, setting.help));
    }
    out.push_str("\nPrecedence: defaults < config file < environment < flags.\n");
    out
}

#[cfg(test)]
mod tests;
