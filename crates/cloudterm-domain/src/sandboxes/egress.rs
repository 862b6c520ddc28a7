//! The egress quota of a sandbox: the owner's limit handed to the runtime when the sandbox
//! starts (the runtime enforces it in the kernel, so nothing here is on the packets' path),
//! and readings of what it has sent for responses, `/me` and the metrics.
//!
//! Policy: past the limit, the sandbox's outbound traffic is refused; the sandbox itself
//! (exec, files, terminals, previews, which reach it through its agent) keeps working. No
//! request is answered 429 for egress: none of the API's requests sends traffic out of a
//! sandbox. The violation is reported once per sandbox, when a reading first sees it.

use cloudterm_runtime::SandboxRuntimeError;

use crate::quotas::QuotaStatus;
use crate::sandboxes::service::SandboxService;

/// The `kind` of the egress quota in `X-Quota-Warning`, `/me` and `quota_violations_total`.
pub const EGRESS: &str = "egress";

/// One reading of a sandbox's egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressUsage {
    /// Bytes sent out so far (including any refused after the limit was reached).
    pub bytes: u64,
    /// The owner's limit in bytes; `None`: unlimited.
    pub limit_bytes: Option<u64>,
    /// At or past the limit: outbound traffic is refused now.
    pub exceeded: bool,
    /// This reading is the first to see it past the limit (count the violation now).
    pub newly_exceeded: bool,
}

impl EgressUsage {
    /// The reading as a quota status, when there is a limit.
    pub fn quota_status(&self) -> Option<QuotaStatus> {
        Some(QuotaStatus { kind: EGRESS, used: self.bytes, limit: self.limit_bytes? })
    }
}

impl SandboxService {
    /// Hands the egress limit of `owner` to the runtime for sandbox `id` (a no-op where the
    /// runtime gives sandboxes no network).
    pub(crate) async fn apply_egress_limit(&self, id: &str, owner: &str) -> Result<(), SandboxRuntimeError> {
        if !self.runtime().has_network() {
            return Ok(());
        }
        self.runtime().limit_egress(id, self.limits_for(owner).egress_bytes()).await
    }

    /// What running sandbox `id` has sent out, against its owner's limit; `None` when it is not
    /// running or the runtime gives it no network. No access check: for callers that did their
    /// own (the sandbox routes) or act for the system (the metrics).
    pub async fn egress_usage(&self, id: &str) -> Option<EgressUsage> {
        if !self.runtime().has_network() {
            return None;
        }
        let live = self.live_sandbox(id)?;
        let bytes = match self.runtime().egress(id).await {
            Ok(bytes) => bytes?,
            Err(err) => {
                tracing::debug!(sandbox = %id, error = %err, "cannot read the sandbox's egress");
                return None;
            }
        };
        let limit_bytes = self.limits_for(&live.owner).egress_bytes();
        let exceeded = limit_bytes.is_some_and(|limit| bytes >= limit);
        let newly_exceeded = exceeded && live.mark_egress_exceeded();
        if newly_exceeded {
            tracing::info!(sandbox = %id, owner = %live.owner, bytes, "sandbox reached its egress limit; its outbound traffic is refused");
        }
        Some(EgressUsage { bytes, limit_bytes, exceeded, newly_exceeded })
    }

    /// For a response's `X-Quota-Warning`: the sandbox's egress when its owner has a limit and
    /// it may be at 80% of it or past it; `None` otherwise. The runtime's cheap upper bound
    /// (a counter read, no process) settles the common case of a sandbox far from its limit;
    /// only near it is the exact count read, so an exec does not pay for a reading each time.
    pub async fn egress_warning(&self, id: &str) -> Option<EgressUsage> {
        let live = self.live_sandbox(id)?;
        let limit = self.limits_for(&live.owner).egress_bytes()?;
        let bound = self.runtime().egress_upper_bound(id).await.ok().flatten()?;
        if !(QuotaStatus { kind: EGRESS, used: bound, limit }).near_limit() {
            return None;
        }
        self.egress_usage(id).await
    }

    /// The egress of `owner`'s running sandbox that sent the most (for `/me`), and how many
    /// of their sandboxes these readings saw past the limit for the first time.
    pub async fn busiest_egress(&self, owner: &str) -> (Option<EgressUsage>, u64) {
        let mut busiest: Option<EgressUsage> = None;
        let mut newly_exceeded = 0;
        for id in self.running_ids_of(owner) {
            if let Some(usage) = self.egress_usage(&id).await {
                newly_exceeded += u64::from(usage.newly_exceeded);
                if busiest.is_none_or(|best| usage.bytes > best.bytes) {
                    busiest = Some(usage);
                }
            }
        }
        (busiest, newly_exceeded)
    }
}
