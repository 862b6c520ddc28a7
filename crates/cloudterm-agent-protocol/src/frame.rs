//! The frame format of upgraded PTY streams: `[u8 kind][u32 big-endian len][payload]`.
//!
//! Kind [`KIND_DATA`] carries terminal bytes both ways, [`KIND_RESIZE`] a JSON
//! [`crate::PtyResize`] from the client, [`KIND_EXIT`] a JSON [`crate::PtyExit`] from the agent
//! (the last frame the agent sends).

/// Terminal bytes, both directions.
pub const KIND_DATA: u8 = 0;
/// Window size change, client to agent, JSON `{cols, rows}`.
pub const KIND_RESIZE: u8 = 1;
/// The program exited, agent to client, JSON `{code}`.
pub const KIND_EXIT: u8 = 2;
/// Largest payload accepted in one frame.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
/// Length of the frame header.
pub const HEADER_LEN: usize = 5;

/// Encodes one frame.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(kind);
    // Payloads are bounded by MAX_FRAME_LEN (callers split larger data), so this fits in u32.
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A malformed frame stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrameError {}

/// Incremental decoder: push bytes as they arrive, pop complete frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len > MAX_FRAME_LEN {
            return Err(FrameError(format!("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}")));
        }
        let end = HEADER_LEN + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[HEADER_LEN..end].to_vec();
        self.buf.drain(..end);
        Ok(Some((kind, payload)))
    }
}
