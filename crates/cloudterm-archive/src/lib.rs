//! Snapshot archives: a sandbox's workspace (and its overlay writable layer) as one stream of
//! tar → zstd → optional encryption, and the extractor that is the security boundary on the way back.
//!
//! The API is synchronous on purpose: archives are CPU and file-system work, so the caller runs
//! [`pack`]/[`unpack`] in `spawn_blocking`, bridging its async body or object stream with
//! `tokio_util::io::SyncIoBridge`. Nothing is buffered whole in memory and no temporary file is
//! written: bytes flow from the file system to `out` (and from `input` to the file system) as
//! they are produced.
//!
//! Both directions walk the tree through directory file descriptors and never follow a symbolic
//! link, because the trees belong to sandboxes that may be changing them while we read (pack) or
//! were crafted by whoever uploaded the archive (unpack). Format and safety decisions are
//! written down in the crate's README.

mod beneath;
mod crypt;
mod error;
mod io_util;
mod owners;
mod pack;
mod paths;
mod unpack;

pub use crypt::Key;
pub use error::ArchiveError;
pub use owners::OwnerMap;
pub use pack::{pack, pack_sources, PackOptions, PackStats, SkipReason, Skipped, Source};
pub use unpack::{unpack, RestoreWhiteouts, UnpackOptions, UnpackStats};

/// The prefix of an OCI whiteout marker: `.wh.<name>` in an archive stands for an overlayfs
/// whiteout (a 0:0 character device) named `<name>` in the same directory.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// The OCI opaque-directory marker: present in a directory, it stands for the overlayfs xattr
/// `trusted.overlay.opaque=y` on that directory (nothing of the lower layers shows through it).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The xattr overlayfs (mounted by root, without `userxattr`) uses to mark an opaque directory.
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
