//! Watching an open push channel: pings or heartbeats, silence, and how it ended.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::conn::{is_reset, Io};
use crate::h1::{SseDecoder, SseItem};

use super::*;

/// Silence bookkeeping: the longest gap between bytes from the peer.
pub(super) struct Silence {
    start: Instant,
    last: Instant,
    longest: Duration,
}

impl Silence {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            longest: Duration::ZERO,
        }
    }

    fn heard(&mut self, now: Instant) {
        self.longest = self.longest.max(now.saturating_duration_since(self.last));
        self.last = now;
    }

    fn finish(&self, w: &mut PushWatch, end: Instant) {
        let tail = end.saturating_duration_since(self.last);
        w.lasted_s = end.saturating_duration_since(self.start).as_secs_f64();
        w.silent_before_end_s = tail.as_secs_f64();
        w.longest_silence_s = self.longest.max(tail).as_secs_f64();
    }
}

pub(super) async fn watch(
    channel: Channel,
    kind: PushKind,
    heartbeat: Option<Duration>,
    until: Instant,
) -> PushWatch {
    match channel {
        Channel::Ws(ws) => watch_ws(*ws, heartbeat, until).await,
        Channel::Sse { io, rest, chunked } => {
            let _ = kind;
            watch_sse(io, rest, chunked, heartbeat, until).await
        }
    }
}

/// How a WebSocket read or write error ended the connection.
pub(super) fn ws_end(e: &WsError) -> (PushEnd, Option<String>) {
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed => (PushEnd::Fin, None),
        WsError::Io(io) if is_reset(io) => (PushEnd::Rst, None),
        WsError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => (PushEnd::Fin, None),
        other => (PushEnd::Error, Some(other.to_string())),
    }
}

pub(super) async fn watch_ws(
    ws: WebSocketStream<Box<dyn Io>>,
    ping: Option<Duration>,
    until: Instant,
) -> PushWatch {
    let mut w = PushWatch::new(ping);
    let mut silence = Silence::new();
    let (mut tx, mut rx) = ws.split();
    let mut tick = ping.map(|d| tokio::time::interval_at(silence.start + d, d));
    let end_at = loop {
        tokio::select! {
            m = rx.next() => {
                let now = Instant::now();
                match m {
                    None => {
                        w.end = PushEnd::Fin;
                        break now;
                    }
                    Some(Ok(msg)) => {
                        silence.heard(now);
                        match msg {
                            Message::Close(frame) => {
                                w.end = PushEnd::CloseFrame;
                                if let Some(f) = frame {
                                    w.close_code = Some(u16::from(f.code));
                                    w.close_reason = Some(f.reason.to_string());
                                }
                                break now;
                            }
                            Message::Ping(_) => w.server_pings += 1,
                            Message::Pong(_) => w.pongs_received += 1,
                            Message::Text(_) | Message::Binary(_) => w.messages += 1,
                            Message::Frame(_) => {}
                        }
                    }
                    Some(Err(e)) => {
                        let (end, err) = ws_end(&e);
                        w.end = end;
                        w.error = err;
                        break now;
                    }
                }
            }
            () = next_tick(tick.as_mut()) => {
                if let Err(e) = tx.send(Message::Ping(b"kaprobe".to_vec().into())).await {
                    let (end, err) = ws_end(&e);
                    w.end = end;
                    w.error = err;
                    break Instant::now();
                }
                w.pings_sent += 1;
            }
            () = tokio::time::sleep_until(until) => {
                w.end = PushEnd::Alive;
                break Instant::now();
            }
        }
    };
    silence.finish(&mut w, end_at);
    if w.end == PushEnd::Alive {
        // Say goodbye properly; the answer does not matter.
        let _ =
            tokio::time::timeout(Duration::from_millis(500), tx.send(Message::Close(None))).await;
    }
    w
}

pub(super) async fn next_tick(tick: Option<&mut tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

pub(super) async fn watch_sse(
    mut io: Box<dyn Io>,
    rest: Vec<u8>,
    chunked: bool,
    heartbeat: Option<Duration>,
    until: Instant,
) -> PushWatch {
    let mut w = PushWatch::new(heartbeat);
    let mut silence = Silence::new();
    let mut dec = SseDecoder::new(chunked);
    let count = |items: Vec<SseItem>, w: &mut PushWatch| {
        for it in items {
            match it {
                SseItem::Comment(_) => w.heartbeats_received += 1,
                SseItem::Event { .. } => w.messages += 1,
            }
        }
    };
    match dec.feed(&rest) {
        Ok(items) => count(items, &mut w),
        Err(e) => {
            w.end = PushEnd::Error;
            w.error = Some(e);
            silence.finish(&mut w, Instant::now());
            return w;
        }
    }
    let mut chunk = vec![0u8; 16 * 1024];
    let end_at = loop {
        tokio::select! {
            r = io.read(&mut chunk) => {
                let now = Instant::now();
                match r {
                    Ok(0) => {
                        w.end = if dec.ended() { PushEnd::StreamEnd } else { PushEnd::Fin };
                        break now;
                    }
                    Ok(n) => {
                        silence.heard(now);
                        match dec.feed(&chunk[..n]) {
                            Ok(items) => {
                                count(items, &mut w);
                                // The response is over even if the connection stays open.
                                if dec.ended() {
                                    w.end = PushEnd::StreamEnd;
                                    break now;
                                }
                            }
                            Err(e) => {
                                w.end = PushEnd::Error;
                                w.error = Some(e);
                                break now;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        w.end = if dec.ended() { PushEnd::StreamEnd } else { PushEnd::Fin };
                        break now;
                    }
                    Err(e) if is_reset(&e) => {
                        w.end = PushEnd::Rst;
                        break now;
                    }
                    Err(e) => {
                        w.end = PushEnd::Error;
                        w.error = Some(e.to_string());
                        break now;
                    }
                }
            }
            () = tokio::time::sleep_until(until) => {
                w.end = PushEnd::Alive;
                break Instant::now();
            }
        }
    };
    silence.finish(&mut w, end_at);
    w
}
