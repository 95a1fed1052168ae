//! Per-flow inference: from probe timings, guess the keep-alive settings and name them.

use std::time::Duration;

use serde::Serialize;

/// What the probe timings say about the prober's keep-alive configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inference {
    /// Idle time before a probe (TCP_KEEPIDLE / tcp_keepalive_time), seconds.
    pub idle: Option<f64>,
    /// Gap between unanswered probes (TCP_KEEPINTVL / tcp_keepalive_intvl), seconds.
    pub interval: Option<f64>,
    /// Unanswered probes before the prober gave up (TCP_KEEPCNT), when it did.
    pub count: Option<u32>,
    /// A sentence naming the likely configuration.
    pub name: String,
}

struct Known {
    idle: f64,
    interval: f64,
    count: Option<u32>,
    name: &'static str,
}

const KNOWN: &[Known] = &[
    Known {
        idle: 7200.0,
        interval: 75.0,
        count: Some(9),
        name: "Linux defaults (net.ipv4.tcp_keepalive_*)",
    },
    Known {
        idle: 7200.0,
        interval: 75.0,
        count: Some(8),
        name: "macOS/BSD defaults",
    },
    Known {
        idle: 7200.0,
        interval: 1.0,
        count: Some(10),
        name: "Windows defaults",
    },
    Known {
        idle: 15.0,
        interval: 15.0,
        count: Some(9),
        name: "Go net.Dialer/net.ListenConfig default (15s)",
    },
    Known {
        idle: 300.0,
        interval: 100.0,
        count: Some(3),
        name: "Redis tcp-keepalive 300 default",
    },
];

fn close(observed: f64, configured: f64) -> bool {
    // Timers fire on jiffies and probes queue behind other work: allow 2% + 100ms late,
    // 50ms early.
    observed >= configured - 0.05 && observed <= configured * 1.02 + 0.1
}

fn fmt_secs(s: f64) -> String {
    if s >= 0.95 {
        format!("{}s", s.round())
    } else {
        format!("{s:.3}s")
    }
}

/// Median of a non-empty slice (sorted copy).
#[must_use]
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Name the configuration behind observed timings.
///
/// `idle_first`: idle time before the first probe (when the last activity was seen);
/// `answered_gaps`: time from a probe's answer to the next probe (equals the idle time
/// when idle >= interval, as Linux restarts the idle clock on every received packet);
/// `unanswered_gaps`: time from an unanswered probe to the next probe (the interval);
/// `gave_up_after`: unanswered probes before the prober reset the connection.
#[must_use]
pub fn infer(
    idle_first: Option<Duration>,
    answered_gaps: &[f64],
    unanswered_gaps: &[f64],
    gave_up_after: Option<u32>,
) -> Inference {
    let idle = idle_first
        .map(|d| d.as_secs_f64())
        .or_else(|| median(answered_gaps));
    let interval = median(unanswered_gaps);
    let count = gave_up_after;
    let mut parts = Vec::new();
    if let Some(i) = idle {
        parts.push(format!("idle {}", fmt_secs(i)));
    }
    if let Some(i) = interval {
        parts.push(format!("interval {}", fmt_secs(i)));
    }
    if let Some(c) = count {
        parts.push(format!("{c} probes"));
    }
    if parts.is_empty() {
        return Inference {
            idle,
            interval,
            count,
            name: "not enough probes seen to infer settings".into(),
        };
    }
    let matches: Vec<&Known> = KNOWN
        .iter()
        .filter(|k| idle.is_none_or(|i| close(i, k.idle)))
        .filter(|k| interval.is_none_or(|i| close(i, k.interval)))
        .filter(|k| count.is_none_or(|c| k.count.is_none_or(|kc| kc == c)))
        .collect();
    let what = if idle.is_none() && interval.is_some() && matches.len() > 1 {
        "custom or unknown".to_string()
    } else if matches.is_empty() {
        "custom (set per socket or by sysctl)".to_string()
    } else {
        let mut names: Vec<&str> = matches.iter().map(|k| k.name).collect();
        names.dedup();
        names.join(" or ")
    };
    Inference {
        idle,
        interval,
        count,
        name: format!("{}: {what}", parts.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_defaults_are_named() {
        let i = infer(
            Some(Duration::from_millis(7_200_004)),
            &[],
            &[75.004, 75.0, 75.01],
            Some(9),
        );
        assert_eq!(
            i.name,
            "idle 7200s, interval 75s, 9 probes: Linux defaults (net.ipv4.tcp_keepalive_*)"
        );
        let i = infer(Some(Duration::from_secs(7200)), &[], &[75.0], None);
        assert!(i.name.contains("Linux defaults"), "{}", i.name);
        assert!(i.name.contains("macOS"), "{}", i.name);
    }

    #[test]
    fn custom_settings_are_called_custom() {
        let i = infer(
            Some(Duration::from_millis(1004)),
            &[1.004],
            &[1.0, 1.0],
            Some(3),
        );
        assert_eq!(i.idle, Some(1.004));
        assert_eq!(
            i.name,
            "idle 1s, interval 1s, 3 probes: custom (set per socket or by sysctl)"
        );
        let none = infer(None, &[], &[], None);
        assert!(none.name.starts_with("not enough"));
    }

    #[test]
    fn windows_defaults_from_unanswered_gaps() {
        let i = infer(Some(Duration::from_secs(7200)), &[], &[1.0, 1.0], Some(10));
        assert!(i.name.ends_with("Windows defaults"), "{}", i.name);
    }
}
