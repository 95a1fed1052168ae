//! The Prometheus text of `/probe` and of the exporter's own `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Instant, UNIX_EPOCH};

use super::{Exporter, Scrape};
use crate::client::ObservedClose;

/// Every close style, in the order the one-hot series are written.
const STYLES: [(ObservedClose, &str); 5] = [
    (ObservedClose::Fin, "fin"),
    (ObservedClose::Rst, "rst"),
    (ObservedClose::Silent, "silent"),
    (ObservedClose::OpenAtMaxWait, "open_at_max_wait"),
    (ObservedClose::NoKeepAlive, "no_keep_alive"),
];

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
    );
}

fn opt_gauge(out: &mut String, name: &str, help: &str, value: Option<f64>) {
    if let Some(v) = value.filter(|v| v.is_finite()) {
        gauge(out, name, help, v);
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
    );
}

/// A label value in the text format: backslash, double quote and newline escaped.
pub(crate) fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The answer to one `/probe` scrape.
pub(super) fn probe(s: &Scrape, now: Instant) -> String {
    let mut out = String::with_capacity(2048);
    let success = matches!(&s.finished, Some(f) if f.result.is_ok());
    gauge(
        &mut out,
        "kaprobe_probe_success",
        "Whether the reported probe measured the target (1) or failed (0, also before any probe finished).",
        u8::from(success),
    );
    gauge(
        &mut out,
        "kaprobe_probe_running",
        "Whether a probe of this target is still running (the result below is then an older one).",
        u8::from(s.running),
    );
    counter(
        &mut out,
        "kaprobe_probe_started_total",
        "Probes of this target started by this exporter.",
        s.probes_started,
    );
    let Some(f) = &s.finished else {
        return out;
    };
    gauge(
        &mut out,
        "kaprobe_probe_age_seconds",
        "Seconds since the reported probe finished (0 when this scrape waited for it).",
        now.saturating_duration_since(f.at).as_secs_f64(),
    );
    gauge(
        &mut out,
        "kaprobe_probe_finished_time_seconds",
        "Unix time the reported probe finished.",
        f.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    let r = match &f.result {
        Ok(r) => r,
        Err(e) => {
            let _ = write!(
                out,
                "# HELP kaprobe_probe_error_info Why the reported probe failed.\n# TYPE kaprobe_probe_error_info gauge\nkaprobe_probe_error_info{{error=\"{}\"}} 1\n",
                label(e)
            );
            return out;
        }
    };
    gauge(
        &mut out,
        "kaprobe_probe_duration_seconds",
        "How long the reported probe took.",
        r.elapsed_s,
    );
    gauge(
        &mut out,
        "kaprobe_probe_http_status_code",
        "Status code of the first response.",
        r.status,
    );
    let idle = &r.idle;
    opt_gauge(
        &mut out,
        "kaprobe_probe_idle_timeout_seconds",
        "Measured idle timeout: how long an idle keep-alive connection stays usable (absent when none was found within max_wait).",
        idle.timeout_s,
    );
    opt_gauge(
        &mut out,
        "kaprobe_probe_idle_timeout_uncertainty_seconds",
        "Half-width of the uncertainty around kaprobe_probe_idle_timeout_seconds.",
        idle.timeout_error_s,
    );
    let _ = write!(
        out,
        "# HELP kaprobe_probe_close_style How idle connections were seen to end (1 for the style seen).\n# TYPE kaprobe_probe_close_style gauge\n"
    );
    for (style, name) in STYLES {
        let _ = writeln!(
            out,
            "kaprobe_probe_close_style{{style=\"{name}\"}} {}",
            u8::from(idle.close_style == style)
        );
    }
    opt_gauge(
        &mut out,
        "kaprobe_probe_still_open_after_seconds",
        "Longest idle a never-reused connection survived; set when the connection was still open at max_wait (a longer limit is not ruled out).",
        idle.still_open_after_s,
    );
    opt_gauge(
        &mut out,
        "kaprobe_probe_advertised_timeout_seconds",
        "The Keep-Alive: timeout=N the server advertises (absent when it advertises none).",
        r.advertised.timeout_s,
    );
    if let Some(t) = r.advertised_true.timeout {
        gauge(
            &mut out,
            "kaprobe_probe_advertised_timeout_true",
            "Whether the advertised timeout matches the measured one (1) or not (0).",
            u8::from(t),
        );
    }
    opt_gauge(
        &mut out,
        "kaprobe_probe_safe_idle_seconds",
        "The idle time a client or proxy pool in front should stay under.",
        r.safe_idle_s,
    );
    opt_gauge(
        &mut out,
        "kaprobe_probe_reuse_ok_max_seconds",
        "Longest idle after which reusing a connection still worked.",
        idle.longest_alive_s,
    );
    opt_gauge(
        &mut out,
        "kaprobe_probe_reuse_failed_min_seconds",
        "Shortest idle after which reusing a connection failed although no FIN or RST arrived (a silent drop on the path).",
        idle.first_dead_s,
    );
    gauge(
        &mut out,
        "kaprobe_probe_reuse_failed",
        "Whether a reuse after idle failed without a FIN or RST first (1: something on the path forgets idle connections silently).",
        u8::from(idle.first_dead_s.is_some()),
    );
    opt_gauge(
        &mut out,
        "kaprobe_probe_max_requests",
        "Requests answered on one connection before the server ended it.",
        r.max_requests.observed.map(|n| n as f64),
    );
    out
}

/// The exporter's own metrics.
pub(super) fn own(ex: &Exporter, targets: usize, running: usize) -> String {
    let c = &ex.counters;
    let mut out = String::with_capacity(1024);
    counter(
        &mut out,
        "kaprobe_exporter_scrapes_total",
        "Scrapes of /probe.",
        c.scrapes.load(Ordering::Relaxed),
    );
    let _ = write!(
        out,
        "# HELP kaprobe_exporter_probes_total Probes finished, by result.\n# TYPE kaprobe_exporter_probes_total counter\nkaprobe_exporter_probes_total{{result=\"success\"}} {}\nkaprobe_exporter_probes_total{{result=\"failure\"}} {}\n",
        c.probes_ok.load(Ordering::Relaxed),
        c.probes_failed.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "kaprobe_exporter_stale_answers_total",
        "Scrapes answered with a result older than the scrape, because the probe was still running.",
        c.stale_answers.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "kaprobe_exporter_bad_requests_total",
        "Requests refused (bad method or query).",
        c.bad_requests.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "kaprobe_exporter_probes_running",
        "Probes running now.",
        running,
    );
    gauge(
        &mut out,
        "kaprobe_exporter_targets",
        "Distinct targets (with their settings) remembered.",
        targets,
    );
    gauge(
        &mut out,
        "kaprobe_exporter_start_time_seconds",
        "Unix time the exporter started.",
        ex.started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
