//! Resolution of request paths: absolute, or relative to the workspace; `.` and `..` are
//! resolved lexically (never above `/`). The agent runs inside the sandbox, so every path is
//! a path of the sandbox's own file system; symbolic links are followed by the kernel as for
//! any process in the sandbox.

use std::path::{Component, Path, PathBuf};

use crate::util::ApiError;

/// Resolves `p` against `workspace` (an absolute path).
pub fn resolve(workspace: &Path, p: &str) -> Result<PathBuf, ApiError> {
    if p.is_empty() {
        return Err(ApiError::new(hyper::StatusCode::BAD_REQUEST, "bad_path", "empty path"));
    }
    if p.contains('\0') {
        return Err(ApiError::new(hyper::StatusCode::BAD_REQUEST, "bad_path", "path contains a NUL byte"));
    }
    let joined = if p.starts_with('/') { PathBuf::from(p) } else { workspace.join(p) };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_lexically_never_above_root() {
        let ws = Path::new("/workspace");
        assert_eq!(resolve(ws, "a/b.txt").ok(), Some(PathBuf::from("/workspace/a/b.txt")));
        assert_eq!(resolve(ws, "../../etc/passwd").ok(), Some(PathBuf::from("/etc/passwd")));
        assert_eq!(resolve(ws, "/../../../x").ok(), Some(PathBuf::from("/x")));
        assert_eq!(resolve(ws, "./a/./../b").ok(), Some(PathBuf::from("/workspace/b")));
        assert_eq!(resolve(ws, ".").ok(), Some(PathBuf::from("/workspace")));
        assert!(resolve(ws, "").is_err());
        assert!(resolve(ws, "a\0b").is_err());
    }
}
