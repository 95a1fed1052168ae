//! Values in request targets' queries.

use std::time::Duration;

/// A duration as humantime (`250ms`, `1m30s`) or a bare number of seconds (`0.5`).
pub fn parse_delay(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Duration::try_from_secs_f64(secs).ok();
        }
        return None;
    }
    humantime::parse_duration(s).ok()
}
