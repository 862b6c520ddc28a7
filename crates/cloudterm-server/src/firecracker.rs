//! Wiring of the firecracker runtime: its settings from [`Config`], the probe boot `auto`
//! selection runs, and the cheaper check readiness repeats. The backend itself is
//! `cloudterm-runtime-firecracker`.

use std::path::PathBuf;

use cloudterm_blobstore::BlobStore;
use cloudterm_runtime_firecracker::probe::{preflight, probe_blocking, PROBE_TIMEOUT};
use cloudterm_runtime_firecracker::{locate_binary, FirecrackerConfig, FirecrackerRuntime};

use crate::config::Config;

/// The runtime's settings, or why there are none (no kernel, no binary).
pub fn settings(config: &Config, root_dir: PathBuf, snapshots: Option<BlobStore>) -> Result<FirecrackerConfig, String> {
    let kernel = config
        .runtime
        .firecracker_kernel
        .clone()
        .ok_or("no firecracker kernel is configured (runtime.firecracker_kernel, CLOUDTERM_FIRECRACKER_KERNEL)")?;
    let binary = locate_binary(config.runtime.firecracker_bin.clone())
        .ok_or("no firecracker binary (runtime.firecracker_bin, CLOUDTERM_FIRECRACKER_BIN, or PATH)")?;
    let mut settings = FirecrackerConfig::new(binary, kernel, root_dir);
    settings.default_rootfs = config.runtime.firecracker_rootfs.clone();
    settings.default_memory_mb = config.sandboxes.default_memory_mb;
    // A VM gets whole vCPUs; the CPU quota rounds up.
    settings.default_vcpus = config.sandboxes.default_cpus.ceil().clamp(1.0, 32.0) as u8;
    settings.snapshots = snapshots;
    Ok(settings)
}

/// What `auto` (and an explicit `firecracker`) runs at start-up: a probe VM must reach its agent
/// within [`PROBE_TIMEOUT`]. Blocking; run it off the async threads.
pub fn probe(config: &Config) -> Result<String, String> {
    let settings = settings(config, config.runtime_state_dir(), None)?;
    probe_blocking(&settings, PROBE_TIMEOUT)
}

/// What readiness re-checks while the server runs: `/dev/kvm`, the binary, the kernel, the
/// root image (no boot).
pub fn readiness(config: &Config) -> Result<String, String> {
    preflight(&settings(config, config.runtime_state_dir(), None)?)
}

/// The runtime, pausing sandboxes into `blobs`.
pub fn build(config: &Config, root_dir: PathBuf, blobs: BlobStore) -> anyhow::Result<FirecrackerRuntime> {
    let settings = settings(config, root_dir, Some(blobs)).map_err(anyhow::Error::msg)?;
    Ok(FirecrackerRuntime::new(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_kernel_there_is_no_firecracker_and_the_reason_names_the_setting() {
        let config = Config::default();
        let err = settings(&config, "/tmp/x".into(), None).expect_err("no kernel");
        assert!(err.contains("CLOUDTERM_FIRECRACKER_KERNEL"), "{err}");
        assert!(probe(&config).is_err());
    }

    #[test]
    fn sandbox_defaults_become_vm_defaults() {
        let mut config = Config::default();
        config.runtime.firecracker_kernel = Some("/boot/vmlinux".into());
        config.runtime.firecracker_bin = Some("/opt/firecracker".into());
        config.sandboxes.default_cpus = 1.5;
        config.sandboxes.default_memory_mb = 768;
        let settings = settings(&config, "/tmp/x".into(), None).expect("settings");
        assert_eq!((settings.default_vcpus, settings.default_memory_mb), (2, 768));
        assert_eq!(settings.binary, PathBuf::from("/opt/firecracker"));
    }
}
