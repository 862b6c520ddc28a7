//! Pack then unpack real trees: everything comes back as it was, the stats agree, and the
//! system's `tar --zstd` reads what `pack` wrote.

use std::fs::{self, File};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use cloudterm_archive::{
    pack, pack_sources, unpack, ArchiveError, Key, PackOptions, SkipReason, Source, UnpackOptions,
};
use sha2::{Digest, Sha256};

use crate::support::{assert_same_tree, is_root, os, skip_unless, Arena};

const BIG: usize = 20 << 20;

/// A tree with a bit of everything an archive must carry (and a 20 MiB file if `big`).
fn build_tree(root: &Path, big: bool) {
    let write = |rel: &str, data: &[u8], mode: u32| {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, data).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    write("a/b/c/deep.txt", b"deep\n", 0o644);
    write("empty.txt", b"", 0o600);
    fs::create_dir(root.join("empty_dir")).expect("mkdir");
    if big {
        let mut data = vec![0u8; BIG];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for chunk in data.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        write("big.bin", &data, 0o644);
    }
    write("exec.sh", b"#!/bin/sh\necho hi\n", 0o755);
    write("readonly.txt", b"ro", 0o444);
    write("locked/inside.txt", b"in a read-only directory", 0o644);
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o555)).expect("chmod");
    write("private/key", b"k", 0o600);
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).expect("chmod");
    symlink("a/b/c/deep.txt", root.join("rel_link")).expect("symlink");
    symlink("/usr/bin/python3", root.join("abs_link")).expect("symlink");
    symlink("does/not/exist", root.join("dangling")).expect("symlink");
    write("hard1", b"same inode", 0o640);
    fs::hard_link(root.join("hard1"), root.join("a/hard2")).expect("hard link");
    let long_dir = "d".repeat(150);
    let long_file = "f".repeat(120);
    write(&format!("{long_dir}/{long_file}"), b"long name", 0o644);
    symlink(format!("{long_dir}/{long_file}"), root.join("long_target_link")).expect("symlink");
    write("日本語/ñandú 🚀.txt", "unicode ✓".as_bytes(), 0o644);
    fs::write(root.join(os(b"not-utf8-\xff\xfe")), b"raw bytes").expect("write");
    set_mtimes(root);
}

/// Gives every file and directory a distinct old mtime (directories last, deepest first).
fn set_mtimes(root: &Path) {
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            if meta.is_dir() {
                stack.push(path.clone());
            }
            if !meta.file_type().is_symlink() {
                paths.push(path);
            }
        }
    }
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in paths.iter().enumerate() {
        let time = UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i as u64 * 60);
        File::open(path).expect("open").set_modified(time).expect("set mtime");
    }
}

fn pack_to_vec(root: &Path, options: &PackOptions) -> (Vec<u8>, cloudterm_archive::PackStats) {
    let mut out = Vec::new();
    let stats = pack(root, &mut out, options).expect("pack");
    (out, stats)
}

#[test]
fn a_tree_comes_back_as_it_was() {
    let source = tempfile::tempdir().expect("tempdir");
    build_tree(source.path(), true);
    let (archive, packed) = pack_to_vec(source.path(), &PackOptions::default());

    assert_eq!(packed.stored_bytes, archive.len() as u64);
    assert_eq!(packed.sha256_hex, hex::encode(Sha256::digest(&archive)));
    assert!(archive.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]), "a plain zstd stream");
    assert!(packed.size_bytes > BIG as u64);
    assert_eq!((packed.vanished, packed.changed_during_read, packed.skipped_count), (0, 0, 0));

    let arena = Arena::new();
    let options = UnpackOptions { expected_sha256: Some(packed.sha256_hex.clone()), ..UnpackOptions::default() };
    let unpacked = arena.unpack(&archive, &options).expect("unpack");
    assert_same_tree(source.path(), &arena.dest());
    assert_eq!(unpacked.file_count, packed.file_count);
    assert_eq!(unpacked.dir_count, packed.dir_count);
    assert_eq!(unpacked.size_bytes, packed.size_bytes);
    assert_eq!(unpacked.stored_bytes, packed.stored_bytes);
    assert_eq!(unpacked.sha256_hex, packed.sha256_hex);
    assert_eq!(unpacked.stripped_mode_bits, 0);

    let inode = |rel: &str| fs::metadata(arena.dest().join(rel)).expect("stat").ino();
    assert_eq!(inode("hard1"), inode("a/hard2"), "hard links stay one inode");
    arena.assert_outside_untouched();
}

#[test]
fn single_threaded_and_other_levels_round_trip_too() {
    let source = tempfile::tempdir().expect("tempdir");
    fs::write(source.path().join("x"), b"hello ".repeat(10_000)).expect("write");
    for (level, threads) in [(1, 0), (3, 0), (19, 2), (-5, 1)] {
        let (archive, _) =
            pack_to_vec(source.path(), &PackOptions { level, threads, key: None, checksum: true, owners: None });
        let arena = Arena::new();
        arena.unpack(&archive, &UnpackOptions::default()).expect("unpack");
        assert_same_tree(source.path(), &arena.dest());
    }
}

#[test]
fn the_system_tar_reads_what_pack_writes() {
    let has_zstd = Command::new("zstd").arg("--version").output().is_ok_and(|o| o.status.success());
    if skip_unless(has_zstd, "the zstd binary is not installed (tar --zstd needs it)") {
        return;
    }
    let source = tempfile::tempdir().expect("tempdir");
    build_tree(source.path(), false);
    let work = tempfile::tempdir().expect("tempdir");
    let archive_path = work.path().join("snapshot.tar.zst");
    pack(source.path(), File::create(&archive_path).expect("create"), &PackOptions::default()).expect("pack");

    let list = Command::new("tar").arg("--zstd").arg("-tvf").arg(&archive_path).output().expect("run tar");
    assert!(list.status.success(), "tar -t failed: {}", String::from_utf8_lossy(&list.stderr));
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&format!("{}/{}", "d".repeat(150), "f".repeat(120))), "long name in:\n{text}");
    assert!(text.contains("ñandú 🚀.txt"), "unicode name in:\n{text}");
    assert!(text.contains("abs_link -> /usr/bin/python3"), "symlink in:\n{text}");
    // Names are archived in byte order, so `a/hard2` is the first occurrence of the inode.
    assert!(text.contains("hard1 link to a/hard2"), "hard link in:\n{text}");

    let extracted = work.path().join("extracted");
    fs::create_dir(&extracted).expect("mkdir");
    let status = Command::new("tar")
        .arg("--zstd")
        .arg("-xpf")
        .arg(&archive_path)
        .arg("-C")
        .arg(&extracted)
        .status()
        .expect("run tar -x");
    assert!(status.success());
    assert_same_tree(source.path(), &extracted);
}

#[test]
fn an_encrypted_archive_round_trips_with_its_key() {
    let source = tempfile::tempdir().expect("tempdir");
    build_tree(source.path(), false);
    let key = Key::from_bytes([42; 32]);
    let (archive, packed) =
        pack_to_vec(source.path(), &PackOptions { key: Some(key.clone()), ..PackOptions::default() });
    assert!(archive.starts_with(b"CTAE"));
    assert_eq!(packed.sha256_hex, hex::encode(Sha256::digest(&archive)));

    let arena = Arena::new();
    let options =
        UnpackOptions { key: Some(key), expected_sha256: Some(packed.sha256_hex), ..UnpackOptions::default() };
    let unpacked = arena.unpack(&archive, &options).expect("unpack");
    assert_same_tree(source.path(), &arena.dest());
    assert_eq!(unpacked.file_count, packed.file_count);
}

#[test]
fn a_workspace_and_a_layer_share_one_archive() {
    let workspace = tempfile::tempdir().expect("tempdir");
    let layer = tempfile::tempdir().expect("tempdir");
    fs::write(workspace.path().join("main.rs"), b"fn main() {}").expect("write");
    fs::create_dir_all(layer.path().join("usr/lib/python3/site-packages/pkg")).expect("mkdir");
    fs::write(layer.path().join("usr/lib/python3/site-packages/pkg/__init__.py"), b"x = 1").expect("write");
    let sources = [Source::dir("workspace", workspace.path()), Source::overlay_layer("layer", layer.path())];
    let mut archive = Vec::new();
    let packed = pack_sources(&sources, &mut archive, &PackOptions::default()).expect("pack");
    assert_eq!(packed.file_count, 2);

    let arena = Arena::new();
    arena.unpack(&archive, &UnpackOptions::default()).expect("unpack");
    assert_same_tree(workspace.path(), &arena.dest().join("workspace"));
    assert_same_tree(layer.path(), &arena.dest().join("layer"));
    let top: Vec<_> = fs::read_dir(arena.dest()).expect("read").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(top.len(), 2);
}

#[test]
fn special_files_are_left_out_and_reported() {
    let source = tempfile::tempdir().expect("tempdir");
    fs::write(source.path().join("regular"), b"kept").expect("write");
    let fifo = Command::new("mkfifo").arg(source.path().join("pipe")).status().expect("mkfifo");
    assert!(fifo.success());
    let _socket = std::os::unix::net::UnixListener::bind(source.path().join("socket")).expect("bind");
    if is_root() {
        let status = Command::new("mknod").arg(source.path().join("null")).args(["c", "1", "3"]).status();
        assert!(status.expect("mknod").success());
    }
    let (archive, packed) = pack_to_vec(source.path(), &PackOptions::default());
    let reasons: Vec<_> = packed.skipped.iter().map(|s| (s.path.file_name().map(|n| n.to_owned()), s.reason)).collect();
    assert!(reasons.contains(&(Some("pipe".into()), SkipReason::Fifo)), "{reasons:?}");
    if is_root() {
        assert!(reasons.contains(&(Some("null".into()), SkipReason::CharDevice)), "{reasons:?}");
    }
    assert_eq!(packed.skipped_count, packed.skipped.len() as u64);
    assert!(!reasons.iter().any(|(name, _)| name.as_deref() == Some(os(b"socket"))), "sockets are not reported");
    assert_eq!(packed.file_count, 1);

    let arena = Arena::new();
    arena.unpack(&archive, &UnpackOptions::default()).expect("unpack");
    let names: Vec<_> = fs::read_dir(arena.dest()).expect("read").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["regular"]);
}

#[test]
fn setuid_setgid_and_file_sticky_bits_are_stripped_and_counted() {
    let source = tempfile::tempdir().expect("tempdir");
    let set = |rel: &str, mode: u32| fs::set_permissions(source.path().join(rel), fs::Permissions::from_mode(mode));
    fs::write(source.path().join("suid"), b"x").expect("write");
    set("suid", 0o4755).expect("chmod");
    fs::write(source.path().join("sticky_file"), b"x").expect("write");
    set("sticky_file", 0o1644).expect("chmod");
    fs::create_dir(source.path().join("sgid_dir")).expect("mkdir");
    set("sgid_dir", 0o2775).expect("chmod");
    fs::create_dir(source.path().join("tmp")).expect("mkdir");
    set("tmp", 0o1777).expect("chmod");
    let (archive, _) = pack_to_vec(source.path(), &PackOptions::default());

    let arena = Arena::new();
    let stats = arena.unpack(&archive, &UnpackOptions::default()).expect("unpack");
    let mode = |rel: &str| fs::symlink_metadata(arena.dest().join(rel)).expect("stat").mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sticky_file"), 0o644);
    assert_eq!(mode("sgid_dir"), 0o775);
    assert_eq!(mode("tmp"), 0o1777, "sticky stays on directories");
    assert_eq!(stats.stripped_mode_bits, 3);
}

#[test]
fn callers_mistakes_are_invalid_arguments() {
    let source = tempfile::tempdir().expect("tempdir");
    let bad_level = PackOptions { level: 1000, ..PackOptions::default() };
    assert!(matches!(pack(source.path(), Vec::new(), &bad_level), Err(ArchiveError::InvalidArgument(_))));
    let (archive, _) = pack_to_vec(source.path(), &PackOptions::default());

    let arena = Arena::new();
    fs::write(arena.dest().join("already"), b"here").expect("write");
    let result = arena.unpack(&archive, &UnpackOptions::default());
    assert!(matches!(result, Err(ArchiveError::InvalidArgument(_))), "{result:?}");

    let fresh = Arena::new();
    let bad_sha = UnpackOptions { expected_sha256: Some("nope".into()), ..UnpackOptions::default() };
    assert!(matches!(fresh.unpack(&archive, &bad_sha), Err(ArchiveError::InvalidArgument(_))));
    assert!(matches!(
        unpack(archive.as_slice(), &fresh.base.path().join("missing"), &UnpackOptions::default()),
        Err(ArchiveError::Io { .. })
    ));
}

#[test]
fn a_symlinked_source_root_is_not_followed() {
    let target = tempfile::tempdir().expect("tempdir");
    let holder = tempfile::tempdir().expect("tempdir");
    symlink(target.path(), holder.path().join("root")).expect("symlink");
    let result = pack(&holder.path().join("root"), Vec::new(), &PackOptions::default());
    assert!(matches!(result, Err(ArchiveError::Io { .. })), "{result:?}");
}

#[test]
fn trees_deeper_than_path_max_round_trip() {
    use rustix::fs::{mkdirat, openat, Mode, OFlags};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
    let component = "n".repeat(200);
    let depth = 25; // 25 × 201 bytes: past PATH_MAX (4096) as one string
    let source = tempfile::tempdir().expect("tempdir");
    let mut fd = rustix::fs::open(source.path(), dir_flags, Mode::empty()).expect("open");
    for _ in 0..depth {
        mkdirat(&fd, component.as_str(), Mode::from_raw_mode(0o755)).expect("mkdir");
        fd = openat(&fd, component.as_str(), dir_flags, Mode::empty()).expect("open");
    }
    let file = openat(&fd, "bottom", OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o644)).expect("create");
    rustix::io::write(&file, b"deep").expect("write");

    let (archive, packed) = pack_to_vec(source.path(), &PackOptions::default());
    assert_eq!((packed.dir_count, packed.file_count), (depth, 1));
    let arena = Arena::new();
    let unpacked = arena.unpack(&archive, &UnpackOptions::default()).expect("unpack");
    assert_eq!((unpacked.dir_count, unpacked.file_count), (depth, 1));
    let mut fd = rustix::fs::open(arena.dest(), dir_flags, Mode::empty()).expect("open");
    for _ in 0..depth {
        fd = openat(&fd, component.as_str(), dir_flags, Mode::empty()).expect("restored dir");
    }
    let file = File::from(openat(&fd, "bottom", OFlags::RDONLY, Mode::empty()).expect("restored file"));
    assert_eq!(std::io::read_to_string(file).expect("read"), "deep");
}
