//! `PostgresServer`: a real PostgreSQL server for tests, initialised in a temporary directory,
//! listening on a free loopback port (and a Unix socket inside that directory), stopped on drop
//! or, for the shared one, when the test process exits.
//!
//! The binaries (`initdb`, `postgres`, `pg_isready`, `createdb`, `pg_ctl`) are found in
//! `CLOUDTERM_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` (Debian's layout), else the
//! directory `initdb` on `PATH` resolves to. Without them, [`PostgresServer::start`] skips
//! through [`crate::skip_unless`], which fails under `CI=true`; `.ci/run` installs `postgresql`.
//!
//! PostgreSQL refuses to run as root, so a root test process runs the server processes as the
//! `postgres` system user (else `nobody`) and hands it the temporary directory.
//!
//! Two ways to get one: [`PostgresServer::start`], a server of the test's own, stopped when
//! dropped (for tests that stop or reconfigure it), and [`PostgresServer::shared`], one server
//! per test process that tests share, each in databases of its own from
//! [`PostgresServer::create_database`]. `initdb` takes a second or two; a database, a tenth.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;

/// How long the server may take to accept connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The server [`PostgresServer::shared`] hands out, or why it could not start.
static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();

/// Run by `sh` beside the shared server, whose fixture is never dropped: `read` returns when the
/// test process exits (however it exits) and closes its end of the pipe on stdin; the server is
/// then stopped and its directory removed. `$1` is pg_ctl, `$2` the data dir, `$3` the temp dir.
const WATCHDOG: &str = r#"read -r _; "$1" stop -D "$2" -m immediate -w -t 10 >/dev/null 2>&1; rm -rf "$3""#;

/// A running PostgreSQL with one empty database, [`PostgresServer::DATABASE`], and the
/// superuser [`PostgresServer::USER`], which loopback and socket connections reach without a
/// password (`trust`: it is a throw-away server only this machine can reach).
pub struct PostgresServer {
    child: Option<Child>,
    /// The shared server's watchdog and the pipe whose closing wakes it.
    watchdog: Option<(Child, ChildStdin)>,
    /// Removed on drop, after the server stopped.
    dir: TempDir,
    cluster: Cluster,
    /// Numbers the databases [`PostgresServer::create_database`] makes.
    next_database: AtomicU32,
}

impl PostgresServer {
    /// The superuser, without a password.
    pub const USER: &'static str = "postgres";
    /// The database created at start.
    pub const DATABASE: &'static str = "cloudterm";

    /// The directory with the PostgreSQL server binaries, if this machine has them.
    pub fn bin_dir() -> Option<PathBuf> {
        let has_server = |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"));
        if let Some(dir) = std::env::var_os("CLOUDTERM_PG_BIN").filter(|value| !value.is_empty()) {
            return Some(PathBuf::from(dir)).filter(|dir| has_server(dir));
        }
        // Debian and Ubuntu keep the server binaries out of PATH, one directory per major version.
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((major, entry.path().join("bin")))
            })
            .filter(|(_, dir)| has_server(dir))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Some(dir);
        }
        // `initdb` on PATH may be a symlink; its real directory holds the other tools too.
        let path = std::env::var_os("PATH")?;
        let initdb = std::env::split_paths(&path).map(|dir| dir.join("initdb")).find(|p| is_executable(p))?;
        let dir = std::fs::canonicalize(initdb).ok()?.parent()?.to_path_buf();
        Some(dir).filter(|dir| has_server(dir))
    }

    /// Initialises a cluster in a new temporary directory, starts it and creates
    /// [`PostgresServer::DATABASE`]. `None` when PostgreSQL is not installed and the test should
    /// stop (under `CI=true` that panics instead); panics when it is installed but cannot start.
    pub async fn start() -> Option<PostgresServer> {
        let bin = Self::require_bin_dir()?;
        // initdb, the server start and createdb are blocking processes: keep them off the
        // test's async runtime, which may have a single thread.
        match tokio::task::spawn_blocking(move || Self::start_blocking(bin)).await {
            Ok(Ok(server)) => Some(server),
            Ok(Err(err)) => panic!("postgresql did not start: {err}"),
            Err(err) => panic!("postgresql start-up panicked: {err}"),
        }
    }

    /// The server shared by every test of this process, started by the first caller. Tests
    /// isolate themselves with [`PostgresServer::create_database`] and must not stop it (they
    /// cannot: it is only lent). It outlives the tests; a watchdog process stops it and removes
    /// its directory when this process exits. `None` as for [`PostgresServer::start`].
    pub async fn shared() -> Option<&'static PostgresServer> {
        let bin = Self::require_bin_dir()?;
        let shared = tokio::task::spawn_blocking(move || {
            SHARED.get_or_init(|| {
                Self::start_blocking(bin).and_then(|mut server| server.watch_for_exit().map(|()| server))
            })
        })
        .await;
        match shared {
            Ok(Ok(server)) => Some(server),
            Ok(Err(err)) => panic!("the shared postgresql did not start: {err}"),
            Err(err) => panic!("postgresql start-up panicked: {err}"),
        }
    }

    /// [`PostgresServer::bin_dir`], or `None` after [`crate::skip_unless`] said why.
    fn require_bin_dir() -> Option<PathBuf> {
        let bin = Self::bin_dir();
        let missing = crate::skip_unless(
            bin.is_some(),
            "no PostgreSQL server binaries (apt-get install postgresql, or set CLOUDTERM_PG_BIN to the directory \
             holding initdb and postgres)",
        );
        if missing {
            None
        } else {
            bin
        }
    }

    /// Starts the watchdog that stops this server when the test process exits (see [`WATCHDOG`]).
    fn watch_for_exit(&mut self) -> Result<(), String> {
        let mut watchdog = Command::new("/bin/sh");
        watchdog
            .args(["-c", WATCHDOG, "cloudterm-pg-watchdog"])
            .arg(self.cluster.bin.join("pg_ctl"))
            .arg(self.cluster.data_dir())
            .arg(&self.cluster.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.cluster.run_as {
            watchdog.uid(uid).gid(gid);
        }
        let mut child = watchdog.spawn().map_err(|err| format!("cannot start the watchdog: {err}"))?;
        let stdin = child.stdin.take().ok_or("the watchdog has no stdin")?;
        self.watchdog = Some((child, stdin));
        Ok(())
    }

    fn start_blocking(bin: PathBuf) -> Result<PostgresServer, String> {
        let dir =
            tempfile::Builder::new().prefix("cloudterm-pg-").tempdir().map_err(|err| format!("tempdir: {err}"))?;
        let run_as = if running_as_root() {
            let ids = system_user("postgres").or_else(|| system_user("nobody")).ok_or_else(|| {
                "running as root, and there is neither a postgres nor a nobody user to run PostgreSQL as".to_owned()
            })?;
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))
                .map_err(|err| format!("chown {}: {err}", dir.path().display()))?;
            Some(ids)
        } else {
            None
        };
        let cluster = Cluster { bin, dir: dir.path().to_path_buf(), port: 0, run_as };
        let mut server = PostgresServer { child: None, watchdog: None, dir, cluster, next_database: AtomicU32::new(1) };
        server.cluster.initdb()?;
        // A port picked by binding :0 may be taken again before the server binds it; try a few.
        let mut last_error = String::new();
        for _ in 0..3 {
            server.cluster.port = free_port()?;
            match server.spawn_and_wait() {
                Ok(()) => {
                    server.cluster.createdb(Self::DATABASE)?;
                    return Ok(server);
                }
                Err(err) => {
                    server.kill();
                    last_error = err;
                }
            }
        }
        Err(last_error)
    }

    /// Spawns the server on the cluster's port and waits until it accepts connections over TCP.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let cluster = &self.cluster;
        let mut postgres = cluster.command("postgres")?;
        postgres
            .arg("-D")
            .arg(cluster.data_dir())
            .args(["-p", &cluster.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", cluster.dir.display()))
            // Durability is pointless for a throw-away cluster; speed is not.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            // Room for many tests at once, each with a pool of its own.
            .args(["-c", "shared_buffers=32MB", "-c", "max_connections=400", "-c", "log_min_messages=warning"]);
        self.child = Some(postgres.spawn().map_err(|err| format!("cannot run postgres: {err}"))?);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                return Err(format!("postgres exited with {status}; log:\n{}", self.log()));
            }
            if self.cluster.is_ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not accepting connections after {START_TIMEOUT:?}; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates another empty database, named `cloudterm_N`, and returns its URL.
    pub async fn create_database(&self) -> String {
        let name = format!("cloudterm_{}", self.next_database.fetch_add(1, Ordering::Relaxed));
        let cluster = self.cluster.clone();
        let created = tokio::task::spawn_blocking(move || cluster.createdb(&name).map(|()| name)).await;
        match created {
            Ok(Ok(name)) => self.url(&name),
            Ok(Err(err)) => panic!("{err}"),
            Err(err) => panic!("createdb panicked: {err}"),
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{database}", Self::USER, self.cluster.port)
    }

    /// The URL of [`PostgresServer::DATABASE`].
    pub fn database_url(&self) -> String {
        self.url(Self::DATABASE)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// The directory holding the server's Unix socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// What initdb and the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cluster.log_path()).unwrap_or_default()
    }

    /// Stops the server now (a fast shutdown: clients are disconnected), so a test can watch its
    /// clients fail. Dropping the fixture also stops it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(mut pg_ctl) = self.cluster.command("pg_ctl") {
            pg_ctl.arg("stop").arg("-D").arg(self.cluster.data_dir()).args(["-m", "fast", "-w", "-t", "10"]);
            if pg_ctl.status().is_ok_and(|status| status.success()) {
                let _ = child.wait();
                return;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server at once (a start-up that failed half-way).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PostgresServer {
    /// A fast shutdown rather than a kill, so the server releases its shared memory before the
    /// directory goes.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a cluster lives and how to run its tools; cheap to clone onto a blocking thread.
#[derive(Clone)]
struct Cluster {
    bin: PathBuf,
    /// The temporary directory: data directory, log and Unix socket.
    dir: PathBuf,
    port: u16,
    /// The uid and gid the tools run as, when this process is root.
    run_as: Option<(u32, u32)>,
}

impl Cluster {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// A command for one of the binaries, run as the server's user, its output in the log.
    fn command(&self, name: &str) -> Result<Command, String> {
        let mut command = Command::new(self.bin.join(name));
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|err| format!("open the log: {err}"))?;
        let log_err = log.try_clone().map_err(|err| format!("clone the log: {err}"))?;
        command.stdin(Stdio::null()).stdout(log).stderr(log_err).env("LC_ALL", "C").env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        Ok(command)
    }

    /// Runs `command` to completion; an error names it and carries the log.
    fn run(&self, what: &str, mut command: Command) -> Result<(), String> {
        let status = command.status().map_err(|err| format!("cannot run {what}: {err}"))?;
        if status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            Err(format!("{what} failed with {status}; log:\n{log}"))
        }
    }

    fn initdb(&self) -> Result<(), String> {
        let mut initdb = self.command("initdb")?;
        // No fsync: the cluster is thrown away. C locale: the same text order on every machine.
        initdb
            .arg("--pgdata")
            .arg(self.data_dir())
            .args(["--username", PostgresServer::USER, "--auth", "trust", "--encoding", "UTF8", "--locale", "C"])
            .arg("--no-sync");
        self.run("initdb", initdb)
    }

    /// True once the server accepts connections on its TCP port.
    fn is_ready(&self) -> bool {
        let mut ready = Command::new(self.bin.join("pg_isready"));
        ready
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", PostgresServer::USER])
            .args(["-d", "postgres", "-t", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        ready.status().is_ok_and(|status| status.success())
    }

    fn createdb(&self, name: &str) -> Result<(), String> {
        let mut createdb = self.command("createdb")?;
        createdb.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", PostgresServer::USER, name]);
        self.run("createdb", createdb)
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// The uid and gid of a system user, from `/etc/passwd`.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
