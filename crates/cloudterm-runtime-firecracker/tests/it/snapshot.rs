//! Pause, a full snapshot streamed into a BlobStore, and a restore in a new Firecracker process
//! that goes on from the guest's state (its counter), not from a fresh boot.

use std::time::{Duration, Instant};

use cloudterm_runtime_firecracker::machine::boot;
use cloudterm_runtime_firecracker::snapshot::{self, SnapshotKeys};
use cloudterm_runtime_firecracker::vmm::is_ours;
use cloudterm_runtime_firecracker::VmDir;

use crate::guest::{self, BANNER};
use crate::support::{console, eventually, machine, Harness};

#[tokio::test]
async fn a_paused_vm_stored_in_the_blobstore_resumes_in_a_new_process_with_its_state() {
    let Some(h) = Harness::new() else { return };
    let store = h.store().await;
    let dir = VmDir::new(h.dir.path().join("vm"));
    std::fs::create_dir_all(dir.path()).expect("vm dir");
    let spec = machine(h.ticker.clone());
    let vmm = boot(&h.binary, &dir, "snap-test", &spec).await.expect("boot");
    assert!(eventually(Duration::from_secs(5), || guest::ticks(&console(&dir.console_log())).len() >= 3).await);

    let t = Instant::now();
    snapshot::pause(&vmm).await.expect("pause");
    let paused = t.elapsed();
    let before = guest::ticks(&console(&dir.console_log()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = guest::ticks(&console(&dir.console_log()));
    assert_eq!(before, still, "a paused guest printed");
    let last = *before.last().expect("ticks before the pause");

    let t = Instant::now();
    snapshot::create(&vmm, &dir).await.expect("snapshot create");
    let created = t.elapsed();
    let keys = SnapshotKeys::for_sandbox("snap-test", 1);
    let t = Instant::now();
    let stored = snapshot::upload(&store, &keys, &dir).await.expect("upload");
    let uploaded = t.elapsed();
    assert!(stored >= 128 << 20, "the memory file holds all 128 MiB: {stored}");
    assert!(snapshot::is_local(&dir), "the files stay as a local copy");
    // Resume from the store alone, as on another host.
    std::fs::remove_file(dir.memory()).expect("drop the local memory file");
    std::fs::remove_file(dir.vmstate()).expect("drop the local state file");
    let old_pid = vmm.pid();
    vmm.kill().await;
    assert!(!is_ours(old_pid, &dir.api_socket()));
    assert!(store.head(&keys.memory).await.is_ok() && store.head(&keys.vmstate).await.is_ok());

    let t = Instant::now();
    snapshot::download(&store, &keys, &dir).await.expect("download");
    let downloaded = t.elapsed();
    let t = Instant::now();
    let restored = snapshot::restore(&h.binary, &dir, "snap-test").await.expect("restore");
    let loaded = t.elapsed();
    assert_ne!(restored.pid(), old_pid, "a new process");
    assert!(
        eventually(Duration::from_secs(5), || guest::ticks(&console(&dir.console_log())).len() >= 2).await,
        "the restored guest does not tick: {:?}",
        console(&dir.console_log())
    );
    let after = console(&dir.console_log());
    assert!(!after.contains(BANNER), "the guest booted again instead of going on: {after:?}");
    let first = guest::ticks(&after)[0];
    assert!(first > last && first <= last + 2, "counter went {last} -> {first}: state not kept");
    // What the first VMM printed is kept beside the new console.
    assert!(console(&dir.previous_console_log()).starts_with(BANNER));
    assert!(!dir.memory().exists(), "the loaded memory file is removed (Firecracker keeps its mapping)");
    eprintln!(
        "pause {paused:?}, snapshot create {created:?}, upload {uploaded:?} ({stored} bytes), download {downloaded:?}, load+resume {loaded:?}"
    );
    restored.kill().await;
    snapshot::discard(&store, &keys).await.expect("discard");
    assert!(store.head(&keys.memory).await.is_err());
}
