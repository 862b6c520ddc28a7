//! `cloudterm-bench pause`: pause and resume of a sandbox through the API, and the first
//! command on a paused sandbox (resume + exec), beside the cgroup-v1 freezer driven by hand on a
//! bare cgroup holding one process (the floor any freezer-based pause stands on).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::Method;

use crate::{row, Client};

/// Times `n` rounds of pause, resume and "exec on a paused sandbox" through the API, then the
/// same freeze/thaw on a bare cgroup; prints the table.
pub async fn run(client: &Client, n: usize) -> anyhow::Result<()> {
    let id = client.create().await?;
    client.exec_true(&id).await?;
    let (mut pause, mut resume, mut wake, mut running) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let started = Instant::now();
        client.call(Method::POST, &format!("/sandboxes/{id}/pause"), None).await?;
        pause.push(started.elapsed());
        let started = Instant::now();
        client.call(Method::POST, &format!("/sandboxes/{id}/resume"), None).await?;
        resume.push(started.elapsed());
        let started = Instant::now();
        client.exec_true(&id).await?;
        running.push(started.elapsed());
        client.call(Method::POST, &format!("/sandboxes/{id}/pause"), None).await?;
        let started = Instant::now();
        client.exec_true(&id).await?;
        wake.push(started.elapsed());
    }
    client.delete(&id).await?;
    println!("| pause / resume | n | p50 | p99 |\n|---|---|---|---|");
    row("POST /sandboxes/{id}/pause", &mut pause);
    row("POST /sandboxes/{id}/resume", &mut resume);
    row("exec `true` on a running sandbox", &mut running);
    row("exec `true` on a paused sandbox (resume + exec)", &mut wake);
    match bare_freezer(n) {
        Ok((mut freeze, mut thaw)) => {
            row("bare cgroup v1 freezer: FROZEN written and reached", &mut freeze);
            row("bare cgroup v1 freezer: THAWED written", &mut thaw);
        }
        Err(err) => println!("| bare cgroup freezer | not run: {err} | | |"),
    }
    Ok(())
}

/// Freezes and thaws a fresh freezer cgroup holding one `sleep`, `n` times.
fn bare_freezer(n: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = PathBuf::from(format!("/sys/fs/cgroup/freezer/cloudterm-bench-{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut sleeper = Command::new("sleep").arg("600").spawn()?;
    let measured = (|| {
        std::fs::write(dir.join("cgroup.procs"), sleeper.id().to_string())?;
        let (mut freeze, mut thaw) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let started = Instant::now();
            set_state(&dir, "FROZEN")?;
            freeze.push(started.elapsed());
            let started = Instant::now();
            set_state(&dir, "THAWED")?;
            thaw.push(started.elapsed());
        }
        Ok((freeze, thaw))
    })();
    stop(&mut sleeper);
    let _ = std::fs::remove_dir(&dir);
    measured
}

/// Writes a freezer state and waits until the cgroup reports it (freezing is asynchronous).
fn set_state(dir: &Path, state: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join("freezer.state"), state)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(dir.join("freezer.state"))?.trim() != state {
        if Instant::now() > deadline {
            bail!("the freezer did not reach {state}");
        }
        std::thread::yield_now();
    }
    Ok(())
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
