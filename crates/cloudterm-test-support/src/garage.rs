//! `GarageServer`: a real S3 service (Garage, single node) on loopback for tests, with its own
//! key and bucket in a temporary directory, killed on drop.
//!
//! Garage is found through `CLOUDTERM_GARAGE_BIN`, else `PATH`, else `~/.cargo/bin/garage`
//! (`cargo install garage --version 2.5.0 --locked`, which `.ci/run` does). Without it,
//! [`GarageServer::start`] skips through [`crate::skip_unless`], which fails under `CI=true`.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudterm_blobstore::{BlobStore, BlobStoreConfig, S3Config};
use tempfile::TempDir;

use crate::ports::free_port;

/// How long Garage may take to answer S3 requests with its key and bucket in place.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Garage with one bucket and one key that may read, write and own it.
pub struct GarageServer {
    child: Child,
    dir: TempDir,
    endpoint: String,
    access_key_id: String,
    secret_access_key: String,
}

impl GarageServer {
    /// The signing region the server is configured with.
    pub const REGION: &'static str = "garage";
    /// The bucket created at start.
    pub const BUCKET: &'static str = "cloudterm-test";

    /// The `garage` binary, if this machine has one.
    pub fn binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("CLOUDTERM_GARAGE_BIN").filter(|value| !value.is_empty()) {
            return Some(PathBuf::from(path));
        }
        if let Some(path) = std::env::var_os("PATH") {
            if let Some(found) = std::env::split_paths(&path).map(|dir| dir.join("garage")).find(|p| is_executable(p)) {
                return Some(found);
            }
        }
        let home = std::env::var_os("HOME")?;
        Some(PathBuf::from(home).join(".cargo/bin/garage")).filter(|path| is_executable(path))
    }

    /// Starts Garage on free loopback ports and waits until a probe object can be written, read
    /// and deleted with its key. `None` when there is no `garage` binary and the test should stop
    /// (under `CI=true` that panics instead).
    pub async fn start() -> Option<GarageServer> {
        let binary = Self::binary();
        if crate::skip_unless(
            binary.is_some(),
            "no garage binary (set CLOUDTERM_GARAGE_BIN, or `cargo install garage --version 2.5.0 --locked`)",
        ) {
            return None;
        }
        let binary = binary?;
        // A port picked by binding :0 may be taken again before Garage binds it; try a few times.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&binary).await {
                Ok(server) => return Some(server),
                Err(err) => last_error = err,
            }
        }
        panic!("garage did not start: {last_error}");
    }

    async fn try_start(binary: &Path) -> Result<GarageServer, String> {
        let dir = tempfile::tempdir().map_err(|err| format!("tempdir: {err}"))?;
        let rpc_port = free_port()?;
        let s3_port = free_port()?;
        let config_path = dir.path().join("garage.toml");
        let config = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
            rpc_secret = random_hex(64),
            region = Self::REGION,
        );
        std::fs::write(&config_path, config).map_err(|err| format!("write config: {err}"))?;
        let log_path = dir.path().join("garage.log");
        let log = std::fs::File::create(&log_path).map_err(|err| format!("create log: {err}"))?;
        let log_err = log.try_clone().map_err(|err| format!("clone log: {err}"))?;
        // Garage's own formats: `GK` + 24 hex digits, and 64 hex digits.
        let access_key_id = format!("GK{}", random_hex(24));
        let secret_access_key = random_hex(64);
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &access_key_id)
            .env("GARAGE_DEFAULT_SECRET_KEY", &secret_access_key)
            .env("GARAGE_DEFAULT_BUCKET", Self::BUCKET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", binary.display()))?;
        let mut server = GarageServer {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            access_key_id,
            secret_access_key,
        };
        server.wait_ready().await.map_err(|err| format!("{err}; log:\n{}", server.log()))?;
        Ok(server)
    }

    /// Polls until a probe object round-trips: the API listening is not enough, the key and the
    /// bucket are created just after.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let probe_config = S3Config { retry_budget: Duration::ZERO, max_retries: 0, ..self.s3_config("ready") };
        let store = BlobStore::open(BlobStoreConfig::S3(probe_config)).await.map_err(|err| err.to_string())?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("garage exited with {status}"));
            }
            match store.check().await {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    return Err(format!("not ready after {START_TIMEOUT:?}: {err}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        Self::REGION
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        Self::BUCKET
    }

    /// The access key id.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// A store configuration for this server, keys under `prefix`, with a short retry budget so
    /// a test that breaks the service fails fast.
    pub fn s3_config(&self, prefix: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: Self::REGION.into(),
            bucket: Self::BUCKET.into(),
            prefix: prefix.into(),
            path_style: true,
            access_key_id: Some(self.access_key_id.clone()),
            secret_access_key: Some(self.secret_access_key.clone()),
            session_token: None,
            allow_http: true,
            retry_budget: Duration::from_secs(5),
            ..S3Config::default()
        }
    }

    /// [`GarageServer::s3_config`] as a [`BlobStoreConfig`].
    pub fn blob_config(&self, prefix: &str) -> BlobStoreConfig {
        BlobStoreConfig::S3(self.s3_config(prefix))
    }

    /// What Garage logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }
}

impl Drop for GarageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `digits` random lower-case hex digits (std's per-process random hash keys; good enough for
/// throw-away test credentials).
fn random_hex(digits: usize) -> String {
    let mut out = String::with_capacity(digits + 16);
    let mut counter = 0u64;
    while out.len() < digits {
        let value = RandomState::new().hash_one((counter, Instant::now()));
        out.push_str(&format!("{value:016x}"));
        counter += 1;
    }
    out.truncate(digits);
    out
}
