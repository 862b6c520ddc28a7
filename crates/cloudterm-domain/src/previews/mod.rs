//! Previews: ports inside sandboxes that the preview router serves, who may reach them, and
//! whether they answer (health checks and fallback promotion).
//!
//! The registry lives in the Store (`previews` table); health and promotion live in memory and
//! are rebuilt by the first health pass after a start. HTTP (proxying, links, cookies) is the
//! server's business: this module hands it a byte stream to the port, opened through the
//! sandbox's agent, so no host port is ever opened.

mod model;
mod service;

pub use model::{validate_port, Preview, PreviewHealth, PreviewObserver, PreviewSettings, RegisterPreview};
pub use service::PreviewService;
