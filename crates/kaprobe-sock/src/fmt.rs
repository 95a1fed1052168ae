//! The one way kaprobe writes and reads a duration a person types: `250ms`, `2.5s`,
//! `15m24.6s`, `2h11m15s`, `3d4h`. Written compactly, largest unit first, at most
//! millisecond precision, never `2s500ms` or `1month19days`; every written form reads back.

use std::time::Duration;

/// Write `d` as `250ms`, `2.5s`, `15m24.6s`, `2h11m15s` or `3d4h` (rounded to the
/// millisecond; under a millisecond, microseconds: `250us`; zero is `0s`).
#[must_use]
pub fn duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let ms_total = (d.as_nanos() + 500_000) / 1_000_000;
    if ms_total == 0 {
        return format!("{}us", d.as_micros().max(1));
    }
    if ms_total < 1000 {
        return format!("{ms_total}ms");
    }
    let days = ms_total / 86_400_000;
    let hours = ms_total / 3_600_000 % 24;
    let mins = ms_total / 60_000 % 60;
    let ms = ms_total % 60_000;
    let mut out = String::new();
    for (n, unit) in [(days, "d"), (hours, "h"), (mins, "m")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if ms > 0 {
        let (s, frac) = (ms / 1000, ms % 1000);
        if frac == 0 {
            out.push_str(&format!("{s}s"));
        } else {
            let f = format!("{frac:03}");
            out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
        }
    }
    out
}

/// Read a duration: a bare number of seconds (`0.5`), or numbers with units, decimals
/// allowed, in any combination (`250ms`, `2.5s`, `1m30s`, `15m24.6s`, `1h 30m`, `2d`).
/// Units: `ns`, `us`/`µs`, `ms`, `s`/`sec`/`second(s)`, `m`/`min`/`minute(s)`,
/// `h`/`hr`/`hour(s)`, `d`/`day(s)`, `w`/`week(s)`.
///
/// # Errors
/// A sentence naming the text and the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let forms = "use e.g. 250ms, 2.5s, 1m30s, 2h or a number of seconds";
    if t.is_empty() {
        return Err(format!("empty duration: {forms}"));
    }
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("'{s}' is not a valid duration: it must be >= 0"));
        }
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{s}' is too large for a duration"));
    }
    let bad = |why: &str| format!("'{s}' is not a valid duration ({why}): {forms}");
    let b = t.as_bytes();
    let mut i = 0;
    let mut total = 0f64;
    let mut parts = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let num: f64 = t[start..i]
            .parse()
            .map_err(|_| bad("a number is missing or malformed"))?;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let ustart = i;
        while i < b.len() && !b[i].is_ascii_digit() && b[i] != b' ' && b[i] != b'.' {
            i += 1;
        }
        let unit = &t[ustart..i];
        let scale = match unit {
            "ns" | "nsec" => 1e-9,
            "us" | "µs" | "usec" => 1e-6,
            "ms" | "msec" | "millis" => 1e-3,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "week" | "weeks" => 604_800.0,
            "" => return Err(bad("a number without a unit")),
            _ => return Err(bad(&format!("unknown unit '{unit}'"))),
        };
        total += num * scale;
        parts += 1;
    }
    if parts == 0 {
        return Err(format!("empty duration: {forms}"));
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("'{s}' is too large for a duration"))
}

/// The one way kaprobe words an operating-system error, whichever command meets it:
/// the kernel's own phrase in lower case without `(os error N)`, and for the errors people
/// meet most, what it means here (`connection refused (nothing listens there)`).
#[must_use]
pub fn os_error(e: &std::io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        // Not from the kernel: a message some layer wrote (kept as it is).
        return e.to_string();
    };
    let hint = match code {
        libc::ECONNREFUSED => Some("connection refused (nothing listens there)"),
        libc::ECONNRESET => Some("connection reset by the peer (RST)"),
        libc::ETIMEDOUT => Some("timed out (no answer from the peer)"),
        libc::EHOSTUNREACH => Some("host unreachable (no route, or an ICMP error came back)"),
        libc::ENETUNREACH => Some("network unreachable (no route to it)"),
        libc::EADDRINUSE => Some("address already in use (something else listens there)"),
        libc::EADDRNOTAVAIL => Some("address not available (not one of this machine's addresses)"),
        libc::EACCES | libc::EPERM => {
            Some("permission denied (root or CAP_NET_RAW/CAP_NET_ADMIN may be needed)")
        }
        libc::ENOENT => Some("no such file or directory"),
        libc::EISDIR => Some("is a directory, not a file"),
        libc::ENODEV => Some("no such device"),
        libc::EPIPE => Some("broken pipe (the peer closed the connection)"),
        _ => None,
    };
    if let Some(h) = hint {
        return h.to_string();
    }
    let text = std::io::Error::from_raw_os_error(code).to_string();
    let text = text
        .strip_suffix(&format!(" (os error {code})"))
        .unwrap_or(&text)
        .to_string();
    let mut c = text.chars();
    c.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(c).collect::<String>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn written_compactly_largest_unit_first() {
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(ms(250)), "250ms");
        assert_eq!(duration(ms(2500)), "2.5s");
        assert_eq!(duration(ms(75_000)), "1m15s");
        assert_eq!(duration(ms(924_600)), "15m24.6s");
        assert_eq!(duration(Duration::from_secs(7875)), "2h11m15s");
        assert_eq!(duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(duration(Duration::from_secs(4_255_200)), "49d6h");
        assert_eq!(duration(Duration::from_micros(250)), "250us");
        assert_eq!(duration(ms(3_600_000)), "1h");
        assert_eq!(duration(ms(1_001)), "1.001s");
    }

    #[test]
    fn every_written_form_reads_back_to_the_millisecond() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Spread over 0ms .. 100 days, many small ones.
            let n = match i % 4 {
                0 => x % 1000,
                1 => x % 120_000,
                2 => x % 86_400_000,
                _ => x % 8_640_000_000,
            };
            let d = ms(n);
            let text = duration(d);
            let back = parse_duration(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let diff = back.abs_diff(d);
            assert!(
                diff < Duration::from_micros(1),
                "{d:?} -> {text} -> {back:?}"
            );
        }
    }

    #[test]
    fn reads_numbers_units_and_decimals() {
        assert_eq!(parse_duration("75").unwrap(), Duration::from_secs(75));
        assert_eq!(parse_duration("0.5").unwrap(), ms(500));
        assert_eq!(parse_duration("1m30s").unwrap(), ms(90_000));
        assert_eq!(parse_duration("1h 30m").unwrap(), ms(5_400_000));
        assert_eq!(parse_duration("2.5s").unwrap(), ms(2500));
        assert_eq!(parse_duration("250ms").unwrap(), ms(250));
        assert_eq!(
            parse_duration("2 days").unwrap(),
            Duration::from_secs(172_800)
        );
        for bad in ["", "x", "5 parsecs", "1.2.3s", "-1", "s", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn os_errors_read_the_same_everywhere() {
        use std::io::Error;
        let refused = Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(
            os_error(&refused),
            "connection refused (nothing listens there)"
        );
        // Errors without a hint: the kernel's phrase, lower case, no "(os error N)".
        let e = os_error(&Error::from_raw_os_error(libc::EROFS));
        assert_eq!(e, "read-only file system");
        for code in 1..134 {
            let t = os_error(&Error::from_raw_os_error(code));
            assert!(!t.contains("os error"), "{code}: {t}");
            assert!(!t.starts_with(char::is_uppercase), "{code}: {t}");
        }
        // Not from the kernel: kept.
        let custom = Error::other("short send");
        assert_eq!(os_error(&custom), "short send");
    }
}
