//! Background jobs: start, list, logs (plain, offset, follow), survival, stop.

use std::time::Duration;

use cloudterm_runtime::agent_client::protocol::{JobRequest, JobState};
use cloudterm_runtime::AgentError;

use crate::{assert_no_proc_survives, Agent};

fn job(c: &str) -> JobRequest {
    JobRequest { command: Some(c.into()), ..Default::default() }
}

#[tokio::test]
async fn logs_while_running_follow_until_exit_and_survive() {
    let a = Agent::start().await;
    let j = a
        .client
        .start_job(&job("for i in 1 2 3 4; do echo line$i; sleep 0.3; done; echo err >&2; exit 4"))
        .await
        .expect("start");
    assert!(j.job_id.starts_with("job_"));
    assert_eq!(j.state, JobState::Running);

    // Output shows up while the job still runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let l = a.client.job_logs(&j.job_id, false, 0).await.expect("logs");
        let text = l.stream.read_to_end().await.expect("bytes");
        if text.starts_with(b"line1\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no output yet: {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = a.client.list_jobs().await.expect("list");
    assert_eq!(listed.iter().find(|x| x.job_id == j.job_id).map(|x| x.state), Some(JobState::Running));

    // Follow from the start until the job ends.
    let l = a.client.job_logs(&j.job_id, true, 0).await.expect("follow");
    assert_eq!(l.offset, 0);
    let all = tokio::time::timeout(Duration::from_secs(10), l.stream.read_to_end())
        .await
        .expect("follow ends")
        .expect("bytes");
    assert_eq!(String::from_utf8_lossy(&all), "line1\nline2\nline3\nline4\nerr\n");

    let info = a.client.list_jobs().await.expect("list").into_iter().find(|x| x.job_id == j.job_id).expect("listed");
    assert_eq!((info.state, info.exit_code), (JobState::Exited, Some(4)));
    assert_eq!(info.log_bytes, all.len() as u64);
    assert!(info.ended_at.is_some());

    // Later, from a new connection, with an offset.
    let l = a.client.job_logs(&j.job_id, false, 6).await.expect("logs");
    assert_eq!(l.offset, 6);
    assert_eq!(l.stream.read_to_end().await.expect("bytes"), b"line2\nline3\nline4\nerr\n");
    // And the log lives in a file of the state dir, not in the agent's memory.
    assert!(a.dir.path().join(format!("state/jobs/{}.log", j.job_id)).exists());
}

#[tokio::test]
async fn stop_terminates_then_kills() {
    let a = Agent::start().await;
    // Ends on SIGTERM.
    let j = a.client.start_job(&job("sleep 9150")).await.expect("start");
    let t = std::time::Instant::now();
    let info = a.client.stop_job(&j.job_id, None).await.expect("stop");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!((info.state, info.signal), (JobState::Stopped, Some(15)));
    assert_no_proc_survives("sleep 9150", Duration::from_secs(2)).await;

    // Ignores SIGTERM (and has a setsid'd child): SIGKILL for the whole tree after the grace.
    let j = a.client.start_job(&job("trap '' TERM; setsid sleep 9151 & sleep 9152; sleep 9153")).await.expect("start");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = std::time::Instant::now();
    let info = a.client.stop_job(&j.job_id, Some(Duration::from_millis(500))).await.expect("stop");
    assert!(t.elapsed() >= Duration::from_millis(450), "the grace was honoured");
    assert_eq!(info.state, JobState::Stopped);
    for n in ["sleep 9151", "sleep 9152", "sleep 9153"] {
        assert_no_proc_survives(n, Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn unknown_job_is_404() {
    let a = Agent::start().await;
    for r in [
        a.client.stop_job("job_nope", None).await.map(|_| ()),
        a.client.job_logs("job_nope", false, 0).await.map(|_| ()),
    ] {
        assert!(matches!(r, Err(AgentError::Remote { status: 404, .. })), "{r:?}");
    }
}
