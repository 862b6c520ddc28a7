-- A snapshot's writable layer (installed packages, /etc, home directories): a second archive
-- beside the workspace's, described by one JSON object (SnapshotLayerRecord); NULL for none.
ALTER TABLE snapshots ADD COLUMN layer TEXT;
