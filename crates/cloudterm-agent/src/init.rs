//! When the agent is PID 1 of a pid namespace it must reap orphans, but a `waitpid(-1)` in the
//! agent would steal exit statuses from tokio's child handling. So, before any thread exists,
//! the process forks: the parent stays a tiny init (reap everything, forward signals to the
//! agent, exit with the agent's status); the child is the agent proper, which only ever waits
//! for its own children. Orphans are re-parented to the init, never to the agent.
#![allow(unsafe_code)]

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// Forks; returns in the child (the agent). The parent never returns.
pub fn split_off_init() {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    // SAFETY: called from `main` before the tokio runtime or any other thread is created, so
    // the child is a complete copy of a single-threaded process.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
            // SAFETY: prctl with integer arguments; if the init dies, so does the agent.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            }
        }
        Ok(ForkResult::Parent { child }) => reap_forever(child, &set),
        Err(e) => {
            // Run without a separate init: orphans then stay zombies until the sandbox ends.
            eprintln!("cloudterm-agent: fork for init failed: {e}");
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
        }
    }
}

fn reap_forever(agent: Pid, set: &SigSet) -> ! {
    loop {
        let Ok(sig) = set.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = kill(agent, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == agent => std::process::exit(code),
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == agent => std::process::exit(128 + s as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
