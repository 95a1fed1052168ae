//! `--max-wait` long enough for the idle limits people actually hit.
//!
//! A probe that ends with the connections still open has only shown that the idle limit is
//! longer than `--max-wait`. The cloud limits most often behind an "idle connection reset"
//! are longer than the default 150 s (AWS NLB and NAT gateway 350 s, Azure Load Balancer
//! 240 s, GCP 600 s), so such a report must say which of them it did not rule out, and
//! `--max-wait` takes a middlebox preset's name to wait past that limit. The durations come
//! from the middlebox presets ([`crate::middlebox::PRESETS`]), the one table of them.

use std::time::Duration;

use serde::Serialize;

use crate::middlebox::{Preset, PRESETS};
use crate::Error;

/// `--max-wait cloud`: past the longest preset.
pub const LONGEST: &str = "cloud";

/// How long to wait to see a limit of `idle` act: the limit, a tenth more (clocks and
/// timer wheels are coarse), and 30 s for the ladder's rung after it and its answer.
pub fn wait_past(idle: Duration) -> Duration {
    idle + idle / 10 + Duration::from_secs(30)
}

/// Parse a `--max-wait` value: a duration (`90s`, `10m`, a bare number of seconds), a
/// middlebox preset's name (`aws-nlb`: wait past its limit) or `cloud` (past the longest).
/// The range (1s..=24h) is checked with the other options (`ProbeOptions::validate`).
pub fn parse_max_wait(s: &str) -> Result<Duration, Error> {
    let t = s.trim();
    let by_name = |p: &Preset| p.name.eq_ignore_ascii_case(t);
    let d = if t.eq_ignore_ascii_case(LONGEST) {
        PRESETS
            .iter()
            .map(|p| wait_past(p.idle))
            .max()
            .unwrap_or(Duration::from_secs(150))
    } else if let Some(p) = PRESETS.iter().find(|p| by_name(p)) {
        wait_past(p.idle)
    } else {
        kaprobe_sock::fmt::parse_duration(t).map_err(|_| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            Error::InvalidOption(format!(
                "--max-wait '{}' is neither a duration (90s, 10m, 1h) nor a middlebox preset: use one of {}, or {LONGEST} (past the longest)",
                s.escape_debug(),
                names.join(", ")
            ))
        })?
    };
    Ok(d)
}

/// A known idle limit that a probe did not rule out.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NotRuledOut {
    /// The preset's name (`aws-nlb`): also the `--max-wait` value that waits past it.
    pub name: &'static str,
    /// Its idle limit, seconds.
    pub idle_s: f64,
    /// What it is.
    pub what: &'static str,
}

/// The known idle limits longer than `open_after_s`, the longest idle a connection was
/// seen to survive: a probe that ended there cannot tell whether they apply.
pub fn not_ruled_out(open_after_s: f64) -> Vec<NotRuledOut> {
    let mut v: Vec<NotRuledOut> = PRESETS
        .iter()
        .filter(|p| p.idle.as_secs_f64() > open_after_s)
        .map(|p| NotRuledOut {
            name: p.name,
            idle_s: p.idle.as_secs_f64(),
            what: p.what,
        })
        .collect();
    v.sort_by(|a, b| a.idle_s.total_cmp(&b.idle_s));
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn presets_wait_past_their_limit_and_durations_still_parse() {
        let nlb = parse_max_wait("aws-nlb").unwrap();
        assert!(nlb > Duration::from_secs(350), "{nlb:?}");
        assert_eq!(
            nlb,
            wait_past(crate::middlebox::preset("aws-nlb").unwrap().idle)
        );
        let cloud = parse_max_wait("cloud").unwrap();
        assert!(PRESETS.iter().all(|p| cloud > p.idle), "{cloud:?}");
        assert_eq!(parse_max_wait("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_max_wait("AWS-NLB").unwrap(), nlb);
        let e = parse_max_wait("aws-nbl").unwrap_err().to_string();
        assert!(
            e.contains("--max-wait") && e.contains("aws-nlb") && e.contains("cloud"),
            "{e}"
        );
        assert!(super::super::check_max_wait(parse_max_wait("cloud").unwrap()).is_ok());
    }

    #[test]
    fn the_default_max_wait_leaves_the_common_cloud_limits_open() {
        let names: Vec<&str> = not_ruled_out(150.0).iter().map(|n| n.name).collect();
        for n in ["azure-lb", "aws-nlb", "aws-nat-gateway", "gcp-lb"] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        assert!(!names.contains(&"aws-alb"), "60s is ruled out by 150s open");
        assert!(not_ruled_out(700.0).is_empty());
        let v = not_ruled_out(0.0);
        assert!(
            v.windows(2).all(|w| w[0].idle_s <= w[1].idle_s),
            "shortest first"
        );
    }
}
