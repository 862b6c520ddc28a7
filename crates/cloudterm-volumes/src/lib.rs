//! cloudterm-volumes: where a workspace's files live on the host, and how much of it they may
//! take. With enforcement (root, the linux runtime), each workspace is its own ext4 file
//! system in a sparse image file, loop-mounted at the workspace's place, its files in the
//! `files/` directory of that file system; a write past the limit fails with `ENOSPC` inside
//! the sandbox. Without (the process runtime, no root, no loop devices), a workspace is a
//! plain directory and its usage is only measured. See `README.md` and `image.rs` for why the
//! file system is twice the limit.

mod command;
mod error;
pub mod image;
pub mod mounts;
mod usage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use error::VolumeError;
pub use mounts::MountEntry;

/// The directory of a volume that holds the workspace's files (what sandboxes see at
/// `/workspace`); the volume's root itself also holds the limit file and `lost+found`, and
/// restores make their scratch directories there, on the same file system as the files.
pub const FILES_DIR: &str = "files";

/// The file in a volume's root that records the limit applied to it, in bytes.
const LIMIT_FILE: &str = ".cloudterm-limit";

/// How much a workspace uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes its files take on disk.
    pub used_bytes: u64,
    /// The limit the file system enforces; `None` for a plain directory.
    pub enforced_limit_bytes: Option<u64>,
}

/// What [`Volumes::recover`] did at start-up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VolumeRecovery {
    /// Volume roots mounted again (they were not mounted: the host rebooted).
    pub mounted: Vec<PathBuf>,
    /// Image files a crash left half-made, deleted.
    pub removed_partial: Vec<PathBuf>,
    /// Volumes that would not mount, and why (also logged).
    pub failed: Vec<(PathBuf, String)>,
}

/// The workspaces' storage on this host.
#[derive(Debug)]
pub struct Volumes {
    /// `None`: enforcing; `Some(why)`: only measuring, and why.
    reporting_only: Option<String>,
    /// One lock per volume root: two requests must not make or mount the same volume at once.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl Volumes {
    /// Volumes that enforce their limits (check with [`Volumes::probe`] first).
    pub fn enforcing() -> Self {
        Volumes { reporting_only: None, locks: Mutex::default() }
    }

    /// Plain directories whose usage is only measured; `why` is said in logs and in `/me`.
    pub fn reporting(why: impl Into<String>) -> Self {
        Volumes { reporting_only: Some(why.into()), locks: Mutex::default() }
    }

    /// Whether this host can enforce limits: root, loop devices, and the tools.
    pub fn probe() -> Result<(), String> {
        if !rustix::process::geteuid().is_root() {
            return Err("the server is not root, so it cannot mount workspace file systems".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("there is no /dev/loop-control (loop devices)".into());
        }
        let tools = ["mkfs.ext4", "tune2fs", "resize2fs", "mount", "umount", "losetup"];
        let missing: Vec<&str> = tools.into_iter().filter(|tool| command::locate(tool).is_none()).collect();
        if !missing.is_empty() {
            return Err(format!("missing {} (install e2fsprogs and util-linux)", missing.join(", ")));
        }
        Ok(())
    }

    /// Whether writes past a limit fail.
    pub fn enforced(&self) -> bool {
        self.reporting_only.is_none()
    }

    /// Why limits are only reported, when they are.
    pub fn reporting_reason(&self) -> Option<&str> {
        self.reporting_only.as_deref()
    }

    /// The image file of the volume rooted at `root` (`<owner dir>/<workspace>.img`).
    pub fn image_path(root: &Path) -> PathBuf {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        root.with_file_name(format!("{name}.img"))
    }

    /// Where the workspace rooted at `root` keeps its files: `root/files` for a volume,
    /// `root` itself for a plain directory.
    pub fn files_dir(&self, root: &Path) -> PathBuf {
        if Self::image_path(root).exists() {
            root.join(FILES_DIR)
        } else {
            root.to_path_buf()
        }
    }

    /// Makes the workspace's storage ready and returns its files directory: with enforcement
    /// and a limit, creates the volume on first use, mounts it when it is not (after a
    /// reboot), and applies `limit_bytes` when it changed (a limit below what the workspace
    /// holds is not applied: the old one stays, and the log says so). Otherwise, a directory.
    /// A directory that already holds files from before enforcement stays a plain directory.
    pub async fn prepare(&self, root: &Path, limit_bytes: Option<u64>) -> Result<PathBuf, VolumeError> {
        let lock = self.lock_for(root);
        let _held = lock.lock().await;
        let image = Self::image_path(root);
        let limit = limit_bytes.filter(|limit| *limit > 0);
        if !image.exists() {
            let legacy = std::fs::read_dir(root).map(|mut entries| entries.next().is_some()).unwrap_or(false);
            match limit {
                Some(limit) if self.enforced() && !legacy => create_volume(root, &image, limit).await?,
                Some(_) if self.enforced() => {
                    tracing::warn!(root = %root.display(), "workspace holds files from before storage limits were enforced; its limit is only reported");
                    return Ok(root.to_path_buf());
                }
                _ => {
                    ensure_dir(root)?;
                    return Ok(root.to_path_buf());
                }
            }
        }
        if !self.enforced() {
            return Err(VolumeError::Unexpected {
                path: root.to_path_buf(),
                why: format!("its files are in {}, which this server cannot mount", image.display()),
            });
        }
        if !is_volume_mounted(root) {
            if let Some(limit) = limit {
                if let Err(err) = image::grow_offline(&image, limit).await {
                    tracing::warn!(image = %image.display(), error = %err, "cannot grow a workspace volume; mounting it as it is");
                }
            }
            ensure_dir(root)?;
            image::mount(&image, root).await?;
        }
        let files = root.join(FILES_DIR);
        ensure_dir(&files)?;
        if let Some(limit) = limit {
            let applied = read_limit(root);
            if applied != Some(limit) {
                match image::apply_limit(&image, root, limit, applied.is_some()).await {
                    Ok(enforced) => write_limit(root, enforced)?,
                    Err(VolumeError::BelowUse { used_bytes, limit_bytes }) => tracing::warn!(
                        root = %root.display(), used_bytes, limit_bytes, kept = ?applied,
                        "the workspace holds more than its new storage limit; keeping the old limit"
                    ),
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(files)
    }

    /// Sets a new limit on a mounted volume, refusing one below what it holds. A plain
    /// directory has nothing to set. Where a mounted file system cannot grow (no
    /// `CAP_SYS_RESOURCE`), the limit is raised as far as it holds and the rest is applied at
    /// the next mount ([`Volumes::usage`] reports what is enforced).
    pub async fn set_limit(&self, root: &Path, limit_bytes: u64) -> Result<(), VolumeError> {
        let lock = self.lock_for(root);
        let _held = lock.lock().await;
        if !is_volume_mounted(root) {
            return Ok(());
        }
        let enforced = image::apply_limit(&Self::image_path(root), root, limit_bytes, true).await?;
        write_limit(root, enforced)
    }

    /// How much the workspace rooted at `root` uses: from the file system's counters for a
    /// mounted volume (one `statvfs`), by walking the tree for a plain directory.
    pub async fn usage(&self, root: &Path) -> Result<Usage, VolumeError> {
        if is_volume_mounted(root) {
            let blocks = image::blocks(root)?;
            return Ok(Usage { used_bytes: blocks.used_bytes(), enforced_limit_bytes: read_limit(root) });
        }
        let dir = self.files_dir(root);
        let used = tokio::task::spawn_blocking(move || usage::allocated_bytes(&dir)).await.unwrap_or(0);
        Ok(Usage { used_bytes: used, enforced_limit_bytes: None })
    }

    /// Deletes the workspace's storage: unmounts its volume, deletes the image, removes the
    /// directory. Nothing there is an error.
    pub async fn remove(&self, root: &Path) -> Result<(), VolumeError> {
        let lock = self.lock_for(root);
        let _held = lock.lock().await;
        if is_volume_mounted(root) {
            image::unmount(root).await?;
        }
        let image = Self::image_path(root);
        for file in [image.clone(), partial_path(&image)] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(VolumeError::io(format!("cannot delete {}", file.display()), err)),
            }
        }
        let dir = root.to_path_buf();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(err)) => return Err(VolumeError::io(format!("cannot remove {}", root.display()), err)),
            Err(err) => return Err(VolumeError::io("removing a workspace", std::io::Error::other(err.to_string()))),
        }
        if let Ok(mut locks) = self.locks.lock() {
            locks.remove(root);
        }
        Ok(())
    }

    /// At start-up: mounts every volume under `workspaces` (`<owner>/<workspace>.img`) that is
    /// not mounted (the host rebooted; a restart of the server alone leaves them mounted), and
    /// deletes image files a crash left half-made.
    pub async fn recover(&self, workspaces: &Path) -> Result<VolumeRecovery, VolumeError> {
        let mut report = VolumeRecovery::default();
        for owner in std::fs::read_dir(workspaces).into_iter().flatten().flatten() {
            for entry in std::fs::read_dir(owner.path()).into_iter().flatten().flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".img.partial") {
                    let _ = std::fs::remove_file(&path);
                    report.removed_partial.push(path);
                    continue;
                }
                let Some(workspace) = name.strip_suffix(".img") else { continue };
                let root = owner.path().join(workspace);
                if !self.enforced() {
                    tracing::warn!(image = %path.display(), reason = self.reporting_reason().unwrap_or(""), "a workspace volume cannot be mounted by this server");
                    continue;
                }
                let lock = self.lock_for(&root);
                let _held = lock.lock().await;
                if !is_volume_mounted(&root) {
                    // One volume that does not mount (a damaged image) must not keep the
                    // server from starting: its workspace fails on use, and the log says why.
                    match ensure_dir(&root) {
                        Ok(()) => match image::mount(&path, &root).await {
                            Ok(()) => report.mounted.push(root),
                            Err(err) => report.failed.push((root, err.to_string())),
                        },
                        Err(err) => report.failed.push((root, err.to_string())),
                    }
                }
            }
        }
        Ok(report)
    }

    /// Unmounts every volume under `workspaces` (their images stay, and the next
    /// [`recover`](Self::recover) mounts them again). Not part of a server's shutdown, where
    /// volumes stay mounted for the sandboxes that outlive it: for tests that delete their
    /// data directory, and for an operator taking a host down. Returns how many it unmounted.
    pub async fn unmount_all(&self, workspaces: &Path) -> usize {
        let mut unmounted = 0;
        for entry in Self::mounts_under(workspaces).iter().rev() {
            if entry.fs_type != "ext4" || !entry.source.starts_with("/dev/loop") {
                continue;
            }
            match image::unmount(&entry.mount_point).await {
                Ok(()) => unmounted += 1,
                Err(err) => {
                    tracing::warn!(root = %entry.mount_point.display(), error = %err, "cannot unmount a workspace volume")
                }
            }
        }
        unmounted
    }

    /// Every mount at or below `dir` (tests assert that none is left behind).
    pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        mounts::mounts_under(&dir)
    }

    fn lock_for(&self, root: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(locks.entry(root.to_path_buf()).or_default())
    }
}

/// Makes the image (under a temporary name, renamed once complete, so a crash never leaves a
/// half-made image under the real name), mounts it at `root`, and applies the first limit.
async fn create_volume(root: &Path, image: &Path, limit: u64) -> Result<(), VolumeError> {
    ensure_dir(root)?;
    let partial = partial_path(image);
    let _ = std::fs::remove_file(&partial);
    image::create(&partial, limit).await.inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    std::fs::rename(&partial, image)
        .map_err(|err| VolumeError::io(format!("cannot rename {}", partial.display()), err))?;
    if let Some(parent) = image.parent() {
        // The rename is durable before anything is written into the volume.
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    image::mount(image, root).await?;
    let enforced = image::apply_limit(image, root, limit, false).await?;
    write_limit(root, enforced)?;
    tracing::info!(root = %root.display(), limit_bytes = limit, "workspace volume created");
    Ok(())
}

fn ensure_dir(dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(|err| VolumeError::io(format!("cannot create {}", dir.display()), err))
}

fn partial_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Whether `root` is a mounted volume (an ext4 from a loop device is mounted exactly there).
fn is_volume_mounted(root: &Path) -> bool {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    mounts::mount_at(&root).is_some_and(|entry| entry.fs_type == "ext4" && entry.source.starts_with("/dev/loop"))
}

fn read_limit(root: &Path) -> Option<u64> {
    std::fs::read_to_string(root.join(LIMIT_FILE)).ok().and_then(|text| text.trim().parse().ok())
}

/// Records the applied limit inside the volume (it travels with the image), durably.
fn write_limit(root: &Path, limit: u64) -> Result<(), VolumeError> {
    let path = root.join(LIMIT_FILE);
    let temp = root.join(format!("{LIMIT_FILE}.new"));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(limit.to_string().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    };
    write().map_err(|err| VolumeError::io(format!("cannot record the limit in {}", root.display()), err))
}
