//! Owner mapping for writable layers: a tree owned by one user namespace's host range is
//! stored with namespace-relative owners and restored into another range, and a stored owner
//! outside the range cannot reach a host id outside it.

use std::os::unix::fs::{lchown, symlink, MetadataExt};

use cloudterm_archive::{pack, unpack, OwnerMap, PackOptions, UnpackOptions};

use crate::support::{is_root, skip_unless};

const SOURCE: OwnerMap = OwnerMap { host_base: 100_000, count: 65_536 };
const TARGET: OwnerMap = OwnerMap { host_base: 300_000, count: 65_536 };

fn options(owners: Option<OwnerMap>) -> PackOptions {
    PackOptions { threads: 0, owners, ..PackOptions::default() }
}

#[test]
fn layer_owners_move_from_one_range_to_another() {
    if skip_unless(is_root(), "chown needs root") {
        return;
    }
    let src = tempfile::tempdir().expect("src");
    let root = src.path();
    std::fs::create_dir(root.join("home")).expect("home");
    std::fs::write(root.join("home/notes"), "mine").expect("notes");
    symlink("notes", root.join("home/link")).expect("link");
    std::fs::write(root.join("hosts-own"), "host root").expect("host file");
    lchown(root, Some(100_000), Some(100_000)).expect("chown root");
    lchown(root.join("home"), Some(101_000), Some(101_000)).expect("chown home");
    lchown(root.join("home/notes"), Some(101_000), Some(100_005)).expect("chown notes");
    lchown(root.join("home/link"), Some(101_000), Some(101_000)).expect("chown link");
    // hosts-own stays host root (0): outside the range, it must not come back as anyone real.

    let mut archive = Vec::new();
    pack(root, &mut archive, &options(Some(SOURCE))).expect("pack");

    // What the archive says: ids inside the namespace.
    let mut tar = tar::Archive::new(zstd::Decoder::new(&archive[..]).expect("zstd"));
    let owners: Vec<(String, u64, u64)> = tar
        .entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            let h = e.header();
            (e.path().expect("path").display().to_string(), h.uid().expect("uid"), h.gid().expect("gid"))
        })
        .collect();
    assert!(owners.contains(&("home/notes".into(), 1000, 5)), "{owners:?}");
    assert!(owners.contains(&("hosts-own".into(), 65_534, 65_534)), "{owners:?}");

    let dest = tempfile::tempdir().expect("dest");
    let unpack_options = UnpackOptions { owners: Some(TARGET), ..UnpackOptions::default() };
    unpack(&archive[..], dest.path(), &unpack_options).expect("unpack");
    let meta = |rel: &str| std::fs::symlink_metadata(dest.path().join(rel)).expect(rel);
    assert_eq!((meta("home").uid(), meta("home").gid()), (301_000, 301_000));
    assert_eq!((meta("home/notes").uid(), meta("home/notes").gid()), (301_000, 300_005));
    assert_eq!(meta("home/link").uid(), 301_000);
    assert_eq!(meta("hosts-own").uid(), 300_000 + 65_534);
    assert_eq!(std::fs::read_to_string(dest.path().join("home/notes")).expect("read"), "mine");

    // Without a map, a restore keeps everything owned by the extracting user.
    let plain = tempfile::tempdir().expect("plain");
    unpack(&archive[..], plain.path(), &UnpackOptions::default()).expect("unpack plain");
    assert_eq!(std::fs::metadata(plain.path().join("home/notes")).expect("notes").uid(), 0);
}

#[test]
fn a_stored_owner_past_the_range_stays_inside_it() {
    if skip_unless(is_root(), "chown needs root") {
        return;
    }
    // A tree packed without a map stores host ids as they are (here 0 and 150000).
    let src = tempfile::tempdir().expect("src");
    std::fs::write(src.path().join("far"), "x").expect("far");
    lchown(src.path().join("far"), Some(150_000), Some(150_000)).expect("chown");
    let mut archive = Vec::new();
    pack(src.path(), &mut archive, &options(None)).expect("pack");

    let narrow = OwnerMap { host_base: 400_000, count: 1000 };
    let dest = tempfile::tempdir().expect("dest");
    unpack(&archive[..], dest.path(), &UnpackOptions { owners: Some(narrow), ..UnpackOptions::default() })
        .expect("unpack");
    let uid = std::fs::metadata(dest.path().join("far")).expect("far").uid();
    assert!((400_000..401_000).contains(&uid), "owner {uid} escaped the range");
}
