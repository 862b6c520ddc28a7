//! The worker marketplace: named, versioned, reusable units (a command plus optional files)
//! that any principal can publish and run in a workspace they may write.

mod model;
mod service;
pub(crate) mod validate;

pub use model::{FoundWorker, PublishWorker, PublishedWorker, Worker, WorkerFile, WorkerVersion};
pub use service::{MarketplaceService, MarketplaceSettings};
