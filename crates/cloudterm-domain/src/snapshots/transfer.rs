//! Moving archives between a directory and the BlobStore as streams: `pack` writes into one end
//! of an in-memory pipe on a blocking thread while the store uploads from the other end, and
//! `unpack` reads the store's stream on a blocking thread. Neither side ever holds the archive.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use cloudterm_archive::{ArchiveError, PackOptions, PackStats, Source, UnpackOptions, UnpackStats};
use cloudterm_blobstore::{BlobStore, BlobStoreError, PutOutcome};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::SyncIoBridge;

use crate::error::DomainError;

/// Bytes buffered between the packer and the uploader.
const PIPE_BYTES: usize = 1 << 20;

/// Packs `dir` and stores it under `key`. Fails without leaving an object under `key`.
pub(crate) async fn pack_to_store(
    blobs: &BlobStore,
    dir: PathBuf,
    key: &str,
    options: PackOptions,
) -> Result<(PackStats, PutOutcome), DomainError> {
    pack_sources_to_store(blobs, vec![Source::dir("", dir)], None, key, options).await
}

/// Something that keeps the sources' paths valid until packing ends (a detached mount).
pub(crate) type Hold = Option<Box<dyn std::any::Any + Send + Sync>>;

/// Packs several trees (each under its own top-level name) and stores them under `key`; `hold`
/// is dropped once the packer is done with the paths. Fails without leaving an object.
pub(crate) async fn pack_sources_to_store(
    blobs: &BlobStore,
    sources: Vec<Source>,
    hold: Hold,
    key: &str,
    options: PackOptions,
) -> Result<(PackStats, PutOutcome), DomainError> {
    let (reader, writer) = tokio::io::duplex(PIPE_BYTES);
    let complete = Arc::new(AtomicBool::new(false));
    let packer_complete = Arc::clone(&complete);
    let packer = tokio::task::spawn_blocking(move || {
        let _hold = hold;
        let bridge = SyncIoBridge::new(writer);
        let mut out = std::io::BufWriter::with_capacity(256 << 10, bridge);
        let stats = cloudterm_archive::pack_sources(&sources, &mut out, &options)?;
        use std::io::Write;
        out.flush().map_err(|err| ArchiveError::Io { context: "flushing the archive".into(), source: err })?;
        packer_complete.store(true, Ordering::Release);
        Ok::<_, ArchiveError>(stats)
        // Dropping the bridge closes the pipe: the uploader sees the end of the stream.
    });
    let upload = blobs.put_stream(key, EndChecked { inner: reader, complete }).await;
    let packed = packer.await.map_err(|err| DomainError::Internal(format!("snapshot packer panicked: {err}")))?;
    match (packed, upload) {
        (Ok(stats), Ok(outcome)) => Ok((stats, outcome)),
        // The packer failed and the store refused the stream's erroring end (`EndChecked`):
        // the packer's error is the cause, and nothing was stored.
        (Err(err), Err(BlobStoreError::Body(_))) => Err(archive_error(err)),
        // A failed upload drops the pipe, so the packer fails too (a broken pipe): the
        // storage error is the cause.
        (_, Err(err)) => Err(storage_error(err)),
        // Cannot happen (a packer that fails makes the stream end in an error, so the store
        // keeps nothing); deleting is the safe answer if it ever does.
        (Err(err), Ok(_)) => {
            let _ = blobs.delete(key).await;
            Err(archive_error(err))
        }
    }
}

/// The pipe's reading end, as the store sees it: its end is an error unless the packer said it
/// finished. A packer that fails drops its end of the pipe just as one that succeeds does; a
/// clean end there would make the store commit a truncated archive under the real key (local
/// disk renames it into place, S3 completes the upload) before anyone could delete it.
struct EndChecked<R> {
    inner: R,
    complete: Arc<AtomicBool>,
}

impl<R: AsyncRead + Unpin> AsyncRead for EndChecked<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                if this.complete.load(Ordering::Acquire) {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(std::io::Error::other("the archive ended early: packing it failed")))
                }
            }
            other => other,
        }
    }
}

/// Reads `key` from the store and extracts it into the fresh directory `dest`.
pub(crate) async fn unpack_from_store(
    blobs: &BlobStore,
    key: &str,
    dest: &Path,
    options: UnpackOptions,
) -> Result<UnpackStats, DomainError> {
    let reader = blobs.get_stream(key).await.map_err(storage_error)?;
    unpack_reader(reader, dest, options).await
}

/// Extracts an archive read from `reader` into the fresh directory `dest`.
pub(crate) async fn unpack_reader(
    reader: impl AsyncRead + Unpin + Send + 'static,
    dest: &Path,
    options: UnpackOptions,
) -> Result<UnpackStats, DomainError> {
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let bridge = SyncIoBridge::new(reader);
        let input = std::io::BufReader::with_capacity(256 << 10, bridge);
        cloudterm_archive::unpack(input, &dest, &options)
    })
    .await
    .map_err(|err| DomainError::Internal(format!("snapshot extractor panicked: {err}")))?
    .map_err(archive_error)
}

/// Archive failures: what the archive holds is the client's problem (422-ish invalid input),
/// a full workspace is the storage quota, the rest of our disk is ours.
pub(crate) fn archive_error(err: ArchiveError) -> DomainError {
    match err {
        ArchiveError::Unsafe { .. } | ArchiveError::Corrupt(_) | ArchiveError::TooLarge(_) => {
            DomainError::InvalidInput(format!("snapshot archive refused: {err}"))
        }
        ArchiveError::ChecksumMismatch { .. } | ArchiveError::Decrypt(_) => {
            DomainError::Unavailable(format!("stored snapshot failed verification: {err}"))
        }
        // ENOSPC/EDQUOT while unpacking: the workspace's volume (or the disk) is full.
        ArchiveError::Io { ref source, .. } if matches!(source.raw_os_error(), Some(28) | Some(122)) => {
            crate::sandboxes::ops::storage_exceeded(&err.to_string())
        }
        ArchiveError::Io { .. } | ArchiveError::InvalidArgument(_) => DomainError::Internal(err.to_string()),
    }
}

/// Storage failures.
pub(crate) fn storage_error(err: BlobStoreError) -> DomainError {
    match err {
        BlobStoreError::NotFound(what) => DomainError::Unavailable(format!("snapshot object {what} is missing")),
        BlobStoreError::Body(err) => DomainError::InvalidInput(format!("cannot read the upload: {err}")),
        other => DomainError::Unavailable(format!("snapshot storage: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudterm_blobstore::BlobStoreConfig;

    /// A packer that fails after it has streamed part of the archive leaves no object under the
    /// key, not even for a moment: the local store would otherwise rename the truncated temp
    /// file into place when the pipe closed.
    #[tokio::test]
    async fn a_packer_that_fails_midway_stores_nothing() {
        let scratch = tempfile::tempdir().expect("tmp");
        let blobs =
            BlobStore::open(BlobStoreConfig::Local { root: scratch.path().join("store") }).await.expect("store");
        let tree = scratch.path().join("tree");
        std::fs::create_dir(&tree).expect("mkdir");
        // Incompressible, larger than the pipe and the packer's buffer: bytes reach the store.
        let noise: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(tree.join("noise"), noise).expect("write");
        let sources = vec![Source::dir("workspace", &tree), Source::dir("layer", scratch.path().join("missing"))];
        let result = pack_sources_to_store(&blobs, sources, None, "snapshots/x.tar.zst", PackOptions::default()).await;
        assert!(result.is_err(), "packing a missing tree must fail");
        assert!(blobs.list("").await.expect("list").is_empty(), "an object was left: {:?}", blobs.list("").await);
        let mut files = Vec::new();
        let mut stack = vec![scratch.path().join("store")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    stack.push(entry.path())
                } else {
                    files.push(entry.path())
                }
            }
        }
        assert!(files.is_empty(), "files left in the store's directory: {files:?}");
    }

    /// The reading end reports a closed pipe as an error unless the packer marked it complete.
    #[tokio::test]
    async fn the_pipe_ends_in_an_error_unless_the_packer_finished() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for finished in [false, true] {
            let (reader, mut writer) = tokio::io::duplex(64);
            let complete = Arc::new(AtomicBool::new(false));
            let mut checked = EndChecked { inner: reader, complete: Arc::clone(&complete) };
            writer.write_all(b"part").await.expect("write");
            complete.store(finished, Ordering::Release);
            drop(writer);
            let mut read = Vec::new();
            let result = checked.read_to_end(&mut read).await;
            assert_eq!(read, b"part");
            assert_eq!(result.is_ok(), finished, "{result:?}");
        }
    }

    /// The same packer succeeding stores the whole archive.
    #[tokio::test]
    async fn a_packer_that_succeeds_stores_its_archive() {
        let scratch = tempfile::tempdir().expect("tmp");
        let blobs =
            BlobStore::open(BlobStoreConfig::Local { root: scratch.path().join("store") }).await.expect("store");
        let tree = scratch.path().join("tree");
        std::fs::create_dir(&tree).expect("mkdir");
        std::fs::write(tree.join("f"), b"hello").expect("write");
        let (_, outcome) =
            pack_to_store(&blobs, tree, "snapshots/y.tar.zst", PackOptions::default()).await.expect("pack");
        assert_eq!(blobs.head("snapshots/y.tar.zst").await.expect("head").size_bytes, outcome.size_bytes);
    }
}
