//! Snapshots: a workspace's files as one zstd-compressed tar object in the BlobStore (and the
//! sandbox's writable layer as a second one), created live, restored atomically, listed only
//! once durably stored, trimmed by retention.

mod layer;
mod model;
mod service;
pub(crate) mod transfer;

/// The snapshot encryption key type, for the server's configuration.
pub use cloudterm_archive::Key;
pub use model::{
    CreateSnapshot, RestoreSnapshot, RestoredSnapshot, Snapshot, SnapshotKind, SnapshotLayer, SnapshotRecovery,
    SnapshotSettings,
};
pub use service::SnapshotService;
