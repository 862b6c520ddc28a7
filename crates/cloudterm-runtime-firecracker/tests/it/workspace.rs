//! The workspace disk two-way: what a guest writes to `workspace.ext4` reaches the host's
//! workspace directory on `sync_workspace` (what a snapshot calls), on pause and on stop,
//! including writes still only in the ext4 journal; an unreadable disk fails with a clear
//! error and leaves the workspace directory as it was; one workspace takes one VM.
//!
//! The bare guest never touches its disks, so the tests write into the image as the guest's
//! kernel would, with `debugfs -w`: either straight into place (a checkpointed write) or as a
//! committed journal transaction that is not checkpointed yet (the state a running guest's
//! disk is in most of the time).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cloudterm_runtime::{Runtime, SandboxRuntimeError};
use cloudterm_runtime_firecracker::workspace::needs_recovery;
use cloudterm_runtime_firecracker::VmDir;

use crate::guest;
use crate::support::{console, eventually, processes_mentioning, Harness};

fn debugfs(image: &Path, request: &str, write: bool) -> String {
    let mut command = Command::new("debugfs");
    if write {
        command.arg("-w");
    }
    let out = command.arg("-R").arg(request).arg(image).output().expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `content` to `/name` in the image directly, as a guest whose write was checkpointed.
fn guest_writes(image: &Path, scratch: &Path, name: &str, content: &str) {
    let source = scratch.join(format!("src-{name}"));
    std::fs::write(&source, content).expect("write source");
    debugfs(image, &format!("write {} {name}", source.display()), true);
    assert_eq!(debugfs(image, &format!("cat /{name}"), false), content, "debugfs wrote it");
}

/// Writes `content` to `/name` as a committed journal transaction that is not checkpointed:
/// the blocks the write changes go into the image's journal only, and the image says it needs
/// recovery. Read without replaying the journal, the file is not there.
fn guest_writes_to_journal(image: &Path, scratch: &Path, name: &str, content: &str) {
    let source = scratch.join(format!("src-{name}"));
    std::fs::write(&source, content).expect("write source");
    guest_changes_via_journal(image, scratch, &format!("write {} {name}", source.display()));
    assert!(!debugfs(image, "ls /", false).contains(name), "not in place yet");
}

/// Makes the change the debugfs `request` makes as one more committed, not checkpointed
/// journal transaction: the change is made on a copy with the journal so far replayed (what
/// the guest sees), and the blocks it differs in from that copy go into the journal.
fn guest_changes_via_journal(image: &Path, scratch: &Path, request: &str) {
    let before = scratch.join("before.ext4");
    let after = scratch.join("after.ext4");
    std::fs::copy(image, &before).expect("copy the image");
    let replayed = Command::new("e2fsck").args(["-E", "journal_only", "-y"]).arg(&before).output().expect("e2fsck");
    assert!(replayed.status.code().is_some_and(|code| code <= 1), "{replayed:?}");
    std::fs::copy(&before, &after).expect("copy the image");
    debugfs(&after, request, true);
    let (old, new) = (std::fs::read(&before).expect("read"), std::fs::read(&after).expect("read"));
    let block = 1024usize << u32::from_le_bytes(old[1024 + 24..1024 + 28].try_into().expect("4 bytes"));
    let changed: Vec<usize> =
        (0..old.len() / block).filter(|i| old[i * block..(i + 1) * block] != new[i * block..(i + 1) * block]).collect();
    assert!(!changed.is_empty());
    let blocks = scratch.join("blocks");
    let data: Vec<u8> = changed.iter().flat_map(|i| new[i * block..(i + 1) * block].to_vec()).collect();
    std::fs::write(&blocks, data).expect("write blocks");
    let list = changed.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let script = scratch.join("journal.cmds");
    std::fs::write(&script, format!("jo\njw -b {list} {}\njc\n", blocks.display())).expect("script");
    let out = Command::new("debugfs").arg("-w").arg("-f").arg(&script).arg(image).output().expect("debugfs");
    assert!(out.status.success());
    std::fs::remove_file(&before).expect("remove the copy");
    std::fs::remove_file(&after).expect("remove the copy");
    assert!(needs_recovery(image).expect("superblock"), "the change is only in the journal");
}

fn files(dir: &Path) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("read workspace")
        .flatten()
        .map(|e| {
            let content = std::fs::read_to_string(e.path()).unwrap_or_else(|_| "<dir>".into());
            (e.file_name().to_string_lossy().into_owned(), content)
        })
        .collect();
    found.sort();
    found
}

fn scratch_dirs_beside(workspace: &Path) -> Vec<PathBuf> {
    let parent = workspace.parent().expect("parent");
    std::fs::read_dir(parent)
        .expect("read parent")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".restore-tmp_vm_"))
        .map(|e| e.path())
        .collect()
}

async fn ticking(dir: &VmDir) -> bool {
    let before = guest::ticks(&console(&dir.console_log())).len();
    eventually(Duration::from_secs(5), || guest::ticks(&console(&dir.console_log())).len() > before).await
}

#[tokio::test]
async fn guest_writes_reach_the_workspace_directory_on_sync_pause_and_stop() {
    let Some(h) = Harness::new() else { return };
    let store = h.store().await;
    let runtime = h.runtime(Some(store));
    let spec = h.spec("sbx_2way");
    let workspace = spec.workspace_dir.clone().expect("workspace");
    let dir = VmDir::new(h.root().join("sbx_2way"));
    let scratch = h.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    runtime.start(&spec).await.expect("start");
    let image = dir.workspace_image();

    // While it runs: sync_workspace pauses it for the read and lets it go on.
    guest_writes(&image, &scratch, "guest.txt", "written in the guest\n");
    std::fs::write(workspace.join("host-only.txt"), "the image is the truth\n").expect("host write");
    runtime.sync_workspace("sbx_2way").await.expect("sync while running");
    assert_eq!(
        files(&workspace),
        vec![
            ("guest.txt".into(), "written in the guest\n".into()),
            ("hello.txt".into(), "hello from the host\n".into())
        ],
        "the workspace holds the disk's tree (no lost+found, nothing the disk lacks)"
    );
    assert!(ticking(&dir).await, "the guest runs on after the read");
    assert!(
        eventually(Duration::from_secs(5), || scratch_dirs_beside(&workspace).is_empty()).await,
        "the old tree is gone (in the background)"
    );

    // A write only in the journal, then a pause into the store: the journal is replayed on a
    // copy, so the paused guest's disk is exactly as it left it.
    guest_writes_to_journal(&image, &scratch, "journal.txt", "committed, not checkpointed\n");
    runtime.pause("sbx_2way").await.expect("pause");
    assert!(files(&workspace).contains(&("journal.txt".into(), "committed, not checkpointed\n".into())));
    assert!(needs_recovery(&image).expect("superblock"), "the paused guest's disk is untouched");
    assert!(
        std::fs::read_dir(dir.path())
            .expect("vm dir")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("read-")),
        "the replayed copy is gone"
    );
    runtime.sync_workspace("sbx_2way").await.expect("sync while paused (already in sync)");
    runtime.resume("sbx_2way").await.expect("resume");
    assert!(ticking(&dir).await);

    // A delete and an edit, then stop: the last state of the disk is the workspace's.
    guest_changes_via_journal(&image, &scratch, "rm hello.txt");
    guest_writes_to_journal(&image, &scratch, "last.txt", "before the stop\n");
    runtime.stop("sbx_2way").await.expect("stop");
    assert_eq!(
        files(&workspace),
        vec![
            ("guest.txt".into(), "written in the guest\n".into()),
            ("journal.txt".into(), "committed, not checkpointed\n".into()),
            ("last.txt".into(), "before the stop\n".into()),
        ]
    );
    assert!(!dir.path().exists() && processes_mentioning(&h.dir.path().display().to_string()).is_empty());
    assert!(matches!(runtime.sync_workspace("sbx_2way").await, Err(SandboxRuntimeError::NotRunning(_))));
}

#[tokio::test]
async fn an_unreadable_disk_fails_clearly_and_leaves_the_workspace_as_it_was() {
    let Some(h) = Harness::new() else { return };
    let runtime = h.runtime(None);
    let spec = h.spec("sbx_baddisk");
    let workspace = spec.workspace_dir.clone().expect("workspace");
    let dir = VmDir::new(h.root().join("sbx_baddisk"));
    runtime.start(&spec).await.expect("start");
    std::fs::write(workspace.join("host.txt"), "kept\n").expect("host write");
    let before = files(&workspace);

    // The superblock overwritten: no ext4 any more.
    let mut bytes = std::fs::read(dir.workspace_image()).expect("image");
    bytes[1024..2048].fill(0);
    std::fs::write(dir.workspace_image(), bytes).expect("spoil the image");
    let err = runtime.sync_workspace("sbx_baddisk").await.expect_err("unreadable");
    let text = err.to_string();
    assert!(matches!(err, SandboxRuntimeError::Failed(_)), "{text}");
    assert!(text.contains("workspace disk") && text.contains("not an ext4 file system"), "{text}");
    assert_eq!(files(&workspace), before, "the workspace is untouched");
    assert!(scratch_dirs_beside(&workspace).is_empty(), "no half-read tree is left");
    assert!(ticking(&dir).await, "the guest was resumed after the failed read");

    // A pause still pauses; a stop stops and keeps the disk for an operator.
    runtime.pause("sbx_baddisk").await.expect("pause despite the disk");
    runtime.resume("sbx_baddisk").await.expect("resume");
    runtime.stop("sbx_baddisk").await.expect("stop");
    assert_eq!(files(&workspace), before);
    assert!(!dir.path().exists());
    let kept = h.root().join("sbx_baddisk.workspace.ext4");
    assert!(kept.is_file(), "the disk is kept beside the VM directories");
    assert!(runtime.list().await.expect("list").is_empty(), "and not listed as a sandbox");
}

#[tokio::test]
async fn one_workspace_takes_one_vm_and_a_dead_vm_leaves_its_writes() {
    let Some(h) = Harness::new() else { return };
    let runtime = h.runtime(None);
    let spec = h.spec("sbx_one");
    let workspace = spec.workspace_dir.clone().expect("workspace");
    let handle = runtime.start(&spec).await.expect("start");
    let mut second = h.spec("sbx_two");
    second.workspace_dir = Some(workspace.clone());
    let err = runtime.start(&second).await.expect_err("two VMs on one workspace");
    assert!(
        matches!(err, SandboxRuntimeError::NotSupported { .. }) && err.to_string().contains("one workspace"),
        "{err}"
    );
    assert!(!h.root().join("sbx_two").exists());

    // The VMM dies: its disk is read back before its directory goes.
    let scratch = h.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    guest_writes_to_journal(
        &VmDir::new(h.root().join("sbx_one")).workspace_image(),
        &scratch,
        "dying.txt",
        "last words\n",
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(handle.pid.expect("pid") as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    assert!(eventually(Duration::from_secs(10), || !h.root().join("sbx_one").exists()).await);
    assert!(files(&workspace).contains(&("dying.txt".into(), "last words\n".into())));

    runtime.start(&second).await.expect("the workspace is free again");
    runtime.stop("sbx_two").await.expect("stop");
}

#[tokio::test]
async fn each_vm_writes_its_own_sparse_copy_of_the_root_image() {
    use std::os::unix::fs::MetadataExt;
    let Some(h) = Harness::new() else { return };
    let tree = h.dir.path().join("image");
    std::fs::create_dir_all(tree.join("etc")).expect("image tree");
    std::fs::write(tree.join("etc/os-release"), "ID=test\n").expect("image file");
    let base = h.dir.path().join("image.ext4");
    cloudterm_runtime_firecracker::disk::make_ext4(&tree, &base, 64, "root").await.expect("root image");
    let base_bytes = std::fs::read(&base).expect("read base");
    let mut config = h.config(h.ticker.clone());
    config.default_rootfs = Some(base.clone());
    let runtime = cloudterm_runtime_firecracker::FirecrackerRuntime::new(config);
    runtime.start(&h.spec("sbx_rootA")).await.expect("start A");
    runtime.start(&h.spec("sbx_rootB")).await.expect("start B");
    let (a, b) = (VmDir::new(h.root().join("sbx_rootA")), VmDir::new(h.root().join("sbx_rootB")));

    let log = std::fs::read_to_string(a.vmm_log()).expect("vmm log");
    let drive = log.lines().find(|line| line.contains("/drives/rootfs")).unwrap_or_default().replace('\\', "");
    assert!(drive.contains("root.ext4") && drive.contains("\"is_read_only\":false"), "attached read-write: {drive}");
    let meta = std::fs::metadata(a.root_image()).expect("A's copy");
    assert_eq!(meta.len(), 64 << 20);
    assert!(meta.blocks() * 512 <= std::fs::metadata(&base).expect("base").blocks() * 512 + (1 << 20), "sparse");

    // A write into A's root (as its guest would) changes neither the image nor B's root.
    let scratch = h.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    guest_writes(&a.root_image(), &scratch, "installed.txt", "apt install in A\n");
    assert!(!debugfs(&b.root_image(), "ls /", false).contains("installed.txt"));
    assert!(std::fs::read(&base).expect("read base") == base_bytes, "the shared image is untouched");

    runtime.stop("sbx_rootA").await.expect("stop A");
    runtime.stop("sbx_rootB").await.expect("stop B");
    assert!(!a.path().exists() && !b.path().exists(), "the copies go with their VMs");

    // A missing image is still the caller's error, before anything is copied or spawned.
    std::fs::remove_file(&base).expect("remove the image");
    let err = runtime.start(&h.spec("sbx_rootC")).await.expect_err("no image");
    assert!(matches!(err, SandboxRuntimeError::InvalidSpec(_)) && err.to_string().contains("image.ext4"), "{err}");
    assert!(!h.root().join("sbx_rootC").exists());
}
