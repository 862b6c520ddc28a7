//! Bytes that are not what was written: wrong checksums, wrong keys, flipped and missing
//! bytes, each reported as the right error.

use std::fs;
use std::io::{self, Read};

use cloudterm_archive::{pack, unpack, ArchiveError, Key, PackOptions, UnpackOptions};

use crate::support::{file, Arena};

fn sample_tree() -> tempfile::TempDir {
    let source = tempfile::tempdir().expect("tempdir");
    for i in 0..50 {
        let data: Vec<u8> =
            (0..20_000u32).map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8).collect();
        fs::write(source.path().join(format!("file{i}")), data).expect("write");
    }
    source
}

fn packed(key: Option<Key>) -> (Vec<u8>, String) {
    let source = sample_tree();
    let mut out = Vec::new();
    let stats = pack(source.path(), &mut out, &PackOptions { key, ..PackOptions::default() }).expect("pack");
    (out, stats.sha256_hex)
}

fn unpack_fresh(archive: &[u8], options: &UnpackOptions) -> Result<cloudterm_archive::UnpackStats, ArchiveError> {
    let arena = Arena::new();
    let result = arena.unpack(archive, options);
    arena.assert_outside_untouched();
    result
}

#[test]
fn a_checksum_mismatch_fails_even_when_the_archive_is_valid() {
    let (archive, sha) = packed(None);
    let wrong = "0".repeat(64);
    let result = unpack_fresh(&archive, &UnpackOptions { expected_sha256: Some(wrong), ..UnpackOptions::default() });
    match result {
        Err(ArchiveError::ChecksumMismatch { actual, .. }) => assert_eq!(actual, sha),
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    let upper = UnpackOptions { expected_sha256: Some(sha.to_uppercase()), ..UnpackOptions::default() };
    unpack_fresh(&archive, &upper).expect("the right checksum passes, in any case");
}

#[test]
fn the_checksum_covers_bytes_after_the_archive() {
    let (mut archive, sha) = packed(None);
    archive.extend_from_slice(b"appended");
    let result = unpack_fresh(&archive, &UnpackOptions { expected_sha256: Some(sha), ..UnpackOptions::default() });
    assert!(matches!(result, Err(ArchiveError::ChecksumMismatch { .. })), "{result:?}");
}

#[test]
fn a_flipped_byte_is_corrupt_or_a_checksum_mismatch() {
    let (archive, sha) = packed(None);
    for position in [archive.len() / 3, archive.len() / 2, archive.len() - 2] {
        let mut flipped = archive.clone();
        flipped[position] ^= 0x40;
        let result = unpack_fresh(&flipped, &UnpackOptions::default());
        assert!(matches!(result, Err(ArchiveError::Corrupt(_))), "at {position}: {result:?}");
        let with_sha = UnpackOptions { expected_sha256: Some(sha.clone()), ..UnpackOptions::default() };
        let result = unpack_fresh(&flipped, &with_sha);
        assert!(matches!(result, Err(ArchiveError::ChecksumMismatch { .. })), "at {position}: {result:?}");
    }
}

#[test]
fn a_truncated_stream_is_detected() {
    let (archive, _) = packed(None);
    for cut in [0, 3, 100, archive.len() / 2, archive.len() - 1] {
        let result = unpack_fresh(&archive[..cut], &UnpackOptions::default());
        assert!(matches!(result, Err(ArchiveError::Corrupt(_))), "cut at {cut}: {result:?}");
    }
    let (encrypted, _) = packed(Some(Key::from_bytes([1; 32])));
    let options = UnpackOptions { key: Some(Key::from_bytes([1; 32])), ..UnpackOptions::default() };
    for cut in [10, 24, encrypted.len() / 2, encrypted.len() - 1] {
        let result = unpack_fresh(&encrypted[..cut], &options);
        assert!(matches!(result, Err(ArchiveError::Decrypt(_))), "cut at {cut}: {result:?}");
    }
}

#[test]
fn a_tar_without_its_end_marker_is_corrupt() {
    let tar = file("a", b"x");
    let compressed = zstd::encode_all(tar.as_slice(), 3).expect("compress");
    let result = unpack_fresh(&compressed, &UnpackOptions::default());
    assert!(matches!(&result, Err(ArchiveError::Corrupt(m)) if m.contains("end-of-archive")), "{result:?}");
}

#[test]
fn junk_is_corrupt() {
    let result = unpack_fresh(b"this is not an archive at all, just text", &UnpackOptions::default());
    assert!(matches!(result, Err(ArchiveError::Corrupt(_))), "{result:?}");
    let not_tar = zstd::encode_all(&[0x55u8; 4096][..], 3).expect("compress");
    let result = unpack_fresh(&not_tar, &UnpackOptions::default());
    assert!(matches!(result, Err(ArchiveError::Corrupt(_))), "{result:?}");
}

#[test]
fn a_wrong_key_or_tampered_ciphertext_fails_to_decrypt() {
    let key = Key::from_bytes([7; 32]);
    let (archive, sha) = packed(Some(key.clone()));
    let with = |key: Option<Key>| UnpackOptions { key, ..UnpackOptions::default() };

    let result = unpack_fresh(&archive, &with(Some(Key::from_bytes([8; 32]))));
    assert!(matches!(result, Err(ArchiveError::Decrypt(_))), "wrong key: {result:?}");
    // With the right checksum, a wrong key is still a decryption error, not a mismatch.
    let wrong_key_right_sum =
        UnpackOptions { key: Some(Key::from_bytes([8; 32])), expected_sha256: Some(sha), ..UnpackOptions::default() };
    assert!(matches!(unpack_fresh(&archive, &wrong_key_right_sum), Err(ArchiveError::Decrypt(_))));

    for position in [5, 30, archive.len() / 2, archive.len() - 1] {
        let mut flipped = archive.clone();
        flipped[position] ^= 0x01;
        let result = unpack_fresh(&flipped, &with(Some(key.clone())));
        assert!(matches!(result, Err(ArchiveError::Decrypt(_))), "flipped at {position}: {result:?}");
    }

    let result = unpack_fresh(&archive, &with(None));
    assert!(matches!(&result, Err(ArchiveError::Decrypt(m)) if m.contains("no key")), "no key: {result:?}");
    let (plain, _) = packed(None);
    let result = unpack_fresh(&plain, &with(Some(key)));
    assert!(matches!(&result, Err(ArchiveError::Decrypt(m)) if m.contains("not encrypted")), "{result:?}");
}

/// An input that fails part-way, like a dropped download.
struct FailingReader<'a> {
    data: &'a [u8],
    fail_at: usize,
}

impl Read for FailingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fail_at == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection reset"));
        }
        let n = buf.len().min(self.fail_at).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.fail_at -= n;
        Ok(n)
    }
}

#[test]
fn an_input_error_is_io_not_corrupt() {
    let (archive, sha) = packed(None);
    for expected_sha256 in [None, Some(sha)] {
        let arena = Arena::new();
        let input = FailingReader { data: &archive, fail_at: archive.len() / 2 };
        let options = UnpackOptions { expected_sha256, ..UnpackOptions::default() };
        let result = unpack(input, &arena.dest(), &options);
        assert!(matches!(result, Err(ArchiveError::Io { .. })), "{result:?}");
    }
}
