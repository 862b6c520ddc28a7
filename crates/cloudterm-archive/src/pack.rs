//! Packing: walk one or more source trees without following symlinks and stream them as a GNU
//! tar, through zstd and optional encryption, into the caller's writer.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fd::OwnedFd;
use rustix::fs::{fgetxattr, fstat, openat, readlinkat, statat, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use tar::{EntryType, Header};

use crate::crypt::{EncryptWriter, Key};
use crate::io_util::{ExactReader, HashingWriter};
use crate::owners::OwnerMap;
use crate::{ArchiveError, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};

/// Bytes per multithreaded zstd job (zstd's minimum is 512 KiB).
const MT_JOB_BYTES: u32 = 1 << 20;

/// How many skipped entries [`PackStats::skipped`] lists by name; the rest are only counted.
const MAX_SKIPPED_LISTED: usize = 100;

/// One tree to put into the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The top-level directory this tree appears under in the archive (`workspace`, `layer`),
    /// so one archive can carry a workspace and a writable layer side by side and the restore
    /// can move each into place. Empty means "at the archive's top level"; an empty name must
    /// be the only source. A non-empty name is one path component.
    pub name: String,
    /// The directory on disk. It is opened once; nothing below it is followed if it is a
    /// symbolic link.
    pub path: PathBuf,
    /// Whether this tree is an overlayfs writable (upper) layer: its whiteouts (0:0 character
    /// devices) become `.wh.<name>` marker files and its opaque directories get a
    /// `.wh..wh..opq` marker, as in OCI image layers. Off for ordinary trees, where a 0:0
    /// device is just a device (skipped) and a file named `.wh.x` is just a file.
    pub overlay_layer: bool,
}

impl Source {
    /// An ordinary tree under `name` (empty: at the top level).
    pub fn dir(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self { name: name.into(), path: path.into(), overlay_layer: false }
    }

    /// An overlayfs writable layer under `name`, with whiteouts converted to markers.
    pub fn overlay_layer(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self { name: name.into(), path: path.into(), overlay_layer: true }
    }
}

/// How to compress and seal.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// zstd level; 3 (zstd's own default) is fast and already shrinks source trees a lot.
    pub level: i32,
    /// zstd worker threads. 0 compresses on the calling thread; any other value moves
    /// compression to that many workers, which also overlaps it with reading files.
    pub threads: u32,
    /// Encrypt with this key (see the README for the format); `None` writes a plain
    /// `.tar.zst` that `tar --zstd -x` reads.
    pub key: Option<Key>,
    /// Compute [`PackStats::sha256_hex`]. Off when the caller hashes what it stores anyway
    /// (the server's BlobStore does), which takes the hash off the packing thread.
    pub checksum: bool,
    /// Store owners relative to this host range (a sandbox's writable layer, whose files
    /// belong to the uids its user namespace maps to); `None` stores host uids and gids.
    pub owners: Option<OwnerMap>,
}

impl Default for PackOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self { level: 3, threads: u32::try_from(cores.min(4)).unwrap_or(1), key: None, checksum: true, owners: None }
    }
}

/// What a pack wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackStats {
    /// Entries that are not directories: regular files, symlinks, hard links and whiteout markers.
    pub file_count: u64,
    /// Directories, including a named source's top-level directory.
    pub dir_count: u64,
    /// Uncompressed bytes of regular-file contents.
    pub size_bytes: u64,
    /// Bytes written to `out`.
    pub stored_bytes: u64,
    /// SHA-256 of the bytes written to `out`, lower-case hex: what [`crate::UnpackOptions`]'s
    /// `expected_sha256` wants back. Empty when [`PackOptions::checksum`] is off.
    pub sha256_hex: String,
    /// Entries that disappeared between listing and reading (the sandbox may be live).
    pub vanished: u64,
    /// Files that ended before the size recorded in their header while being read; they were
    /// padded with zeros so the archive stays valid, and are as inconsistent as any copy of a
    /// file being written.
    pub changed_during_read: u64,
    /// How many entries were left out on purpose (FIFOs, devices; not sockets, which are
    /// silently left out).
    pub skipped_count: u64,
    /// The first hundred of those, for a log line.
    pub skipped: Vec<Skipped>,
}

/// An entry left out of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where it is on disk.
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: SkipReason,
}

/// Why an entry was left out of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// A named pipe: it holds no data, and the extractor refuses them.
    Fifo,
    /// A character device (other than an overlay whiteout in a layer).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A file in an overlay layer named like a whiteout marker (`.wh.*`), which could not be
    /// told apart from one on the way back.
    WhiteoutNameClash,
}

/// Packs the tree at `root` at the archive's top level (paths like `src/main.rs`).
pub fn pack(root: &Path, out: impl Write, options: &PackOptions) -> Result<PackStats, ArchiveError> {
    pack_sources(&[Source::dir("", root)], out, options)
}

/// Packs several trees, each under its own top-level directory, into one archive: the
/// workspace and the writable layer of one snapshot.
pub fn pack_sources(sources: &[Source], out: impl Write, options: &PackOptions) -> Result<PackStats, ArchiveError> {
    validate_sources(sources)?;
    if !zstd::compression_level_range().contains(&options.level) {
        return Err(ArchiveError::InvalidArgument(format!("zstd level {} is out of range", options.level)));
    }
    let write_error = |e: io::Error| ArchiveError::io("writing the archive", e);

    let hashing = HashingWriter::new(out, options.checksum);
    let sink = match &options.key {
        Some(key) => Sink::Encrypted(EncryptWriter::new(hashing, key).map_err(write_error)?),
        None => Sink::Plain(hashing),
    };
    let mut encoder = zstd::Encoder::new(sink, options.level).map_err(write_error)?;
    encoder.include_checksum(true).map_err(write_error)?;
    if options.threads > 0 {
        encoder.multithread(options.threads).map_err(write_error)?;
        // zstd sizes each worker's job from the level (8 MiB at level 3), and holds input and
        // output buffers for every worker plus one job being filled: ~80 MiB of server memory
        // with two workers. 1 MiB jobs keep a pack under ~30 MiB for the same speed here.
        encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(MT_JOB_BYTES)).map_err(write_error)?;
    }
    let mut packer = Packer { builder: tar::Builder::new(encoder), stats: Counts::default(), owners: options.owners };
    for source in sources {
        packer.pack_source(source)?;
    }

    let encoder = packer.builder.into_inner().map_err(write_error)?;
    let sink = encoder.finish().map_err(write_error)?;
    let hashing = match sink {
        Sink::Plain(hashing) => hashing,
        Sink::Encrypted(encrypting) => encrypting.finish().map_err(write_error)?,
    };
    let (stored_bytes, sha256_hex) = hashing.finish().map_err(write_error)?;
    let counts = packer.stats;
    Ok(PackStats {
        file_count: counts.files,
        dir_count: counts.dirs,
        size_bytes: counts.bytes,
        stored_bytes,
        sha256_hex,
        vanished: counts.vanished,
        changed_during_read: counts.changed,
        skipped_count: counts.skipped_count,
        skipped: counts.skipped,
    })
}

fn validate_sources(sources: &[Source]) -> Result<(), ArchiveError> {
    let invalid = |why: String| Err(ArchiveError::InvalidArgument(why));
    if sources.is_empty() {
        return invalid("no source to pack".into());
    }
    let mut seen = std::collections::HashSet::new();
    for source in sources {
        let name = source.name.as_str();
        if name.is_empty() && sources.len() > 1 {
            return invalid("a source with an empty name must be the only one".into());
        }
        if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return invalid(format!("source name {name:?} is not a single path component"));
        }
        if !seen.insert(name) {
            return invalid(format!("source name {name:?} is used twice"));
        }
    }
    Ok(())
}

/// The bottom of the writer stack: the caller's writer (hashed), encrypted or not.
enum Sink<W: Write> {
    Plain(HashingWriter<W>),
    Encrypted(EncryptWriter<HashingWriter<W>>),
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(w) => w.write(buf),
            Self::Encrypted(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.flush(),
            Self::Encrypted(w) => w.flush(),
        }
    }
}

#[derive(Default)]
struct Counts {
    files: u64,
    dirs: u64,
    bytes: u64,
    vanished: u64,
    changed: u64,
    skipped_count: u64,
    skipped: Vec<Skipped>,
}

/// A directory being listed: its descriptor (everything below is opened relative to it),
/// its path in the archive and on disk, and the names still to visit.
struct Frame {
    dir: OwnedFd,
    archive_path: Vec<u8>,
    disk_path: PathBuf,
    names: std::vec::IntoIter<Vec<u8>>,
}

struct Packer<W: Write> {
    builder: tar::Builder<W>,
    stats: Counts,
    owners: Option<OwnerMap>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC).union(OFlags::NOFOLLOW);

/// `O_NONBLOCK` so that a file swapped for a FIFO between `stat` and `open` cannot hang us.
const FILE_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::CLOEXEC).union(OFlags::NOFOLLOW).union(OFlags::NONBLOCK).union(OFlags::NOCTTY);

impl<W: Write> Packer<W> {
    fn pack_source(&mut self, source: &Source) -> Result<(), ArchiveError> {
        let context = || format!("opening source directory {}", source.path.display());
        let root =
            rustix::fs::open(&source.path, DIR_FLAGS, Mode::empty()).map_err(|e| ArchiveError::io(context(), e))?;
        let archive_path = source.name.as_bytes().to_vec();
        if !archive_path.is_empty() {
            let stat = fstat(&root).map_err(|e| ArchiveError::io(context(), e))?;
            self.append_dir(&archive_path, &stat, &source.path)?;
        }
        // Hard links are only kept within one source: sources may be restored to different
        // file systems.
        let mut first_paths: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        let names = list_names(&root, &source.path)?;
        let mut stack = vec![Frame { dir: root, archive_path, disk_path: source.path.clone(), names }];

        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                stack.pop();
                continue;
            };
            let archive_path = child_path(&frame.archive_path, &name);
            let disk_path = frame.disk_path.join(OsStr::from_bytes(&name));
            let stat = match statat(&frame.dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => {
                    self.stats.vanished += 1;
                    continue;
                }
                Err(e) => return Err(ArchiveError::io(format!("reading {}", disk_path.display()), e)),
            };
            let file_type = FileType::from_raw_mode(stat.st_mode);
            if source.overlay_layer && name.starts_with(WHITEOUT_PREFIX.as_bytes()) && file_type != FileType::Socket {
                self.skip(disk_path, SkipReason::WhiteoutNameClash);
                continue;
            }
            match file_type {
                FileType::Directory => {
                    let dir = match openat(&frame.dir, name.as_slice(), DIR_FLAGS, Mode::empty()) {
                        Ok(dir) => dir,
                        // Gone, or swapped for a symlink or a file since the stat.
                        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {
                            self.stats.vanished += 1;
                            continue;
                        }
                        Err(e) => return Err(ArchiveError::io(format!("opening {}", disk_path.display()), e)),
                    };
                    let stat =
                        fstat(&dir).map_err(|e| ArchiveError::io(format!("reading {}", disk_path.display()), e))?;
                    self.append_dir(&archive_path, &stat, &disk_path)?;
                    if source.overlay_layer && is_opaque(&dir) {
                        self.append_marker(&child_path(&archive_path, OPAQUE_MARKER.as_bytes()), &stat, &disk_path)?;
                    }
                    let names = list_names(&dir, &disk_path)?;
                    stack.push(Frame { dir, archive_path, disk_path, names });
                }
                FileType::RegularFile => {
                    let file = match openat(&frame.dir, name.as_slice(), FILE_FLAGS, Mode::empty()) {
                        Ok(file) => file,
                        Err(Errno::NOENT | Errno::LOOP) => {
                            self.stats.vanished += 1;
                            continue;
                        }
                        Err(e) => return Err(ArchiveError::io(format!("opening {}", disk_path.display()), e)),
                    };
                    let stat =
                        fstat(&file).map_err(|e| ArchiveError::io(format!("reading {}", disk_path.display()), e))?;
                    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                        self.stats.vanished += 1;
                        continue;
                    }
                    if stat.st_nlink > 1 {
                        let key = (stat.st_dev, stat.st_ino);
                        if let Some(first) = first_paths.get(&key) {
                            let mut header = self.header(EntryType::Link, &stat);
                            self.builder
                                .append_link(&mut header, as_path(&archive_path), as_path(first))
                                .map_err(|e| ArchiveError::io(format!("archiving {}", disk_path.display()), e))?;
                            self.stats.files += 1;
                            continue;
                        }
                        first_paths.insert(key, archive_path.clone());
                    }
                    self.append_file(&archive_path, &stat, File::from(file), &disk_path)?;
                }
                FileType::Symlink => {
                    let target = match readlinkat(&frame.dir, name.as_slice(), Vec::new()) {
                        Ok(target) => target,
                        Err(Errno::NOENT | Errno::INVAL) => {
                            self.stats.vanished += 1;
                            continue;
                        }
                        Err(e) => return Err(ArchiveError::io(format!("reading link {}", disk_path.display()), e)),
                    };
                    let mut header = self.header(EntryType::Symlink, &stat);
                    self.builder
                        .append_link(&mut header, as_path(&archive_path), OsStr::from_bytes(target.as_bytes()))
                        .map_err(|e| ArchiveError::io(format!("archiving {}", disk_path.display()), e))?;
                    self.stats.files += 1;
                }
                FileType::CharacterDevice
                    if source.overlay_layer
                        && rustix::fs::major(stat.st_rdev) == 0
                        && rustix::fs::minor(stat.st_rdev) == 0 =>
                {
                    let mut marker = WHITEOUT_PREFIX.as_bytes().to_vec();
                    marker.extend_from_slice(&name);
                    self.append_marker(&child_path(&frame.archive_path, &marker), &stat, &disk_path)?;
                }
                FileType::CharacterDevice => self.skip(disk_path, SkipReason::CharDevice),
                FileType::BlockDevice => self.skip(disk_path, SkipReason::BlockDevice),
                FileType::Fifo => self.skip(disk_path, SkipReason::Fifo),
                FileType::Socket | FileType::Unknown => {}
            }
        }
        Ok(())
    }

    fn append_dir(&mut self, archive_path: &[u8], stat: &Stat, disk_path: &Path) -> Result<(), ArchiveError> {
        let mut header = self.header(EntryType::Directory, stat);
        self.builder
            .append_data(&mut header, as_path(archive_path), io::empty())
            .map_err(|e| ArchiveError::io(format!("archiving {}", disk_path.display()), e))?;
        self.stats.dirs += 1;
        Ok(())
    }

    fn append_file(
        &mut self,
        archive_path: &[u8],
        stat: &Stat,
        file: File,
        disk_path: &Path,
    ) -> Result<(), ArchiveError> {
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let mut header = self.header(EntryType::Regular, stat);
        header.set_size(size);
        let mut data = ExactReader::new(file, size);
        self.builder
            .append_data(&mut header, as_path(archive_path), &mut data)
            .map_err(|e| ArchiveError::io(format!("archiving {}", disk_path.display()), e))?;
        if data.was_short() {
            self.stats.changed += 1;
        }
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    /// An empty regular file standing for a whiteout or an opaque directory.
    fn append_marker(&mut self, archive_path: &[u8], stat: &Stat, disk_path: &Path) -> Result<(), ArchiveError> {
        let mut header = self.header(EntryType::Regular, stat);
        header.set_mode(0o600);
        self.builder
            .append_data(&mut header, as_path(archive_path), io::empty())
            .map_err(|e| ArchiveError::io(format!("archiving the whiteout {}", disk_path.display()), e))?;
        self.stats.files += 1;
        Ok(())
    }

    /// The entry's header, with owners made relative to the owner map when there is one.
    fn header(&self, kind: EntryType, stat: &Stat) -> Header {
        let mut header = header(kind, stat);
        if let Some(owners) = &self.owners {
            header.set_uid(u64::from(owners.to_archive(stat.st_uid)));
            header.set_gid(u64::from(owners.to_archive(stat.st_gid)));
        }
        header
    }

    fn skip(&mut self, path: PathBuf, reason: SkipReason) {
        self.stats.skipped_count += 1;
        if self.stats.skipped.len() < MAX_SKIPPED_LISTED {
            self.stats.skipped.push(Skipped { path, reason });
        }
    }
}

/// A GNU header (so long names and link targets work, and sizes past 8 GiB) with the entry's
/// permission bits, owner and mtime; the size is set by the caller for regular files.
fn header(kind: EntryType, stat: &Stat) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(u64::from(stat.st_uid));
    header.set_gid(u64::from(stat.st_gid));
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header.set_size(0);
    header
}

/// Whether an overlay layer's directory is opaque. Only `y` counts, as in overlayfs.
fn is_opaque(dir: &OwnedFd) -> bool {
    let mut value = [0u8; 8];
    matches!(fgetxattr(dir, OVERLAY_OPAQUE_XATTR, &mut value[..]), Ok(1) if value[0] == b'y')
}

/// The names in a directory, sorted so archives of the same tree list entries in the same order.
fn list_names(dir: &OwnedFd, disk_path: &Path) -> Result<std::vec::IntoIter<Vec<u8>>, ArchiveError> {
    let context = || format!("listing {}", disk_path.display());
    let mut names = Vec::new();
    let entries = match Dir::read_from(dir) {
        Ok(entries) => entries,
        Err(Errno::NOENT) => return Ok(names.into_iter()),
        Err(e) => return Err(ArchiveError::io(context(), e)),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            // The directory was removed while we listed it: whatever we got is all there is.
            Err(Errno::NOENT) => break,
            Err(e) => return Err(ArchiveError::io(context(), e)),
        };
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort_unstable();
    Ok(names.into_iter())
}

fn child_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
    path.extend_from_slice(parent);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_are_checked() {
        let ok = |sources: &[Source]| validate_sources(sources).is_ok();
        assert!(ok(&[Source::dir("", "/x")]));
        assert!(ok(&[Source::dir("workspace", "/x"), Source::overlay_layer("layer", "/y")]));
        assert!(!ok(&[]));
        assert!(!ok(&[Source::dir("", "/x"), Source::dir("layer", "/y")]));
        assert!(!ok(&[Source::dir("a", "/x"), Source::dir("a", "/y")]));
        for bad in [".", "..", "a/b", "a\0"] {
            assert!(!ok(&[Source::dir(bad, "/x")]), "{bad:?}");
        }
    }
}
