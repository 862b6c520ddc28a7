//! Hostile archives: each is refused (naming the entry) or neutralised, and nothing appears
//! next to the destination.

use std::fs;
use std::os::unix::fs::MetadataExt;

use cloudterm_archive::UnpackOptions;
use tar::EntryType;

use crate::support::{archive, assert_unsafe, dir, file, gnu_long, hard_link, pax, raw_entry, symlink, Arena};

fn refused(entries: &[Vec<u8>], entry: &str) -> Arena {
    let arena = Arena::new();
    assert_unsafe(arena.unpack(&archive(entries), &UnpackOptions::default()), entry);
    arena.assert_outside_untouched();
    arena
}

#[test]
fn absolute_paths_are_refused() {
    let arena = Arena::new();
    let target = format!("{}/pwned", arena.outside().display());
    assert_unsafe(arena.unpack(&archive(&[file(&target, b"x")]), &UnpackOptions::default()), "pwned");
    arena.assert_outside_untouched();
    refused(&[file("/etc/cloudterm-archive-test", b"x")], "/etc/cloudterm-archive-test");
    assert!(!std::path::Path::new("/etc/cloudterm-archive-test").exists());
}

#[test]
fn parent_components_are_refused() {
    refused(&[file("../outside/pwned", b"x")], "../outside/pwned");
    refused(&[dir("a/"), file("a/../../outside/pwned", b"x")], "a/../../outside/pwned");
    refused(&[dir("a/"), file("a/..", b"x")], "a/..");
    refused(&[dir("a/"), dir("a/../..")], "a/../..");
}

#[test]
fn empty_names_are_refused() {
    refused(&[file("", b"x")], "");
    refused(&[file("./", b"x")], "./");
    refused(&[symlink(".", "/etc")], ".");
}

#[test]
fn paths_through_a_symlink_are_refused_whatever_the_link_points_at() {
    let arena = Arena::new();
    let outside = arena.outside().display().to_string();
    let entries = [symlink("a", &outside), file("a/pwned", b"x")];
    assert_unsafe(arena.unpack(&archive(&entries), &UnpackOptions::default()), "a/pwned");
    arena.assert_outside_untouched();

    // The classic: a link to /etc, then a file "inside" it.
    refused(&[symlink("etc", "/etc"), file("etc/passwd", b"root::0:0::/:/bin/sh\n")], "etc/passwd");
    // Even a link that stays inside the tree is not followed.
    refused(&[dir("real/"), symlink("inside", "real"), file("inside/x", b"x")], "inside/x");
    // Deeper, and through a directory entry rather than a file.
    refused(&[dir("d/"), symlink("d/l", "/tmp"), dir("d/l/sub/")], "d/l/sub");
    // Hard-link target resolution does not go through a symlink either.
    refused(&[symlink("l", &outside), hard_link("h", "l/secret")], "h");
}

#[test]
fn relative_symlinks_climbing_out_are_refused() {
    refused(&[symlink("x", "../../etc")], "x");
    refused(&[symlink("x", "..")], "x");
    refused(&[dir("a/"), symlink("a/x", "../../outside")], "a/x");
    refused(&[dir("a/"), dir("a/b/"), symlink("a/b/x", "../../../outside/secret")], "a/b/x");
    // Staying inside, however deep, is fine; so is an absolute target (stored verbatim).
    let arena = Arena::new();
    let entries = [dir("a/"), dir("a/b/"), symlink("a/b/up", "../../top"), symlink("venv_python", "/usr/bin/python3")];
    arena.unpack(&archive(&entries), &UnpackOptions::default()).expect("inside links are fine");
    assert_eq!(fs::read_link(arena.dest().join("a/b/up")).expect("readlink").to_str(), Some("../../top"));
    assert_eq!(fs::read_link(arena.dest().join("venv_python")).expect("readlink").to_str(), Some("/usr/bin/python3"));
    arena.assert_outside_untouched();
}

#[test]
fn hard_links_must_point_at_an_earlier_regular_file() {
    let arena = Arena::new();
    let secret = format!("{}/secret", arena.outside().display());
    assert_unsafe(arena.unpack(&archive(&[hard_link("h", &secret)]), &UnpackOptions::default()), "h");
    arena.assert_outside_untouched();

    refused(&[hard_link("h", "../outside/secret")], "h");
    refused(&[hard_link("h", "later"), file("later", b"x")], "h");
    refused(&[hard_link("h", "missing")], "h");
    refused(&[dir("d/"), hard_link("h", "d")], "h");
    refused(&[symlink("s", "/etc/shadow"), hard_link("h", "s")], "h");
    refused(&[file("f", b"x"), hard_link("f", "f")], "f");
    // A regular file replaced by a symlink is no longer a valid target.
    refused(&[file("f", b"x"), symlink("f", "/etc/shadow"), hard_link("g", "f")], "g");

    let ok = Arena::new();
    ok.unpack(&archive(&[file("f", b"x"), dir("d/"), hard_link("d/g", "f")]), &UnpackOptions::default())
        .expect("a link to an earlier file is fine");
    let ino = |rel: &str| fs::metadata(ok.dest().join(rel)).expect("stat").ino();
    assert_eq!(ino("f"), ino("d/g"));
}

#[test]
fn devices_fifos_and_unknown_types_are_refused() {
    refused(&[raw_entry(EntryType::Char, b"null", b"", b"", 0o666)], "null");
    refused(&[raw_entry(EntryType::Block, b"sda", b"", b"", 0o660)], "sda");
    refused(&[raw_entry(EntryType::Fifo, b"pipe", b"", b"", 0o644)], "pipe");
    refused(&[raw_entry(EntryType::new(b'V'), b"volume", b"", b"", 0o644)], "volume");
    // A 0:0 character device is a whiteout only as a marker file, never as a device entry.
    refused(&[raw_entry(EntryType::Char, b"gone", b"", b"", 0)], "gone");
}

#[test]
fn a_later_entry_never_writes_through_an_earlier_symlink() {
    let arena = Arena::new();
    let secret = format!("{}/secret", arena.outside().display());
    let outside = arena.outside().display().to_string();
    // Same name: the symlink is replaced, not followed.
    let entries =
        [symlink("f", &secret), file("f", b"overwritten?"), symlink("d", &outside), dir("d/"), file("d/x", b"y")];
    arena.unpack(&archive(&entries), &UnpackOptions::default()).expect("replacing is allowed");
    arena.assert_outside_untouched();
    assert_eq!(fs::read(arena.dest().join("f")).expect("read"), b"overwritten?");
    assert!(fs::symlink_metadata(arena.dest().join("d")).expect("stat").is_dir());
    assert_eq!(fs::read(arena.dest().join("d/x")).expect("read"), b"y");
}

#[test]
fn a_directory_is_never_replaced() {
    refused(&[dir("d/"), file("d/keep", b"x"), file("d", b"x")], "d");
    refused(&[dir("d/"), symlink("d", "/etc")], "d");
}

#[test]
fn a_file_as_parent_is_refused() {
    refused(&[file("f", b"x"), file("f/child", b"y")], "f/child");
}

#[test]
fn long_names_and_pax_paths_are_checked_like_short_ones() {
    refused(&[gnu_long(EntryType::GNULongName, b"../outside/pwned"), file("harmless", b"x")], "../outside/pwned");
    refused(&[pax(&[("path", b"/etc/passwd")]), file("harmless", b"x")], "/etc/passwd");
    refused(&[pax(&[("linkpath", b"../../../etc")]), symlink("harmless", "fine")], "harmless");
    refused(&[gnu_long(EntryType::GNULongLink, b"../outside/secret"), hard_link("h", "fine")], "h");
    let deep = format!("{}/../../pwned", "a".repeat(120));
    refused(&[gnu_long(EntryType::GNULongName, deep.as_bytes()), file("harmless", b"x")], "pwned");
}

#[test]
fn nul_bytes_in_pax_names_are_refused() {
    refused(&[pax(&[("path", b"ok\0/../../x")]), file("harmless", b"x")], "ok");
}
