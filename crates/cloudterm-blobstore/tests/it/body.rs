//! Test bodies: deterministic pseudo-random bytes produced on the fly (never held whole), in
//! uneven reads, ending in EOF, an error, or a stall that never ends.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

/// Length of the pattern the bytes repeat with: prime, so no two parts of a multipart upload
/// (power-of-two sizes) hold the same bytes and a part put in the wrong place changes the hash.
const PERIOD: usize = 1_000_003;

fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..PERIOD)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    })
}

/// What happens after the body's bytes.
pub enum End {
    /// A clean end of file.
    Eof,
    /// A read error, as when the client's connection drops mid-upload.
    Fail,
    /// `Pending` forever; the sender fires when the body gets there.
    Stall(Option<oneshot::Sender<()>>),
}

/// `total` bytes of the pattern, at most `max_read` per read, then `end`.
pub struct Body {
    total: u64,
    produced: u64,
    max_read: usize,
    end: End,
}

impl Body {
    pub fn new(total: u64, end: End) -> Body {
        // An odd read size, so part boundaries fall in the middle of reads.
        Body { total, produced: 0, max_read: 100_003, end }
    }

    /// A body that ends cleanly.
    pub fn eof(total: u64) -> Body {
        Body::new(total, End::Eof)
    }

    /// SHA-256 (hex) of the first `total` bytes of the pattern.
    pub fn sha256_hex(total: u64) -> String {
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        while offset < total {
            let chunk = chunk_at(offset, (total - offset).min(1 << 20) as usize);
            hasher.update(chunk);
            offset += chunk.len() as u64;
        }
        hex::encode(hasher.finalize())
    }
}

/// Up to `len` bytes of the pattern at `offset`, not crossing the end of the pattern.
fn chunk_at(offset: u64, len: usize) -> &'static [u8] {
    let start = (offset % PERIOD as u64) as usize;
    let end = (start + len).min(PERIOD);
    &pattern()[start..end]
}

impl AsyncRead for Body {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.produced < self.total {
            let want = (self.total - self.produced).min(self.max_read as u64).min(buf.remaining() as u64);
            let chunk = chunk_at(self.produced, want as usize);
            buf.put_slice(chunk);
            self.produced += chunk.len() as u64;
            return Poll::Ready(Ok(()));
        }
        match &mut self.end {
            End::Eof => Poll::Ready(Ok(())),
            End::Fail => Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client went away"))),
            End::Stall(reached) => {
                if let Some(reached) = reached.take() {
                    let _ = reached.send(());
                }
                Poll::Pending
            }
        }
    }
}
