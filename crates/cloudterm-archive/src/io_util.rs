//! The stream adapters around the archive: hashing and counting the raw bytes, reading a live
//! file as exactly the size its header promised, and telling apart whose fault a read error is.

use std::cell::Cell;
use std::error::Error as StdError;
use std::fmt;
use std::io::{self, Read, Write};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::ArchiveError;

/// Hashes and counts everything written through it: the archive's `stored_bytes` and
/// `sha256_hex` are those of the bytes the caller's writer received, whatever layers ran above.
pub(crate) struct HashingWriter<W> {
    inner: W,
    /// `None` when the caller hashes the bytes itself (it saves the packing thread the work).
    hasher: Option<Sha256>,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W, hash: bool) -> Self {
        Self { inner, hasher: hash.then(Sha256::new), count: 0 }
    }

    /// Flushes the inner writer and returns (bytes written, hex SHA-256 or "" when not hashing).
    pub(crate) fn finish(mut self) -> io::Result<(u64, String)> {
        self.inner.flush()?;
        Ok((self.count, self.hasher.map(|h| hex::encode(h.finalize())).unwrap_or_default()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..written]);
        }
        self.count += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Marks an error that came from the caller's input stream itself (a dropped connection, a
/// storage read error), so it is reported as [`ArchiveError::Io`] and not as a corrupt archive.
#[derive(Debug)]
pub(crate) struct InputFailure(pub(crate) io::Error);

impl fmt::Display for InputFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading the archive input: {}", self.0)
    }
}

impl StdError for InputFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// Marks an authentication failure of the encrypted stream (see `crypt`).
#[derive(Debug)]
pub(crate) struct DecryptFailure(pub(crate) &'static str);

impl fmt::Display for DecryptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for DecryptFailure {}

/// Hashes and counts everything read through it, and tags the input's own errors with
/// [`InputFailure`]. It sits directly on the caller's input so the checksum covers the raw bytes.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    /// Reads the rest of the input (so the checksum covers all of it) and returns
    /// (bytes read, hex SHA-256).
    pub(crate) fn drain_and_finish(mut self) -> Result<(u64, String), ArchiveError> {
        io::copy(&mut self, &mut io::sink()).map_err(classify_read_error)?;
        Ok((self.count, hex::encode(self.hasher.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.hasher.update(&buf[..n]);
                    self.count += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), InputFailure(e))),
            }
        }
    }
}

/// Counts the bytes read through it into a shared cell, so the extractor can still see the
/// position after the tar reader took ownership of the stream.
pub(crate) struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> CountingReader<R> {
    pub(crate) fn new(inner: R, count: Rc<Cell<u64>>) -> Self {
        Self { inner, count }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Reads a file as exactly `size` bytes: the tar header was written with the size `fstat`
/// reported, and a live sandbox may grow or shrink the file while we read it. Growth is cut
/// off, shrinkage is padded with zeros, and either is recorded so the caller can report it;
/// the archive stays well-formed either way.
pub(crate) struct ExactReader<R> {
    inner: R,
    remaining: u64,
    short: bool,
}

impl<R: Read> ExactReader<R> {
    pub(crate) fn new(inner: R, size: u64) -> Self {
        Self { inner, remaining: size, short: false }
    }

    /// Whether the file ended before its recorded size (and was padded with zeros).
    pub(crate) fn was_short(&self) -> bool {
        self.short
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(buf.len());
        let n = if self.short { 0 } else { self.inner.read(&mut buf[..want])? };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Turns an error from the read side of unpacking (decryption, zstd, tar parsing) into the
/// variant that says whose fault it is: a [`DecryptFailure`] anywhere in the chain is a
/// decryption error, an [`InputFailure`] is the input's own I/O error, anything else means the
/// bytes are not a valid archive.
pub(crate) fn classify_read_error(error: io::Error) -> ArchiveError {
    let mut current: Option<&(dyn StdError + 'static)> = error.get_ref().map(|e| e as &(dyn StdError + 'static));
    while let Some(e) = current {
        if let Some(failure) = e.downcast_ref::<DecryptFailure>() {
            return ArchiveError::Decrypt(failure.0.to_string());
        }
        if let Some(InputFailure(inner)) = e.downcast_ref::<InputFailure>() {
            return ArchiveError::io("reading the archive input", io::Error::new(inner.kind(), inner.to_string()));
        }
        // An io::Error's `source()` skips its own payload, which is where our markers sit.
        current = match e.downcast_ref::<io::Error>() {
            Some(io_error) => io_error.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    ArchiveError::Corrupt(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_reader_pads_a_shrunk_file_and_cuts_a_grown_one() {
        let mut short = ExactReader::new(&b"abc"[..], 6);
        let mut out = Vec::new();
        short.read_to_end(&mut out).expect("read");
        assert_eq!(out, b"abc\0\0\0");
        assert!(short.was_short());

        let mut long = ExactReader::new(&b"abcdef"[..], 2);
        let mut out = Vec::new();
        long.read_to_end(&mut out).expect("read");
        assert_eq!(out, b"ab");
        assert!(!long.was_short());
    }

    #[test]
    fn errors_are_classified_through_wrapping_layers() {
        let decrypt = io::Error::new(io::ErrorKind::InvalidData, DecryptFailure("bad tag"));
        let wrapped = io::Error::other(Wrapper(decrypt));
        assert!(matches!(classify_read_error(wrapped), ArchiveError::Decrypt(_)));

        let input = io::Error::new(io::ErrorKind::ConnectionReset, InputFailure(io::ErrorKind::ConnectionReset.into()));
        assert!(matches!(classify_read_error(input), ArchiveError::Io { .. }));

        let other = io::Error::new(io::ErrorKind::InvalidData, "unknown frame descriptor");
        assert!(matches!(classify_read_error(other), ArchiveError::Corrupt(_)));
    }

    /// Stands in for the tar crate's own error type, which keeps the io::Error as its source.
    #[derive(Debug)]
    struct Wrapper(io::Error);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }
}
