//! How the prober's reports are shown, by `probe` and `demo` alike: the target line, the
//! advertised/observed table, findings and the verdict.

use std::time::Duration;

use kaprobe_http::client::{ProbeReport, PushKind};

use crate::term::table;

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2}s"))
}

/// The probe's total time, from the library's duration type.
fn took(r: &ProbeReport) -> String {
    format!(
        "{:.2}s",
        crate::util::secs(Duration::from_secs_f64(r.elapsed_s.max(0.0)))
    )
}

fn ms(s: f64) -> String {
    format!("{:.1}ms", s * 1000.0)
}

fn yes_no(v: Option<bool>, yes: &str, no: &str) -> String {
    match v {
        Some(true) => yes.into(),
        Some(false) => no.into(),
        None => "-".into(),
    }
}

/// The first line of both reports: what was probed, where it went, what answered.
fn print_target(
    url: &str,
    address: &impl std::fmt::Display,
    status: u16,
    server: Option<&str>,
) -> anyhow::Result<()> {
    let server = server.map_or(String::new(), |s| format!(", server: {s}"));
    crate::out::println_wrapped(&format!("{url} -> {address} (status {status}{server})"))
}

pub fn probe(r: &ProbeReport) -> anyhow::Result<()> {
    print_target(&r.url, &r.address, r.status, r.server.as_deref())?;
    let mut t = table();
    t.set_header(vec!["", "advertised", "observed"]);
    let idle = &r.idle;
    let observed_idle = match idle.close_style {
        kaprobe_http::client::ObservedClose::OpenAtMaxWait => format!(
            "still open at --max-wait{}",
            idle.still_open_after_s
                .or(idle.longest_alive_s)
                .map_or(String::new(), |a| format!(" ({a:.2}s idle)"))
        ),
        kaprobe_http::client::ObservedClose::NoKeepAlive => "closes after every response".into(),
        style => format!(
            "{} ± {}, {}",
            secs(idle.timeout_s),
            idle.timeout_error_s
                .map_or("-".into(), |e| format!("{:.0}ms", e * 1000.0)),
            style.describe()
        ),
    };
    t.add_row(vec![
        "idle timeout".to_string(),
        secs(r.advertised.timeout_s),
        observed_idle,
    ]);
    let max_obs = match (r.max_requests.observed, r.max_requests.ended_by.as_str()) {
        (Some(n), "cap") => format!("at least {n} (cap reached)"),
        (Some(n), "max_wait") => format!("at least {n} (time ran out)"),
        (Some(n), "closed") => format!("{n}, then closed without notice"),
        (Some(n), _) => format!("{n}, last one says Connection: close"),
        (None, _) => "-".into(),
    };
    t.add_row(vec![
        "requests per connection".to_string(),
        // `max` on the first response counts the requests still allowed after it
        r.advertised.max.map_or("-".into(), |m| {
            format!("max={m}: {} in all", m.saturating_add(1))
        }),
        max_obs,
    ]);
    t.add_row(vec![
        "Connection header".to_string(),
        r.advertised
            .connection
            .clone()
            .unwrap_or_else(|| "-".into()),
        String::new(),
    ]);
    t.add_row(vec![
        "HTTP/1.0 + keep-alive".to_string(),
        String::new(),
        yes_no(r.http10.keep_alive_honored, "kept alive", "closed"),
    ]);
    t.add_row(vec![
        "HTTP/1.0 plain".to_string(),
        String::new(),
        yes_no(
            r.http10.plain_closes,
            "closed after the response",
            "left open",
        ),
    ]);
    let pipelining = if r.pipelining.sent == 0 {
        r.pipelining.result.replace('_', " ")
    } else if r.pipelining.result == "limited" {
        format!(
            "in order, {} of {} answered: {}",
            r.pipelining.answered,
            r.pipelining.sent,
            r.pipelining
                .detail
                .as_deref()
                .unwrap_or("the server closed as announced")
        )
    } else {
        format!(
            "{} ({} of {} answered)",
            r.pipelining.result.replace('_', " "),
            r.pipelining.answered,
            r.pipelining.sent
        )
    };
    t.add_row(vec!["pipelining".to_string(), String::new(), pipelining]);
    let mut timing = format!("connect {}", ms(r.connect_s));
    if let Some(hs) = r.tls_handshake_s {
        timing.push_str(&format!(", TLS handshake {}", ms(hs)));
    }
    timing.push_str(&format!(", first request {}", ms(r.first_request_s)));
    if let Some(re) = r.reused_request_s {
        timing.push_str(&format!(", reused {}", ms(re)));
    }
    t.add_row(vec!["timing".to_string(), String::new(), timing]);
    crate::out::print_table(t)?;
    for f in &r.findings {
        crate::outln!("{}", crate::term::wrap(&format!("  * {f}"), 4))?;
    }
    crate::outln!("{}", crate::term::verdict_line(&r.verdict))?;
    crate::outln!("(probe took {})", took(r))?;
    Ok(())
}

pub fn push(r: &kaprobe_http::client::PushReport) -> anyhow::Result<()> {
    use kaprobe_http::client::{PushEnd, PushWatch};
    print_target(&r.url, &r.address, r.status, r.server.as_deref())?;
    let mut t = table();
    t.set_header(vec![
        "connection",
        "heartbeat",
        "lasted",
        "how it ended",
        "heard from the server",
    ]);
    let row = |name: &str, w: &PushWatch| {
        let beat = match (w.heartbeat_s, r.kind) {
            (None, _) => "none".to_string(),
            (Some(h), PushKind::Websocket) => format!("client ping every {h:.1}s"),
            (Some(h), PushKind::Sse) => format!("?heartbeat={h:.1}s"),
        };
        let lasted = if w.end == PushEnd::Alive {
            format!("at least {:.2}s", w.lasted_s)
        } else {
            format!("{:.2}s", w.lasted_s)
        };
        let mut how = w.end.describe(r.kind).to_string();
        if let Some(c) = w.close_code {
            how.push_str(&format!(" {c}"));
        }
        if let Some(reason) = w.close_reason.as_deref().filter(|s| !s.is_empty()) {
            how.push_str(&format!(" \"{reason}\""));
        }
        if let Some(e) = &w.error {
            how.push_str(&format!(": {e}"));
        }
        let heard = match r.kind {
            PushKind::Websocket => format!(
                "{} pongs to {} pings, {} server pings, {} messages",
                w.pongs_received, w.pings_sent, w.server_pings, w.messages
            ),
            PushKind::Sse => format!(
                "{} heartbeats, {} events",
                w.heartbeats_received, w.messages
            ),
        };
        vec![name.to_string(), beat, lasted, how, heard]
    };
    if let Some(w) = &r.idle {
        t.add_row(row("idle", w));
    }
    if let Some(w) = &r.heartbeat {
        t.add_row(row("with heartbeat", w));
    }
    crate::out::print_table(t)?;
    crate::outln!("{}", crate::term::verdict_line(&r.verdict))?;
    crate::outln!(
        "(connect {}, handshake {}; probe took {:.2}s)",
        ms(r.connect_s),
        ms(r.handshake_s),
        r.elapsed_s
    )?;
    Ok(())
}

/// The HTTP/2 probe's report: what answered, one row per measurement, findings, verdict.
pub fn probe_h2(r: &kaprobe_http::client::h2::H2Report) -> anyhow::Result<()> {
    use kaprobe_http::client::h2::{GoawayPhases, H2Close, H2CountEnd, PingOutcome, PolicyResult};
    let server = r
        .server
        .as_deref()
        .map_or(String::new(), |s| format!(", server: {s}"));
    crate::out::println_wrapped(&format!(
        "{} -> {} ({}, status {}{server})",
        r.url, r.address, r.protocol, r.status
    ))?;
    let mut t = table();
    t.set_header(vec!["", "observed"]);
    let idle = &r.idle;
    let h = &r.http2;
    let observed_idle = match idle.close_style {
        H2Close::OpenAtMaxWait => format!(
            "still open at --max-wait{}",
            idle.still_open_after_s
                .or(idle.longest_alive_s)
                .map_or(String::new(), |a| format!(" ({a:.2}s idle)"))
        ),
        style => format!(
            "{} ± {}, {}",
            secs(idle.timeout_s),
            idle.timeout_error_s
                .map_or("-".into(), |e| format!("{:.0}ms", e * 1000.0)),
            style.describe()
        ),
    };
    t.add_row(vec!["idle timeout".to_string(), observed_idle]);
    if h.goaway_seen {
        let mut g = format!(
            "{}, last stream id {}",
            h.goaway_error.as_deref().unwrap_or("-"),
            h.goaway_last_stream_id
                .map_or("-".into(), |i| i.to_string())
        );
        if let Some(d) = &h.goaway_debug {
            g.push_str(&format!(", \"{d}\""));
        }
        g.push_str(match h.goaway_phases {
            Some(GoawayPhases::TwoPhase) => ", two-phase",
            _ => ", single",
        });
        if let Some(c) = h.goaway_to_close_s {
            g.push_str(&format!(", closed {} later", ms(c)));
        }
        t.add_row(vec!["idle GOAWAY".to_string(), g]);
    }
    t.add_row(vec![
        "max concurrent streams".to_string(),
        h.max_concurrent_streams
            .map_or("not set (no limit)".into(), |n| n.to_string()),
    ]);
    let count = match (h.requests_before_goaway, h.requests_ended_by) {
        (Some(n), H2CountEnd::Goaway) => format!("{n}, then GOAWAY"),
        (Some(n), H2CountEnd::Closed) => format!("{n}, then closed without GOAWAY"),
        (Some(n), H2CountEnd::Cap) => format!("at least {n} (cap reached)"),
        (Some(n), H2CountEnd::MaxWait) => format!("at least {n} (time ran out)"),
        _ => "-".into(),
    };
    t.add_row(vec!["requests per connection".to_string(), count]);
    let mut ping = h.ping_rtt_s.map_or("no PING answered".into(), |s| {
        format!("round trip {}", ms(s))
    });
    let every = h.ping.every_s.map_or(String::new(), |e| format!("{e:.2}s"));
    match h.ping.outcome {
        PingOutcome::KeptAlive => ping.push_str(&format!(
            "; one every {every} kept it open {:.2}s",
            h.ping.lasted_s.unwrap_or(0.0)
        )),
        PingOutcome::ClosedAtIdle => ping.push_str(&format!(
            "; one every {every} did not keep it open (ended at {:.2}s)",
            h.ping.lasted_s.unwrap_or(0.0)
        )),
        PingOutcome::Rejected => ping.push_str(&format!("; one every {every} was refused")),
        PingOutcome::NotRun | PingOutcome::Error => {}
    }
    t.add_row(vec!["PING".to_string(), ping]);
    let mut timing = format!("connect {}", ms(r.connect_s));
    if let Some(hs) = r.tls_handshake_s {
        timing.push_str(&format!(", TLS handshake {}", ms(hs)));
    }
    timing.push_str(&format!(", first request {}", ms(r.first_request_s)));
    t.add_row(vec!["timing".to_string(), timing]);
    if let Some(g) = &r.grpc {
        t.add_row(vec![
            "gRPC health".to_string(),
            match (g.grpc_status, &g.serving) {
                (Some(s), Some(v)) => format!("{v} (grpc-status {s})"),
                (Some(s), None) => format!("grpc-status {s}"),
                (None, _) => "no grpc-status".into(),
            },
        ]);
        let p = &g.ping_policy;
        let policy = match p.result {
            PolicyResult::Found => format!(
                "min interval {} ± {:.0}ms, {} strikes tolerated; keepalive_time >= {:.0}s",
                secs(p.min_ping_interval_s),
                p.min_ping_interval_error_s.unwrap_or(0.0) * 1000.0,
                p.max_ping_strikes.unwrap_or(0),
                p.safe_keepalive_time_s.unwrap_or(0.0)
            ),
            PolicyResult::NoneFound => "none: PINGs back to back accepted".into(),
            PolicyResult::LongerThanTested => format!(
                "longer than tested (refused up to {})",
                secs(p.largest_rejected_s)
            ),
            PolicyResult::Inconclusive => "inconclusive".into(),
        };
        t.add_row(vec!["gRPC PING policy".to_string(), policy]);
    }
    crate::out::print_table(t)?;
    for f in &r.findings {
        crate::outln!("{}", crate::term::wrap(&format!("  * {f}"), 4))?;
    }
    crate::outln!("{}", crate::term::verdict_line(&r.verdict))?;
    crate::outln!(
        "(probe took {:.2}s)",
        crate::util::secs(Duration::from_secs_f64(r.elapsed_s.max(0.0)))
    )?;
    Ok(())
}

/// The HTTP/2 race: one row per idle time, then what the columns mean and the verdict.
pub fn race_h2(r: &kaprobe_http::client::h2::H2RaceReport) -> anyhow::Result<()> {
    let n = r.attempts.len();
    crate::out::println_wrapped(&format!(
        "{} -> {} ({}): {n} new {} {} after {:.2}s to {:.2}s of idle",
        r.url,
        r.address,
        r.protocol,
        if n == 1 { "stream" } else { "streams" },
        r.method,
        (r.idle_s - r.spread_s).max(0.0),
        if n == 1 {
            r.idle_s
        } else {
            r.idle_s + r.spread_s
        }
    ))?;
    let mut t = table();
    t.set_header(vec![
        "idle", "tries", "ok", "5xx", "refused", "ignored", "reset", "closed", "none", "late",
    ]);
    for b in &r.bins {
        let idle = if (b.idle_to_s - b.idle_from_s).abs() < 1e-9 {
            format!("{:.3}s", b.idle_from_s)
        } else {
            format!("{:.2}-{:.2}s", b.idle_from_s, b.idle_to_s)
        };
        let mut row = vec![idle];
        row.extend(
            [
                b.attempts,
                b.ok,
                b.bad_gateway,
                b.refused_stream,
                b.unprocessed,
                b.stream_reset + b.reset,
                b.empty_reply,
                b.no_answer,
                b.after_goaway,
            ]
            .iter()
            .map(ToString::to_string),
        );
        t.add_row(row);
    }
    crate::out::print_table(t)?;
    crate::outln!(
        "{}",
        crate::term::wrap(
            "(refused = RST_STREAM REFUSED_STREAM, ignored = above the GOAWAY's last stream id: both never processed, safe to retry; reset = RST_STREAM or TCP RST; closed = FIN with no answer; none = no answer; late = opened after the GOAWAY had arrived)",
            1
        )
    )?;
    crate::outln!("{}", crate::term::verdict_line(&r.verdict))?;
    Ok(())
}
