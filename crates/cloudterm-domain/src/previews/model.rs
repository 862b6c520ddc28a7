//! What a preview is, as the services see it, and what the preview service reports.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::DomainError;

/// What a client asks to register.
#[derive(Debug, Clone)]
pub struct RegisterPreview {
    /// The sandbox serving the port.
    pub sandbox_id: String,
    /// The port, as sent (checked to be 1–65535).
    pub port: u32,
    /// Another of the caller's sandboxes serving the same port.
    pub fallback_sandbox_id: Option<String>,
    /// Reachable without credentials.
    pub public: bool,
}

/// Health of a preview's targets, from the last check (in memory only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviewHealth {
    /// The primary accepted a TCP connection at the last check (`None`: not checked yet).
    pub healthy: Option<bool>,
    /// The fallback accepted one (only with a fallback).
    pub fallback_healthy: Option<bool>,
    /// Requests go to the fallback.
    pub promoted: bool,
    /// When the last check ran.
    pub checked_at: Option<DateTime<Utc>>,
}

/// A registered preview with its current health.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The sandbox serving the port.
    pub sandbox_id: String,
    /// The port inside the sandbox.
    pub port: u16,
    /// The principal that registered it.
    pub owner: String,
    /// Reachable without credentials.
    pub public: bool,
    /// Where to go when the primary fails.
    pub fallback_sandbox_id: Option<String>,
    /// Registration time; also the preview's generation (see [`Preview::generation`]).
    pub created_at: DateTime<Utc>,
    /// Health and promotion.
    pub health: PreviewHealth,
}

impl Preview {
    /// The sandbox requests go to now: the fallback once promoted, else the primary.
    pub fn active_sandbox_id(&self) -> &str {
        match (&self.fallback_sandbox_id, self.health.promoted) {
            (Some(fallback), true) => fallback,
            _ => &self.sandbox_id,
        }
    }

    /// Identifies this registration among all registrations of the same sandbox and port:
    /// signed links carry it, so unregistering (and registering again) revokes every link
    /// handed out before.
    pub fn generation(&self) -> i64 {
        self.created_at.timestamp_millis()
    }
}

/// Told about promotions, so the server can count them (a metric) without the domain knowing
/// about Prometheus.
pub trait PreviewObserver: Send + Sync {
    /// Requests for `sandbox_id:port` now go to `fallback`.
    fn promoted(&self, sandbox_id: &str, port: u16, fallback: &str);
    /// The primary answers again and gets its requests back.
    fn restored(&self, sandbox_id: &str, port: u16);
}

/// Tunables of the preview service.
#[derive(Debug, Clone)]
pub struct PreviewSettings {
    /// How long opening a connection to a port (through the agent) may take.
    pub connect_timeout: Duration,
}

impl Default for PreviewSettings {
    fn default() -> Self {
        PreviewSettings { connect_timeout: Duration::from_secs(5) }
    }
}

/// A port as a client sent it: 1–65535.
pub fn validate_port(port: u32) -> Result<u16, DomainError> {
    match u16::try_from(port) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(DomainError::InvalidInput(format!("port must be between 1 and 65535, got {port}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked() {
        assert_eq!(validate_port(8080).ok(), Some(8080));
        assert_eq!(validate_port(65535).ok(), Some(65535));
        for bad in [0, 65536, 70000, u32::MAX] {
            assert!(matches!(validate_port(bad), Err(DomainError::InvalidInput(_))), "{bad}");
        }
    }

    #[test]
    fn promotion_routes_to_the_fallback_only_when_there_is_one() {
        let mut preview = Preview {
            sandbox_id: "sbx_a".into(),
            port: 80,
            owner: "alice".into(),
            public: false,
            fallback_sandbox_id: None,
            created_at: Utc::now(),
            health: PreviewHealth { promoted: true, ..PreviewHealth::default() },
        };
        assert_eq!(preview.active_sandbox_id(), "sbx_a");
        preview.fallback_sandbox_id = Some("sbx_b".into());
        assert_eq!(preview.active_sandbox_id(), "sbx_b");
        preview.health.promoted = false;
        assert_eq!(preview.active_sandbox_id(), "sbx_a");
    }
}
