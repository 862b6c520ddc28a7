//! cloudterm's services: the domain that sits between HTTP and the ports.
//!
//! Nothing here knows about axum, status codes or SQL: handlers call these services with
//! domain inputs and convert what comes back. Backends (which Store, which BlobStore, which
//! Runtime) are chosen by the server's wiring and handed in as trait objects.

pub mod error;
pub mod ids;
pub mod previews;
pub mod principal;
pub mod principals;
pub mod sandboxes;
pub mod snapshots;

pub use error::DomainError;
pub use previews::{Preview, PreviewService};
pub use principal::{storage_name, Principal};
pub use principals::{PrincipalService, PrincipalView};
pub use sandboxes::{CreateSandbox, Sandbox, SandboxService, SandboxSettings};
pub use snapshots::{SnapshotService, SnapshotSettings};
