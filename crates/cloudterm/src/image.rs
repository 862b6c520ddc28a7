//! `cloudterm image`: how to make a sandbox image, a check that a directory is one, and
//! `build`, which turns one into the firecracker runtime's ext4 root image.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// What `cloudterm image` prints: the recipe for an image directory.
pub const GUIDE: &str = "\
A sandbox image is a directory holding a root file system. Without one, linux sandboxes use the
host's /usr, /bin, /lib*, /sbin read-only with a generated /etc. To make a Debian image:

  apt-get install debootstrap
  debootstrap --variant=minbase bookworm /var/lib/cloudterm/images/bookworm http://deb.debian.org/debian
  cloudterm image check /var/lib/cloudterm/images/bookworm

From an OCI image (docker, podman or skopeo+umoci on another machine):

  docker export $(docker create python:3.12-slim) | tar -x -C /var/lib/cloudterm/images/python

Then point cloudterm at the directory of images and ask for one by name:

  CLOUDTERM_IMAGES_DIR=/var/lib/cloudterm/images cloudterm serve
  curl -X POST .../sandboxes -d '{\"image\": \"bookworm\"}'

The image stays read-only; each sandbox writes to its own layer above it, so `apt install` and
`pip install` inside a sandbox last as long as the sandbox. The workspace is mounted at /workspace.

The firecracker runtime boots an ext4 file instead; make it beside the directory (DIR.ext4, where
the runtime looks for image DIR) with the static agent inside (docs/firecracker.md):

  cloudterm image build /var/lib/cloudterm/images/bookworm
";

/// `image build`: writes the ext4 root image of `dir` and says what it made.
pub fn build(
    dir: &Path,
    agent: Option<PathBuf>,
    output: Option<PathBuf>,
    size_mb: Option<u64>,
) -> anyhow::Result<String> {
    let agent = match agent {
        Some(agent) => agent,
        None => {
            let exe = std::env::current_exe().context("cannot find this binary")?;
            exe.with_file_name("cloudterm-agent")
        }
    };
    let output = output.unwrap_or_else(|| cloudterm_runtime_firecracker::image::default_output(dir));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("async runtime")?;
    let size = runtime.block_on(cloudterm_runtime_firecracker::image::build_rootfs(dir, &agent, &output, size_mb))?;
    let mut summary = format!("wrote {} ({size} MiB, agent {})", output.display(), agent.display());
    if cloudterm_runtime_firecracker::image::is_dynamic(&agent).unwrap_or(false) {
        summary.push_str(
            "\nnote: this agent is dynamically linked, so it starts only if the image holds its libraries; \
             a static one is built as crates/cloudterm-agent/README.md says",
        );
    }
    Ok(summary)
}

/// Checks that `dir` looks like a root file system a sandbox can start in.
pub fn check(dir: &Path) -> Result<Vec<String>, Vec<String>> {
    let mut seen = Vec::new();
    let mut missing = Vec::new();
    for (path, why) in [
        ("bin/sh", "commands run through /bin/sh -c"),
        ("usr", "programs and libraries"),
        ("etc", "configuration (passwd, hosts and resolv.conf are generated over it)"),
    ] {
        if dir.join(path).exists() {
            seen.push(format!("ok: /{path}"));
        } else {
            missing.push(format!("missing /{path}: {why}"));
        }
    }
    if !dir.is_dir() {
        missing.insert(0, format!("{} is not a directory", dir.display()));
    }
    if missing.is_empty() {
        Ok(seen)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_a_shell_is_not_an_image() {
        let dir = tempfile::tempdir().expect("dir");
        let problems = check(dir.path()).expect_err("empty dir");
        assert!(problems.iter().any(|p| p.contains("/bin/sh")));
        std::fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
        std::fs::write(dir.path().join("bin/sh"), "").expect("write");
        std::fs::create_dir_all(dir.path().join("usr")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        assert!(check(dir.path()).is_ok());
    }
}
