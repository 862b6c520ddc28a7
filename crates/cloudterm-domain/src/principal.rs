//! Principals and the one safe mapping from a principal id to a storage name.
//!
//! A principal id comes from a token's claim, so it is attacker-controlled text: `../../x`,
//! `/etc`, 5,000 characters, NUL bytes. It never becomes a path or an object key directly;
//! [`storage_name`] is the only function that turns it into a file or key component.

use sha2::{Digest, Sha256};

/// The authenticated caller: a person or an AI agent, as named by its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    id: String,
}

impl Principal {
    /// Wraps a principal id that the identity layer has verified.
    pub fn new(id: impl Into<String>) -> Self {
        Principal { id: id.into() }
    }

    /// The id as the token named it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name under which this principal's files and objects are stored.
    pub fn storage_name(&self) -> String {
        storage_name(&self.id)
    }
}

/// Longest principal id that is kept readable as it is.
const MAX_PLAIN_LEN: usize = 64;
/// Longest readable prefix kept in a hashed name.
const MAX_HINT_LEN: usize = 32;

/// Maps a principal id to a single, safe path component.
///
/// Plain ids (`alice`, `agent-7`, `bob.smith`: lowercase ASCII letters, digits, `-` and `.`,
/// starting with a letter or digit, at most 64 bytes) map to themselves, so operators find
/// `workspaces/alice/` where they expect it. Every other id maps to a readable hint plus `_`
/// and 24 hex digits of its SHA-256: `_` never occurs in a plain name, so a hashed name can
/// never equal a plain one, and two different ids collide only if SHA-256 does (96 bits).
/// The result is never empty, `.` or `..`, has no `/`, NUL or control character, and is at
/// most 64 + 1 + 24 bytes.
pub fn storage_name(principal_id: &str) -> String {
    if is_plain(principal_id) {
        return principal_id.to_string();
    }
    let digest = Sha256::digest(principal_id.as_bytes());
    let hint: String = principal_id
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(MAX_HINT_LEN)
        .collect();
    let hint = if hint.is_empty() { "p".to_string() } else { hint };
    format!("{hint}_{}", hex::encode(&digest[..12]))
}

fn is_plain(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_PLAIN_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::{Component, Path};

    /// A name is safe when joining it to a directory yields exactly one normal component.
    fn assert_safe(name: &str) {
        assert!(!name.is_empty());
        assert!(name.len() <= MAX_PLAIN_LEN + 1 + 24, "too long: {}", name.len());
        assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'));
        assert!(name.chars().all(|c| !c.is_control()));
        let components: Vec<_> = Path::new(name).components().collect();
        assert_eq!(components.len(), 1, "{name:?} is not one component");
        assert!(matches!(components[0], Component::Normal(_)), "{name:?} is not a normal component");
        let joined = Path::new("/data/workspaces").join(name);
        assert!(joined.starts_with("/data/workspaces/"));
        assert_eq!(joined.parent(), Some(Path::new("/data/workspaces")));
    }

    #[test]
    fn plain_ids_map_to_themselves() {
        for id in ["alice", "agent-7", "bob.smith", "0day"] {
            assert_eq!(storage_name(id), id);
        }
    }

    #[test]
    fn hostile_ids_become_one_safe_component() {
        let long = "a".repeat(5000);
        let hostile = [
            "../../x",
            "..",
            ".",
            "/etc",
            "/",
            "",
            "a/../../b",
            "x\0y",
            "\0",
            "..\\..\\win",
            "CON",
            "Alice",
            "émile",
            "a b",
            "-rf",
            ".hidden",
            "~root",
            "x\ny",
            long.as_str(),
            "auth0|5f7c8ec7c33c6c004bbafe82",
            "user@example.com",
        ];
        for id in hostile {
            let name = storage_name(id);
            assert_safe(&name);
            assert_ne!(name, id.to_string(), "{id:?} was used as is");
        }
    }

    #[test]
    fn distinct_ids_get_distinct_names() {
        let ids = ["../../x", "..//..//x", "/etc", "etc", "Etc", "ETC", "a/b", "a_b", "a-b", "A-B"];
        let names: HashSet<String> = ids.iter().map(|id| storage_name(id)).collect();
        assert_eq!(names.len(), ids.len());
    }

    #[test]
    fn a_plain_id_cannot_impersonate_a_hashed_name() {
        let hashed = storage_name("Alice");
        assert!(hashed.contains('_'));
        // An attacker who picks the hashed name as its own id is not plain (it has `_`),
        // so it is hashed again and lands elsewhere.
        assert_ne!(storage_name(&hashed), hashed);
    }

    #[test]
    fn the_mapping_is_stable() {
        assert_eq!(storage_name("Alice"), storage_name("Alice"));
        assert_eq!(storage_name("../../x"), "x_".to_string() + &hex::encode(&Sha256::digest(b"../../x")[..12]));
    }
}
