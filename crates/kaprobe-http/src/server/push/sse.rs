//! `/sse`: a `text/event-stream` of the room's messages with their ids, heartbeat comments,
//! and a replay of what a reconnecting client missed (`Last-Event-ID`).

use std::fmt::Write as _;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::reply::{head, interval, killed, room_limit, tick, write_all, After};
use super::store::Msg;
use crate::server::close::io_reason;
use crate::server::close::Reason;
use crate::server::shared::{Ctl, Shared};
use crate::server::stats::Stats;

/// Append one event: its id, then one `data:` line per line of the text.
pub(super) fn event(out: &mut String, m: &Msg) {
    let _ = writeln!(out, "id: {}", m.id);
    let text = m.data.as_str();
    let mut lines = text.split('\n').peekable();
    while let Some(l) = lines.next() {
        // CR LF and a lone CR end lines too (the event-stream grammar).
        let l = l.strip_suffix('\r').unwrap_or(l);
        for part in l.split('\r') {
            out.push_str("data: ");
            out.push_str(part);
            out.push('\n');
        }
        if lines.peek().is_none() {
            break;
        }
    }
    out.push('\n');
}

pub(super) async fn run(
    mut stream: TcpStream,
    room: &str,
    last_id: Option<u64>,
    heartbeat: Option<Duration>,
    ctl: &Rc<Ctl>,
    sh: &Rc<Shared>,
) -> After {
    let r = match sh.hub.room(room) {
        Ok(r) => r,
        Err(e) => return room_limit(stream, sh, e).await,
    };
    let mut rx = r.subscribe();
    let mut out = Vec::with_capacity(512);
    head(
        &mut out,
        200,
        b"text/event-stream",
        None,
        b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n",
    );
    let mut text = String::new();
    let mut last = r.last_id();
    if let Some(after) = last_id {
        if after > last {
            let _ = write!(
                text,
                ": last event id {after} is ahead of this room (last id {last}): sending new events only\n\n"
            );
        } else {
            let got = sh.hub.since(&r, after);
            if let Some((lo, hi)) = got.missed {
                let _ = write!(
                    text,
                    ": missed ids {lo}..={hi}: no longer kept (--store-limit)\n\n"
                );
            }
            Stats::add(&sh.stats.delivered, got.msgs.len() as i64);
            for m in &got.msgs {
                event(&mut text, m);
            }
        }
    }
    out.extend_from_slice(text.as_bytes());
    if let Err(e) = write_all(&mut stream, &out, sh).await {
        return After::Gone(stream, e, "");
    }
    drop(out);
    Stats::add(&sh.stats.sse_open, 1);
    let end = stream_events(
        &mut stream,
        &r,
        &mut rx,
        &mut last,
        heartbeat.unwrap_or(sh.cfg().sse_heartbeat),
        ctl,
        sh,
    )
    .await;
    Stats::add(&sh.stats.sse_open, -1);
    match end {
        Ok(k) => After::Fin(stream, k, ""),
        Err(r) => After::Gone(stream, r, ""),
    }
}

/// Stream until the server closes (`Ok(reason)`) or the client goes (`Err(reason)`).
async fn stream_events(
    stream: &mut TcpStream,
    r: &super::store::Room,
    rx: &mut tokio::sync::watch::Receiver<u64>,
    last: &mut u64,
    heartbeat: Duration,
    ctl: &Ctl,
    sh: &Shared,
) -> Result<Reason, Reason> {
    let mut beat = interval(heartbeat);
    let mut scratch = [0u8; 1024];
    loop {
        tokio::select! {
            biased;
            k = killed(ctl) => return Ok(k),
            () = tick(&mut beat) => {
                write_all(stream, b": heartbeat\n\n", sh).await?;
            }
            ch = rx.changed() => {
                if ch.is_err() {
                    return Ok(Reason::Shutdown);
                }
                let got = sh.hub.since(r, *last);
                *last = r.last_id();
                if got.msgs.is_empty() {
                    continue;
                }
                let mut text = String::new();
                for m in &got.msgs {
                    event(&mut text, m);
                }
                Stats::add(&sh.stats.delivered, got.msgs.len() as i64);
                write_all(stream, text.as_bytes(), sh).await?;
            }
            rd = stream.readable() => {
                rd.map_err(|e| io_reason(&e))?;
                match stream.try_read(&mut scratch) {
                    Ok(0) => return Err(Reason::SseClientGone),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(match io_reason(&e) {
                        Reason::ClientRst => Reason::SseClientGone,
                        o => o,
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    #[test]
    fn events_carry_the_id_and_one_data_line_per_line() {
        let mut s = String::new();
        let m = Msg {
            id: 7,
            data: Utf8Bytes::from("a\nb\r\nc\rd"),
        };
        event(&mut s, &m);
        assert_eq!(s, "id: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
        let mut s = String::new();
        event(
            &mut s,
            &Msg {
                id: 1,
                data: Utf8Bytes::from(""),
            },
        );
        assert_eq!(s, "id: 1\ndata: \n\n");
    }
}
