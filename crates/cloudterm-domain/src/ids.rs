//! Prefixed random ids (`sbx_…`, `ws_…`, `snap_…`): the only way ids are made.

use rand::distributions::Alphanumeric;
use rand::Rng;

/// A fresh id: `prefix_` followed by 20 random lowercase alphanumerics (about 103 bits).
///
/// Lowercase only, so ids survive case-insensitive file systems and DNS labels (previews).
pub fn new_id(prefix: &str) -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .map(|byte| (byte as char).to_ascii_lowercase())
        .take(20)
        .collect();
    format!("{prefix}_{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_differ() {
        let first = new_id("ws");
        let second = new_id("ws");
        assert!(first.starts_with("ws_"));
        assert_eq!(first.len(), 23);
        assert_ne!(first, second);
        assert!(first[3..].chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }
}
