//! The judging half of the HTTP/2 probe: GOAWAY details from a typical idle connection,
//! findings, the verdict, the safe idle time and a safe gRPC keepalive_time, as pure
//! functions (unit-tested without a server).

use super::measure::RungEnd;
use super::{GoawayPhases, H2Close, H2Report, Http2Info, PingOutcome, PolicyResult, MAX_STREAM_ID};

/// Copy what the GOAWAY(s) of a typical idle connection said into the report.
pub(super) fn fill_goaway(h: &mut Http2Info, end: Option<&RungEnd>) {
    let Some(end) = end else { return };
    let Some(last) = end.goaways.last() else {
        return;
    };
    h.goaway_seen = true;
    h.goaway_error = Some(last.error.clone());
    h.goaway_last_stream_id = Some(last.last_stream_id);
    h.goaway_debug = Some(last.debug.clone()).filter(|d| !d.is_empty());
    h.goaway_phases = Some(phases(end));
    h.goaway_to_close_s = end.end_at_s.map(|e| (e - last.at_s).max(0.0));
    h.goaways = end.goaways.clone();
}

/// Two-phase: a first GOAWAY announcing 2^31-1 (RFC 9113 section 6.8: "the last stream
/// identifier set to 2^31-1 and a NO_ERROR code"), then another.
pub(super) fn phases(end: &RungEnd) -> GoawayPhases {
    match end.goaways.as_slice() {
        [first, _, ..] if first.last_stream_id == MAX_STREAM_ID => GoawayPhases::TwoPhase,
        _ => GoawayPhases::Single,
    }
}

/// A client keepalive_time clear of a server that accepts PINGs `accepted_s` apart: above
/// it by a tenth or a second, whichever is more (A8 lets servers time PINGs to the second),
/// plus two round trips (two PINGs sent `t` apart may arrive closer), rounded up to a whole
/// second, and never under 10 s (A8: clients use 10 s when set lower).
pub fn safe_keepalive_time(accepted_s: f64, rtt_s: f64) -> f64 {
    let t = accepted_s + (accepted_s * 0.1).max(1.0) + 2.0 * rtt_s;
    t.ceil().max(10.0)
}

fn fmt_s(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.1}s")
    } else if s >= 1.0 {
        format!("{s:.2}s")
    } else {
        format!("{:.0}ms", s * 1000.0)
    }
}

/// Findings and the verdict.
pub(super) fn judge(r: &mut H2Report, rtt: f64) {
    let idle = &r.idle;
    let h = &r.http2;
    let safe = |t: f64| (((t * 0.9 - 2.0 * rtt) * 10.0).round() / 10.0).max(0.0);
    let goaway = match (&h.goaway_error, h.goaway_last_stream_id) {
        (Some(e), Some(id)) => {
            let debug = h
                .goaway_debug
                .as_deref()
                .map_or(String::new(), |d| format!(" \"{d}\""));
            let two = if h.goaway_phases == Some(GoawayPhases::TwoPhase) {
                " in two phases (first with last stream id 2^31-1)"
            } else {
                ""
            };
            format!("GOAWAY {e}{debug} (last stream id {id}){two}")
        }
        _ => "GOAWAY".into(),
    };
    r.verdict = match (idle.close_style, idle.timeout_s) {
        (
            s @ (H2Close::GoawayThenFin | H2Close::GoawayThenRst | H2Close::GoawayOnly),
            Some(t),
        ) => {
            let s_idle = safe(t);
            r.safe_idle_s = Some(s_idle);
            let then = match s {
                H2Close::GoawayThenFin => ", then FIN",
                H2Close::GoawayThenRst => ", then RST",
                _ => ", and leaves the connection open",
            };
            format!(
                "ends idle HTTP/2 connections after {t:.2}s with {goaway}{then}; a client or pool must stop opening streams on an idle connection before about {s_idle:.1}s"
            )
        }
        (s @ (H2Close::Fin | H2Close::Rst), Some(t)) => {
            let s_idle = safe(t);
            r.safe_idle_s = Some(s_idle);
            r.findings.push(format!(
                "idle connections end with a bare {} and no GOAWAY: a client cannot tell a stream it opens just then from one the server refused (RFC 9113 section 9.1: the side that closes SHOULD send a GOAWAY first)",
                if s == H2Close::Fin { "FIN" } else { "RST" }
            ));
            format!(
                "closes idle HTTP/2 connections after {t:.2}s with {}; a client or pool must drop idle connections before about {s_idle:.1}s",
                s.describe()
            )
        }
        (H2Close::Silent, Some(t)) => {
            let s_idle = safe(idle.longest_alive_s.unwrap_or(t));
            r.safe_idle_s = Some(s_idle);
            format!(
                "idle HTTP/2 connections die silently after about {t:.2}s (no GOAWAY, FIN or RST; a new stream gets {}): something on the path forgets idle flows: drop idle connections before about {s_idle:.1}s, or send PINGs more often if they count as activity",
                idle.on_reuse.as_deref().unwrap_or("no answer").replace('_', " ")
            )
        }
        _ if idle.connections_failed >= idle.connections => format!(
            "none of the {} idle connections could be set up (a connection or its first request failed), so no idle timeout was measured",
            idle.connections
        ),
        _ => match idle.still_open_after_s.or(idle.longest_alive_s) {
            Some(a) => format!(
                "kept idle HTTP/2 connections open for the whole --max-wait (still open after {a:.2}s of idle); raise --max-wait to find the real timeout"
            ),
            None => "kept idle HTTP/2 connections open for the whole --max-wait; raise --max-wait to find the real timeout".into(),
        },
    };
    if let (Some(lo), Some(hi), Some(t)) = (idle.close_min_s, idle.close_max_s, idle.timeout_s) {
        if hi - lo > 0.1 * t && hi - lo > 0.05 {
            r.findings.push(format!(
                "idle connections end anywhere from {lo:.2}s to {hi:.2}s of idle: a coarse idle timer (or a limit on connection age, not idle time); plan for the earliest"
            ));
        }
    }
    if h.goaway_seen && h.goaway_error.as_deref() != Some("NO_ERROR") {
        r.findings.push(format!(
            "the idle GOAWAY carries {} rather than NO_ERROR",
            h.goaway_error.as_deref().unwrap_or("?")
        ));
    }
    match h.ping.outcome {
        PingOutcome::KeptAlive => r.findings.push(format!(
            "a PING every {} kept an idle connection open for {} (past the idle timeout): PINGs count as activity here",
            fmt_s(h.ping.every_s.unwrap_or(0.0)),
            fmt_s(h.ping.lasted_s.unwrap_or(0.0))
        )),
        PingOutcome::ClosedAtIdle => r.findings.push(format!(
            "PINGs do not keep an idle connection open: with a PING every {} it still ended after {} (only requests count as activity; keep-alive PINGs will not stop the idle timeout)",
            fmt_s(h.ping.every_s.unwrap_or(0.0)),
            fmt_s(h.ping.lasted_s.unwrap_or(0.0))
        )),
        PingOutcome::Rejected => r.findings.push(format!(
            "PINGs every {} were refused: {}",
            fmt_s(h.ping.every_s.unwrap_or(0.0)),
            h.ping.detail.as_deref().unwrap_or("GOAWAY ENHANCE_YOUR_CALM")
        )),
        PingOutcome::NotRun | PingOutcome::Error => {}
    }
    if let Some(n) = h.requests_before_goaway {
        if h.requests_ended_by == super::H2CountEnd::Goaway {
            r.findings.push(format!(
                "the server sends GOAWAY after {n} requests on one connection: clients must open a new connection then"
            ));
        }
    }
    if let Some(g) = &r.grpc {
        match g.grpc_status {
            Some(0) => {}
            Some(s) => r.findings.push(format!(
                "the health check answered grpc-status {s}{}",
                g.grpc_message
                    .as_deref()
                    .map_or(String::new(), |m| format!(" ({m})"))
            )),
            None => r.findings.push(format!(
                "the health check got no grpc-status (HTTP status {}): not a gRPC server, or no health service at {}",
                r.status, g.path
            )),
        }
        let p = &g.ping_policy;
        match p.result {
            PolicyResult::Found => r.findings.push(format!(
                "gRPC PING policy: with no call open, PINGs closer than about {} apart are bad PINGs (accepted {}, refused {}); after {} of them the server sends GOAWAY ENHANCE_YOUR_CALM{}; set the client's keepalive_time to at least {} (and keepalive_permit_without_calls only if the server permits it)",
                fmt_s(p.min_ping_interval_s.unwrap_or(0.0)),
                fmt_s(p.smallest_accepted_s.unwrap_or(0.0)),
                p.largest_rejected_s.map_or("none".into(), fmt_s),
                p.max_ping_strikes.map_or(0, |s| s + 1),
                p.goaway_debug
                    .as_deref()
                    .map_or(String::new(), |d| format!(" \"{d}\"")),
                fmt_s(p.safe_keepalive_time_s.unwrap_or(0.0))
            )),
            PolicyResult::NoneFound => r.findings.push(
                "no PING policy: 20 PINGs back to back were all accepted".into(),
            ),
            PolicyResult::LongerThanTested => r.findings.push(format!(
                "every PING interval tried, up to {}, was refused with no call open: the server's minimum is longer (gRPC's default without keepalive_permit_without_calls is 2 hours; with it, 5 minutes)",
                fmt_s(p.largest_rejected_s.unwrap_or(0.0))
            )),
            PolicyResult::Inconclusive => r.findings.push(
                "the PING policy search was inconclusive (connections ended for other reasons)".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GoAwaySeen, H2Idle, PingCheck};
    use super::*;

    fn ga(at: f64, last: u32, code: u32) -> GoAwaySeen {
        GoAwaySeen {
            at_s: at,
            last_stream_id: last,
            error: crate::h2wire::error_name(code).into(),
            code,
            debug: String::new(),
        }
    }

    fn report(style: H2Close, t: f64) -> H2Report {
        H2Report {
            url: "h2c://h/".into(),
            address: "127.0.0.1:80".into(),
            protocol: "h2c".into(),
            tls: false,
            status: 200,
            server: None,
            connect_s: 0.0,
            tls_handshake_s: None,
            first_request_s: 0.001,
            idle: H2Idle {
                close_style: style,
                timeout_s: Some(t),
                timeout_error_s: Some(0.001),
                closes_seen: 5,
                close_min_s: Some(t),
                close_max_s: Some(t),
                longest_alive_s: None,
                first_dead_s: None,
                on_reuse: None,
                unasked_bytes: 0,
                still_open_after_s: None,
                connections: 10,
                connections_failed: 0,
            },
            http2: Http2Info::default(),
            grpc: None,
            safe_idle_s: None,
            findings: Vec::new(),
            verdict: String::new(),
            elapsed_s: 0.0,
        }
    }

    #[test]
    fn two_phase_needs_a_first_goaway_at_the_largest_stream_id() {
        let mut e = RungEnd {
            watcher: true,
            goaways: vec![ga(1.0, MAX_STREAM_ID, 0), ga(1.001, 1, 0)],
            end: Some(crate::client::conn::IdleEnd::Fin),
            end_at_s: Some(1.01),
        };
        assert_eq!(phases(&e), GoawayPhases::TwoPhase);
        let mut h = Http2Info::default();
        fill_goaway(&mut h, Some(&e));
        assert_eq!(h.goaway_last_stream_id, Some(1));
        assert!((h.goaway_to_close_s.unwrap() - 0.009).abs() < 1e-9);
        e.goaways = vec![ga(1.0, 1, 0)];
        assert_eq!(phases(&e), GoawayPhases::Single);
        e.goaways = vec![ga(1.0, 3, 0), ga(1.1, 3, 0)];
        assert_eq!(phases(&e), GoawayPhases::Single);
    }

    #[test]
    fn verdict_names_the_goaway_and_a_safe_idle() {
        let mut r = report(H2Close::GoawayThenFin, 1.0);
        r.http2.goaway_error = Some("NO_ERROR".into());
        r.http2.goaway_last_stream_id = Some(1);
        r.http2.goaway_seen = true;
        judge(&mut r, 0.0);
        assert_eq!(
            r.verdict,
            "ends idle HTTP/2 connections after 1.00s with GOAWAY NO_ERROR (last stream id 1), then FIN; a client or pool must stop opening streams on an idle connection before about 0.9s"
        );
        assert_eq!(r.safe_idle_s, Some(0.9));
        let mut r = report(H2Close::Fin, 2.0);
        judge(&mut r, 0.0);
        assert!(r.findings[0].contains("bare FIN"), "{:?}", r.findings);
    }

    #[test]
    fn ping_findings_say_whether_pings_count() {
        let mut r = report(H2Close::GoawayThenFin, 1.0);
        r.http2.ping = PingCheck {
            outcome: PingOutcome::ClosedAtIdle,
            every_s: Some(0.3),
            pings_sent: 3,
            lasted_s: Some(1.0),
            detail: None,
        };
        judge(&mut r, 0.0);
        assert!(
            r.findings.iter().any(|f| f.contains("PINGs do not keep")),
            "{:?}",
            r.findings
        );
    }

    #[test]
    fn safe_keepalive_time_has_margin_and_the_a8_floor() {
        assert_eq!(safe_keepalive_time(0.2, 0.0001), 10.0);
        assert_eq!(safe_keepalive_time(300.0, 0.001), 331.0);
        assert_eq!(safe_keepalive_time(20.0, 0.0), 22.0);
    }
}
