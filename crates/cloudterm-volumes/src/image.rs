//! The ext4 image behind an enforced volume: how big the sparse file is for a limit, how it is
//! made, and how the limit is applied to a mounted one.
//!
//! The limit is not the file system's size. The file system is a little over twice the limit,
//! and all but `limit` of its free space is reserved for root (ext4's reserved blocks, `tune2fs
//! -r`). A sandbox writes as an unprivileged host uid without `CAP_SYS_RESOURCE` in the
//! initial user namespace, so it gets `ENOSPC` once the workspace holds `limit` bytes; the
//! server (root) may use the reserve, which is what a snapshot restore needs: the restored tree
//! is unpacked beside the old one on the same file system before they are swapped, so for a
//! moment both exist. Changing the limit is changing the reserve (`tune2fs -r`), and growing
//! past what the file system can hold is `resize2fs` on the mounted file system first. The file
//! is sparse: it takes the space of what is written, not of its size.

use std::path::Path;

use crate::command::run;
use crate::error::VolumeError;
use crate::mounts::mount_at;

/// Block size of every volume (the default for file systems of this size; fixed so the
/// reserve arithmetic is the same on every host).
pub const BLOCK_BYTES: u64 = 4096;

/// The first guess of an image's size for `limit_bytes`: twice the limit (old and new tree
/// during a restore) plus ext4's own overhead and the kernel's reserve, guessed; [`create`]
/// corrects it from what `mkfs.ext4` reports.
pub fn first_guess_bytes(limit_bytes: u64) -> u64 {
    let twice = limit_bytes.saturating_mul(2);
    let wanted = twice.saturating_add(twice / 12).saturating_add(8 << 20);
    wanted.div_ceil(BLOCK_BYTES).saturating_mul(BLOCK_BYTES)
}

/// The clusters ext4 holds back for delayed allocation (`ext4_calculate_resv_clusters`:
/// 2% of the blocks, at most 4096), which no one may write into.
pub fn kernel_reserve_blocks(total_blocks: u64) -> u64 {
    (total_blocks / 50).min(4096)
}

/// Root's reserve that leaves an unprivileged writer exactly `limit_bytes` of a file system
/// with `usable_blocks` (`statvfs`'s `f_blocks`: without ext4's metadata) and `kernel_reserve`
/// blocks held back by the kernel.
pub fn root_reserve_blocks(usable_blocks: u64, kernel_reserve: u64, limit_bytes: u64) -> u64 {
    usable_blocks.saturating_sub(kernel_reserve).saturating_sub(limit_bytes.div_ceil(BLOCK_BYTES))
}

/// Whether a file system of `total` blocks, `overhead` of them ext4's metadata, suits
/// `limit_bytes`: root can hold twice the limit (a restore's two trees), and the reserve that
/// leaves others the limit is at most half the blocks (the most `tune2fs -r` sets).
pub fn suits(total: u64, overhead: u64, limit_bytes: u64) -> bool {
    let usable = total.saturating_sub(overhead);
    let kernel = kernel_reserve_blocks(total);
    let limit = limit_bytes.div_ceil(BLOCK_BYTES);
    usable.saturating_sub(kernel) >= limit.saturating_mul(2)
        && root_reserve_blocks(usable, kernel, limit_bytes) <= total / 2
}

/// The size that suits `limit_bytes` given the `overhead` blocks a file system of about that
/// size has: twice the limit, the overhead and the kernel's reserve, plus a quarter of those
/// two as margin (the window [`suits`] accepts is as wide as they are).
fn corrected_bytes(limit_bytes: u64, overhead: u64) -> u64 {
    let twice = limit_bytes.div_ceil(BLOCK_BYTES).saturating_mul(2);
    let kernel = kernel_reserve_blocks(twice.saturating_add(overhead));
    let extra = overhead.saturating_add(kernel);
    twice.saturating_add(extra).saturating_add(extra / 4).saturating_mul(BLOCK_BYTES)
}

/// Makes a sparse image file with an empty ext4 in it, sized so that [`suits`] holds for
/// `limit_bytes`: `mkfs.ext4` on a first guess, and again on a corrected size when its
/// overhead (journal, inode tables) was not the guessed one. Inode tables and the journal are
/// left unzeroed (`lazy_*_init`; the file is new, so they read as zeros anyway), and the
/// volume is mounted with `noinit_itable` so the kernel does not zero them later either: the
/// file stays as small as what is written.
pub async fn create(image: &Path, limit_bytes: u64) -> Result<(), VolumeError> {
    let mut size = first_guess_bytes(limit_bytes);
    for _ in 0..3 {
        make_filesystem(image, size).await?;
        let Some((total, overhead)) = counts(image).await? else { return Ok(()) };
        if suits(total, overhead, limit_bytes) {
            return Ok(());
        }
        size = corrected_bytes(limit_bytes, overhead);
    }
    Ok(())
}

/// A fresh file of `size` bytes with `mkfs.ext4` run on it.
async fn make_filesystem(image: &Path, size: u64) -> Result<(), VolumeError> {
    let _ = std::fs::remove_file(image);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(|err| VolumeError::io(format!("cannot create {}", image.display()), err))?;
    file.set_len(size).map_err(|err| VolumeError::io(format!("cannot size {}", image.display()), err))?;
    drop(file);
    let block = BLOCK_BYTES.to_string();
    let args: [&std::ffi::OsStr; 12] = [
        "-q".as_ref(),
        "-F".as_ref(),
        "-b".as_ref(),
        block.as_ref(),
        "-m".as_ref(),
        "0".as_ref(),
        "-L".as_ref(),
        "cloudterm-ws".as_ref(),
        "-E".as_ref(),
        "nodiscard,lazy_itable_init=1,lazy_journal_init=1".as_ref(),
        "--".as_ref(),
        image.as_os_str(),
    ];
    run("mkfs.ext4", args).await.map(|_| ())
}

/// `Block count` and `Overhead clusters` of an unmounted image (`dumpe2fs -h`); `None` when
/// this e2fsprogs does not report the overhead (before 1.46.5).
async fn counts(image: &Path) -> Result<Option<(u64, u64)>, VolumeError> {
    let args: [&std::ffi::OsStr; 2] = ["-h".as_ref(), image.as_os_str()];
    let text = run("dumpe2fs", args).await?;
    let field = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name)?.trim().strip_prefix(':')?.trim().parse::<u64>().ok())
    };
    Ok(field("Block count").zip(field("Overhead clusters")))
}

/// Mounts `image` at `root` through a loop device (`mount -o loop` finds a free one and sets
/// it to detach by itself when the file system is unmounted).
pub async fn mount(image: &Path, root: &Path) -> Result<(), VolumeError> {
    let args: [&std::ffi::OsStr; 5] =
        ["-o".as_ref(), "loop,noinit_itable,nosuid,nodev".as_ref(), "--".as_ref(), image.as_os_str(), root.as_os_str()];
    run("mount", args).await.map(|_| ())
}

/// Unmounts `root`; when something still holds it (a sandbox that was not stopped), detaches
/// it instead, and the loop device goes with the last user.
pub async fn unmount(root: &Path) -> Result<(), VolumeError> {
    if run("umount", [root.as_os_str()]).await.is_ok() {
        return Ok(());
    }
    let args: [&std::ffi::OsStr; 2] = ["--lazy".as_ref(), root.as_os_str()];
    run("umount", args).await.map(|_| ())
}

/// The loop device (`/dev/loopN`) the volume at `root` is mounted from.
pub fn device_of(root: &Path) -> Result<String, VolumeError> {
    match mount_at(root) {
        Some(entry) if entry.fs_type == "ext4" && entry.source.starts_with("/dev/loop") => Ok(entry.source),
        Some(entry) => Err(VolumeError::Unexpected {
            path: root.to_path_buf(),
            why: format!("mounted from {} ({}), not a loop device", entry.source, entry.fs_type),
        }),
        None => Err(VolumeError::Unexpected { path: root.to_path_buf(), why: "not mounted".into() }),
    }
}

/// Block counts of a mounted volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// Usable blocks (without ext4's metadata).
    pub usable: u64,
    /// Free blocks, the reserves included.
    pub free: u64,
}

impl Blocks {
    /// Bytes in use (files, directories, `lost+found`).
    pub fn used_bytes(&self) -> u64 {
        self.usable.saturating_sub(self.free).saturating_mul(BLOCK_BYTES)
    }
}

/// `statvfs` of a mounted volume.
pub fn blocks(root: &Path) -> Result<Blocks, VolumeError> {
    let stat = rustix::fs::statvfs(root)
        .map_err(|err| VolumeError::io(format!("cannot statvfs {}", root.display()), err.into()))?;
    // f_frsize is the block size ext4 reports; scale in case a future mkfs changes it.
    let scale = |count: u64| count.saturating_mul(stat.f_frsize) / BLOCK_BYTES;
    Ok(Blocks { usable: scale(stat.f_blocks), free: scale(stat.f_bfree) })
}

/// The blocks the kernel holds back on `device`, from sysfs, or computed as the kernel does at
/// mount time when sysfs does not say.
fn kernel_reserve(device: &str, total_blocks: u64) -> u64 {
    let name = device.rsplit('/').next().unwrap_or(device);
    std::fs::read_to_string(format!("/sys/fs/ext4/{name}/reserved_clusters"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_else(|| kernel_reserve_blocks(total_blocks))
}

/// Applies `limit_bytes` to the volume mounted at `root` from `image` and returns the limit
/// now enforced: grows the file system first when it cannot hold twice the limit, then sets
/// root's reserve so an unprivileged writer has the limit. `check_use` refuses a limit below
/// what is already in use (a new limit on a volume with files).
///
/// Growing a mounted ext4 (`resize2fs` → `EXT4_IOC_RESIZE_FS`) needs `CAP_SYS_RESOURCE`,
/// which a root without it (some containers, these build machines) lacks: then the limit is
/// raised as far as the file system holds (up to about twice the old limit, at the cost of
/// the restore headroom), the returned limit says how far, and [`grow_offline`] does the rest
/// the next time the volume is mounted.
pub async fn apply_limit(image: &Path, root: &Path, limit_bytes: u64, check_use: bool) -> Result<u64, VolumeError> {
    let device = device_of(root)?;
    let mut now = blocks(root)?;
    if check_use && now.used_bytes() > limit_bytes {
        return Err(VolumeError::BelowUse { used_bytes: now.used_bytes(), limit_bytes });
    }
    let (mut total, overhead) = fs_counts(Path::new(&device), now.usable).await?;
    if !suits(total, overhead, limit_bytes) {
        // Growing adds inode tables (1.6% of what is added) to the overhead.
        let wanted = corrected_bytes(limit_bytes, overhead.saturating_add(limit_bytes / BLOCK_BYTES / 32));
        if wanted > total.saturating_mul(BLOCK_BYTES) {
            match grow_online(image, &device, wanted).await {
                Ok(()) => {
                    now = blocks(root)?;
                    total = fs_counts(Path::new(&device), now.usable).await?.0;
                    tracing::info!(root = %root.display(), limit_bytes, image_bytes = wanted, "workspace volume grown");
                }
                Err(err) => tracing::warn!(
                    root = %root.display(), limit_bytes, error = %err,
                    "cannot grow a mounted workspace volume; raising its limit as far as it holds until it is next mounted"
                ),
            }
        }
    }
    let kernel = kernel_reserve(&device, total);
    // tune2fs sets at most half the blocks; past that the writer gets a little more.
    let reserve = root_reserve_blocks(now.usable, kernel, limit_bytes).min(total / 2);
    let args = ["-r".to_string(), reserve.to_string(), device.clone()];
    run("tune2fs", args).await?;
    let capacity = now.usable.saturating_sub(kernel).saturating_sub(reserve).saturating_mul(BLOCK_BYTES);
    Ok(capacity.min(limit_bytes))
}

/// Grows an unmounted image so it suits `limit_bytes` (`resize2fs` on the file, which needs no
/// capability), before it is mounted. Failures are the caller's to log: the volume then
/// mounts at its old size.
pub async fn grow_offline(image: &Path, limit_bytes: u64) -> Result<bool, VolumeError> {
    let Some((total, overhead)) = counts(image).await? else { return Ok(false) };
    let wanted = corrected_bytes(limit_bytes, overhead.saturating_add(limit_bytes / BLOCK_BYTES / 32));
    if suits(total, overhead, limit_bytes) || wanted <= total.saturating_mul(BLOCK_BYTES) {
        return Ok(false);
    }
    set_file_len(image, wanted)?;
    let args: [&std::ffi::OsStr; 2] = ["-f".as_ref(), image.as_os_str()];
    run("resize2fs", args).await?;
    tracing::info!(image = %image.display(), limit_bytes, image_bytes = wanted, "workspace volume grown before mounting");
    Ok(true)
}

/// Grows the file, tells the loop device, and has ext4 grow into it while mounted.
async fn grow_online(image: &Path, device: &str, wanted: u64) -> Result<(), VolumeError> {
    set_file_len(image, wanted)?;
    let args: [&std::ffi::OsStr; 2] = ["--set-capacity".as_ref(), device.as_ref()];
    run("losetup", args).await?;
    run("resize2fs", [device]).await.map(|_| ())
}

fn set_file_len(image: &Path, len: u64) -> Result<(), VolumeError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(|err| VolumeError::io(format!("cannot open {}", image.display()), err))?;
    file.set_len(len).map_err(|err| VolumeError::io(format!("cannot grow {}", image.display()), err))
}

/// Block count and overhead of a (mounted) file system, from its superblock; when this
/// e2fsprogs does not report the overhead, from `usable` (`statvfs`).
async fn fs_counts(device: &Path, usable: u64) -> Result<(u64, u64), VolumeError> {
    match counts(device).await? {
        Some(counts) => Ok(counts),
        None => Err(VolumeError::Unexpected {
            path: device.to_path_buf(),
            why: format!("dumpe2fs reports no overhead (usable blocks {usable}); e2fsprogs 1.46.5 or later is needed"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrected_sizes_suit_their_limit() {
        let mib = 1u64 << 20;
        assert_eq!(first_guess_bytes(1) % BLOCK_BYTES, 0);
        // Overheads mkfs.ext4 1.47 reported for file systems of about these sizes.
        for (limit, overhead) in [(8 * mib, 1414), (16 * mib, 2059), (64 * mib, 6378), (1024 * mib, 26_417)] {
            let total = corrected_bytes(limit, overhead) / BLOCK_BYTES;
            assert!(suits(total, overhead, limit), "{limit}: {total} blocks");
        }
        assert!(!suits(33_024, 2059, 16 * mib), "a reserve over half the blocks does not suit");
        assert!(!suits(8192, 1414, 16 * mib), "too small for two trees");
    }

    #[test]
    fn the_reserve_leaves_exactly_the_limit() {
        assert_eq!(kernel_reserve_blocks(51_200), 1024);
        assert_eq!(kernel_reserve_blocks(10_000_000), 4096);
        // 43848 usable blocks, 1024 held by the kernel, a 64 MiB limit (16384 blocks).
        assert_eq!(root_reserve_blocks(43_848, 1024, 64 << 20), 43_848 - 1024 - 16_384);
        assert_eq!(root_reserve_blocks(100, 10, 1 << 30), 0, "never negative");
    }
}
