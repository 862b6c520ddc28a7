//! Validation of what a client asks for: the terminal size and the session name.

use crate::TerminalError;

/// Largest number of columns or rows (the agent refuses more, and a screen's memory grows with
/// their product).
pub const MAX_DIMENSION: u16 = 1000;

/// Longest session name.
pub const MAX_SESSION_NAME: usize = 64;

/// Checks a terminal size: 1 to [`MAX_DIMENSION`] columns and rows.
pub fn check_size(cols: u16, rows: u16) -> Result<(), TerminalError> {
    for (what, value) in [("cols", cols), ("rows", rows)] {
        if value == 0 || value > MAX_DIMENSION {
            return Err(TerminalError::InvalidInput(format!(
                "{what} must be between 1 and {MAX_DIMENSION}, got {value}"
            )));
        }
    }
    Ok(())
}

/// Checks a session name: 1 to [`MAX_SESSION_NAME`] characters of `[A-Za-z0-9_-]`. The names
/// the hub gives unnamed sessions start with `~`, so a client can never guess its way into one.
pub fn check_session_name(name: &str) -> Result<(), TerminalError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SESSION_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TerminalError::InvalidInput(format!(
            "session must be 1 to {MAX_SESSION_NAME} characters of A-Z, a-z, 0-9, _ and -"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bounded() {
        assert!(check_size(80, 24).is_ok());
        assert!(check_size(1, 1).is_ok());
        assert!(check_size(MAX_DIMENSION, MAX_DIMENSION).is_ok());
        for (cols, rows) in [(0, 24), (80, 0), (MAX_DIMENSION + 1, 24), (80, u16::MAX)] {
            assert!(check_size(cols, rows).is_err(), "{cols}x{rows} was accepted");
        }
    }

    #[test]
    fn session_names_are_short_and_plain() {
        for name in ["a", "main", "build-1", "A_b-9", &"x".repeat(MAX_SESSION_NAME)] {
            assert!(check_session_name(name).is_ok(), "{name:?} was refused");
        }
        for name in ["", "~1", "a b", "../x", "é", "a/b", "a\0", &"x".repeat(MAX_SESSION_NAME + 1)] {
            assert!(check_session_name(name).is_err(), "{name:?} was accepted");
        }
    }
}
