//! The OCI runtime spec (`config.json`) of one sandbox, validated by `oci-spec`.

use std::path::Path;

use anyhow::Context;
use oci_spec::runtime::Spec;
use serde_json::json;

use crate::protocol::StartRequest;

/// Where the agent binary appears inside every sandbox.
pub const AGENT_PATH: &str = "/.cloudterm/agent";
/// The workspace inside (also `$HOME` and the default cwd).
pub const WORKSPACE: &str = "/workspace";
/// CFS period used to turn a cpu count into a quota, microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// The fd the agent's listening socket is handed on.
pub const LISTEN_FD: i32 = 3;

/// Docker's default capability set: enough for package managers (`chown`, `setuid` to drop to
/// a user) and nothing that reaches outside the namespaces.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Inputs besides the request that shape the spec.
pub struct SpecInputs<'a> {
    pub rootfs: &'a Path,
    /// `(host base, size)` of the uid/gid mapping, or `None` without a user namespace.
    pub userns: Option<(u32, u32)>,
    /// Highest `RLIMIT_NOFILE` the helper may grant.
    pub nofile_max: u64,
}

/// Builds the spec. The process is the agent, listening on inherited fd 3.
pub fn build_spec(req: &StartRequest, inputs: &SpecInputs<'_>) -> anyhow::Result<Spec> {
    let mut args = vec![
        AGENT_PATH.to_owned(),
        "--listen-fd".to_owned(),
        LISTEN_FD.to_string(),
        "--workspace".to_owned(),
        WORKSPACE.to_owned(),
        "--seccomp".to_owned(),
    ];
    for (key, value) in &req.env {
        args.push("--env".to_owned());
        args.push(format!("{key}={value}"));
    }
    let env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        format!("HOME={WORKSPACE}"),
        format!("HOSTNAME={}", req.id),
        "LANG=C.UTF-8".to_owned(),
        "TERM=xterm-256color".to_owned(),
    ];
    let nofile = inputs.nofile_max.min(65_536);
    let caps = CAPABILITIES;

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "network"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    let mut linux = json!({
        "cgroupsPath": format!("/cloudterm/{}", req.id),
        "resources": {
            "devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
                {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
                {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
                {"allow": true, "type": "c", "major": 136, "access": "rwm"}
            ],
            "memory": {
                "limit": req.memory_bytes,
                // memory + swap: equal to the limit, so swap cannot dodge it.
                "swap": req.memory_bytes
            },
            "cpu": {
                "quota": (req.cpus * CPU_PERIOD_US as f64).round() as i64,
                "period": CPU_PERIOD_US
            },
            "pids": {"limit": req.pids}
        },
        "rootfsPropagation": "slave",
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
            "/sys/firmware", "/sys/devices/virtual/powercap", "/sys/fs/cgroup"
        ],
        "readonlyPaths": [
            "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
        ]
    });
    if let Some((base, size)) = inputs.userns {
        namespaces.push(json!({"type": "user"}));
        // No nested user namespaces: one would hand the sandbox CAP_SYS_ADMIN over fresh mount
        // and network namespaces (and so `mount`). The limit is per user namespace.
        linux["sysctl"] = json!({"user.max_user_namespaces": "0"});
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": base, "size": size}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": base, "size": size}]);
    }
    linux["namespaces"] = json!(namespaces);

    // No cgroup mount at all: on cgroup v1 without a user namespace libcontainer mounts
    // /sys/fs/cgroup read-write whatever the spec says (DESIGN.md, trap 3), and the sandbox
    // has no use for it.
    let mounts = json!([
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]}
    ]);

    let value = json!({
        "ociVersion": "1.0.2",
        "root": {"path": inputs.rootfs, "readonly": false},
        "hostname": req.id,
        "mounts": mounts,
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": env,
            "cwd": WORKSPACE,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}
            ],
            "noNewPrivileges": true
        },
        "linux": linux
    });
    serde_json::from_value(value).context("generated spec is not a valid OCI runtime spec")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> StartRequest {
        StartRequest {
            id: "sbx_1".into(),
            state_dir: "/data/sandboxes/sbx_1".into(),
            workspace_dir: Some("/data/workspaces/a".into()),
            image: None,
            env: vec![("A".into(), "b c".into())],
            memory_bytes: 256 << 20,
            cpus: 0.5,
            pids: 64,
            mounts: Vec::new(),
            layer_dir: None,
        }
    }

    #[test]
    fn the_spec_runs_the_agent_with_limits_and_no_cgroup_mount() {
        let inputs = SpecInputs { rootfs: Path::new("/r"), userns: Some((100_000, 65_536)), nofile_max: 1 << 20 };
        let spec = build_spec(&request(), &inputs).expect("spec");
        let text = serde_json::to_value(&spec).expect("json");
        let args = text["process"]["args"].as_array().expect("args");
        assert_eq!(args[0], AGENT_PATH);
        assert!(args.iter().any(|a| a == "A=b c"));
        assert_eq!(text["hostname"], "sbx_1");
        assert_eq!(text["linux"]["resources"]["memory"]["limit"], 256 << 20);
        assert_eq!(text["linux"]["resources"]["memory"]["swap"], 256 << 20);
        assert_eq!(text["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(text["linux"]["resources"]["pids"]["limit"], 64);
        assert_eq!(text["process"]["noNewPrivileges"], true);
        assert!(!text["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["type"] == "cgroup" || m["type"] == "cgroup2"));
        let caps = text["process"]["capabilities"]["bounding"].as_array().expect("caps");
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert_eq!(text["linux"]["uidMappings"][0]["hostID"], 100_000);
    }
}
