//! Server settings: what `kaprobe serve` passes in.

use std::time::Duration;

use crate::Error;

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

/// How an HTTP/2 connection is told to go away (RFC 9113 section 6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoawayStyle {
    /// One GOAWAY with NO_ERROR and the last stream id the server processed.
    Single,
    /// GOAWAY with last stream id 2^31-1, a PING round trip (or [`GOAWAY_GRACE`] without an
    /// answer), then GOAWAY with the real last stream id.
    TwoPhase,
}

impl GoawayStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::TwoPhase => "two-phase",
        }
    }
}

/// Two-phase GOAWAY: how long to wait for the PING answer before the final GOAWAY anyway.
pub const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// A certificate chain and its private key, both PEM files (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
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
    /// Speak HTTP/2: h2c with prior knowledge on plain listeners (HTTP/1.1 still answered on
    /// the same port), ALPN `h2` with TLS.
    pub http2: bool,
    /// HTTP/2: how GOAWAY is sent at the idle timeout, --max-requests and shutdown.
    pub goaway_style: GoawayStyle,
    /// HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// HTTP/2: a client PING sooner than this after the previous one, while no stream is
    /// open, is a strike (zero: no PING policy).
    pub min_ping_interval: Duration,
    /// HTTP/2: strikes tolerated; one more gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings"
    /// (0: any number, as in gRPC).
    pub max_ping_strikes: u32,
    /// Serve TLS on every listener with this certificate and key.
    pub tls: Option<TlsFiles>,
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
            http2: false,
            goaway_style: GoawayStyle::Single,
            max_concurrent_streams: 128,
            min_ping_interval: Duration::ZERO,
            max_ping_strikes: 2,
            tls: None,
        }
    }
}

/// Longest duration any timeout may be set to.
const DAY: Duration = Duration::from_secs(86_400);

/// `{flag} {v} is out of range: use {lo}..={hi}` unless `v` is in `range`.
fn in_range<T: PartialOrd + std::fmt::Display>(
    flag: &str,
    v: &T,
    range: &std::ops::RangeInclusive<T>,
) -> Result<(), Error> {
    if range.contains(v) {
        return Ok(());
    }
    Err(Error::InvalidOption(format!(
        "{flag} {v} is out of range: use {}..={}",
        range.start(),
        range.end()
    )))
}

/// As [`in_range`] for durations, written as `kaprobe` writes them (`250ms`, `1d`).
fn in_time_range(flag: &str, v: Duration, lo: Duration, hi: Duration) -> Result<(), Error> {
    if v < lo || v > hi {
        let human = kaprobe_sock::fmt::duration;
        return Err(Error::InvalidOption(format!(
            "{flag} {} is out of range: use {}..={}",
            human(v),
            human(lo),
            human(hi)
        )));
    }
    Ok(())
}

impl Config {
    /// Check every setting against its range, in the order `kaprobe serve` lists its flags;
    /// the first one out of range is the error, naming the flag, the value and the range.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] with the sentence for the user.
    pub fn validate(&self) -> Result<(), Error> {
        let ms = Duration::from_millis(1);
        in_time_range(
            "--keepalive-timeout",
            self.keepalive_timeout,
            Duration::ZERO,
            DAY,
        )?;
        in_time_range("--header-timeout", self.header_timeout, ms, DAY)?;
        in_time_range("--drain-timeout", self.drain_timeout, Duration::ZERO, DAY)?;
        if let Some(a) = self.advertise_timeout {
            in_time_range("--advertise-timeout", a, Duration::ZERO, DAY)?;
        }
        let hour = Duration::from_secs(3600);
        for (flag, v) in [
            ("--ws-ping", self.ws_ping),
            ("--sse-heartbeat", self.sse_heartbeat),
        ] {
            if !v.is_zero() && !(Duration::from_millis(10)..=hour).contains(&v) {
                return Err(Error::InvalidOption(format!(
                    "{flag} {} is out of range: use 0 (off) or 10ms..=1h",
                    kaprobe_sock::fmt::duration(v)
                )));
            }
        }
        in_range("--ws-max-message", &self.ws_max_message, &(125..=64 << 20))?;
        in_range("--store-limit", &self.store_limit, &(1..=10_000_000))?;
        in_range("--max-rooms", &self.max_rooms, &(1..=1_000_000))?;
        in_range(
            "--max-concurrent-streams",
            &self.max_concurrent_streams,
            &(0..=0x7fff_ffff),
        )?;
        let v = self.min_ping_interval;
        if !v.is_zero() && !(ms..=DAY).contains(&v) {
            return Err(Error::InvalidOption(format!(
                "--min-ping-interval {} is out of range: use 0 (off) or 1ms..=1d",
                kaprobe_sock::fmt::duration(v)
            )));
        }
        in_range("--max-ping-strikes", &self.max_ping_strikes, &(0..=1000))?;
        if !(256..=1 << 20).contains(&self.max_header_bytes) {
            return Err(Error::InvalidOption(format!(
                "--max-header-bytes {} is out of range: use 256..=1048576",
                self.max_header_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(cfg: Config) -> String {
        cfg.validate().unwrap_err().to_string()
    }

    #[test]
    fn default_config_is_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn out_of_range_settings_name_flag_value_and_range() {
        let d = Config::default;
        assert_eq!(
            err(Config {
                header_timeout: Duration::ZERO,
                ..d()
            }),
            "--header-timeout 0s is out of range: use 1ms..=1d"
        );
        assert_eq!(
            err(Config {
                keepalive_timeout: Duration::from_secs(86_401),
                ..d()
            }),
            format!(
                "--keepalive-timeout {} is out of range: use 0s..=1d",
                kaprobe_sock::fmt::duration(Duration::from_secs(86_401))
            )
        );
        assert_eq!(
            err(Config {
                ws_ping: Duration::from_millis(5),
                ..d()
            }),
            "--ws-ping 5ms is out of range: use 0 (off) or 10ms..=1h"
        );
        assert_eq!(
            err(Config {
                ws_max_message: 124,
                ..d()
            }),
            "--ws-max-message 124 is out of range: use 125..=67108864"
        );
        assert_eq!(
            err(Config {
                max_rooms: 0,
                ..d()
            }),
            "--max-rooms 0 is out of range: use 1..=1000000"
        );
        assert_eq!(
            err(Config {
                max_header_bytes: 100,
                ..d()
            }),
            "--max-header-bytes 100 is out of range: use 256..=1048576"
        );
        assert_eq!(
            err(Config {
                max_concurrent_streams: 0x8000_0000,
                ..d()
            }),
            "--max-concurrent-streams 2147483648 is out of range: use 0..=2147483647"
        );
        assert_eq!(
            err(Config {
                min_ping_interval: Duration::from_micros(10),
                ..d()
            }),
            "--min-ping-interval 10us is out of range: use 0 (off) or 1ms..=1d"
        );
        assert_eq!(
            err(Config {
                max_ping_strikes: 1001,
                ..d()
            }),
            "--max-ping-strikes 1001 is out of range: use 0..=1000"
        );
    }
}
