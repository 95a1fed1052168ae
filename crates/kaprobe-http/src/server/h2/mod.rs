//! `serve --http2`: one HTTP/2 connection, on the `h2` crate, with the idle timeout, request
//! limit and PING policy of this server, and every GOAWAY it sends counted.
//!
//! - [`wire`]: the connection as `h2` sees it, watched frame by frame (client PINGs for the
//!   PING policy, GOAWAYs both ways, frame boundaries for a raw GOAWAY);
//! - [`answer`]: one stream, answered with the same endpoints as HTTP/1.1;
//! - this module: the connection's life (handshake, streams, idle timer, GOAWAY, the end), and
//!   [`sniff`], which tells an h2c client from an HTTP/1.1 one on a shared plain port.
//!
//! How a connection goes away (RFC 9113 section 6.8): `single` sends one GOAWAY with NO_ERROR
//! and the last stream id once no stream is open (streams that arrive meanwhile are refused
//! with REFUSED_STREAM); `two-phase` sends GOAWAY with 2^31-1 and a PING, then on the PING's
//! answer (or after [`GOAWAY_GRACE`]) GOAWAY with the real last stream id, serving the streams
//! that arrived in between. Then the `h2` crate half-closes (FIN), and the server reads what
//! the client still sends for the linger time (`Config::linger`, 1 s) before closing.

mod answer;
mod wire;

use std::rc::Rc;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};

use super::close::{io_reason, Ending, Reason};
use super::config::{GoawayStyle, GOAWAY_GRACE};
use super::shared::{Ctl, Shared, Signal};
use super::stats::Stats;
use crate::h2wire;
use wire::{Io, PingPolicy, Wire};

/// RFC 9113 section 7 error codes used here.
const PROTOCOL_ERROR: u32 = 0x1;
const FRAME_SIZE_ERROR: u32 = 0x6;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// What the first bytes on a plain port say the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// The bytes so far are the start of the HTTP/2 preface (`PRI * HTTP/2.0...`).
    Http2,
    /// Anything else: HTTP/1.x (which answers what is not HTTP with 400).
    Http1,
}

/// Tell an h2c client (prior knowledge) from an HTTP/1.x one by its first bytes; `None` while
/// they cannot tell yet (fewer than 3 bytes, all of them the start of `PRI`). No HTTP/1.x
/// method is `PRI` (RFC 9113 section 3.4 chose the preface so that HTTP/1.x servers reject
/// it), so `PRI` means HTTP/2, and a preface that goes wrong after it is answered as HTTP/2
/// answers it: GOAWAY PROTOCOL_ERROR.
pub fn sniff(first: &[u8]) -> Option<Sniffed> {
    let n = first.len().min(3);
    if first[..n] != h2wire::PREFACE[..n] {
        Some(Sniffed::Http1)
    } else if n == 3 {
        Some(Sniffed::Http2)
    } else {
        None
    }
}

/// How the connection loop ended.
enum End {
    /// Closed by `h2` (after our GOAWAY, or the client's end): the reason and detail.
    Closed(Reason, &'static str),
    /// Too many PING strikes: GOAWAY ENHANCE_YOUR_CALM "too_many_pings" still to send, with
    /// this last stream id.
    Calm(u32),
    /// A frame of the wrong size: GOAWAY FRAME_SIZE_ERROR still to send, with this last
    /// stream id.
    Malformed(u32, &'static str),
}

/// Wait for a kill signal from the server (shutdown, eviction).
fn killed(ctl: &Ctl) -> impl std::future::Future<Output = Reason> + '_ {
    std::future::poll_fn(move |cx| match ctl.signal() {
        Some(Signal::Kill(r)) => std::task::Poll::Ready(r),
        _ => {
            ctl.register(cx.waker());
            std::task::Poll::Pending
        }
    })
}

/// Serve one HTTP/2 connection (plain or TLS) until it ends, then report it and unregister.
pub(crate) async fn serve<T>(io: T, ctl: Rc<Ctl>, sh: Rc<Shared>)
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    Stats::add(&sh.stats.h2_connections, 1);
    let cfg = sh.cfg();
    let policy = PingPolicy {
        min_interval: cfg.min_ping_interval,
        max_strikes: cfg.max_ping_strikes,
    };
    let wire = Wire::new(io, policy, sh.clone());
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    let handshake = tokio::time::timeout(
        cfg.header_timeout,
        builder.handshake::<_, Bytes>(Io(wire.clone())),
    )
    .await;
    let mut conn = match handshake {
        Ok(Ok(c)) => c,
        Err(_) => {
            return finish(
                wire,
                &ctl,
                &sh,
                Reason::HeaderTimeout,
                "HTTP/2 preface not received in time",
                None,
            )
            .await;
        }
        Ok(Err(e)) => {
            if wire.bad_preface() {
                // RFC 9113 section 3.4: a connection error of type PROTOCOL_ERROR. `h2` just
                // stops; we say so first (its SETTINGS frame has been written whole).
                let goaway = (0, PROTOCOL_ERROR, &b"bad connection preface"[..]);
                return finish(
                    wire,
                    &ctl,
                    &sh,
                    Reason::ProtocolError,
                    "bad connection preface",
                    Some(goaway),
                )
                .await;
            }
            let (r, d) = error_reason(&e, &wire);
            return finish(wire, &ctl, &sh, r, d, None).await;
        }
    };
    let end = run(&mut conn, &wire, &ctl, &sh).await;
    match end {
        End::Closed(r, d) => {
            drop(conn);
            finish(wire, &ctl, &sh, r, d, None).await;
        }
        End::Malformed(last, what) => {
            // `h2` never saw the frame; if it is mid-frame itself, the GOAWAY cannot be
            // written whole, and the connection just closes.
            let boundary = wire.at_frame_boundary();
            drop(conn);
            let goaway = boundary.then_some((last, FRAME_SIZE_ERROR, &b""[..]));
            finish(wire, &ctl, &sh, Reason::ProtocolError, what, goaway).await;
        }
        End::Calm(last) if wire.at_frame_boundary() => {
            drop(conn);
            let goaway = (last, ENHANCE_YOUR_CALM, &b"too_many_pings"[..]);
            finish(wire, &ctl, &sh, Reason::TooManyPings, "", Some(goaway)).await;
        }
        End::Calm(_) => {
            // Mid-frame: let `h2` send its own GOAWAY (without the debug data).
            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            let _ =
                tokio::time::timeout(cfg.linger, std::future::poll_fn(|cx| conn.poll_closed(cx)))
                    .await;
            drop(conn);
            finish(wire, &ctl, &sh, Reason::TooManyPings, "", None).await;
        }
    }
}

/// Why the connection went away, while it goes.
#[derive(Clone, Copy)]
struct Going {
    reason: Reason,
    since: Instant,
    forced: bool,
}

#[allow(clippy::too_many_lines)]
async fn run<T>(
    conn: &mut h2::server::Connection<Io<T>, Bytes>,
    wire: &Wire<T>,
    ctl: &Ctl,
    sh: &Rc<Shared>,
) -> End
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let cfg = sh.cfg();
    let style = cfg.goaway_style;
    let mut streams = FuturesUnordered::new();
    let mut idle_since = Instant::now();
    let mut first = true;
    let mut going: Option<Going> = None;
    // single style: GOAWAY as soon as no stream is open, for this reason
    let mut pending: Option<Reason> = None;
    let mut kill_seen = false;
    let mut last_stream = 0u32;
    let mut served = ctl.served.get();
    // Since when the answers wait to be written before a single GOAWAY.
    let mut flush_since: Option<Instant> = None;
    let idle_for = |first: bool| {
        if first && cfg.keepalive_timeout.is_zero() {
            cfg.header_timeout
        } else {
            cfg.keepalive_timeout
        }
    };
    // One idle timer for the connection's life, moved only when it fires early (the end of
    // every stream moves `idle_since`; re-arming a timer per stream would cost more).
    let idle_timer = sleep_until(idle_since + idle_for(true));
    tokio::pin!(idle_timer);
    loop {
        if let Some(r) = pending {
            // Only once `h2` has written every answer (an abrupt GOAWAY drops what it holds),
            // or when a client that does not read has had --header-timeout to do so.
            let stuck = streams.is_empty()
                && flush_since.get_or_insert_with(Instant::now).elapsed() > cfg.header_timeout;
            if streams.is_empty() && (!conn.has_streams() || stuck) {
                pending = None;
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                going = Some(Going {
                    reason: r,
                    since: Instant::now(),
                    forced: true,
                });
            }
        }
        let idle_armed = going.is_none() && pending.is_none();
        let grace = going
            .filter(|g| !g.forced && streams.is_empty())
            .map(|g| g.since + GOAWAY_GRACE);
        // Answers handed to `h2` but not yet written: look again shortly.
        let flushing = pending.is_some() && streams.is_empty();
        if !flushing {
            flush_since = None;
        }
        let mut start: Option<Reason> = None;
        tokio::select! {
            biased;
            () = wire.notify.notified() => {
                if let Some(what) = wire.malformed.get() {
                    return End::Malformed(last_stream, what);
                }
                if wire.calm.get() {
                    return End::Calm(last_stream);
                }
            }
            r = killed(ctl), if !kill_seen => {
                kill_seen = true;
                if going.is_none() && pending.is_none() {
                    start = Some(r);
                }
            }
            Some(close) = streams.next(), if !streams.is_empty() => {
                wire.open.set(streams.len());
                if streams.is_empty() {
                    idle_since = Instant::now();
                }
                if close && going.is_none() && pending.is_none() {
                    start = Some(Reason::CloseEndpoint);
                }
            }
            a = conn.accept() => match a {
                Some(Ok((req, mut respond))) => {
                    let limit = cfg.max_requests > 0 && served >= cfg.max_requests;
                    let single_going = going.is_some() && style == GoawayStyle::Single;
                    if pending.is_some() || single_going || limit {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        Stats::add(&sh.stats.h2_refused_streams, 1);
                        continue;
                    }
                    last_stream = last_stream.max(u32::from(respond.stream_id()));
                    served += 1;
                    first = false;
                    ctl.served.set(served);
                    Stats::add(&sh.stats.requests, 1);
                    if served > 1 {
                        Stats::add(&sh.stats.reused, 1);
                    }
                    streams.push(answer::answer(req, respond, sh.clone()));
                    wire.open.set(streams.len());
                    if cfg.max_requests > 0 && served == cfg.max_requests && going.is_none() {
                        start = Some(Reason::MaxRequestsGoaway);
                    }
                }
                Some(Err(e)) => {
                    let (r, d) = match going {
                        Some(g) if e.is_go_away() && e.is_remote() => {
                            (g.reason, "client answered with GOAWAY")
                        }
                        Some(g) => (g.reason, ""),
                        None => error_reason(&e, wire),
                    };
                    return End::Closed(r, d);
                }
                None => {
                    let (r, d) = closed_reason(going, wire);
                    return End::Closed(r, d);
                }
            },
            () = &mut idle_timer, if idle_armed => {
                let due = idle_since + idle_for(first);
                let now = Instant::now();
                if !streams.is_empty() {
                    // Streams open: look again one timeout from now at the latest.
                    idle_timer.as_mut().reset(now + idle_for(first));
                } else if now >= due {
                    start = Some(Reason::IdleGoaway);
                } else {
                    idle_timer.as_mut().reset(due);
                }
            }
            () = tokio::time::sleep(std::time::Duration::from_millis(1)), if flushing => {}
            () = sleep_until(grace.unwrap_or_else(Instant::now)), if grace.is_some() => {
                // The client did not answer the PING in time: the final GOAWAY anyway.
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                if let Some(g) = going.as_mut() {
                    g.forced = true;
                }
            }
        }
        if let Some(r) = start {
            match style {
                GoawayStyle::TwoPhase => {
                    conn.graceful_shutdown();
                    going = Some(Going {
                        reason: r,
                        since: Instant::now(),
                        forced: false,
                    });
                }
                GoawayStyle::Single => pending = Some(r),
            }
        }
    }
}

/// The reason (and detail) for a connection `h2` closed without an error.
fn closed_reason<T>(going: Option<Going>, wire: &Wire<T>) -> (Reason, &'static str) {
    match (going, wire.client_goaway.get()) {
        (Some(g), _) => (g.reason, ""),
        (None, Some(0)) => (Reason::ClientGoaway, ""),
        (None, Some(code)) => (Reason::ClientGoaway, h2wire::error_name(code)),
        (None, None) => (Reason::ClientFin, ""),
    }
}

/// The close reason and detail for an error from `h2`.
fn error_reason<T>(e: &h2::Error, wire: &Wire<T>) -> (Reason, &'static str) {
    if let Some(io) = e.get_io() {
        if io.kind() == std::io::ErrorKind::UnexpectedEof {
            return (Reason::ClientFin, "");
        }
        return (io_reason(io), "");
    }
    if e.is_go_away() && e.is_remote() {
        let code = e.reason().map_or(0, u32::from);
        return (
            Reason::ClientGoaway,
            if code == 0 {
                ""
            } else {
                h2wire::error_name(code)
            },
        );
    }
    if let Some(what) = wire.malformed.get() {
        return (Reason::ProtocolError, what);
    }
    let code = e.reason().map_or(PROTOCOL_ERROR, u32::from);
    (Reason::ProtocolError, h2wire::error_name(code))
}

/// Write `goaway` (if any), half-close, read what the client still sends for the linger time,
/// then report the close and unregister.
async fn finish<T>(
    wire: Rc<Wire<T>>,
    ctl: &Ctl,
    sh: &Shared,
    reason: Reason,
    detail: &'static str,
    goaway: Option<(u32, u32, &'static [u8])>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(wire) = Rc::try_unwrap(wire) else {
        sh.report(ctl, reason, detail, Ending::PeerGone);
        sh.unregister(ctl);
        return;
    };
    let goaway = goaway.map(|(last, code, debug)| {
        let frame = h2wire::goaway(last, code, debug);
        wire.sent_goaway(last, code);
        wire.wrote_raw(&frame);
        frame
    });
    let sent_goaway = wire.goaways_out.get() > 0;
    let mut io = wire.into_io();
    let peer_gone = matches!(reason, Reason::ClientRst | Reason::IoError);
    if peer_gone {
        sh.report(ctl, reason, detail, Ending::PeerGone);
        sh.unregister(ctl);
        return;
    }
    if let Some(g) = goaway {
        let _ = tokio::time::timeout(sh.cfg().header_timeout, io.write_all(&g)).await;
    }
    let _ = tokio::time::timeout(sh.cfg().header_timeout, io.shutdown()).await;
    let ending = if sent_goaway || !matches!(reason, Reason::ClientFin | Reason::ClientGoaway) {
        Ending::Fin
    } else {
        Ending::PeerGone
    };
    sh.report(ctl, reason, detail, ending);
    linger(&mut io, sh).await;
    drop(io);
    sh.unregister(ctl);
}

/// After our FIN: read and discard until the client closes or the linger time is over, so
/// unread client bytes do not turn the close into an RST that destroys the GOAWAY.
pub(crate) async fn linger<T: AsyncRead + Unpin>(io: &mut T, sh: &Shared) {
    let mut buf = [0u8; 4096];
    let mut budget: usize = 1 << 20;
    let _ = tokio::time::timeout(sh.cfg().linger, async {
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                return;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_and_its_prefixes_are_http2_and_nothing_else_is() {
        for n in 3..=24 {
            assert_eq!(sniff(&h2wire::PREFACE[..n]), Some(Sniffed::Http2), "{n}");
        }
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"P"), None);
        assert_eq!(sniff(b"PR"), None);
        let mut more = h2wire::PREFACE.to_vec();
        more.extend(h2wire::settings(false, &[]));
        assert_eq!(sniff(&more), Some(Sniffed::Http2));
        assert_eq!(
            sniff(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Some(Sniffed::Http2)
        );
        for h1 in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST / HTTP/1.1\r\n",
            b"PUT",
            b"\x16\x03\x01",
            b"\0",
        ] {
            assert_eq!(sniff(h1), Some(Sniffed::Http1), "{h1:?}");
        }
    }
}
