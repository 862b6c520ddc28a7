//! The S3 backend, on `object_store`'s `AmazonS3`: keys live under `bucket/prefix/`.
//!
//! Puts stream: the body is cut into parts of `part_size_bytes`; an object that fits in one part
//! goes up in a single PUT, a larger one as a multipart upload with at most
//! [`MAX_PARTS_IN_FLIGHT`] parts sent at once, so memory stays at a few parts whatever the size.
//! A multipart upload that fails is aborted before the error is returned, and one whose future is
//! dropped (a cancelled request, a shutdown) is aborted by a spawned task, because S3 keeps and
//! bills the parts of an unfinished upload until someone aborts it. Every request is retried by
//! `object_store` with exponential backoff and jitter within [`S3Config::retry_budget`].

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector, ReqwestConnector};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use crate::key::RESERVED_PREFIX;
use crate::{
    hex_digest, BlobStoreError, ObjectInfo, ObjectReader, PutOutcome, S3Config, MAX_KEY_BYTES, MAX_PART_SIZE,
    MIN_PART_SIZE,
};

/// Parts uploaded concurrently by one put: two keep the link busy while the next part is read,
/// and bound memory to about three parts.
const MAX_PARTS_IN_FLIGHT: usize = 2;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;

pub(crate) struct S3Store {
    pub(crate) store: AmazonS3,
    /// For the requests `object_store` has no method for (listing and aborting multipart
    /// uploads); built from the same client options.
    pub(crate) http: HttpClient,
    /// `https://host/bucket` (path style) or `https://bucket.host` (virtual-hosted).
    pub(crate) bucket_url: String,
    pub(crate) region: String,
    /// Normalized: no leading or trailing `/`; empty for the bucket's root.
    pub(crate) prefix: String,
    part_size: usize,
    description: String,
}

impl S3Store {
    pub(crate) fn open(config: &S3Config) -> Result<Self, BlobStoreError> {
        let bad = |message: String| BlobStoreError::Config(message);
        if config.bucket.trim().is_empty() {
            return Err(bad("the s3 bucket is not set".into()));
        }
        if config.region.trim().is_empty() {
            return Err(bad("the s3 region is not set".into()));
        }
        if config.access_key_id.is_some() != config.secret_access_key.is_some() {
            return Err(bad("an s3 access key id and secret access key go together; one is missing".into()));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&config.part_size_bytes) {
            return Err(bad(format!(
                "the s3 part size must be between 5 MiB and 5 GiB, got {} bytes",
                config.part_size_bytes
            )));
        }
        let prefix = config.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            crate::key::validate_key(&prefix).map_err(|err| bad(format!("the s3 prefix is not usable: {err}")))?;
        }
        let endpoint = match &config.endpoint {
            Some(endpoint) => Some(check_endpoint(endpoint, config.allow_http)?),
            None => None,
        };
        // Without keys, object_store asks the AWS instance-metadata service, which only an AWS
        // machine has: against another service that would be half a minute of retries towards
        // an address that is not the service, then a confusing error.
        if endpoint.is_some() && config.access_key_id.is_none() {
            return Err(bad("an s3 endpoint other than AWS needs an access key id and secret access key".into()));
        }
        let bucket = config.bucket.trim();
        let region = config.region.trim();
        let (builder_endpoint, bucket_url) = match (&endpoint, config.path_style) {
            (Some(endpoint), true) => (Some(endpoint.clone()), format!("{endpoint}/{bucket}")),
            (Some(endpoint), false) => {
                let hosted = virtual_hosted(endpoint, bucket);
                (Some(hosted.clone()), hosted)
            }
            (None, true) => (None, format!("https://s3.{region}.amazonaws.com/{bucket}")),
            (None, false) => (None, format!("https://{bucket}.s3.{region}.amazonaws.com")),
        };
        let options = ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_connect_timeout(config.connect_timeout)
            .with_read_timeout(config.read_timeout)
            .with_timeout_disabled();
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5).min(config.retry_budget.max(Duration::from_millis(100))),
                base: 2.0,
            },
            max_retries: config.max_retries,
            retry_timeout: config.retry_budget,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(region)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(options.clone())
            .with_retry(retry);
        if let Some(endpoint) = builder_endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
        let store = builder.build().map_err(|err| bad(format!("s3: {err}")))?;
        let http =
            ReqwestConnector::default().connect(&options).map_err(|err| bad(format!("s3 http client: {err}")))?;
        let description = format!(
            "s3 bucket {bucket:?} at {} under prefix {prefix:?}",
            endpoint.as_deref().unwrap_or("AWS (region endpoint)")
        );
        Ok(S3Store {
            store,
            http,
            bucket_url,
            region: region.to_string(),
            prefix,
            part_size: config.part_size_bytes,
            description,
        })
    }

    pub(crate) fn describe(&self) -> String {
        self.description.clone()
    }

    /// The full key in the bucket of a store key (validated, or one of the store's own names).
    pub(crate) fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn path(&self, key: &str) -> Result<Path, BlobStoreError> {
        let full = self.full_key(key);
        if full.len() > MAX_KEY_BYTES {
            return Err(BlobStoreError::InvalidKey {
                key: key.to_string(),
                reason: "longer than 1024 bytes with the store's prefix",
            });
        }
        Path::parse(&full)
            .map_err(|_| BlobStoreError::InvalidKey { key: key.to_string(), reason: "not a valid object path" })
    }

    /// The store key of a full key, or `None` for keys outside the prefix and the store's own
    /// names (probes).
    pub(crate) fn store_key<'a>(&self, full: &'a str) -> Option<&'a str> {
        let key = if self.prefix.is_empty() { full } else { full.strip_prefix(&self.prefix)?.strip_prefix('/')? };
        (!key.split('/').any(|segment| segment.starts_with(RESERVED_PREFIX))).then_some(key)
    }

    pub(crate) async fn put_stream<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        body: &mut R,
    ) -> Result<PutOutcome, BlobStoreError> {
        let path = self.path(key)?;
        let mut hasher = Sha256::new();
        let first = read_part(body, self.part_size, &mut hasher).await?;
        if first.len() < self.part_size {
            let size_bytes = first.len() as u64;
            self.store.put(&path, PutPayload::from(first)).await.map_err(|err| storage_error(key, err))?;
            return Ok(PutOutcome { size_bytes, sha256_hex: hex_digest(hasher) });
        }
        let upload = self.store.put_multipart(&path).await.map_err(|err| storage_error(key, err))?;
        let mut pending = PendingUpload { upload: Some(upload), key: key.to_string() };
        let result = match pending.upload.as_mut() {
            Some(upload) => self.upload_parts(key, upload.as_mut(), first, body, &mut hasher).await,
            None => Err(BlobStoreError::Unavailable("multipart upload lost".into())),
        };
        match result {
            Ok(size_bytes) => {
                pending.upload = None;
                Ok(PutOutcome { size_bytes, sha256_hex: hex_digest(hasher) })
            }
            Err(err) => {
                pending.abort().await;
                Err(err)
            }
        }
    }

    /// Sends `first` and the rest of `body` as parts and completes the upload; returns the size.
    /// On error the part tasks still running are cancelled (the `JoinSet` is dropped) and the
    /// caller aborts the upload.
    async fn upload_parts<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        upload: &mut dyn MultipartUpload,
        first: Bytes,
        body: &mut R,
        hasher: &mut Sha256,
    ) -> Result<u64, BlobStoreError> {
        let mut parts: JoinSet<object_store::Result<()>> = JoinSet::new();
        let mut size_bytes = 0u64;
        let mut count = 0u64;
        let mut part = first;
        loop {
            while parts.len() >= MAX_PARTS_IN_FLIGHT {
                join_one(&mut parts, key).await?;
            }
            count += 1;
            if count > MAX_PARTS {
                return Err(BlobStoreError::Unavailable(format!(
                    "object {key:?} needs more than {MAX_PARTS} parts of {} bytes; raise the part size",
                    self.part_size
                )));
            }
            let last = part.len() < self.part_size;
            size_bytes += part.len() as u64;
            parts.spawn(upload.put_part(PutPayload::from(part)));
            if last {
                break;
            }
            part = read_part(body, self.part_size, hasher).await?;
            if part.is_empty() {
                break;
            }
        }
        while !parts.is_empty() {
            join_one(&mut parts, key).await?;
        }
        upload.complete().await.map_err(|err| storage_error(key, err))?;
        Ok(size_bytes)
    }

    pub(crate) async fn get_stream(&self, key: &str) -> Result<ObjectReader, BlobStoreError> {
        let path = self.path(key)?;
        let result = self.store.get(&path).await.map_err(|err| storage_error(key, err))?;
        let size_bytes = result.meta.size;
        let stream = result.into_stream().map_err(std::io::Error::from);
        Ok(ObjectReader::new(size_bytes, tokio_util::io::StreamReader::new(stream)))
    }

    pub(crate) async fn head(&self, key: &str) -> Result<ObjectInfo, BlobStoreError> {
        let path = self.path(key)?;
        let meta = self.store.head(&path).await.map_err(|err| storage_error(key, err))?;
        Ok(object_info(key.to_string(), &meta))
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), BlobStoreError> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(storage_error(key, err)),
        }
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BlobStoreError> {
        let full = if prefix.is_empty() { self.prefix.clone() } else { self.full_key(prefix) };
        let path = if full.is_empty() {
            None
        } else {
            Some(Path::parse(&full).map_err(|_| BlobStoreError::InvalidKey {
                key: prefix.to_string(),
                reason: "not a valid object path",
            })?)
        };
        let metas: Vec<ObjectMeta> =
            self.store.list(path.as_ref()).try_collect().await.map_err(|err| storage_error(prefix, err))?;
        Ok(metas
            .iter()
            .filter_map(|meta| self.store_key(meta.location.as_ref()).map(|key| object_info(key.to_string(), meta)))
            .collect())
    }
}

fn object_info(key: String, meta: &ObjectMeta) -> ObjectInfo {
    ObjectInfo { key, size_bytes: meta.size, last_modified: SystemTime::from(meta.last_modified) }
}

/// `NotFound` stays itself; everything else has already been retried by `object_store`.
pub(crate) fn storage_error(key: &str, err: object_store::Error) -> BlobStoreError {
    match err {
        object_store::Error::NotFound { .. } => BlobStoreError::NotFound(key.to_string()),
        other => BlobStoreError::Unavailable(other.to_string()),
    }
}

/// Checks an endpoint URL and returns it without a trailing `/`.
fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<String, BlobStoreError> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.starts_with("http://") {
        if !allow_http {
            return Err(BlobStoreError::Config(format!(
                "the s3 endpoint {endpoint:?} is plain http, which is not allowed here"
            )));
        }
    } else if !endpoint.starts_with("https://") {
        return Err(BlobStoreError::Config(format!("the s3 endpoint must be an http(s) URL, got {endpoint:?}")));
    }
    Ok(endpoint.to_string())
}

/// `https://s3.example.com` → `https://bucket.s3.example.com`.
fn virtual_hosted(endpoint: &str, bucket: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{rest}"),
        None => format!("https://{bucket}.{endpoint}"),
    }
}

/// Reads up to `size` bytes (fewer only at the end of the body) and hashes them.
async fn read_part<R: AsyncRead + Unpin + Send>(
    body: &mut R,
    size: usize,
    hasher: &mut Sha256,
) -> Result<Bytes, BlobStoreError> {
    let mut buffer = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        let read = body.read(&mut buffer[filled..]).await.map_err(BlobStoreError::Body)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    buffer.truncate(filled);
    if filled < size {
        buffer.shrink_to_fit();
    }
    hasher.update(&buffer);
    Ok(Bytes::from(buffer))
}

async fn join_one(parts: &mut JoinSet<object_store::Result<()>>, key: &str) -> Result<(), BlobStoreError> {
    match parts.join_next().await {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(err))) => Err(storage_error(key, err)),
        Some(Err(err)) => Err(BlobStoreError::Unavailable(format!("a part upload of {key:?} failed: {err}"))),
    }
}

/// A multipart upload not yet completed. Aborted explicitly on error; if it is dropped while
/// still set (the put's future was cancelled), the abort runs in a spawned task, since S3 bills
/// the parts of an upload nobody aborts.
struct PendingUpload {
    upload: Option<Box<dyn MultipartUpload>>,
    key: String,
}

impl PendingUpload {
    async fn abort(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            if let Err(err) = upload.abort().await {
                tracing::warn!(key = %self.key, error = %err, "cannot abort a failed multipart upload; the stale-upload sweep will");
            }
        }
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(err) = upload.abort().await {
                        tracing::warn!(%key, error = %err, "cannot abort a cancelled multipart upload; the stale-upload sweep will");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%key, "a multipart upload was dropped outside a runtime; the stale-upload sweep will abort it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> S3Config {
        S3Config {
            endpoint: Some("http://127.0.0.1:3900".into()),
            bucket: "b".into(),
            allow_http: true,
            access_key_id: Some("GK0".into()),
            secret_access_key: Some("hunter2".into()),
            ..S3Config::default()
        }
    }

    #[test]
    fn urls_follow_the_addressing_style() {
        let store = S3Store::open(&S3Config { prefix: "/a/b/".into(), ..config() }).expect("open");
        assert_eq!(store.bucket_url, "http://127.0.0.1:3900/b");
        assert_eq!(store.full_key("k"), "a/b/k");
        assert_eq!(store.store_key("a/b/k/x"), Some("k/x"));
        assert_eq!(store.store_key("a/b/.cloudterm-probe-1"), None);
        assert_eq!(store.store_key("a/bc/k"), None);
        let hosted = S3Store::open(&S3Config {
            endpoint: Some("https://s3.example.com/".into()),
            path_style: false,
            ..config()
        })
        .expect("open");
        assert_eq!(hosted.bucket_url, "https://b.s3.example.com");
        let aws = S3Store::open(&S3Config { endpoint: None, region: "eu-west-1".into(), ..config() }).expect("open");
        assert_eq!(aws.bucket_url, "https://s3.eu-west-1.amazonaws.com/b");
    }

    #[test]
    fn bad_configurations_are_refused_with_a_reason() {
        let cases = [
            (S3Config { bucket: " ".into(), ..config() }, "bucket"),
            (S3Config { secret_access_key: None, ..config() }, "go together"),
            (S3Config { access_key_id: None, secret_access_key: None, ..config() }, "needs an access key"),
            (S3Config { part_size_bytes: 1024, ..config() }, "part size"),
            (S3Config { allow_http: false, ..config() }, "plain http"),
            (S3Config { endpoint: Some("s3.example.com".into()), ..config() }, "http(s) URL"),
            (S3Config { prefix: "a/../b".into(), ..config() }, "prefix"),
        ];
        for (config, expected) in cases {
            let err = S3Store::open(&config).err().expect("must fail");
            assert!(matches!(err, BlobStoreError::Config(_)) && err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let text = format!("{:?}", config());
        assert!(!text.contains("hunter2") && text.contains("<set>"), "{text}");
    }
}
