//! The judging half of the probe: from what was measured to findings, a verdict and the safe
//! idle time, as pure functions (unit-tested without a server).

use super::*;

/// For a silent drop: (longest idle that worked below the failures, first failing idle, how
/// it failed), once two requests after longer idles failed and none after them worked.
pub(crate) fn silent_bounds(
    oks: &[f64],
    fails: &[(f64, &'static str)],
) -> Option<(f64, f64, &'static str)> {
    let max_ok = oks.iter().copied().fold(0.0_f64, f64::max);
    let mut above: Vec<(f64, &'static str)> =
        fails.iter().copied().filter(|f| f.0 > max_ok).collect();
    if above.len() < 2 {
        return None;
    }
    above.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some((max_ok, above[0].0, above[0].1))
}

/// Compare advertised and observed values, write findings and the verdict.
pub(super) fn judge(r: &mut ProbeReport, rtt: f64) {
    let idle = &r.idle;
    let t = idle.timeout_s;
    // Truth of the advertised timeout.
    if let (Some(adv), Some(obs), ObservedClose::Silent) =
        (r.advertised.timeout_s, t, idle.close_style)
    {
        // Nothing came from the server: the path (a NAT, firewall or load balancer) forgot
        // the flow. The header says what the server would do; this says nothing against it.
        if obs < adv {
            r.findings.push(format!(
                "idle connections die silently after {obs:.2}s (no FIN, no RST): something on the path (NAT, firewall, load balancer) forgets idle flows before the server's advertised timeout={adv} is reached"
            ));
        }
    } else if let (Some(adv), Some(obs)) = (r.advertised.timeout_s, t) {
        if matches!(idle.close_style, ObservedClose::Fin | ObservedClose::Rst) {
            let ok = (obs - adv).abs() <= 1.0 + 0.05 * adv;
            r.advertised_true.timeout = Some(ok);
            if !ok {
                r.findings.push(if obs < adv {
                    format!(
                        "the Keep-Alive header lies: it advertises timeout={adv} but idle connections end after {obs:.2}s; clients that trust it will reuse dead connections between {obs:.2}s and {adv}s of idle"
                    )
                } else {
                    format!(
                        "the Keep-Alive header advertises timeout={adv} but idle connections live {obs:.2}s (longer than promised; harmless for clients that follow the header)"
                    )
                });
            }
        }
    } else if let (Some(adv), ObservedClose::OpenAtMaxWait) =
        (r.advertised.timeout_s, idle.close_style)
    {
        if let Some(a) = idle.still_open_after_s.or(idle.longest_alive_s) {
            if a > adv + 1.0 + 0.05 * adv {
                r.advertised_true.timeout = Some(false);
                r.findings.push(format!(
                    "advertises timeout={adv} but a connection idle {a:.2}s was still open"
                ));
            }
        }
    }
    // Truth of the advertised max.
    if let (Some(adv), Some(obs)) = (r.advertised.max, r.max_requests.observed) {
        if !matches!(r.max_requests.ended_by, EndedBy::Cap | EndedBy::MaxWait) {
            let ok = obs == adv || obs == adv + 1;
            r.advertised_true.max = Some(ok);
            if !ok {
                r.findings.push(format!(
                    "advertises max={adv} requests but a connection ended after {obs}"
                ));
            }
        }
    }
    if r.max_requests.countdown_ok == Some(false) {
        r.findings
            .push("the Keep-Alive max value does not count down by one per response".into());
    }
    if r.max_requests.ended_by == EndedBy::Closed {
        r.findings.push(format!(
            "after {} requests the server closed the connection without a Connection: close header first",
            r.max_requests.observed.unwrap_or(0)
        ));
    }
    match r.pipelining.result {
        PipelineResult::OutOfOrder => r
            .findings
            .push("pipelined requests were answered OUT OF ORDER (RFC 9112 violation)".into()),
        PipelineResult::Partial => r.findings.push(format!(
            "only {} of {} pipelined requests were answered, and the server had not said it would close{}",
            r.pipelining.answered,
            r.pipelining.sent,
            r.pipelining
                .detail
                .as_deref()
                .map_or(String::new(), |d| format!(" ({d})"))
        )),
        _ => {}
    }
    if r.http10.keep_alive_honored == Some(false) && idle.close_style != ObservedClose::NoKeepAlive
    {
        r.findings
            .push("HTTP/1.0 clients asking for keep-alive get a connection that closes".into());
    }
    if r.http10.plain_closes == Some(false) {
        r.findings
            .push("a plain HTTP/1.0 request (no keep-alive asked) left the connection open".into());
    }
    if idle.unasked_bytes > 0 {
        r.findings.push(format!(
            "the server sent {} bytes on idle connections without a request (e.g. a 408)",
            idle.unasked_bytes
        ));
    }
    if let (Some(hs), Some(reused)) = (r.tls_handshake_s, r.reused_request_s) {
        r.findings.push(format!(
            "a new https connection costs {:.1}ms (TCP {:.1}ms + TLS {:.1}ms + request {:.1}ms); a reused one {:.1}ms",
            (r.connect_s + hs + r.first_request_s) * 1000.0,
            r.connect_s * 1000.0,
            hs * 1000.0,
            r.first_request_s * 1000.0,
            reused * 1000.0
        ));
    }

    let adv = match r.advertised.timeout_s {
        Some(a) => format!("advertises {a}s"),
        None => "advertises no timeout".into(),
    };
    // Margin: 10% of the timeout (pool timers and clocks are coarse) plus two round trips
    // (the server's timer starts a half-trip before the client's; a request needs a half-trip
    // to arrive), rounded to 0.1s.
    let safe = |t: f64| ((t * 0.9 - 2.0 * rtt) * 10.0).round() / 10.0;
    r.verdict = match (idle.close_style, t) {
        (ObservedClose::NoKeepAlive, _) => format!(
            "does not keep connections alive: every response ends with Connection: close ({adv})"
        ),
        (ObservedClose::Fin | ObservedClose::Rst, Some(t)) => {
            let s = safe(t).max(0.0);
            r.safe_idle_s = Some(s);
            format!(
                "closes idle connections after {t:.2}s with {}, {adv}; a client or proxy pool in front of it must drop idle connections before about {s:.1}s",
                idle.close_style.describe()
            )
        }
        (ObservedClose::Silent, Some(t)) => {
            let s = safe(idle.longest_alive_s.unwrap_or(t)).max(0.0);
            r.safe_idle_s = Some(s);
            format!(
                "idle connections die silently after about {t:.2}s (still working at {:.2}s, dead at {:.2}s; no FIN or RST arrives, a later request gets {}), {adv}; something on the path (NAT, conntrack, a load balancer) forgets idle flows: drop pooled connections before about {s:.1}s, or send TCP keep-alive probes more often than that",
                idle.longest_alive_s.unwrap_or(0.0),
                idle.first_dead_s.unwrap_or(0.0),
                idle.on_reuse.as_deref().unwrap_or("no answer").replace('_', " ")
            )
        }
        _ => {
            let a = idle.still_open_after_s.or(idle.longest_alive_s);
            r.not_ruled_out = super::super::max_wait::not_ruled_out(a.unwrap_or(0.0));
            let seen = match a {
                Some(a) => format!("still open after {a:.2}s of idle"),
                None => "no idle time measured".into(),
            };
            let open = r
                .not_ruled_out
                .iter()
                .map(|n| format!("{} {}s", n.name, n.idle_s))
                .collect::<Vec<_>>()
                .join(", ");
            match r.not_ruled_out.first() {
                Some(first) => format!(
                    "NOT a clean bill of health: kept idle connections open for the whole --max-wait ({seen}), {adv}; an idle limit longer than that is not ruled out, including {open}; rerun with --max-wait NAME for the one in front of this server (e.g. --max-wait {}) or --max-wait {} to wait past them all",
                    first.name,
                    super::super::max_wait::LONGEST,
                ),
                None => format!(
                    "kept idle connections open for the whole --max-wait ({seen}), {adv}: longer than every known middlebox limit; raise --max-wait to find the real timeout"
                ),
            }
        }
    };
}
