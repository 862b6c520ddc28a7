//! The public HTTP JSON types of cloudterm: request and response bodies, and the error envelope.
//!
//! This crate is the wire format and nothing else: no logic, no I/O. Domain types never derive
//! `Serialize` for the API; the server converts them into these by hand, so a refactor inside
//! the domain cannot silently change what clients see.

mod error;
mod health;
mod identity;
mod marketplace;
mod preview;
mod sandbox;
mod snapshot;
mod terminal;
mod workspace;

pub use error::{ErrorBody, ErrorEnvelope};
pub use health::{CheckResult, HealthResponse, ReadinessResponse};
pub use identity::{DevTokenRequest, DevTokenResponse, Jwks, MeResponse, QuotaUsage};
pub use marketplace::{
    PublishRequest, PublishResponse, WorkerFileBody, WorkerHit, WorkerResponse, WorkerSearchResponse,
    WorkerVersionResponse,
};
pub use preview::{
    PreviewKey, PreviewLinkRequest, PreviewLinkResponse, PreviewList, PreviewResponse, RegisterPreviewRequest,
    SandboxPreviewRequest,
};
pub use sandbox::{
    BackgroundRequest, CreateSandboxRequest, ExecRequestBody, ExecResponseBody, FileEntry, FileList, FileWritten,
    JobList, JobResponse, KeepaliveRequest, KeepaliveResponse, MountRequest, MountResponse, SandboxEgress,
    SandboxLimits, SandboxList, SandboxResponse, WriteFileRequest,
};
pub use snapshot::{
    CreateSnapshotRequest, PinSnapshotRequest, RestoreSnapshotRequest, RestoreSnapshotResponse, SnapshotLayerInfo,
    SnapshotList, SnapshotResponse,
};
pub use terminal::{TerminalClientMessage, TerminalServerMessage};
pub use workspace::{
    AuditEntry, AuditList, Collaborator, CollaboratorList, CreateWorkspaceRequest, RunWorkerRequest, RunWorkerResponse,
    ShareRequest, ShareResponse, WorkspaceList, WorkspaceResponse,
};
