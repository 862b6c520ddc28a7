//! `--vm-init`: the agent as PID 1 of a Firecracker microVM, where no container runtime
//! prepared anything. Before serving it mounts the kernel's file systems, scratch tmpfs
//! directories (the root disk is attached read-only), and the workspace disk (`/dev/vdb`, an
//! ext4 image the host made from the workspace directory) at `/workspace`. A mount that is
//! already there (the kernel may mount devtmpfs itself) is fine.

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// One mount of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// What to mount (a device or a pseudo file system's name).
    pub source: &'static str,
    /// Where.
    pub target: &'static str,
    /// The file system type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// File-system options.
    pub data: Option<&'static str>,
    /// Whether the VM is unusable without it (a missing workspace disk only means no workspace).
    pub required: bool,
}

/// The mounts, in order.
pub fn plan() -> Vec<Step> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let step = |source, target, fstype, flags, data, required| Step { source, target, fstype, flags, data, required };
    vec![
        step("proc", "/proc", "proc", hardened, None, true),
        step("sysfs", "/sys", "sysfs", hardened, None, true),
        step("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"), true),
        // PTYs: the terminal needs /dev/pts (and /dev/ptmx pointing into it).
        step(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
            true,
        ),
        step("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"), false),
        step("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"), true),
        step("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"), true),
        step("/dev/vdb", "/workspace", "ext4", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None, false),
    ]
}

/// Carries out [`plan`].
pub fn prepare() -> Result<(), String> {
    for step in plan() {
        if let Err(err) = std::fs::create_dir_all(step.target) {
            // A read-only root without the mount point: only fatal for required mounts.
            if step.required {
                return Err(format!("{}: {err}", step.target));
            }
            continue;
        }
        match mount(Some(step.source), step.target, Some(step.fstype), step.flags, step.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(err) if !step.required => eprintln!("cloudterm-agent: {} on {}: {err}", step.source, step.target),
            Err(err) => return Err(format!("mounting {} on {}: {err}", step.source, step.target)),
        }
    }
    // /dev/ptmx must be the devpts instance's multiplexer.
    let _ = std::fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").map_err(|err| format!("/dev/ptmx: {err}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_mounts_dev_before_devpts_and_the_workspace_disk_last() {
        let plan = plan();
        let at = |target: &str| plan.iter().position(|s| s.target == target).expect(target);
        assert!(at("/dev") < at("/dev/pts") && at("/dev") < at("/dev/shm"));
        let workspace = plan.last().expect("steps");
        assert_eq!((workspace.source, workspace.target, workspace.required), ("/dev/vdb", "/workspace", false));
        assert!(plan.iter().all(|s| s.flags.contains(MsFlags::MS_NOSUID)), "nothing setuid from a mount");
    }
}
