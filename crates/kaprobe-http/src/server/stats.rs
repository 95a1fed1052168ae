//! Counters behind `/_kaprobe/stats` and `/metrics`.

use std::cell::Cell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Instant;

use super::close::Reason;

/// Server-wide counters (one server thread, so plain cells).
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub open: Cell<u64>,
    pub idle: Cell<u64>,
    pub accepted: Cell<u64>,
    pub requests: Cell<u64>,
    /// Requests that were not the first on their connection.
    pub reused: Cell<u64>,
    pub bad_requests: Cell<u64>,
    pub accept_errors: Cell<u64>,
    /// WebSocket connections open now.
    pub ws_open: Cell<u64>,
    /// Event streams open now.
    pub sse_open: Cell<u64>,
    /// Long polls waiting now.
    pub polls_waiting: Cell<u64>,
    /// Messages published (by /publish or a WebSocket room member).
    pub published: Cell<u64>,
    /// Messages written to push clients (WebSocket frames, events, poll entries).
    pub delivered: Cell<u64>,
    /// Push rooms in memory now (kept up to date by the hub).
    pub rooms: Rc<Cell<u64>>,
    /// Requests refused because a new room would pass --max-rooms.
    pub room_limit_refusals: Cell<u64>,
    /// HTTP/2 connections accepted (h2c or ALPN h2).
    pub h2_connections: Cell<u64>,
    /// PING frames received from HTTP/2 clients (acknowledgements not counted).
    pub h2_pings: Cell<u64>,
    /// PINGs that broke the --min-ping-interval policy.
    pub h2_ping_strikes: Cell<u64>,
    /// GOAWAY frames the server sent.
    pub h2_goaways_sent: Cell<u64>,
    /// Streams refused (RST_STREAM REFUSED_STREAM) after --max-requests.
    pub h2_refused_streams: Cell<u64>,
    /// Connections that completed a TLS handshake.
    pub tls_connections: Cell<u64>,
    pub closes: [Cell<u64>; Reason::ALL.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            open: Cell::new(0),
            idle: Cell::new(0),
            accepted: Cell::new(0),
            requests: Cell::new(0),
            reused: Cell::new(0),
            bad_requests: Cell::new(0),
            accept_errors: Cell::new(0),
            ws_open: Cell::new(0),
            sse_open: Cell::new(0),
            polls_waiting: Cell::new(0),
            published: Cell::new(0),
            delivered: Cell::new(0),
            rooms: Rc::new(Cell::new(0)),
            room_limit_refusals: Cell::new(0),
            h2_connections: Cell::new(0),
            h2_pings: Cell::new(0),
            h2_ping_strikes: Cell::new(0),
            h2_goaways_sent: Cell::new(0),
            h2_refused_streams: Cell::new(0),
            tls_connections: Cell::new(0),
            closes: Default::default(),
        }
    }
}

fn bump(c: &Cell<u64>, by: i64) {
    c.set(c.get().saturating_add_signed(by));
}

impl Stats {
    pub(crate) fn add(c: &Cell<u64>, by: i64) {
        bump(c, by);
    }

    pub(crate) fn closed(&self, r: Reason) {
        bump(&self.closes[r as usize], 1);
    }

    /// Share of requests that reused a connection.
    pub fn reuse_ratio(&self) -> f64 {
        let r = self.requests.get();
        if r == 0 {
            0.0
        } else {
            self.reused.get() as f64 / r as f64
        }
    }

    /// The `/_kaprobe/stats` body.
    pub fn json(&self, shutting_down: bool) -> String {
        let closes: serde_json::Map<String, serde_json::Value> = Reason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), self.closes[*r as usize].get().into()))
            .collect();
        let mut s = serde_json::json!({
            "uptime": self.started.elapsed().as_secs_f64(),
            "connections_open": self.open.get(),
            "connections_idle": self.idle.get(),
            "connections_accepted": self.accepted.get(),
            "requests": self.requests.get(),
            "requests_reused": self.reused.get(),
            "reuse_ratio": self.reuse_ratio(),
            "bad_requests": self.bad_requests.get(),
            "accept_errors": self.accept_errors.get(),
            "ws_open": self.ws_open.get(),
            "sse_open": self.sse_open.get(),
            "polls_waiting": self.polls_waiting.get(),
            "published": self.published.get(),
            "delivered": self.delivered.get(),
            "rooms": self.rooms.get(),
            "room_limit_refusals": self.room_limit_refusals.get(),
            "h2_connections": self.h2_connections.get(),
            "h2_pings": self.h2_pings.get(),
            "h2_ping_strikes": self.h2_ping_strikes.get(),
            "h2_goaways_sent": self.h2_goaways_sent.get(),
            "h2_refused_streams": self.h2_refused_streams.get(),
            "tls_connections": self.tls_connections.get(),
            "closes": closes,
            "shutting_down": shutting_down,
        })
        .to_string();
        s.push('\n');
        s
    }

    /// The `/metrics` body (Prometheus text format 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut s = String::with_capacity(2048);
        let mut g = |name: &str, kind: &str, help: &str, v: String| {
            let _ = write!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        g(
            "kaprobe_connections_open",
            "gauge",
            "Connections open now.",
            self.open.get().to_string(),
        );
        g(
            "kaprobe_connections_idle",
            "gauge",
            "Connections idle between requests now.",
            self.idle.get().to_string(),
        );
        g(
            "kaprobe_connections_accepted_total",
            "counter",
            "Connections accepted.",
            self.accepted.get().to_string(),
        );
        g(
            "kaprobe_requests_total",
            "counter",
            "Requests answered.",
            self.requests.get().to_string(),
        );
        g(
            "kaprobe_requests_reused_total",
            "counter",
            "Requests that reused a connection.",
            self.reused.get().to_string(),
        );
        g(
            "kaprobe_reuse_ratio",
            "gauge",
            "Share of requests that reused a connection.",
            format!("{}", self.reuse_ratio()),
        );
        g(
            "kaprobe_bad_requests_total",
            "counter",
            "Requests the server itself answered with a 4xx (not /status/4xx).",
            self.bad_requests.get().to_string(),
        );
        g(
            "kaprobe_ws_open",
            "gauge",
            "WebSocket connections open now.",
            self.ws_open.get().to_string(),
        );
        g(
            "kaprobe_sse_open",
            "gauge",
            "Event streams open now.",
            self.sse_open.get().to_string(),
        );
        g(
            "kaprobe_polls_waiting",
            "gauge",
            "Long polls waiting now.",
            self.polls_waiting.get().to_string(),
        );
        g(
            "kaprobe_published_total",
            "counter",
            "Messages published to rooms.",
            self.published.get().to_string(),
        );
        g(
            "kaprobe_delivered_total",
            "counter",
            "Messages written to push clients.",
            self.delivered.get().to_string(),
        );
        g(
            "kaprobe_push_rooms",
            "gauge",
            "Push rooms in memory now.",
            self.rooms.get().to_string(),
        );
        g(
            "kaprobe_push_room_limit_refusals_total",
            "counter",
            "Requests refused with 503 because a new room would pass --max-rooms.",
            self.room_limit_refusals.get().to_string(),
        );
        for (name, help, c) in [
            (
                "kaprobe_h2_connections_total",
                "HTTP/2 connections accepted (h2c or ALPN h2).",
                &self.h2_connections,
            ),
            (
                "kaprobe_h2_pings_total",
                "PING frames received from HTTP/2 clients (not acknowledgements).",
                &self.h2_pings,
            ),
            (
                "kaprobe_h2_ping_strikes_total",
                "Client PINGs sooner than --min-ping-interval while no stream was open.",
                &self.h2_ping_strikes,
            ),
            (
                "kaprobe_h2_goaways_sent_total",
                "HTTP/2 GOAWAY frames sent.",
                &self.h2_goaways_sent,
            ),
            (
                "kaprobe_h2_refused_streams_total",
                "HTTP/2 streams refused (REFUSED_STREAM) after --max-requests.",
                &self.h2_refused_streams,
            ),
            (
                "kaprobe_tls_connections_total",
                "Connections that completed a TLS handshake.",
                &self.tls_connections,
            ),
        ] {
            g(name, "counter", help, c.get().to_string());
        }
        s.push_str("# HELP kaprobe_connection_closes_total Connections closed, by reason.\n# TYPE kaprobe_connection_closes_total counter\n");
        for r in Reason::ALL {
            let _ = writeln!(
                s,
                "kaprobe_connection_closes_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.closes[r as usize].get()
            );
        }
        s
    }
}
