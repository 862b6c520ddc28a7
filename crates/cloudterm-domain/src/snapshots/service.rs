//! `SnapshotService`: create (live, with the workspace's sandboxes frozen while it is read),
//! restore (extract beside the workspace, verify, swap in with one atomic exchange), list,
//! delete, download, import, retention, and clean-up after a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloudterm_archive::{PackOptions, UnpackOptions};
use cloudterm_blobstore::{BlobStore, ObjectReader};
use cloudterm_runtime::{Mount, SandboxRuntimeError, WritableLayer};
use cloudterm_store::{SnapshotRecord, SnapshotState, Store, StoreError, WorkspaceRecord};
use tokio::io::AsyncRead;

use crate::access::Access;
use crate::error::DomainError;
use crate::ids::new_id;
use crate::principal::{storage_name, Principal};
use crate::sandboxes::ops::storage_exceeded;
use crate::sandboxes::{CreateSandbox, Sandbox, SandboxService};
use crate::snapshots::layer;
use crate::snapshots::model::{
    CreateSnapshot, RestoreSnapshot, RestoredSnapshot, Snapshot, SnapshotKind, SnapshotLayer, SnapshotRecovery,
    SnapshotSettings,
};
use crate::snapshots::transfer::{self, storage_error};

/// Where snapshot objects live in the BlobStore.
const PREFIX: &str = "snapshots";
/// Object name suffixes: plain archives are readable by `tar --zstd -x`, sealed ones are not.
const PLAIN: &str = ".tar.zst";
const SEALED: &str = ".tar.zst.sealed";

/// Snapshots of workspaces.
pub struct SnapshotService {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    sandboxes: Arc<SandboxService>,
    settings: SnapshotSettings,
}

impl SnapshotService {
    /// A service storing objects in `blobs` and records in `store`.
    pub fn new(
        store: Arc<dyn Store>,
        blobs: BlobStore,
        sandboxes: Arc<SandboxService>,
        settings: SnapshotSettings,
    ) -> Self {
        SnapshotService { store, blobs, sandboxes, settings }
    }

    /// Snapshots a workspace: a sandbox's, a named one, or the caller's home workspace.
    pub async fn create(
        &self,
        caller: &Principal,
        request: CreateSnapshot,
        kind: SnapshotKind,
    ) -> Result<Snapshot, DomainError> {
        let label = validate_label(request.label)?;
        let (workspace, layer_of) = match (&request.sandbox_id, &request.workspace_id) {
            (Some(_), Some(_)) => {
                return Err(DomainError::InvalidInput("give sandbox_id or workspace_id, not both".into()))
            }
            (Some(sandbox), None) => {
                (self.sandboxes.workspace_of(caller, sandbox, Access::Write).await?, Some(sandbox.clone()))
            }
            (None, workspace) => {
                let workspace = self.sandboxes.resolve_workspace(caller, workspace.as_deref(), Access::Write).await?;
                // The writable layer of the workspace's sandbox, when there is exactly one.
                let running = self.sandboxes.running_on_workspace(&workspace.id).await?;
                let only = if running.len() == 1 { running.into_iter().next() } else { None };
                (workspace, only)
            }
        };
        let what = Taking { label, kind, pinned: request.pinned };
        self.snapshot_workspace(&workspace, what, layer_of).await
    }

    /// When the reaper takes an idle sandbox, before it stops it: snapshot its workspace and its
    /// writable layer (the sandbox is frozen while they are read). Errors are logged, not
    /// returned: the sandbox is stopped either way.
    pub async fn before_idle_stop(&self, sandbox_id: &str) -> Option<Snapshot> {
        let record = match self.store.get_sandbox(sandbox_id).await {
            Ok(record) => record,
            Err(err) => {
                tracing::warn!(sandbox = %sandbox_id, error = %err, "idle snapshot: no record");
                return None;
            }
        };
        let workspace = match self.store.get_workspace(record.workspace_id.as_deref()?).await {
            Ok(workspace) => workspace,
            Err(err) => {
                tracing::warn!(sandbox = %sandbox_id, error = %err, "idle snapshot: no workspace");
                return None;
            }
        };
        let layer_of = Some(sandbox_id.to_string());
        match self.snapshot_workspace(&workspace, Taking::automatic(SnapshotKind::Idle), layer_of).await {
            Ok(snapshot) => {
                tracing::info!(sandbox = %sandbox_id, snapshot = %snapshot.id, bytes = snapshot.stored_bytes, "idle snapshot taken");
                Some(snapshot)
            }
            Err(err) => {
                tracing::warn!(sandbox = %sandbox_id, error = %err, "idle snapshot failed");
                None
            }
        }
    }

    /// The periodic ("daily") snapshot: every workspace with a running sandbox, once. Returns
    /// the snapshots taken; failures are logged.
    pub async fn periodic(&self) -> Vec<Snapshot> {
        let states = [crate::sandboxes::state::RUNNING, crate::sandboxes::state::PAUSED];
        let running = match self.store.list_sandboxes_in_states(&states).await {
            Ok(records) => records,
            Err(err) => {
                tracing::warn!(error = %err, "periodic snapshots: cannot list running sandboxes");
                return Vec::new();
            }
        };
        let mut workspaces: Vec<String> = running.into_iter().filter_map(|r| r.workspace_id).collect();
        workspaces.sort();
        workspaces.dedup();
        let mut taken = Vec::new();
        for id in workspaces {
            let workspace = match self.store.get_workspace(&id).await {
                Ok(workspace) => workspace,
                Err(err) => {
                    tracing::warn!(workspace = %id, error = %err, "periodic snapshot: no workspace");
                    continue;
                }
            };
            // Which sandbox's layer is ambiguous when several share the workspace: the
            // workspace alone then, as for an explicit snapshot of the workspace.
            let running = self.sandboxes.running_on_workspace(&id).await.unwrap_or_default();
            let layer_of = if running.len() == 1 { running.into_iter().next() } else { None };
            match self.snapshot_workspace(&workspace, Taking::automatic(SnapshotKind::Daily), layer_of).await {
                Ok(snapshot) => taken.push(snapshot),
                Err(err) => tracing::warn!(workspace = %id, error = %err, "periodic snapshot failed"),
            }
        }
        taken
    }

    /// Snapshots `workspace` (stored under its owner, whoever asked) and, with `layer_of`, that
    /// sandbox's writable layer.
    async fn snapshot_workspace(
        &self,
        workspace: &WorkspaceRecord,
        what: Taking,
        layer_of: Option<String>,
    ) -> Result<Snapshot, DomainError> {
        let dir = self.sandboxes.prepare_workspace(workspace).await?;
        let (owner, workspace) = (workspace.owner.as_str(), workspace.id.as_str());
        // A live snapshot: the sandboxes writing this workspace (and the one whose layer is
        // taken) are frozen while it is read.
        let mut running = self.sandboxes.running_on_workspace(workspace).await?;
        if let Some(id) = layer_of.as_ref().filter(|id| !running.contains(id)) {
            running.push(id.clone());
        }
        // A sandbox on its own copy of the workspace never writes the directory read here (and
        // `sync_workspace` pauses it while its copy is read): freezing it would only cost a
        // pause (for a microVM, its memory written to storage) and a resume.
        let to_freeze: &[String] = if self.sandboxes.runtime().keeps_workspace_copy() { &[] } else { &running };
        let frozen = Frozen::freeze(&self.sandboxes, to_freeze).await;
        let stored = async {
            // A sandbox that keeps the workspace on a disk of its own (a microVM) writes the
            // host directory back now; one whose disk cannot be read fails the snapshot
            // rather than storing files older than what the sandbox shows.
            for id in &running {
                match self.sandboxes.runtime().sync_workspace(id).await {
                    Ok(()) | Err(SandboxRuntimeError::NotRunning(_)) => {}
                    Err(err) => {
                        return Err(DomainError::Unavailable(format!(
                            "cannot read sandbox {id}'s copy of the workspace: {err}"
                        )))
                    }
                }
            }
            let layer = match &layer_of {
                Some(id) => self.writable_layer(id).await?,
                None => None,
            };
            self.store_dir(owner, workspace, dir, what, layer).await
        }
        .await;
        frozen.thaw().await;
        stored
    }

    /// The writable layer of a running sandbox and the image it runs; `None` when the runtime
    /// keeps no layer or the sandbox no longer runs.
    async fn writable_layer(&self, sandbox_id: &str) -> Result<Option<(WritableLayer, Option<String>)>, DomainError> {
        match self.sandboxes.runtime().writable_layer(sandbox_id).await {
            Ok(Some(layer)) => {
                let image = self.store.get_sandbox(sandbox_id).await?.image;
                Ok(Some((layer, image)))
            }
            Ok(None) | Err(SandboxRuntimeError::NotRunning(_)) => Ok(None),
            Err(err) => Err(DomainError::Unavailable(format!("cannot read the sandbox's writable layer: {err}"))),
        }
    }

    /// Registers a pending snapshot, packs `dir` into storage, marks it ready, applies
    /// retention. On any failure the record and the object are gone again.
    async fn store_dir(
        &self,
        owner: &str,
        workspace: &str,
        dir: PathBuf,
        what: Taking,
        layer: Option<(WritableLayer, Option<String>)>,
    ) -> Result<Snapshot, DomainError> {
        let id = new_id("snap");
        let suffix = if self.settings.key.is_some() { SEALED } else { PLAIN };
        let object_key = format!("{PREFIX}/{}/{id}{suffix}", storage_name(owner));
        let mut record = SnapshotRecord {
            id: id.clone(),
            workspace_id: workspace.to_string(),
            owner: owner.to_string(),
            label: what.label,
            kind: what.kind.as_str().to_string(),
            pinned: what.pinned,
            state: SnapshotState::Pending,
            object_key: object_key.clone(),
            size_bytes: 0,
            stored_bytes: 0,
            file_count: 0,
            sha256: None,
            layer: None,
            created_at: crate::clock::now(),
        };
        self.store.insert_snapshot(&record).await?;
        let options = PackOptions {
            level: self.settings.zstd_level,
            threads: self.settings.zstd_threads,
            key: self.settings.key.clone(),
            // The BlobStore hashes what it stores, off the packing thread.
            checksum: false,
            owners: None,
        };
        let packed = transfer::pack_to_store(&self.blobs, dir, &object_key, options.clone()).await;
        let (stats, outcome) = match packed {
            Ok(done) => done,
            Err(err) => {
                self.forget(&id, &object_key).await;
                return Err(err);
            }
        };
        let size = i64::try_from(stats.size_bytes).unwrap_or(i64::MAX);
        let stored = i64::try_from(outcome.size_bytes).unwrap_or(i64::MAX);
        let files = i64::try_from(stats.file_count).unwrap_or(i64::MAX);
        let layer = match layer {
            Some((layer, image)) => {
                match layer::pack_layer(&self.blobs, layer, image, &layer::layer_key(&object_key), options).await {
                    Ok(record) => Some(record),
                    Err(err) => {
                        self.forget(&id, &object_key).await;
                        return Err(err);
                    }
                }
            }
            None => None,
        };
        let sha256 = Some(outcome.sha256_hex.as_str());
        if let Err(err) = self.store.mark_snapshot_ready(&id, size, stored, files, sha256, layer.as_ref()).await {
            self.forget(&id, &object_key).await;
            return Err(err.into());
        }
        record.state = SnapshotState::Ready;
        record.size_bytes = size;
        record.stored_bytes = stored;
        record.file_count = files;
        record.sha256 = Some(outcome.sha256_hex);
        record.layer = layer;
        self.apply_retention(workspace).await;
        Ok(view(record))
    }

    /// Removes a snapshot that failed half-way: objects first (the workspace's and the layer's,
    /// whichever exist), then the record.
    async fn forget(&self, id: &str, object_key: &str) {
        if let Err(err) = self.delete_objects(object_key, true).await {
            tracing::warn!(snapshot = %id, error = %err, "cannot delete a failed snapshot's object; start-up clean-up will retry");
            return;
        }
        if let Err(err) = self.store.delete_snapshot(id).await {
            tracing::warn!(snapshot = %id, error = %err, "cannot delete a failed snapshot's record");
        }
    }

    /// Deletes a snapshot's workspace object and, when it has (or may have) one, its layer
    /// object. Deleting a missing object succeeds.
    async fn delete_objects(&self, object_key: &str, with_layer: bool) -> Result<(), DomainError> {
        if with_layer {
            self.blobs.delete(&layer::layer_key(object_key)).await.map_err(storage_error)?;
        }
        self.blobs.delete(object_key).await.map_err(storage_error)
    }

    /// Keeps the newest `retention` unpinned snapshots of the workspace; deletes the rest from
    /// storage, then from the store.
    async fn apply_retention(&self, workspace: &str) {
        let Ok(snapshots) = self.store.list_snapshots(workspace).await else { return };
        let doomed = snapshots.into_iter().filter(|s| !s.pinned).skip(self.settings.retention);
        for snapshot in doomed {
            match self.delete_objects(&snapshot.object_key, snapshot.layer.is_some()).await {
                Ok(()) => {
                    let _ = self.store.delete_snapshot(&snapshot.id).await;
                    tracing::info!(snapshot = %snapshot.id, workspace = %workspace, "retention removed a snapshot");
                }
                Err(err) => tracing::warn!(snapshot = %snapshot.id, error = %err, "retention cannot delete a snapshot"),
            }
        }
    }

    /// The snapshots of one workspace the caller may read (default: of all the workspaces they
    /// own), newest first.
    pub async fn list(&self, caller: &Principal, workspace_id: Option<&str>) -> Result<Vec<Snapshot>, DomainError> {
        let workspaces = match workspace_id {
            Some(id) => vec![self.sandboxes.resolve_workspace(caller, Some(id), Access::Read).await?.id],
            None => {
                let home = self.sandboxes.resolve_workspace(caller, None, Access::Read).await?.id;
                let mut all: Vec<String> =
                    self.store.list_workspaces_by_owner(caller.id(), None).await?.into_iter().map(|w| w.id).collect();
                if !all.contains(&home) {
                    all.push(home);
                }
                all
            }
        };
        let mut snapshots = Vec::new();
        for workspace in workspaces {
            snapshots.extend(self.store.list_snapshots(&workspace).await?.into_iter().map(view));
        }
        snapshots.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        Ok(snapshots)
    }

    /// A ready snapshot of a workspace the caller may read.
    pub async fn get(&self, caller: &Principal, id: &str) -> Result<Snapshot, DomainError> {
        Ok(view(self.checked(caller, id, Access::Read).await?))
    }

    /// Pins or unpins a snapshot (needs `write` on its workspace).
    pub async fn set_pinned(&self, caller: &Principal, id: &str, pinned: bool) -> Result<Snapshot, DomainError> {
        let mut record = self.checked(caller, id, Access::Write).await?;
        self.store.set_snapshot_pinned(id, pinned).await?;
        record.pinned = pinned;
        Ok(view(record))
    }

    /// Deletes a snapshot: its object, then its record (needs `admin` on its workspace: it
    /// destroys what others may rely on).
    pub async fn delete(&self, caller: &Principal, id: &str) -> Result<(), DomainError> {
        let record = self.checked(caller, id, Access::Admin).await?;
        self.remove(&record).await
    }

    /// Deletes every snapshot of a workspace that is being deleted (objects, then records).
    pub(crate) async fn delete_all_of(&self, workspace_id: &str) -> Result<(), DomainError> {
        for record in self.store.list_snapshots(workspace_id).await? {
            self.remove(&record).await?;
        }
        Ok(())
    }

    async fn remove(&self, record: &SnapshotRecord) -> Result<(), DomainError> {
        let id = &record.id;
        self.delete_objects(&record.object_key, record.layer.is_some()).await?;
        match self.store.delete_snapshot(id).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// The stored archive, as stored (encrypted when the snapshot is).
    pub async fn download(&self, caller: &Principal, id: &str) -> Result<(Snapshot, ObjectReader), DomainError> {
        let record = self.checked(caller, id, Access::Read).await?;
        let reader = self.blobs.get_stream(&record.object_key).await.map_err(storage_error)?;
        Ok((view(record), reader))
    }

    /// Restores a snapshot into a workspace: extracted next to it, verified, then exchanged with
    /// it atomically; running sandboxes on the workspace are switched to the new files. A
    /// failure leaves the workspace exactly as it was.
    pub async fn restore(&self, caller: &Principal, request: RestoreSnapshot) -> Result<RestoredSnapshot, DomainError> {
        let record = self.checked(caller, &request.snapshot_id, Access::Read).await?;
        // Reading the snapshot is enough to take it; the workspace it lands in needs `write`.
        let target = match (&request.sandbox_id, &request.workspace_id) {
            (Some(_), Some(_)) => {
                return Err(DomainError::InvalidInput("give sandbox_id or workspace_id, not both".into()))
            }
            (Some(sandbox), None) => self.sandboxes.workspace_of(caller, sandbox, Access::Write).await?,
            (None, Some(workspace)) => self.sandboxes.resolve_workspace(caller, Some(workspace), Access::Write).await?,
            (None, None) => self.sandboxes.resolve_workspace(caller, Some(&record.workspace_id), Access::Write).await?,
        };
        let workspace = target.id.clone();
        if self.sandboxes.runtime().keeps_workspace_copy() {
            let running = self.sandboxes.running_on_workspace(&workspace).await?;
            if !running.is_empty() {
                return Err(DomainError::Conflict(format!(
                    "workspace {workspace} is in use by sandbox {}, which keeps its own copy of the workspace on the {} runtime; stop it before restoring into the workspace",
                    running.join(", "),
                    self.sandboxes.runtime().kind()
                )));
            }
        }
        let dir = self.sandboxes.prepare_workspace(&target).await?;
        // A snapshot bigger than the workspace's storage limit cannot be restored into it:
        // refused before a byte moves (the archive's own count is checked again while it is
        // unpacked). The restored tree is unpacked beside the old one, by the server, into
        // the volume's root reserve, so only the new tree has to fit in the limit.
        let limit = self.sandboxes.limits_for(&target.owner).storage_bytes();
        let size = u64::try_from(record.size_bytes).unwrap_or(0);
        if let Some(limit) = limit.filter(|limit| size > *limit) {
            return Err(storage_exceeded(&format!(
                "snapshot {} holds {size} bytes, more than the workspace's limit of {limit} bytes",
                record.id
            )));
        }
        let fresh = scratch_dir(&dir, "restore")?;
        let mut options = self.unpack_options(Some(&record))?;
        if let Some(limit) = limit {
            options.max_bytes = options.max_bytes.min(limit);
        }
        let stats = match transfer::unpack_from_store(&self.blobs, &record.object_key, &fresh, options).await {
            Ok(stats) => stats,
            Err(err) => {
                remove_in_background(fresh);
                return Err(err);
            }
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|err| DomainError::Internal(format!("cannot create workspace dir: {err}")))?;
        exchange(&fresh, &dir)?;
        // `fresh` now holds the old files, still mounted in running sandboxes: switch them to
        // the new directory first (a mount onto a deleted directory fails), then delete.
        let mut updated = Vec::new();
        for sandbox in self.sandboxes.running_on_workspace(&workspace).await? {
            let mount = Mount { host_path: dir.clone(), target: PathBuf::from("/workspace"), read_only: false };
            match self.sandboxes.runtime().mount(&sandbox, &mount).await {
                Ok(()) => updated.push(sandbox),
                // The process runtime reaches the workspace by its host path: nothing to move.
                Err(SandboxRuntimeError::NotSupported { .. }) => updated.push(sandbox),
                Err(err) => {
                    tracing::warn!(sandbox = %sandbox, error = %err, "cannot switch a sandbox to the restored workspace")
                }
            }
        }
        remove_in_background(fresh);
        Ok(RestoredSnapshot {
            snapshot_id: record.id,
            workspace_id: workspace,
            restored_files: stats.file_count,
            sandboxes_updated: updated,
        })
    }

    /// Creates a sandbox from a snapshot: the snapshot's workspace restored into the workspace
    /// the request names (default: the snapshot's own; restored even if the sandbox then fails
    /// to start), and, where the runtime keeps layers, the snapshotted sandbox's writable layer
    /// (installed packages, `/etc`, home directories) as it was. A snapshot with a layer
    /// starts the image it was taken with; asking for another is refused.
    pub async fn start_sandbox(
        &self,
        caller: &Principal,
        snapshot_id: &str,
        request: CreateSandbox,
    ) -> Result<Sandbox, DomainError> {
        let record = self.checked(caller, snapshot_id, Access::Read).await?;
        self.start_from(caller, record, request, true).await
    }

    /// Starts a sandbox on `workspace` from its newest snapshot (`POST /workspaces/{id}/exec`
    /// when nothing runs there): the snapshot's writable layer brings back what was installed.
    /// The workspace's files are *not* rolled back: they persist on disk across sandboxes and
    /// may be newer than the snapshot (a sandbox deleted without one), so they are restored
    /// from it only when the workspace directory is gone (a new disk under the same store).
    /// Without a snapshot, an ordinary sandbox starts.
    pub async fn resume_workspace(
        &self,
        caller: &Principal,
        workspace: &WorkspaceRecord,
        request: CreateSandbox,
    ) -> Result<Sandbox, DomainError> {
        let request = CreateSandbox { workspace_id: Some(workspace.id.clone()), ..request };
        let latest = self.store.list_snapshots(&workspace.id).await?.into_iter().next();
        let Some(latest) = latest else {
            return self.sandboxes.create(caller, request).await;
        };
        // Checked like any other use of the snapshot, though it is the workspace's own.
        let record = self.checked(caller, &latest.id, Access::Read).await?;
        let missing = !self.sandboxes.workspace_dir(&workspace.owner, &workspace.id).exists();
        self.start_from(caller, record, request, missing).await
    }

    /// [`start_sandbox`](Self::start_sandbox) from a checked snapshot record; `restore_files`
    /// says whether the workspace's files are restored from it too.
    async fn start_from(
        &self,
        caller: &Principal,
        record: SnapshotRecord,
        mut request: CreateSandbox,
        restore_files: bool,
    ) -> Result<Sandbox, DomainError> {
        let snapshot_id = record.id.clone();
        let owners = self.sandboxes.runtime().layer_owners();
        let layer = record.layer.clone().filter(|_| owners.is_some());
        if let Some(layer) = &layer {
            match (&request.image, &layer.image) {
                (None, taken) => request.image = taken.clone(),
                (Some(asked), Some(taken)) if asked == taken => {}
                (Some(asked), taken) => {
                    return Err(DomainError::InvalidInput(format!(
                        "snapshot {snapshot_id} holds the writable layer of a sandbox of image {}; it cannot start image {asked:?}",
                        taken.as_deref().unwrap_or("(default)")
                    )))
                }
            }
        }
        // The layer first: it changes nothing until the sandbox starts from it.
        let layer_dir = match (&layer, owners) {
            (Some(layer), Some(owners)) => {
                let dir = self.sandboxes.layer_scratch_dir()?;
                let unpacked = async {
                    let options = self.unpack_options(Some(&record))?;
                    layer::unpack_layer(&self.blobs, layer, &dir, options, owners).await
                }
                .await;
                if let Err(err) = unpacked {
                    remove_in_background(dir);
                    return Err(err);
                }
                Some(dir)
            }
            _ => None,
        };
        let workspace = request.workspace_id.clone().unwrap_or_else(|| record.workspace_id.clone());
        if restore_files {
            let restore = RestoreSnapshot {
                snapshot_id: snapshot_id.clone(),
                sandbox_id: None,
                workspace_id: Some(workspace.clone()),
            };
            if let Err(err) = self.restore(caller, restore).await {
                if let Some(dir) = layer_dir {
                    remove_in_background(dir);
                }
                return Err(err);
            }
        }
        request.workspace_id = Some(workspace);
        self.sandboxes.create_with_layer(caller, request, layer_dir).await
    }

    /// Turns an uploaded `.tar.zst` into a snapshot of one of the caller's workspaces. The
    /// upload is extracted as strictly as any restore (into a scratch directory) and stored
    /// from there, so what storage holds is always an archive cloudterm wrote.
    pub async fn import(
        &self,
        caller: &Principal,
        workspace_id: Option<&str>,
        label: Option<String>,
        body: impl AsyncRead + Unpin + Send + 'static,
    ) -> Result<Snapshot, DomainError> {
        let label = validate_label(label)?;
        let workspace = self.sandboxes.resolve_workspace(caller, workspace_id, Access::Write).await?;
        let dir = self.sandboxes.prepare_workspace(&workspace).await?;
        let scratch = scratch_dir(&dir, "import")?;
        let result = async {
            let mut options = self.unpack_options(None)?;
            // What could not be restored into the workspace is not worth storing.
            if let Some(limit) = self.sandboxes.limits_for(&workspace.owner).storage_bytes() {
                options.max_bytes = options.max_bytes.min(limit);
            }
            transfer::unpack_reader(body, &scratch, options).await?;
            let what = Taking { label, kind: SnapshotKind::Import, pinned: false };
            self.store_dir(&workspace.owner, &workspace.id, scratch.clone(), what, None).await
        }
        .await;
        remove_in_background(scratch);
        result
    }

    /// After a restart: removes snapshots a crash left pending (object and record), aborts
    /// unfinished uploads, deletes objects no record knows, and leftover scratch directories.
    pub async fn recover(&self) -> Result<SnapshotRecovery, DomainError> {
        let mut report = SnapshotRecovery::default();
        for pending in self.store.list_pending_snapshots().await? {
            match self.delete_objects(&pending.object_key, true).await {
                Ok(()) => {
                    self.store.delete_snapshot(&pending.id).await?;
                    report.removed_pending.push(pending.id);
                }
                Err(err) => {
                    tracing::warn!(snapshot = %pending.id, error = %err, "cannot delete a pending snapshot's object")
                }
            }
        }
        match self.blobs.abort_incomplete_uploads(std::time::Duration::ZERO).await {
            Ok(aborted) => report.aborted_uploads = aborted.len(),
            Err(err) => tracing::warn!(error = %err, "cannot list unfinished uploads"),
        }
        let workspaces = self.sandboxes.workspaces_root().to_path_buf();
        let layer_dirs = self.sandboxes.leftover_layer_dirs();
        let scratch = tokio::task::spawn_blocking(move || {
            let mut dirs = leftover_scratch_dirs(&workspaces);
            dirs.extend(layer_dirs);
            for dir in &dirs {
                remove_scratch(dir);
            }
            dirs.len()
        })
        .await
        .unwrap_or(0);
        report.removed_scratch_dirs = scratch;
        for object in self.blobs.list(PREFIX).await.map_err(storage_error)? {
            let Some(id) = snapshot_id_of(&object.key) else { continue };
            if matches!(self.store.get_snapshot(id).await, Err(StoreError::NotFound)) {
                match self.blobs.delete(&object.key).await {
                    Ok(()) => report.removed_strays.push(object.key),
                    Err(err) => {
                        tracing::warn!(key = %object.key, error = %err, "cannot delete a stray snapshot object")
                    }
                }
            }
        }
        Ok(report)
    }

    /// A ready snapshot on whose workspace the caller has at least `needed`.
    async fn checked(&self, caller: &Principal, id: &str, needed: Access) -> Result<SnapshotRecord, DomainError> {
        Ok(self.sandboxes.access().snapshot(caller, id, needed).await?.0)
    }

    fn unpack_options(&self, record: Option<&SnapshotRecord>) -> Result<UnpackOptions, DomainError> {
        let mut options = UnpackOptions {
            max_bytes: self.settings.max_restore_bytes,
            max_entries: self.settings.max_restore_entries,
            ..UnpackOptions::default()
        };
        if let Some(record) = record {
            options.expected_sha256 = record.sha256.clone();
            if record.object_key.ends_with(SEALED) {
                options.key = Some(self.settings.key.clone().ok_or_else(|| {
                    DomainError::Unavailable("this snapshot is encrypted and no snapshot key is configured".into())
                })?);
            }
        }
        Ok(options)
    }
}

/// What a new snapshot is called and why it is taken.
struct Taking {
    label: Option<String>,
    kind: SnapshotKind,
    pinned: bool,
}

impl Taking {
    /// An unlabelled, unpinned snapshot the server takes by itself.
    fn automatic(kind: SnapshotKind) -> Self {
        Taking { label: None, kind, pinned: false }
    }
}

/// Sandboxes frozen for the duration of a snapshot read.
struct Frozen<'a> {
    sandboxes: &'a SandboxService,
    ids: Vec<String>,
}

impl<'a> Frozen<'a> {
    async fn freeze(sandboxes: &'a SandboxService, running: &[String]) -> Frozen<'a> {
        let mut ids = Vec::new();
        for id in running {
            // A paused sandbox is frozen already and must stay so after the snapshot.
            if sandboxes.live_sandbox(id).is_some_and(|live| live.is_paused()) {
                continue;
            }
            match sandboxes.runtime().pause(id).await {
                Ok(()) => ids.push(id.clone()),
                Err(SandboxRuntimeError::NotSupported { .. }) => {}
                Err(err) => {
                    tracing::warn!(sandbox = %id, error = %err, "cannot freeze for a snapshot; reading it live")
                }
            }
        }
        Frozen { sandboxes, ids }
    }

    async fn thaw(self) {
        for id in &self.ids {
            if let Err(err) = self.sandboxes.runtime().resume(id).await {
                tracing::error!(sandbox = %id, error = %err, "cannot thaw a sandbox after a snapshot");
            }
        }
    }
}

fn view(record: SnapshotRecord) -> Snapshot {
    Snapshot {
        encrypted: record.object_key.ends_with(SEALED),
        id: record.id,
        workspace_id: record.workspace_id,
        owner: record.owner,
        label: record.label,
        size_bytes: u64::try_from(record.size_bytes).unwrap_or(0),
        stored_bytes: u64::try_from(record.stored_bytes).unwrap_or(0),
        file_count: u64::try_from(record.file_count).unwrap_or(0),
        sha256: record.sha256.unwrap_or_default(),
        kind: record.kind,
        pinned: record.pinned,
        layer: record.layer.map(|layer| SnapshotLayer {
            image: layer.image,
            size_bytes: u64::try_from(layer.size_bytes).unwrap_or(0),
            stored_bytes: u64::try_from(layer.stored_bytes).unwrap_or(0),
            file_count: u64::try_from(layer.file_count).unwrap_or(0),
            sha256: layer.sha256,
        }),
        created_at: record.created_at,
    }
}

fn validate_label(label: Option<String>) -> Result<Option<String>, DomainError> {
    match label {
        Some(label) if label.len() > 200 || label.chars().any(char::is_control) => {
            Err(DomainError::InvalidInput("label must be at most 200 bytes without control characters".into()))
        }
        Some(label) if label.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// `snapshots/<owner>/<id>.tar.zst[.sealed]` → `<id>`.
fn snapshot_id_of(key: &str) -> Option<&str> {
    let name = key.rsplit('/').next()?;
    let id = layer::strip_layer_infix(name.strip_suffix(SEALED).or_else(|| name.strip_suffix(PLAIN))?);
    id.starts_with("snap_").then_some(id)
}

/// A new empty directory beside `workspace` (same file system, so it can be exchanged with it).
fn scratch_dir(workspace: &Path, purpose: &str) -> Result<PathBuf, DomainError> {
    let parent = workspace.parent().ok_or_else(|| DomainError::Internal("workspace dir has no parent".into()))?;
    std::fs::create_dir_all(parent).map_err(|err| DomainError::Internal(format!("cannot create {parent:?}: {err}")))?;
    let dir = parent.join(format!(".{purpose}-{}", new_id("tmp")));
    std::fs::create_dir(&dir).map_err(|err| DomainError::Internal(format!("cannot create a scratch dir: {err}")))?;
    Ok(dir)
}

/// Swaps two directories in one step (`renameat2(RENAME_EXCHANGE)`): a reader sees either the
/// old workspace or the new one, never a mix or nothing.
fn exchange(a: &Path, b: &Path) -> Result<(), DomainError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)
        .map_err(|err| DomainError::Internal(format!("cannot swap in the restored workspace: {err}")))
}

/// Deletes a tree off the request path (large trees take a while on ext4).
fn remove_in_background(dir: PathBuf) {
    tokio::task::spawn_blocking(move || remove_scratch(&dir));
}

/// Removes a scratch directory. The old tree a restore swapped out of a running linux sandbox
/// keeps its (then empty) top directory: the new workspace is mounted on top of the old mount,
/// which makes that directory a mount point (`EBUSY`) until the sandbox stops; the next start's
/// [`SnapshotService::recover`] removes it.
fn remove_scratch(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) if err.raw_os_error() == Some(16) => {
            tracing::debug!(dir = %dir.display(), "scratch directory still a mount point; removed at the next start")
        }
        Err(err) => tracing::warn!(dir = %dir.display(), error = %err, "cannot remove a scratch directory"),
    }
}

/// Scratch directories (`.restore-…`, `.import-…`) left in `workspaces/<owner>/` (or in the
/// root of a workspace's volume, `workspaces/<owner>/<workspace>/`, where no sandbox sees
/// them) by a crash or by a restore into a running sandbox.
fn leftover_scratch_dirs(workspaces: &Path) -> Vec<PathBuf> {
    let is_scratch = |name: &str| name.starts_with(".restore-tmp_") || name.starts_with(".import-tmp_");
    let mut found = Vec::new();
    for owner in std::fs::read_dir(workspaces).into_iter().flatten().flatten() {
        for entry in std::fs::read_dir(owner.path()).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if is_scratch(&name) {
                found.push(entry.path());
            } else if cloudterm_volumes::Volumes::image_path(&entry.path()).exists() {
                let inside = std::fs::read_dir(entry.path()).into_iter().flatten().flatten();
                found.extend(inside.filter(|e| is_scratch(&e.file_name().to_string_lossy())).map(|e| e.path()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_map_back_to_snapshot_ids() {
        assert_eq!(snapshot_id_of("snapshots/alice/snap_1.tar.zst"), Some("snap_1"));
        assert_eq!(snapshot_id_of("snapshots/alice/snap_1.tar.zst.sealed"), Some("snap_1"));
        assert_eq!(snapshot_id_of("snapshots/alice/other.bin"), None);
        assert_eq!(snapshot_id_of("snapshots/alice/x.tar.zst"), None);
        assert_eq!(snapshot_id_of("snapshots/alice/snap_1.layer.tar.zst.sealed"), Some("snap_1"));
    }

    #[test]
    fn exchange_swaps_two_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).expect("a");
        std::fs::create_dir(&b).expect("b");
        std::fs::write(a.join("new"), "").expect("new");
        std::fs::write(b.join("old"), "").expect("old");
        exchange(&a, &b).expect("exchange");
        assert!(b.join("new").exists() && a.join("old").exists());
    }

    #[test]
    fn labels_are_checked() {
        assert!(validate_label(Some("x".repeat(201))).is_err());
        assert!(validate_label(Some("a\nb".into())).is_err());
        assert_eq!(validate_label(Some("  ".into())).expect("ok"), None);
        assert_eq!(validate_label(Some("v1".into())).expect("ok"), Some("v1".into()));
    }
}
