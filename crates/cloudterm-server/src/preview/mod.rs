//! The preview router's HTTP side: who may reach a preview (`access`), signed links
//! (`link`), subdomain-style addresses (`host`), the reverse proxy over the connection the
//! agent opens inside the sandbox (`proxy`), its connection pool (`pool`) and the pure
//! path/header rewriting (`rewrite`).
//!
//! **Invariant:** a preview's traffic reaches its sandbox only through a connection the
//! sandbox's agent opens inside the sandbox (`GET /v1/connect`: the connected socket handed
//! over, or bytes piped through the agent): no host port is opened, the sandbox's network
//! stays private, and neither the caller's bearer token nor the link cookie is forwarded to it.

pub mod access;
pub mod host;
pub mod link;
pub mod pool;
pub mod proxy;
pub mod rewrite;

use cloudterm_domain::DomainError;

pub use link::{LinkClaims, LinkError, LinkSigner};

/// Marks a response that came from a preview's target, so the JSON-envelope middleware
/// passes its 4xx/5xx answers through untouched.
#[derive(Debug, Clone, Copy)]
pub struct Proxied;

/// The preview router's long-lived parts.
pub struct PreviewRouter {
    /// Signs and checks preview links.
    pub links: LinkSigner,
    /// Idle connections to targets (shared with the answers that lease them).
    pub pool: std::sync::Arc<pool::Pool>,
}

/// Why the preview router refuses or fails a request; `error.rs` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The `{port}` path segment is not 1–65535.
    #[error("{0}")]
    BadPort(String),
    /// A host under `preview.domain` that names no preview (`{port}-{sandbox_id}.{domain}`).
    #[error("{0}")]
    BadHost(String),
    /// A private preview and no credentials.
    #[error("this preview is private: send the owner's bearer token or open a signed preview link")]
    NoCredentials,
    /// A signed link (or its cookie) that is ours but expired.
    #[error("the preview link expired; ask the owner for a new one")]
    LinkExpired,
    /// A link that is not ours, names another preview, or was revoked.
    #[error("{0}")]
    LinkRefused(String),
    /// No such preview, or another principal's.
    #[error("preview {0} not found")]
    NotFound(String),
    /// Neither the target nor its fallback accepted a connection, or the target broke the
    /// exchange.
    #[error("{0}")]
    Unreachable(String),
    /// A service failed.
    #[error(transparent)]
    Domain(#[from] DomainError),
}
