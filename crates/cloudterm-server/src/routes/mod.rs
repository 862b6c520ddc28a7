//! Route handlers, one module per area. Each handler extracts, converts to domain input,
//! calls a service, and converts the result to a DTO or an `ApiError`: nothing else.

pub mod console;
pub mod health;
pub mod identity;
pub mod marketplace;
pub mod previews;
pub mod sandboxes;
pub mod snapshots;
pub mod terminal;
pub mod workspaces;
