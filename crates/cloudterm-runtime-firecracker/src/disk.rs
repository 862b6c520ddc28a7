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
}
