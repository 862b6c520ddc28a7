//! An S3 endpoint nobody answers on: every operation fails with `Unavailable` (not `NotFound`,
//! not a hang) once the retry budget is spent.

use std::time::{Duration, Instant};

use cloudterm_blobstore::{BlobStore, BlobStoreConfig, BlobStoreError, S3Config};

use crate::body::Body;

/// A loopback port with nothing listening (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_within_the_retry_budget() {
    let budget = Duration::from_secs(1);
    let config = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{}", closed_port())),
        region: "garage".into(),
        bucket: "nowhere".into(),
        access_key_id: Some("GK000000000000000000000000".into()),
        secret_access_key: Some("0".repeat(64)),
        allow_http: true,
        retry_budget: budget,
        ..S3Config::default()
    };
    let store = BlobStore::open(BlobStoreConfig::S3(config)).await.expect("opening sends nothing");
    let unavailable = |what: &str, result: Result<(), BlobStoreError>, started: Instant| {
        let elapsed = started.elapsed();
        match result {
            Err(BlobStoreError::Unavailable(message)) => assert!(!message.is_empty()),
            other => panic!("{what}: expected Unavailable, got {other:?}"),
        }
        // The budget plus one last attempt and a backoff step; far from object_store's default
        // of three minutes.
        assert!(elapsed < budget + Duration::from_secs(8), "{what} took {elapsed:?}");
    };
    let started = Instant::now();
    unavailable("check", store.check().await, started);
    let started = Instant::now();
    unavailable("put", store.put_stream("a/b", Body::eof(10)).await.map(drop), started);
    let started = Instant::now();
    unavailable("get", store.get_stream("a/b").await.map(drop), started);
    let started = Instant::now();
    unavailable("delete", store.delete("a/b").await, started);
    let started = Instant::now();
    unavailable("list", store.list("a").await.map(drop), started);
    // The sweep retries on its own (a few attempts, a few seconds at most).
    let swept = store.incomplete_uploads().await;
    assert!(matches!(swept, Err(BlobStoreError::Unavailable(_))), "{swept:?}");
}
