//! What the marketplace takes and gives.

use chrono::{DateTime, Utc};

/// `POST /marketplace/publish`.
#[derive(Debug, Clone, Default)]
pub struct PublishWorker {
    /// The worker's unique name (`[a-z0-9][a-z0-9._-]*`, at most 64 bytes).
    pub name: String,
    /// A semantic version (`1.2.0`); each is published once.
    pub version: String,
    /// What it does; searched.
    pub description: String,
    /// Labels; searched and filterable.
    pub tags: Vec<String>,
    /// The shell command it runs (`sh -c`), in the workspace.
    pub command: String,
    /// Files installed into the workspace before the command runs.
    pub files: Vec<WorkerFile>,
}

/// One file of a worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerFile {
    /// Relative path below the worker's directory (`bin/run.sh`).
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits (default `0644`).
    pub mode: Option<u32>,
}

/// What a publication answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedWorker {
    /// `wkr_…`.
    pub worker_id: String,
    /// Its name.
    pub name: String,
    /// The version just published.
    pub version: String,
    /// The publisher.
    pub author: String,
}

/// A worker with every version, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    /// `wkr_…`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Who published it (and alone may publish new versions).
    pub author: String,
    /// First publication.
    pub created_at: DateTime<Utc>,
    /// Newest first.
    pub versions: Vec<WorkerVersion>,
}

/// One immutable version.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerVersion {
    /// Semantic version.
    pub version: String,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The command.
    pub command: String,
    /// Whether it installs files.
    pub has_files: bool,
    /// When it was published.
    pub created_at: DateTime<Utc>,
}

/// A search hit: a worker as its latest version shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundWorker {
    /// `wkr_…`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Author.
    pub author: String,
    /// The latest version.
    pub latest: WorkerVersion,
    /// Relevance, higher is better (0 for a listing without a query).
    pub score: f64,
}
