//! Answers and timers every push endpoint uses: the response head, bounded writes, complete
//! answers that keep or close the connection, and the shutdown and interval futures.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::store;
use crate::server::close::{io_reason, Reason};
use crate::server::proto::write_head_start;
use crate::server::shared::{Ctl, Shared, Signal};
use crate::server::stats::Stats;

/// How a push connection continues.
pub(crate) enum After {
    /// Answered: back to HTTP keep-alive, with the input already read beyond the request.
    Http(TcpStream, Vec<u8>),
    /// Close with a FIN (after the answer) for this reason.
    Fin(TcpStream, Reason, &'static str),
    /// The peer is gone: just close.
    Gone(TcpStream, Reason, &'static str),
    /// Closed and reported here.
    Done,
}

pub(super) const TEXT: &[u8] = b"text/plain";
pub(super) const JSON: &[u8] = b"application/json";

pub(super) fn head(out: &mut Vec<u8>, status: u16, ctype: &[u8], len: Option<usize>, extra: &[u8]) {
    let mut num = itoa::Buffer::new();
    write_head_start(out, status, ctype);
    out.extend_from_slice(b"\r\n");
    if let Some(len) = len {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(num.format(len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
}

/// Write all of `buf`, giving a client that does not read the header timeout.
pub(super) async fn write_all(
    stream: &mut TcpStream,
    buf: &[u8],
    sh: &Shared,
) -> Result<(), Reason> {
    match timeout(sh.cfg().header_timeout, stream.write_all(buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io_reason(&e)),
        Err(_) => Err(Reason::SendTimeout),
    }
}

/// Send a complete answer; keep the connection for more requests unless `close` (or the
/// request, the request limit or a shutdown) says otherwise.
#[allow(clippy::too_many_arguments)]
pub(super) async fn respond(
    mut stream: TcpStream,
    sh: &Shared,
    status: u16,
    ctype: &[u8],
    body: &[u8],
    extra: &[u8],
    close: Option<Reason>,
    minor: u8,
    pending: Vec<u8>,
    detail: &'static str,
) -> After {
    let mut out = Vec::with_capacity(256 + body.len());
    head(&mut out, status, ctype, Some(body.len()), extra);
    if close.is_some() {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    if let Err(r) = write_all(&mut stream, &out, sh).await {
        return After::Gone(stream, r, "");
    }
    match close {
        Some(r) => After::Fin(stream, r, detail),
        None => After::Http(stream, pending),
    }
}

/// Resolves when the server asks this connection to close (shutdown).
pub(super) fn killed(ctl: &Ctl) -> impl std::future::Future<Output = Reason> + '_ {
    std::future::poll_fn(move |cx| {
        if let Some(Signal::Kill(r)) = ctl.signal() {
            return std::task::Poll::Ready(r);
        }
        ctl.register(cx.waker());
        std::task::Poll::Pending
    })
}

/// A tick every `every`, or never when it is zero.
pub(super) async fn tick(iv: &mut Option<tokio::time::Interval>) {
    match iv {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub(super) fn interval(every: Duration) -> Option<tokio::time::Interval> {
    if every.is_zero() {
        return None;
    }
    let mut i = tokio::time::interval_at(Instant::now() + every, every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some(i)
}

/// Refuse a request for a new room at the `--max-rooms` cap: 503, then close.
pub(super) async fn room_limit(stream: TcpStream, sh: &Shared, e: store::RoomLimit) -> After {
    Stats::add(&sh.stats.room_limit_refusals, 1);
    let body = format!("{e}\n");
    respond(
        stream,
        sh,
        503,
        TEXT,
        body.as_bytes(),
        b"",
        Some(Reason::RoomLimit),
        1,
        Vec::new(),
        "room limit reached",
    )
    .await
}

pub(super) async fn reject(
    stream: TcpStream,
    sh: &Shared,
    status: u16,
    detail: &'static str,
) -> After {
    Stats::add(&sh.stats.bad_requests, 1);
    let mut body = detail.as_bytes().to_vec();
    body.push(b'\n');
    respond(
        stream,
        sh,
        status,
        TEXT,
        &body,
        b"",
        Some(Reason::BadRequest),
        1,
        Vec::new(),
        detail,
    )
    .await
}
