//! Pausing a microVM into a snapshot and bringing it back: Firecracker writes the device/vCPU
//! state and the guest memory of a paused VM to two files in the VM's directory, which are
//! streamed into the BlobStore (`vms/<id>/<n>/vmstate`, `vms/<id>/<n>/memory` for the n-th
//! pause) so the VMM and its
//! memory can go while the sandbox sleeps. The files stay as a local copy: resume loads them
//! into a new Firecracker process directly (milliseconds), and fetches them from the store
//! only when they are gone (another host, a lost disk).

use std::path::Path;

use cloudterm_blobstore::BlobStore;

use crate::error::FirecrackerError;
use crate::layout::VmDir;
use crate::machine::CONSOLE_RATE;
use crate::models::{MemoryBackend, Serial, SnapshotCreate, SnapshotLoad, VmState, VsockOverride};
use crate::vmm::{remove_if_present, Vmm};

/// The objects of one paused VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotKeys {
    /// Device and vCPU state.
    pub vmstate: String,
    /// Guest memory.
    pub memory: String,
}

impl SnapshotKeys {
    /// The keys of pause number `generation` of sandbox `id` (a checked id: one path segment).
    /// Each pause writes new keys, so deleting the previous pause's objects in the background
    /// can never hit the next one's.
    pub fn for_sandbox(id: &str, generation: u64) -> Self {
        SnapshotKeys {
            vmstate: format!("{}/{generation}/vmstate", prefix(id)),
            memory: format!("{}/{generation}/memory", prefix(id)),
        }
    }
}

/// Where every snapshot object of sandbox `id` is.
pub fn prefix(id: &str) -> String {
    format!("vms/{id}")
}

/// Removes every snapshot object of sandbox `id` (idempotent).
pub async fn discard_all(store: &BlobStore, id: &str) -> Result<(), FirecrackerError> {
    let objects =
        store.list(&prefix(id)).await.map_err(|err| FirecrackerError::Storage(format!("{}: {err}", prefix(id))))?;
    for object in objects {
        store.delete(&object.key).await.map_err(|err| FirecrackerError::Storage(format!("{}: {err}", object.key)))?;
    }
    Ok(())
}

/// Stops the guest's vCPUs (`PATCH /vm Paused`); the VMM and its memory stay.
pub async fn pause(vmm: &Vmm) -> Result<(), FirecrackerError> {
    vmm.api().patch("/vm", &VmState { state: "Paused" }).await.map_err(Into::into)
}

/// Lets a paused guest run again.
pub async fn resume(vmm: &Vmm) -> Result<(), FirecrackerError> {
    vmm.api().patch("/vm", &VmState { state: "Resumed" }).await.map_err(Into::into)
}

/// Writes a full snapshot of a paused VM to `dir`'s snapshot files.
pub async fn create(vmm: &Vmm, dir: &VmDir) -> Result<(), FirecrackerError> {
    let body = SnapshotCreate { snapshot_type: "Full", snapshot_path: dir.vmstate(), mem_file_path: dir.memory() };
    vmm.api().put_slow("/snapshot/create", &body).await.map_err(Into::into)
}

/// Streams `dir`'s snapshot files into the store (they stay in `dir`). Returns the bytes stored.
pub async fn upload(store: &BlobStore, keys: &SnapshotKeys, dir: &VmDir) -> Result<u64, FirecrackerError> {
    let mut total = 0;
    for (key, path) in [(&keys.vmstate, dir.vmstate()), (&keys.memory, dir.memory())] {
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|err| FirecrackerError::io(&format!("cannot read {}", path.display()), err))?;
        let stored =
            store.put_stream(key, file).await.map_err(|err| FirecrackerError::Storage(format!("{key}: {err}")))?;
        total += stored.size_bytes;
    }
    Ok(total)
}

/// Whether `dir` still holds both snapshot files (a local copy to resume from).
pub fn is_local(dir: &VmDir) -> bool {
    dir.vmstate().is_file() && dir.memory().is_file()
}

/// Fetches the snapshot objects into `dir`'s snapshot files.
pub async fn download(store: &BlobStore, keys: &SnapshotKeys, dir: &VmDir) -> Result<(), FirecrackerError> {
    for (key, path) in [(&keys.vmstate, dir.vmstate()), (&keys.memory, dir.memory())] {
        fetch(store, key, &path).await?;
    }
    Ok(())
}

async fn fetch(store: &BlobStore, key: &str, path: &Path) -> Result<(), FirecrackerError> {
    let mut reader = store.get_stream(key).await.map_err(|err| FirecrackerError::Storage(format!("{key}: {err}")))?;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|err| FirecrackerError::io(&format!("cannot create {}", path.display()), err))?;
    // Large reads: a memory file is hundreds of MiB.
    let mut reader = tokio::io::BufReader::with_capacity(1 << 20, &mut reader);
    tokio::io::copy_buf(&mut reader, &mut file)
        .await
        .map_err(|err| FirecrackerError::Storage(format!("{key}: {err}")))?;
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|err| FirecrackerError::io("cannot write a snapshot file", err))?;
    Ok(())
}

/// Appends the console of the previous VMM to `console.prev.log` and removes it: Firecracker
/// opens the console file without `O_APPEND`, so a restored VMM would overwrite it from the
/// start.
async fn retire_console(dir: &VmDir) -> Result<(), FirecrackerError> {
    let current = match tokio::fs::read(dir.console_log()).await {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(FirecrackerError::io("cannot read the console log", err)),
    };
    let mut previous = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.previous_console_log())
        .await
        .map_err(|err| FirecrackerError::io("cannot keep the console log", err))?;
    tokio::io::AsyncWriteExt::write_all(&mut previous, &current)
        .await
        .map_err(|err| FirecrackerError::io("cannot keep the console log", err))?;
    remove_if_present(&dir.console_log())
}

/// Removes a paused VM's objects (idempotent).
pub async fn discard(store: &BlobStore, keys: &SnapshotKeys) -> Result<(), FirecrackerError> {
    for key in [&keys.vmstate, &keys.memory] {
        store.delete(key).await.map_err(|err| FirecrackerError::Storage(format!("{key}: {err}")))?;
    }
    Ok(())
}

/// Starts a new Firecracker process in `dir` and loads the snapshot files there into it,
/// running. The memory file is mapped privately by Firecracker, so it may be deleted once the
/// load returned. The console keeps going to `dir`'s console log and the vsock device listens
/// on `dir`'s vsock socket again.
pub async fn restore(binary: &Path, dir: &VmDir, id: &str) -> Result<Vmm, FirecrackerError> {
    remove_if_present(&dir.vsock_socket())?;
    retire_console(dir).await?;
    let vmm = Vmm::spawn(binary, dir, id).await?;
    let load = async {
        // Allowed before a load (it is no boot configuration), and the restored serial device
        // writes where this says.
        let serial = Serial { serial_out_path: dir.console_log(), rate_limiter: CONSOLE_RATE };
        vmm.api().put("/serial", &serial).await?;
        let body = SnapshotLoad {
            snapshot_path: dir.vmstate(),
            mem_backend: MemoryBackend { backend_type: "File", backend_path: dir.memory() },
            resume_vm: true,
            vsock_override: Some(VsockOverride { uds_path: dir.vsock_socket() }),
        };
        vmm.api().put_slow("/snapshot/load", &body).await?;
        Ok::<_, FirecrackerError>(())
    };
    let loaded = load.await;
    for path in [dir.vmstate(), dir.memory()] {
        let _ = remove_if_present(&path);
    }
    match loaded {
        Ok(()) => Ok(vmm),
        Err(err) => {
            vmm.kill().await;
            Err(err)
        }
    }
}
