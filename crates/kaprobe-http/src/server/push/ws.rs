//! `/ws`: after a checked handshake, answer 101 and run the connection with
//! tokio-tungstenite: echo, or a room whose text messages every member receives; server
//! pings with a pong deadline; RFC 6455 close codes for what the client got wrong.

use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::reply::{interval, killed, room_limit, tick, write_all, After};
use super::store::Held;
use crate::server::close::io_reason;
use crate::server::close::{Ending, Reason};
use crate::server::shared::{Ctl, Shared};
use crate::server::stats::Stats;
use tokio::sync::watch;

type Ws = WebSocketStream<TcpStream>;

/// How the connection ends: the reason, its detail, and the close frame we send (if any).
struct Close {
    reason: Reason,
    detail: &'static str,
    frame: Option<(CloseCode, &'static str)>,
    ending: Ending,
}

impl Close {
    fn ours(reason: Reason, detail: &'static str, code: CloseCode, text: &'static str) -> Self {
        Self {
            reason,
            detail,
            frame: Some((code, text)),
            ending: Ending::Fin,
        }
    }

    fn gone(reason: Reason, detail: &'static str) -> Self {
        Self {
            reason,
            detail,
            frame: None,
            ending: Ending::PeerGone,
        }
    }
}

fn protocol_detail(p: &ProtocolError) -> &'static str {
    match p {
        ProtocolError::UnmaskedFrameFromClient => "unmasked client frame",
        ProtocolError::UnknownDataFrameType(_)
        | ProtocolError::UnknownControlFrameType(_)
        | ProtocolError::InvalidOpcode(_) => "reserved opcode",
        ProtocolError::NonZeroReservedBits => "reserved bits set",
        ProtocolError::FragmentedControlFrame => "fragmented control frame",
        ProtocolError::ControlFrameTooBig => "control frame too big",
        ProtocolError::UnexpectedContinueFrame | ProtocolError::ExpectedFragment(_) => {
            "bad fragmentation"
        }
        ProtocolError::InvalidCloseSequence => "bad close frame",
        ProtocolError::ResetWithoutClosingHandshake => "closed without a close frame",
        _ => "protocol violation",
    }
}

/// Map a read error to how the connection ends.
fn read_error(e: &WsError) -> Close {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            Close::gone(Reason::WsClientClose, "")
        }
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Close::gone(Reason::WsClientGone, "")
        }
        WsError::Protocol(p) => Close::ours(
            Reason::WsProtocolError,
            protocol_detail(p),
            CloseCode::Protocol,
            "protocol error",
        ),
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => Close::ours(
            Reason::WsMessageTooBig,
            "",
            CloseCode::Size,
            "message too big",
        ),
        WsError::Capacity(_) => Close::ours(
            Reason::WsProtocolError,
            "bad frame header",
            CloseCode::Protocol,
            "protocol error",
        ),
        WsError::Utf8(_) => Close::ours(
            Reason::WsInvalidUtf8,
            "",
            CloseCode::Invalid,
            "text is not UTF-8",
        ),
        WsError::Io(io) => Close::gone(io_reason(io), ""),
        _ => Close::gone(Reason::IoError, "websocket"),
    }
}

async fn send(ws: &mut Ws, m: Message, sh: &Shared) -> Result<(), Close> {
    match timeout(sh.cfg().header_timeout, ws.send(m)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(read_error(&e)),
        Err(_) => Err(Close::gone(Reason::SendTimeout, "client not reading")),
    }
}

/// Run one WebSocket connection to its end and report it.
pub(super) async fn run(
    mut stream: TcpStream,
    pending: Vec<u8>,
    key: &str,
    room: Option<&str>,
    ping: Option<Duration>,
    ctl: &Rc<Ctl>,
    sh: &Rc<Shared>,
) -> After {
    // Join the room before the 101 goes out: a client is a member from the moment it can
    // know it is connected.
    let room = match room.map(|name| sh.hub.room(name)).transpose() {
        Ok(r) => r.map(|r| {
            let rx = r.subscribe();
            let last = r.last_id();
            (r, rx, last)
        }),
        Err(e) => return room_limit(stream, sh, e).await,
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nServer: kaprobe\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    if let Err(r) = write_all(&mut stream, &out, sh).await {
        return After::Gone(stream, r, "during the WebSocket handshake");
    }
    drop(out);
    let max = sh.cfg().ws_max_message;
    // A small read buffer (tungstenite grows it for larger frames): it is most of what an
    // idle connection holds, and it is zeroed before each read.
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut ws =
        WebSocketStream::from_partially_read(stream, pending, Role::Server, Some(config)).await;
    Stats::add(&sh.stats.ws_open, 1);
    let end = session(&mut ws, room, ping.unwrap_or(sh.cfg().ws_ping), ctl, sh).await;
    Stats::add(&sh.stats.ws_open, -1);
    sh.report(ctl, end.reason, end.detail, end.ending);
    if let Some((code, text)) = end.frame {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(text),
        };
        if timeout(sh.cfg().header_timeout, ws.close(Some(frame)))
            .await
            .is_ok()
        {
            // Wait briefly for the client's close frame, so our FIN follows the handshake.
            let deadline = Instant::now() + sh.cfg().linger;
            while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, ws.next()).await {}
        }
    } else if end.reason == Reason::WsClientClose {
        let _ = timeout(sh.cfg().header_timeout, ws.flush()).await;
    }
    After::Done
}

async fn session(
    ws: &mut Ws,
    room: Option<(Held<'_>, watch::Receiver<u64>, u64)>,
    ping: Duration,
    ctl: &Ctl,
    sh: &Shared,
) -> Close {
    let (room, mut rx, mut last) = match room {
        Some((r, rx, last)) => (Some(r), Some(rx), last),
        None => (None, None, 0),
    };
    let mut pinger = interval(ping);
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            biased;
            k = killed(ctl) => {
                return Close::ours(k, "", CloseCode::Away, "server shutting down");
            }
            () = tick(&mut pinger) => {
                if awaiting_pong {
                    return Close::ours(Reason::WsPongTimeout, "", CloseCode::Away, "pong timeout");
                }
                awaiting_pong = true;
                if let Err(c) = send(ws, Message::Ping(Bytes::new()), sh).await {
                    return c;
                }
            }
            ch = changed(&mut rx) => {
                let (Some(r), true) = (&room, ch) else { continue };
                let got = sh.hub.since(r, last);
                last = r.last_id();
                Stats::add(&sh.stats.delivered, got.msgs.len() as i64);
                for m in got.msgs {
                    if let Err(e) = ws.feed(Message::Text(m.data)).await {
                        return read_error(&e);
                    }
                }
                match timeout(sh.cfg().header_timeout, ws.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return read_error(&e),
                    Err(_) => return Close::gone(Reason::SendTimeout, "client not reading"),
                }
            }
            m = ws.next() => {
                let m = match m {
                    None => return Close::gone(Reason::WsClientGone, ""),
                    Some(Err(e)) => return read_error(&e),
                    Some(Ok(m)) => m,
                };
                match m {
                    Message::Text(t) => {
                        if let Some(r) = &room {
                            if sh.hub.publish(r, t).await.is_err() {
                                return Close::ours(Reason::IoError, "store failed", CloseCode::Error, "message not stored");
                            }
                            Stats::add(&sh.stats.published, 1);
                        } else if let Err(c) = send(ws, Message::Text(t), sh).await {
                            return c;
                        }
                    }
                    Message::Binary(b) => {
                        if let Err(c) = send(ws, Message::Binary(b), sh).await {
                            return c;
                        }
                    }
                    Message::Ping(_) => {
                        // tungstenite queued the pong: send it now.
                        match timeout(sh.cfg().header_timeout, ws.flush()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return read_error(&e),
                            Err(_) => return Close::gone(Reason::SendTimeout, "client not reading"),
                        }
                    }
                    Message::Pong(_) => awaiting_pong = false,
                    Message::Close(_) => {
                        return Close {
                            reason: Reason::WsClientClose,
                            detail: "",
                            frame: None,
                            ending: Ending::Fin,
                        };
                    }
                    Message::Frame(_) => {}
                }
            }
        }
    }
}

/// True when the room's last id changed; never resolves without a room.
async fn changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match rx {
        Some(r) => r.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}
