//! Server settings: what `kaprobe serve` passes in.

use std::time::Duration;

/// When to send the `Keep-Alive: timeout=N, max=M` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertise {
    Always,
    /// Only when the request sent `Connection: keep-alive` or a `Keep-Alive` field.
    WhenAsked,
    Never,
}

/// How an idle connection is ended when its keep-alive timeout fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseStyle {
    /// Half-close (FIN), drain briefly, close.
    Fin,
    /// Abortive close (SO_LINGER 0): the peer sees RST.
    Rst,
}

impl CloseStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
        }
    }
}

/// Server settings (see `kaprobe serve --help`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Idle time after a response before the connection is closed (0: no keep-alive).
    pub keepalive_timeout: Duration,
    /// Requests per connection; the last response says `Connection: close` (0: unlimited).
    pub max_requests: u64,
    pub advertise: Advertise,
    /// Announce this timeout in `Keep-Alive` instead of the real one.
    pub advertise_timeout: Option<Duration>,
    /// Time allowed for a started request head to complete (and for each body read).
    pub header_timeout: Duration,
    pub close_style: CloseStyle,
    /// Connection cap (0: none). At the cap the oldest idle connection is closed.
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// On SIGINT/SIGTERM, how long in-flight requests get before the server exits.
    pub drain_timeout: Duration,
    /// After a half-close, how long to read and discard what the client still sends.
    pub linger: Duration,
    /// Server ping interval on WebSocket connections (zero: off).
    pub ws_ping: Duration,
    /// Heartbeat comment interval on event streams (zero: off).
    pub sse_heartbeat: Duration,
    /// Largest WebSocket message (and frame) accepted; larger ones get close 1009.
    pub ws_max_message: usize,
    /// Messages kept in memory per room.
    pub store_limit: usize,
    /// SQLite file keeping every published message (None: memory only).
    pub store: Option<std::path::PathBuf>,
    /// Push rooms in memory at most; a request for a new room beyond it gets 503.
    pub max_rooms: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            keepalive_timeout: Duration::from_secs(5),
            max_requests: 100,
            advertise: Advertise::Always,
            advertise_timeout: None,
            header_timeout: Duration::from_secs(10),
            close_style: CloseStyle::Fin,
            max_connections: 0,
            max_header_bytes: 8192,
            max_body_bytes: 10 << 20,
            drain_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            ws_ping: Duration::ZERO,
            sse_heartbeat: Duration::ZERO,
            ws_max_message: 1 << 20,
            store_limit: 10_000,
            store: None,
            max_rooms: 10_000,
        }
    }
}
