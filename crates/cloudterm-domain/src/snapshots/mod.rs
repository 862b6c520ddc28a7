//! Snapshots: a workspace's files as one zstd-compressed tar object in the BlobStore, created
//! live, restored atomically, listed only once durably stored, trimmed by retention.

mod model;
mod service;
mod transfer;

/// The snapshot encryption key type, for the server's configuration.
pub use cloudterm_archive::Key;
pub use model::{
    CreateSnapshot, RestoreSnapshot, RestoredSnapshot, Snapshot, SnapshotKind, SnapshotRecovery, SnapshotSettings,
};
pub use service::SnapshotService;
