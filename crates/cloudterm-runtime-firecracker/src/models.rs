//! The bodies of the Firecracker API requests this backend sends, as in Firecracker's
//! `swagger/firecracker.yaml` (v1.16): only the fields we set, so a newer Firecracker that adds
//! optional fields still accepts them.

use std::path::PathBuf;

use serde::Serialize;

/// `PUT /boot-source`.
#[derive(Debug, Clone, Serialize)]
pub struct BootSource {
    /// The uncompressed guest kernel (ELF `vmlinux`).
    pub kernel_image_path: PathBuf,
    /// The kernel command line.
    pub boot_args: String,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MachineConfig {
    /// vCPUs (1..=32).
    pub vcpu_count: u8,
    /// Guest memory, MiB.
    pub mem_size_mib: u64,
    /// No simultaneous multithreading in the guest: a sandbox's vCPUs are not paired.
    pub smt: bool,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, Serialize)]
pub struct Drive {
    /// The id, also the last path component of the request.
    pub drive_id: String,
    /// The image file on the host.
    pub path_on_host: PathBuf,
    /// Whether it is `/dev/vda`, the guest's root.
    pub is_root_device: bool,
    /// Whether the guest may write to it.
    pub is_read_only: bool,
}

/// `PUT /vsock`: the guest's vsock device, reached from the host through a Unix socket.
#[derive(Debug, Clone, Serialize)]
pub struct Vsock {
    /// The guest's context id (3 is the first one free for guests).
    pub guest_cid: u32,
    /// The host-side Unix socket Firecracker listens on (`CONNECT <port>\n` to reach a guest port).
    pub uds_path: PathBuf,
}

/// A token bucket (`rate_limiter` of the serial console).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TokenBucket {
    /// Bucket size, bytes.
    pub size: u64,
    /// Time to refill the whole bucket, milliseconds.
    pub refill_time: u64,
}

/// `PUT /serial`: where the guest's console goes.
#[derive(Debug, Clone, Serialize)]
pub struct Serial {
    /// The file the console output is appended to.
    pub serial_out_path: PathBuf,
    /// Caps what a guest can write to the host's disk through its console.
    pub rate_limiter: TokenBucket,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Action {
    /// `InstanceStart`, `SendCtrlAltDel` or `FlushMetrics`.
    pub action_type: &'static str,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VmState {
    /// `Paused` or `Resumed`.
    pub state: &'static str,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotCreate {
    /// `Full` (every page) or `Diff`.
    pub snapshot_type: &'static str,
    /// Where the device and vCPU state is written.
    pub snapshot_path: PathBuf,
    /// Where the guest memory is written.
    pub mem_file_path: PathBuf,
}

/// The memory backend of a snapshot load.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryBackend {
    /// `File` (mapped privately) or `Uffd`.
    pub backend_type: &'static str,
    /// The memory file.
    pub backend_path: PathBuf,
}

/// A new host socket for the vsock device of a restored VM.
#[derive(Debug, Clone, Serialize)]
pub struct VsockOverride {
    /// The host-side Unix socket to listen on.
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotLoad {
    /// The device and vCPU state file.
    pub snapshot_path: PathBuf,
    /// The guest memory.
    pub mem_backend: MemoryBackend,
    /// Resume the guest as soon as it is loaded.
    pub resume_vm: bool,
    /// Where the vsock device listens now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}
