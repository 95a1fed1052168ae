//! Push channels on the `kaprobe serve` listener: `/ws` (WebSocket echo and rooms), `/sse`
//! (event stream with ids, heartbeats and `Last-Event-ID` resume), `/poll` (short and long
//! polling) and `/publish`, all over one per-room message log ([`store`]).
//!
//! The HTTP state machine recognises a push request ([`req`]) and hands the connection here.
//! A push connection is out of the keep-alive idle timer's reach; it ends by the client, by
//! its own timers (pong timeout), by a protocol error or by shutdown, and reports why like
//! any other connection. `/publish` and `/poll` answer and hand the connection back to HTTP.

pub mod req;
mod sse;
pub mod store;
mod ws;

use std::io;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::server::conn::io_reason;
use crate::server::parse::BodyKind;
use crate::server::proto::PushStart;
use crate::server::stats::Stats;
use crate::server::{Ctl, Reason, Shared, Signal};
use req::PushReq;

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

/// Serve one push request on `stream`; `pending` is the input read beyond its head.
pub(crate) async fn serve(
    stream: TcpStream,
    pending: Vec<u8>,
    start: PushStart,
    ctl: &Rc<Ctl>,
    sh: &Rc<Shared>,
) -> After {
    match start.req {
        PushReq::Reject { status, detail } => {
            Stats::add(&sh.stats.bad_requests, 1);
            let extra: &[u8] = if status == 426 {
                b"Sec-WebSocket-Version: 13\r\n"
            } else {
                b""
            };
            let mut body = detail.as_bytes().to_vec();
            body.push(b'\n');
            respond(
                stream,
                sh,
                status,
                TEXT,
                &body,
                extra,
                Some(Reason::BadRequest),
                0,
                Vec::new(),
                detail,
            )
            .await
        }
        PushReq::Ws { key, room, ping } => {
            ws::run(stream, pending, &key, room.as_deref(), ping, ctl, sh).await
        }
        PushReq::Sse {
            room,
            last_id,
            heartbeat,
        } => sse::run(stream, &room, last_id, heartbeat, ctl, sh).await,
        PushReq::Poll { room, since, wait } => {
            poll(
                stream,
                pending,
                &start_meta(&start.close, start.minor),
                &room,
                since,
                wait,
                ctl,
                sh,
            )
            .await
        }
        PushReq::Publish { room } => {
            publish(
                stream,
                pending,
                start.body,
                start.expect_continue,
                &start_meta(&start.close, start.minor),
                &room,
                ctl,
                sh,
            )
            .await
        }
    }
}

/// What an HTTP answer needs to know about its request.
struct Meta {
    close: Option<Reason>,
    minor: u8,
}

fn start_meta(close: &Option<Reason>, minor: u8) -> Meta {
    Meta {
        close: *close,
        minor,
    }
}

const TEXT: &[u8] = b"text/plain";
const JSON: &[u8] = b"application/json";

/// Why the connection closes after this answer, if it does.
fn close_after(meta: &Meta, ctl: &Ctl, sh: &Shared) -> Option<Reason> {
    let cfg = &sh.cfg;
    meta.close
        .or_else(|| {
            (cfg.max_requests > 0 && ctl.served.get() >= cfg.max_requests)
                .then_some(Reason::MaxRequests)
        })
        .or_else(|| sh.shutting_down.get().then_some(Reason::Shutdown))
        .or_else(|| {
            cfg.keepalive_timeout
                .is_zero()
                .then_some(Reason::IdleTimeout)
        })
}

fn head(out: &mut Vec<u8>, status: u16, ctype: &[u8], len: Option<usize>, extra: &[u8]) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(num.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(crate::server::proto::reason_phrase(status));
    out.extend_from_slice(b"\r\nServer: kaprobe\r\nDate: ");
    crate::server::date::with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(ctype);
    out.extend_from_slice(b"\r\n");
    if let Some(len) = len {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(num.format(len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
}

/// Write all of `buf`, giving a client that does not read the header timeout.
async fn write_all(stream: &mut TcpStream, buf: &[u8], sh: &Shared) -> Result<(), Reason> {
    match timeout(sh.cfg.header_timeout, stream.write_all(buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io_reason(&e)),
        Err(_) => Err(Reason::SendTimeout),
    }
}

/// Send a complete answer; keep the connection for more requests unless `close` (or the
/// request, the request limit or a shutdown) says otherwise.
#[allow(clippy::too_many_arguments)]
async fn respond(
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
fn killed(ctl: &Ctl) -> impl std::future::Future<Output = Reason> + '_ {
    std::future::poll_fn(move |cx| {
        if let Some(Signal::Kill(r)) = ctl.signal() {
            return std::task::Poll::Ready(r);
        }
        ctl.register(cx.waker());
        std::task::Poll::Pending
    })
}

/// A tick every `every`, or never when it is zero.
async fn tick(iv: &mut Option<tokio::time::Interval>) {
    match iv {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn interval(every: Duration) -> Option<tokio::time::Interval> {
    if every.is_zero() {
        return None;
    }
    let mut i = tokio::time::interval_at(Instant::now() + every, every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some(i)
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    mut stream: TcpStream,
    mut pending: Vec<u8>,
    body: BodyKind,
    expect_continue: bool,
    meta: &Meta,
    room: &str,
    ctl: &Ctl,
    sh: &Rc<Shared>,
) -> After {
    let fail = |status: u16, detail: &'static str| (status, detail);
    let len = match body {
        BodyKind::None => 0,
        BodyKind::Length(n) if n <= sh.cfg.max_body_bytes => n,
        BodyKind::Length(_) => {
            let (s, d) = fail(413, "Content-Length larger than --max-body-bytes");
            return reject(stream, sh, s, d).await;
        }
        BodyKind::Chunked => {
            let (s, d) = fail(411, "publish needs a Content-Length body");
            return reject(stream, sh, s, d).await;
        }
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    // Before any body is read or invited: a refused room costs the client no upload.
    let room_rc = match sh.hub.room(room) {
        Ok(r) => r,
        Err(e) => return room_limit(stream, sh, e).await,
    };
    if expect_continue && pending.len() < len {
        if let Err(r) = write_all(&mut stream, b"HTTP/1.1 100 Continue\r\n\r\n", sh).await {
            return After::Gone(stream, r, "mid-request");
        }
    }
    let deadline = Instant::now() + sh.cfg.header_timeout;
    while pending.len() < len {
        pending.reserve((len - pending.len()).min(64 * 1024));
        match tokio::time::timeout_at(
            deadline,
            tokio::io::AsyncReadExt::read_buf(&mut stream, &mut pending),
        )
        .await
        {
            Ok(Ok(0)) => return After::Gone(stream, Reason::ClientFin, "mid-request"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return After::Gone(stream, io_reason(&e), "mid-request"),
            Err(_) => {
                let mut out = Vec::new();
                Stats::add(&sh.stats.bad_requests, 1);
                crate::server::proto::error_response(&mut out, 408, "request body stalled");
                let _ = stream.write_all(&out).await;
                return After::Fin(stream, Reason::HeaderTimeout, "request body stalled");
            }
        }
    }
    let rest = pending.split_off(len);
    let Ok(text) = String::from_utf8(pending) else {
        return reject(stream, sh, 400, "publish body is not UTF-8").await;
    };
    match sh.hub.publish(&room_rc, Utf8Bytes::from(text)).await {
        Ok(id) => {
            Stats::add(&sh.stats.published, 1);
            let body = format!("{}\n", serde_json::json!({ "room": room, "id": id }));
            let close = close_after(meta, ctl, sh);
            respond(
                stream,
                sh,
                200,
                JSON,
                body.as_bytes(),
                b"",
                close,
                meta.minor,
                rest,
                "",
            )
            .await
        }
        Err(_) => {
            respond(
                stream,
                sh,
                500,
                TEXT,
                b"the message could not be stored\n",
                b"",
                Some(Reason::IoError),
                meta.minor,
                Vec::new(),
                "store failed",
            )
            .await
        }
    }
}

/// Refuse a request for a new room at the `--max-rooms` cap: 503, then close.
async fn room_limit(stream: TcpStream, sh: &Shared, e: store::RoomLimit) -> After {
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

async fn reject(stream: TcpStream, sh: &Shared, status: u16, detail: &'static str) -> After {
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

/// The `/poll` answer body.
fn poll_body(room: &str, msgs: &[store::Msg], last_id: u64) -> String {
    let list: Vec<serde_json::Value> = msgs
        .iter()
        .map(|m| serde_json::json!({ "id": m.id, "data": m.data.as_str() }))
        .collect();
    let mut s =
        serde_json::json!({ "room": room, "messages": list, "last_id": last_id }).to_string();
    s.push('\n');
    s
}

#[allow(clippy::too_many_arguments)]
async fn poll(
    stream: TcpStream,
    mut pending: Vec<u8>,
    meta: &Meta,
    room: &str,
    since: u64,
    wait: Option<Duration>,
    ctl: &Ctl,
    sh: &Rc<Shared>,
) -> After {
    let r = match sh.hub.room(room) {
        Ok(r) => r,
        Err(e) => return room_limit(stream, sh, e).await,
    };
    let mut rx = r.subscribe();
    let mut got = sh.hub.since(&r, since);
    let wait = wait.unwrap_or(Duration::ZERO);
    let mut close = None;
    if got.msgs.is_empty() && !wait.is_zero() {
        Stats::add(&sh.stats.polls_waiting, 1);
        let deadline = Instant::now() + wait;
        let gone = loop {
            tokio::select! {
                biased;
                k = killed(ctl) => { close = Some(k); break None; }
                () = tokio::time::sleep_until(deadline) => break None,
                ch = rx.changed() => {
                    if ch.is_err() { break None; }
                    got = sh.hub.since(&r, since);
                    if !got.msgs.is_empty() { break None; }
                }
                rd = stream.readable() => {
                    if let Err(e) = rd { break Some(io_reason(&e)); }
                    pending.reserve(4096);
                    match stream.try_read_buf(&mut pending) {
                        Ok(0) => break Some(Reason::ClientFin),
                        Ok(_) => if pending.len() > sh.cfg.max_header_bytes + 4096 {
                            // A client piling up requests behind a long poll: stop reading.
                            break Some(Reason::BadRequest);
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => break Some(io_reason(&e)),
                    }
                }
            }
        };
        Stats::add(&sh.stats.polls_waiting, -1);
        if let Some(r) = gone {
            return After::Gone(stream, r, "during a long poll");
        }
    }
    Stats::add(&sh.stats.delivered, got.msgs.len() as i64);
    let body = poll_body(
        room,
        &got.msgs,
        r.last_id().max(got.msgs.last().map_or(0, |m| m.id)),
    );
    let close = close.or_else(|| close_after(meta, ctl, sh));
    respond(
        stream,
        sh,
        200,
        JSON,
        body.as_bytes(),
        b"",
        close,
        meta.minor,
        pending,
        "",
    )
    .await
}
