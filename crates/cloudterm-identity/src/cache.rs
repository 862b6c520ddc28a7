//! A bounded cache of tokens that already passed verification.
//!
//! Signature checks dominate the cost of an authenticated request (an Ed25519 or RSA verify
//! is tens of microseconds; everything else is single digits), and clients send the same token
//! many times. A token is cached under the SHA-256 of its exact bytes, so any change to it is a
//! miss and gets the full check. An entry lives until the token expires or for [`MAX_AGE`],
//! whichever is sooner, and only for the key set that verified it: after a JWKS refresh every
//! token is checked again, so a key the IdP withdraws stops working at the next refresh.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ring::digest::{digest, SHA256};

use crate::claims::VerifiedToken;

/// How long a verified token is trusted without checking its signature again.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// How many tokens are remembered; the cache starts over when full.
const CAPACITY: usize = 16_384;

struct Entry {
    token: VerifiedToken,
    valid_until: Instant,
    key_generation: u64,
}

/// Tokens that verified recently.
#[derive(Default)]
pub struct VerifiedCache {
    entries: RwLock<HashMap<[u8; 32], Entry>>,
}

fn key_of(token: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    key
}

impl VerifiedCache {
    /// The cached result for `token`, if it verified within [`MAX_AGE`] against the key set
    /// `key_generation` and has not expired.
    pub fn get(&self, token: &str, key_generation: u64) -> Option<VerifiedToken> {
        let entries = self.entries.read().ok()?;
        let entry = entries.get(&key_of(token))?;
        (Instant::now() < entry.valid_until && entry.key_generation == key_generation).then(|| entry.token.clone())
    }

    /// Remembers a token that just verified. `expires_in` is how long until the token's own
    /// `exp` (plus leeway) passes.
    pub fn insert(&self, token: &str, verified: &VerifiedToken, expires_in: Duration, key_generation: u64) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        let valid_until = Instant::now() + expires_in.min(MAX_AGE);
        entries.insert(key_of(token), Entry { token: verified.clone(), valid_until, key_generation });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(principal: &str) -> VerifiedToken {
        VerifiedToken { principal: principal.into(), expires_at: None }
    }

    #[test]
    fn hits_only_the_exact_token() {
        let cache = VerifiedCache::default();
        cache.insert("a.b.c", &verified("alice"), Duration::from_secs(30), 1);
        assert_eq!(cache.get("a.b.c", 1).map(|t| t.principal), Some("alice".to_string()));
        assert!(cache.get("a.b.d", 1).is_none());
        assert!(cache.get("a.b.c ", 1).is_none());
        assert!(cache.get("a.b.c", 2).is_none(), "a new key set invalidates the verdict");
    }

    #[test]
    fn entries_end_when_the_token_expires() {
        let cache = VerifiedCache::default();
        cache.insert("a.b.c", &verified("alice"), Duration::ZERO, 0);
        assert!(cache.get("a.b.c", 0).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = VerifiedCache::default();
        for n in 0..(CAPACITY + 10) {
            cache.insert(&format!("token-{n}"), &verified("x"), Duration::from_secs(30), 0);
        }
        assert!(cache.entries.read().expect("lock").len() <= CAPACITY);
    }
}
