//! The workspace disk back to the host: while a VM runs, its `workspace.ext4` is the source of
//! truth for `/workspace`; [`sync_back`] reads it (without mounting: `debugfs rdump`) into a
//! fresh directory beside the workspace directory and swaps the two with one
//! `renameat2(RENAME_EXCHANGE)`, as a snapshot restore does, so a reader on the host sees the
//! old tree or the new one, never a mix. Any failure before the swap leaves the workspace
//! directory untouched.
//!
//! A guest's ext4 keeps recent metadata in its journal until it checkpoints, which `debugfs`
//! does not read: an image that needs recovery is replayed first (`e2fsck -E journal_only`),
//! in place when no guest will use the image again, else on a sparse copy, so a paused guest
//! finds its disk exactly as it left it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::FirecrackerError;

/// Name prefix of the directory a disk is read into: the prefix of the server's restore
/// scratch directories, which its start-up sweep removes when a crash leaves one behind.
pub const SCRATCH_PREFIX: &str = ".restore-tmp_vm_";

/// ext4's superblock: at byte 1024; its magic at 0x38, incompatible features at 0x60.
const SUPERBLOCK: usize = 1024;
const MAGIC_OFFSET: usize = 0x38;
const INCOMPAT_OFFSET: usize = 0x60;
const EXT4_MAGIC: u16 = 0xEF53;
/// `INCOMPAT_RECOVER`: the journal holds transactions not yet written to their place.
const INCOMPAT_RECOVER: u32 = 0x4;

/// Whether the guest may use the image again after it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageUse {
    /// The VM is gone: its journal may be replayed into the image itself.
    Finished,
    /// The VM is paused and resumes later: the image must not change under it.
    InUse,
}

fn disk_error(image: &Path, why: impl std::fmt::Display) -> FirecrackerError {
    FirecrackerError::WorkspaceDisk(format!("{}: {why}", image.display()))
}

/// Whether `image` is ext4 with a journal that needs replaying.
pub fn needs_recovery(image: &Path) -> Result<bool, FirecrackerError> {
    let mut head = vec![0u8; SUPERBLOCK + 1024];
    std::fs::File::open(image)
        .and_then(|mut file| file.read_exact(&mut head))
        .map_err(|err| disk_error(image, format!("cannot read its superblock: {err}")))?;
    let magic = u16::from_le_bytes([head[SUPERBLOCK + MAGIC_OFFSET], head[SUPERBLOCK + MAGIC_OFFSET + 1]]);
    if magic != EXT4_MAGIC {
        return Err(disk_error(image, "not an ext4 file system"));
    }
    let at = SUPERBLOCK + INCOMPAT_OFFSET;
    let incompat = u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    Ok(incompat & INCOMPAT_RECOVER != 0)
}

/// Runs a tool and returns its stderr; a failure to start or a non-zero exit is an error.
async fn run(image: &Path, program: &str, args: &[&std::ffi::OsStr], ok: &[i32]) -> Result<String, FirecrackerError> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|err| disk_error(image, format!("cannot run {program} (install e2fsprogs): {err}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match output.status.code() {
        Some(code) if ok.contains(&code) => Ok(stderr),
        _ => Err(disk_error(
            image,
            format!(
                "{program} failed ({}): {}",
                output.status,
                one_line(&format!("{stderr}{}", String::from_utf8_lossy(&output.stdout)))
            ),
        )),
    }
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// Replays `image`'s journal into it.
async fn replay(image: &Path) -> Result<(), FirecrackerError> {
    // 0: nothing to fix, 1: fixed (the journal replayed).
    run(image, "e2fsck", &["-E".as_ref(), "journal_only".as_ref(), "-y".as_ref(), image.as_os_str()], &[0, 1])
        .await
        .map(|_| ())
}

/// Copies the tree of the ext4 image `image` into `dest`, an empty directory: owners, modes,
/// times and symbolic links kept (hard links become copies; device nodes, FIFOs and sockets
/// are skipped, as `debugfs rdump` does). `scratch` is a directory on the image's file system
/// for the copy an [`ImageUse::InUse`] image whose journal needs replaying is read from.
pub async fn read_tree(image: &Path, dest: &Path, scratch: &Path, usage: ImageUse) -> Result<(), FirecrackerError> {
    let mut copy = None;
    let source = if needs_recovery(image)? {
        match usage {
            ImageUse::Finished => {
                replay(image).await?;
                image.to_owned()
            }
            ImageUse::InUse => {
                let path = scratch.join(format!("workspace.read-{}.ext4", unique()));
                copy = Some(path.clone());
                let copied =
                    run(image, "cp", &["--sparse=always".as_ref(), image.as_os_str(), path.as_os_str()], &[0]).await;
                if let Err(err) = copied.map(|_| ()) {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(err);
                }
                if let Err(err) = replay(&path).await {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(err);
                }
                path
            }
        }
    } else {
        image.to_owned()
    };
    let request = format!("rdump / \"{}\"", dest.display());
    let dumped = run(image, "debugfs", &["-R".as_ref(), request.as_ref(), source.as_os_str()], &[0]).await;
    if let Some(copy) = copy {
        let _ = tokio::fs::remove_file(copy).await;
    }
    // debugfs exits 0 whatever happens; anything on stderr but its banner is a failure.
    let stderr = dumped?;
    let complaints: Vec<&str> =
        stderr.lines().filter(|line| !line.trim().is_empty() && !line.starts_with("debugfs ")).collect();
    if !complaints.is_empty() {
        return Err(disk_error(image, format!("debugfs could not read it: {}", complaints.join(" | "))));
    }
    // mkfs.ext4 adds lost+found; the workspace did not have one unless it is not empty.
    let _ = tokio::fs::remove_dir(dest.join("lost+found")).await;
    Ok(())
}

/// A name part no other reader of the same disk uses at the same time.
fn unique() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// Makes `workspace` hold the tree of `image`: read into a fresh directory beside it, then
/// exchanged with it in one step; the old tree is deleted in the background. `id` names the
/// sandbox in the fresh directory's name. On failure `workspace` is as it was.
pub async fn sync_back(
    id: &str,
    image: &Path,
    workspace: &Path,
    scratch: &Path,
    usage: ImageUse,
) -> Result<(), FirecrackerError> {
    let parent = workspace
        .parent()
        .ok_or_else(|| disk_error(image, format!("the workspace {} has no parent", workspace.display())))?;
    if !workspace.is_dir() {
        return Err(disk_error(image, format!("the workspace {} is not a directory", workspace.display())));
    }
    let fresh = parent.join(format!("{SCRATCH_PREFIX}{id}_{}", unique()));
    tokio::fs::create_dir(&fresh)
        .await
        .map_err(|err| disk_error(image, format!("cannot create {}: {err}", fresh.display())))?;
    let swapped = async {
        read_tree(image, &fresh, scratch, usage).await?;
        // The workspace directory keeps its own owner and mode (the image's root has them from
        // the start, and a guest's chmod of /workspace is not worth a difference on the host).
        copy_owner_and_mode(workspace, &fresh)?;
        exchange(&fresh, workspace).map_err(|err| {
            disk_error(image, format!("cannot swap {} in for {}: {err}", fresh.display(), workspace.display()))
        })
    }
    .await;
    match swapped {
        // `fresh` holds the old tree now, which may be large: deleted off the caller's path.
        Ok(()) => remove_in_background(fresh),
        // A failed read leaves nothing behind by the time it is reported.
        Err(_) => {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(fresh)).await;
        }
    }
    swapped
}

fn copy_owner_and_mode(from: &Path, to: &Path) -> Result<(), FirecrackerError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(from).map_err(|err| FirecrackerError::io(&format!("{}", from.display()), err))?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))
        .and_then(|()| std::fs::set_permissions(to, meta.permissions()))
        .map_err(|err| FirecrackerError::io(&format!("cannot set the owner of {}", to.display()), err))
}

/// Swaps two directories in one step.
fn exchange(a: &Path, b: &Path) -> nix::Result<()> {
    nix::fcntl::renameat2(None, a, None, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
}

/// Deletes a tree off the caller's path.
fn remove_in_background(dir: PathBuf) {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(dir = %dir.display(), error = %err, "cannot remove a workspace copy"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_ext4_is_refused_before_any_tool_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![7u8; 4096]).expect("write");
        let err = needs_recovery(&junk).expect_err("no ext4");
        assert!(err.to_string().contains("not an ext4 file system"), "{err}");
        let short = dir.path().join("short");
        std::fs::write(&short, b"tiny").expect("write");
        assert!(needs_recovery(&short).expect_err("too short").to_string().contains("superblock"));
    }
}
