//! Object keys: the one place that decides which names may reach a backend.
//!
//! A key is a relative, slash-separated path such as `snapshots/alice/snap_1.tar.zst`. The local
//! backend joins it to its root directory and S3 puts it under the configured prefix, so the rules
//! below are what keeps a key inside the store on both: no `..`, no absolute paths, no empty or
//! `.` segments, no control characters (NUL included).

use crate::BlobStoreError;

/// Longest key accepted, in bytes: S3's own limit for a whole key.
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest segment accepted, in bytes. The local backend writes `.cloudterm-tmp-<uuid>.<name>`
/// beside the object, and that name must still fit the 255-byte file-name limit of Linux file
/// systems.
pub const MAX_SEGMENT_BYTES: usize = 200;

/// Segments that start with this are the store's own (temporary files, readiness probes). No key
/// may contain one, so a listing never shows them and a key can never collide with them.
pub(crate) const RESERVED_PREFIX: &str = ".cloudterm-";

/// Checks `key` against the rules of the module documentation.
pub(crate) fn validate_key(key: &str) -> Result<(), BlobStoreError> {
    let invalid = |reason: &'static str| BlobStoreError::InvalidKey { key: key.to_string(), reason };
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid("longer than 1024 bytes"));
    }
    if key.starts_with('/') {
        return Err(invalid("starts with /"));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid("contains a control character"));
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Err(invalid("has an empty segment"));
        }
        if segment == "." || segment == ".." {
            return Err(invalid("has a . or .. segment"));
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(invalid("has a segment longer than 200 bytes"));
        }
        if segment.starts_with(RESERVED_PREFIX) {
            return Err(invalid("has a segment starting with .cloudterm- (reserved)"));
        }
    }
    Ok(())
}

/// Checks a listing prefix: empty (everything), or a key with an optional trailing `/`. Returns it
/// without the trailing `/`. Prefixes match whole segments: `snapshots/al` does not list
/// `snapshots/alice/…`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<&str, BlobStoreError> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() && prefix.len() <= 1 {
        return if prefix.is_empty() {
            Ok("")
        } else {
            Err(BlobStoreError::InvalidKey { key: prefix.to_string(), reason: "starts with /" })
        };
    }
    validate_key(trimmed).map_err(|err| match err {
        BlobStoreError::InvalidKey { reason, .. } => BlobStoreError::InvalidKey { key: prefix.to_string(), reason },
        other => other,
    })?;
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_keys_pass() {
        for key in ["a", "snapshots/alice/snap_1.tar.zst", "x/y_z-1.2/é", "a/.hidden", "a/b..c"] {
            validate_key(key).unwrap_or_else(|err| panic!("{key}: {err}"));
        }
        validate_key(&"k".repeat(200)).expect("a 200-byte segment");
        let long = vec!["s".repeat(200); 5].join("/");
        assert!(long.len() <= MAX_KEY_BYTES);
        validate_key(&long).expect("1004 bytes");
    }

    #[test]
    fn bad_keys_are_refused() {
        let too_long = vec!["s".repeat(100); 11].join("/");
        for key in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "a/./b",
            ".",
            "nul\0byte",
            "line\nbreak",
            too_long.as_str(),
            &"k".repeat(201),
            ".cloudterm-tmp-x",
            "a/.cloudterm-probe",
        ] {
            let err = validate_key(key).expect_err(key);
            assert!(matches!(err, BlobStoreError::InvalidKey { .. }), "{key:?}: {err}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(validate_prefix("").expect("empty"), "");
        assert_eq!(validate_prefix("snapshots/").expect("slash"), "snapshots");
        assert_eq!(validate_prefix("snapshots/alice").expect("plain"), "snapshots/alice");
        for bad in ["/", "//", "/a", "a//", "../a", "a/../"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
