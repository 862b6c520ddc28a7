//! Whether the session's program has the local terminal on its alternate screen, read from the
//! output as it passes, so detaching from `vim` or `htop` gives the user's own screen back.
//!
//! Only the usual sequences are recognised (`CSI ? 1049 h/l`, `? 1047`, `? 47`); a sequence split
//! across two frames is still seen, because the tail of each frame is kept for the next.

/// The sequences, as `(bytes, on)`.
const SWITCHES: [(&[u8], bool); 6] = [
    (b"\x1b[?1049h", true),
    (b"\x1b[?1049l", false),
    (b"\x1b[?1047h", true),
    (b"\x1b[?1047l", false),
    (b"\x1b[?47h", true),
    (b"\x1b[?47l", false),
];

/// Longest sequence, less one: how much of a frame's end could start one.
const CARRY: usize = 7;

/// Tracks the alternate screen from output.
#[derive(Debug, Default)]
pub struct AlternateScreen {
    on: bool,
    tail: Vec<u8>,
}

impl AlternateScreen {
    /// True when the last switch seen turned the alternate screen on.
    pub fn on(&self) -> bool {
        self.on
    }

    /// Looks at output on its way to the terminal.
    pub fn observe(&mut self, output: &[u8]) {
        if !output.contains(&0x1b) && self.tail.is_empty() {
            return;
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(output);
        let mut last: Option<(usize, bool)> = None;
        for (sequence, on) in SWITCHES {
            if let Some(at) = find_last(&window, sequence) {
                if last.is_none_or(|(seen, _)| at > seen) {
                    last = Some((at, on));
                }
            }
        }
        if let Some((_, on)) = last {
            self.on = on;
        }
        let keep = window.len().min(CARRY);
        self.tail = window.split_off(window.len() - keep);
        if !self.tail.contains(&0x1b) {
            self.tail.clear();
        }
    }
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_switch_wins() {
        let mut screen = AlternateScreen::default();
        screen.observe(b"prompt$ ");
        assert!(!screen.on());
        screen.observe(b"\x1b[?1049h\x1b[Heditor");
        assert!(screen.on());
        screen.observe(b"\x1b[?1049lprompt$ \x1b[?47h");
        assert!(screen.on());
        screen.observe(b"\x1b[?47l");
        assert!(!screen.on());
    }

    #[test]
    fn a_switch_split_across_frames_is_seen() {
        let mut screen = AlternateScreen::default();
        screen.observe(b"abc\x1b[?10");
        assert!(!screen.on());
        screen.observe(b"49hdef");
        assert!(screen.on());
    }
}
