//! Prometheus counters for a live watch, shared between the capture loop (which writes) and
//! an exposition thread (which renders). Writers use relaxed atomics: the capture loop
//! publishes the analyzer's counters once a second and counts events as they happen, so a
//! scrape never takes a lock the capture loop waits for.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::analyze::RunStats;
use crate::flow::track::{Event, Kind, Outcome};

/// Upper bounds (seconds) of the idle-before-first-probe histogram: around the keep-alive
/// idle times people set and the idle timeouts of common NATs and load balancers.
pub const IDLE_BUCKETS: [f64; 14] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0, 300.0, 350.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
];

const OUTCOMES: [Outcome; 7] = [
    Outcome::Alive,
    Outcome::Probing,
    Outcome::PeerDead,
    Outcome::Closed,
    Outcome::Reset,
    Outcome::Expired,
    Outcome::Evicted,
];

fn outcome_index(o: Outcome) -> usize {
    OUTCOMES.iter().position(|x| *x == o).unwrap_or(0)
}

/// Counters for one `watch`, rendered in the Prometheus text format 0.0.4.
#[derive(Debug, Default)]
pub struct WatchMetrics {
    packets: AtomicU64,
    tcp_packets: AtomicU64,
    drops: AtomicU64,
    keepalives: AtomicU64,
    keepalive_acks: AtomicU64,
    zero_window_probes: AtomicU64,
    unanswered: AtomicU64,
    dead_peers: AtomicU64,
    flows: AtomicU64,
    flows_tracked: AtomicU64,
    flows_probing: AtomicU64,
    evictions: AtomicU64,
    expired: AtomicU64,
    ended: [AtomicU64; OUTCOMES.len()],
    idle_buckets: [AtomicU64; IDLE_BUCKETS.len()],
    idle_count: AtomicU64,
    /// Sum of observed idle times, in microseconds.
    idle_sum_us: AtomicU64,
    start_time: AtomicU64,
}

fn set(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed);
}

fn add(a: &AtomicU64, v: u64) {
    a.fetch_add(v, Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl WatchMetrics {
    /// Counters starting now (`start` is the Unix time of the start).
    #[must_use]
    pub fn new(start: Duration) -> Self {
        let m = Self::default();
        set(&m.start_time, start.as_secs());
        m
    }

    /// Count what an event tells: unanswered probes, dead peers, ended flows, idle times.
    pub fn on_event(&self, e: &Event) {
        match e {
            Event::Packet(p) if p.kind == Kind::Keepalive => {
                // The previous probe of this run went unanswered.
                if p.unanswered_before > 0 {
                    add(&self.unanswered, 1);
                }
                if p.probe_number == 1 {
                    if let Some(idle) = p.idle {
                        self.observe_idle(idle);
                    }
                }
            }
            Event::Packet(_) | Event::IdleLimit(_) => {}
            Event::Flow(f) => {
                // The last probe of an unanswered run has no successor to count it.
                if f.unanswered_at_end > 0 {
                    add(&self.unanswered, 1);
                }
                if f.outcome == Outcome::PeerDead {
                    add(&self.dead_peers, 1);
                }
                add(&self.ended[outcome_index(f.outcome)], 1);
            }
        }
    }

    fn observe_idle(&self, idle: Duration) {
        let s = idle.as_secs_f64();
        for (b, le) in self.idle_buckets.iter().zip(IDLE_BUCKETS) {
            if s <= le {
                add(b, 1);
            }
        }
        add(&self.idle_count, 1);
        add(
            &self.idle_sum_us,
            u64::try_from(idle.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// Publish a run's counters (about once a second, and at the end): `flows_tracked` is
    /// the flow table's size, `probing` the open flows whose latest probes are unanswered.
    pub fn publish(&self, s: &RunStats, flows_tracked: u64, probing: u64) {
        let t = &s.tracker;
        set(&self.packets, s.frames);
        set(&self.tcp_packets, t.tcp_packets);
        set(&self.drops, s.dropped);
        set(&self.keepalives, t.keepalives);
        set(&self.keepalive_acks, t.keepalive_acks);
        set(&self.zero_window_probes, t.zero_window_probes);
        set(&self.flows, t.flows);
        set(&self.evictions, t.evictions);
        set(&self.expired, t.expired);
        set(&self.flows_tracked, flows_tracked);
        set(&self.flows_probing, probing);
    }

    /// The exposition text, every sample labelled with `iface`.
    #[must_use]
    pub fn render(&self, iface: &str) -> String {
        let iface = escape(iface);
        let mut s = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = write!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{iface=\"{iface}\"}} {v}\n"
            );
        };
        one(
            "kaprobe_watch_packets_total",
            "counter",
            "Packets captured (after the kernel filter).",
            get(&self.packets),
        );
        one(
            "kaprobe_watch_tcp_packets_total",
            "counter",
            "TCP packets analysed.",
            get(&self.tcp_packets),
        );
        one(
            "kaprobe_watch_capture_drops_total",
            "counter",
            "Packets the kernel dropped because the capture fell behind.",
            get(&self.drops),
        );
        one(
            "kaprobe_watch_keepalive_probes_total",
            "counter",
            "TCP keep-alive probes seen.",
            get(&self.keepalives),
        );
        one(
            "kaprobe_watch_keepalive_acks_total",
            "counter",
            "ACKs answering keep-alive probes.",
            get(&self.keepalive_acks),
        );
        one(
            "kaprobe_watch_unanswered_probes_total",
            "counter",
            "Keep-alive probes followed by another probe or the flow's end without an answer.",
            get(&self.unanswered),
        );
        one(
            "kaprobe_watch_zero_window_probes_total",
            "counter",
            "Zero-window probes seen.",
            get(&self.zero_window_probes),
        );
        one(
            "kaprobe_watch_dead_peers_total",
            "counter",
            "Flows reset by their prober after unanswered keep-alives: a peer that died silently.",
            get(&self.dead_peers),
        );
        one(
            "kaprobe_watch_flows_total",
            "counter",
            "TCP flows seen.",
            get(&self.flows),
        );
        one(
            "kaprobe_watch_flows_tracked",
            "gauge",
            "TCP flows in the flow table now.",
            get(&self.flows_tracked),
        );
        one(
            "kaprobe_watch_flows_probing",
            "gauge",
            "Open flows whose latest keep-alive probes are unanswered.",
            get(&self.flows_probing),
        );
        one(
            "kaprobe_watch_flow_evictions_total",
            "counter",
            "Flows evicted from a full flow table.",
            get(&self.evictions),
        );
        one(
            "kaprobe_watch_flows_expired_total",
            "counter",
            "Flows dropped after no packet for the tracker's idle timeout.",
            get(&self.expired),
        );
        one(
            "kaprobe_watch_start_time_seconds",
            "gauge",
            "Unix time the watch started.",
            get(&self.start_time),
        );
        let n = "kaprobe_watch_flows_ended_total";
        let _ = write!(
            s,
            "# HELP {n} Flows with keep-alive activity that ended (or were reported open at the end), by outcome.\n# TYPE {n} counter\n"
        );
        for (o, c) in OUTCOMES.iter().zip(&self.ended) {
            let _ = writeln!(
                s,
                "{n}{{iface=\"{iface}\",outcome=\"{}\"}} {}",
                o.as_str(),
                get(c)
            );
        }
        let h = "kaprobe_watch_keepalive_idle_seconds";
        let _ = write!(
            s,
            "# HELP {h} Idle time before a flow's first keep-alive probe (the keep-alive idle setting in effect).\n# TYPE {h} histogram\n"
        );
        for (le, b) in IDLE_BUCKETS.iter().zip(&self.idle_buckets) {
            let _ = writeln!(s, "{h}_bucket{{iface=\"{iface}\",le=\"{le}\"}} {}", get(b));
        }
        let count = get(&self.idle_count);
        let _ = writeln!(s, "{h}_bucket{{iface=\"{iface}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(
            s,
            "{h}_sum{{iface=\"{iface}\"}} {}",
            get(&self.idle_sum_us) as f64 / 1e6
        );
        let _ = writeln!(s, "{h}_count{{iface=\"{iface}\"}} {count}");
        s
    }
}

/// Escape a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once_with_help_and_type() {
        let m = WatchMetrics::new(Duration::from_secs(1_700_000_000));
        m.observe_idle(Duration::from_millis(1500));
        m.observe_idle(Duration::from_secs(400));
        m.publish(&RunStats::default(), 3, 1);
        let text = m.render("e\"th0");
        assert!(text.contains("iface=\"e\\\"th0\""));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(text.contains("kaprobe_watch_flows_tracked{iface=\"e\\\"th0\"} 3"));
        assert!(text.contains(
            "kaprobe_watch_keepalive_idle_seconds_bucket{iface=\"e\\\"th0\",le=\"1\"} 0"
        ));
        assert!(text.contains(
            "kaprobe_watch_keepalive_idle_seconds_bucket{iface=\"e\\\"th0\",le=\"5\"} 1"
        ));
        assert!(text.contains(
            "kaprobe_watch_keepalive_idle_seconds_bucket{iface=\"e\\\"th0\",le=\"600\"} 2"
        ));
        assert!(text.contains("kaprobe_watch_keepalive_idle_seconds_count{iface=\"e\\\"th0\"} 2"));
        assert!(text.contains("kaprobe_watch_keepalive_idle_seconds_sum{iface=\"e\\\"th0\"} 401.5"));
    }

    #[test]
    fn a_dead_peer_counts_its_three_unanswered_probes_once_each() {
        use crate::analyze::{Analyzer, Filter};
        use crate::flow::track::TrackerConfig;
        use crate::io::source::Frame;
        use crate::wire::packet::LinkType;
        let sc = crate::scenario::all()
            .into_iter()
            .find(|s| s.name == "dead_peer")
            .unwrap();
        let m = WatchMetrics::default();
        let mut a = Analyzer::new(Filter::default(), TrackerConfig::default());
        let mut out = Vec::new();
        for (i, f) in sc.frames.iter().enumerate() {
            let frame = Frame {
                ts: f.ts,
                data: &f.ip,
                orig_len: f.ip.len() as u32,
                link: Some(LinkType::RawIp),
            };
            a.frame(&frame, i as u64 + 1, &mut out);
        }
        let stats = a.finish(&mut out);
        for e in &out {
            m.on_event(e);
        }
        m.publish(&stats, 0, 0);
        let text = m.render("lo");
        assert!(
            text.contains("kaprobe_watch_dead_peers_total{iface=\"lo\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kaprobe_watch_unanswered_probes_total{iface=\"lo\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("kaprobe_watch_keepalive_probes_total{iface=\"lo\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("outcome=\"peer_dead\"} 1\n"), "{text}");
        // The first probe came after 2s of idle.
        assert!(
            text.contains("le=\"1\"} 0\n") && text.contains("le=\"5\"} 1\n"),
            "{text}"
        );
    }
}
