//! `cloudterm attach` as a person uses it: the real binary on a real pseudo-terminal (its
//! controlling terminal, so SIGWINCH reaches it), against a real `cloudterm serve`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::{self, LocalModes, Winsize};

use crate::{client, mint, serve};

/// Long enough for a shell to start and answer on a loaded CI machine.
const WAIT: Duration = Duration::from_secs(30);

/// `cloudterm attach` running on a pseudo-terminal; everything it writes is collected.
struct Attached {
    child: Child,
    master: File,
    /// Our own handle on the terminal `attach` runs on, to read its settings.
    slave: Option<OwnedFd>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Attached {
    /// Starts `cloudterm attach ARGS` on a new `cols` × `rows` terminal, made its controlling
    /// terminal by `setsid --ctty` (as a login shell's terminal is).
    fn start(mut command: Command, args: &[&str], (cols, rows): (u16, u16)) -> Attached {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        let slave = rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY, Mode::empty()).expect("open pts");
        termios::tcsetwinsize(&slave, Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 })
            .expect("size");
        let stdio = || Stdio::from(slave.try_clone().expect("dup"));
        let child = command
            .args(["attach"])
            .args(args)
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio())
            .spawn()
            .expect("spawn attach");
        let master = File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup master");
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every handle on the terminal is closed.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        Attached { child, master, slave: Some(slave), output }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("lock")).into_owned()
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).expect("type");
    }

    /// Waits for `needle` in what `attach` wrote; fails with everything it wrote.
    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.output().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in what attach wrote:\n{:?}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `attach` to end.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "attach did not end; it wrote:\n{:?}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The terminal's local modes, as `attach` left them (or set them).
    fn local_modes(&self) -> LocalModes {
        termios::tcgetattr(self.slave.as_ref().expect("slave")).expect("tcgetattr").local_modes
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.slave = None;
    }
}

/// `setsid --ctty --wait cloudterm …` with the client's environment.
fn attach_command(home: &Path, served: &crate::Served, token: &str) -> Command {
    let cloudterm = client(home, served, token);
    let mut command = Command::new("setsid");
    command.args(["--ctty", "--wait"]).arg(cloudterm.get_program());
    command.env_clear();
    for (name, value) in cloudterm.get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    command
}

#[test]
fn attach_types_detaches_reattaches_and_exits_with_the_shells_code() {
    let home = tempfile::tempdir().expect("home");
    let served = serve(home.path(), &[], &[("CLOUDTERM_RUNTIME", "process")]);
    let token = mint(home.path(), "alice");
    let output = client(home.path(), &served, &token).args(["sandbox", "create"]).output().expect("create");
    let sandbox = String::from_utf8(output.stdout).expect("utf8").trim().to_string();
    assert!(sandbox.starts_with("sbx_"), "{}", String::from_utf8_lossy(&output.stderr));

    let mut first =
        Attached::start(attach_command(home.path(), &served, &token), &[&sandbox, "--session", "work"], (100, 30));
    // Typed keys reach the shell, its output reaches the terminal (the quotes keep the echo of
    // the command line from matching).
    first.type_keys(b"echo hel''lo-attach\r");
    first.wait_for("hello-attach");
    let raw = first.local_modes();
    assert!(!raw.contains(LocalModes::ICANON) && !raw.contains(LocalModes::ECHO), "attach runs in raw mode");

    // The shell sees the terminal's size, and its changes (SIGWINCH → a resize frame). The
    // resize and the keys race through attach, so ask again until the new size shows.
    first.type_keys(b"stty size\r");
    first.wait_for("30 100");
    termios::tcsetwinsize(&first.master, Winsize { ws_row: 41, ws_col: 123, ws_xpixel: 0, ws_ypixel: 0 })
        .expect("resize");
    let deadline = Instant::now() + WAIT;
    while !first.output().contains("41 123") {
        assert!(Instant::now() < deadline, "the shell never saw 123x41:\n{:?}", first.output());
        first.type_keys(b"stty size\r");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Ctrl-] detaches: attach exits 0, the terminal is back in its own mode, and the shell
    // runs on.
    first.type_keys(b"echo still-he''re\r");
    first.wait_for("still-here");
    first.type_keys(b"\x1d");
    let status = first.wait_exit();
    assert_eq!(status.code(), Some(0), "detaching exits 0; attach wrote:\n{:?}", first.output());
    first.wait_for("detached from session work");
    let restored = first.local_modes();
    assert!(restored.contains(LocalModes::ICANON | LocalModes::ECHO), "the terminal is restored: {restored:?}");

    // A second attach, with docker's detach keys, gets the same shell, its screen repainted.
    let mut second = Attached::start(
        attach_command(home.path(), &served, &token),
        &[&sandbox, "--session", "work", "--detach-keys", "ctrl-p,ctrl-q"],
        (100, 30),
    );
    second.wait_for("still-here");
    second.wait_for("hello-attach");
    // A lone Ctrl-P is not the sequence: it reaches the shell (readline's previous-history),
    // so Ctrl-P Enter runs the last command again.
    second.type_keys(b"echo $((6*7))-fr''om-history\r");
    second.wait_for("42-from-history");
    second.type_keys(b"\x10\r");
    let deadline = Instant::now() + WAIT;
    while second.output().matches("42-from-history").count() < 2 {
        assert!(Instant::now() < deadline, "Ctrl-P did not reach the shell:\n{:?}", second.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shell's exit code is attach's.
    second.type_keys(b"exit 3\r");
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(3), "attach wrote:\n{:?}", second.output());
    let restored = second.local_modes();
    assert!(restored.contains(LocalModes::ICANON | LocalModes::ECHO), "the terminal is restored: {restored:?}");

    // That session ended with its shell: the next attach gets a new one, and the first one's
    // output is gone.
    let mut third =
        Attached::start(attach_command(home.path(), &served, &token), &[&sandbox, "--session", "work"], (100, 30));
    third.type_keys(b"echo fre''sh\r");
    third.wait_for("fresh");
    assert!(!third.output().contains("still-here"), "{:?}", third.output());
    third.type_keys(b"exit\r");
    assert_eq!(third.wait_exit().code(), Some(0));
    let removed = client(home.path(), &served, &token).args(["sandbox", "rm", &sandbox]).output().expect("rm");
    assert!(removed.status.success());
}

#[test]
fn attach_refused_says_why_and_leaves_the_terminal_alone() {
    let home = tempfile::tempdir().expect("home");
    let served = serve(home.path(), &[], &[("CLOUDTERM_RUNTIME", "process")]);
    let token = mint(home.path(), "alice");
    let mut attached = Attached::start(attach_command(home.path(), &served, &token), &["sbx_nope"], (80, 24));
    let status = attached.wait_exit();
    assert_eq!(status.code(), Some(2));
    attached.wait_for("404");
    let modes = attached.local_modes();
    assert!(modes.contains(LocalModes::ICANON | LocalModes::ECHO), "the terminal was left alone: {modes:?}");

    // Bad detach keys are refused before anything connects.
    let output = client(home.path(), &served, &token)
        .args(["attach", "sbx_nope", "--detach-keys", "alt-x"])
        .output()
        .expect("attach");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("alt-x"));
}
