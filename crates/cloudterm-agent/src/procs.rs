//! Starting processes and ending whole process trees.
//!
//! Every process the agent starts gets its own session and process group (`setsid`), a clean
//! environment (base + the sandbox's `--env` + the request's), and a marker variable
//! (`CLOUDTERM_PROC=<id>`). A tree is everything in that process group or session, every
//! descendant by parent pid, and every process carrying the marker: the marker survives
//! `setsid` and re-parenting, so a `setsid sleep 100 &` grandchild whose parent already died
//! is still found. Trees are signalled by scanning `/proc`.
#![allow(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The marker variable set in every started process.
pub const MARKER_VAR: &str = "CLOUDTERM_PROC";

/// Default `PATH` of started processes.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How processes are started in this sandbox.
#[derive(Debug)]
pub struct Spawner {
    /// Workspace root: default cwd and `$HOME`.
    pub workspace: std::path::PathBuf,
    /// The sandbox's environment (`--env K=V`), over the base.
    pub sandbox_env: Vec<(String, String)>,
    /// Process groups started and not yet ended: root pid → marker.
    pub live: Mutex<HashMap<i32, String>>,
    counter: AtomicU64,
    user: String,
}

impl Spawner {
    /// A spawner.
    pub fn new(workspace: std::path::PathBuf, sandbox_env: Vec<(String, String)>) -> Self {
        let user = user_name(nix::unistd::getuid().as_raw());
        Self { workspace, sandbox_env, live: Mutex::new(HashMap::new()), counter: AtomicU64::new(1), user }
    }

    /// A fresh marker value.
    pub fn new_marker(&self) -> String {
        format!("{}-{}", std::process::id(), self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// The environment of a started process.
    pub fn env(&self, extra: &BTreeMap<String, String>, marker: &str, term: Option<&str>) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let user = self.user.clone();
        env.insert("PATH".into(), DEFAULT_PATH.into());
        env.insert("HOME".into(), self.workspace.display().to_string());
        env.insert("USER".into(), user.clone());
        env.insert("LOGNAME".into(), user);
        env.insert("LANG".into(), "C.UTF-8".into());
        env.insert("TERM".into(), term.unwrap_or("dumb").into());
        for (k, v) in &self.sandbox_env {
            env.insert(k.clone(), v.clone());
        }
        for (k, v) in extra {
            env.insert(k.clone(), v.clone());
        }
        env.insert(MARKER_VAR.into(), marker.into());
        env.into_iter().collect()
    }

    /// A command for `argv` in `cwd` with the clean environment, in a process group of its
    /// own; with `ctty` (a PTY) in a session of its own with stdin as controlling terminal.
    ///
    /// The seccomp filter is not installed here: the agent installs it on itself at start-up
    /// (`--seccomp`), and every process it starts inherits it. That leaves plain commands
    /// without a `pre_exec` closure, so std spawns them with `posix_spawn` (vfork) instead of
    /// `fork`, which on this kind of VM halves the cost of a short exec. For the same reason
    /// the program is looked up in the command's own `PATH` here: std falls back to `fork`
    /// when it must search a `PATH` the child's environment overrides.
    pub fn command(
        &self,
        argv: &[String],
        cwd: &Path,
        env: &[(String, String)],
        ctty: bool,
    ) -> tokio::process::Command {
        let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(DEFAULT_PATH);
        let mut cmd = tokio::process::Command::new(resolve_program(&argv[0], path));
        cmd.arg0(&argv[0]).args(&argv[1..]).current_dir(cwd).env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        if ctty {
            // SAFETY: the closure runs in the forked child before exec and only makes
            // async-signal-safe calls: setsid and ioctl (no allocation, no locks).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        } else {
            cmd.process_group(0);
        }
        cmd
    }

    /// Records a started group so freeze/thaw reach it.
    pub fn register(&self, pid: i32, marker: &str) {
        self.lock().insert(pid, marker.to_owned());
    }

    /// Forgets an ended group.
    pub fn unregister(&self, pid: i32) {
        self.lock().remove(&pid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, String>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `sig` to every process of every live group; returns how many were signalled.
    pub fn signal_all(&self, sig: Signal) -> u32 {
        let groups: Vec<(i32, String)> = self.lock().iter().map(|(p, m)| (*p, m.clone())).collect();
        let mut n = 0;
        for (pid, marker) in groups {
            n += signal_tree(pid, &marker, sig);
        }
        n
    }
}

impl Spawner {
    /// Kills every live tree (at shutdown).
    pub fn kill_all(&self) {
        let groups: Vec<(i32, String)> = self.lock().iter().map(|(p, m)| (*p, m.clone())).collect();
        for (pid, marker) in groups {
            kill_tree(pid, &marker);
        }
    }
}

/// One process from `/proc`.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some(ProcStat { pid, ppid, pgrp, session, zombie: state == "Z" || state == "X" })
}

fn all_procs() -> Vec<ProcStat> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter_map(read_stat).collect()
}

fn has_marker(pid: i32, marker: &str) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    let needle = format!("{MARKER_VAR}={marker}");
    env.split(|b| *b == 0).any(|var| var == needle.as_bytes())
}

/// Every live (non-zombie) process of the tree rooted at `root` (see the module doc).
pub fn collect_tree(root: i32, marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let procs = all_procs();
    let mut set: HashSet<i32> = HashSet::new();
    for p in &procs {
        if p.pid == me || p.pid == 1 {
            continue;
        }
        if p.pid == root || p.pgrp == root || p.session == root || has_marker(p.pid, marker) {
            set.insert(p.pid);
        }
    }
    // Descendants by parent pid, to a fixpoint.
    loop {
        let before = set.len();
        for p in &procs {
            if p.pid != me && p.pid != 1 && set.contains(&p.ppid) {
                set.insert(p.pid);
            }
        }
        if set.len() == before {
            break;
        }
    }
    procs.iter().filter(|p| set.contains(&p.pid) && !p.zombie).map(|p| p.pid).collect()
}

/// Sends `sig` to the process group `root` and every process of its tree.
pub fn signal_tree(root: i32, marker: &str, sig: Signal) -> u32 {
    let _ = killpg(Pid::from_raw(root), sig);
    let pids = collect_tree(root, marker);
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), sig);
    }
    pids.len() as u32
}

/// The executable `program` names: itself when it contains a `/`, else the first executable
/// file of that name in `path`, else the bare name (so the spawn fails with "not found").
pub fn resolve_program(program: &str, path: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return program.into();
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return candidate;
        }
    }
    program.into()
}

/// Kills the whole tree with SIGKILL: stops it first (so nothing forks while it is scanned),
/// then kills, repeating until a scan finds nothing left.
pub fn kill_tree(root: i32, marker: &str) {
    signal_tree(root, marker, Signal::SIGSTOP);
    for _ in 0..10 {
        if signal_tree(root, marker, Signal::SIGKILL) == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Kills a tree when dropped, unless disarmed: an exec whose client went away (its future
/// dropped) leaves nothing running.
pub struct TreeGuard {
    /// Root pid.
    pub root: i32,
    /// Marker.
    pub marker: String,
    /// Spawner (to unregister).
    pub spawner: Arc<Spawner>,
    /// Whether to kill on drop.
    pub armed: bool,
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if self.armed {
            kill_tree(self.root, &self.marker);
        }
        self.spawner.unregister(self.root);
    }
}

/// Exit status as (code, signal).
pub fn status_parts(st: std::process::ExitStatus) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    (st.code(), st.signal())
}

/// Turns the request's `argv`/`command` into an argv.
pub fn argv_of(argv: &Option<Vec<String>>, command: &Option<String>) -> Result<Vec<String>, crate::util::ApiError> {
    match (argv, command) {
        (Some(a), None) if !a.is_empty() && !a[0].is_empty() => Ok(a.clone()),
        (None, Some(c)) => Ok(vec!["/bin/sh".into(), "-c".into(), c.clone()]),
        (Some(_), Some(_)) => Err(crate::util::ApiError::bad_request("give either argv or command, not both")),
        _ => Err(crate::util::ApiError::bad_request("give a non-empty argv or a command")),
    }
}

/// A random hex string of `n` bytes.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of `uid` from `/etc/passwd` (read directly: NSS does not work in a static binary).
fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 2 && f[2].parse::<u32>().ok() == Some(uid) {
            return f[0].to_owned();
        }
    }
    if uid == 0 {
        "root".into()
    } else {
        format!("u{uid}")
    }
}
