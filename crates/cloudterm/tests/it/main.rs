//! End-to-end tests of the real `cloudterm` binary: what a new user types.

mod attach;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn cloudterm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cloudterm"));
    // A clean environment: no CLOUDTERM_* from the developer's shell leaks in.
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A `cloudterm serve` child, stopped on drop.
struct Served {
    child: Child,
    base: String,
    /// Everything the server wrote to stderr so far. A thread drains the pipe: a child whose
    /// stderr nobody reads blocks in its log writes once the pipe's 64 KiB fill, and a server
    /// stuck there cannot shut down in time (it was then SIGKILLed with its pool running).
    log: Arc<Mutex<String>>,
    /// The test's home: its data dir (`~/.local/share/cloudterm` or one a config names inside
    /// it) must hold no sandbox after a graceful stop.
    home: PathBuf,
}

impl Served {
    /// Waits until the server's log contains `needle`, and returns the log so far.
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log.lock().expect("log").clone();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in the server's log within 30 s: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    /// SIGTERM first: a graceful stop also stops the warm pool's sandboxes, which a SIGKILL
    /// would leave running until the next start on the same data dir (and a test's temporary
    /// data dir never sees one). SIGKILL only if it does not stop in time. After a graceful
    /// stop nothing may be left under `sandboxes/` (a sandbox's state dir, its mounts): that is
    /// how a leaked sandbox shows up here instead of on the machine after the run.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.assert_nothing_left();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            panic!("cloudterm serve did not stop within 30 s of SIGTERM; its log:\n{}", self.log.lock().expect("log"));
        }
    }
}

impl Served {
    fn assert_nothing_left(&self) {
        if std::thread::panicking() {
            return;
        }
        let mut data_dirs = vec![self.home.join(".local/share/cloudterm")];
        data_dirs.extend(std::fs::read_dir(&self.home).into_iter().flatten().flatten().map(|entry| entry.path()));
        let left: Vec<_> = data_dirs
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir.join("sandboxes")).into_iter().flatten().flatten())
            .map(|entry| entry.path())
            // The shared /etc template stays by design; a sandbox's state dir is `sbx_*`.
            .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("sbx_")))
            .collect();
        assert!(
            left.is_empty(),
            "left after a graceful stop: {left:?}; the server's log:\n{}",
            self.log.lock().expect("log")
        );
    }
}

fn serve(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let port = free_port();
    let mut command = cloudterm();
    command
        .env("HOME", home)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn serve");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("stderr");
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut log = sink.lock().expect("log");
            log.push_str(&line);
            log.push('\n');
        }
    });
    let served = Served { child, base: format!("http://127.0.0.1:{port}"), log, home: home.to_path_buf() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::blocking::get(format!("{}/health", served.base)).is_ok_and(|r| r.status() == 200) {
            return served;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cloudterm serve did not answer /health within 30 s");
}

#[test]
fn serve_with_no_configuration_then_token_then_me() {
    let home = tempfile::tempdir().expect("home");
    let served = serve(home.path(), &[], &[]);
    // The embedded default puts everything under ~/.local/share/cloudterm.
    let data_dir = home.path().join(".local/share/cloudterm");
    assert!(data_dir.join("cloudterm.db").is_file(), "sqlite store in the data dir");
    assert!(data_dir.join("identity/dev-ed25519.pk8").is_file(), "dev key in the data dir");
    assert!(data_dir.join("snapshots").is_dir(), "local snapshot storage in the data dir");

    let output = cloudterm().env("HOME", home.path()).args(["token", "alice"]).output().expect("token");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("utf8");
    let token = stdout.trim_end_matches('\n');
    assert_eq!(token.matches('.').count(), 2, "stdout is the JWT and nothing else: {stdout:?}");
    assert!(!token.contains(char::is_whitespace));

    let me: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("{}/me", served.base))
        .bearer_auth(token)
        .send()
        .expect("me")
        .json()
        .expect("json");
    assert_eq!(me["principal"], "alice");
}

#[test]
fn serve_logs_where_it_listens_which_runtime_and_how_to_get_a_token() {
    let home = tempfile::tempdir().expect("home");
    let served = serve(home.path(), &[], &[("CLOUDTERM_LOG_FORMAT", "json")]);
    let log = served.wait_for_log("listening on");
    let lines: Vec<&str> = log.lines().collect();
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
    }
    assert!(log.contains(&served.base.replace("http://", "")), "{log}");
    assert!(log.contains("\"runtime\""), "{log}");
    assert!(log.contains("auto:"), "the runtime choice says why: {log}");
    assert!(log.contains("cloudterm token alice"), "{log}");
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let home = tempfile::tempdir().expect("home");
    let mut served = serve(home.path(), &[], &[]);
    let sent = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().expect("kill");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = served.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bad_setting_stops_start_up_with_the_key_named() {
    let home = tempfile::tempdir().expect("home");
    let config = home.path().join("cloudterm.toml");
    std::fs::write(&config, "[http]\nrequest_timeout_seconds = 30\nmax_body_bites = 1\n").expect("write");
    let output = cloudterm().env("HOME", home.path()).args(["serve", "--config"]).arg(&config).output().expect("serve");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_body_bites"), "{stderr}");

    let output =
        cloudterm().env("HOME", home.path()).env("CLOUDTERM_RUNTIME", "docker").arg("serve").output().expect("serve");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CLOUDTERM_RUNTIME") && stderr.contains("runtime.kind"), "{stderr}");
}

#[test]
fn a_config_file_and_environment_are_honoured() {
    let home = tempfile::tempdir().expect("home");
    let data_dir = home.path().join("elsewhere");
    let config = home.path().join("cloudterm.toml");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n[auth]\nprincipal_claim = \"sub\"\n", data_dir.display().to_string()),
    )
    .expect("write");
    let served = serve(
        home.path(),
        &["--config", config.to_str().expect("utf8")],
        &[("CLOUDTERM_METRICS_REQUIRE_AUTH", "true")],
    );
    assert!(data_dir.join("cloudterm.db").is_file(), "data_dir from the file");
    let metrics = reqwest::blocking::get(format!("{}/metrics", served.base)).expect("metrics");
    assert_eq!(metrics.status(), 401, "metrics.require_auth from the environment");
    // `token` finds the same data dir through the same config file.
    let output =
        cloudterm().env("HOME", home.path()).args(["token", "bob", "--config"]).arg(&config).output().expect("token");
    let token = String::from_utf8(output.stdout).expect("utf8");
    let me = reqwest::blocking::Client::new()
        .get(format!("{}/me", served.base))
        .bearer_auth(token.trim())
        .send()
        .expect("me");
    assert_eq!(me.status(), 200);
}

#[test]
fn serve_help_documents_every_setting() {
    let output = cloudterm().args(["serve", "--help"]).output().expect("help");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf8");
    for needle in [
        "--config",
        "--data-dir",
        "--listen",
        "CLOUDTERM_CONFIG",
        "CLOUDTERM_DATA_DIR",
        "CLOUDTERM_AUTH_ISSUER",
        "CLOUDTERM_AUTH_JWKS_URL",
        "CLOUDTERM_AUTH_AUDIENCE",
        "CLOUDTERM_AUTH_PRINCIPAL_CLAIM",
        "CLOUDTERM_RUNTIME",
        "CLOUDTERM_STORAGE",
        "listeners.snapshot",
        "http.max_body_bytes",
    ] {
        assert!(help.contains(needle), "serve --help lacks {needle}");
    }
}

#[test]
fn token_refuses_bad_input_clearly() {
    let home = tempfile::tempdir().expect("home");
    let output =
        cloudterm().env("HOME", home.path()).args(["token", "alice", "--ttl", "forever"]).output().expect("token");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "nothing on stdout when it fails");
    let output = cloudterm().env("HOME", home.path()).args(["token", "al\u{7}ice"]).output().expect("token");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
}

fn client(home: &Path, served: &Served, token: &str) -> Command {
    let mut command = cloudterm();
    command.env("HOME", home).env("CLOUDTERM_URL", &served.base).env("CLOUDTERM_TOKEN", token);
    command
}

fn mint(home: &Path, principal: &str) -> String {
    let output = cloudterm().env("HOME", home).args(["token", principal]).output().expect("token");
    String::from_utf8(output.stdout).expect("utf8").trim().to_string()
}

#[test]
fn sandbox_and_exec_commands_drive_a_server() {
    let home = tempfile::tempdir().expect("home");
    let served = serve(home.path(), &[], &[("CLOUDTERM_RUNTIME", "process")]);
    let token = mint(home.path(), "alice");
    let output =
        client(home.path(), &served, &token).args(["sandbox", "create", "--env", "WHO=cli"]).output().expect("create");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let id = String::from_utf8(output.stdout).expect("utf8").trim().to_string();
    assert!(id.starts_with("sbx_"), "{id:?}");

    let output = client(home.path(), &served, &token)
        .args(["exec", &id, "--", "sh", "-c", "echo hi $WHO; echo err >&2; exit 4"])
        .output()
        .expect("exec");
    assert_eq!(output.status.code(), Some(4), "the command's exit code is ours");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hi cli\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");

    let listed = client(home.path(), &served, &token).args(["sandbox", "ls"]).output().expect("ls");
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));
    let removed = client(home.path(), &served, &token).args(["sandbox", "rm", &id]).output().expect("rm");
    assert!(removed.status.success());
    let listed = client(home.path(), &served, &token).args(["sandbox", "ls"]).output().expect("ls");
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&id));

    // Errors are clear and exit non-zero: unknown sandbox, no token.
    let output = client(home.path(), &served, &token).args(["exec", "sbx_nope", "--", "true"]).output().expect("exec");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("404"));
    let output = cloudterm()
        .env("HOME", home.path())
        .env("CLOUDTERM_URL", &served.base)
        .args(["sandbox", "ls"])
        .output()
        .expect("ls");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("CLOUDTERM_TOKEN"));
}

#[test]
fn sandboxes_survive_sigkill_of_serve_and_nothing_leaks() {
    let root = running_as_root();
    let runtime = if root { "linux" } else { "process" };
    if !root && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: this test must run as root to cover the linux runtime");
    }
    let home = tempfile::tempdir().expect("home");
    let env = [("CLOUDTERM_RUNTIME", runtime)];
    let mut served = serve(home.path(), &[], &env);
    let token = mint(home.path(), "alice");
    let id = create_sandbox(home.path(), &served, &token);
    let output = client(home.path(), &served, &token)
        .args(["exec", &id, "--", "sh", "-c", "echo kept > /workspace/f"])
        .output()
        .expect("exec");
    assert!(output.status.success());

    // SIGKILL: no graceful anything.
    served.child.kill().expect("kill -9");
    served.child.wait().expect("reap");
    let served = serve(home.path(), &[], &env);
    let output =
        client(home.path(), &served, &token).args(["exec", &id, "--", "cat", "/workspace/f"]).output().expect("exec");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "kept\n", "{}", String::from_utf8_lossy(&output.stderr));
    let removed = client(home.path(), &served, &token).args(["sandbox", "rm", &id]).output().expect("rm");
    assert!(removed.status.success());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mountinfo.contains(&id), "a mount of {id} was left");
    let procs = cloudterm_test_support::sandbox_processes(&id);
    assert!(procs.is_empty(), "processes of {id} were left: {procs:?}");
}

/// `cloudterm sandbox create` with default settings: the new sandbox's id.
fn create_sandbox(home: &Path, served: &Served, token: &str) -> String {
    let output = client(home, served, token).args(["sandbox", "create"]).output().expect("create");
    let id = String::from_utf8(output.stdout).expect("utf8").trim().to_string();
    assert!(id.starts_with("sbx_"), "{}", String::from_utf8_lossy(&output.stderr));
    id
}

/// Whether this test process runs as root (the linux runtime needs it).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// A live snapshot freezes the workspace's sandboxes for its walk. Killed in the middle, the
/// server never thaws them: the next start must (not mistake a frozen agent for a dead one and
/// throw the sandbox away), list nothing partial and leave no temporary object behind.
#[test]
fn a_sigkill_in_the_middle_of_a_snapshot_loses_no_sandbox_and_leaves_nothing_partial() {
    if !running_as_root() {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true: this test must run as root");
        eprintln!("SKIP: the linux runtime's freezer needs root");
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let env = [("CLOUDTERM_RUNTIME", "linux"), ("CLOUDTERM_WARM_POOL", "0")];
    let mut served = serve(home.path(), &[], &env);
    let token = mint(home.path(), "alice");
    let id = create_sandbox(home.path(), &served, &token);
    // Enough incompressible data that the snapshot takes a while.
    let output = client(home.path(), &served, &token)
        .args(["exec", &id, "--", "sh", "-c", "head -c 150M /dev/urandom > /workspace/big && echo kept > /workspace/f"])
        .output()
        .expect("exec");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let url = format!("{}/snapshot/create", served.base);
    let body = serde_json::json!({ "sandbox_id": id });
    let bearer = token.clone();
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build();
        let _ = client.and_then(|c| c.post(url).bearer_auth(bearer).json(&body).send());
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while cloudterm_test_support::freezer_state(&id).as_deref() != Some("FROZEN") {
        assert!(Instant::now() < deadline, "the sandbox was never frozen for the snapshot");
        std::thread::sleep(Duration::from_millis(5));
    }
    served.child.kill().expect("kill -9");
    served.child.wait().expect("reap");
    assert_eq!(
        cloudterm_test_support::freezer_state(&id).as_deref(),
        Some("FROZEN"),
        "the crash left it frozen (the case under test)"
    );

    let served = serve(home.path(), &[], &env);
    let output =
        client(home.path(), &served, &token).args(["exec", &id, "--", "cat", "/workspace/f"]).output().expect("exec");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "kept\n", "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(cloudterm_test_support::freezer_state(&id).as_deref(), Some("THAWED"));
    let output = client(home.path(), &served, &token).args(["snapshot", "list", "--json"]).output().expect("list");
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(listed["snapshots"], serde_json::json!([]), "nothing partial is listed");
    let storage = home.path().join(".local/share/cloudterm/snapshots");
    let mut files = Vec::new();
    let mut stack = vec![storage];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    assert!(files.is_empty(), "left in snapshot storage after the restart: {files:?}");
    let removed = client(home.path(), &served, &token).args(["sandbox", "rm", &id]).output().expect("rm");
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
}

/// The first file named `name` below `dir`: where local storage keeps a snapshot's object.
fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name().to_string_lossy() == name {
            return Some(path);
        }
    }
    None
}

#[test]
fn snapshot_commands_drive_a_server() {
    let home = tempfile::tempdir().expect("home");
    let served = serve(home.path(), &[], &[("CLOUDTERM_RUNTIME", "process")]);
    let token = mint(home.path(), "alice");
    let run = |args: &[&str]| {
        let output = client(home.path(), &served, &token).current_dir(home.path()).args(args).output().expect("run");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "cloudterm {args:?} failed: {stderr}");
        (stdout, stderr)
    };
    let (sandbox, _) = run(&["sandbox", "create"]);
    let sandbox = sandbox.trim();
    // The process runtime runs commands in the workspace directory, so paths are relative.
    run(&[
        "exec",
        sandbox,
        "--",
        "sh",
        "-c",
        "echo kept > notes.txt && mkdir -p src && echo 'fn main() {}' > src/main.rs",
    ]);

    let (snapshot, summary) = run(&["snapshot", "create", "--sandbox", sandbox, "--label", "first"]);
    let snapshot = snapshot.trim().to_string();
    assert!(snapshot.starts_with("snap_") && !snapshot.contains('\n'), "stdout is the id alone: {snapshot:?}");
    assert!(summary.contains("2 files") && summary.contains("stored"), "{summary}");
    let (json, _) = run(&["snapshot", "create", "--sandbox", sandbox, "--pin", "--json"]);
    let second: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(second["pinned"], true);
    assert_eq!(second["file_count"], 2);

    let (listed, _) = run(&["snapshot", "list"]);
    let rows: Vec<&str> = listed.lines().collect();
    assert!(rows[0].starts_with("ID"), "a table with a header: {listed}");
    assert!(rows[1].contains(second["snapshot_id"].as_str().expect("id")), "newest first: {listed}");
    assert!(rows[2].contains(&snapshot) && rows[2].contains("first"), "{listed}");

    run(&["snapshot", "download", &snapshot, "-o", "x.tar.zst"]);
    let archive = home.path().join("x.tar.zst");
    let listing = Command::new("tar").arg("--zstd").arg("-tf").arg(&archive).output().expect("tar");
    assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(names.lines().any(|l| l == "notes.txt") && names.contains("src/main.rs"), "{names}");
    let temps: Vec<_> = std::fs::read_dir(home.path())
        .expect("home")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(temps.is_empty(), "the temp file was renamed, not left: {temps:?}");
    // `-o -` streams the same bytes to stdout.
    let piped = client(home.path(), &served, &token).args(["snapshot", "download", &snapshot, "-o", "-"]).output();
    assert_eq!(piped.expect("download to stdout").stdout, std::fs::read(&archive).expect("archive"));

    run(&["exec", sandbox, "--", "sh", "-c", "rm notes.txt && echo changed > src/main.rs && echo junk > junk"]);
    // On a terminal (util-linux `script` gives it one) a spinner shows while the server works;
    // piped, as above, nothing but the result.
    let on_terminal = format!("{} snapshot restore {snapshot} --sandbox {sandbox}", env!("CARGO_BIN_EXE_cloudterm"));
    let mut script = Command::new("script");
    script.args(["-qec", &on_terminal, "/dev/null"]).current_dir(home.path()).env_clear();
    script.env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("HOME", home.path()).env("TERM", "xterm");
    script.env("CLOUDTERM_URL", &served.base).env("CLOUDTERM_TOKEN", &token);
    let output = script.output().expect("script");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("restoring snapshot") && shown.contains("restored 2 files"), "{shown:?}");
    let (restored, progress) = run(&["snapshot", "restore", &snapshot, "--sandbox", sandbox]);
    assert!(restored.contains("restored 2 files"), "{restored}");
    assert!(!progress.contains("restoring snapshot"), "no spinner when stderr is not a terminal: {progress}");
    let (files, _) = run(&["exec", sandbox, "--", "sh", "-c", "cat notes.txt src/main.rs; ls"]);
    assert_eq!(files, "kept\nfn main() {}\nnotes.txt\nsrc\n", "the snapshot's files, and only those, are back");

    // A new sandbox from the snapshot, after the workspace changed again.
    run(&["exec", sandbox, "--", "sh", "-c", "echo again > notes.txt"]);
    let (from_snapshot, _) = run(&["sandbox", "create", "--snapshot", &snapshot]);
    let from_snapshot = from_snapshot.trim();
    assert!(from_snapshot.starts_with("sbx_") && from_snapshot != sandbox, "{from_snapshot}");
    let (notes, _) = run(&["exec", from_snapshot, "--", "cat", "notes.txt"]);
    assert_eq!(notes, "kept\n");
    // Sandboxes outlive their server on purpose: remove this one so no agent is left running.
    run(&["sandbox", "rm", from_snapshot]);

    let (imported, summary) = run(&["snapshot", "import", "x.tar.zst", "--label", "from disk"]);
    let imported = imported.trim();
    assert!(imported.starts_with("snap_") && imported != snapshot, "{imported}");
    assert!(summary.contains("2 files"), "{summary}");
    let (listed, _) = run(&["snapshot", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed["snapshots"][0]["snapshot_id"], imported);
    assert_eq!(listed["snapshots"][0]["kind"], "import");
    assert_eq!(listed["snapshots"][0]["label"], "from disk");

    let (pinned, _) = run(&["snapshot", "pin", imported]);
    assert_eq!(pinned.trim(), format!("{imported} pinned"));
    let (unpinned, _) = run(&["snapshot", "pin", imported, "--off"]);
    assert_eq!(unpinned.trim(), format!("{imported} unpinned"));
    run(&["snapshot", "rm", imported]);
    let (listed, _) = run(&["snapshot", "list"]);
    assert!(!listed.contains(imported) && listed.contains(&snapshot), "{listed}");

    // Errors: the server's message, a non-zero exit, nothing on stdout, no file left behind.
    for args in [
        vec!["snapshot", "rm", imported],
        vec!["snapshot", "download", "snap_nope", "-o", "nope.tar.zst"],
        vec!["snapshot", "restore", "snap_nope"],
    ] {
        let output = client(home.path(), &served, &token).current_dir(home.path()).args(&args).output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("404") && stderr.contains("not found"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    assert!(!home.path().join("nope.tar.zst").exists());
    let garbage = home.path().join("garbage.tar.zst");
    std::fs::write(&garbage, b"not an archive").expect("write");
    let output = client(home.path(), &served, &token)
        .args(["snapshot", "import"])
        .arg(&garbage)
        .output()
        .expect("import garbage");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("422"), "{}", String::from_utf8_lossy(&output.stderr));

    // Stored bytes that no longer match the recorded SHA-256 fail the download loudly, and the
    // real name never appears.
    let data_dir = home.path().join(".local/share/cloudterm/snapshots");
    let object = find_file(&data_dir, &format!("{snapshot}.tar.zst")).expect("the stored object");
    let mut bytes = std::fs::read(&object).expect("object");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&object, bytes).expect("corrupt the object");
    let output = client(home.path(), &served, &token)
        .current_dir(home.path())
        .args(["snapshot", "download", &snapshot, "-o", "corrupt.tar.zst"])
        .output()
        .expect("download");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SHA-256 mismatch"));
    let left: Vec<_> = std::fs::read_dir(home.path())
        .expect("home")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("corrupt"))
        .collect();
    assert!(left.is_empty(), "nothing kept of a corrupt download: {left:?}");
    // Sandboxes outlive their server on purpose: remove this one so no agent is left running.
    run(&["sandbox", "rm", sandbox]);
}

fn stdout_of(output: &std::process::Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).expect("utf8")
}

#[test]
fn workspace_and_marketplace_commands_drive_a_server() {
    let home = tempfile::tempdir().expect("home");
    let served = serve(home.path(), &[], &[("CLOUDTERM_RUNTIME", "process")]);
    let alice = mint(home.path(), "alice");
    let bob = mint(home.path(), "bob");
    let run = |token: &str, args: &[&str]| client(home.path(), &served, token).args(args).output().expect("run");

    let ws = stdout_of(&run(&alice, &["workspace", "create", "ml", "--tag", "gpu", "--description", "models"]));
    let ws = ws.trim().to_string();
    assert!(ws.starts_with("ws_"), "{ws:?}");
    let output = run(&alice, &["workspace", "exec", &ws, "--", "sh", "-c", "echo in-$0 > f.txt; cat f.txt; exit 3"]);
    assert_eq!(output.status.code(), Some(3), "the command's exit code is ours");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "in-sh\n");

    // Bob sees nothing until Alice shares; then the workspace is listed with his permission.
    assert!(!stdout_of(&run(&bob, &["workspace", "ls", "--shared"])).contains(&ws));
    let output = run(&bob, &["workspace", "exec", &ws, "--", "true"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("404"), "{}", String::from_utf8_lossy(&output.stderr));
    stdout_of(&run(&alice, &["workspace", "share", &ws, "bob", "read"]));
    let listed = stdout_of(&run(&bob, &["workspace", "ls", "--shared"]));
    let line = listed.lines().find(|l| l.contains(&ws)).unwrap_or_else(|| panic!("not listed: {listed}"));
    assert!(line.contains("read") && line.contains("alice") && line.contains("gpu"), "{line}");
    let output = run(&bob, &["workspace", "exec", &ws, "--", "true"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("403"));
    stdout_of(&run(&alice, &["workspace", "share", &ws, "bob", "write"]));
    let output = run(&bob, &["workspace", "exec", &ws, "--", "cat", "f.txt"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "in-sh\n");
    let bad = run(&alice, &["workspace", "share", &ws, "bob", "owner"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("422"));
    stdout_of(&run(&alice, &["workspace", "revoke", &ws, "bob"]));
    assert!(!stdout_of(&run(&bob, &["workspace", "ls", "--shared"])).contains(&ws));

    // The marketplace: publish a worker with files, find it, show it, run it.
    let files = tempfile::tempdir().expect("files");
    std::fs::create_dir(files.path().join("lib")).expect("lib");
    std::fs::write(files.path().join("run.sh"), "echo quoted: $(cat \"$CLOUDTERM_WORKER_DIR/lib/word\")\n")
        .expect("run.sh");
    std::fs::write(files.path().join("lib/word"), "hello\n").expect("word");
    let files_dir = files.path().to_str().expect("utf8 path");
    let publish = |version: &str| {
        run(
            &alice,
            &[
                "marketplace",
                "publish",
                "--name",
                "quoter",
                "--version",
                version,
                "--description",
                "adds shell quoting",
                "--tag",
                "text",
                "--command",
                "sh \"$CLOUDTERM_WORKER_DIR/run.sh\"",
                "--files",
                files_dir,
            ],
        )
    };
    let worker = stdout_of(&publish("1.0.0")).trim().to_string();
    assert!(worker.starts_with("wkr_"), "{worker:?}");
    let again = publish("1.0.0");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"));
    let not_semver = publish("1.0");
    assert!(String::from_utf8_lossy(&not_semver.stderr).contains("422"));
    stdout_of(&publish("1.1.0"));

    let found = stdout_of(&run(&bob, &["marketplace", "search", "quoting"]));
    assert!(found.lines().any(|l| l.contains(&worker) && l.contains("1.1.0")), "{found}");
    assert_eq!(stdout_of(&run(&bob, &["marketplace", "search", "nothing-like-it"])).lines().count(), 1, "header only");
    let shown = stdout_of(&run(&bob, &["marketplace", "show", &worker]));
    assert!(shown.contains("1.1.0") && shown.contains("1.0.0") && shown.contains("[files]"), "{shown}");
    let output = run(&alice, &["marketplace", "run", &worker, "--workspace", &ws, "--version", "1.0.0"]);
    assert_eq!(stdout_of(&output), "quoted: hello\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("quoter 1.0.0"));
    let output = run(&bob, &["marketplace", "run", &worker, "--workspace", &ws]);
    assert_eq!(output.status.code(), Some(2), "bob no longer has access");

    // Sandboxes outlive `serve` on purpose: remove the one the workspace exec started.
    let listed = stdout_of(&run(&alice, &["sandbox", "ls"]));
    for id in listed.lines().skip(1).filter_map(|line| line.split_whitespace().next()) {
        stdout_of(&run(&alice, &["sandbox", "rm", id]));
    }
    let output = run(&alice, &["workspace", "rm", &ws]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn image_build_writes_the_firecracker_root_image_beside_the_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("tiny");
    std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
    std::fs::write(dir.join("etc/motd"), "welcome\n").expect("write");
    let agent = tmp.path().join("agent");
    std::fs::copy("/bin/sh", &agent).expect("a dynamically linked stand-in for the agent");
    let output = cloudterm().args(["image", "build"]).arg(&dir).arg("--agent").arg(&agent).output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let image = tmp.path().join("tiny.ext4");
    assert!(stdout.contains(&format!("wrote {}", image.display())), "{stdout}");
    assert!(stdout.contains("dynamically linked"), "a dynamic agent is pointed out: {stdout}");
    let motd = Command::new("debugfs").arg("-R").arg("cat /etc/motd").arg(&image).output().expect("debugfs");
    assert_eq!(String::from_utf8_lossy(&motd.stdout), "welcome\n");

    let output = cloudterm()
        .args(["image", "build"])
        .arg(tmp.path().join("missing"))
        .arg("--agent")
        .arg(&agent)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing"));
}
