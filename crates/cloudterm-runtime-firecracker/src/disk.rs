//! ext4 images made from host directories with `mkfs.ext4 -d` (e2fsprogs): the root images of
//! `cloudterm image build` and each sandbox's workspace disk. No mount, no root needed, and the
//! image is sparse, so an empty 1 GiB workspace costs a few MiB of host disk.

use std::path::Path;
use std::process::Stdio;

use crate::error::FirecrackerError;

/// Smallest image accepted, MiB (below this ext4's own metadata does not fit comfortably).
pub const MIN_IMAGE_MB: u64 = 8;
/// Largest image accepted, MiB (1 TiB).
pub const MAX_IMAGE_MB: u64 = 1 << 20;

/// Writes an ext4 file system of `size_mb` MiB to `output` (replacing it) holding a copy of
/// `source`'s tree, owners and modes kept. `label` names the file system (`blkid` shows it).
pub async fn make_ext4(source: &Path, output: &Path, size_mb: u64, label: &str) -> Result<(), FirecrackerError> {
    if !(MIN_IMAGE_MB..=MAX_IMAGE_MB).contains(&size_mb) {
        return Err(FirecrackerError::Invalid(format!(
            "an image of {size_mb} MiB is out of range ({MIN_IMAGE_MB}-{MAX_IMAGE_MB} MiB)"
        )));
    }
    match tokio::fs::metadata(source).await {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(FirecrackerError::Invalid(format!("{} is not a directory", source.display()))),
        Err(err) => return Err(FirecrackerError::Invalid(format!("{}: {err}", source.display()))),
    }
    match tokio::fs::remove_file(output).await {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(FirecrackerError::io(&format!("cannot replace {}", output.display()), err)),
    }
    let result = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-d"])
        .arg(source)
        .arg(output)
        .arg(format!("{size_mb}M"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|err| FirecrackerError::Io(format!("cannot run mkfs.ext4 (install e2fsprogs): {err}")))?;
    if !result.status.success() {
        let _ = tokio::fs::remove_file(output).await;
        let stderr = String::from_utf8_lossy(&result.stderr);
        // mkfs.ext4 -d says "Could not allocate block" / "No space left" when the tree is bigger.
        return Err(FirecrackerError::Invalid(format!(
            "mkfs.ext4 could not make a {size_mb} MiB image of {}: {}",
            source.display(),
            stderr.trim()
        )));
    }
    Ok(())
}

/// Copies `source` to `output` (replacing it) as cheaply as the host allows: shared extents
/// where the file system can (`--reflink=auto`: XFS, btrfs), else only the blocks that hold
/// data (`--sparse=always`), so a sandbox's copy of a root image costs what the image holds,
/// and afterwards only what the guest writes.
pub async fn copy_sparse(source: &Path, output: &Path) -> Result<(), FirecrackerError> {
    let result = tokio::process::Command::new("cp")
        .args(["--reflink=auto", "--sparse=always", "--"])
        .arg(source)
        .arg(output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|err| FirecrackerError::Io(format!("cannot run cp: {err}")))?;
    if !result.status.success() {
        let _ = tokio::fs::remove_file(output).await;
        return Err(FirecrackerError::Io(format!(
            "cannot copy {} to {}: {}",
            source.display(),
            output.display(),
            String::from_utf8_lossy(&result.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sizes_out_of_range_and_missing_sources_are_refused_before_mkfs_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("x.ext4");
        let err = make_ext4(dir.path(), &out, 1, "x").await.expect_err("too small");
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = make_ext4(&dir.path().join("nope"), &out, 64, "x").await.expect_err("missing");
        assert!(matches!(err, FirecrackerError::Invalid(_)), "{err}");
        assert!(!out.exists());
    }

    #[tokio::test]
    async fn a_copy_is_sparse_and_independent_of_its_source() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("base.img");
        let file = std::fs::File::create(&source).expect("create");
        file.set_len(64 << 20).expect("64 MiB hole");
        std::os::unix::fs::FileExt::write_at(&file, b"data", 1 << 20).expect("write");
        let copy = dir.path().join("copy.img");
        copy_sparse(&source, &copy).await.expect("copy");
        let meta = std::fs::metadata(&copy).expect("meta");
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "the hole stays a hole: {} blocks", meta.blocks());
        std::os::unix::fs::FileExt::write_at(
            &std::fs::OpenOptions::new().write(true).open(&copy).expect("open"),
            b"DATA",
            1 << 20,
        )
        .expect("write the copy");
        let source_bytes = std::fs::read(&source).expect("read the source");
        assert_eq!(&source_bytes[1 << 20..(1 << 20) + 4], b"data", "the source is untouched");
        let err = copy_sparse(&dir.path().join("missing"), &copy).await.expect_err("missing source");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
