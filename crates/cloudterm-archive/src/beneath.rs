//! Opening directories strictly below the extraction root without ever following a symbolic
//! link: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has it, otherwise a
//! walk that opens one component at a time with `O_NOFOLLOW`.
//!
//! Every write of the extractor happens relative to a directory descriptor obtained here, so an
//! archive that plants `a -> /etc` and then writes `a/passwd` hits a refused lookup instead of
//! the host's `/etc`, whatever order its entries come in.

use std::io;
use std::rc::Rc;

use rustix::fd::OwnedFd;
use rustix::fs::{mkdirat, openat, openat2, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::paths::join;

/// Flags for opening a directory we will create entries in.
const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC).union(OFlags::NOFOLLOW);

/// Why a directory could not be opened below the root.
#[derive(Debug)]
pub(crate) enum DirError {
    /// The path would leave the root or pass through a symlink or a non-directory: the entry
    /// that needed it is refused.
    Unsafe(&'static str),
    /// Anything else (permissions, a full disk, too many open files).
    Io(io::Error),
}

impl From<Errno> for DirError {
    fn from(errno: Errno) -> Self {
        match errno {
            Errno::LOOP | Errno::XDEV => Self::Unsafe("path passes through a symbolic link or leaves the destination"),
            Errno::NOTDIR => Self::Unsafe("a parent of this path is not a directory"),
            Errno::NAMETOOLONG => Self::Unsafe("a path component is too long"),
            other => Self::Io(other.into()),
        }
    }
}

/// Which way lookups are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolver {
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, falling back to the walk on
    /// kernels (or seccomp profiles) without it.
    Openat2,
    /// One `openat(O_NOFOLLOW | O_DIRECTORY)` per component.
    Walk,
}

/// The extraction root and a one-entry cache of the last parent directory: tar streams list a
/// directory's entries together, so most entries reuse the previous lookup.
///
/// The cache is sound because the extractor never removes or replaces a directory it has
/// seen, so a descriptor stays the directory at that path for the whole extraction.
pub(crate) struct Beneath {
    root: OwnedFd,
    resolver: Resolver,
    cached: Option<(Vec<Vec<u8>>, Rc<OwnedFd>)>,
}

impl Beneath {
    pub(crate) fn new(root: OwnedFd, resolver: Resolver) -> Self {
        Self { root, resolver, cached: None }
    }

    /// Opens the directory at `components` below the root; with `create`, missing directories
    /// on the way are made (mode 0755, as tar does for parents an archive does not list).
    pub(crate) fn open_dir(&mut self, components: &[Vec<u8>], create: bool) -> Result<Rc<OwnedFd>, DirError> {
        if let Some((path, fd)) = &self.cached {
            if path.as_slice() == components {
                return Ok(Rc::clone(fd));
            }
        }
        let fd = Rc::new(self.resolve(components, create)?);
        self.cached = Some((components.to_vec(), Rc::clone(&fd)));
        Ok(fd)
    }

    fn resolve(&mut self, components: &[Vec<u8>], create: bool) -> Result<OwnedFd, DirError> {
        if self.resolver == Resolver::Openat2 {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
            match openat2(&self.root, join(components).as_slice(), DIR_FLAGS, Mode::empty(), resolve) {
                Ok(fd) => return Ok(fd),
                // Not available here (old kernel, or a container's seccomp profile): walk from now on.
                Err(Errno::NOSYS) | Err(Errno::PERM) => self.resolver = Resolver::Walk,
                // A parent is missing and will be created by the walk.
                Err(Errno::NOENT) if create => {}
                // The kernel saw a concurrent rename and asks for a retry; the walk is as safe.
                Err(Errno::AGAIN) => {}
                // Deeper than PATH_MAX in one string: the walk has no such limit.
                Err(Errno::NAMETOOLONG) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        self.walk(components, create)
    }

    fn walk(&self, components: &[Vec<u8>], create: bool) -> Result<OwnedFd, DirError> {
        let mut current = openat(&self.root, ".", DIR_FLAGS, Mode::empty())?;
        for component in components {
            // Components come from `paths::normalize`: never `.`, `..`, empty or with a `/`.
            let next = match openat(&current, component.as_slice(), DIR_FLAGS, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match mkdirat(&current, component.as_slice(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(errno) => return Err(errno.into()),
                    }
                    openat(&current, component.as_slice(), DIR_FLAGS, Mode::empty())?
                }
                other => other?,
            };
            current = next;
        }
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn components(path: &str) -> Vec<Vec<u8>> {
        path.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    fn beneath(dir: &std::path::Path, resolver: Resolver) -> Beneath {
        let root = rustix::fs::open(dir, DIR_FLAGS, Mode::empty()).expect("open root");
        Beneath::new(root, resolver)
    }

    #[test]
    fn both_resolvers_refuse_symlinks_and_files_on_the_way() {
        for resolver in [Resolver::Openat2, Resolver::Walk] {
            let outside = tempfile::tempdir().expect("tempdir");
            let dest = tempfile::tempdir().expect("tempdir");
            symlink(outside.path(), dest.path().join("link")).expect("symlink");
            symlink("real", dest.path().join("relative")).expect("symlink");
            std::fs::create_dir(dest.path().join("real")).expect("mkdir");
            std::fs::write(dest.path().join("file"), b"x").expect("write");
            let mut tree = beneath(dest.path(), resolver);

            for path in ["link", "link/sub", "relative", "relative/sub"] {
                let result = tree.open_dir(&components(path), true);
                assert!(matches!(result, Err(DirError::Unsafe(_))), "{resolver:?} {path}: {result:?}");
            }
            assert!(matches!(tree.open_dir(&components("file/sub"), true), Err(DirError::Unsafe(_))));
            assert_eq!(std::fs::read_dir(outside.path()).expect("read").count(), 0, "{resolver:?} wrote outside");

            tree.open_dir(&components("real/a/b"), true).expect("creates missing parents");
            assert!(dest.path().join("real/a/b").is_dir());
            assert!(matches!(tree.open_dir(&components("missing"), false), Err(DirError::Io(_))));
        }
    }
}
