//! Where a sandbox's files are: one host directory per VM (`<root>/<id>/`), never visible to
//! the guest, holding its sockets, logs, disk images and snapshot files. Everything a VM leaves
//! on the host is under it, so removing it is the file half of a teardown.

use std::path::{Path, PathBuf};

/// The files of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    dir: PathBuf,
}

impl VmDir {
    /// The VM whose directory is `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        VmDir { dir: dir.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Firecracker's API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The host side of the guest's vsock device (hybrid vsock).
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// The guest's serial console.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The console output of the VMMs before the current one (a VM resumed from a snapshot
    /// runs in a new process, which starts a new console file).
    pub fn previous_console_log(&self) -> PathBuf {
        self.dir.join("console.prev.log")
    }

    /// Firecracker's own output (its log lines, panics).
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }

    /// The sandbox's own copy of its root image (`/dev/vda`, read-write): what the guest
    /// writes outside `/workspace` stays in it.
    pub fn root_image(&self) -> PathBuf {
        self.dir.join("root.ext4")
    }

    /// The per-sandbox workspace disk image (`/dev/vdb` in the guest).
    pub fn workspace_image(&self) -> PathBuf {
        self.dir.join("workspace.ext4")
    }

    /// What the runtime knows of the VM ([`crate::record::VmRecord`]), for attach after a restart.
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }

    /// A paused VM's device and vCPU state while it is written or read.
    pub fn vmstate(&self) -> PathBuf {
        self.dir.join("snapshot.vmstate")
    }

    /// A paused VM's guest memory while it is written or read.
    pub fn memory(&self) -> PathBuf {
        self.dir.join("snapshot.mem")
    }
}

/// Whether `id` is safe as one path component and as a Firecracker instance id (after
/// [`instance_id`]): ASCII letters, digits, `_` and `-`, at most 64 bytes.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Firecracker's `--id` accepts letters, digits and `-` only.
pub fn instance_id(id: &str) -> String {
    id.replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_the_root_or_upset_firecracker_are_refused() {
        for bad in ["", "..", "a/b", "a b", "x\0", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(valid_id("sbx_abc-1"));
        assert_eq!(instance_id("sbx_abc"), "sbx-abc");
    }
}
