//! Quota policy: the limits that apply to a principal (operator defaults, with per-principal
//! overrides), how close a request brought someone to one of them, and the rolling-hour exec
//! window each running sandbox keeps. The storage limit applies to each workspace of the
//! principal that owns it (whoever writes there).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The rolling window the exec rate is counted over.
pub const EXEC_WINDOW: Duration = Duration::from_secs(3600);

/// The limits that apply to one principal. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Running sandboxes at once.
    pub max_sandboxes: u64,
    /// Commands per sandbox over the last hour.
    pub exec_per_hour: Option<u64>,
    /// MiB per workspace the principal owns.
    pub storage_mb: Option<u64>,
    /// Bytes each sandbox may send out of the host, MiB (where the runtime gives sandboxes a
    /// network: see `Runtime::has_network`).
    pub egress_mb: Option<u64>,
}

impl QuotaLimits {
    /// The storage limit per workspace in bytes.
    pub fn storage_bytes(&self) -> Option<u64> {
        self.storage_mb.map(|mb| mb.saturating_mul(1 << 20))
    }

    /// [`egress_mb`](Self::egress_mb) in bytes.
    pub fn egress_bytes(&self) -> Option<u64> {
        self.egress_mb.map(|mb| mb.saturating_mul(1 << 20))
    }
}

impl Default for QuotaLimits {
    fn default() -> Self {
        QuotaLimits { max_sandboxes: 10, exec_per_hour: None, storage_mb: None, egress_mb: None }
    }
}

/// What one principal's limits differ in from the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaOverride {
    /// Running sandboxes at once.
    pub max_sandboxes: Option<u64>,
    /// Commands per sandbox over the last hour; `Some(0)` lifts the limit.
    pub exec_per_hour: Option<u64>,
    /// MiB per workspace; `Some(0)` lifts the limit.
    pub storage_mb: Option<u64>,
    /// Egress per sandbox, MiB; `Some(0)` lifts the limit.
    pub egress_mb: Option<u64>,
}

/// The operator's quota settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaPolicy {
    /// What applies to everyone.
    pub defaults: QuotaLimits,
    /// Per principal id.
    pub overrides: HashMap<String, QuotaOverride>,
}

impl QuotaPolicy {
    /// The limits that apply to `principal`.
    pub fn limits_for(&self, principal: &str) -> QuotaLimits {
        let mut limits = self.defaults;
        if let Some(changes) = self.overrides.get(principal) {
            if let Some(max) = changes.max_sandboxes {
                limits.max_sandboxes = max;
            }
            if let Some(rate) = changes.exec_per_hour {
                limits.exec_per_hour = (rate > 0).then_some(rate);
            }
            if let Some(mb) = changes.storage_mb {
                limits.storage_mb = (mb > 0).then_some(mb);
            }
            if let Some(mb) = changes.egress_mb {
                limits.egress_mb = (mb > 0).then_some(mb);
            }
        }
        limits
    }
}

/// How much of a limit is in use after a request: what `X-Quota-Warning` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaStatus {
    /// `sandboxes`, `exec_rate`, `storage`…
    pub kind: &'static str,
    /// In use now.
    pub used: u64,
    /// The limit.
    pub limit: u64,
}

impl QuotaStatus {
    /// At or past 80% of the limit: time to warn.
    pub fn near_limit(&self) -> bool {
        self.limit > 0 && self.used.saturating_mul(5) >= self.limit.saturating_mul(4)
    }
}

/// The times of a sandbox's recent execs, oldest first, never more than the limit.
#[derive(Debug, Default)]
pub struct ExecWindow {
    times: Mutex<VecDeque<Instant>>,
}

impl ExecWindow {
    /// Admits one exec at `now` under `limit` per [`EXEC_WINDOW`]: the count including it, or
    /// how long until the oldest exec leaves the window.
    pub fn admit(&self, limit: u64, now: Instant) -> Result<u64, Duration> {
        let mut times = self.times.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while times.front().is_some_and(|oldest| now.duration_since(*oldest) >= EXEC_WINDOW) {
            times.pop_front();
        }
        if times.len() as u64 >= limit {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(EXEC_WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        times.push_back(now);
        Ok(times.len() as u64)
    }

    /// Execs in the window ending at `now`.
    pub fn used(&self, now: Instant) -> u64 {
        let times = self.times.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        times.iter().filter(|at| now.duration_since(**at) < EXEC_WINDOW).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_change_only_what_they_name() {
        let mut policy = QuotaPolicy {
            defaults: QuotaLimits {
                max_sandboxes: 3,
                exec_per_hour: Some(100),
                storage_mb: Some(64),
                egress_mb: Some(50),
            },
            ..QuotaPolicy::default()
        };
        let ci_bot =
            QuotaOverride { max_sandboxes: Some(20), exec_per_hour: Some(0), storage_mb: Some(0), egress_mb: Some(0) };
        policy.overrides.insert("ci-bot".into(), ci_bot);
        let slow =
            QuotaOverride { max_sandboxes: None, exec_per_hour: Some(5), storage_mb: Some(512), egress_mb: Some(2) };
        policy.overrides.insert("slow".into(), slow);
        let alice =
            QuotaLimits { max_sandboxes: 3, exec_per_hour: Some(100), storage_mb: Some(64), egress_mb: Some(50) };
        assert_eq!(policy.limits_for("alice"), alice);
        assert_eq!(alice.storage_bytes(), Some(64 << 20));
        let ci_bot = QuotaLimits { max_sandboxes: 20, exec_per_hour: None, storage_mb: None, egress_mb: None };
        assert_eq!(policy.limits_for("ci-bot"), ci_bot);
        let slow = QuotaLimits { max_sandboxes: 3, exec_per_hour: Some(5), storage_mb: Some(512), egress_mb: Some(2) };
        assert_eq!(policy.limits_for("slow"), slow);
        assert_eq!(slow.egress_bytes(), Some(2 << 20));
    }

    #[test]
    fn the_window_refuses_past_the_limit_until_the_oldest_ages_out() {
        let window = ExecWindow::default();
        let start = Instant::now();
        assert_eq!(window.admit(2, start), Ok(1));
        assert_eq!(window.admit(2, start + Duration::from_secs(10)), Ok(2));
        let refused = window.admit(2, start + Duration::from_secs(20));
        assert_eq!(refused, Err(EXEC_WINDOW - Duration::from_secs(20)));
        assert_eq!(window.used(start + Duration::from_secs(20)), 2);
        assert_eq!(window.admit(2, start + EXEC_WINDOW), Ok(2), "the first exec left the window");
    }

    #[test]
    fn warnings_start_at_eighty_percent() {
        let status = |used, limit| QuotaStatus { kind: "x", used, limit };
        assert!(!status(7, 10).near_limit());
        assert!(status(8, 10).near_limit());
        assert!(status(1, 1).near_limit());
        assert!(!status(0, 0).near_limit());
    }
}
