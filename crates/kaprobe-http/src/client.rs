//! The keep-alive prober: measures what a server or proxy does with idle connections.
//!
//! - [`target`]: the URL (http/https) a probe aims at;
//! - [`conn`]: one TCP/TLS connection speaking HTTP/1.x, and the idle watch;
//! - [`max_wait`]: `--max-wait` presets and the known idle limits a probe did not rule out;
//! - [`probe`]: advertised vs observed keep-alive behaviour, with a verdict;
//! - [`h2`]: the same over HTTP/2 (h2c and TLS with ALPN h2), gRPC's PING policy, the race;
//! - [`race`]: the reuse race: requests on connections idled around a given time;
//! - [`request`]: curl-style request and connection options (`-H`, `-X`, `--data`,
//!   `--resolve`, `--connect-to`) for probe and race;
//! - [`push`]: push channels (WebSocket, SSE): idle lifetime, how they end, heartbeat needed;
//! - [`push_bench`]: bytes and latency per delivered message for polling, long polling, SSE, WebSocket.

pub mod conn;
pub mod h2;
pub mod max_wait;
pub mod probe;
pub mod push;
pub mod push_bench;
pub mod race;
pub mod request;
pub mod target;
pub mod tls;

pub use conn::{Connector, HttpVersion, KeepAliveHeader, Response};
pub use probe::{probe, EndedBy, ObservedClose, PipelineResult, ProbeOptions, ProbeReport};
pub use push::{push_probe, PushEnd, PushKind, PushOptions, PushReport, PushWatch};
pub use race::{race, Bin, RaceOptions, RaceReport};
pub use request::{ConnectTo, Header, RequestOptions, Resolve};
pub use target::{Scheme, Target};
pub use tls::TlsOptions;

/// `--max-wait` of every prober: 1s..=24h.
pub(crate) fn check_max_wait(d: std::time::Duration) -> Result<(), crate::Error> {
    check_duration("--max-wait", d, 1_000, 86_400_000, "1s..=24h")
}

/// A duration flag within `lo_ms..=hi_ms`, or `--flag D is out of range: use RANGE`.
pub(crate) fn check_duration(
    flag: &str,
    d: std::time::Duration,
    lo_ms: u64,
    hi_ms: u64,
    range: &str,
) -> Result<(), crate::Error> {
    let ms = d.as_millis();
    if ms < u128::from(lo_ms) || ms > u128::from(hi_ms) || (lo_ms > 0 && d.is_zero()) {
        return Err(crate::Error::InvalidOption(format!(
            "{flag} {} is out of range: use {range}",
            kaprobe_sock::fmt::duration(d)
        )));
    }
    Ok(())
}

/// A count flag within `range`, or `--flag N is out of range: use A..=B`.
pub(crate) fn check_count<T: PartialOrd + std::fmt::Display + Copy>(
    flag: &str,
    v: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), crate::Error> {
    if range.contains(&v) {
        return Ok(());
    }
    Err(crate::Error::InvalidOption(format!(
        "{flag} {v} is out of range: use {}..={}",
        range.start(),
        range.end()
    )))
}
