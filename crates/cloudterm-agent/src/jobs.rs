//! Background jobs: started, listed, their combined output read (and followed), stopped.
//!
//! A job's stdout and stderr share one pipe; the agent copies it into a spool in the state
//! directory (`jobs/<id>.log`, rotated to `<id>.log.1` at [`SEGMENT_BYTES`], so at most two
//! segments stay on disk). Offsets are logical (bytes produced since the start), so a reader
//! resumes with `offset=`; output older than the kept segments is skipped, and the
//! `x-cloudterm-log-offset` header says where the answer really starts.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cloudterm_agent_protocol::{JobInfo, JobList, JobRequest, JobState, DEFAULT_STOP_GRACE_MS, HEADER_LOG_OFFSET};
use hyper::{Response, StatusCode};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::procs;
use crate::util::{json_response, query_bool, query_param, rfc3339, ApiError, ChannelBody, RespBody};
use crate::State;

/// Size at which a job's log segment is rotated.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug)]
struct Spool {
    cur: Arc<std::fs::File>,
    cur_start: u64,
    prev: Option<(Arc<std::fs::File>, u64)>,
    written: u64,
}

#[derive(Debug)]
struct Status {
    state: JobState,
    exit_code: Option<i32>,
    signal: Option<i32>,
    ended_at: Option<String>,
    stop_requested: bool,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    id: String,
    command: String,
    started_at: String,
    pid: i32,
    marker: String,
    spool: Mutex<Spool>,
    status: Mutex<Status>,
    /// Bumped on every write and at the end; followers wait on it. `true` once ended.
    progress: watch::Sender<(u64, bool)>,
}

/// Every job of this agent.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<Vec<Arc<Job>>>,
    by_id: Mutex<HashMap<String, Arc<Job>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Job {
    fn info(&self) -> JobInfo {
        let st = lock(&self.status);
        JobInfo {
            job_id: self.id.clone(),
            command: self.command.clone(),
            state: st.state,
            exit_code: st.exit_code,
            signal: st.signal,
            started_at: self.started_at.clone(),
            ended_at: st.ended_at.clone(),
            log_bytes: lock(&self.spool).written,
        }
    }

    fn append(&self, dir: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
        let mut sp = lock(&self.spool);
        let pos = sp.written - sp.cur_start;
        sp.cur.write_all_at(data, pos)?;
        sp.written += data.len() as u64;
        if sp.written - sp.cur_start >= SEGMENT_BYTES {
            let cur = dir.join(format!("{}.log", self.id));
            let old = dir.join(format!("{}.log.1", self.id));
            std::fs::rename(&cur, &old)?;
            let fresh = Arc::new(open_log(&cur)?);
            let prev = std::mem::replace(&mut sp.cur, fresh);
            sp.prev = Some((prev, sp.cur_start));
            sp.cur_start = sp.written;
        }
        let w = sp.written;
        drop(sp);
        self.progress.send_modify(|p| p.0 = w);
        Ok(())
    }

    /// The file and range holding logical offset `pos`, or where reading must restart.
    fn locate(&self, pos: u64) -> Locate {
        let sp = lock(&self.spool);
        let earliest = sp.prev.as_ref().map(|p| p.1).unwrap_or(sp.cur_start);
        if pos < earliest {
            return Locate::Skip(earliest);
        }
        if pos >= sp.written {
            return Locate::End;
        }
        if pos >= sp.cur_start {
            return Locate::At(sp.cur.clone(), pos - sp.cur_start, sp.written - pos);
        }
        match &sp.prev {
            Some((f, start)) => Locate::At(f.clone(), pos - start, sp.cur_start - pos),
            None => Locate::Skip(sp.cur_start),
        }
    }
}

enum Locate {
    Skip(u64),
    End,
    At(Arc<std::fs::File>, u64, u64),
}

fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(path)
}

impl Jobs {
    fn get(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        lock(&self.by_id)
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "job_not_found", format!("no job {id}")))
    }
}

/// `POST /v1/jobs`.
pub async fn start(state: Arc<State>, req: JobRequest) -> Result<Response<RespBody>, ApiError> {
    let argv = procs::argv_of(&req.argv, &req.command)?;
    let cwd = crate::exec::working_dir(&state, req.cwd.as_deref())?;
    let internal = |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
    let id = format!("job_{}", procs::random_hex(8));
    let dir = state.state_dir.join("jobs");
    std::fs::create_dir_all(&dir).map_err(internal)?;
    let log = open_log(&dir.join(format!("{id}.log"))).map_err(internal)?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal(e.into()))?;
    let wr2 = wr.try_clone().map_err(internal)?;
    let marker = state.spawner.new_marker();
    let env = state.spawner.env(&req.env, &marker, None);
    let mut cmd = state.spawner.command(&argv, &cwd, &env, false);
    cmd.stdin(Stdio::null()).stdout(Stdio::from(wr)).stderr(Stdio::from(wr2));
    let mut child = cmd.spawn().map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "spawn_failed", format!("cannot start {}: {e}", argv[0]))
    })?;
    // The parent's copies of the write end went with `cmd`'s Stdio; drop `cmd` so the pipe
    // reaches EOF when the job (and its descendants) close it.
    drop(cmd);
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    state.spawner.register(pid, &marker);
    let command = req.command.clone().unwrap_or_else(|| argv.join(" "));
    let (progress, _) = watch::channel((0, false));
    let job = Arc::new(Job {
        id: id.clone(),
        command,
        started_at: rfc3339(SystemTime::now()),
        pid,
        marker,
        spool: Mutex::new(Spool { cur: Arc::new(log), cur_start: 0, prev: None, written: 0 }),
        status: Mutex::new(Status {
            state: JobState::Running,
            exit_code: None,
            signal: None,
            ended_at: None,
            stop_requested: false,
        }),
        progress,
    });
    lock(&state.jobs.jobs).push(job.clone());
    lock(&state.jobs.by_id).insert(id.clone(), job.clone());

    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(rd).map_err(internal)?;
    let copier = {
        let job = job.clone();
        tokio::spawn(async move {
            let mut reader = reader;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if job.append(&dir, &buf[..n]).is_err() {
                            // Disk full or similar: keep draining so the job never blocks.
                            continue;
                        }
                    }
                }
            }
        })
    };
    let spawner = state.spawner.clone();
    let waiter_job = job.clone();
    tokio::spawn(async move {
        let st = child.wait().await;
        let mut copier = copier;
        if tokio::time::timeout(Duration::from_secs(1), &mut copier).await.is_err() {
            copier.abort();
        }
        spawner.unregister(pid);
        let (code, sig) = st.map(procs::status_parts).unwrap_or((None, None));
        let mut s = lock(&waiter_job.status);
        s.state = if s.stop_requested { JobState::Stopped } else { JobState::Exited };
        s.exit_code = code;
        s.signal = sig;
        s.ended_at = Some(rfc3339(SystemTime::now()));
        drop(s);
        waiter_job.progress.send_modify(|p| p.1 = true);
    });
    Ok(json_response(StatusCode::CREATED, &job.info()))
}

/// `GET /v1/jobs`.
pub async fn list(state: Arc<State>) -> Result<Response<RespBody>, ApiError> {
    let jobs = lock(&state.jobs.jobs).iter().map(|j| j.info()).collect();
    Ok(json_response(StatusCode::OK, &JobList { jobs }))
}

/// `GET /v1/jobs/{id}/logs?follow=&offset=`: raw combined output from `offset`; with
/// `follow=true` the stream stays open until the job ended and everything was sent.
pub async fn logs(state: Arc<State>, id: &str, q: Vec<(String, String)>) -> Result<Response<RespBody>, ApiError> {
    let job = state.jobs.get(id)?;
    let follow = query_bool(&q, "follow");
    let mut pos = match query_param(&q, "offset") {
        Some(o) => o.parse::<u64>().map_err(|_| ApiError::bad_request("offset must be a non-negative integer"))?,
        None => 0,
    };
    if let Locate::Skip(p) = job.locate(pos) {
        pos = p;
    }
    let start = pos;
    let (tx, body) = ChannelBody::channel(4);
    let mut rx = job.progress.subscribe();
    tokio::spawn(async move {
        loop {
            rx.borrow_and_update();
            match job.locate(pos) {
                Locate::Skip(p) => pos = p,
                Locate::At(file, off, avail) => {
                    let mut buf = vec![0u8; avail.min(64 * 1024) as usize];
                    match file.read_at(&mut buf, off) {
                        Ok(0) => tokio::time::sleep(Duration::from_millis(5)).await,
                        Ok(n) => {
                            buf.truncate(n);
                            pos += n as u64;
                            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                Locate::End => {
                    let done = rx.borrow().1;
                    if !follow || done {
                        // Re-check: output written just before the end was flagged.
                        if matches!(job.locate(pos), Locate::End) {
                            return;
                        }
                        continue;
                    }
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return },
                        () = tx.closed() => return,
                    }
                }
            }
        }
    });
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/octet-stream"));
    h.insert(HEADER_LOG_OFFSET, hyper::header::HeaderValue::from(start));
    Ok(r)
}

/// `DELETE /v1/jobs/{id}?grace_ms=`: SIGTERM to the job's process group, SIGKILL to its whole
/// tree after the grace period; answers the job once it ended.
pub async fn stop(state: Arc<State>, id: &str, q: Vec<(String, String)>) -> Result<Response<RespBody>, ApiError> {
    let job = state.jobs.get(id)?;
    let grace = match query_param(&q, "grace_ms") {
        Some(g) => g.parse::<u64>().map_err(|_| ApiError::bad_request("grace_ms must be a non-negative integer"))?,
        None => DEFAULT_STOP_GRACE_MS,
    };
    let mut rx = job.progress.subscribe();
    if rx.borrow().1 {
        return Ok(json_response(StatusCode::OK, &job.info()));
    }
    lock(&job.status).stop_requested = true;
    let pg = Pid::from_raw(job.pid);
    let _ = killpg(pg, Signal::SIGTERM);
    // A frozen job must run to act on SIGTERM.
    let _ = killpg(pg, Signal::SIGCONT);
    let ended = tokio::time::timeout(Duration::from_millis(grace), rx.wait_for(|p| p.1)).await.is_ok();
    if !ended {
        // Inline: no new thread may be possible at the pids limit (see exec.rs).
        procs::kill_tree(job.pid, &job.marker);
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| p.1)).await;
    }
    Ok(json_response(StatusCode::OK, &job.info()))
}
