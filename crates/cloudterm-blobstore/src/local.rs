//! The local-disk backend: objects are files under a root directory, the key being their path.
//!
//! Every put writes `.cloudterm-tmp-<uuid>.<name>` beside the final file, fsyncs it, renames it
//! over the final name and fsyncs the directories up to the root, so after a crash a key holds
//! either the old object or the complete new one, never a half; the temporary file a crash leaves
//! behind is what [`LocalStore::incomplete_uploads`] reports.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::key::RESERVED_PREFIX;
use crate::{hex_digest, BlobStoreError, IncompleteUpload, ObjectInfo, ObjectReader, PutOutcome};

/// Prefix of a put's temporary file.
const TEMP_PREFIX: &str = ".cloudterm-tmp-";
/// Prefix of a readiness probe's file.
const PROBE_PREFIX: &str = ".cloudterm-probe-";
/// Bytes read from the body per write: large enough that the blocking-pool hop of each tokio
/// file write is cheap next to the copy.
const COPY_BUFFER: usize = 256 * 1024;

pub(crate) struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub(crate) async fn open(root: PathBuf) -> Result<Self, BlobStoreError> {
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|err| BlobStoreError::Unavailable(format!("cannot create {}: {err}", root.display())))?;
        Ok(LocalStore { root })
    }

    pub(crate) fn describe(&self) -> String {
        format!("local disk at {}", self.root.display())
    }

    fn unavailable(&self, what: &str, err: std::io::Error) -> BlobStoreError {
        BlobStoreError::Unavailable(format!("{what} in {}: {err}", self.root.display()))
    }

    /// A validated key is relative and has only normal segments, so this stays under the root.
    fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub(crate) async fn put_stream<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        body: &mut R,
    ) -> Result<PutOutcome, BlobStoreError> {
        let dest = self.path_of(key);
        let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Err(BlobStoreError::InvalidKey { key: key.to_string(), reason: "has no file name" });
        };
        // Directories below the root are made on demand; a vanished root is not (an unmounted
        // volume or a deleted data dir must fail loudly, not start over empty).
        if !tokio::fs::metadata(&self.root).await.is_ok_and(|meta| meta.is_dir()) {
            let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
            return Err(self.unavailable("the storage root is missing", missing));
        }
        tokio::fs::create_dir_all(dir).await.map_err(|err| self.unavailable("cannot create a directory", err))?;
        let temp = dir.join(format!("{TEMP_PREFIX}{}.{}", uuid::Uuid::new_v4(), name.to_string_lossy()));
        let mut guard = TempFile(Some(temp.clone()));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .await
            .map_err(|err| self.unavailable("cannot create a temporary file", err))?;
        let mut hasher = Sha256::new();
        let mut size_bytes = 0u64;
        let mut buffer = vec![0u8; COPY_BUFFER];
        loop {
            let read = body.read(&mut buffer).await.map_err(BlobStoreError::Body)?;
            if read == 0 {
                break;
            }
            let chunk = &buffer[..read];
            hasher.update(chunk);
            size_bytes += read as u64;
            file.write_all(chunk).await.map_err(|err| self.unavailable("cannot write an object", err))?;
        }
        file.flush().await.map_err(|err| self.unavailable("cannot write an object", err))?;
        file.sync_all().await.map_err(|err| self.unavailable("cannot fsync an object", err))?;
        drop(file);
        tokio::fs::rename(&temp, &dest).await.map_err(|err| self.unavailable("cannot rename an object", err))?;
        guard.0 = None;
        self.sync_dirs(dir).await?;
        Ok(PutOutcome { size_bytes, sha256_hex: hex_digest(hasher) })
    }

    /// Fsyncs `dir` and every directory above it up to the root, so the rename and any directory
    /// `create_dir_all` just made survive a power cut.
    async fn sync_dirs(&self, dir: &Path) -> Result<(), BlobStoreError> {
        let mut current = Some(dir);
        while let Some(dir) = current {
            let file =
                tokio::fs::File::open(dir).await.map_err(|err| self.unavailable("cannot open a directory", err))?;
            file.sync_all().await.map_err(|err| self.unavailable("cannot fsync a directory", err))?;
            if dir == self.root {
                break;
            }
            current = dir.parent().filter(|parent| parent.starts_with(&self.root));
        }
        Ok(())
    }

    /// Metadata of the file under `key`, or `NotFound` when there is none (or a directory).
    async fn file_metadata(&self, key: &str) -> Result<std::fs::Metadata, BlobStoreError> {
        match tokio::fs::metadata(self.path_of(key)).await {
            Ok(meta) if meta.is_file() => Ok(meta),
            Ok(_) => Err(BlobStoreError::NotFound(key.to_string())),
            Err(err) if is_missing(&err) => Err(BlobStoreError::NotFound(key.to_string())),
            Err(err) => Err(self.unavailable("cannot stat an object", err)),
        }
    }

    pub(crate) async fn get_stream(&self, key: &str) -> Result<ObjectReader, BlobStoreError> {
        let file = match tokio::fs::File::open(self.path_of(key)).await {
            Ok(file) => file,
            Err(err) if is_missing(&err) => return Err(BlobStoreError::NotFound(key.to_string())),
            Err(err) => return Err(self.unavailable("cannot open an object", err)),
        };
        // Metadata of the open file, not the path: a put renaming a new object over the key in
        // between must not pair the new size with the old bytes.
        let meta = file.metadata().await.map_err(|err| self.unavailable("cannot stat an object", err))?;
        if !meta.is_file() {
            return Err(BlobStoreError::NotFound(key.to_string()));
        }
        Ok(ObjectReader::new(meta.len(), file))
    }

    pub(crate) async fn head(&self, key: &str) -> Result<ObjectInfo, BlobStoreError> {
        let meta = self.file_metadata(key).await?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size_bytes: meta.len(),
            last_modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), BlobStoreError> {
        match self.file_metadata(key).await {
            Ok(_) => {}
            Err(BlobStoreError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        }
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(()),
            Err(err) if is_missing(&err) => Ok(()),
            Err(err) => Err(self.unavailable("cannot remove an object", err)),
        }
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BlobStoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let walked = tokio::task::spawn_blocking(move || {
            let start = if prefix.is_empty() { root.clone() } else { root.join(&prefix) };
            let mut out = Vec::new();
            walk(&start, &prefix, &mut |key, name, meta| {
                if !name.starts_with(RESERVED_PREFIX) {
                    out.push(ObjectInfo {
                        key,
                        size_bytes: meta.len(),
                        last_modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            })
            .map(|()| out)
        })
        .await
        .map_err(|err| BlobStoreError::Unavailable(format!("listing panicked: {err}")))?;
        walked.map_err(|err| self.unavailable("cannot list objects", err))
    }

    pub(crate) async fn incomplete_uploads(&self) -> Result<Vec<IncompleteUpload>, BlobStoreError> {
        let root = self.root.clone();
        let walked = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, "", &mut |key, name, meta| {
                let initiated = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
                    // `<uuid>.<name>`: the key the object would have had is the directory plus `<name>`.
                    let target = rest.split_once('.').map(|(_, target)| target).unwrap_or(rest);
                    let dir = key.strip_suffix(name).unwrap_or("");
                    out.push(IncompleteUpload {
                        key: format!("{dir}{target}"),
                        upload_id: name.to_string(),
                        initiated,
                    });
                } else if name.starts_with(PROBE_PREFIX) {
                    out.push(IncompleteUpload { key: key.clone(), upload_id: name.to_string(), initiated });
                }
            })
            .map(|()| out)
        })
        .await
        .map_err(|err| BlobStoreError::Unavailable(format!("listing panicked: {err}")))?;
        walked.map_err(|err| self.unavailable("cannot list temporary files", err))
    }

    pub(crate) async fn abort_upload(&self, upload: &IncompleteUpload) -> Result<(), BlobStoreError> {
        let dir = match upload.key.rsplit_once('/') {
            Some((dir, _)) => self.root.join(dir),
            None => self.root.clone(),
        };
        match tokio::fs::remove_file(dir.join(&upload.upload_id)).await {
            Ok(()) => Ok(()),
            Err(err) if is_missing(&err) => Ok(()),
            Err(err) => Err(self.unavailable("cannot remove a temporary file", err)),
        }
    }
}

/// Removes a put's temporary file unless the put got as far as renaming it: a put that fails or
/// whose future is dropped leaves nothing behind.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn is_missing(err: &std::io::Error) -> bool {
    matches!(err.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory)
}

/// Calls `visit(key, file name, metadata)` for every regular file under `dir`, whose key is
/// `prefix`. A missing `dir` is an empty listing; names that are not UTF-8 and symlinks are
/// skipped (nothing this store writes is either).
fn walk(
    dir: &Path,
    prefix: &str,
    visit: &mut dyn FnMut(String, &str, &std::fs::Metadata),
) -> Result<(), std::io::Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if is_missing(&err) => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(&entry.path(), &key, visit)?;
        } else if file_type.is_file() {
            match entry.metadata() {
                Ok(meta) => visit(key, &name, &meta),
                // Removed between read_dir and stat: a concurrent delete, not an error.
                Err(err) if is_missing(&err) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{BlobStore, BlobStoreConfig, BlobStoreError};

    #[tokio::test]
    async fn local_check_passes_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("snapshots");
        let store = BlobStore::open(BlobStoreConfig::Local { root: root.clone() }).await.expect("open");
        store.check().await.expect("check");
        assert_eq!(std::fs::read_dir(&root).expect("read_dir").count(), 0);
        assert_eq!(store.backend_name(), "local");
    }

    #[tokio::test]
    async fn local_check_fails_when_the_directory_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("snapshots");
        let store = BlobStore::open(BlobStoreConfig::Local { root: root.clone() }).await.expect("open");
        std::fs::remove_dir(&root).expect("remove");
        let err = store.check().await.expect_err("must fail");
        assert!(err.to_string().contains("storage unavailable"), "{err}");
    }

    #[tokio::test]
    async fn a_crash_leftover_is_reported_with_its_key_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let store = BlobStore::open(BlobStoreConfig::Local { root: root.clone() }).await.expect("open");
        std::fs::create_dir_all(root.join("snapshots/alice")).expect("mkdir");
        let leftover = root.join("snapshots/alice/.cloudterm-tmp-0b7c.snap_1.tar.zst");
        std::fs::write(&leftover, b"half").expect("write");
        let uploads = store.incomplete_uploads().await.expect("incomplete");
        assert_eq!(uploads.len(), 1, "{uploads:?}");
        assert_eq!(uploads[0].key, "snapshots/alice/snap_1.tar.zst");
        assert!(store.list("").await.expect("list").is_empty(), "temporary files are not objects");
        let young = store.abort_incomplete_uploads(std::time::Duration::from_secs(3600)).await.expect("abort young");
        assert!(young.is_empty() && leftover.exists(), "a young upload may still be running");
        let aborted = store.abort_incomplete_uploads(std::time::Duration::ZERO).await.expect("abort");
        assert_eq!(aborted, uploads);
        assert!(!leftover.exists());
    }

    #[tokio::test]
    async fn a_key_under_a_file_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(BlobStoreConfig::Local { root: dir.path().to_path_buf() }).await.expect("open");
        store.put_stream("a", &b"x"[..]).await.expect("put");
        assert!(matches!(store.get_stream("a/b").await, Err(BlobStoreError::NotFound(_))));
        assert!(matches!(store.head("a/b").await, Err(BlobStoreError::NotFound(_))));
        store.delete("a/b").await.expect("deleting nothing is fine");
        store.put_stream("d/x", &b"x"[..]).await.expect("put");
        assert!(matches!(store.get_stream("d").await, Err(BlobStoreError::NotFound(_))), "a directory is no object");
    }
}
