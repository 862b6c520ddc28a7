//! `X-Quota-Warning`: a response part that says `<kind> <used>/<limit>` once a request brought
//! its caller to 80% of a quota, so agents can slow down before they meet a 429.

use std::convert::Infallible;

use axum::http::HeaderValue;
use axum::response::{IntoResponseParts, ResponseParts};
use cloudterm_domain::quotas::QuotaStatus;

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
