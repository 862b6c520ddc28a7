//! Bombs: archives that would fill the disk, exhaust inodes or memory are stopped at the
//! configured limits, before the damage.

use std::io::Write;

use cloudterm_archive::{ArchiveError, UnpackOptions};
use tar::{EntryType, Header};

use crate::support::{archive, dir, file, gnu_long, Arena};

fn limits(max_bytes: u64, max_entries: u64) -> UnpackOptions {
    UnpackOptions { max_bytes, max_entries, ..UnpackOptions::default() }
}

fn disk_usage(root: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(entry.path());
            }
            total += meta.len();
        }
    }
    total
}

#[test]
fn the_byte_limit_counts_all_entry_data() {
    let mib = vec![1u8; 1 << 20];
    let entries = [file("a", &mib), file("b", &mib), file("c", &mib)];
    let arena = Arena::new();
    arena.unpack(&archive(&entries), &limits(3 << 20, 100)).expect("exactly at the limit is fine");

    let arena = Arena::new();
    let result = arena.unpack(&archive(&entries), &limits((3 << 20) - 1, 100));
    assert!(matches!(result, Err(ArchiveError::TooLarge(_))), "{result:?}");
    assert!(!arena.dest().join("c").exists(), "the entry over the limit was not written");
}

#[test]
fn the_entry_limit_counts_directories_and_links_too() {
    let entries: Vec<_> =
        (0..10).map(|i| if i % 2 == 0 { dir(&format!("d{i}/")) } else { file(&format!("f{i}"), b"") }).collect();
    let arena = Arena::new();
    arena.unpack(&archive(&entries), &limits(1 << 20, 10)).expect("exactly at the limit is fine");
    let arena = Arena::new();
    let result = arena.unpack(&archive(&entries), &limits(1 << 20, 9));
    assert!(matches!(result, Err(ArchiveError::TooLarge(_))), "{result:?}");
}

/// A tar of one `size`-byte file of zeros, compressed as a stream (never in memory whole).
fn zero_bomb(size: u64) -> Vec<u8> {
    let mut encoder = zstd::Encoder::new(Vec::new(), 3).expect("encoder");
    let mut header = Header::new_gnu();
    header.set_path("bomb").expect("path");
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_cksum();
    encoder.write_all(header.as_bytes()).expect("header");
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        encoder.write_all(&zeros[..n]).expect("zeros");
        left -= n as u64;
    }
    encoder.write_all(&[0u8; 1024]).expect("end marker");
    encoder.finish().expect("finish")
}

#[test]
fn a_zstd_bomb_is_refused_before_it_is_written() {
    let bomb = zero_bomb(1 << 30);
    assert!(bomb.len() < 1 << 20, "1 GiB of zeros compresses to {} bytes", bomb.len());
    let arena = Arena::new();
    let result = arena.unpack(&bomb, &limits(64 << 20, 1000));
    assert!(matches!(result, Err(ArchiveError::TooLarge(_))), "{result:?}");
    assert_eq!(disk_usage(&arena.dest()), 0);
}

#[test]
fn a_huge_long_name_is_refused_before_it_is_read() {
    let mut long = gnu_long(EntryType::GNULongName, b"x");
    // Claim 1 GiB of name: only the header says so, and that is enough to refuse it.
    let mut header = Header::new_gnu();
    header.as_mut_bytes().copy_from_slice(&long[..512]);
    header.set_size(1 << 30);
    header.set_cksum();
    long[..512].copy_from_slice(header.as_bytes());
    let arena = Arena::new();
    let result = arena.unpack(&archive(&[long, file("f", b"x")]), &UnpackOptions::default());
    assert!(matches!(result, Err(ArchiveError::TooLarge(_))), "{result:?}");
}

#[test]
fn a_flood_of_zeros_after_the_end_is_refused() {
    let mut tar = file("f", b"x");
    tar.extend_from_slice(&vec![0u8; 64 << 20]);
    let compressed = zstd::encode_all(tar.as_slice(), 3).expect("compress");
    let arena = Arena::new();
    let result = arena.unpack(&compressed, &UnpackOptions::default());
    assert!(matches!(&result, Err(ArchiveError::Corrupt(m)) if m.contains("after the end")), "{result:?}");
}
