//! Booting a microVM: checks what Firecracker would only reject late (a kernel that is no ELF,
//! missing images), then spawns the VMM and configures it over its API socket: console, boot
//! source, machine size, drives, vsock, and `InstanceStart`.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::FirecrackerError;
use crate::layout::VmDir;
use crate::models::{Action, BootSource, Drive, MachineConfig, Serial, TokenBucket, Vsock};
use crate::vmm::Vmm;

/// The guest's vsock context id: 3 is the first one free for guests (0-2 are reserved), and each
/// VM has its own device, so every VM can use it.
pub const GUEST_CID: u32 = 3;

/// The serial console's bound: 64 KiB of burst, refilled once a second. A guest that prints
/// faster loses output instead of filling the host's disk.
pub const CONSOLE_RATE: TokenBucket = TokenBucket { size: 64 * 1024, refill_time: 1000 };

/// What one microVM is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    /// The uncompressed guest kernel (ELF `vmlinux`).
    pub kernel: PathBuf,
    /// The kernel command line.
    pub boot_args: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub memory_mb: u64,
    /// The root file system image (`/dev/vda`); `None` for a guest that needs no disk (the
    /// test harness's bare guest).
    pub rootfs: Option<PathBuf>,
    /// Attach the root image read-write (a sandbox's own copy, made while Firecracker starts,
    /// so it is checked only then) instead of read-only (a shared image).
    pub root_writable: bool,
    /// The workspace image (`/dev/vdb`), read-write.
    pub workspace: Option<PathBuf>,
}

/// Checks that `path` is a readable 64-bit ELF file: Firecracker on x86_64 boots nothing else,
/// and says so only after the whole VM is configured.
pub fn check_kernel(path: &Path) -> Result<(), FirecrackerError> {
    let mut head = [0u8; 5];
    let read = std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut head));
    match read {
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Err(not_elf(path)),
        Err(err) => Err(FirecrackerError::Invalid(format!("guest kernel {}: {err}", path.display()))),
        Ok(()) if head[..4] != *b"\x7fELF" || head[4] != 2 => Err(not_elf(path)),
        Ok(()) => Ok(()),
    }
}

fn not_elf(path: &Path) -> FirecrackerError {
    FirecrackerError::Invalid(format!(
        "guest kernel {} is not an uncompressed 64-bit ELF vmlinux (a bzImage must be extracted first)",
        path.display()
    ))
}

/// Checks that a disk image is a regular file.
pub fn check_image(what: &str, path: &Path) -> Result<(), FirecrackerError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(FirecrackerError::Invalid(format!("{what} {} is not a file", path.display()))),
        Err(err) => Err(FirecrackerError::Invalid(format!("{what} {}: {err}", path.display()))),
    }
}

/// Validates `spec`, spawns Firecracker in `dir` and boots the guest. On any failure the VMM is
/// killed before returning, so nothing half-configured keeps running.
pub async fn boot(binary: &Path, dir: &VmDir, id: &str, spec: &MachineSpec) -> Result<Vmm, FirecrackerError> {
    boot_after(binary, dir, id, spec, async { Ok(()) }).await
}

/// [`boot`], with `prepare` (making the workspace image) run while Firecracker starts: the
/// images are only needed once the VMM takes its configuration.
pub async fn boot_after(
    binary: &Path,
    dir: &VmDir,
    id: &str,
    spec: &MachineSpec,
    prepare: impl std::future::Future<Output = Result<(), FirecrackerError>>,
) -> Result<Vmm, FirecrackerError> {
    check_kernel(&spec.kernel)?;
    if let Some(rootfs) = spec.rootfs.as_ref().filter(|_| !spec.root_writable) {
        check_image("root image", rootfs)?;
    }
    if !(1..=32).contains(&spec.vcpus) {
        return Err(FirecrackerError::Invalid(format!("{} vCPUs is out of range (1-32)", spec.vcpus)));
    }
    if !(16..=(1 << 20)).contains(&spec.memory_mb) {
        return Err(FirecrackerError::Invalid(format!("{} MiB of memory is out of range", spec.memory_mb)));
    }
    let (prepared, vmm) = tokio::join!(prepare, Vmm::spawn(binary, dir, id));
    let vmm = match (prepared, vmm) {
        (Ok(()), Ok(vmm)) => vmm,
        (Err(err), Ok(vmm)) => {
            vmm.kill().await;
            return Err(err);
        }
        (_, Err(err)) => return Err(err),
    };
    let configured = async {
        if let Some(workspace) = &spec.workspace {
            check_image("workspace image", workspace)?;
        }
        if let Some(rootfs) = spec.rootfs.as_ref().filter(|_| spec.root_writable) {
            check_image("root image", rootfs)?;
        }
        configure(&vmm, dir, spec).await
    };
    match configured.await {
        Ok(()) => Ok(vmm),
        Err(err) => {
            vmm.kill().await;
            Err(err)
        }
    }
}

async fn configure(vmm: &Vmm, dir: &VmDir, spec: &MachineSpec) -> Result<(), FirecrackerError> {
    let api = vmm.api();
    api.put("/serial", &Serial { serial_out_path: dir.console_log(), rate_limiter: CONSOLE_RATE }).await?;
    api.put("/boot-source", &BootSource { kernel_image_path: spec.kernel.clone(), boot_args: spec.boot_args.clone() })
        .await?;
    api.put("/machine-config", &MachineConfig { vcpu_count: spec.vcpus, mem_size_mib: spec.memory_mb, smt: false })
        .await?;
    if let Some(rootfs) = &spec.rootfs {
        // Firecracker adds `root=/dev/vda ro` (or `rw`) to the kernel command line to match.
        let drive = Drive {
            drive_id: "rootfs".into(),
            path_on_host: rootfs.clone(),
            is_root_device: true,
            is_read_only: !spec.root_writable,
        };
        api.put("/drives/rootfs", &drive).await?;
    }
    if let Some(workspace) = &spec.workspace {
        let drive = Drive {
            drive_id: "workspace".into(),
            path_on_host: workspace.clone(),
            is_root_device: false,
            is_read_only: false,
        };
        api.put("/drives/workspace", &drive).await?;
    }
    api.put("/vsock", &Vsock { guest_cid: GUEST_CID, uds_path: dir.vsock_socket() }).await?;
    api.put("/actions", &Action { action_type: "InstanceStart" }).await.map_err(|err| {
        // Firecracker stays up after a refused start; its log says more than the answer.
        match err {
            crate::api::ApiError::Refused { fault, .. } => FirecrackerError::Invalid(format!(
                "firecracker could not start the VM: {fault}; kernel {}",
                spec.kernel.display()
            )),
            other => other.into(),
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_that_are_not_elf64_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bz = dir.path().join("bzImage");
        std::fs::write(&bz, b"MZ\x00\x00 not an elf at all").expect("write");
        let err = check_kernel(&bz).expect_err("no ELF");
        assert!(err.to_string().contains("not an uncompressed 64-bit ELF"), "{err}");
        let short = dir.path().join("short");
        std::fs::write(&short, b"\x7fE").expect("write");
        assert!(check_kernel(&short).is_err());
        let elf32 = dir.path().join("elf32");
        std::fs::write(&elf32, b"\x7fELF\x01rest").expect("write");
        assert!(check_kernel(&elf32).is_err());
        let err = check_kernel(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(err, FirecrackerError::Invalid(_)) && err.to_string().contains("missing"), "{err}");
        let elf64 = dir.path().join("vmlinux");
        std::fs::write(&elf64, b"\x7fELF\x02rest").expect("write");
        check_kernel(&elf64).expect("an ELF64 header passes");
    }
}
