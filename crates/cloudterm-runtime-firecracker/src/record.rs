//! `vm.json` in a VM's directory: what the runtime must know to find a VM again after a server
//! restart (its VMM's pid, or that it sleeps in the BlobStore), written atomically.

use serde::{Deserialize, Serialize};

use crate::error::FirecrackerError;
use crate::layout::VmDir;

/// Where a VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Its VMM runs the guest.
    Running,
    /// Its vCPUs are stopped; the VMM keeps its memory.
    PausedInMemory,
    /// Its VMM is gone; the snapshot is in the BlobStore.
    PausedInStore,
}

/// The record of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VMM's pid, while there is a VMM.
    pub pid: Option<u32>,
    /// Where the VM is.
    pub phase: VmPhase,
    /// The guest vsock port of its agent.
    pub agent_port: u32,
    /// How many times it was paused into the store (names the snapshot's objects).
    #[serde(default)]
    pub generation: u64,
    /// The host directory the workspace disk was made from and is read back into.
    #[serde(default)]
    pub workspace: Option<std::path::PathBuf>,
}

/// Reads `dir`'s record; `None` when there is none or it is unreadable (a VM whose start never
/// finished).
pub fn read(dir: &VmDir) -> Option<VmRecord> {
    serde_json::from_slice(&std::fs::read(dir.record()).ok()?).ok()
}

/// Replaces `dir`'s record (temp file, then rename).
pub fn write(dir: &VmDir, record: &VmRecord) -> Result<(), FirecrackerError> {
    let tmp = dir.path().join("vm.json.tmp");
    let bytes = serde_json::to_vec(record).map_err(|err| FirecrackerError::Io(err.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(|err| FirecrackerError::io("cannot write the vm record", err))?;
    std::fs::rename(&tmp, dir.record()).map_err(|err| FirecrackerError::io("cannot write the vm record", err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_reads_as_none() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = VmDir::new(tmp.path());
        assert_eq!(read(&dir), None);
        let record = VmRecord {
            pid: Some(42),
            phase: VmPhase::PausedInStore,
            agent_port: 1024,
            generation: 3,
            workspace: Some("/ws".into()),
        };
        write(&dir, &record).expect("write");
        assert_eq!(read(&dir), Some(record));
        std::fs::write(dir.record(), b"{not json").expect("write");
        assert_eq!(read(&dir), None);
    }
}
