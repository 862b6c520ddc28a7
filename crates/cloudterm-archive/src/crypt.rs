//! Optional encryption of the compressed stream: XChaCha20-Poly1305 in the STREAM construction
//! (64 KiB segments), behind a small header.
//!
//! Layout: `b"CTAE"` (magic), one version byte (`1`), a 19-byte random nonce prefix, then
//! segments of `64 KiB + 16`-byte ciphertexts, the last one shorter (possibly just a tag) and
//! sealed with STREAM's "last" flag. Every segment authenticates the magic and version as
//! associated data. STREAM makes reordering, dropping, duplicating and truncating segments fail
//! authentication, so a reader never hands out unauthenticated bytes and learns about a cut-off
//! stream at its end. XChaCha's 24-byte nonce leaves 19 random bytes of prefix, so one key can
//! safely seal any number of snapshots.

use std::fmt;
use std::io::{self, Read, Write};

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{generic_array::GenericArray, rand_core::RngCore, KeyInit, OsRng};
use chacha20poly1305::XChaCha20Poly1305;

use crate::io_util::DecryptFailure;

/// Identifies an encrypted cloudterm archive (and sets it apart from zstd's magic).
pub(crate) const MAGIC: &[u8; 4] = b"CTAE";
/// The format version in the header; a reader refuses versions it does not know.
const VERSION: u8 = 1;
/// Bytes of nonce prefix: XChaCha20's 24-byte nonce minus STREAM-BE32's 4-byte counter and
/// 1-byte last flag.
const NONCE_PREFIX_LEN: usize = 19;
/// Header length: magic, version, nonce prefix.
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_PREFIX_LEN;
/// Plaintext bytes per segment.
const SEGMENT: usize = 64 * 1024;
/// The Poly1305 tag after each segment.
const TAG: usize = 16;

/// A 32-byte symmetric key for snapshot encryption, supplied by the caller (from its KMS or
/// config). `Debug` does not print it.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(GenericArray::from_slice(&self.0))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

fn decrypt_error(reason: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, DecryptFailure(reason))
}

/// Encrypts everything written to it. [`EncryptWriter::finish`] seals the last segment; a
/// writer dropped without it leaves a stream that fails to decrypt, which is what we want for
/// an interrupted pack.
pub(crate) struct EncryptWriter<W: Write> {
    inner: W,
    encryptor: Option<EncryptorBE32<XChaCha20Poly1305>>,
    buffer: Vec<u8>,
    aad: [u8; 5],
}

impl<W: Write> EncryptWriter<W> {
    /// Writes the header with a fresh random nonce prefix.
    pub(crate) fn new(mut inner: W, key: &Key) -> io::Result<Self> {
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        OsRng.fill_bytes(&mut prefix);
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4] = VERSION;
        header[5..].copy_from_slice(&prefix);
        inner.write_all(&header)?;
        let encryptor = EncryptorBE32::from_aead(key.cipher(), GenericArray::from_slice(&prefix));
        let mut aad = [0u8; 5];
        aad.copy_from_slice(&header[..5]);
        Ok(Self { inner, encryptor: Some(encryptor), buffer: Vec::with_capacity(SEGMENT + TAG), aad })
    }

    /// Seals the final segment (possibly empty) and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let encryptor = self.encryptor.take().ok_or_else(|| io::Error::other("encryptor already finished"))?;
        encryptor
            .encrypt_last_in_place(&self.aad, &mut self.buffer)
            .map_err(|_| io::Error::other("cannot seal the last segment"))?;
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(self.inner)
    }

    /// Seals a full buffer as a non-final segment. Only called when more plaintext follows, so
    /// the final segment is always sealed by `finish` with the last flag.
    fn seal_full_segment(&mut self) -> io::Result<()> {
        let encryptor = self.encryptor.as_mut().ok_or_else(|| io::Error::other("encryptor already finished"))?;
        encryptor
            .encrypt_next_in_place(&self.aad, &mut self.buffer)
            .map_err(|_| io::Error::other("too many segments for one stream"))?;
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.buffer.len() == SEGMENT {
            self.seal_full_segment()?;
        }
        let take = (SEGMENT - self.buffer.len()).min(buf.len());
        self.buffer.extend_from_slice(&buf[..take]);
        Ok(take)
    }

    /// Flushes only the inner writer: a partial segment cannot be sealed early without ending
    /// the stream.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts and authenticates segment by segment; only authenticated plaintext is returned, and
/// end of stream is reported only after the segment sealed as last has been verified.
pub(crate) struct DecryptReader<R: Read> {
    inner: R,
    decryptor: Option<DecryptorBE32<XChaCha20Poly1305>>,
    aad: [u8; 5],
    /// Ciphertext being assembled: one full segment plus one byte of look-ahead, so we know
    /// whether a full segment is the last one.
    pending: Vec<u8>,
    plain: Vec<u8>,
    plain_pos: usize,
    done: bool,
}

impl<R: Read> DecryptReader<R> {
    /// Reads and checks the header.
    pub(crate) fn new(mut inner: R, key: &Key) -> io::Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        read_full(&mut inner, &mut header).and_then(|n| {
            if n == HEADER_LEN {
                Ok(())
            } else {
                Err(decrypt_error("the stream is too short to be an encrypted archive"))
            }
        })?;
        if &header[..4] != MAGIC {
            return Err(decrypt_error("not an encrypted archive (no encryption header), or a wrong format"));
        }
        if header[4] != VERSION {
            return Err(decrypt_error("unknown encryption format version"));
        }
        let decryptor = DecryptorBE32::from_aead(key.cipher(), GenericArray::from_slice(&header[5..]));
        let mut aad = [0u8; 5];
        aad.copy_from_slice(&header[..5]);
        Ok(Self {
            inner,
            decryptor: Some(decryptor),
            aad,
            pending: Vec::with_capacity(SEGMENT + TAG + 1),
            plain: Vec::with_capacity(SEGMENT + TAG),
            plain_pos: 0,
            done: false,
        })
    }

    /// Decrypts the next segment into `plain`.
    fn next_segment(&mut self) -> io::Result<()> {
        let want = SEGMENT + TAG + 1;
        let have = self.pending.len();
        self.pending.resize(want, 0);
        let got = read_full(&mut self.inner, &mut self.pending[have..])?;
        self.pending.truncate(have + got);
        let last = self.pending.len() < want;
        if last && self.pending.len() < TAG {
            return Err(decrypt_error("the encrypted stream is truncated"));
        }
        let segment_len = self.pending.len().min(SEGMENT + TAG);
        self.plain.clear();
        self.plain.extend_from_slice(&self.pending[..segment_len]);
        self.pending.drain(..segment_len);
        self.plain_pos = 0;
        if last {
            let decryptor = self.decryptor.take().ok_or_else(|| decrypt_error("the stream was already finished"))?;
            decryptor.decrypt_last_in_place(&self.aad, &mut self.plain).map_err(|_| {
                decrypt_error("authentication failed (wrong key, or the data was modified or truncated)")
            })?;
            self.done = true;
        } else {
            let decryptor = self.decryptor.as_mut().ok_or_else(|| decrypt_error("the stream was already finished"))?;
            decryptor.decrypt_next_in_place(&self.aad, &mut self.plain).map_err(|_| {
                decrypt_error("authentication failed (wrong key, or the data was modified or truncated)")
            })?;
        }
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.plain_pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_segment()?;
        }
        let n = (self.plain.len() - self.plain_pos).min(buf.len());
        buf[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_util::classify_read_error;
    use crate::ArchiveError;

    fn seal(key: &Key, plain: &[u8]) -> Vec<u8> {
        let mut writer = EncryptWriter::new(Vec::new(), key).expect("header");
        // Odd-sized writes exercise segment boundaries.
        for chunk in plain.chunks(7_777) {
            writer.write_all(chunk).expect("write");
        }
        writer.finish().expect("finish")
    }

    fn open(key: &Key, sealed: &[u8]) -> io::Result<Vec<u8>> {
        let mut reader = DecryptReader::new(sealed, key)?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; 32])
    }

    #[test]
    fn round_trips_at_and_around_segment_boundaries() {
        for len in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 3 * SEGMENT + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal(&key(1), &plain);
            let segments = len.div_ceil(SEGMENT).max(1);
            assert_eq!(sealed.len(), HEADER_LEN + len + segments * TAG, "len {len}");
            assert_eq!(open(&key(1), &sealed).expect("open"), plain, "len {len}");
        }
    }

    #[test]
    fn wrong_key_tampering_and_truncation_fail_authentication() {
        let plain = vec![7u8; 2 * SEGMENT + 10];
        let sealed = seal(&key(1), &plain);
        let is_decrypt =
            |r: io::Result<Vec<u8>>| matches!(r.map_err(classify_read_error), Err(ArchiveError::Decrypt(_)));

        assert!(is_decrypt(open(&key(2), &sealed)), "wrong key");
        for position in [0, 4, 5, HEADER_LEN, HEADER_LEN + SEGMENT + 3, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[position] ^= 0x01;
            assert!(is_decrypt(open(&key(1), &flipped)), "flipped byte at {position}");
        }
        // Cut at a segment boundary (the classic STREAM truncation) and mid-segment.
        for cut in [HEADER_LEN, HEADER_LEN + SEGMENT + TAG, HEADER_LEN + 2 * (SEGMENT + TAG), sealed.len() - 1] {
            assert!(is_decrypt(open(&key(1), &sealed[..cut])), "cut at {cut}");
        }
        // Dropping a whole middle segment.
        let mut dropped = sealed[..HEADER_LEN + SEGMENT + TAG].to_vec();
        dropped.extend_from_slice(&sealed[HEADER_LEN + 2 * (SEGMENT + TAG)..]);
        assert!(is_decrypt(open(&key(1), &dropped)), "dropped segment");
    }

    #[test]
    fn each_stream_gets_a_fresh_nonce_prefix() {
        let a = seal(&key(1), b"same");
        let b = seal(&key(1), b"same");
        assert_ne!(a[5..HEADER_LEN], b[5..HEADER_LEN]);
        assert_ne!(a, b);
    }

    /// A stream sealed once and kept: if a dependency upgrade (say to `aead-stream`) changed the
    /// construction, stored snapshots would stop opening, and this test says so first.
    #[test]
    fn the_format_is_stable() {
        let sealed = hex::decode(
            "43544145014bce941a7b7da9d1ea7ec5a48760baedeba9392e425e54f3ccd6ea36710de1f12d473ba57aa1c7cf0c9\
             0d380240fb48b10c221bd72cd0d06e6af65f19ae7",
        )
        .expect("hex");
        assert_eq!(open(&Key::from_bytes([0x11; 32]), &sealed).expect("opens"), b"cloudterm archive format v1");
    }

    #[test]
    fn the_key_is_not_printed() {
        assert_eq!(format!("{:?}", key(9)), "Key(<redacted>)");
    }
}
