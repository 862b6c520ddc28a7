//! `VolumeError`: what preparing, measuring, resizing or removing a workspace volume fails with.

use std::path::PathBuf;

/// A failure of a volume operation.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A file system call on the host failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A tool (`mkfs.ext4`, `mount`, `tune2fs`, `resize2fs`…) failed.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        /// The program.
        program: String,
        /// Its exit status, as text.
        status: String,
        /// The end of what it said on stderr.
        stderr: String,
    },
    /// The new limit is below what the workspace already holds: shrinking would lose files.
    #[error("the workspace holds {used_bytes} bytes, more than the new limit of {limit_bytes} bytes")]
    BelowUse {
        /// Bytes in use.
        used_bytes: u64,
        /// The refused limit.
        limit_bytes: u64,
    },
    /// The volume's image exists but its state is not what this code writes (a missing limit
    /// file, a mount point that is something else).
    #[error("workspace volume {path} is in an unexpected state: {why}")]
    Unexpected {
        /// The volume's root.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl VolumeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        VolumeError::Io { context: context.into(), source }
    }
}
