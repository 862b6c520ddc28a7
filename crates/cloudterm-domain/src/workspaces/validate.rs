//! Checks of workspace names, descriptions and collaborator ids; failures are `InvalidInput`.

use crate::error::DomainError;

/// Longest name, description and agent id.
const MAX_NAME: usize = 64;
const MAX_DESCRIPTION: usize = 1000;
const MAX_AGENT_ID: usize = 256;

/// A name: 1 to 64 of letters, digits, `.`, `_`, `-`, starting with a letter or digit.
pub(crate) fn name(name: &str) -> Result<(), DomainError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(DomainError::InvalidInput(format!(
            "name must be 1 to {MAX_NAME} of A-Z a-z 0-9 . _ - starting with a letter or digit, got {name:?}"
        )))
    }
}

/// A description: bounded, no control characters but newlines and tabs.
pub(crate) fn description(text: &str) -> Result<(), DomainError> {
    if text.len() > MAX_DESCRIPTION || text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(DomainError::InvalidInput(format!(
            "description must be at most {MAX_DESCRIPTION} bytes without control characters"
        )));
    }
    Ok(())
}

/// A collaborator's principal id as a token would name it: non-empty, bounded, printable.
pub(crate) fn agent_id(id: &str) -> Result<(), DomainError> {
    if id.trim().is_empty() || id.len() > MAX_AGENT_ID || id.chars().any(char::is_control) {
        return Err(DomainError::InvalidInput(format!(
            "agent_id must be 1 to {MAX_AGENT_ID} bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_descriptions_and_agents_are_checked() {
        assert!(name("ml-pipeline_2.0").is_ok());
        for bad in ["", " ", "-x", ".x", "a b", "a/b", "ü", &"x".repeat(65)] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
        assert!(description("two\nlines").is_ok());
        assert!(description("bell\u{7}").is_err());
        assert!(agent_id("auth0|123").is_ok());
        for bad in ["", "  ", "a\nb", &"x".repeat(257)] {
            assert!(agent_id(bad).is_err(), "{bad:?}");
        }
    }
}
