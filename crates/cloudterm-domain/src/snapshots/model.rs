//! What the snapshot service takes and gives: requests, views and operator settings.

use chrono::{DateTime, Utc};
use cloudterm_archive::Key;

/// Why a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Asked for through the API or the CLI.
    Manual,
    /// Taken when an idle sandbox was stopped.
    Idle,
    /// Taken by the daily schedule.
    Daily,
    /// Brought in with `POST /snapshot/import`.
    Import,
}

impl SnapshotKind {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Manual => "manual",
            SnapshotKind::Idle => "idle",
            SnapshotKind::Daily => "daily",
            SnapshotKind::Import => "import",
        }
    }
}

/// `POST /snapshot/create`.
#[derive(Debug, Clone, Default)]
pub struct CreateSnapshot {
    /// Snapshot the workspace of this sandbox (frozen while its files are read).
    pub sandbox_id: Option<String>,
    /// Snapshot this workspace; neither: the caller's home workspace.
    pub workspace_id: Option<String>,
    /// A label for people.
    pub label: Option<String>,
    /// Exempt from retention.
    pub pinned: bool,
}

/// `POST /snapshot/restore`.
#[derive(Debug, Clone, Default)]
pub struct RestoreSnapshot {
    /// The snapshot to restore.
    pub snapshot_id: String,
    /// Restore into this sandbox's workspace.
    pub sandbox_id: Option<String>,
    /// Restore into this workspace; neither: the snapshot's own workspace.
    pub workspace_id: Option<String>,
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `snap_…`.
    pub id: String,
    /// The workspace it captures.
    pub workspace_id: String,
    /// Its owner.
    pub owner: String,
    /// Label.
    pub label: Option<String>,
    /// Bytes of the files in it.
    pub size_bytes: u64,
    /// Bytes stored (compressed, maybe encrypted).
    pub stored_bytes: u64,
    /// Files in it.
    pub file_count: u64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// `manual`, `idle`, `daily` or `import`.
    pub kind: String,
    /// Exempt from retention.
    pub pinned: bool,
    /// Whether storage holds it encrypted.
    pub encrypted: bool,
    /// The sandbox's writable layer taken with the workspace (installed packages, `/etc`,
    /// home directories), which a sandbox created from the snapshot starts with.
    pub layer: Option<SnapshotLayer>,
    /// When it was taken.
    pub created_at: DateTime<Utc>,
}

/// The writable layer stored with a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotLayer {
    /// The image the sandbox ran (`None`: the default image); only that image can start from it.
    pub image: Option<String>,
    /// Bytes of the files in it.
    pub size_bytes: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// Entries in it that are not directories.
    pub file_count: u64,
    /// Hex SHA-256 of the stored layer archive.
    pub sha256: String,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredSnapshot {
    /// The snapshot restored.
    pub snapshot_id: String,
    /// The workspace that now holds its files.
    pub workspace_id: String,
    /// Files written.
    pub restored_files: u64,
    /// Running sandboxes that were switched to the restored files.
    pub sandboxes_updated: Vec<String>,
}

/// What start-up clean-up found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotRecovery {
    /// Snapshots a crash left half-written, now removed (record and object).
    pub removed_pending: Vec<String>,
    /// Objects under `snapshots/` with no record, now deleted.
    pub removed_strays: Vec<String>,
    /// Unfinished multipart uploads aborted.
    pub aborted_uploads: usize,
    /// Scratch directories of interrupted restores and imports looked at (and removed unless
    /// a running sandbox still has one mounted).
    pub removed_scratch_dirs: usize,
}

/// Operator settings.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    /// Newest snapshots kept per workspace; pinned ones are not counted and never removed.
    pub retention: usize,
    /// Encrypt every new snapshot with this key; storage then never holds plaintext.
    pub key: Option<Key>,
    /// zstd level.
    pub zstd_level: i32,
    /// zstd worker threads (0: on the packing thread).
    pub zstd_threads: u32,
    /// Most bytes a restore or import may write.
    pub max_restore_bytes: u64,
    /// Most entries a restore or import may hold.
    pub max_restore_entries: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get().min(4)).unwrap_or(1);
        SnapshotSettings {
            retention: 5,
            key: None,
            zstd_level: 3,
            zstd_threads: u32::try_from(threads).unwrap_or(1),
            max_restore_bytes: 16 << 30,
            max_restore_entries: 2_000_000,
        }
    }
}
