//! `probe` for push channels: how long an idle WebSocket or Server-Sent Events stream lives,
//! how it ends, and the longest heartbeat interval that keeps it alive.
//!
//! One connection is opened and left idle until something ends it (a WebSocket close frame,
//! a bare FIN, an RST, the clean end of an event stream) or the watch runs out. When it died
//! after `T`, a second connection with a heartbeat of about `T/2` (WebSocket: client pings;
//! SSE: the server's heartbeat, asked for with `?heartbeat=D`, a `kaprobe serve` parameter)
//! is watched for a few lifetimes to confirm that the heartbeat keeps it alive.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;

mod open;
mod verdict;
mod watch;

use open::open_channel;
use verdict::conclude;
pub use verdict::say_interval;
use watch::watch;

use super::conn::{Connector, Io, OpenTimes};
use super::target::Target;
use super::tls::TlsOptions;
pub use crate::h1::{SseDecoder, SseItem};
use crate::Error;

/// Which push channel to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    /// RFC 6455 WebSocket (`ws://`, `wss://`).
    Websocket,
    /// Server-Sent Events (`text/event-stream` over http:// or https://).
    Sse,
}

impl PushKind {
    fn noun(self) -> &'static str {
        match self {
            PushKind::Websocket => "WebSockets",
            PushKind::Sse => "event streams",
        }
    }
}

/// What the push prober does and how long it may take.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub kind: PushKind,
    /// Upper bound on the whole probe.
    pub max_wait: Duration,
    /// Force this heartbeat (WebSocket: client ping; SSE: `?heartbeat=D`) and watch only one
    /// connection with it.
    pub heartbeat: Option<Duration>,
    /// Watch each connection at most this long.
    pub hold: Option<Duration>,
    pub tls: TlsOptions,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            kind: PushKind::Websocket,
            max_wait: Duration::from_secs(300),
            heartbeat: None,
            hold: None,
            tls: TlsOptions::default(),
        }
    }
}

/// How a watched connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushEnd {
    /// WebSocket: the peer sent a close frame.
    CloseFrame,
    /// SSE: the response ended cleanly (the last chunk of a chunked body).
    StreamEnd,
    /// The TCP connection ended with FIN, without a close frame or a clean end.
    Fin,
    /// The connection was reset (RST).
    Rst,
    /// Some other error ended it.
    Error,
    /// Still open when the watch ended.
    Alive,
}

impl PushEnd {
    /// A few words for tables and verdicts.
    pub fn describe(self, kind: PushKind) -> &'static str {
        match (self, kind) {
            (PushEnd::CloseFrame, _) => "close frame",
            (PushEnd::StreamEnd, _) => "clean end of the stream",
            (PushEnd::Fin, PushKind::Websocket) => "FIN without a close frame",
            (PushEnd::Fin, PushKind::Sse) => "FIN mid-stream",
            (PushEnd::Rst, _) => "RST",
            (PushEnd::Error, _) => "error",
            (PushEnd::Alive, _) => "still open",
        }
    }
}

/// One watched connection.
#[derive(Debug, Clone, Serialize)]
pub struct PushWatch {
    /// The heartbeat used on it (client ping or requested server heartbeat), seconds.
    pub heartbeat_s: Option<f64>,
    /// From the end of the handshake to the end (or to the end of the watch).
    pub lasted_s: f64,
    pub end: PushEnd,
    /// Seconds without any byte from the peer before the end.
    pub silent_before_end_s: f64,
    /// Longest time without any byte from the peer.
    pub longest_silence_s: f64,
    /// WebSocket close frame code and reason.
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    /// The error that ended it (`end` = `error`).
    pub error: Option<String>,
    /// WebSocket pings the prober sent, pongs it got back, pings the server sent.
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub server_pings: u64,
    /// SSE comment lines (`: heartbeat`) received.
    pub heartbeats_received: u64,
    /// Messages (WebSocket data frames, SSE events) received.
    pub messages: u64,
}

impl PushWatch {
    fn new(heartbeat: Option<Duration>) -> Self {
        Self {
            heartbeat_s: heartbeat.map(|d| d.as_secs_f64()),
            lasted_s: 0.0,
            end: PushEnd::Alive,
            silent_before_end_s: 0.0,
            longest_silence_s: 0.0,
            close_code: None,
            close_reason: None,
            error: None,
            pings_sent: 0,
            pongs_received: 0,
            server_pings: 0,
            heartbeats_received: 0,
            messages: 0,
        }
    }

    fn died(&self) -> bool {
        !matches!(self.end, PushEnd::Alive | PushEnd::Error)
    }
}

/// The push prober's answer.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub url: String,
    pub kind: PushKind,
    /// The address connected to.
    pub address: String,
    /// Handshake status (101 for WebSocket, 200 for SSE).
    pub status: u16,
    /// The handshake's `Server` header (a proxy in front usually puts its own name there).
    pub server: Option<String>,
    pub connect_s: f64,
    pub tls_handshake_s: Option<f64>,
    /// From the request to the handshake's answer.
    pub handshake_s: f64,
    /// The connection left idle (absent when `--heartbeat` forced one).
    pub idle: Option<PushWatch>,
    /// The connection with a heartbeat (the check after an idle death, or `--heartbeat`).
    pub heartbeat: Option<PushWatch>,
    /// How long an idle connection lived, when something ended it.
    pub idle_lifetime_s: Option<f64>,
    /// The longest heartbeat interval that keeps the channel alive (measured or derived).
    pub heartbeat_max_s: Option<f64>,
    /// Who ended the idle connection, as far as can be told.
    pub cut_by: Option<String>,
    pub verdict: String,
    pub elapsed_s: f64,
}

/// An open channel, right after its handshake.
enum Channel {
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
    Sse {
        io: Box<dyn Io>,
        rest: Vec<u8>,
        chunked: bool,
    },
}

struct Opened {
    channel: Channel,
    times: OpenTimes,
    handshake: Duration,
    status: u16,
    server: Option<String>,
}

impl PushOptions {
    /// Check every option against its range.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the flag, the value and the range.
    pub fn validate(&self) -> Result<(), Error> {
        super::check_max_wait(self.max_wait)?;
        if let Some(h) = self.heartbeat {
            super::check_duration("--heartbeat", h, 10, 3_600_000, "10ms..=1h")?;
        }
        if let Some(h) = self.hold {
            super::check_duration("--hold", h, 1_000, 86_400_000, "1s..=24h")?;
        }
        Ok(())
    }
}

/// Probe a push channel at `url` (`ws://`, `wss://`, or http(s):// for SSE).
pub async fn push_probe(url: &str, opts: &PushOptions) -> Result<PushReport, Error> {
    let start = Instant::now();
    let deadline = start + opts.max_wait;
    let target = push_target(url, opts.kind)?;
    opts.validate()?;
    let open_timeout = opts.max_wait.min(Duration::from_secs(10));
    let mut connector = Connector::new(target.clone(), &opts.tls, open_timeout).await?;
    let watch_len = |now: Instant| {
        let left = deadline.saturating_duration_since(now);
        opts.hold.map_or(left, |h| h.min(left))
    };
    let mut path = target.path.clone();
    if opts.kind == PushKind::Sse {
        if let Some(h) = opts.heartbeat {
            path = with_heartbeat(&path, h);
        }
    }
    let first = open_channel(&mut connector, opts.kind, &path, open_timeout, true).await?;
    let mut report = PushReport {
        url: url.to_string(),
        kind: opts.kind,
        address: connector.addr.to_string(),
        status: first.status,
        server: first.server.clone(),
        connect_s: first.times.connect.as_secs_f64(),
        tls_handshake_s: first.times.tls_handshake.map(|d| d.as_secs_f64()),
        handshake_s: first.handshake.as_secs_f64(),
        idle: None,
        heartbeat: None,
        idle_lifetime_s: None,
        heartbeat_max_s: None,
        cut_by: None,
        verdict: String::new(),
        elapsed_s: 0.0,
    };
    if let Some(h) = opts.heartbeat {
        let until = Instant::now() + watch_len(Instant::now());
        let w = watch(first.channel, opts.kind, Some(h), until).await;
        report.heartbeat = Some(w);
    } else {
        let until = Instant::now() + watch_len(Instant::now());
        let idle = watch(first.channel, opts.kind, None, until).await;
        if idle.died() {
            let t = Duration::from_secs_f64(idle.lasted_s);
            report.idle_lifetime_s = Some(idle.lasted_s);
            let h = half_heartbeat(t);
            // Watch a few lifetimes, at least a few seconds, within what is left.
            let want = (t * 3).max(t + Duration::from_secs(3));
            let len = opts.hold.map_or(want, |x| x.min(want));
            let left = deadline.saturating_duration_since(Instant::now());
            if left >= t + Duration::from_secs(1) {
                let p = if opts.kind == PushKind::Sse {
                    with_heartbeat(&target.path, h)
                } else {
                    target.path.clone()
                };
                match open_channel(&mut connector, opts.kind, &p, open_timeout, false).await {
                    Ok(o) => {
                        let until = Instant::now() + len.min(left);
                        report.heartbeat = Some(watch(o.channel, opts.kind, Some(h), until).await);
                    }
                    Err(e) => {
                        let mut w = PushWatch::new(Some(h));
                        w.end = PushEnd::Error;
                        w.error = Some(e.to_string());
                        report.heartbeat = Some(w);
                    }
                }
            }
        }
        report.idle = Some(idle);
    }
    conclude(&mut report);
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Parse `ws://`/`wss://` (as http/https) or an http(s) URL for SSE.
pub fn push_target(url: &str, kind: PushKind) -> Result<Target, Error> {
    let trimmed = url.trim();
    let lower = trimmed.to_ascii_lowercase();
    let (is_ws, rest) = if let Some(r) = lower.strip_prefix("ws://").map(|_| &trimmed[5..]) {
        (true, format!("http://{r}"))
    } else if let Some(r) = lower.strip_prefix("wss://").map(|_| &trimmed[6..]) {
        (true, format!("https://{r}"))
    } else {
        (false, trimmed.to_string())
    };
    match (kind, is_ws) {
        (PushKind::Sse, true) => {
            return Err(Error::BadUrl {
                url: url.to_string(),
                reason: "--sse takes an http:// or https:// URL; ws:// and wss:// are WebSockets"
                    .into(),
            })
        }
        (PushKind::Websocket, false) => {
            return Err(Error::BadUrl {
                url: url.to_string(),
                reason: "a WebSocket URL starts with ws:// or wss://".into(),
            })
        }
        _ => {}
    }
    let mut t = Target::parse(&rest).map_err(|e| match e {
        Error::BadUrl { reason, .. } => Error::BadUrl {
            url: url.to_string(),
            reason,
        },
        other => other,
    })?;
    t.url = url.to_string();
    Ok(t)
}

/// `path` with `heartbeat=D` added to its query (a `kaprobe serve` parameter).
fn with_heartbeat(path: &str, d: Duration) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}heartbeat={}ms", d.as_millis().max(1))
}

/// About half a lifetime, rounded to a readable value (at most two thirds of it).
pub fn half_heartbeat(lifetime: Duration) -> Duration {
    let h = lifetime.as_secs_f64() / 2.0;
    let rounded = if h >= 10.0 {
        h.round()
    } else if h >= 0.75 {
        (h * 2.0).round() / 2.0
    } else {
        ((h * 10.0).round() / 10.0).max(0.1)
    };
    Duration::from_secs_f64(rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_about_half_the_lifetime_rounded() {
        // A timer of 2s seen a little early from the client still gives 1s.
        assert_eq!(
            half_heartbeat(Duration::from_millis(1980)),
            Duration::from_secs(1)
        );
        assert_eq!(
            half_heartbeat(Duration::from_millis(1500)),
            Duration::from_secs(1)
        );
        assert_eq!(
            half_heartbeat(Duration::from_millis(2010)),
            Duration::from_secs(1)
        );
        assert_eq!(
            half_heartbeat(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(
            half_heartbeat(Duration::from_secs(5)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            half_heartbeat(Duration::from_millis(500)),
            Duration::from_millis(300)
        );
        assert_eq!(
            half_heartbeat(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
        assert_eq!(say_interval(Duration::from_secs(30)), "30s");
        assert_eq!(say_interval(Duration::from_millis(2500)), "2.5s");
        assert_eq!(say_interval(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn ws_and_sse_urls_are_told_apart() {
        let t = push_target("ws://127.0.0.1:9/ws?room=a", PushKind::Websocket).unwrap();
        assert_eq!((t.port, t.path.as_str()), (9, "/ws?room=a"));
        assert_eq!(t.url, "ws://127.0.0.1:9/ws?room=a");
        let t = push_target("WSS://h/ws", PushKind::Websocket).unwrap();
        assert_eq!(t.port, 443);
        assert!(push_target("http://h/sse", PushKind::Websocket).is_err());
        assert!(push_target("ws://h/sse", PushKind::Sse).is_err());
        assert!(matches!(
            push_target("ws://h:0/", PushKind::Websocket),
            Err(Error::BadUrl { .. })
        ));
        assert_eq!(
            with_heartbeat("/sse", Duration::from_secs(1)),
            "/sse?heartbeat=1000ms"
        );
        assert_eq!(
            with_heartbeat("/sse?room=a", Duration::from_millis(5)),
            "/sse?room=a&heartbeat=5ms"
        );
    }

    fn idle_died(end: PushEnd, lasted: f64) -> PushWatch {
        let mut w = PushWatch::new(None);
        w.end = end;
        w.lasted_s = lasted;
        w
    }

    #[test]
    fn verdict_names_nginx_the_lifetime_and_the_checked_heartbeat() {
        let mut check = PushWatch::new(Some(Duration::from_secs(1)));
        check.lasted_s = 6.0;
        let mut r = PushReport {
            url: "ws://x/ws".into(),
            kind: PushKind::Websocket,
            address: "127.0.0.1:1".into(),
            status: 101,
            server: Some("nginx/1.22.1".into()),
            connect_s: 0.0,
            tls_handshake_s: None,
            handshake_s: 0.0,
            idle: Some(idle_died(PushEnd::Fin, 2.004)),
            heartbeat: Some(check),
            idle_lifetime_s: Some(2.004),
            heartbeat_max_s: None,
            cut_by: None,
            verdict: String::new(),
            elapsed_s: 0.0,
        };
        conclude(&mut r);
        assert_eq!(
            r.verdict,
            "nginx (proxy_read_timeout?) cuts idle WebSockets after 2.0s; ping every 1s or less (checked: with 1s pings it lived 6.0s)"
        );
        assert_eq!(r.heartbeat_max_s, Some(1.0));
        // A close frame names its code and reason.
        r.idle = Some({
            let mut w = idle_died(PushEnd::CloseFrame, 3.0);
            w.close_code = Some(1001);
            w.close_reason = Some("pong timeout".into());
            w
        });
        conclude(&mut r);
        assert!(
            r.verdict
                .starts_with("the server (close frame, code 1001, \"pong timeout\") cuts idle WebSockets after 3.0s"),
            "{}",
            r.verdict
        );
    }
}
