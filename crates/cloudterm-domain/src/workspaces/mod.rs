//! Workspaces: a principal's home workspace and named ones, sharing with collaborators (with
//! its audit trail), exec delegated to the workspace's sandbox, and running marketplace workers
//! in a workspace.

mod model;
mod service;
mod validate;

pub use model::{CreateWorkspace, RunWorker, WorkerRun, Workspace};
pub use service::WorkspaceService;
