//! Usage of a workspace that is a plain directory (nothing enforces its limit): the disk space
//! its files take, as `du` counts it, by walking the tree.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes allocated to `dir` and everything below it, not following symbolic links and not
/// crossing into other file systems. Entries that vanish or cannot be read while walking are
/// skipped: the answer is an estimate for reporting, not an accounting.
pub fn allocated_bytes(dir: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else { return 0 };
    let device = top.dev();
    let mut total = top.blocks().saturating_mul(512);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != device {
                continue;
            }
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_files_below_and_not_through_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = allocated_bytes(dir.path());
        std::fs::create_dir(dir.path().join("sub")).expect("sub");
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 1 << 20]).expect("a");
        std::os::unix::fs::symlink("/usr", dir.path().join("usr")).expect("link");
        let after = allocated_bytes(dir.path());
        assert!(after >= before + (1 << 20), "{before} -> {after}");
        assert!(after < before + (2 << 20), "the link is not followed: {after}");
    }
}
