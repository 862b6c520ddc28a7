//! Test helpers: hand-made tar entries (the tar crate's builder refuses the hostile ones),
//! a sentinel directory next to the destination, and a comparable listing of a tree.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cloudterm_archive::{unpack, ArchiveError, UnpackOptions, UnpackStats};
use tar::{EntryType, Header};

/// Skips a test that cannot run here; with `CI=true` a skip fails instead (the project's rule,
/// as `cloudterm_test_support::skip_unless`, without pulling the server into this crate's tests).
pub fn skip_unless(available: bool, why: &str) -> bool {
    if available {
        return false;
    }
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("CI=true and this test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
    true
}

/// Whether we run as root (the owner of a file we create is uid 0).
pub fn is_root() -> bool {
    let probe = tempfile::NamedTempFile::new().expect("probe file");
    probe.as_file().metadata().expect("stat probe").uid() == 0
}

/// One tar member (header plus padded data), with the path and link name written straight
/// into the header bytes so nothing is validated.
pub fn raw_entry(kind: EntryType, path: &[u8], link: &[u8], data: &[u8], mode: u32) -> Vec<u8> {
    assert!(path.len() <= 100 && link.len() <= 100, "use a long-name entry for longer paths");
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..path.len()].copy_from_slice(path);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(1_700_000_000);
    header.set_size(data.len() as u64);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

pub fn file(path: &str, data: &[u8]) -> Vec<u8> {
    raw_entry(EntryType::Regular, path.as_bytes(), b"", data, 0o644)
}

pub fn dir(path: &str) -> Vec<u8> {
    raw_entry(EntryType::Directory, path.as_bytes(), b"", b"", 0o755)
}

pub fn symlink(path: &str, target: &str) -> Vec<u8> {
    raw_entry(EntryType::Symlink, path.as_bytes(), target.as_bytes(), b"", 0o777)
}

pub fn hard_link(path: &str, target: &str) -> Vec<u8> {
    raw_entry(EntryType::Link, path.as_bytes(), target.as_bytes(), b"", 0o644)
}

/// A GNU long-name (`L`) or long-link (`K`) metadata entry.
pub fn gnu_long(kind: EntryType, value: &[u8]) -> Vec<u8> {
    let mut data = value.to_vec();
    data.push(0);
    raw_entry(kind, b"././@LongLink", b"", &data, 0o644)
}

/// A PAX extended header (`x`) with the given records.
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let body_len = key.len() + value.len() + 3; // space, '=', newline
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    raw_entry(EntryType::XHeader, b"PaxHeaders/x", b"", &data, 0o644)
}

/// A complete tar stream (with its end marker), zstd-compressed.
pub fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut tar = entries.concat();
    tar.extend_from_slice(&[0u8; 1024]);
    zstd::encode_all(tar.as_slice(), 3).expect("compress")
}

/// A temporary directory holding an empty `dest/` and an `outside/` sentinel with one file,
/// which no archive may touch.
pub struct Arena {
    pub base: tempfile::TempDir,
}

impl Arena {
    pub fn new() -> Self {
        let base = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(base.path().join("dest")).expect("mkdir dest");
        std::fs::create_dir(base.path().join("outside")).expect("mkdir outside");
        std::fs::write(base.path().join("outside/secret"), b"sentinel").expect("write sentinel");
        Self { base }
    }

    pub fn dest(&self) -> PathBuf {
        self.base.path().join("dest")
    }

    pub fn outside(&self) -> PathBuf {
        self.base.path().join("outside")
    }

    pub fn unpack(&self, archive: &[u8], options: &UnpackOptions) -> Result<UnpackStats, ArchiveError> {
        unpack(archive, &self.dest(), options)
    }

    /// Panics if anything next to `dest` changed: a new entry, or the sentinel's content or
    /// link count (a hard link into dest would raise it).
    pub fn assert_outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.outside())
            .expect("read outside")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["secret"], "something was written next to dest");
        let secret = self.outside().join("secret");
        assert_eq!(std::fs::read(&secret).expect("read sentinel"), b"sentinel");
        assert_eq!(std::fs::symlink_metadata(&secret).expect("stat").nlink(), 1, "sentinel was hard-linked");
        let base: Vec<_> = std::fs::read_dir(self.base.path())
            .expect("read base")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(base.len(), 2, "something was written next to dest: {base:?}");
    }
}

/// What a tree looks like, comparable across pack/unpack: per path, its type, permission bits,
/// mtime (not for symlinks), size and link target, plus the content of regular files.
pub struct Listing {
    pub lines: BTreeMap<Vec<u8>, String>,
    pub contents: BTreeMap<Vec<u8>, Vec<u8>>,
}

pub fn listing(root: &Path) -> Listing {
    let mut out = Listing { lines: BTreeMap::new(), contents: BTreeMap::new() };
    walk(root, root, &mut out);
    out
}

/// Compares two trees; on a difference, names the paths rather than dumping file contents.
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let (expected, actual) = (listing(expected), listing(actual));
    let readable = |lines: &BTreeMap<Vec<u8>, String>| -> Vec<String> {
        lines.iter().map(|(path, line)| format!("{}: {line}", String::from_utf8_lossy(path))).collect()
    };
    assert_eq!(readable(&expected.lines), readable(&actual.lines));
    for (path, content) in &expected.contents {
        assert!(actual.contents.get(path) == Some(content), "content of {} differs", String::from_utf8_lossy(path));
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Listing) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let rel = path.strip_prefix(root).expect("below root").as_os_str().as_bytes().to_vec();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let kind = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let line = if kind.is_symlink() {
            let target = std::fs::read_link(&path).expect("readlink");
            format!("symlink -> {}", target.display())
        } else if kind.is_dir() {
            walk(root, &path, out);
            format!("dir {mode:o} mtime {}", meta.mtime())
        } else if kind.is_file() {
            out.contents.insert(rel.clone(), std::fs::read(&path).expect("read"));
            format!("file {mode:o} mtime {} size {}", meta.mtime(), meta.len())
        } else if kind.is_char_device() {
            format!("char {}", meta.rdev())
        } else {
            format!("other {:?}", kind)
        };
        out.lines.insert(rel, line);
    }
}

pub fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Asserts the result is `Unsafe` and its entry name contains `entry`.
#[track_caller]
pub fn assert_unsafe<T: std::fmt::Debug>(result: Result<T, ArchiveError>, entry: &str) {
    match result {
        Err(ArchiveError::Unsafe { entry: got, reason }) => {
            assert!(got.contains(entry), "refused {got:?} ({reason}), expected the entry {entry:?}")
        }
        other => panic!("expected Unsafe naming {entry:?}, got {other:?}"),
    }
}
