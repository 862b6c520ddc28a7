//! The detach key sequence of `cloudterm attach`: parsing `--detach-keys` and spotting the
//! sequence in what the user types.
//!
//! The format is docker's (`ctrl-p,ctrl-q`), so people who know `docker attach` need not learn a
//! new one. The default is a single `ctrl-]`, telnet's escape key: one keystroke, and one that
//! shells and editors leave alone.

use std::fmt;

/// The default: telnet's escape key.
pub const DEFAULT: &str = "ctrl-]";

/// A sequence of bytes that detaches when typed in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys {
    bytes: Vec<u8>,
    text: String,
}

/// Why `--detach-keys` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetachKeysError {
    /// Nothing between two commas, or nothing at all.
    #[error("--detach-keys needs at least one key, like ctrl-] or ctrl-p,ctrl-q")]
    Empty,
    /// A key that is neither one character nor `ctrl-` and one of `a-z @ [ \ ] ^ _`.
    #[error("{0:?} is not a key: use a letter, or ctrl- with one of a-z @ [ \\ ] ^ _ (e.g. ctrl-p,ctrl-q)")]
    BadKey(String),
}

impl DetachKeys {
    /// Parses `ctrl-p,ctrl-q`, `ctrl-]`, `ctrl-@` or plain printable ASCII characters (`q`).
    pub fn parse(text: &str) -> Result<DetachKeys, DetachKeysError> {
        let mut bytes = Vec::new();
        for key in text.split(',') {
            let key = key.trim();
            if key.is_empty() {
                return Err(DetachKeysError::Empty);
            }
            let lower = key.to_ascii_lowercase();
            let byte = match lower.strip_prefix("ctrl-") {
                Some(rest) => match rest.as_bytes() {
                    [b @ b'a'..=b'z'] => b - b'a' + 1,
                    [b @ (b'@' | b'[' | b'\\' | b']' | b'^' | b'_')] => b - b'@',
                    _ => return Err(DetachKeysError::BadKey(key.to_string())),
                },
                None => match key.as_bytes() {
                    [b @ b' '..=b'~'] => *b,
                    _ => return Err(DetachKeysError::BadKey(key.to_string())),
                },
            };
            bytes.push(byte);
        }
        Ok(DetachKeys { bytes, text: text.trim().to_string() })
    }
}

impl fmt::Display for DetachKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a chunk of keystrokes amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed {
    /// Send these bytes (possibly none: a partial sequence is being held back).
    Send(Vec<u8>),
    /// The sequence was typed: send these bytes that came before it, then detach.
    Detach(Vec<u8>),
}

/// Watches keystrokes for the detach sequence across reads. The first keys of a longer sequence
/// are held back until the next key shows whether it is the sequence (then nothing of it is
/// sent) or not (then they are sent as typed), as docker does.
#[derive(Debug)]
pub struct Matcher {
    keys: DetachKeys,
    /// How many bytes of the sequence have been typed (and held back) so far.
    matched: usize,
}

impl Matcher {
    /// Watches for `keys`.
    pub fn new(keys: DetachKeys) -> Matcher {
        Matcher { keys, matched: 0 }
    }

    /// Feeds what the user typed.
    pub fn feed(&mut self, input: &[u8]) -> Typed {
        let sequence = &self.keys.bytes;
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if byte == sequence[self.matched] {
                self.matched += 1;
                if self.matched == sequence.len() {
                    self.matched = 0;
                    return Typed::Detach(out);
                }
                continue;
            }
            // Not the sequence after all: what was held back was typed for the program. The
            // byte may itself start the sequence again.
            out.extend_from_slice(&sequence[..self.matched]);
            self.matched = 0;
            if byte == sequence[0] {
                self.matched = 1;
                if sequence.len() == 1 {
                    return Typed::Detach(out);
                }
            } else {
                out.push(byte);
            }
        }
        Typed::Send(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> DetachKeys {
        DetachKeys::parse(text).expect("valid keys")
    }

    #[test]
    fn keys_parse_in_dockers_format() {
        assert_eq!(keys(DEFAULT).bytes, [0x1d]);
        assert_eq!(keys("ctrl-p,ctrl-q").bytes, [0x10, 0x11]);
        assert_eq!(keys("Ctrl-A, x").bytes, [0x01, b'x']);
        assert_eq!(keys("ctrl-@,ctrl-[,ctrl-\\,ctrl-^,ctrl-_").bytes, [0x00, 0x1b, 0x1c, 0x1e, 0x1f]);
        assert_eq!(keys("ctrl-p,ctrl-q").to_string(), "ctrl-p,ctrl-q");
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(DetachKeys::parse(""), Err(DetachKeysError::Empty));
        assert_eq!(DetachKeys::parse("ctrl-p,"), Err(DetachKeysError::Empty));
        for bad in ["ctrl-", "ctrl-1", "ctrl-pq", "alt-x", "é", "\u{7f}"] {
            assert!(matches!(DetachKeys::parse(bad), Err(DetachKeysError::BadKey(_))), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_single_key_detaches_and_keeps_what_came_before() {
        let mut matcher = Matcher::new(keys(DEFAULT));
        assert_eq!(matcher.feed(b"ls\r"), Typed::Send(b"ls\r".to_vec()));
        assert_eq!(matcher.feed(b"ab\x1dcd"), Typed::Detach(b"ab".to_vec()));
    }

    #[test]
    fn a_sequence_split_across_reads_detaches() {
        let mut matcher = Matcher::new(keys("ctrl-p,ctrl-q"));
        assert_eq!(matcher.feed(b"x\x10"), Typed::Send(b"x".to_vec()));
        assert_eq!(matcher.feed(b"\x11"), Typed::Detach(Vec::new()));
    }

    #[test]
    fn a_partial_sequence_is_sent_as_typed() {
        let mut matcher = Matcher::new(keys("ctrl-p,ctrl-q"));
        // Ctrl-P alone is shell history: it must reach the shell once the next key says so.
        assert_eq!(matcher.feed(b"\x10"), Typed::Send(Vec::new()));
        assert_eq!(matcher.feed(b"a"), Typed::Send(b"\x10a".to_vec()));
        // Ctrl-P Ctrl-P Ctrl-Q: the first is typed, the next two detach.
        assert_eq!(matcher.feed(b"\x10\x10\x11"), Typed::Detach(b"\x10".to_vec()));
    }
}
