//! How capture results are shown, by `read` and `watch` alike: JSON objects for packets,
//! flows and totals, the flows table, the packet list and the totals line.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use kaprobe_capture::flow::ending::{EndBy, EndHow, IdleLimit};
use kaprobe_capture::{FlowSummary, Kind, Outcome, PacketEvent, RunStats};
use serde_json::{json, Value};

/// RFC 3339 time (microseconds) for a duration since the epoch.
pub(crate) fn rfc3339(ts: Duration) -> String {
    humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + ts).to_string()
}

fn opt_secs(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

fn opt_time(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(rfc3339(d)))
}

/// The JSON object for one classified packet.
pub(crate) fn packet_json(p: &PacketEvent) -> Value {
    let mut v = json!({
        "type": "packet",
        "frame": p.frame,
        "time": rfc3339(p.ts),
        "kind": p.kind.as_str(),
        "src": p.src.to_string(),
        "dst": p.dst.to_string(),
        "seq": p.seq,
        "ack": p.ack,
        "len": p.len,
        "confirmed_later": p.confirmed_later,
    });
    if let Some(m) = v.as_object_mut() {
        if p.kind == Kind::KeepaliveAck {
            m.insert("rtt".into(), opt_secs(p.rtt));
        } else {
            m.insert("probe_number".into(), json!(p.probe_number));
            m.insert("idle".into(), opt_secs(p.idle));
            if p.kind == Kind::Keepalive {
                m.insert("unanswered_before".into(), json!(p.unanswered_before));
                m.insert("since_prev_probe".into(), opt_secs(p.since_prev_probe));
            }
        }
    }
    v
}

/// The JSON object for one flow summary.
pub(crate) fn flow_json(f: &FlowSummary) -> Value {
    json!({
        "type": "flow",
        "client": f.client.to_string(),
        "server": f.server.to_string(),
        "roles_known": f.roles_known,
        "prober": f.prober.map(|p| p.to_string()),
        "prober_role": f.prober_role.as_str(),
        "first_seen": rfc3339(f.first_seen),
        "last_seen": rfc3339(f.last_seen),
        "packets": f.packets,
        "keepalives": f.keepalives,
        "answered": f.answered,
        "unanswered": f.unanswered,
        "zero_window_probes": f.zero_window_probes,
        "first_probe": opt_time(f.first_probe),
        "last_probe": opt_time(f.last_probe),
        "idle_before_first_probe": opt_secs(f.idle_before_first_probe),
        "probe_interval": f.probe_interval,
        "unanswered_at_end": f.unanswered_at_end,
        "outcome": f.outcome.as_str(),
        "inferred_idle": f.inference.idle,
        "inferred_interval": f.inference.interval,
        "inferred_count": f.inference.count,
        "config": f.inference.name,
        "end_by": f.ending.by.map(EndBy::as_str),
        "end_how": f.ending.how.map(EndHow::as_str),
        "idle_before_end": opt_secs(f.ending.idle_before_end),
        "end_evidence": f.ending.evidence,
        "reuse_failed": f.ending.reuse_failed,
        "reuses": f.ending.reuses.iter().map(|r| json!({
            "by": r.by.as_str(),
            "at": rfc3339(r.at),
            "idle": r.idle.as_secs_f64(),
            "result": r.result.as_str(),
        })).collect::<Vec<_>>(),
        "verdict": (!f.ending.verdict.is_empty()).then_some(&f.ending.verdict),
    })
}

/// How the flows with something to say ended: one wrapped sentence each.
pub(crate) fn ending_lines(flows: &[FlowSummary]) -> Vec<String> {
    flows
        .iter()
        .filter(|f| !f.ending.verdict.is_empty())
        .map(|f| {
            crate::term::wrap(
                &format!("{} -> {}: {}", f.client, f.server, f.ending.verdict),
                4,
            )
        })
        .collect()
}

/// The JSON object for one server's idle limit, bracketed by reuses across flows.
pub(crate) fn idle_limit_json(l: &IdleLimit) -> Value {
    json!({
        "type": "idle_limit",
        "server": l.server.to_string(),
        "how": l.how,
        "longest_ok": l.longest_ok.as_secs_f64(),
        "shortest_failed": l.shortest_failed.as_secs_f64(),
        "flows": l.flows,
        "hint": l.hint,
    })
}

/// One line per idle limit, for people.
pub(crate) fn idle_limit_line(l: &IdleLimit) -> String {
    let hint = l.hint.map_or(String::new(), |h| format!("; that fits {h}"));
    crate::term::wrap(
        &format!(
            "idle limit of {}: reuses worked after {} idle and failed ({}) after {} ({} flows){hint}",
            l.server,
            crate::util::human(l.longest_ok),
            l.how,
            crate::util::human(l.shortest_failed),
            l.flows
        ),
        2,
    )
}

/// The closing JSON object with the run's counts.
pub(crate) fn stats_json(s: &RunStats, elapsed: Duration) -> Value {
    let t = &s.tracker;
    json!({
        "type": "stats",
        "frames": s.frames + t.withheld,
        "tcp_packets": t.tcp_packets,
        "withheld": t.withheld,
        "skipped": s.skipped_total(),
        "skipped_by_reason": s.skipped,
        "unsupported_link": s.unsupported_link,
        "filtered_out": s.filtered_out,
        "dropped": s.dropped,
        "keepalives": t.keepalives,
        "keepalive_acks": t.keepalive_acks,
        "zero_window_probes": t.zero_window_probes,
        "flows": t.flows,
        "peak_flows": t.peak_flows,
        "evictions": t.evictions,
        "expired": t.expired,
        "elapsed": elapsed.as_secs_f64(),
    })
}

/// One line of totals for human output.
pub(crate) fn stats_line(s: &RunStats, elapsed: Duration) -> String {
    let t = &s.tracker;
    let frames = s.frames + t.withheld;
    let rate = if elapsed.as_secs_f64() > 0.0 {
        frames as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    // With --port/--host, the TCP packets the filter left out are said, so that a filter
    // that matches nothing does not read as a capture without TCP.
    let tcp = if s.filtered_out > 0 {
        format!(
            "{} TCP, of which {} left out by the filter",
            t.tcp_packets + s.filtered_out,
            s.filtered_out
        )
    } else {
        format!("{} TCP", t.tcp_packets)
    };
    let tcp = if t.withheld > 0 {
        format!(
            "{tcp}; {} withheld in the kernel and counted there",
            t.withheld
        )
    } else {
        tcp
    };
    let mut line = format!(
        "{} frames ({tcp}) in {:.2}s ({:.0} frames/s)\n{} keep-alives, {} keep-alive ACKs, \
         {} zero-window probes\n{} flows (peak {} tracked, {} evicted)",
        frames,
        elapsed.as_secs_f64(),
        rate,
        t.keepalives,
        t.keepalive_acks,
        t.zero_window_probes,
        t.flows,
        t.peak_flows,
        t.evictions
    );
    if s.skipped_total() > 0 {
        let mut reasons: Vec<String> = s.skipped.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        if s.unsupported_link > 0 {
            reasons.push(format!("unsupported link type: {}", s.unsupported_link));
        }
        reasons.sort();
        line.push_str(&format!(
            "; skipped {} ({})",
            s.skipped_total(),
            reasons.join(", ")
        ));
    }
    if s.dropped > 0 {
        line.push_str(&format!("; {} dropped/truncated", s.dropped));
    }
    crate::term::wrap(&line, 2)
}

fn fmt_secs(d: Option<f64>) -> String {
    match d {
        None => "-".into(),
        Some(s) if s >= 100.0 => format!("{s:.0}s"),
        Some(s) => format!("{s:.3}s"),
    }
}

fn time_of_day(ts: Duration) -> String {
    let s = rfc3339(ts);
    // 2024-01-02T03:04:05.123456Z -> 03:04:05.123456
    s.get(11..s.len().saturating_sub(1))
        .unwrap_or(&s)
        .to_string()
}

/// Interesting flows first: dead peers, unanswered probing, then the most recent probes.
pub(crate) fn sort_flows(flows: &mut [FlowSummary]) {
    let rank = |o: Outcome| match o {
        Outcome::PeerDead => 0,
        Outcome::Probing => 1,
        Outcome::Reset => 2,
        _ => 3,
    };
    flows.sort_by(|a, b| {
        rank(a.outcome)
            .cmp(&rank(b.outcome))
            .then(b.last_probe.cmp(&a.last_probe))
            .then(b.keepalives.cmp(&a.keepalives))
    });
}

/// The shared table style, except that a terminal reporting a tiny width (a pty without a
/// size) gets unwrapped rows instead of one-character columns.
fn table() -> comfy_table::Table {
    let mut t = crate::term::table();
    if t.width().is_some_and(|w| w < 40) {
        t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    }
    t
}

/// The width of a table drawn without wrapping: each column is its widest cell plus one
/// space either side, plus one border character per column and one more.
fn natural_width<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> usize {
    let mut widest = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widest.iter_mut().zip(row) {
            let cw = cell.lines().map(|l| l.chars().count()).max().unwrap_or(0);
            *w = (*w).max(cw);
        }
    }
    widest.iter().map(|w| w + 3).sum::<usize>() + 1
}

/// How a flow stands, in words.
fn state_text(f: &FlowSummary) -> String {
    match f.outcome {
        Outcome::PeerDead => format!("peer dead: RST after {} unanswered", f.unanswered_at_end),
        Outcome::Probing => format!("probing: {} unanswered", f.unanswered_at_end),
        o => o.as_str().to_string(),
    }
}

/// A cell coloured by the flow's fate when colour is on: dead red, probing yellow, alive
/// green.
fn fate_cell(text: String, o: Outcome) -> comfy_table::Cell {
    use comfy_table::{Attribute, Cell, Color};
    let cell = Cell::new(text);
    match o {
        Outcome::PeerDead => cell.fg(Color::Red).add_attribute(Attribute::Bold),
        Outcome::Probing => cell.fg(Color::Yellow),
        Outcome::Alive => cell.fg(Color::Green),
        _ => cell,
    }
}

const FLOW_HEADER: [&str; 9] = [
    "flow (client -> server)",
    "prober",
    "idle before probe",
    "interval",
    "probes",
    "answered",
    "last probe",
    "state",
    "likely settings",
];

/// One flow's nine cells, as the wide table shows them.
fn flow_cells(f: &FlowSummary) -> [String; 9] {
    let probes = if f.zero_window_probes > 0 {
        format!("{} (+{} zero-window)", f.keepalives, f.zero_window_probes)
    } else {
        f.keepalives.to_string()
    };
    [
        format!("{} -> {}", f.client, f.server),
        f.prober_role.as_str().to_string(),
        fmt_secs(f.idle_before_first_probe.map(|d| d.as_secs_f64())),
        fmt_secs(f.probe_interval),
        probes,
        f.answered.to_string(),
        f.last_probe.map_or("-".into(), time_of_day),
        state_text(f),
        f.inference.name.clone(),
    ]
}

/// The flows table: one row per flow with probes. When its nine columns do not fit the
/// output width (80 columns in a pipe), each flow becomes one row of two cells: the flow
/// with its state, and its details one per line.
pub(crate) fn flows_table(flows: &[FlowSummary]) -> comfy_table::Table {
    let rows: Vec<[String; 9]> = flows.iter().map(flow_cells).collect();
    let width = crate::term::output().width;
    let mut t = table();
    // Cells are laid out here, so comfy-table need not measure and wrap them again.
    t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    if natural_width(&FLOW_HEADER, &rows) <= width {
        t.set_header(FLOW_HEADER);
        for (f, [flow, prober, idle, interval, probes, answered, last, state, likely]) in
            flows.iter().zip(rows)
        {
            t.add_row(vec![
                comfy_table::Cell::new(flow),
                comfy_table::Cell::new(prober),
                comfy_table::Cell::new(idle),
                comfy_table::Cell::new(interval),
                comfy_table::Cell::new(probes),
                comfy_table::Cell::new(answered),
                comfy_table::Cell::new(last),
                fate_cell(state, f.outcome),
                comfy_table::Cell::new(likely),
            ]);
        }
        return t;
    }
    t.load_preset(comfy_table::presets::UTF8_FULL);
    let header = ["flow (client -> server)", "keep-alive probes"];
    let firsts: Vec<String> = flows
        .iter()
        .zip(&rows)
        .map(|(f, [flow, .., state, _])| {
            if flow.chars().count() + 7 > width / 2 {
                format!("{} ->\n{}\n{state}", f.client, f.server)
            } else {
                format!("{flow}\n{state}")
            }
        })
        .collect();
    let first_w = firsts
        .iter()
        .flat_map(|c| c.lines())
        .map(|l| l.chars().count())
        .chain([header[0].chars().count()])
        .max()
        .unwrap_or(0);
    let details_w = width.saturating_sub(first_w + 7).max(24);
    t.set_header(header);
    for ((f, first), [_, prober, idle, interval, probes, answered, last, _, likely]) in
        flows.iter().zip(firsts).zip(rows)
    {
        let details = format!(
            "prober: {prober}, {probes} sent, {answered} answered\n\
             idle before the first: {idle}\ninterval: {interval}\nlast: {last}\n\
             likely: {likely}"
        );
        t.add_row(vec![
            fate_cell(first, f.outcome),
            comfy_table::Cell::new(crate::term::wrap_to(&details, details_w, 2)),
        ]);
    }
    t
}

const PACKET_HEADER: [&str; 8] = [
    "frame",
    "time",
    "kind",
    "from -> to",
    "seq",
    "ack",
    "len",
    "note",
];

/// The classified packets: a table when it fits the output width, else two lines per packet
/// (wrapped, continuation lines indented), as easy to grep as to read.
pub(crate) fn write_packets(out: &mut impl Write, packets: &[PacketEvent]) -> io::Result<()> {
    let rows: Vec<[String; 8]> = packets
        .iter()
        .map(|p| {
            [
                p.frame.to_string(),
                time_of_day(p.ts),
                p.kind.as_str().to_string(),
                format!("{} -> {}", p.src, p.dst),
                p.seq.to_string(),
                p.ack.to_string(),
                p.len.to_string(),
                packet_note(p),
            ]
        })
        .collect();
    if natural_width(&PACKET_HEADER, &rows) <= crate::term::output().width {
        let mut t = table();
        t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        t.set_header(PACKET_HEADER);
        for r in rows {
            t.add_row(r);
        }
        return writeln!(out, "{t}");
    }
    for [frame, time, kind, addrs, seq, ack, len, note] in rows {
        // The second line (and any wrapped part) is indented under the first.
        let line = format!(
            "frame {frame} {time} {kind} {addrs}\n    seq {seq} ack {ack} len {len}: {note}"
        );
        writeln!(out, "{}", crate::term::wrap(&line, 4))?;
    }
    Ok(())
}

/// A short human note for a classified packet.
pub(crate) fn packet_note(p: &PacketEvent) -> String {
    let mut parts = Vec::new();
    match p.kind {
        Kind::KeepaliveAck => {
            if let Some(r) = p.rtt {
                parts.push(format!("rtt {:.3}ms", r.as_secs_f64() * 1e3));
            }
        }
        Kind::Keepalive | Kind::ZeroWindowProbe => {
            parts.push(format!("#{}", p.probe_number));
            if let Some(g) = p.since_prev_probe {
                parts.push(format!("{:.3}s after previous", g.as_secs_f64()));
            } else if let Some(i) = p.idle {
                parts.push(format!("after {:.3}s idle", i.as_secs_f64()));
            }
            if p.unanswered_before > 0 {
                parts.push(format!("{} unanswered before", p.unanswered_before));
            }
        }
    }
    if p.confirmed_later {
        parts.push("confirmed by a later packet".into());
    }
    parts.join(", ")
}
