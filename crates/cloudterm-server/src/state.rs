//! `AppState`: the handles every handler shares, built once from the config at start-up.

use std::ops::Deref;
use std::sync::Arc;

use anyhow::Context;
use cloudterm_blobstore::{BlobStore, BlobStoreConfig};
use cloudterm_domain::PrincipalService;
use cloudterm_identity::{DevIssuer, Verifier, VerifierConfig};
use cloudterm_runtime::{RuntimeChoice, Selection};
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
        Ok(AppState(Arc::new(App {
            config,
            store,
            blobs,
            runtime,
            verifier,
            dev_issuer,
            principals,
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
