//! From what was watched to who cut the channel, the heartbeat that keeps it alive and the
//! verdict: pure functions, unit-tested without a server.

use std::time::Duration;

use super::*;

/// Secs with one decimal: "2.0s".
pub(super) fn s1(x: f64) -> String {
    format!("{x:.1}s")
}

/// A heartbeat interval the way people say it: "1s", "1.5s", "300ms".
pub fn say_interval(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Who ended an idle connection, from how it ended and the handshake's `Server` header.
pub(super) fn who(kind: PushKind, w: &PushWatch, server: Option<&str>) -> String {
    let nginx = server.is_some_and(|s| s.to_ascii_lowercase().contains("nginx"));
    match w.end {
        PushEnd::CloseFrame => {
            let reason = w
                .close_reason
                .as_deref()
                .filter(|r| !r.is_empty())
                .map_or(String::new(), |r| format!(", \"{r}\""));
            let code = w
                .close_code
                .map_or("no code".into(), |c| format!("code {c}"));
            format!("the server (close frame, {code}{reason})")
        }
        PushEnd::StreamEnd => "the server (it ended the response)".into(),
        PushEnd::Fin if nginx => "nginx (proxy_read_timeout?)".into(),
        PushEnd::Fin => {
            let what = match kind {
                PushKind::Websocket => "a bare FIN, no close frame",
                PushKind::Sse => "a FIN mid-stream",
            };
            match server {
                Some(s) => format!("{s} or a proxy in front of it ({what})"),
                None => format!("a proxy or the server ({what})"),
            }
        }
        PushEnd::Rst => "something on the path (RST: a proxy, load balancer or firewall)".into(),
        PushEnd::Error | PushEnd::Alive => "nothing".into(),
    }
}

/// What keeps the channel alive, in the imperative.
pub(super) fn keep_alive_advice(kind: PushKind, h: Duration) -> String {
    match kind {
        PushKind::Websocket => format!("ping every {} or less", say_interval(h)),
        PushKind::Sse => format!(
            "have the server send a heartbeat (a ': comment' line) every {} or less",
            say_interval(h)
        ),
    }
}

pub(super) fn beat_words(kind: PushKind, h: Duration) -> String {
    match kind {
        PushKind::Websocket => format!("{} pings", say_interval(h)),
        PushKind::Sse => format!("{} server heartbeats", say_interval(h)),
    }
}

/// Fill in `cut_by`, `heartbeat_max_s` and the verdict.
pub(super) fn conclude(r: &mut PushReport) {
    let kind = r.kind;
    let noun = kind.noun();
    let server = r.server.clone();
    // Forced heartbeat: one connection only.
    if r.idle.is_none() {
        let Some(w) = r.heartbeat.as_ref() else {
            r.verdict = "nothing was measured".into();
            return;
        };
        let h = Duration::from_secs_f64(w.heartbeat_s.unwrap_or(0.0));
        let mut v = match w.end {
            PushEnd::Alive => {
                r.heartbeat_max_s = w.heartbeat_s;
                format!("survived {} with {}", s1(w.lasted_s), beat_words(kind, h))
            }
            PushEnd::Error => format!(
                "the connection failed after {}: {}",
                s1(w.lasted_s),
                w.error.as_deref().unwrap_or("unknown error")
            ),
            end => {
                r.cut_by = Some(who(kind, w, server.as_deref()));
                format!(
                    "died after {} ({}) despite {}: cut by {}",
                    s1(w.lasted_s),
                    end.describe(kind),
                    beat_words(kind, h),
                    who(kind, w, server.as_deref())
                )
            }
        };
        if kind == PushKind::Sse && w.heartbeats_received == 0 {
            v.push_str(
                "; no heartbeat arrived: ?heartbeat= is a kaprobe serve parameter, other servers need their own setting",
            );
        }
        r.verdict = v;
        return;
    }
    let Some(idle) = r.idle.as_ref() else { return };
    let server_beats = match kind {
        PushKind::Websocket => idle.server_pings,
        PushKind::Sse => idle.heartbeats_received,
    };
    r.verdict = match idle.end {
        PushEnd::Alive => {
            let mut v = format!("survived at least {} idle", s1(idle.lasted_s));
            if server_beats > 0 {
                v.push_str(&format!(
                    " (the server sent {server_beats} {}; longest silence {})",
                    match kind {
                        PushKind::Websocket => "pings",
                        PushKind::Sse => "heartbeats",
                    },
                    s1(idle.longest_silence_s)
                ));
            } else {
                v.push_str(": nothing on the path cuts idle ");
                v.push_str(noun);
                v.push_str(" that soon, no heartbeat needed within that time");
            }
            v
        }
        PushEnd::Error => format!(
            "the idle connection failed after {}: {}",
            s1(idle.lasted_s),
            idle.error.as_deref().unwrap_or("unknown error")
        ),
        _ => {
            let by = who(kind, idle, server.as_deref());
            r.cut_by = Some(by.clone());
            let mut v = format!("{by} cuts idle {noun} after {}", s1(idle.lasted_s));
            if server_beats > 0 {
                v.push_str(&format!(
                    " (even though the server sent {server_beats} heartbeat(s))"
                ));
            }
            let derived = half_heartbeat(Duration::from_secs_f64(idle.lasted_s));
            match r.heartbeat.as_ref() {
                Some(c) if c.end == PushEnd::Alive => {
                    let h = Duration::from_secs_f64(c.heartbeat_s.unwrap_or(0.0));
                    r.heartbeat_max_s = c.heartbeat_s;
                    v.push_str(&format!(
                        "; {} (checked: with {} it lived {})",
                        keep_alive_advice(kind, h),
                        beat_words(kind, h),
                        s1(c.lasted_s)
                    ));
                }
                Some(c) if c.end == PushEnd::Error => {
                    r.heartbeat_max_s = Some(derived.as_secs_f64());
                    v.push_str(&format!(
                        "; {} (the check connection failed: {})",
                        keep_alive_advice(kind, derived),
                        c.error.as_deref().unwrap_or("unknown error")
                    ));
                }
                Some(c) => {
                    let h = Duration::from_secs_f64(c.heartbeat_s.unwrap_or(0.0));
                    v.push_str(&format!(
                        "; even with {} it died after {} ({}), so something other than idleness ends it",
                        beat_words(kind, h),
                        s1(c.lasted_s),
                        c.end.describe(kind)
                    ));
                    if kind == PushKind::Sse && c.heartbeats_received == 0 {
                        v.push_str(&format!(
                            "; no heartbeat arrived on the check stream (?heartbeat= is a kaprobe serve parameter): {}",
                            keep_alive_advice(kind, derived)
                        ));
                    }
                }
                None => {
                    r.heartbeat_max_s = Some(derived.as_secs_f64());
                    v.push_str(&format!(
                        "; {} (not checked: --max-wait ran out)",
                        keep_alive_advice(kind, derived)
                    ));
                }
            }
            v
        }
    };
}
