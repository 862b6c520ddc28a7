//! Moving archives between a directory and the BlobStore as streams: `pack` writes into one end
//! of an in-memory pipe on a blocking thread while the store uploads from the other end, and
//! `unpack` reads the store's stream on a blocking thread. Neither side ever holds the archive.

use std::path::{Path, PathBuf};

use cloudterm_archive::{ArchiveError, PackOptions, PackStats, Source, UnpackOptions, UnpackStats};
use cloudterm_blobstore::{BlobStore, BlobStoreError, PutOutcome};
use tokio::io::AsyncRead;
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
    let packer = tokio::task::spawn_blocking(move || {
        let _hold = hold;
        let bridge = SyncIoBridge::new(writer);
        let mut out = std::io::BufWriter::with_capacity(256 << 10, bridge);
        let stats = cloudterm_archive::pack_sources(&sources, &mut out, &options)?;
        use std::io::Write;
        out.flush().map_err(|err| ArchiveError::Io { context: "flushing the archive".into(), source: err })?;
        Ok::<_, ArchiveError>(stats)
        // Dropping the bridge closes the pipe: the uploader sees the end of the stream.
    });
    let upload = blobs.put_stream(key, reader).await;
    let packed = packer.await.map_err(|err| DomainError::Internal(format!("snapshot packer panicked: {err}")))?;
    match (packed, upload) {
        (Ok(stats), Ok(outcome)) => Ok((stats, outcome)),
        // A failed upload drops the pipe, so the packer fails too (a broken pipe): the
        // storage error is the cause.
        (_, Err(err)) => Err(storage_error(err)),
        // The packer failing closes the pipe early, and the store kept a truncated object.
        (Err(err), Ok(_)) => {
            let _ = blobs.delete(key).await;
            Err(archive_error(err))
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
