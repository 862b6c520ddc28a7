//! Looking at the host from a test: which processes, mounts and cgroups a sandbox holds.

/// Processes on the host that belong to sandbox `id`: its id is in their command line (the
/// process runtime's agent) or in their cgroup path (the linux runtime).
pub fn sandbox_processes(id: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true);
        if !zombie && (String::from_utf8_lossy(&cmdline).contains(id) || cgroup.contains(id)) {
            pids.push(pid);
        }
    }
    pids
}

/// Everything of sandbox `id` still on the host: processes, mounts, cgroup directories.
pub fn sandbox_leftovers(id: &str) -> Vec<String> {
    let mut found: Vec<String> = sandbox_processes(id).into_iter().map(|pid| format!("process {pid}")).collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    found.extend(mountinfo.lines().filter(|line| line.contains(id)).map(|line| format!("mount {line}")));
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for controller in controllers.flatten() {
            let mut stack = vec![controller.path()];
            while let Some(dir) = stack.pop() {
                let Ok(children) = std::fs::read_dir(&dir) else { continue };
                for child in children.flatten() {
                    let path = child.path();
                    if child.file_type().is_ok_and(|t| t.is_dir()) {
                        if path.to_string_lossy().contains(id) {
                            found.push(format!("cgroup {}", path.display()));
                        } else if stack.len() < 10_000 {
                            stack.push(path);
                        }
                    }
                }
            }
        }
    }
    found
}

/// True when this process may create linux sandboxes here: root, with user namespaces.
pub fn linux_runtime_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    root && cloudterm_runtime::probe(cloudterm_runtime::RuntimeKind::Linux).is_ok()
}

/// The freezer state of a linux-runtime sandbox (`FROZEN`, `THAWED`), read on the host.
pub fn freezer_state(id: &str) -> Option<String> {
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup/freezer")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if entry.file_name().to_string_lossy().contains(id) {
                return std::fs::read_to_string(path.join("freezer.state")).ok().map(|s| s.trim().to_string());
            }
            stack.push(path);
        }
    }
    None
}
