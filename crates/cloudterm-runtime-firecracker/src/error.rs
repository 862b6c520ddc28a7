//! [`FirecrackerError`]: what this backend fails with, and how that becomes the runtime
//! trait's [`SandboxRuntimeError`] (bad kernel, image or limits are the caller's to fix and say
//! `InvalidSpec`; everything else is a runtime failure).

use cloudterm_runtime::SandboxRuntimeError;

use crate::api::ApiError;

/// What a Firecracker operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    /// The spec or configuration cannot work (a kernel that is missing or no ELF, a missing
    /// root image, limits out of range).
    #[error("{0}")]
    Invalid(String),
    /// The firecracker binary could not be started.
    #[error("cannot start firecracker: {0}")]
    Spawn(String),
    /// Firecracker refused a request or its socket broke.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The VMM exited (the guest shut down or crashed, or Firecracker failed).
    #[error("the VM exited ({status}); its output: {output}")]
    Exited {
        /// The process's exit status.
        status: String,
        /// The tail of its console and log.
        output: String,
    },
    /// Something did not happen within its bound.
    #[error("{0}")]
    Timeout(String),
    /// A host file operation failed.
    #[error("{0}")]
    Io(String),
    /// Storing or fetching a snapshot failed.
    #[error("snapshot storage: {0}")]
    Storage(String),
    /// The VM's workspace disk could not be read back into the workspace directory.
    #[error("cannot read the VM's workspace disk {0}")]
    WorkspaceDisk(String),
    /// The operation does not fit the VM's state (resume a VM that is not paused, ...).
    #[error("{0}")]
    State(String),
}

impl FirecrackerError {
    /// An I/O failure with what was being done.
    pub fn io(what: &str, err: std::io::Error) -> Self {
        FirecrackerError::Io(format!("{what}: {err}"))
    }
}

impl From<FirecrackerError> for SandboxRuntimeError {
    fn from(err: FirecrackerError) -> Self {
        match err {
            FirecrackerError::Invalid(message) => SandboxRuntimeError::InvalidSpec(message),
            other => SandboxRuntimeError::Failed(other.to_string()),
        }
    }
}
