//! `ArchiveError`: what packing or unpacking fails with, one variant per way a caller must react.

use std::io;

/// What can go wrong making or reading an archive.
///
/// The variants are split by who is at fault, so the caller can choose a status code without
/// reading messages: [`Unsafe`](Self::Unsafe), [`TooLarge`](Self::TooLarge) and
/// [`Corrupt`](Self::Corrupt) are about the archive's content (an uploaded archive → 422 or 413),
/// [`ChecksumMismatch`](Self::ChecksumMismatch) and [`Decrypt`](Self::Decrypt) about stored bytes
/// that are not what was written or a wrong key, [`Io`](Self::Io) and
/// [`InvalidArgument`](Self::InvalidArgument) about our side.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry the extractor refuses to write: it would land outside the destination, pass
    /// through a symbolic link, create a device, and the like. Nothing was written for it.
    #[error("unsafe archive entry {entry:?}: {reason}")]
    Unsafe {
        /// The entry's path as stored in the archive (lossy UTF-8, shortened when very long).
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// The bytes are not a valid zstd-compressed tar stream (bad frame, bad header, truncated).
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    /// The archive's bytes do not hash to the expected SHA-256: the stored object is not the
    /// one that was written.
    #[error("archive checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The hex SHA-256 the caller expected.
        expected: String,
        /// The hex SHA-256 of the bytes actually read.
        actual: String,
    },
    /// The encrypted stream does not authenticate: wrong key, tampered or truncated ciphertext,
    /// or an encrypted archive read without a key (and the reverse).
    #[error("cannot decrypt the archive: {0}")]
    Decrypt(String),
    /// The archive exceeds a configured limit (bytes or entries).
    #[error("archive too large: {0}")]
    TooLarge(String),
    /// Reading the source tree, writing the destination, or moving the archive's bytes failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The caller passed options or paths that cannot work (a non-empty destination, a bad
    /// source name, a malformed expected checksum). A bug on the caller's side.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ArchiveError {
    /// An [`ArchiveError::Io`] with its context.
    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Self::Io { context: context.into(), source: source.into() }
    }

    /// An [`ArchiveError::Unsafe`] naming the entry by its raw archive path.
    pub(crate) fn unsafe_entry(entry: &[u8], reason: impl Into<String>) -> Self {
        Self::Unsafe { entry: display_name(entry), reason: reason.into() }
    }
}

/// An archive path as text for messages: lossy UTF-8, cut at 256 characters so a hostile
/// 1 MiB name cannot blow up logs or error bodies.
pub(crate) fn display_name(raw: &[u8]) -> String {
    const MAX_CHARS: usize = 256;
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() <= MAX_CHARS {
        return text.into_owned();
    }
    let mut short: String = text.chars().take(MAX_CHARS).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_in_messages() {
        let name = vec![b'a'; 10_000];
        let error = ArchiveError::unsafe_entry(&name, "absolute path");
        let ArchiveError::Unsafe { entry, .. } = &error else { panic!("wrong variant") };
        assert_eq!(entry.chars().count(), 257);
        assert!(error.to_string().len() < 400);
    }
}
