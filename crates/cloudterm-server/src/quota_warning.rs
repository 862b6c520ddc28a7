//! `X-Quota-Warning`: a response part that says `<kind> <used>/<limit>` once a request brought
//! its caller to 80% of a quota, so agents can slow down before they meet a 429. A response can
//! carry several (one header line per quota), e.g. `exec_rate` and `egress` on an exec.

use std::convert::Infallible;

use axum::http::HeaderValue;
use axum::response::{IntoResponseParts, ResponseParts};
use cloudterm_domain::quotas::QuotaStatus;
use cloudterm_domain::sandboxes::{EgressUsage, EGRESS};

use crate::error::QuotaViolation;

/// The header's name.
pub const HEADER: &str = "x-quota-warning";

/// Adds `X-Quota-Warning` when the status is near its limit; nothing otherwise.
#[derive(Debug, Clone, Copy)]
pub struct QuotaWarning(pub Option<QuotaStatus>);

impl IntoResponseParts for QuotaWarning {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if let Some(status) = self.0.filter(QuotaStatus::near_limit) {
            let text = format!("{} {}/{}", status.kind, status.used, status.limit);
            if let Ok(value) = HeaderValue::from_str(&text) {
                // Appended: a response may warn of several quotas (an exec: its rate and the
                // workspace's storage), one header line each.
                parts.headers_mut().append(HEADER, value);
            }
        }
        Ok(parts)
    }
}

/// A sandbox's egress reading on a response about that sandbox: `X-Quota-Warning: egress
/// <bytes>/<limit bytes>` from 80% of the limit on, and, on the first response that sees the
/// limit reached, the [`QuotaViolation`] the metrics middleware counts (egress is cut in the
/// kernel, not refused with a 429, so this is where it gets counted).
#[derive(Debug, Clone, Copy)]
pub struct EgressWarning(pub Option<EgressUsage>);

impl IntoResponseParts for EgressWarning {
    type Error = Infallible;

    fn into_response_parts(self, parts: ResponseParts) -> Result<ResponseParts, Self::Error> {
        let Some(usage) = self.0 else { return Ok(parts) };
        let mut parts = QuotaWarning(usage.quota_status()).into_response_parts(parts)?;
        if usage.newly_exceeded {
            parts.extensions_mut().insert(QuotaViolation(EGRESS));
        }
        Ok(parts)
    }
}
