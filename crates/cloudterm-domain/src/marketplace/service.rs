//! `MarketplaceService`: publishing workers and their immutable versions (files packed as one
//! tar.zst object in the BlobStore), search, and reading a version's files back for a run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloudterm_archive::{PackOptions, UnpackOptions};
use cloudterm_blobstore::BlobStore;
use cloudterm_store::{Store, StoreError, WorkerRecord, WorkerVersionRecord};

use crate::error::DomainError;
use crate::ids::new_id;
use crate::marketplace::model::{FoundWorker, PublishWorker, PublishedWorker, Worker, WorkerFile, WorkerVersion};
use crate::marketplace::validate;
use crate::principal::Principal;
use crate::snapshots::transfer;

/// Where worker files live in the BlobStore (apart from `snapshots/`, whose clean-up would
/// otherwise take them for strays).
const PREFIX: &str = "workers";
/// Search results when the request names no limit, and the most it may ask for.
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
/// Longest search query.
const MAX_QUERY: usize = 1000;

/// Operator settings.
#[derive(Debug, Clone)]
pub struct MarketplaceSettings {
    /// A directory on the server's disk where files are staged while packed or unpacked.
    pub scratch_dir: PathBuf,
}

/// The worker marketplace.
pub struct MarketplaceService {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    settings: MarketplaceSettings,
}

impl MarketplaceService {
    /// A marketplace keeping records in `store` and files in `blobs`.
    pub fn new(store: Arc<dyn Store>, blobs: BlobStore, settings: MarketplaceSettings) -> Self {
        MarketplaceService { store, blobs, settings }
    }

    /// Publishes a version: of a new worker (the caller becomes its author), or a new version
    /// of the caller's own worker. Another author's name is forbidden; a version that exists is
    /// a conflict (versions are immutable).
    pub async fn publish(&self, caller: &Principal, request: PublishWorker) -> Result<PublishedWorker, DomainError> {
        validate::name(&request.name)?;
        let version = validate::version(&request.version)?;
        validate::description(&request.description)?;
        let tags = validate::tags(&request.tags)?;
        validate::command(&request.command)?;
        validate::files(&request.files)?;

        let worker = self.worker_for(caller, &request.name).await?;
        let versions = self.store.list_worker_versions(&worker.id).await?;
        if versions.iter().any(|v| validate::same_version(&v.version, &version)) {
            return Err(version_exists(&request.name, &version));
        }
        let files_key = if request.files.is_empty() {
            None
        } else {
            let key = format!("{PREFIX}/{}/{}.tar.zst", worker.id, new_id("files"));
            self.store_files(&request.files, &key).await?;
            Some(key)
        };
        let record = WorkerVersionRecord {
            worker_id: worker.id.clone(),
            version: version.clone(),
            description: request.description,
            tags,
            command: request.command,
            files_key: files_key.clone(),
            created_at: crate::clock::now(),
        };
        if let Err(err) = self.store.insert_worker_version(&record).await {
            if let Some(key) = files_key {
                let _ = self.blobs.delete(&key).await;
            }
            return Err(match err {
                // Published by a racing request since the check above.
                StoreError::Conflict(_) => version_exists(&request.name, &version),
                other => other.into(),
            });
        }
        tracing::info!(worker = %worker.id, name = %worker.name, version = %version, author = %caller.id(), "worker published");
        Ok(PublishedWorker { worker_id: worker.id, name: worker.name, version, author: worker.author })
    }

    /// The worker named `name`, created for the caller if new; another author's is forbidden.
    async fn worker_for(&self, caller: &Principal, name: &str) -> Result<WorkerRecord, DomainError> {
        let existing = match self.store.get_worker_by_name(name).await {
            Ok(worker) => worker,
            Err(StoreError::NotFound) => {
                let worker = WorkerRecord {
                    id: new_id("wkr"),
                    name: name.to_string(),
                    author: caller.id().to_string(),
                    created_at: crate::clock::now(),
                };
                match self.store.insert_worker(&worker).await {
                    Ok(()) => return Ok(worker),
                    // Someone published the same name meanwhile: theirs, or ours.
                    Err(StoreError::Conflict(_)) => self.store.get_worker_by_name(name).await?,
                    Err(err) => return Err(err.into()),
                }
            }
            Err(err) => return Err(err.into()),
        };
        if existing.author != caller.id() {
            return Err(DomainError::Forbidden(format!(
                "worker {name} belongs to another author; only its author publishes new versions"
            )));
        }
        Ok(existing)
    }

    /// Writes the files into a scratch directory, packs it into `key`, removes the directory.
    async fn store_files(&self, files: &[WorkerFile], key: &str) -> Result<(), DomainError> {
        let scratch = self.scratch()?;
        let staged = {
            let files = files.to_vec();
            let dir = scratch.clone();
            tokio::task::spawn_blocking(move || stage(&dir, &files))
                .await
                .map_err(|err| DomainError::Internal(format!("staging worker files panicked: {err}")))?
        };
        let stored = match staged {
            Ok(()) => {
                let options = PackOptions { level: 3, threads: 0, key: None, checksum: false, owners: None };
                transfer::pack_to_store(&self.blobs, scratch.clone(), key, options).await.map(|_| ())
            }
            Err(err) => Err(err),
        };
        remove_dir(scratch).await;
        stored
    }

    /// Ranked search over names, descriptions and tags (see `Store::search_workers`).
    pub async fn search(
        &self,
        q: Option<&str>,
        tag: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<FoundWorker>, DomainError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(DomainError::InvalidInput(format!("limit must be 1 to {MAX_LIMIT}, got {limit}")));
        }
        if let Some(tag) = tag {
            validate::tag_filter(tag)?;
        }
        if q.is_some_and(|q| q.len() > MAX_QUERY) {
            return Err(DomainError::InvalidInput(format!("q must be at most {MAX_QUERY} bytes")));
        }
        let found = self.store.search_workers(q, tag, limit).await?;
        Ok(found
            .into_iter()
            .map(|(worker, latest, score)| FoundWorker {
                id: worker.id,
                name: worker.name,
                author: worker.author,
                latest: version_view(latest),
                score,
            })
            .collect())
    }

    /// A worker with every version, highest first (the first is the latest).
    pub async fn get(&self, id: &str) -> Result<Worker, DomainError> {
        let worker = self.worker(id).await?;
        let versions = self.store.list_worker_versions(id).await?;
        Ok(Worker {
            id: worker.id,
            name: worker.name,
            author: worker.author,
            created_at: worker.created_at,
            versions: versions.into_iter().map(version_view).collect(),
        })
    }

    /// A version of a worker to run: the one named, or the latest (the highest by semver
    /// precedence, not the last published).
    pub async fn version(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<(WorkerRecord, WorkerVersionRecord), DomainError> {
        let worker = self.worker(id).await?;
        let versions = self.store.list_worker_versions(id).await?;
        let wanted = version.map(validate::version).transpose()?;
        let found = match &wanted {
            Some(wanted) => versions.into_iter().find(|v| &v.version == wanted),
            None => versions.into_iter().next(),
        };
        let found = found.ok_or_else(|| {
            DomainError::NotFound(format!("version {} of worker {id}", wanted.as_deref().unwrap_or("(any)")))
        })?;
        Ok((worker, found))
    }

    /// A version's files, read back from storage through the archive crate's checks (no path
    /// leaves the scratch directory) into memory; they are small (see `validate::MAX_FILES_BYTES`).
    pub async fn files(&self, version: &WorkerVersionRecord) -> Result<Vec<WorkerFile>, DomainError> {
        let Some(key) = &version.files_key else { return Ok(Vec::new()) };
        let scratch = self.scratch()?;
        let options = UnpackOptions {
            max_bytes: validate::MAX_FILES_BYTES,
            max_entries: 4 * validate::MAX_FILES as u64,
            ..UnpackOptions::default()
        };
        let read = async {
            transfer::unpack_from_store(&self.blobs, key, &scratch, options).await?;
            let dir = scratch.clone();
            tokio::task::spawn_blocking(move || collect(&dir))
                .await
                .map_err(|err| DomainError::Internal(format!("reading worker files panicked: {err}")))?
        }
        .await;
        remove_dir(scratch).await;
        read
    }

    async fn worker(&self, id: &str) -> Result<WorkerRecord, DomainError> {
        match self.store.get_worker(id).await {
            Ok(worker) => Ok(worker),
            Err(StoreError::NotFound) => Err(DomainError::NotFound(format!("worker {id}"))),
            Err(err) => Err(err.into()),
        }
    }

    fn scratch(&self) -> Result<PathBuf, DomainError> {
        let root = &self.settings.scratch_dir;
        std::fs::create_dir_all(root).map_err(|err| DomainError::Internal(format!("cannot create {root:?}: {err}")))?;
        let dir = root.join(new_id("tmp"));
        std::fs::create_dir(&dir)
            .map_err(|err| DomainError::Internal(format!("cannot create a scratch dir: {err}")))?;
        Ok(dir)
    }
}

fn version_exists(name: &str, version: &str) -> DomainError {
    DomainError::Conflict(format!("{name} {version} is already published; versions are immutable"))
}

fn version_view(record: WorkerVersionRecord) -> WorkerVersion {
    WorkerVersion {
        version: record.version,
        description: record.description,
        tags: record.tags,
        command: record.command,
        has_files: record.files_key.is_some(),
        created_at: record.created_at,
    }
}

/// Writes validated files below `dir` with their modes (default `0644`).
fn stage(dir: &Path, files: &[WorkerFile]) -> Result<(), DomainError> {
    let io = |err: std::io::Error| DomainError::Internal(format!("cannot stage worker files: {err}"));
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, &file.data).map_err(io)?;
        let mode = file.mode.unwrap_or(0o644) & 0o777;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

/// Every regular file below `dir`, with its path relative to `dir` and its permission bits.
fn collect(dir: &Path) -> Result<Vec<WorkerFile>, DomainError> {
    let io = |err: std::io::Error| DomainError::Internal(format!("cannot read worker files: {err}"));
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).map_err(io)? {
            let entry = entry.map_err(io)?;
            let kind = entry.file_type().map_err(io)?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                let relative = path
                    .strip_prefix(dir)
                    .map_err(|err| DomainError::Internal(format!("worker file outside its dir: {err}")))?;
                let mode = entry.metadata().map_err(io)?.permissions().mode() & 0o777;
                out.push(WorkerFile {
                    path: relative.to_string_lossy().into_owned(),
                    data: std::fs::read(&path).map_err(io)?,
                    mode: Some(mode),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

async fn remove_dir(dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}
