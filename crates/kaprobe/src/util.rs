//! Small helpers shared by commands: duration parsing, JSON lines, tables.

use std::time::Duration;

/// Parse a duration the way every kaprobe flag does: humantime (`75s`, `2h`, `1m30s`,
/// `250ms`), or a bare number meaning seconds (`5`, `2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration: use e.g. 75s, 2h, 1m30s or a number of seconds".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("'{s}' is not a valid duration: it must be >= 0"));
        }
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{s}' is too large for a duration"));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("'{s}' is not a valid duration ({e}): use e.g. 75s, 2h, 1m30s, 250ms or a number of seconds")
    })
}

/// Seconds as a float, the unit every JSON duration uses.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A duration the way humantime writes it, without spaces: `2h11m15s`, `1s500ms`.
pub fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// A flag that becomes true on SIGINT or SIGTERM, so a command can stop and summarise.
pub fn stop_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// Print one JSON object as a line on stdout.
pub fn print_json_line(v: &serde_json::Value) {
    println!("{v}");
}

/// A comfy-table preset used by every command, sized to the terminal.
pub fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    t
}

/// Resolve `HOST:PORT` (`127.0.0.1:8080`, `[::1]:8080`, `localhost:80`) to addresses.
/// A missing or bad port is a usage error (exit 2); a name that does not resolve exits 3.
pub fn resolve_host_port(what: &str, s: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    use crate::exit::{Failure, RESOLVE};
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        if a.port() == 0 {
            return Err(Failure::usage(format!(
                "{what} '{s}': port 0 is not a port to connect to: use 1..=65535"
            ))
            .into());
        }
        return Ok(vec![a]);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(Failure::usage(format!(
            "{what} '{s}' has no port: use HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
        ))
        .into());
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(Failure::usage(format!(
                "{what} '{s}': port '{port}' is not a number in 1..=65535"
            ))
            .into())
        }
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Failure::usage(format!("{what} '{s}' has no host: use HOST:PORT")).into());
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let v: Vec<_> = addrs.collect();
            if v.is_empty() {
                Err(Failure::new(RESOLVE, format!("cannot resolve '{host}': no addresses")).into())
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(Failure::new(RESOLVE, format!("cannot resolve '{host}': {e}")).into()),
    }
}

/// Check a numeric flag against its range: `--flag V is out of range: use A..=B` (exit 2).
pub fn in_range<T>(
    flag: &str,
    v: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, crate::exit::Failure>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(crate::exit::Failure::usage(format!(
            "{flag} {v} is out of range: use {}..={}",
            range.start(),
            range.end()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
    }

    #[test]
    fn humantime_forms_parse() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn garbage_and_negative_are_rejected_with_the_value() {
        let e = parse_duration("soon").unwrap_err();
        assert!(e.contains("'soon'"), "{e}");
        let e = parse_duration("-3").unwrap_err();
        assert!(e.contains("'-3'"), "{e}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400").is_err());
    }

    #[test]
    fn in_range_names_flag_value_and_range() {
        assert_eq!(in_range("--n", 5u32, 1..=10).unwrap(), 5);
        let e = in_range("--n", 0u32, 1..=10).unwrap_err();
        assert_eq!(e.code, crate::exit::USAGE);
        assert_eq!(e.message, "--n 0 is out of range: use 1..=10");
    }
}
