//! What is mounted where, read from `/proc/self/mountinfo`: whether a volume's root is a mount
//! point, and which loop device backs it (`tune2fs` and `resize2fs` must act on the device the
//! kernel uses, not on the image file, or the mounted file system never sees the change).

use std::path::{Path, PathBuf};

/// One mount: its mount point, file system type and source (`/dev/loop3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// `ext4`, `overlay`…
    pub fs_type: String,
    /// The device or pseudo-source.
    pub source: String,
}

/// The mount whose mount point is exactly `path` (the topmost one when several are stacked),
/// from this process's mount table.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&table).into_iter().rev().find(|entry| entry.mount_point == path.as_path())
}

/// Every mount whose mount point is `root` or below it.
pub fn mounts_under(root: &Path) -> Vec<MountEntry> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&table).into_iter().filter(|entry| entry.mount_point.starts_with(root)).collect()
}

/// Parses the mountinfo format (proc(5)): field 5 is the mount point; after the lone `-`
/// come the type and the source. Paths have space, tab, newline and backslash octal-escaped.
pub fn parse_mountinfo(table: &str) -> Vec<MountEntry> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|field| *field == "-")?;
            let mount_point = fields.get(4)?;
            let fs_type = fields.get(separator + 1)?;
            let source = fields.get(separator + 2)?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: unescape(fs_type),
                source: unescape(source),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escapes.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match escaped {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(out).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes() {
        let table = "36 35 98:0 / /data/work\\040space/ws_1 rw,relatime shared:1 - ext4 /dev/loop3 rw\n\
                     37 35 0:5 / /proc rw - proc proc rw\n\
                     broken line\n";
        let entries = parse_mountinfo(table);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].mount_point, PathBuf::from("/data/work space/ws_1"));
        assert_eq!(entries[0].fs_type, "ext4");
        assert_eq!(entries[0].source, "/dev/loop3");
        assert_eq!(entries[1].mount_point, PathBuf::from("/proc"));
    }

    #[test]
    fn optional_fields_do_not_shift_the_source() {
        let table = "1 2 3:4 / /m rw shared:5 master:6 - ext4 /dev/loop9 rw\n";
        assert_eq!(parse_mountinfo(table)[0].source, "/dev/loop9");
    }
}
