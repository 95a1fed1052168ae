//! Push channels on the `kaprobe serve` listener: `/ws` (WebSocket echo and rooms), `/sse`
//! (event stream with ids, heartbeats and `Last-Event-ID` resume), `/poll` (short and long
//! polling) and `/publish`, all over one per-room message log ([`store`]).
//!
//! The HTTP state machine recognises a push request ([`req`]) and hands the connection here.
//! A push connection is out of the keep-alive idle timer's reach; it ends by the client, by
//! its own timers (pong timeout), by a protocol error or by shutdown, and reports why like
//! any other connection. `/publish` and `/poll` answer and hand the connection back to HTTP.

mod reply;
pub mod req;
mod sse;
pub mod store;
mod ws;

use std::io;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::server::close::{io_reason, Reason};
use crate::server::parse::BodyKind;
use crate::server::proto::{error_response, PushStart};
use crate::server::shared::{Ctl, Shared};
use crate::server::stats::Stats;
pub(crate) use reply::After;
use reply::{killed, reject, respond, room_limit, write_all, JSON, TEXT};
use req::PushReq;

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

/// Why the connection closes after this answer, if it does.
fn close_after(meta: &Meta, ctl: &Ctl, sh: &Shared) -> Option<Reason> {
    let cfg = sh.cfg();
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
        BodyKind::Length(n) if n <= sh.cfg().max_body_bytes => n,
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
    let deadline = Instant::now() + sh.cfg().header_timeout;
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
                error_response(&mut out, 408, "request body stalled");
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
                        Ok(_) => if pending.len() > sh.cfg().max_header_bytes + 4096 {
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
