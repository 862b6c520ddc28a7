//! Checks on what a client asks for: limits, TTLs, environment, mount targets.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use cloudterm_runtime::Limits;

use crate::error::DomainError;
use crate::sandboxes::model::SandboxSettings;

fn invalid(message: String) -> DomainError {
    DomainError::InvalidInput(message)
}

/// Fills unset limits with the defaults and refuses values outside `1..=max`.
pub fn effective_limits(requested: &Limits, settings: &SandboxSettings) -> Result<Limits, DomainError> {
    let defaults = &settings.default_limits;
    let max = &settings.max_limits;
    let whole = |name: &str,
                 asked: Option<u64>,
                 default: Option<u64>,
                 max: Option<u64>,
                 min: u64|
     -> Result<Option<u64>, DomainError> {
        match asked {
            None => Ok(default),
            Some(value) if value < min => Err(invalid(format!("limits.{name} must be at least {min}, got {value}"))),
            Some(value) if max.is_some_and(|max| value > max) => {
                Err(invalid(format!("limits.{name} must be at most {}, got {value}", max.unwrap_or(0))))
            }
            Some(value) => Ok(Some(value)),
        }
    };
    let cpus = match requested.cpus {
        None => defaults.cpus,
        Some(cpus) if !cpus.is_finite() || cpus < 0.01 => {
            return Err(invalid(format!("limits.cpus must be at least 0.01, got {cpus}")))
        }
        Some(cpus) if max.cpus.is_some_and(|max| cpus > max) => {
            return Err(invalid(format!("limits.cpus must be at most {}, got {cpus}", max.cpus.unwrap_or(0.0))))
        }
        Some(cpus) => Some(cpus),
    };
    Ok(Limits {
        memory_mb: whole("memory_mb", requested.memory_mb, defaults.memory_mb, max.memory_mb, 16)?,
        cpus,
        pids: whole("pids", requested.pids, defaults.pids, max.pids, 8)?,
        disk_mb: whole("disk_mb", requested.disk_mb, defaults.disk_mb, max.disk_mb, 1)?,
    })
}

/// The idle TTL: the default when unset, else within `1..=max`.
pub fn timeout_seconds(requested: Option<u64>, settings: &SandboxSettings) -> Result<u64, DomainError> {
    match requested {
        None => Ok(settings.default_timeout_seconds),
        Some(0) => Err(invalid("timeout_seconds must be at least 1".into())),
        Some(seconds) if seconds > settings.max_timeout_seconds => {
            Err(invalid(format!("timeout_seconds must be at most {}, got {seconds}", settings.max_timeout_seconds)))
        }
        Some(seconds) => Ok(seconds),
    }
}

/// Environment names are non-empty, without `=` or NUL; values without NUL.
pub fn environment(env: &BTreeMap<String, String>) -> Result<(), DomainError> {
    if env.len() > 1000 {
        return Err(invalid("env has more than 1000 variables".into()));
    }
    for (name, value) in env {
        if name.is_empty() || name.contains('=') || name.contains('\0') || name.len() > 1024 {
            return Err(invalid(format!("env name {name:?} is not allowed")));
        }
        if value.contains('\0') || value.len() > 128 * 1024 {
            return Err(invalid(format!("env value of {name:?} contains NUL or is longer than 128 KiB")));
        }
    }
    Ok(())
}

/// Labels: at most 64 keys of at most 256 bytes, values at most 4 KiB.
pub fn metadata(metadata: &BTreeMap<String, String>) -> Result<(), DomainError> {
    if metadata.len() > 64 {
        return Err(invalid("metadata has more than 64 keys".into()));
    }
    for (key, value) in metadata {
        if key.is_empty() || key.len() > 256 || value.len() > 4096 {
            return Err(invalid(format!("metadata key {key:?} or its value is empty or too long")));
        }
    }
    Ok(())
}

/// A mount target inside the sandbox: absolute, normalized, and not a system path.
pub fn mount_target(target: &str) -> Result<PathBuf, DomainError> {
    let path = Path::new(target);
    if !path.is_absolute() || target.contains('\0') {
        return Err(invalid(format!("mount target {target:?} must be an absolute path")));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(invalid(format!("mount target {target:?} must not contain . or ..")));
    }
    let reserved =
        ["/", "/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/.cloudterm", "/workspace"];
    if reserved.iter().any(|r| path == Path::new(r))
        || path.starts_with("/proc")
        || path.starts_with("/sys")
        || path.starts_with("/dev")
        || path.starts_with("/.cloudterm")
    {
        return Err(invalid(format!("mount target {target:?} is a system path")));
    }
    Ok(path.to_path_buf())
}

/// Resolves a host path (following links) and checks it lies under an allowed directory.
/// `Ok(None)` means it is outside every allowed directory (the caller answers 403).
pub fn allowed_host_path(host_path: &str, allow: &[PathBuf]) -> Result<Option<PathBuf>, DomainError> {
    if !Path::new(host_path).is_absolute() || host_path.contains('\0') {
        return Err(invalid(format!("host_path {host_path:?} must be an absolute path")));
    }
    let Ok(real) = std::fs::canonicalize(host_path) else {
        // Do not reveal whether a path outside the allow-list exists.
        return Ok(None);
    };
    Ok(allow.iter().any(|root| real.starts_with(root)).then_some(real))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SandboxSettings {
        SandboxSettings {
            workspaces_dir: "/w".into(),
            state_dir: "/s".into(),
            default_timeout_seconds: 900,
            max_timeout_seconds: 86_400,
            default_limits: Limits { memory_mb: Some(512), cpus: Some(1.0), pids: Some(256), disk_mb: None },
            max_limits: Limits { memory_mb: Some(8192), cpus: Some(2.0), pids: Some(4096), disk_mb: Some(65_536) },
            quotas: crate::quotas::QuotaPolicy::default(),
            mount_allow: vec![],
            images_dir: None,
            warm_pool: 0,
            idle_pause: None,
            volumes: std::sync::Arc::new(cloudterm_volumes::Volumes::reporting("unit test")),
        }
    }

    #[test]
    fn unset_limits_take_defaults_and_set_ones_are_kept() {
        let limits =
            effective_limits(&Limits { memory_mb: Some(256), ..Limits::default() }, &settings()).expect("valid");
        assert_eq!(limits, Limits { memory_mb: Some(256), cpus: Some(1.0), pids: Some(256), disk_mb: None });
    }

    #[test]
    fn absurd_limits_are_refused_with_the_field_named() {
        let cases = [
            (Limits { memory_mb: Some(1), ..Limits::default() }, "memory_mb"),
            (Limits { memory_mb: Some(10_000_000), ..Limits::default() }, "memory_mb"),
            (Limits { cpus: Some(0.0), ..Limits::default() }, "cpus"),
            (Limits { cpus: Some(f64::NAN), ..Limits::default() }, "cpus"),
            (Limits { cpus: Some(64.0), ..Limits::default() }, "cpus"),
            (Limits { pids: Some(1), ..Limits::default() }, "pids"),
            (Limits { disk_mb: Some(0), ..Limits::default() }, "disk_mb"),
        ];
        for (limits, field) in cases {
            let err = effective_limits(&limits, &settings()).expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout_seconds(None, &settings()).ok(), Some(900));
        assert!(timeout_seconds(Some(0), &settings()).is_err());
        assert!(timeout_seconds(Some(86_401), &settings()).is_err());
        assert_eq!(timeout_seconds(Some(60), &settings()).ok(), Some(60));
    }

    #[test]
    fn bad_environment_names_are_refused() {
        for name in ["", "A=B", "A\0"] {
            let env = BTreeMap::from([(name.to_string(), "x".to_string())]);
            assert!(environment(&env).is_err(), "{name:?}");
        }
        assert!(environment(&BTreeMap::from([("OK".to_string(), "a=b c".to_string())])).is_ok());
    }

    #[test]
    fn mount_targets_must_be_plain_absolute_non_system_paths() {
        for target in
            ["relative", "/", "/proc", "/proc/self", "/a/../etc", "/workspace", "/dev/sda", "/.cloudterm/agent"]
        {
            assert!(mount_target(target).is_err(), "{target}");
        }
        assert_eq!(mount_target("/data/in").expect("ok"), PathBuf::from("/data/in"));
    }

    #[test]
    fn host_paths_outside_the_allow_list_are_refused_even_through_links() {
        let allowed = tempfile::tempdir().expect("dir");
        let outside = tempfile::tempdir().expect("dir");
        let link = allowed.path().join("escape");
        std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
        std::fs::create_dir(allowed.path().join("inside")).expect("mkdir");
        let allow = vec![std::fs::canonicalize(allowed.path()).expect("canonical")];
        let inside = allowed.path().join("inside");
        assert!(allowed_host_path(inside.to_str().expect("utf8"), &allow).expect("checked").is_some());
        assert!(
            allowed_host_path(link.to_str().expect("utf8"), &allow).expect("checked").is_none(),
            "a link out is refused"
        );
        assert!(allowed_host_path(&format!("{}/inside/../../", allowed.path().display()), &allow)
            .expect("checked")
            .is_none());
        assert!(allowed_host_path("/etc", &allow).expect("checked").is_none());
        assert!(allowed_host_path("relative", &allow).is_err());
    }
}
