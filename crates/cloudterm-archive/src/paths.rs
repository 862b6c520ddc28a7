//! The lexical rules for names inside an archive: which entry paths, symlink targets and hard
//! link targets the extractor accepts. Pure functions, so every refusal is tested on its own.

/// An entry path split into its normal components: never empty, no `.`, `..` or empty parts,
/// no NUL bytes, no `/` inside a component.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct EntryPath {
    components: Vec<Vec<u8>>,
}

/// How a raw archive path normalises.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Normalized {
    /// A path below the destination.
    Path(EntryPath),
    /// `.` or `./`: the destination itself (tar writes it for `tar -C dir .`).
    Root,
}

impl EntryPath {
    /// The components, outermost first.
    pub(crate) fn components(&self) -> &[Vec<u8>] {
        &self.components
    }

    /// The last component (the entry's own name).
    pub(crate) fn name(&self) -> &[u8] {
        // Never empty by construction; an empty slice would only make the syscall fail.
        self.components.last().map(Vec::as_slice).unwrap_or_default()
    }

    /// The parent's components (empty for an entry at the top).
    pub(crate) fn parent(&self) -> &[Vec<u8>] {
        &self.components[..self.components.len().saturating_sub(1)]
    }

    /// The normalised path as `a/b/c` bytes.
    pub(crate) fn joined(&self) -> Vec<u8> {
        join(&self.components)
    }
}

/// Joins components with `/`; `.` for none (the directory itself, as the `*at` calls want it).
pub(crate) fn join(components: &[Vec<u8>]) -> Vec<u8> {
    if components.is_empty() {
        return b".".to_vec();
    }
    components.join(&b'/')
}

/// Validates an entry path from an archive: refuses absolute paths, any `..`, NUL bytes and
/// empty names; drops `.` and repeated slashes, which mean nothing.
pub(crate) fn normalize(raw: &[u8]) -> Result<Normalized, &'static str> {
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut components = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("path contains a `..` component"),
            normal => components.push(normal.to_vec()),
        }
    }
    if components.is_empty() {
        // Only `.`, `./`, `./.` and the like reach here; `//` was caught as absolute.
        return Ok(Normalized::Root);
    }
    Ok(Normalized::Path(EntryPath { components }))
}

/// Checks a symbolic link's target. Absolute targets are allowed and stored verbatim (they
/// resolve inside the sandbox's own root, and host code never follows links: see README).
/// Relative targets must not climb above the destination, counting from the link's own
/// directory: `a/b/x -> ../../y` stays inside, `a/x -> ../../y` does not.
pub(crate) fn check_symlink_target(link: &EntryPath, target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("symlink with an empty target");
    }
    if target.contains(&0) {
        return Err("symlink target contains a NUL byte");
    }
    if target.starts_with(b"/") {
        return Ok(());
    }
    let mut depth = link.parent().len();
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth = depth.checked_sub(1).ok_or("symlink target climbs out of the archive's tree")?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> EntryPath {
        match normalize(raw.as_bytes()) {
            Ok(Normalized::Path(path)) => path,
            other => panic!("{raw:?} normalised to {other:?}"),
        }
    }

    #[test]
    fn normal_paths_are_split_and_cleaned() {
        assert_eq!(path("a/b/c").joined(), b"a/b/c");
        assert_eq!(path("./a//b/./c/").joined(), b"a/b/c");
        assert_eq!(path("a").parent().len(), 0);
        assert_eq!(path("a/b").name(), b"b");
        assert_eq!(normalize(b"."), Ok(Normalized::Root));
        assert_eq!(normalize(b"./"), Ok(Normalized::Root));
        assert_eq!(join(&[]), b".");
    }

    #[test]
    fn escaping_paths_are_refused() {
        for raw in ["", "/etc/passwd", "//x", "..", "../x", "a/../../x", "a/..", "a/../b", "./../x"] {
            assert!(normalize(raw.as_bytes()).is_err(), "{raw:?} must be refused");
        }
        assert!(normalize(b"a\0b").is_err());
    }

    #[test]
    fn relative_symlinks_may_not_climb_out() {
        assert!(check_symlink_target(&path("x"), b"y").is_ok());
        assert!(check_symlink_target(&path("x"), b"./y/../z").is_ok());
        assert!(check_symlink_target(&path("a/b/x"), b"../../y").is_ok());
        assert!(check_symlink_target(&path("a/b/x"), b"../..").is_ok());
        assert!(check_symlink_target(&path("x"), b"..").is_err());
        assert!(check_symlink_target(&path("x"), b"../../etc").is_err());
        assert!(check_symlink_target(&path("a/x"), b"../../etc").is_err());
        assert!(check_symlink_target(&path("a/b/x"), b"../../../y").is_err());
        // Climbing out and back in is still climbing out.
        assert!(check_symlink_target(&path("a/x"), b"../../a/y").is_err());
        assert!(check_symlink_target(&path("x"), b"y/../../z").is_err());
    }

    #[test]
    fn absolute_symlinks_are_kept_but_empty_ones_refused() {
        assert!(check_symlink_target(&path("venv/bin/python"), b"/usr/bin/python3").is_ok());
        assert!(check_symlink_target(&path("x"), b"").is_err());
        assert!(check_symlink_target(&path("x"), b"a\0b").is_err());
    }
}
