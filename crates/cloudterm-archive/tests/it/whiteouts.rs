//! Overlayfs whiteouts and opaque directories in a writable layer survive a snapshot: as OCI
//! markers in the archive, and as the real thing after a restore (as root, with a real overlay).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cloudterm_archive::{pack_sources, PackOptions, RestoreWhiteouts, SkipReason, Source, UnpackOptions};
use rustix::fs::{getxattr, makedev, mknodat, setxattr, FileType, Mode, XattrFlags, CWD};

use crate::support::{is_root, skip_unless, Arena};

const OPAQUE: &str = "trusted.overlay.opaque";

fn whiteout(path: &Path) {
    mknodat(CWD, path, FileType::CharacterDevice, Mode::empty(), makedev(0, 0)).expect("mknod 0:0");
}

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn is_opaque(path: &Path) -> bool {
    let mut value = [0u8; 4];
    matches!(getxattr(path, OPAQUE, &mut value[..]), Ok(1) if value[0] == b'y')
}

fn archive_names(archive: &[u8]) -> Vec<String> {
    let tar = zstd::decode_all(archive).expect("decompress");
    let mut reader = tar::Archive::new(tar.as_slice());
    let entries = reader.entries().expect("entries");
    entries.map(|e| e.expect("entry").path().expect("path").display().to_string()).collect()
}

#[test]
fn whiteouts_become_markers_and_come_back() {
    if skip_unless(is_root(), "creating whiteouts (0:0 devices, trusted xattrs) needs root") {
        return;
    }
    let workspace = tempfile::tempdir().expect("tempdir");
    let layer = tempfile::tempdir().expect("tempdir");
    fs::write(workspace.path().join(".wh.not-a-whiteout"), b"a workspace file").expect("write");
    whiteout(&layer.path().join("gone"));
    fs::create_dir_all(layer.path().join("opq")).expect("mkdir");
    setxattr(layer.path().join("opq"), OPAQUE, b"y", XattrFlags::empty()).expect("set opaque");
    fs::write(layer.path().join("opq/new.txt"), b"new").expect("write");
    fs::create_dir(layer.path().join("sub")).expect("mkdir");
    whiteout(&layer.path().join("sub/gone2"));
    fs::write(layer.path().join("kept.txt"), b"kept").expect("write");
    fs::write(layer.path().join(".wh.sneaky"), b"a real file named like a marker").expect("write");

    let sources = [Source::dir("workspace", workspace.path()), Source::overlay_layer("layer", layer.path())];
    let mut archive = Vec::new();
    let packed = pack_sources(&sources, &mut archive, &PackOptions::default()).expect("pack");
    let names = archive_names(&archive);
    for expected in ["layer/.wh.gone", "layer/opq/.wh..wh..opq", "layer/sub/.wh.gone2", "workspace/.wh.not-a-whiteout"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("sneaky")), "{names:?}");
    assert_eq!(packed.skipped.len(), 1);
    assert_eq!(packed.skipped[0].reason, SkipReason::WhiteoutNameClash);

    let restored = Arena::new();
    let options =
        UnpackOptions { restore_whiteouts: RestoreWhiteouts::Under(vec!["layer".into()]), ..UnpackOptions::default() };
    let stats = restored.unpack(&archive, &options).expect("unpack");
    let dest = restored.dest();
    assert!(is_whiteout(&dest.join("layer/gone")));
    assert!(is_whiteout(&dest.join("layer/sub/gone2")));
    assert!(is_opaque(&dest.join("layer/opq")));
    assert!(!dest.join("layer/opq/.wh..wh..opq").exists());
    assert_eq!(fs::read(dest.join("layer/opq/new.txt")).expect("read"), b"new");
    assert!(dest.join("workspace/.wh.not-a-whiteout").is_file(), "outside the layer a marker name is a file");
    assert_eq!(stats.whiteouts_restored, 3);
    assert_eq!(stats.file_count, packed.file_count);

    let plain = Arena::new();
    let stats = plain.unpack(&archive, &UnpackOptions::default()).expect("unpack");
    assert_eq!(stats.whiteouts_restored, 0);
    assert!(plain.dest().join("layer/.wh.gone").is_file());
    assert!(plain.dest().join("layer/opq/.wh..wh..opq").is_file());
    assert!(!is_opaque(&plain.dest().join("layer/opq")));
}

#[test]
fn malformed_markers_are_refused_when_restoring() {
    use crate::support::{archive, assert_unsafe, file};
    let everywhere = UnpackOptions { restore_whiteouts: RestoreWhiteouts::Everywhere, ..UnpackOptions::default() };
    for name in [".wh.", ".wh..", ".wh...", ".wh..wh.other"] {
        let arena = Arena::new();
        assert_unsafe(arena.unpack(&archive(&[file(name, b"")]), &everywhere), name);
        arena.assert_outside_untouched();
    }
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Mounted {
    fn overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Option<Self> {
        let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        let status = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(target).status();
        status.is_ok_and(|s| s.success()).then(|| Self(target.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_real_overlay_sees_the_restored_whiteouts() {
    if skip_unless(is_root(), "mounting overlayfs needs root") {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let dir = |name: &str| {
        let path = base.path().join(name);
        fs::create_dir_all(&path).expect("mkdir");
        path
    };
    let (lower, upper, work, merged) = (dir("lower"), dir("upper"), dir("work"), dir("merged"));
    fs::write(lower.join("keep"), b"keep").expect("write");
    fs::write(lower.join("remove_me"), b"bye").expect("write");
    fs::create_dir(lower.join("d")).expect("mkdir");
    fs::write(lower.join("d/old"), b"old").expect("write");

    {
        let mount = Mounted::overlay(&lower, &upper, &work, &merged);
        if skip_unless(mount.is_some(), "cannot mount overlayfs here") {
            return;
        }
        fs::remove_file(merged.join("remove_me")).expect("rm");
        fs::remove_dir_all(merged.join("d")).expect("rm -r");
        fs::create_dir(merged.join("d")).expect("mkdir");
        fs::write(merged.join("d/new"), b"new").expect("write");
    }
    assert!(is_whiteout(&upper.join("remove_me")), "overlayfs made a whiteout");
    assert!(is_opaque(&upper.join("d")), "overlayfs made an opaque directory");

    let mut archive = Vec::new();
    pack_sources(&[Source::overlay_layer("layer", &upper)], &mut archive, &PackOptions::default()).expect("pack");
    let arena = Arena::new();
    let options = UnpackOptions { restore_whiteouts: RestoreWhiteouts::Everywhere, ..UnpackOptions::default() };
    arena.unpack(&archive, &options).expect("unpack");

    let (work2, merged2) = (dir("work2"), dir("merged2"));
    let _mount = Mounted::overlay(&lower, &arena.dest().join("layer"), &work2, &merged2).expect("mount restored layer");
    let mut names: Vec<_> = fs::read_dir(&merged2)
        .expect("read")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["d", "keep"], "remove_me stays deleted");
    let inside: Vec<_> =
        fs::read_dir(merged2.join("d")).expect("read").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(inside, ["new"], "the opaque directory hides the lower d/old");
}
