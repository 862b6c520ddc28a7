//! Files: streamed upload/download, list, stat, mkdir, remove, rename, path resolution, errors.

use bytes::Bytes;
use cloudterm_runtime::agent_client::protocol::FileType;
use cloudterm_runtime::AgentError;
use futures_util::stream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use sha2::{Digest, Sha256};

use crate::Agent;

fn status_of<T: std::fmt::Debug>(r: Result<T, AgentError>) -> (u16, String) {
    match r {
        Err(AgentError::Remote { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn fifty_mib_round_trip_is_streamed_and_identical() {
    let a = Agent::start().await;
    const CHUNK: usize = 1024 * 1024;
    let mut sent = Sha256::new();
    let chunks: Vec<Bytes> = (0..50u32)
        .map(|i| {
            let c: Vec<u8> = (0..CHUNK).map(|j| (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8).collect();
            sent.update(&c);
            Bytes::from(c)
        })
        .collect();
    let sent = sent.finalize();
    let body = StreamBody::new(stream::iter(chunks.into_iter().map(|c| Ok::<_, std::io::Error>(Frame::data(c)))));
    let w = a.client.write_file("big/blob.bin", Some(0o640), body).await.expect("upload");
    assert_eq!(w.size, 50 * CHUNK as u64);
    assert_eq!(w.path, a.ws.join("big/blob.bin").display().to_string());

    let mut got = Sha256::new();
    let mut n = 0usize;
    let mut s = a.client.read_file("big/blob.bin").await.expect("download");
    while let Some(c) = s.chunk().await {
        let c = c.expect("chunk");
        n += c.len();
        got.update(&c);
    }
    assert_eq!(n, 50 * CHUNK);
    assert_eq!(got.finalize(), sent, "downloaded bytes differ");
    let st = a.client.stat("big/blob.bin").await.expect("stat");
    assert_eq!(st.mode, 0o640);
    // No temp files left behind next to the target.
    let names: Vec<String> = a.client.list("big").await.expect("list").entries.into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["blob.bin"]);
    let peak = a.peak_rss_kib();
    assert!(peak < 48 * 1024, "agent peak RSS {peak} KiB while moving 100 MiB");
}

#[tokio::test]
async fn list_stat_mkdir_remove_rename() {
    let a = Agent::start().await;
    let m = a.client.mkdir("a/b", true).await.expect("mkdir -p");
    assert_eq!(m.path, a.ws.join("a/b").display().to_string());
    assert_eq!(status_of(a.client.mkdir("a/b", false).await), (409, "already_exists".into()));
    assert_eq!(status_of(a.client.mkdir("x/y", false).await), (404, "not_found".into()));
    a.client.write_file_bytes("a/b/f.txt", Some(0o600), "hello").await.expect("write");

    let st = a.client.stat("a/b/f.txt").await.expect("stat");
    assert_eq!((st.name.as_str(), st.file_type, st.size, st.mode), ("f.txt", FileType::File, 5, 0o600));
    assert!(st.modified_at.ends_with('Z') && st.modified_at.len() == 20, "{}", st.modified_at);
    std::os::unix::fs::symlink("b/f.txt", a.ws.join("a/link")).expect("symlink");

    let l = a.client.list("a").await.expect("list");
    let kinds: Vec<(String, FileType)> = l.entries.iter().map(|e| (e.name.clone(), e.file_type)).collect();
    assert_eq!(kinds, vec![("b".into(), FileType::Dir), ("link".into(), FileType::Symlink)]);
    assert_eq!(status_of(a.client.list("a/b/f.txt").await), (409, "not_a_directory".into()));

    let r = a.client.rename("a/b/f.txt", "a/g.txt").await.expect("rename");
    assert_eq!(r.path, a.ws.join("a/g.txt").display().to_string());
    assert_eq!(status_of(a.client.stat("a/b/f.txt").await), (404, "not_found".into()));
    assert_eq!(a.client.read_file("a/g.txt").await.expect("read").read_to_end().await.expect("bytes"), b"hello");

    assert_eq!(status_of(a.client.remove("a", false).await), (409, "directory_not_empty".into()));
    a.client.remove("a/g.txt", false).await.expect("rm file");
    a.client.remove("a", true).await.expect("rm -r");
    assert_eq!(status_of(a.client.stat("a").await), (404, "not_found".into()));
    assert_eq!(status_of(a.client.remove("/", true).await).0, 400);
}

#[tokio::test]
async fn errors_have_fitting_statuses() {
    let a = Agent::start().await;
    assert_eq!(status_of(a.client.read_file("missing.txt").await), (404, "not_found".into()));
    assert_eq!(status_of(a.client.read_file(".").await), (409, "is_a_directory".into()));
    std::fs::create_dir(a.ws.join("d")).expect("mkdir");
    assert_eq!(status_of(a.client.write_file_bytes("d", None, "x").await), (409, "is_a_directory".into()));
    assert_eq!(status_of(a.client.stat("").await), (400, "bad_path".into()));
    assert_eq!(status_of(a.client.write_file_bytes("f", Some(0o70000), "x").await).0, 400);
}

#[tokio::test]
async fn dot_dot_resolves_lexically_inside_the_sandbox_root() {
    let a = Agent::start().await;
    // ws = <tmp>/<dir>/ws, so ../../etc/passwd is <tmp>/etc/passwd: resolved lexically from
    // the workspace, not confined to it (the sandbox boundary is the runtime's root).
    let expected = a.ws.parent().and_then(|p| p.parent()).expect("grandparent").join("etc/passwd");
    match a.client.stat("../../etc/passwd").await {
        Err(AgentError::Remote { status: 404, message, .. }) => {
            assert!(message.contains(&expected.display().to_string()), "{message}")
        }
        Ok(st) => assert_eq!(st.path, expected.display().to_string()),
        Err(e) => panic!("{e}"),
    }
    // Climbing past `/` stops at `/`.
    let deep = format!("{}etc/passwd", "../".repeat(40));
    let st = a.client.stat(&deep).await.expect("stat");
    assert_eq!(st.path, "/etc/passwd");
    let bytes = a.client.read_file(&deep).await.expect("read").read_to_end().await.expect("bytes");
    assert_eq!(
        bytes,
        std::fs::read("/etc/passwd").expect("host passwd"),
        "in the process runtime the sandbox root is the host's"
    );
    let st = a.client.stat("/../../etc/./passwd").await.expect("stat");
    assert_eq!(st.path, "/etc/passwd");
}
