//! Unpacking: the security boundary. Decrypts, decompresses and extracts an archive into a
//! fresh directory, refusing every entry that could write outside it, and checks the raw
//! bytes' SHA-256 at the end.
//!
//! The tar stream is read in "raw" mode: GNU long names and PAX records are parsed here, with
//! size caps, instead of by the tar crate, which would read a hostile 10 GiB "file name" into
//! memory before we could look at it.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::rc::Rc;

use rustix::fd::OwnedFd;
use rustix::fs::{chownat, fchown, Gid, Uid};
use rustix::fs::{
    fchmod, fsetxattr, futimens, linkat, makedev, mkdirat, mknodat, openat, statat, symlinkat, unlinkat, utimensat,
    AtFlags, Dir, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, UTIME_OMIT,
};
use rustix::io::Errno;
use tar::{Entry, EntryType};

use crate::beneath::{Beneath, DirError, Resolver};
use crate::crypt::{DecryptReader, Key, MAGIC};
use crate::error::display_name;
use crate::io_util::{classify_read_error, CountingReader, HashingReader};
use crate::owners::OwnerMap;
use crate::paths::{check_symlink_target, normalize, EntryPath, Normalized};
use crate::{ArchiveError, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};

/// Largest GNU long name or long link target we read: far above `PATH_MAX` (4096).
const MAX_LONG_NAME: u64 = 64 * 1024;
/// Largest PAX record block we read (per entry, and for a global header).
const MAX_PAX: u64 = 1024 * 1024;
/// Decompressed bytes tolerated after the tar end-of-archive marker (tar pads to records of
/// 10 KiB; anything much longer is junk, or a decompression bomb hiding behind the end).
const MAX_TRAILING: u64 = 1024 * 1024;
/// zstd's default decoder window limit (128 MiB): caps the decoder's memory whatever the
/// archive's frame header asks for. Our own archives use far less at the levels we allow.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// The zstd frame magic, to tell an unencrypted archive from an encrypted one.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Where `.wh.*` marker files are turned back into overlayfs whiteouts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RestoreWhiteouts {
    /// Nowhere: markers are extracted as the empty regular files they are (what `tar -x` does).
    #[default]
    No,
    /// In the whole archive (it holds nothing but a writable layer).
    Everywhere,
    /// Under these top-level directories only (the [`crate::Source::name`]s that were packed
    /// as overlay layers), so a workspace file that happens to be called `.wh.x` stays a file.
    Under(Vec<String>),
}

/// How to read the archive and what to tolerate.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// The key the archive was encrypted with; `None` for a plain `.tar.zst`. A mismatch either
    /// way is an [`ArchiveError::Decrypt`].
    pub key: Option<Key>,
    /// The hex SHA-256 of the raw input bytes (as [`crate::PackStats::sha256_hex`] reported).
    /// The whole input is read through the hash and the unpack fails at the end if it differs;
    /// entries were already written by then, so the caller must discard `dest` on any error.
    pub expected_sha256: Option<String>,
    /// Most bytes of entry data the archive may hold (what extraction writes to disk).
    pub max_bytes: u64,
    /// Most entries (files, directories, links) the archive may hold.
    pub max_entries: u64,
    /// Whether to turn whiteout markers back into overlayfs whiteouts (needs root).
    pub restore_whiteouts: RestoreWhiteouts,
    /// Give entries the owners the archive stores, mapped into this host range (a writable
    /// layer packed with the same map); needs root. `None` leaves everything owned by the
    /// extracting user, as a workspace restore wants.
    pub owners: Option<OwnerMap>,
}

impl Default for UnpackOptions {
    /// Generous limits meant as a backstop; callers should set them from the owner's quota.
    fn default() -> Self {
        Self {
            key: None,
            expected_sha256: None,
            max_bytes: 16 << 30,
            max_entries: 2_000_000,
            restore_whiteouts: RestoreWhiteouts::No,
            owners: None,
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries that are not directories: regular files, symlinks, hard links and whiteouts
    /// (restored or left as markers); equal to the pack's `file_count` for the same archive.
    pub file_count: u64,
    /// Directories (not counting `dest` itself).
    pub dir_count: u64,
    /// Bytes of regular-file contents written.
    pub size_bytes: u64,
    /// How many entries had setuid/setgid bits (or sticky, on non-directories) removed.
    pub stripped_mode_bits: u64,
    /// Overlay whiteouts and opaque markers turned back into their overlayfs form.
    pub whiteouts_restored: u64,
    /// Bytes read from the input.
    pub stored_bytes: u64,
    /// SHA-256 of the bytes read from the input, lower-case hex.
    pub sha256_hex: String,
}

/// Unpacks `input` into `dest`, which must be an existing, empty directory (the caller swaps
/// it into place afterwards, and deletes it on error: a failed unpack may leave entries).
pub fn unpack(input: impl Read + Send, dest: &Path, options: &UnpackOptions) -> Result<UnpackStats, ArchiveError> {
    let expected = options.expected_sha256.as_deref().map(parse_sha256).transpose()?;
    let root = open_empty_dir(dest)?;
    let mut hashed = HashingReader::new(input);
    let result = Extractor::new(root, options).run(&mut hashed);
    match result {
        Ok(mut stats) => {
            let (stored_bytes, sha256_hex) = hashed.drain_and_finish()?;
            if let Some(expected) = expected {
                if expected != sha256_hex {
                    return Err(ArchiveError::ChecksumMismatch { expected, actual: sha256_hex });
                }
            }
            stats.stored_bytes = stored_bytes;
            stats.sha256_hex = sha256_hex;
            Ok(stats)
        }
        // Bytes that do not decode may simply not be the bytes that were stored: when the
        // caller knows the checksum, say which it is.
        Err(error @ (ArchiveError::Corrupt(_) | ArchiveError::Decrypt(_))) => {
            match (expected, hashed.drain_and_finish()) {
                (Some(expected), Ok((_, actual))) if expected != actual => {
                    Err(ArchiveError::ChecksumMismatch { expected, actual })
                }
                _ => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

fn parse_sha256(text: &str) -> Result<String, ArchiveError> {
    let lower = text.to_ascii_lowercase();
    if lower.len() != 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ArchiveError::InvalidArgument(format!("expected_sha256 {text:?} is not 64 hex digits")));
    }
    Ok(lower)
}

fn open_empty_dir(dest: &Path) -> Result<OwnedFd, ArchiveError> {
    let context = || format!("opening the destination {}", dest.display());
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let root = rustix::fs::open(dest, flags, Mode::empty()).map_err(|e| ArchiveError::io(context(), e))?;
    for entry in Dir::read_from(&root).map_err(|e| ArchiveError::io(context(), e))? {
        let entry = entry.map_err(|e| ArchiveError::io(context(), e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Err(ArchiveError::InvalidArgument(format!("destination {} is not empty", dest.display())));
        }
    }
    Ok(root)
}

/// Metadata entries (GNU long name/link, PAX) waiting for the member they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// The PAX keys we honour; the rest (times, owners, xattrs) are ignored like the header's.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
}

/// A directory whose mode and mtime are set at the end, deepest first: a read-only directory
/// must still accept its children, and creating children changes a directory's mtime.
struct DirMeta {
    components: Vec<Vec<u8>>,
    mode: u32,
    mtime: u64,
    owner: Option<(Uid, Gid)>,
}

struct Extractor<'o> {
    tree: Beneath,
    options: &'o UnpackOptions,
    stats: UnpackStats,
    /// Entries seen (members and global headers; not the metadata in front of a member).
    entries: u64,
    /// Bytes of entry data seen, extracted or skipped: what `max_bytes` limits.
    data_bytes: u64,
    /// Regular files extracted so far, by normalised path: the only valid hard-link targets.
    regular: HashSet<Vec<u8>>,
    dirs: Vec<DirMeta>,
    /// The host owner of the entry being extracted, when the options map owners.
    owner: Option<(Uid, Gid)>,
    buffer: Vec<u8>,
}

impl<'o> Extractor<'o> {
    fn new(root: OwnedFd, options: &'o UnpackOptions) -> Self {
        Self {
            tree: Beneath::new(root, Resolver::Openat2),
            options,
            stats: UnpackStats::default(),
            entries: 0,
            data_bytes: 0,
            regular: HashSet::new(),
            dirs: Vec::new(),
            owner: None,
            buffer: vec![0; 128 * 1024],
        }
    }

    /// Reads the whole (decrypted, decompressed) stream and extracts it. The raw input is only
    /// borrowed, so the caller can finish its hash afterwards.
    fn run<R: Read + Send>(self, input: &mut HashingReader<R>) -> Result<UnpackStats, ArchiveError> {
        let mut buffered = BufReader::with_capacity(128 * 1024, input);
        let head = buffered.fill_buf().map_err(classify_read_error)?;
        let encrypted = head.starts_with(MAGIC);
        let compressed = head.starts_with(&ZSTD_MAGIC);
        let plain: Box<dyn Read + Send + '_> = match &self.options.key {
            None if encrypted => {
                return Err(ArchiveError::Decrypt("the archive is encrypted and no key was given".into()))
            }
            Some(_) if compressed => {
                return Err(ArchiveError::Decrypt("a key was given but the archive is not encrypted".into()))
            }
            Some(key) => Box::new(DecryptReader::new(&mut buffered, key).map_err(classify_read_error)?),
            None => Box::new(&mut buffered),
        };
        let mut decoder = zstd::Decoder::new(plain).map_err(classify_read_error)?;
        decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(classify_read_error)?;
        std::thread::scope(|scope| {
            let (chunks, receiver) = std::sync::mpsc::sync_channel(READ_AHEAD_CHUNKS);
            scope.spawn(move || decompress_into(decoder, chunks));
            self.extract(ChannelReader::new(receiver))
        })
    }

    /// Extracts the decompressed stream `plain`, then reads it to its end (bounded).
    fn extract(mut self, plain: ChannelReader) -> Result<UnpackStats, ArchiveError> {
        let position = Rc::new(Cell::new(0u64));
        let mut archive = tar::Archive::new(CountingReader::new(plain, Rc::clone(&position)));

        let mut end_of_last = 0u64;
        let mut pending = Pending::default();
        for entry in archive.entries().map_err(classify_read_error)?.raw(true) {
            let mut entry = entry.map_err(classify_read_error)?;
            end_of_last = entry.raw_file_position().saturating_add(entry.size().div_ceil(512) * 512);
            self.entry(&mut entry, &mut pending)?;
        }
        if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
            return Err(ArchiveError::Corrupt("metadata describes a member that never comes".into()));
        }
        // The tar reader also stops at a clean end of input; only a zero block after the last
        // member says the stream was complete.
        if position.get() < end_of_last.saturating_add(512) {
            return Err(ArchiveError::Corrupt("the tar stream ends without its end-of-archive marker".into()));
        }
        self.finish_dirs()?;

        // Read to the end of every layer: zstd checks its frame checksum and completeness, the
        // decryptor its last segment, and the hash must cover every byte (the decompressing
        // thread reads the raw input to its end before it reports the end of the stream).
        let decoder = archive.into_inner().into_inner();
        let mut rest = decoder.take(MAX_TRAILING + 1);
        let trailing = io::copy(&mut rest, &mut io::sink()).map_err(classify_read_error)?;
        if trailing > MAX_TRAILING {
            return Err(ArchiveError::Corrupt("too much data after the end of the archive".into()));
        }
        Ok(self.stats)
    }

    fn entry<R: Read>(&mut self, entry: &mut Entry<'_, R>, pending: &mut Pending) -> Result<(), ArchiveError> {
        let kind = entry.header().entry_type();
        let raw_header_path = entry.header().path_bytes().into_owned();
        match kind {
            EntryType::GNULongName => {
                return set_once(&mut pending.long_name, read_meta(entry, MAX_LONG_NAME, "long name")?);
            }
            EntryType::GNULongLink => {
                return set_once(&mut pending.long_link, read_meta(entry, MAX_LONG_NAME, "long link name")?);
            }
            EntryType::XHeader => return set_once(&mut pending.pax, read_meta(entry, MAX_PAX, "pax header")?),
            _ => {}
        }
        self.entries += 1;
        if self.entries > self.options.max_entries {
            return Err(ArchiveError::TooLarge(format!("more than {} entries", self.options.max_entries)));
        }
        if kind == EntryType::XGlobalHeader {
            // Global PAX records (comments, archive-wide defaults) change nothing we honour.
            read_meta(entry, MAX_PAX, "global pax header")?;
            return Ok(());
        }

        let pax = parse_pax(pending.pax.take())?;
        let long_name = pending.long_name.take().map(trim_nul);
        let long_link = pending.long_link.take().map(trim_nul);
        let raw_path = pax.path.or(long_name).unwrap_or(raw_header_path);
        let raw_link = pax.linkpath.or(long_link).or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()));
        let size = entry.size();
        if pax.size.is_some_and(|pax_size| pax_size != size) {
            return Err(ArchiveError::Corrupt("a pax size that differs from the header's is not supported".into()));
        }
        if size > self.options.max_bytes.saturating_sub(self.data_bytes) {
            return Err(ArchiveError::TooLarge(format!(
                "more than {} bytes of entry data (at {})",
                self.options.max_bytes,
                display_name(&raw_path)
            )));
        }
        self.data_bytes += size;

        let path = match normalize(&raw_path) {
            Ok(Normalized::Path(path)) => path,
            Ok(Normalized::Root) if kind == EntryType::Directory => return Ok(()),
            Ok(Normalized::Root) => return Err(ArchiveError::unsafe_entry(&raw_path, "empty name")),
            Err(reason) => return Err(ArchiveError::unsafe_entry(&raw_path, reason)),
        };
        let header = entry.header();
        let mode = header.mode().map_err(|e| ArchiveError::Corrupt(format!("bad mode: {e}")))?;
        let mtime = header.mtime().map_err(|e| ArchiveError::Corrupt(format!("bad mtime: {e}")))?;
        self.owner = match &self.options.owners {
            Some(map) => {
                let uid = header.uid().map_err(|e| ArchiveError::Corrupt(format!("bad uid: {e}")))?;
                let gid = header.gid().map_err(|e| ArchiveError::Corrupt(format!("bad gid: {e}")))?;
                Some((Uid::from_raw(map.to_host(uid)), Gid::from_raw(map.to_host(gid))))
            }
            None => None,
        };

        match kind {
            EntryType::Regular | EntryType::Continuous if raw_path.ends_with(b"/") => {
                self.directory(&path, &raw_path, mode, mtime)
            }
            EntryType::Regular | EntryType::Continuous => {
                if self.restores_whiteouts(&path) && path.name().starts_with(WHITEOUT_PREFIX.as_bytes()) {
                    self.whiteout(&path, &raw_path)
                } else {
                    self.file(entry, &path, &raw_path, size, mode, mtime)
                }
            }
            EntryType::Directory => self.directory(&path, &raw_path, mode, mtime),
            EntryType::Symlink => {
                let target =
                    raw_link.ok_or_else(|| ArchiveError::unsafe_entry(&raw_path, "symlink without a target"))?;
                self.symlink(&path, &raw_path, &target, mtime)
            }
            EntryType::Link => {
                let target =
                    raw_link.ok_or_else(|| ArchiveError::unsafe_entry(&raw_path, "hard link without a target"))?;
                self.hard_link(&path, &raw_path, &target)
            }
            EntryType::Char | EntryType::Block => {
                Err(ArchiveError::unsafe_entry(&raw_path, "device nodes are not allowed"))
            }
            EntryType::Fifo => Err(ArchiveError::unsafe_entry(&raw_path, "FIFOs are not allowed")),
            EntryType::GNUSparse => Err(ArchiveError::unsafe_entry(&raw_path, "sparse entries are not supported")),
            other => Err(ArchiveError::unsafe_entry(
                &raw_path,
                format!("unsupported entry type {:?}", char::from(other.as_byte())),
            )),
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &EntryPath,
        raw: &[u8],
        size: u64,
        mode: u32,
        mtime: u64,
    ) -> Result<(), ArchiveError> {
        let mode = self.clean_mode(mode, false);
        let parent = self.parent(path, raw)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let create = || openat(&*parent, path.name(), flags, Mode::from_raw_mode(0o600));
        let fd = match create() {
            Err(Errno::EXIST) => {
                replace_existing(&parent, path.name(), raw)?;
                create()
            }
            other => other,
        }
        .map_err(|e| write_error("creating", raw, e))?;
        if let Some((uid, gid)) = self.owner {
            // Before the mode: a chown clears setuid bits (there are none left, but the order
            // keeps the mode exactly as computed).
            fchown(&fd, Some(uid), Some(gid)).map_err(|e| write_error("setting the owner of", raw, e))?;
        }
        let mut file = File::from(fd);
        let mut copied = 0u64;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify_read_error(e)),
            };
            file.write_all(&self.buffer[..n]).map_err(|e| write_error("writing", raw, e))?;
            copied += n as u64;
        }
        if copied != size {
            return Err(ArchiveError::Corrupt(format!("entry {:?} is truncated", display_name(raw))));
        }
        fchmod(&file, Mode::from_raw_mode(mode)).map_err(|e| write_error("setting the mode of", raw, e))?;
        futimens(&file, &times(mtime)).map_err(|e| write_error("setting the mtime of", raw, e))?;
        self.regular.insert(path.joined());
        self.stats.file_count += 1;
        self.stats.size_bytes += size;
        Ok(())
    }

    fn directory(&mut self, path: &EntryPath, raw: &[u8], mode: u32, mtime: u64) -> Result<(), ArchiveError> {
        let mode = self.clean_mode(mode, true);
        let parent = self.parent(path, raw)?;
        // Private until `finish_dirs` gives it its real mode.
        let mkdir = || mkdirat(&*parent, path.name(), Mode::from_raw_mode(0o700));
        match mkdir() {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                match openat(&*parent, path.name(), dir_flags, Mode::empty()) {
                    // Listed again (or created earlier as a parent): keep it, take the new metadata.
                    Ok(_) => {}
                    Err(Errno::NOTDIR | Errno::LOOP) => {
                        replace_existing(&parent, path.name(), raw)?;
                        mkdir().map_err(|e| write_error("creating", raw, e))?;
                    }
                    Err(e) => return Err(write_error("opening", raw, e)),
                }
            }
            Err(e) => return Err(write_error("creating", raw, e)),
        }
        self.regular.remove(&path.joined());
        self.dirs.push(DirMeta { components: path.components().to_vec(), mode, mtime, owner: self.owner });
        self.stats.dir_count += 1;
        Ok(())
    }

    fn symlink(&mut self, path: &EntryPath, raw: &[u8], target: &[u8], mtime: u64) -> Result<(), ArchiveError> {
        check_symlink_target(path, target).map_err(|reason| ArchiveError::unsafe_entry(raw, reason))?;
        let parent = self.parent(path, raw)?;
        let create = || symlinkat(target, &*parent, path.name());
        match create() {
            Err(Errno::EXIST) => {
                replace_existing(&parent, path.name(), raw)?;
                create()
            }
            other => other,
        }
        .map_err(|e| write_error("creating", raw, e))?;
        if let Some((uid, gid)) = self.owner {
            chownat(&*parent, path.name(), Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| write_error("setting the owner of", raw, e))?;
        }
        utimensat(&*parent, path.name(), &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| write_error("setting the mtime of", raw, e))?;
        self.regular.remove(&path.joined());
        self.stats.file_count += 1;
        Ok(())
    }

    fn hard_link(&mut self, path: &EntryPath, raw: &[u8], raw_target: &[u8]) -> Result<(), ArchiveError> {
        let target = match normalize(raw_target) {
            Ok(Normalized::Path(target)) => target,
            Ok(Normalized::Root) => return Err(ArchiveError::unsafe_entry(raw, "hard link to the destination itself")),
            Err(reason) => return Err(ArchiveError::unsafe_entry(raw, format!("hard link target: {reason}"))),
        };
        if target == *path {
            return Err(ArchiveError::unsafe_entry(raw, "hard link to itself"));
        }
        if !self.regular.contains(&target.joined()) {
            return Err(ArchiveError::unsafe_entry(
                raw,
                "hard link target is not an earlier regular file of the archive",
            ));
        }
        let target_parent = self.tree.open_dir(target.parent(), false).map_err(|e| dir_error(raw, e))?;
        let parent = self.parent(path, raw)?;
        let link = || linkat(&*target_parent, target.name(), &*parent, path.name(), AtFlags::empty());
        match link() {
            Err(Errno::EXIST) => {
                replace_existing(&parent, path.name(), raw)?;
                link()
            }
            other => other,
        }
        .map_err(|e| write_error("linking", raw, e))?;
        self.regular.insert(path.joined());
        self.stats.file_count += 1;
        Ok(())
    }

    /// Turns a `.wh.<name>` marker into a 0:0 character device `<name>`, or `.wh..wh..opq`
    /// into the opaque xattr on its directory. Both need root; without it the error says so.
    fn whiteout(&mut self, path: &EntryPath, raw: &[u8]) -> Result<(), ArchiveError> {
        let parent = self.parent(path, raw)?;
        if path.name() == OPAQUE_MARKER.as_bytes() {
            fsetxattr(&*parent, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(|e| {
                ArchiveError::io(
                    format!(
                        "marking the directory of {:?} opaque: setting {OVERLAY_OPAQUE_XATTR} needs root (CAP_SYS_ADMIN)",
                        display_name(raw)
                    ),
                    e,
                )
            })?;
        } else {
            let name = &path.name()[WHITEOUT_PREFIX.len()..];
            if name.is_empty() || name == b"." || name == b".." || name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(ArchiveError::unsafe_entry(raw, "malformed whiteout marker"));
            }
            let mknod = || mknodat(&*parent, name, FileType::CharacterDevice, Mode::empty(), makedev(0, 0));
            match mknod() {
                Err(Errno::EXIST) => {
                    replace_existing(&parent, name, raw)?;
                    mknod()
                }
                other => other,
            }
            .map_err(|e| {
                ArchiveError::io(
                    format!(
                        "creating the overlay whiteout {:?}: a 0:0 character device needs root (CAP_MKNOD)",
                        display_name(raw)
                    ),
                    e,
                )
            })?;
            let mut whited_out = path.parent().to_vec();
            whited_out.push(name.to_vec());
            self.regular.remove(&crate::paths::join(&whited_out));
        }
        self.stats.whiteouts_restored += 1;
        self.stats.file_count += 1;
        Ok(())
    }

    /// Applies directory modes and mtimes, deepest first; a directory listed twice gets its
    /// last listing's metadata.
    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components.len()));
        for dir in dirs {
            let raw = crate::paths::join(&dir.components);
            let fd = self.tree.open_dir(&dir.components, false).map_err(|e| dir_error(&raw, e))?;
            if let Some((uid, gid)) = dir.owner {
                fchown(&*fd, Some(uid), Some(gid)).map_err(|e| write_error("setting the owner of", &raw, e))?;
            }
            fchmod(&*fd, Mode::from_raw_mode(dir.mode)).map_err(|e| write_error("setting the mode of", &raw, e))?;
            futimens(&*fd, &times(dir.mtime)).map_err(|e| write_error("setting the mtime of", &raw, e))?;
        }
        Ok(())
    }

    fn parent(&mut self, path: &EntryPath, raw: &[u8]) -> Result<Rc<OwnedFd>, ArchiveError> {
        self.tree.open_dir(path.parent(), true).map_err(|e| dir_error(raw, e))
    }

    fn restores_whiteouts(&self, path: &EntryPath) -> bool {
        match &self.options.restore_whiteouts {
            RestoreWhiteouts::No => false,
            RestoreWhiteouts::Everywhere => true,
            RestoreWhiteouts::Under(tops) => {
                path.components().len() >= 2 && tops.iter().any(|top| top.as_bytes() == path.components()[0])
            }
        }
    }

    /// Permission bits without setuid/setgid (and sticky on non-directories): the files belong
    /// to whoever extracts them, and a setuid binary from an upload must not become one here.
    fn clean_mode(&mut self, mode: u32, is_dir: bool) -> u32 {
        let mode = mode & 0o7777;
        let strip = if is_dir { 0o6000 } else { 0o7000 };
        if mode & strip != 0 {
            self.stats.stripped_mode_bits += 1;
        }
        mode & !strip
    }
}

/// Removes a non-directory that a later entry of the same name replaces (tar's "last one
/// wins"). Directories are never replaced: the parent cache relies on that, and an archive
/// that wants it is up to no good.
fn replace_existing(parent: &OwnedFd, name: &[u8], raw: &[u8]) -> Result<(), ArchiveError> {
    match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
            Err(ArchiveError::unsafe_entry(raw, "replaces a directory"))
        }
        Ok(_) => unlinkat(parent, name, AtFlags::empty()).map_err(|e| write_error("replacing", raw, e)),
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(write_error("replacing", raw, e)),
    }
}

fn dir_error(raw: &[u8], error: DirError) -> ArchiveError {
    match error {
        DirError::Unsafe(reason) => ArchiveError::unsafe_entry(raw, reason),
        DirError::Io(e) => ArchiveError::io(format!("opening the directory of {:?}", display_name(raw)), e),
    }
}

fn write_error(what: &str, raw: &[u8], error: impl Into<io::Error>) -> ArchiveError {
    ArchiveError::io(format!("{what} {:?}", display_name(raw)), error)
}

/// The mtime from the archive; the access time is left as it is (now).
fn times(mtime: u64) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX), tv_nsec: 0 },
    }
}

fn set_once(slot: &mut Option<Vec<u8>>, value: Vec<u8>) -> Result<(), ArchiveError> {
    if slot.is_some() {
        return Err(ArchiveError::Corrupt("two metadata entries of the same kind for one member".into()));
    }
    *slot = Some(value);
    Ok(())
}

/// Reads a metadata entry's content, refusing it past `cap` before reading anything.
fn read_meta<R: Read>(entry: &mut Entry<'_, R>, cap: u64, what: &str) -> Result<Vec<u8>, ArchiveError> {
    let size = entry.size();
    if size > cap {
        return Err(ArchiveError::TooLarge(format!("a {what} of {size} bytes (at most {cap})")));
    }
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry.read_to_end(&mut content).map_err(classify_read_error)?;
    if content.len() as u64 != size {
        return Err(ArchiveError::Corrupt(format!("truncated {what}")));
    }
    Ok(content)
}

fn trim_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

fn parse_pax(records: Option<Vec<u8>>) -> Result<Pax, ArchiveError> {
    let mut pax = Pax::default();
    let Some(records) = records else { return Ok(pax) };
    for record in tar::PaxExtensions::new(&records) {
        let record = record.map_err(|e| ArchiveError::Corrupt(format!("bad pax record: {e}")))?;
        match record.key() {
            Ok("path") => pax.path = Some(record.value_bytes().to_vec()),
            Ok("linkpath") => pax.linkpath = Some(record.value_bytes().to_vec()),
            Ok("size") => {
                let size = std::str::from_utf8(record.value_bytes()).ok().and_then(|v| v.parse().ok());
                pax.size = Some(size.ok_or_else(|| ArchiveError::Corrupt("bad pax size".into()))?);
            }
            _ => {}
        }
    }
    Ok(pax)
}

/// Decompressed chunks buffered between the decompressing thread and the extractor.
const READ_AHEAD_CHUNKS: usize = 8;
/// Bytes per chunk.
const CHUNK_BYTES: usize = 256 * 1024;

/// The decompressing side of an unpack, on its own thread: reads (and hashes, decrypts,
/// decompresses) the input and hands the plain bytes over in chunks, so decompression overlaps
/// with writing files as `zstd -d | tar -x` overlaps with two processes. At the end of the zstd
/// stream it reads the raw input to its end too (so the hash covers every byte), then sends an
/// empty chunk. It stops as soon as the extractor hangs up.
fn decompress_into<R: BufRead>(
    mut decoder: zstd::Decoder<'_, R>,
    chunks: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
) {
    loop {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                chunk.truncate(n);
                if chunks.send(Ok(chunk)).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                let _ = chunks.send(Err(err));
                return;
            }
        }
    }
    let mut raw = decoder.finish();
    let end = io::copy(&mut raw, &mut io::sink()).map(|_| Vec::new());
    let _ = chunks.send(end);
}

/// The extractor's view of the decompressing thread's output.
struct ChannelReader {
    chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    offset: usize,
    ended: bool,
}

impl ChannelReader {
    fn new(chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        ChannelReader { chunks, current: Vec::new(), offset: 0, ended: false }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.offset < self.current.len() {
                let n = buf.len().min(self.current.len() - self.offset);
                buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
                self.offset += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.ended = true,
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.offset = 0;
                }
                Ok(Err(err)) => {
                    self.ended = true;
                    return Err(err);
                }
                Err(_) => {
                    self.ended = true;
                    return Err(io::Error::other("the decompressing thread stopped"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_checksums_are_validated_and_lowercased() {
        let upper = "AB".repeat(32);
        assert_eq!(parse_sha256(&upper).expect("valid"), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn mode_cleaning_strips_and_counts() {
        let options = UnpackOptions::default();
        let root = rustix::fs::open(".", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open");
        let mut extractor = Extractor::new(root, &options);
        assert_eq!(extractor.clean_mode(0o4755, false), 0o755);
        assert_eq!(extractor.clean_mode(0o2755, true), 0o755);
        assert_eq!(extractor.clean_mode(0o1777, true), 0o1777);
        assert_eq!(extractor.clean_mode(0o1644, false), 0o644);
        assert_eq!(extractor.clean_mode(0o644, false), 0o644);
        assert_eq!(extractor.stats.stripped_mode_bits, 3);
    }

    #[test]
    fn pax_records_are_parsed() {
        let records = b"16 path=a/b/c.d\n20 linkpath=../x/yz\n11 size=42\n".to_vec();
        let pax = parse_pax(Some(records)).expect("parses");
        assert_eq!(pax.path.as_deref(), Some(&b"a/b/c.d"[..]));
        assert_eq!(pax.linkpath.as_deref(), Some(&b"../x/yz"[..]));
        assert_eq!(pax.size, Some(42));
    }
}
