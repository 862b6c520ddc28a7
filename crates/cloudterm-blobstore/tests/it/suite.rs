//! The behaviour every backend must have, written once and run against local disk and Garage.

use std::time::{Duration, Instant};

use cloudterm_blobstore::{BlobStore, BlobStoreConfig, BlobStoreError};
use cloudterm_test_support::GarageServer;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use crate::body::{Body, End};

const MIB: u64 = 1024 * 1024;
/// The S3 backend's default part size: sizes around it cross the single-put/multipart border.
const PART: u64 = 8 * MIB;

/// A store and whatever must outlive it.
pub struct Fixture {
    pub store: BlobStore,
    _local: Option<tempfile::TempDir>,
    garage: Option<GarageServer>,
}

impl Fixture {
    async fn local() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(BlobStoreConfig::Local { root: dir.path().join("objects") }).await.expect("open");
        Fixture { store, _local: Some(dir), garage: None }
    }

    async fn s3() -> Option<Fixture> {
        let garage = GarageServer::start().await?;
        let store = BlobStore::open(garage.blob_config("cloudterm/test")).await.expect("open");
        Some(Fixture { store, _local: None, garage: Some(garage) })
    }

    /// Garage's log, to explain a failure.
    fn log(&self) -> String {
        self.garage.as_ref().map(GarageServer::log).unwrap_or_default()
    }
}

/// Each behaviour becomes `local::NAME` and `s3::NAME`.
macro_rules! behaviours {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = super::Fixture::local().await;
                    super::$name(&fixture).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fixture) = super::Fixture::s3().await else { return };
                    super::$name(&fixture).await;
                }
            )*
        }
    };
}

behaviours!(
    a_large_object_round_trips_with_its_size_and_hash,
    sizes_around_the_part_size_round_trip,
    a_missing_key_is_not_found,
    delete_removes_and_is_idempotent,
    a_body_that_fails_midway_leaves_nothing,
    a_cancelled_put_leaves_nothing,
    a_crashed_put_is_found_and_aborted_by_the_sweep,
    invalid_keys_are_refused,
    list_is_by_whole_segment_prefix,
    check_passes_and_leaves_nothing,
);

async fn read_all_hashed(store: &BlobStore, key: &str) -> (u64, u64, String) {
    let mut reader = store.get_stream(key).await.unwrap_or_else(|err| panic!("get {key}: {err}"));
    let announced = reader.size_bytes();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = reader.read(&mut buffer).await.expect("read the object");
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    (announced, total, hex::encode(hasher.finalize()))
}

async fn put_and_compare(fixture: &Fixture, key: &str, size: u64) {
    let store = &fixture.store;
    let outcome = store.put_stream(key, Body::eof(size)).await.unwrap_or_else(|err| panic!("put {size}: {err}"));
    let expected = Body::sha256_hex(size);
    assert_eq!(outcome.size_bytes, size);
    assert_eq!(outcome.sha256_hex, expected, "the put's hash is over the bytes given");
    let (announced, read, hash) = read_all_hashed(store, key).await;
    assert_eq!((announced, read), (size, size), "size of {key}");
    assert_eq!(hash, expected, "bytes of {key} read back");
    assert_eq!(store.head(key).await.expect("head").size_bytes, size);
}

async fn a_large_object_round_trips_with_its_size_and_hash(fixture: &Fixture) {
    // Five parts on S3 (the last one short), streamed in and out.
    put_and_compare(fixture, "snapshots/alice/snap_1.tar.zst", 40 * MIB + 12_345).await;
    assert!(fixture.store.incomplete_uploads().await.expect("uploads").is_empty(), "{}", fixture.log());
    // Replacing it: readers see the new object.
    put_and_compare(fixture, "snapshots/alice/snap_1.tar.zst", 3 * MIB).await;
}

async fn sizes_around_the_part_size_round_trip(fixture: &Fixture) {
    for size in [0, 1, PART - 1, PART, PART + 1] {
        put_and_compare(fixture, &format!("sizes/{size}"), size).await;
    }
}

async fn a_missing_key_is_not_found(fixture: &Fixture) {
    let store = &fixture.store;
    assert!(matches!(store.get_stream("no/such/object").await, Err(BlobStoreError::NotFound(_))));
    assert!(matches!(store.head("no/such/object").await, Err(BlobStoreError::NotFound(_))));
    store.delete("no/such/object").await.expect("deleting nothing is fine");
}

async fn delete_removes_and_is_idempotent(fixture: &Fixture) {
    let store = &fixture.store;
    store.put_stream("gc/a", Body::eof(1000)).await.expect("put");
    store.put_stream("gc/b", Body::eof(1000)).await.expect("put");
    store.delete("gc/a").await.expect("delete");
    let keys: Vec<String> = store.list("gc").await.expect("list").into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["gc/b"]);
    assert!(matches!(store.get_stream("gc/a").await, Err(BlobStoreError::NotFound(_))));
    store.delete("gc/a").await.expect("again");
}

async fn a_body_that_fails_midway_leaves_nothing(fixture: &Fixture) {
    let store = &fixture.store;
    store.put_stream("fail/kept", Body::eof(100)).await.expect("put the old object");
    for (key, size) in [("fail/kept", 20 * MIB), ("fail/new", 20 * MIB), ("fail/small", MIB)] {
        let err = store.put_stream(key, Body::new(size, End::Fail)).await.expect_err("the body fails");
        assert!(matches!(err, BlobStoreError::Body(_)), "{err}");
    }
    assert!(matches!(store.head("fail/new").await, Err(BlobStoreError::NotFound(_))));
    assert!(matches!(store.head("fail/small").await, Err(BlobStoreError::NotFound(_))));
    let (_, size, hash) = read_all_hashed(store, "fail/kept").await;
    assert_eq!((size, hash), (100, Body::sha256_hex(100)), "a failed put leaves the old object");
    let keys: Vec<String> = store.list("").await.expect("list").into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["fail/kept"]);
    let uploads = store.incomplete_uploads().await.expect("uploads");
    assert!(uploads.is_empty(), "a failed multipart upload is aborted, not left: {uploads:?}");
}

/// Starts a put whose body stalls after `size` bytes and returns it once the body got there.
async fn stalled_put<'a>(store: &'a BlobStore, key: &'static str, size: u64) -> impl std::future::Future + Send + 'a {
    let (reached, stalled) = oneshot::channel();
    let mut put = Box::pin(store.put_stream(key, Body::new(size, End::Stall(Some(reached)))));
    tokio::select! {
        result = &mut put => panic!("a stalled body cannot finish: {result:?}"),
        _ = stalled => {}
    }
    put
}

async fn a_cancelled_put_leaves_nothing(fixture: &Fixture) {
    let store = &fixture.store;
    let put = stalled_put(store, "cancel/object", 20 * MIB).await;
    drop(put);
    // On S3 the abort runs in a spawned task: give it a bounded moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let uploads = store.incomplete_uploads().await.expect("uploads");
        if uploads.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "a cancelled upload is aborted: {uploads:?}\n{}", fixture.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(store.head("cancel/object").await, Err(BlobStoreError::NotFound(_))));
    assert!(store.list("").await.expect("list").is_empty());
}

async fn a_crashed_put_is_found_and_aborted_by_the_sweep(fixture: &Fixture) {
    let store = &fixture.store;
    let put = stalled_put(store, "crash/object", 20 * MIB).await;
    // A crash: the future is neither finished nor dropped, so nothing cleans up after it.
    std::mem::forget(put);
    let uploads = store.incomplete_uploads().await.expect("uploads");
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].key, "crash/object");
    let young = store.abort_incomplete_uploads(Duration::from_secs(3600)).await.expect("sweep");
    assert!(young.is_empty(), "an upload younger than the threshold may still be running: {young:?}");
    let aborted = store.abort_incomplete_uploads(Duration::ZERO).await.expect("sweep");
    assert_eq!(aborted, uploads);
    assert!(store.incomplete_uploads().await.expect("uploads").is_empty());
    assert!(matches!(store.head("crash/object").await, Err(BlobStoreError::NotFound(_))));
}

async fn invalid_keys_are_refused(fixture: &Fixture) {
    let store = &fixture.store;
    let too_long = "k/".repeat(600);
    let bad = ["", "/etc/passwd", "../escape", "a/../../escape", "a//b", "a/", "./a", "nul\0", too_long.as_str()];
    for key in bad {
        let invalid = |result: Result<(), BlobStoreError>| matches!(result, Err(BlobStoreError::InvalidKey { .. }));
        assert!(invalid(store.put_stream(key, Body::eof(1)).await.map(drop)), "put {key:?}");
        assert!(invalid(store.get_stream(key).await.map(drop)), "get {key:?}");
        assert!(invalid(store.head(key).await.map(drop)), "head {key:?}");
        assert!(invalid(store.delete(key).await), "delete {key:?}");
    }
    assert!(matches!(store.list("../").await, Err(BlobStoreError::InvalidKey { .. })));
    assert!(store.list("").await.expect("list").is_empty(), "nothing was written");
}

async fn list_is_by_whole_segment_prefix(fixture: &Fixture) {
    let store = &fixture.store;
    for (key, size) in [("snapshots/al/1", 1), ("snapshots/al/sub/2", 2), ("snapshots/alice/3", 3), ("other", 4)] {
        store.put_stream(key, Body::eof(size)).await.expect("put");
    }
    let listed = |objects: Vec<cloudterm_blobstore::ObjectInfo>| {
        objects.into_iter().map(|o| (o.key, o.size_bytes)).collect::<Vec<_>>()
    };
    let al = vec![("snapshots/al/1".to_string(), 1), ("snapshots/al/sub/2".to_string(), 2)];
    assert_eq!(listed(store.list("snapshots/al").await.expect("list")), al);
    assert_eq!(listed(store.list("snapshots/al/").await.expect("list")), al);
    assert_eq!(store.list("snapshots").await.expect("list").len(), 3);
    assert_eq!(store.list("").await.expect("list").len(), 4);
    assert!(store.list("nothing/here").await.expect("list").is_empty());
    let info = store.head("snapshots/alice/3").await.expect("head");
    let age = std::time::SystemTime::now().duration_since(info.last_modified).unwrap_or_default();
    assert!(age < Duration::from_secs(300), "last_modified is about now: {age:?}");
}

async fn check_passes_and_leaves_nothing(fixture: &Fixture) {
    fixture.store.check().await.unwrap_or_else(|err| panic!("check: {err}\n{}", fixture.log()));
    assert!(fixture.store.list("").await.expect("list").is_empty(), "the probe is removed");
    assert!(fixture.store.incomplete_uploads().await.expect("uploads").is_empty());
    let name = fixture.store.backend_name();
    assert!(name == "local" || name == "s3", "{name}");
    let description = fixture.store.describe();
    if let Some(garage) = &fixture.garage {
        assert!(description.contains(garage.endpoint()) && description.contains(garage.bucket()), "{description}");
        assert!(!description.contains(garage.secret_access_key()), "{description}");
    }
}
