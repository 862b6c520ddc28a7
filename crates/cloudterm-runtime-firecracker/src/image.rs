//! `cloudterm image build`: a guest root image (ext4) from an image directory plus the static
//! agent at `/.cloudterm/agent` (the guest's init) and an empty `/workspace` mount point. The
//! directory is copied by `mkfs.ext4 -d`; the agent is then written into the image with
//! `debugfs -w`, so the image directory itself is never modified and nothing is mounted.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::disk::{make_ext4, MIN_IMAGE_MB};
use crate::error::FirecrackerError;

/// Head room over the tree's size when no size is given: ext4's metadata, plus room for what
/// the guest writes outside `/workspace` (the root is attached read-only today, so little).
const SLACK_MB: u64 = 64;

/// The default output of `image build DIR`: `DIR.ext4` beside the directory, where the runtime
/// looks for a named image's root ([`crate::rootfs_of`]).
pub fn default_output(image_dir: &Path) -> PathBuf {
    let trimmed = image_dir.components().collect::<PathBuf>();
    let mut file = trimmed.into_os_string();
    file.push(".ext4");
    PathBuf::from(file)
}

/// Whether the ELF at `path` asks for a dynamic loader (has a `PT_INTERP` program header): such
/// an agent only starts in an image that holds its libraries.
pub fn is_dynamic(path: &Path) -> std::io::Result<bool> {
    let bytes = std::fs::read(path)?;
    let field = |at: usize, len: usize| -> Option<u64> {
        let slice = bytes.get(at..at + len)?;
        Some(slice.iter().rev().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    // ELF64 little-endian only (what x86_64 guests run).
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Ok(false);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (field(0x20, 8), field(0x36, 2), field(0x38, 2)) else {
        return Ok(false);
    };
    const PT_INTERP: u64 = 3;
    Ok((0..phnum).any(|i| field((phoff + i * phentsize) as usize, 4) == Some(PT_INTERP)))
}

/// Bytes of the regular files under `dir` (links not followed), rounded up to 4 KiB blocks.
pub fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            }
            total += meta.len().div_ceil(4096) * 4096;
        }
    }
    Ok(total)
}

/// Builds the root image of `image_dir` with `agent` (a static `cloudterm-agent`) at
/// `/.cloudterm/agent` into `output`. `size_mb`: the image's size, else the tree's size plus
/// [`SLACK_MB`] and a quarter. Returns the size used, MiB.
pub async fn build_rootfs(
    image_dir: &Path,
    agent: &Path,
    output: &Path,
    size_mb: Option<u64>,
) -> Result<u64, FirecrackerError> {
    let agent_meta = std::fs::metadata(agent)
        .map_err(|err| FirecrackerError::Invalid(format!("the agent binary {}: {err}", agent.display())))?;
    if agent.to_string_lossy().chars().any(|c| c.is_whitespace() || c.is_control() || c == '"') {
        // debugfs reads its script word by word.
        return Err(FirecrackerError::Invalid(format!("the agent path {:?} must not contain spaces or quotes", agent)));
    }
    if !agent_meta.is_file() {
        return Err(FirecrackerError::Invalid(format!("the agent binary {} is not a file", agent.display())));
    }
    let size_mb = match size_mb {
        Some(size) => size,
        None => {
            let tree = tree_size(image_dir)
                .map_err(|err| FirecrackerError::Invalid(format!("cannot read {}: {err}", image_dir.display())))?;
            let bytes = (tree + agent_meta.len()) / 4 * 5;
            (bytes.div_ceil(1 << 20) + SLACK_MB).max(MIN_IMAGE_MB)
        }
    };
    if image_dir.join(".cloudterm/agent").exists() {
        return Err(FirecrackerError::Invalid(format!(
            "{} has a /.cloudterm/agent of its own; the image build puts the agent there",
            image_dir.display()
        )));
    }
    make_ext4(image_dir, output, size_mb, "cloudterm-root").await?;
    let mut script = String::new();
    if !image_dir.join(".cloudterm").is_dir() {
        script.push_str("mkdir /.cloudterm\nsif /.cloudterm mode 040755\n");
    }
    script.push_str(&format!(
        "write {} /.cloudterm/agent\nsif /.cloudterm/agent mode 0100755\nsif /.cloudterm/agent uid 0\nsif /.cloudterm/agent gid 0\n",
        agent.display()
    ));
    if !image_dir.join("workspace").is_dir() {
        script.push_str("mkdir /workspace\n");
    }
    let result = debugfs(output, &script).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(output).await;
    }
    result.map(|()| size_mb)
}

/// Runs `debugfs -w -f SCRIPT image` (the script's paths are free of spaces and quotes); debugfs reports most failures on stderr with exit 0, so
/// any `debugfs:` error line counts as failure too.
async fn debugfs(image: &Path, script: &str) -> Result<(), FirecrackerError> {
    let script_path = image.with_extension("debugfs");
    tokio::fs::write(&script_path, script)
        .await
        .map_err(|err| FirecrackerError::io("cannot write a debugfs script", err))?;
    let output = tokio::process::Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .await;
    let _ = tokio::fs::remove_file(&script_path).await;
    let output =
        output.map_err(|err| FirecrackerError::Io(format!("cannot run debugfs (install e2fsprogs): {err}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> =
        stderr.lines().filter(|line| !line.starts_with("debugfs ") && !line.trim().is_empty()).collect();
    if !output.status.success() || !errors.is_empty() {
        return Err(FirecrackerError::Io(format!("debugfs failed on {}: {}", image.display(), errors.join("; "))));
    }
    Ok(())
}
