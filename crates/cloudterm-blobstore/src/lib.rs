//! Snapshot bytes: where cloudterm keeps the objects that snapshots are made of.
//!
//! The foundation ships the local-disk backend (objects under a directory of the data dir,
//! written to a temporary name, fsynced and renamed so a crash never leaves a half object
//! under a real name). S3 and streaming snapshot I/O arrive with the snapshot issue; the
//! server's readiness check already goes through [`BlobStore::check`].

use std::path::{Path, PathBuf};

/// Which backend holds the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobStoreConfig {
    /// A directory on local disk.
    Local {
        /// The root directory; created if missing.
        root: PathBuf,
    },
}

/// What can go wrong talking to storage.
#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    /// The backend could not be reached or refused the operation.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// The object store behind snapshots.
#[derive(Debug, Clone)]
pub struct BlobStore {
    config: BlobStoreConfig,
}

impl BlobStore {
    /// Opens (and for local disk, creates) the configured store.
    pub async fn open(config: BlobStoreConfig) -> Result<Self, BlobStoreError> {
        match &config {
            BlobStoreConfig::Local { root } => {
                tokio::fs::create_dir_all(root)
                    .await
                    .map_err(|err| BlobStoreError::Unavailable(format!("cannot create {}: {err}", root.display())))?;
            }
        }
        Ok(BlobStore { config })
    }

    /// A short backend name for logs and readiness: `local`.
    pub fn backend_name(&self) -> &'static str {
        match self.config {
            BlobStoreConfig::Local { .. } => "local",
        }
    }

    /// Where the objects live, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.config {
            BlobStoreConfig::Local { root } => format!("local disk at {}", root.display()),
        }
    }

    /// Proves the store can durably write and delete: writes a probe object the same way real
    /// objects are written (temp name, fsync, rename), reads it back and removes it.
    pub async fn check(&self) -> Result<(), BlobStoreError> {
        match &self.config {
            BlobStoreConfig::Local { root } => check_local(root).await,
        }
    }
}

async fn check_local(root: &Path) -> Result<(), BlobStoreError> {
    let unavailable =
        |what: &str, err: std::io::Error| BlobStoreError::Unavailable(format!("{what} in {}: {err}", root.display()));
    let probe = uuid::Uuid::new_v4().to_string();
    let temp = root.join(format!(".probe-{probe}.tmp"));
    let real = root.join(format!(".probe-{probe}"));
    let payload = probe.as_bytes();
    {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::create(&temp).await.map_err(|err| unavailable("cannot create a probe", err))?;
        file.write_all(payload).await.map_err(|err| unavailable("cannot write a probe", err))?;
        file.sync_all().await.map_err(|err| unavailable("cannot fsync a probe", err))?;
    }
    let renamed = tokio::fs::rename(&temp, &real).await;
    if let Err(err) = renamed {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(unavailable("cannot rename a probe", err));
    }
    let read_back = tokio::fs::read(&real).await;
    let removed = tokio::fs::remove_file(&real).await;
    let read_back = read_back.map_err(|err| unavailable("cannot read a probe back", err))?;
    removed.map_err(|err| unavailable("cannot remove a probe", err))?;
    if read_back != payload {
        return Err(BlobStoreError::Unavailable(format!("probe read back wrong bytes in {}", root.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
