//! Bodies of the worker marketplace.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /marketplace/publish`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Unique name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
    pub name: String,
    /// A semantic version (`1.2.0`); each version is published once.
    pub version: String,
    /// What it does (searched).
    #[serde(default)]
    pub description: String,
    /// Labels (searched and filterable).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The shell command it runs, from the workspace root.
    pub command: String,
    /// Files installed into `.workers/NAME/` before the command runs (at most 256, 8 MiB).
    #[serde(default)]
    pub files: Vec<WorkerFileBody>,
}

/// One file of a worker: exactly one of `content` and `content_base64`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerFileBody {
    /// Relative path (`bin/run.sh`), without `.` or `..` components.
    pub path: String,
    /// UTF-8 contents.
    #[serde(default)]
    pub content: Option<String>,
    /// Contents, base64.
    #[serde(default)]
    pub content_base64: Option<String>,
    /// Permission bits (default `0o644`, i.e. 420), at most `0o777`.
    #[serde(default)]
    pub mode: Option<u32>,
}

/// What a publication answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishResponse {
    /// `wkr_…`.
    pub worker_id: String,
    /// Name.
    pub name: String,
    /// The version published.
    pub version: String,
    /// The author.
    pub author: String,
}

/// One version of a worker.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerVersionResponse {
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

/// `GET /marketplace/{worker_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerResponse {
    /// `wkr_…`.
    pub worker_id: String,
    /// Name.
    pub name: String,
    /// The author (the only one who publishes versions).
    pub author: String,
    /// First publication.
    pub created_at: DateTime<Utc>,
    /// The newest version.
    pub latest_version: Option<String>,
    /// Every version, newest first.
    pub versions: Vec<WorkerVersionResponse>,
}

/// One search hit: the worker as its latest version shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerHit {
    /// `wkr_…`.
    pub worker_id: String,
    /// Name.
    pub name: String,
    /// Author.
    pub author: String,
    /// The latest version.
    pub version: String,
    /// Its description.
    pub description: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Relevance, higher is better (only comparable within one answer).
    pub score: f64,
}

/// `GET /marketplace/search`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerSearchResponse {
    /// Best first.
    pub workers: Vec<WorkerHit>,
}
