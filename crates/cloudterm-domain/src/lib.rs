//! cloudterm's services: the domain that sits between HTTP and the ports.
//!
//! Nothing here knows about axum, status codes or SQL: handlers call these services with
//! domain inputs and convert what comes back. Backends (which Store, which BlobStore, which
//! Runtime) are chosen by the server's wiring and handed in as trait objects.

pub mod access;
pub mod clock;
pub mod error;
pub mod ids;
pub mod marketplace;
pub mod previews;
pub mod principal;
pub mod principals;
pub mod quotas;
pub mod sandboxes;
pub mod snapshots;
pub mod workspaces;

pub use access::{Access, AccessControl, Grant};
pub use error::DomainError;
pub use marketplace::{MarketplaceService, MarketplaceSettings};
pub use previews::{Preview, PreviewService};
pub use principal::{storage_name, Principal};
pub use principals::{PrincipalService, PrincipalView};
pub use sandboxes::{CreateSandbox, Sandbox, SandboxService, SandboxSettings};
pub use snapshots::{SnapshotService, SnapshotSettings};
pub use workspaces::{Workspace, WorkspaceService};
