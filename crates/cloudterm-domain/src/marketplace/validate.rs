//! Checks of what a publisher sends: names, versions, tags, commands and file paths. Every
//! failure is `InvalidInput` (a 422), never a panic or a 500.

use crate::error::DomainError;
use crate::marketplace::model::WorkerFile;

/// Longest worker name.
const MAX_NAME: usize = 64;
/// Longest description.
const MAX_DESCRIPTION: usize = 4096;
/// Most tags, and the longest tag.
const MAX_TAGS: usize = 20;
const MAX_TAG: usize = 32;
/// Longest command.
const MAX_COMMAND: usize = 16 * 1024;
/// Most files, longest path, most bytes in all: workers are small tools, not data sets.
pub(crate) const MAX_FILES: usize = 256;
const MAX_PATH: usize = 512;
pub(crate) const MAX_FILES_BYTES: u64 = 8 << 20;

/// A name is lowercase letters, digits, `.`, `_` and `-`, starting with a letter or digit:
/// it becomes a directory name inside workspaces (`/workspace/.workers/NAME`).
pub(crate) fn name(name: &str) -> Result<(), DomainError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(DomainError::InvalidInput(format!(
            "name must be 1 to {MAX_NAME} of a-z 0-9 . _ - starting with a letter or digit, got {name:?}"
        )))
    }
}

/// A semantic version (`1.2.3`, `1.0.0-rc.1`), returned in its canonical text. Build metadata
/// (`+build2`) is refused: semver precedence ignores it, so `2.0.0+build2` would be a second,
/// different `2.0.0`, and versions are immutable.
pub(crate) fn version(text: &str) -> Result<String, DomainError> {
    let version = semver::Version::parse(text).map_err(|err| {
        DomainError::InvalidInput(format!("version must be semver (like 1.2.0), got {text:?}: {err}"))
    })?;
    if !version.build.is_empty() {
        return Err(DomainError::InvalidInput(format!(
            "version must not carry build metadata (+{}): it does not make a new version; got {text:?}",
            version.build
        )));
    }
    Ok(version.to_string())
}

/// Whether two stored versions are the same version by semver precedence (build metadata
/// ignored), so a version stored before build metadata was refused still blocks its twin.
pub(crate) fn same_version(a: &str, b: &str) -> bool {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a.cmp_precedence(&b).is_eq(),
        _ => a == b,
    }
}

/// Description: bounded, no control characters but newlines and tabs.
pub(crate) fn description(text: &str) -> Result<(), DomainError> {
    if text.len() > MAX_DESCRIPTION || text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(DomainError::InvalidInput(format!(
            "description must be at most {MAX_DESCRIPTION} bytes without control characters"
        )));
    }
    Ok(())
}

/// Tags: at most 20, each 1 to 32 of letters, digits, `.`, `_`, `-`, `:`; duplicates dropped.
pub fn tags(tags: &[String]) -> Result<Vec<String>, DomainError> {
    if tags.len() > MAX_TAGS {
        return Err(DomainError::InvalidInput(format!("at most {MAX_TAGS} tags")));
    }
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        tag_filter(tag)?;
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    Ok(out)
}

/// One tag, also as a search or list filter.
pub fn tag_filter(tag: &str) -> Result<(), DomainError> {
    let valid = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if valid {
        Ok(())
    } else {
        Err(DomainError::InvalidInput(format!("tags are 1 to {MAX_TAG} of A-Z a-z 0-9 . _ - :, got {tag:?}")))
    }
}

/// The command: non-empty, bounded, no NUL (it becomes an argument of `sh -c`).
pub(crate) fn command(command: &str) -> Result<(), DomainError> {
    if command.trim().is_empty() || command.len() > MAX_COMMAND || command.contains('\0') {
        return Err(DomainError::InvalidInput(format!(
            "command must be non-empty, at most {MAX_COMMAND} bytes, without NUL"
        )));
    }
    Ok(())
}

/// Files: bounded in number and size; each path relative, made of plain components only (no
/// `..`, no `.`, no absolute paths, no NUL) and unique; modes within `0o777`.
pub(crate) fn files(files: &[WorkerFile]) -> Result<(), DomainError> {
    if files.len() > MAX_FILES {
        return Err(DomainError::InvalidInput(format!("at most {MAX_FILES} files")));
    }
    let total: u64 = files.iter().map(|f| f.data.len() as u64).sum();
    if total > MAX_FILES_BYTES {
        return Err(DomainError::InvalidInput(format!("files may hold at most {MAX_FILES_BYTES} bytes in all")));
    }
    let mut seen = std::collections::HashSet::new();
    for file in files {
        // Split by hand: `Path::components` silently drops interior `.` and doubled slashes.
        let plain = !file.path.is_empty()
            && file.path.len() <= MAX_PATH
            && !file.path.contains('\0')
            && file.path.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
        if !plain {
            return Err(DomainError::InvalidInput(format!(
                "file path {:?} must be relative, without . or .. components, at most {MAX_PATH} bytes",
                file.path
            )));
        }
        if !seen.insert(file.path.as_str()) {
            return Err(DomainError::InvalidInput(format!("file path {:?} is given twice", file.path)));
        }
        if let Some(mode) = file.mode.filter(|mode| *mode > 0o777) {
            return Err(DomainError::InvalidInput(format!("mode {mode:o} of {:?} is beyond 0o777", file.path)));
        }
    }
    // A path may not also be a directory of another (`a` and `a/b`).
    for file in files {
        for (at, _) in file.path.match_indices('/') {
            let parent = &file.path[..at];
            if seen.contains(parent) {
                return Err(DomainError::InvalidInput(format!("{parent:?} is both a file and a directory")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> WorkerFile {
        WorkerFile { path: path.into(), data: b"x".to_vec(), mode: None }
    }

    #[test]
    fn names_are_directory_safe() {
        for good in ["quote", "a", "csv-to-json", "v1.2_x", "0day"] {
            assert!(name(good).is_ok(), "{good}");
        }
        for bad in ["", "..", ".hidden", "-rf", "Quote", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions_are_semver() {
        assert_eq!(version("1.2.0").ok().as_deref(), Some("1.2.0"));
        assert_eq!(version("1.0.0-rc.1").ok().as_deref(), Some("1.0.0-rc.1"));
        for bad in ["", "1", "1.2", "v1.2.0", "latest", "1.2.3.4", " 1.2.3", "2.0.0+build2", "1.0.0-rc.1+b"] {
            assert!(matches!(version(bad), Err(DomainError::InvalidInput(_))), "{bad:?}");
        }
    }

    #[test]
    fn versions_are_the_same_by_precedence() {
        assert!(same_version("2.0.0", "2.0.0+build2"));
        assert!(same_version("2.0.0", "2.0.0"));
        assert!(!same_version("2.0.0", "2.0.0-rc.1"));
        assert!(!same_version("2.0.0", "2.0.1"));
    }

    #[test]
    fn file_paths_stay_below_the_worker_directory() {
        assert!(files(&[file("run.sh"), file("lib/a.py")]).is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a", "a/./b", "a/", "a\0b"] {
            assert!(files(&[file(bad)]).is_err(), "{bad:?}");
        }
        assert!(files(&[file("a"), file("a")]).is_err(), "duplicate");
        assert!(files(&[file("a"), file("a/b")]).is_err(), "file and directory");
        assert!(files(&[WorkerFile { mode: Some(0o4755), ..file("a") }]).is_err(), "setuid");
    }

    #[test]
    fn tags_are_bounded_and_deduplicated() {
        assert_eq!(tags(&["a".into(), "b".into(), "a".into()]).ok(), Some(vec!["a".to_string(), "b".to_string()]));
        assert!(tags(&["".into()]).is_err());
        assert!(tags(&["a b".into()]).is_err());
        assert!(tags(&vec!["t".to_string(); 21]).is_err());
    }
}
