//! Snapshot bytes: where cloudterm keeps the objects that snapshots are made of.
//!
//! Two backends behind one [`BlobStore`]: a directory on local disk and an S3 bucket (AWS, Garage,
//! MinIO…). Both stream: an object is never held whole in memory or spooled to a temporary disk
//! file, and both are atomic: until a put succeeds, nothing is visible under its key, and a put
//! that fails or is cancelled leaves nothing behind that costs space or money (a local temporary
//! file is removed, an S3 multipart upload is aborted). What a crash still leaves behind is found
//! by [`BlobStore::incomplete_uploads`] and removed by [`BlobStore::abort_incomplete_uploads`].
//!
//! Keys are relative slash-separated paths (`snapshots/<principal>/<snapshot>.tar.zst`); the rules
//! are in [`key`]. The server's readiness check goes through [`BlobStore::check`].

pub mod key;
mod local;
mod s3;
mod s3_uploads;

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, ReadBuf};

pub use key::{MAX_KEY_BYTES, MAX_SEGMENT_BYTES};

/// Which backend holds the objects.
// Built once at start-up: the size of the S3 variant costs nothing, and boxing it would only
// make every caller write `Box::new`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobStoreConfig {
    /// A directory on local disk.
    Local {
        /// The root directory; created if missing.
        root: PathBuf,
    },
    /// A bucket on an S3-compatible service.
    S3(S3Config),
}

/// Where an S3 bucket is and how hard to try reaching it. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Base URL of the service (`http://127.0.0.1:3900`, `https://s3.example.com`); `None` means
    /// AWS itself, derived from the region.
    pub endpoint: Option<String>,
    /// The signing region (`us-east-1`; Garage's default is `garage`).
    pub region: String,
    /// The bucket; it must exist (cloudterm never creates buckets).
    pub bucket: String,
    /// Every key is stored under `prefix/`, so one bucket can hold several installations.
    /// Leading and trailing `/` are ignored; empty means the bucket's root.
    pub prefix: String,
    /// `true`: `endpoint/bucket/key` (works everywhere without wildcard DNS: Garage, MinIO, AWS).
    /// `false`: `bucket.endpoint-host/key` (virtual-hosted style).
    pub path_style: bool,
    /// Access key id. With both keys `None` and no `endpoint` (AWS itself), credentials come from
    /// the AWS machine's role (container or instance metadata); with an `endpoint`, keys are
    /// required. The server fills these from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// because library crates read no environment.
    pub access_key_id: Option<String>,
    /// Secret access key; must be given together with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials (`AWS_SESSION_TOKEN`), if any.
    pub session_token: Option<String>,
    /// Allow a plain `http://` endpoint (a local Garage); off for anything that crosses a network.
    pub allow_http: bool,
    /// How many times one request is retried on transient errors (connection refused or reset,
    /// 5xx, throttling) before the operation fails with [`BlobStoreError::Unavailable`].
    pub max_retries: usize,
    /// No retry starts later than this after a request's first attempt, so an unreachable
    /// service is reported within about this time instead of hanging a snapshot.
    pub retry_budget: Duration,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer. There is deliberately no timeout on a whole
    /// request: a large part on a slow link may take minutes while making progress.
    pub read_timeout: Duration,
    /// Size of one multipart part, at least 5 MiB (S3's minimum). Objects smaller than one part go
    /// up in a single request. Memory per upload is about three parts (one being read, two in
    /// flight).
    pub part_size_bytes: usize,
}

/// Smallest part S3 accepts for every part but the last.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Largest part S3 accepts.
pub const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: false,
            max_retries: 10,
            retry_budget: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            part_size_bytes: 8 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |value: &Option<String>| if value.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("max_retries", &self.max_retries)
            .field("retry_budget", &self.retry_budget)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("part_size_bytes", &self.part_size_bytes)
            .finish()
    }
}

/// What can go wrong talking to storage.
#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    /// No object under this key.
    #[error("no object under key {0:?}")]
    NotFound(String),
    /// The key breaks the rules of [`key`]; nothing was sent to the backend.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The backend could not be reached (after retries) or refused the operation.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The configuration cannot work (no bucket, half a key pair, a part size S3 refuses…).
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// Reading the body given to [`BlobStore::put_stream`] failed; nothing was stored.
    #[error("cannot read the object body: {0}")]
    Body(#[source] std::io::Error),
}

/// What a successful put stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// Bytes stored.
    pub size_bytes: u64,
    /// SHA-256 of exactly those bytes, lower-case hex; computed while streaming, so a snapshot's
    /// record can carry it without reading the object again.
    pub sha256_hex: String,
}

/// One stored object, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key (relative to the store's root or prefix).
    pub key: String,
    /// Its size.
    pub size_bytes: u64,
    /// When it was last written.
    pub last_modified: SystemTime,
}

/// An upload that was started and neither finished nor cleaned up, normally because the server
/// crashed in the middle: on S3 a multipart upload (its parts cost storage until aborted), on
/// local disk a temporary file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteUpload {
    /// The key the object would have had.
    pub key: String,
    /// S3's upload id, or the temporary file's name.
    pub upload_id: String,
    /// When it started (S3) or was last written to (local disk).
    pub initiated: SystemTime,
}

/// The bytes of one object, streamed. Dropping it early is fine.
pub struct ObjectReader {
    size_bytes: u64,
    inner: Pin<Box<dyn AsyncRead + Send>>,
}

impl ObjectReader {
    fn new(size_bytes: u64, inner: impl AsyncRead + Send + 'static) -> Self {
        ObjectReader { size_bytes, inner: Box::pin(inner) }
    }

    /// The object's size, known before the first byte (for `Content-Length`).
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader").field("size_bytes", &self.size_bytes).finish_non_exhaustive()
    }
}

impl AsyncRead for ObjectReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

/// The object store behind snapshots. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct BlobStore {
    backend: Arc<Backend>,
}

enum Backend {
    Local(local::LocalStore),
    S3(s3::S3Store),
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlobStore").field(&self.describe()).finish()
    }
}

impl BlobStore {
    /// Opens the configured store. Local disk: creates the root. S3: checks the configuration
    /// only; nothing is sent until the first operation (use [`BlobStore::check`] to prove it
    /// works).
    pub async fn open(config: BlobStoreConfig) -> Result<Self, BlobStoreError> {
        let backend = match config {
            BlobStoreConfig::Local { root } => Backend::Local(local::LocalStore::open(root).await?),
            BlobStoreConfig::S3(config) => Backend::S3(s3::S3Store::open(&config)?),
        };
        Ok(BlobStore { backend: Arc::new(backend) })
    }

    /// A short backend name for logs and readiness: `local` or `s3`.
    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Local(_) => "local",
            Backend::S3(_) => "s3",
        }
    }

    /// Where the objects live, for the start-up log; never shows credentials.
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Local(store) => store.describe(),
            Backend::S3(store) => store.describe(),
        }
    }

    /// Proves the store can durably write, read and delete: writes a probe object the way real
    /// objects are written, reads it back and removes it.
    pub async fn check(&self) -> Result<(), BlobStoreError> {
        // The same path real objects take (local: temp name, fsync, rename; S3: a put), under
        // a reserved name no client key can have and that clean-up sweeps if it is left over.
        let probe = uuid::Uuid::new_v4().to_string();
        let key = format!("{}probe-{probe}", key::RESERVED_PREFIX);
        let failed = |what: &str, err: BlobStoreError| {
            BlobStoreError::Unavailable(format!("{what} ({}): {err}", self.describe()))
        };
        self.put_unchecked(&key, &mut probe.as_bytes()).await.map_err(|err| failed("cannot write a probe", err))?;
        let read_back = async {
            let mut bytes = Vec::new();
            let mut reader = self.get_unchecked(&key).await?;
            tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes).await.map_err(BlobStoreError::Body)?;
            Ok(bytes)
        }
        .await;
        let removed = self.delete_unchecked(&key).await;
        let read_back = read_back.map_err(|err| failed("cannot read a probe back", err))?;
        removed.map_err(|err| failed("cannot delete a probe", err))?;
        if read_back != probe.as_bytes() {
            return Err(BlobStoreError::Unavailable(format!("probe read back wrong bytes ({})", self.describe())));
        }
        Ok(())
    }

    /// Streams `body` into the object `key`, replacing any object there. Returns the size and
    /// SHA-256 of what was stored. Until it returns `Ok`, readers see the old object (or none);
    /// on error or cancellation nothing is left behind (see the crate documentation).
    pub async fn put_stream(
        &self,
        key: &str,
        mut body: impl AsyncRead + Unpin + Send,
    ) -> Result<PutOutcome, BlobStoreError> {
        key::validate_key(key)?;
        self.put_unchecked(key, &mut body).await
    }

    /// Streams the object `key`; [`BlobStoreError::NotFound`] when there is none.
    pub async fn get_stream(&self, key: &str) -> Result<ObjectReader, BlobStoreError> {
        key::validate_key(key)?;
        self.get_unchecked(key).await
    }

    /// The object's size and date; [`BlobStoreError::NotFound`] when there is none.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo, BlobStoreError> {
        key::validate_key(key)?;
        match &*self.backend {
            Backend::Local(store) => store.head(key).await,
            Backend::S3(store) => store.head(key).await,
        }
    }

    /// Removes the object `key`. Idempotent: a missing object is `Ok`, so a retried delete (or
    /// a garbage collector racing a user) never fails for that reason.
    pub async fn delete(&self, key: &str) -> Result<(), BlobStoreError> {
        key::validate_key(key)?;
        self.delete_unchecked(key).await
    }

    async fn put_unchecked<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        body: &mut R,
    ) -> Result<PutOutcome, BlobStoreError> {
        match &*self.backend {
            Backend::Local(store) => store.put_stream(key, body).await,
            Backend::S3(store) => store.put_stream(key, body).await,
        }
    }

    async fn get_unchecked(&self, key: &str) -> Result<ObjectReader, BlobStoreError> {
        match &*self.backend {
            Backend::Local(store) => store.get_stream(key).await,
            Backend::S3(store) => store.get_stream(key).await,
        }
    }

    async fn delete_unchecked(&self, key: &str) -> Result<(), BlobStoreError> {
        match &*self.backend {
            Backend::Local(store) => store.delete(key).await,
            Backend::S3(store) => store.delete(key).await,
        }
    }

    /// Every object under `prefix` (whole segments: `snapshots/alice` lists `snapshots/alice/…`,
    /// not `snapshots/alice2/…`; empty lists everything), sorted by key. Used to find objects no
    /// record points to after a crash.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BlobStoreError> {
        let prefix = key::validate_prefix(prefix)?;
        let mut objects = match &*self.backend {
            Backend::Local(store) => store.list(prefix).await?,
            Backend::S3(store) => store.list(prefix).await?,
        };
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// Uploads under this store that were started and never finished or aborted, oldest first.
    /// Some may still be in progress (in this or another server): see
    /// [`BlobStore::abort_incomplete_uploads`].
    pub async fn incomplete_uploads(&self) -> Result<Vec<IncompleteUpload>, BlobStoreError> {
        let mut uploads = match &*self.backend {
            Backend::Local(store) => store.incomplete_uploads().await?,
            Backend::S3(store) => store.incomplete_uploads().await?,
        };
        uploads.sort_by_key(|upload| upload.initiated);
        Ok(uploads)
    }

    /// Aborts (S3) or removes (local disk) incomplete uploads that started more than
    /// `older_than` ago, and returns them. Pick `older_than` well above the longest upload any
    /// server sharing the store may be running (a day is safe), since an upload in progress
    /// looks the same as an abandoned one.
    pub async fn abort_incomplete_uploads(
        &self,
        older_than: Duration,
    ) -> Result<Vec<IncompleteUpload>, BlobStoreError> {
        let cutoff = SystemTime::now().checked_sub(older_than).unwrap_or(SystemTime::UNIX_EPOCH);
        let stale: Vec<IncompleteUpload> =
            self.incomplete_uploads().await?.into_iter().filter(|upload| upload.initiated <= cutoff).collect();
        for upload in &stale {
            match &*self.backend {
                Backend::Local(store) => store.abort_upload(upload).await?,
                Backend::S3(store) => store.abort_upload(upload).await?,
            }
        }
        Ok(stale)
    }
}

/// Hex SHA-256 of a finished hasher.
fn hex_digest(hasher: sha2::Sha256) -> String {
    use sha2::Digest;
    hex::encode(hasher.finalize())
}
