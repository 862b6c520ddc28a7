//! Real volumes: sparse ext4 images on real loop devices, written by an unprivileged uid the
//! way a linux sandbox writes (host uid 100000). Needs root and loop devices; with `CI=true` a
//! missing one fails the test instead of skipping it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cloudterm_volumes::{VolumeError, Volumes};

const MIB: u64 = 1 << 20;
/// The host uid a linux sandbox's root runs as.
const SANDBOX_UID: u32 = 100_000;

/// Volumes that enforce, or `None` (a skip) where this host cannot.
fn enforcing() -> Option<Volumes> {
    match Volumes::probe() {
        Ok(()) => Some(Volumes::enforcing()),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true and volumes cannot run: {why}"),
        Err(why) => {
            eprintln!("skipping: {why}");
            None
        }
    }
}

/// A data dir others can traverse (the writer below is not root).
fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

/// Writes `mib` MiB of zeros to `path` as the sandbox uid; whether it worked and stderr.
fn write_as_sandbox(path: &Path, mib: u64) -> (bool, String) {
    let output = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fsync")
        .uid(SANDBOX_UID)
        .gid(SANDBOX_UID)
        .output()
        .expect("dd");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn give_to_sandbox(dir: &Path) {
    std::os::unix::fs::chown(dir, Some(SANDBOX_UID), Some(SANDBOX_UID)).expect("chown");
}

fn loop_devices_of(image: &Path) -> String {
    let output = Command::new("losetup").arg("-j").arg(image).output().expect("losetup");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Leaves no mount behind even when an assertion fails half-way.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for entry in Volumes::mounts_under(&self.0).iter().rev() {
            let _ = Command::new("umount").arg("--lazy").arg(&entry.mount_point).status();
        }
    }
}

#[tokio::test]
async fn a_write_past_the_limit_fails_and_root_keeps_its_reserve() {
    let Some(volumes) = enforcing() else { return };
    let data = data_dir();
    let _cleanup = Cleanup(data.path().to_path_buf());
    let root = data.path().join("alice").join("ws_1");
    std::fs::create_dir_all(root.parent().expect("parent")).expect("owner dir");
    std::fs::set_permissions(root.parent().expect("parent"), std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .expect("chmod");

    let files = volumes.prepare(&root, Some(16 * MIB)).await.expect("prepare");
    assert_eq!(files, root.join("files"));
    assert_eq!(volumes.files_dir(&root), files);
    give_to_sandbox(&files);
    std::fs::write(files.join("kept.txt"), "written before").expect("small file");

    let (ok, stderr) = write_as_sandbox(&files.join("big"), 40);
    assert!(!ok, "40 MiB into a 16 MiB workspace must fail");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let big = std::fs::metadata(files.join("big")).expect("big").len();
    assert!(big > 14 * MIB && big <= 16 * MIB, "the writer got the limit, not more: {big}");
    assert_eq!(std::fs::read_to_string(files.join("kept.txt")).expect("kept"), "written before");

    let usage = volumes.usage(&root).await.expect("usage");
    assert_eq!(usage.enforced_limit_bytes, Some(16 * MIB));
    assert!(usage.used_bytes > 15 * MIB && usage.used_bytes <= 16 * MIB + MIB, "{usage:?}");

    // Root (the server unpacking a restore) may go past the limit into the reserve.
    std::fs::write(root.join("restore-scratch"), vec![0u8; 8 * MIB as usize]).expect("root uses the reserve");
    std::fs::remove_file(root.join("restore-scratch")).expect("rm");

    // Shrinking below what is used is refused; raising within the file system works mounted.
    let refused = volumes.set_limit(&root, 4 * MIB).await;
    assert!(matches!(refused, Err(VolumeError::BelowUse { .. })), "{refused:?}");
    volumes.set_limit(&root, 24 * MIB).await.expect("raise");
    assert_eq!(volumes.usage(&root).await.expect("usage").enforced_limit_bytes, Some(24 * MIB));
    let (ok, stderr) = write_as_sandbox(&files.join("six"), 6);
    assert!(ok, "room after raising: {stderr}");
    let (ok, _) = write_as_sandbox(&files.join("more"), 8);
    assert!(!ok, "and the new limit holds");
    std::fs::remove_file(files.join("more")).expect("rm");

    // Far past what the file system holds: grown while mounted where the kernel lets root
    // (CAP_SYS_RESOURCE), else at the next mount, before anything is mounted.
    volumes.set_limit(&root, 200 * MIB).await.expect("grow");
    let enforced = volumes.usage(&root).await.expect("usage").enforced_limit_bytes.expect("limit");
    if enforced < 200 * MIB {
        assert!(enforced > 24 * MIB, "raised as far as it holds: {enforced}");
        assert!(Command::new("umount").arg(&root).status().expect("umount").success());
        assert_eq!(volumes.prepare(&root, Some(200 * MIB)).await.expect("remount"), files);
    }
    assert_eq!(volumes.usage(&root).await.expect("usage").enforced_limit_bytes, Some(200 * MIB));
    let (ok, stderr) = write_as_sandbox(&files.join("more"), 100);
    assert!(ok, "room after growing: {stderr}");

    let image = Volumes::image_path(&root);
    assert!(!loop_devices_of(&image).is_empty(), "mounted through a loop device");
    volumes.remove(&root).await.expect("remove");
    assert!(!root.exists() && !image.exists());
    assert!(Volumes::mounts_under(data.path()).is_empty(), "no mount left");
    assert_eq!(loop_devices_of(&image), "", "no loop device left");
}

#[tokio::test]
async fn a_volume_is_mounted_again_after_a_reboot_with_its_files() {
    let Some(volumes) = enforcing() else { return };
    let data = data_dir();
    let _cleanup = Cleanup(data.path().to_path_buf());
    let root = data.path().join("bob").join("ws_2");
    let files = volumes.prepare(&root, Some(8 * MIB)).await.expect("prepare");
    std::fs::write(files.join("a.txt"), "persisted").expect("write");
    // Made, then half-made by a crash, and one damaged (not a file system at all).
    std::fs::write(data.path().join("bob").join("ws_3.img.partial"), "").expect("partial");
    std::fs::write(data.path().join("bob").join("ws_4.img"), vec![0u8; 1 << 20]).expect("damaged");

    // A reboot: nothing is mounted any more.
    assert!(Command::new("umount").arg(&root).status().expect("umount").success());
    assert!(!files.join("a.txt").exists());

    let report = Volumes::enforcing().recover(data.path()).await.expect("recover");
    assert_eq!(report.mounted, vec![root.clone()]);
    assert_eq!(report.removed_partial.len(), 1);
    let failed: Vec<&PathBuf> = report.failed.iter().map(|(root, _)| root).collect();
    assert_eq!(failed, vec![&data.path().join("bob").join("ws_4")], "the damaged one fails alone");
    assert_eq!(std::fs::read_to_string(files.join("a.txt")).expect("read"), "persisted");
    // Mounting again keeps the applied limit.
    assert_eq!(volumes.usage(&root).await.expect("usage").enforced_limit_bytes, Some(8 * MIB));
    volumes.remove(&root).await.expect("remove");
    assert!(Volumes::mounts_under(data.path()).is_empty());
}

#[tokio::test]
async fn plain_directories_are_measured_not_limited() {
    let data = data_dir();
    let volumes = Volumes::reporting("a test");
    let root = data.path().join("carol").join("ws_4");
    let files = volumes.prepare(&root, Some(MIB)).await.expect("prepare");
    assert_eq!(files, root, "a plain directory holds the files itself");
    std::fs::write(files.join("two-mib"), vec![1u8; 2 * MIB as usize]).expect("no limit to stop it");
    let usage = volumes.usage(&root).await.expect("usage");
    assert!(usage.used_bytes >= 2 * MIB, "{usage:?}");
    assert_eq!(usage.enforced_limit_bytes, None);

    // Files from before enforcement keep their plain directory under an enforcing server.
    if let Some(enforcing) = enforcing() {
        assert_eq!(enforcing.prepare(&root, Some(MIB)).await.expect("prepare"), root);
        assert!(Volumes::mounts_under(data.path()).is_empty());
    }
}
