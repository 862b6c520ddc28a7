//! The server-side screen of a session: every output byte goes through a `vt100` emulator, so
//! a viewer that attaches (or falls behind) gets the current screen repainted at the session's
//! size instead of a replay of raw bytes, which garbles full-screen programs and grows without
//! bound.

use std::num::NonZeroU16;

use bytes::Bytes;

/// Leaves (or enters) the alternate screen before a repaint, so a viewer's own terminal is on
/// the same screen as the program's: a repaint of `vim` lands on the alternate screen and the
/// shell's screen comes back when `vim` exits.
const ENTER_ALTERNATE: &str = "\x1b[?1049h";
const LEAVE_ALTERNATE: &str = "\x1b[?1049l";

/// A terminal emulator without scrollback: only the visible screen is kept and repainted.
pub(crate) struct Screen {
    parser: vt100::Parser,
}

fn dimension(value: u16) -> NonZeroU16 {
    NonZeroU16::new(value).unwrap_or(NonZeroU16::MIN)
}

impl Screen {
    /// A blank screen of `cols` × `rows`.
    pub(crate) fn new(cols: u16, rows: u16) -> Screen {
        Screen { parser: vt100::Parser::new(dimension(rows), dimension(cols), 0) }
    }

    /// Feeds program output.
    pub(crate) fn process(&mut self, bytes: &[u8]) {
        self.parser.process(bytes);
    }

    /// Resizes (rows and columns are truncated or padded, as `vt100` does; the program redraws
    /// after its SIGWINCH).
    pub(crate) fn resize(&mut self, cols: u16, rows: u16) {
        self.parser.set_size(dimension(rows), dimension(cols));
    }

    /// `(cols, rows)`.
    pub(crate) fn size(&self) -> (u16, u16) {
        let (rows, cols) = self.parser.screen().size();
        (cols.get(), rows.get())
    }

    /// The bytes that turn any terminal of this size into this screen: alternate-screen mode,
    /// attributes reset, home, clear, every cell with its attributes, the cursor's position and
    /// visibility, then the input modes (application keypad and cursor, bracketed paste, mouse
    /// reporting).
    pub(crate) fn repaint(&self) -> Bytes {
        let screen = self.parser.screen();
        let mut out = String::from(if screen.alternate_screen() { ENTER_ALTERNATE } else { LEAVE_ALTERNATE });
        out.push_str(&screen.state_formatted());
        Bytes::from(out)
    }

    /// The visible text (tests).
    #[cfg(test)]
    pub(crate) fn text(&self) -> String {
        self.parser.screen().contents()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays `bytes` on a fresh screen of the given size and returns its text.
    fn replay(bytes: &[u8], cols: u16, rows: u16) -> String {
        let mut fresh = Screen::new(cols, rows);
        fresh.process(bytes);
        fresh.text()
    }

    #[test]
    fn a_repaint_reproduces_the_screen() {
        let mut screen = Screen::new(40, 5);
        screen.process(b"$ echo hi\r\nhi\r\n\x1b[1;31mred\x1b[0m $ ");
        let repaint = screen.repaint();
        assert_eq!(replay(&repaint, 40, 5), screen.text());
        assert!(screen.text().contains("red $"));
    }

    #[test]
    fn a_repaint_clears_what_the_viewer_had() {
        let mut screen = Screen::new(20, 3);
        screen.process(b"new");
        let mut viewer = Screen::new(20, 3);
        viewer.process(b"old junk\r\nmore junk");
        viewer.process(&screen.repaint());
        assert_eq!(viewer.text(), "new");
    }

    #[test]
    fn resizing_repaints_at_the_new_size() {
        let mut screen = Screen::new(80, 24);
        screen.process(b"0123456789abcdef\r\nline two");
        screen.resize(10, 4);
        assert_eq!(screen.size(), (10, 4));
        let text = replay(&screen.repaint(), 10, 4);
        assert_eq!(text, "0123456789\nline two");
    }

    #[test]
    fn full_screen_programs_repaint_on_the_alternate_screen() {
        let mut screen = Screen::new(20, 3);
        screen.process(b"shell$ \x1b[?1049h\x1b[H\x1b[2Jeditor");
        let repaint = screen.repaint();
        assert!(repaint.starts_with(ENTER_ALTERNATE.as_bytes()));
        assert_eq!(replay(&repaint, 20, 3), "editor");
        screen.process(b"\x1b[?1049l");
        assert!(screen.repaint().starts_with(LEAVE_ALTERNATE.as_bytes()));
        assert_eq!(screen.text(), "shell$ ");
    }
}
