//! Runtime selection: `auto` picks the strongest boundary this machine offers, and says why.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;

/// A runtime that can hold sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Linux namespaces, an overlay root and cgroups.
    Linux,
    /// One Firecracker microVM per sandbox.
    Firecracker,
    /// Plain child processes: no isolation at all.
    Process,
}

impl RuntimeKind {
    /// The name used in config, logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Linux => "linux",
            RuntimeKind::Firecracker => "firecracker",
            RuntimeKind::Process => "process",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator asked for (`CLOUDTERM_RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeChoice {
    /// The strongest runtime that works here.
    #[default]
    Auto,
    /// Exactly this runtime, or fail at start-up.
    Exactly(RuntimeKind),
}

impl FromStr for RuntimeChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(RuntimeChoice::Auto),
            "linux" => Ok(RuntimeChoice::Exactly(RuntimeKind::Linux)),
            "firecracker" => Ok(RuntimeChoice::Exactly(RuntimeKind::Firecracker)),
            "process" => Ok(RuntimeChoice::Exactly(RuntimeKind::Process)),
            other => Err(format!("unknown runtime {other:?}: expected auto, linux, firecracker or process")),
        }
    }
}

/// The runtime in use and the reason it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The chosen runtime.
    pub kind: RuntimeKind,
    /// A sentence for the start-up log: why this one, and why not the stronger ones.
    pub reason: String,
}

/// Why a requested runtime cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime was asked for explicitly but this machine or build cannot provide it.
    #[error("runtime {kind} is unavailable: {why}")]
    Unavailable {
        /// The runtime asked for.
        kind: RuntimeKind,
        /// What is missing.
        why: String,
    },
}

/// How selection checks the firecracker backend, which lives in its own crate
/// (`cloudterm-runtime-firecracker`): `Ok` with what the check saw, `Err` with what is missing.
/// The server passes one that boots a probe VM; [`select`] uses [`no_firecracker`].
pub type FirecrackerProbe<'a> = &'a dyn Fn() -> Result<String, String>;

/// The firecracker check of a server that has no firecracker settings.
pub fn no_firecracker() -> Result<String, String> {
    Err("no firecracker kernel is configured (runtime.firecracker_kernel)".into())
}

/// Picks a runtime without the firecracker backend. `auto` picks linux, else falls back to
/// process.
pub fn select(choice: RuntimeChoice) -> Result<Selection, RuntimeError> {
    select_with(choice, &no_firecracker)
}

/// Picks a runtime. `auto` tries firecracker (through `firecracker`), then linux, then falls
/// back to process.
pub fn select_with(choice: RuntimeChoice, firecracker: FirecrackerProbe<'_>) -> Result<Selection, RuntimeError> {
    match choice {
        RuntimeChoice::Exactly(kind) => {
            probe_with(kind, firecracker).map(|why| Selection { kind, reason: format!("requested explicitly; {why}") })
        }
        RuntimeChoice::Auto => {
            let mut passed_over = Vec::new();
            for kind in [RuntimeKind::Firecracker, RuntimeKind::Linux] {
                match probe_with(kind, firecracker) {
                    Ok(why) => {
                        let mut reason = format!("auto: {why}");
                        for skipped in &passed_over {
                            reason.push_str(&format!("; passed over: {skipped}"));
                        }
                        return Ok(Selection { kind, reason });
                    }
                    Err(err) => passed_over.push(err.to_string()),
                }
            }
            Ok(Selection {
                kind: RuntimeKind::Process,
                reason: format!(
                    "auto: falling back to the process runtime, which DOES NOT ISOLATE sandboxes from the host; {}",
                    passed_over.join("; ")
                ),
            })
        }
    }
}

/// Checks that a runtime works on this machine now; `Ok` carries what the check saw. The
/// firecracker runtime is unavailable here: see [`probe_with`].
pub fn probe(kind: RuntimeKind) -> Result<String, RuntimeError> {
    probe_with(kind, &no_firecracker)
}

/// [`probe`], checking firecracker through `firecracker`.
pub fn probe_with(kind: RuntimeKind, firecracker: FirecrackerProbe<'_>) -> Result<String, RuntimeError> {
    let unavailable = |why: String| RuntimeError::Unavailable { kind, why };
    match kind {
        RuntimeKind::Firecracker => firecracker().map_err(unavailable),
        RuntimeKind::Linux => probe_namespaces().map_err(unavailable),
        RuntimeKind::Process => Ok("the process runtime does not isolate sandboxes from the host".into()),
    }
}

/// Creates the namespaces a linux sandbox needs in a throwaway child.
///
/// The probe runs `unshare(1)` as a separate process rather than calling `unshare(2)` here:
/// the server is multi-threaded, and namespace work never happens inside it.
fn probe_namespaces() -> Result<String, String> {
    if !Path::new("/proc/self/ns/user").exists() {
        return Err("the kernel offers no user namespaces (/proc/self/ns/user is missing)".into());
    }
    let status = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--pid", "--net", "--uts", "--ipc", "--fork", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|err| format!("cannot run unshare(1) to probe namespaces: {err}"))?;
    if status.success() {
        Ok("user, mount, pid, net, uts and ipc namespaces can be created".into())
    } else {
        Err(format!("creating user, mount, pid, net, uts and ipc namespaces failed ({status})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_unknown_ones_are_refused() {
        assert_eq!("auto".parse::<RuntimeChoice>(), Ok(RuntimeChoice::Auto));
        assert_eq!("linux".parse::<RuntimeChoice>(), Ok(RuntimeChoice::Exactly(RuntimeKind::Linux)));
        let err = "docker".parse::<RuntimeChoice>().expect_err("docker is not a runtime");
        assert!(err.contains("docker"), "{err}");
    }

    #[test]
    fn explicit_process_is_always_available_and_warns() {
        let selection = select(RuntimeChoice::Exactly(RuntimeKind::Process)).expect("process works everywhere");
        assert_eq!(selection.kind, RuntimeKind::Process);
        assert!(selection.reason.contains("does not isolate"));
    }

    #[test]
    fn explicit_firecracker_fails_clearly_without_its_settings() {
        let err = select(RuntimeChoice::Exactly(RuntimeKind::Firecracker)).expect_err("no settings");
        assert!(err.to_string().contains("firecracker"), "{err}");
    }

    #[test]
    fn auto_picks_firecracker_exactly_when_its_probe_passes() {
        let works = || Ok("a probe VM booted".to_owned());
        let selection = select_with(RuntimeChoice::Auto, &works).expect("auto always selects");
        assert_eq!(selection.kind, RuntimeKind::Firecracker);
        assert_eq!(selection.reason, "auto: a probe VM booted");
        let fails = || Err("its agent did not answer".to_owned());
        let selection = select_with(RuntimeChoice::Auto, &fails).expect("auto always selects");
        assert_ne!(selection.kind, RuntimeKind::Firecracker);
        assert!(selection.reason.contains("its agent did not answer"), "{}", selection.reason);
    }

    #[test]
    fn auto_never_picks_firecracker_without_it_and_explains_itself() {
        let selection = select(RuntimeChoice::Auto).expect("auto always selects");
        assert_ne!(selection.kind, RuntimeKind::Firecracker);
        assert!(selection.reason.starts_with("auto:"));
        assert!(selection.reason.contains("firecracker"), "{}", selection.reason);
        // Where namespaces work (CI runs as root on Linux), auto must pick linux.
        if probe(RuntimeKind::Linux).is_ok() {
            assert_eq!(selection.kind, RuntimeKind::Linux);
        } else {
            assert_eq!(selection.kind, RuntimeKind::Process);
        }
    }
}
