//! The time services record, at the store's precision.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// Now, truncated to whole milliseconds: the store keeps times as milliseconds, so a time taken
/// from here is the same in the answer to a create as in every later read of the record
/// (`Utc::now()` would show nanoseconds once and milliseconds ever after).
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    now.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_has_no_sub_millisecond_part() {
        let at = now();
        assert_eq!(at.timestamp_subsec_nanos() % 1_000_000, 0);
        assert_eq!(DateTime::from_timestamp_millis(at.timestamp_millis()), Some(at));
    }
}
