//! The local terminal of `cloudterm attach`: raw mode on and off, its size, and putting it back
//! the way it was on every exit (a normal end, an error, a panic, SIGTERM/SIGHUP).
//!
//! The settings before raw mode are kept in a process-wide slot, so the panic hook can restore
//! them before the panic message is printed (in raw mode it would come out as a staircase) and
//! the guard's `Drop` restores them on every other path.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use rustix::termios::{self, OptionalActions, Termios};

/// Size used when neither stdout nor stdin is a terminal (a pipe in a script).
pub const FALLBACK_SIZE: (u16, u16) = (80, 24);

/// Terminal settings before raw mode; `Some` while raw mode is on.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Undoes the input and display modes a program in the session may have left the local terminal
/// in (a repaint sets them too): attributes, cursor visibility, bracketed paste, mouse
/// reporting, application cursor keys and keypad.
const RESET_MODES: &[u8] = b"\x1b[0m\x1b[?25h\x1b[?2004l\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1l\x1b>";

/// Raw mode for as long as it lives (when stdin is a terminal; otherwise it does nothing, so
/// `cloudterm attach` also works with piped input).
pub struct RawMode {
    active: bool,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode: every byte typed (Ctrl-C, Ctrl-Z, Ctrl-D included)
    /// goes to the remote shell as typed, and nothing is echoed locally.
    pub fn enable() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(RawMode { active: false });
        }
        let original = termios::tcgetattr(&stdin)?;
        let mut raw = original.clone();
        raw.make_raw();
        install_panic_hook();
        *saved() = Some(original);
        if let Err(err) = termios::tcsetattr(&stdin, OptionalActions::Now, &raw) {
            *saved() = None;
            return Err(err.into());
        }
        Ok(RawMode { active: true })
    }

    /// True when raw mode is on (stdin is a terminal).
    pub fn active(&self) -> bool {
        self.active
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.active {
            restore();
        }
    }
}

fn saved() -> std::sync::MutexGuard<'static, Option<Termios>> {
    SAVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Puts the terminal back as it was before raw mode, once; later calls do nothing.
fn restore() {
    let Some(original) = saved().take() else { return };
    let stdin = std::io::stdin();
    // Nothing more can be done if this fails: the terminal is gone (a closed ssh session).
    let _ = termios::tcsetattr(&stdin, OptionalActions::Now, &original);
}

/// Restores the terminal before the default hook prints the panic, so the message is readable
/// and the user's shell is usable afterwards.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Leaves the display as it was before attaching: off the alternate screen if the session's
/// program was on it, and with the modes it may have turned on turned off. Only for a terminal.
pub fn reset_display(alternate_screen: bool) {
    let mut stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return;
    }
    if alternate_screen {
        let _ = stdout.write_all(b"\x1b[?1049l");
    }
    let _ = stdout.write_all(RESET_MODES);
    let _ = stdout.flush();
}

/// The local terminal's `(cols, rows)`: stdout's, else stdin's, else [`FALLBACK_SIZE`]. Kept
/// within what the server accepts (1 to 1000).
pub fn size() -> (u16, u16) {
    let from = |size: rustix::io::Result<termios::Winsize>| {
        size.ok().filter(|size| size.ws_col > 0 && size.ws_row > 0).map(|size| (size.ws_col, size.ws_row))
    };
    let (cols, rows) = from(termios::tcgetwinsize(std::io::stdout()))
        .or_else(|| from(termios::tcgetwinsize(std::io::stdin())))
        .unwrap_or(FALLBACK_SIZE);
    (cols.clamp(1, 1000), rows.clamp(1, 1000))
}
