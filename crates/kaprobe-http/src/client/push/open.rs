//! Opening a push channel: the WebSocket handshake or the event-stream request, timed.

use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::client::conn::{is_reset, Connector, HttpVersion};
use crate::Error;

use super::*;

pub(super) async fn open_channel(
    connector: &mut Connector,
    kind: PushKind,
    path: &str,
    timeout: Duration,
    first: bool,
) -> Result<Opened, Error> {
    let (conn, times) = if first {
        connector.open_first(timeout).await?
    } else {
        connector.open(timeout).await?
    };
    let hs_start = Instant::now();
    let hs_deadline = hs_start + timeout;
    let addr = connector.addr;
    match kind {
        PushKind::Websocket => {
            let (io, _) = conn.into_parts();
            let scheme = match connector.target.scheme {
                crate::client::target::Scheme::Http => "ws",
                crate::client::target::Scheme::Https => "wss",
            };
            let uri = format!("{scheme}://{}{path}", connector.target.host_header());
            let what = format!("WebSocket handshake with {addr}");
            let hs = tokio_tungstenite::client_async(uri, io);
            let (ws, resp) = match tokio::time::timeout_at(hs_deadline, hs).await {
                Err(_) => {
                    return Err(Error::NoAnswer {
                        what,
                        after: timeout,
                    })
                }
                Ok(Err(e)) => return Err(ws_handshake_error(what, e)),
                Ok(Ok(x)) => x,
            };
            let server = resp
                .headers()
                .get("server")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(Opened {
                channel: Channel::Ws(Box::new(ws)),
                times,
                handshake: hs_start.elapsed(),
                status: resp.status().as_u16(),
                server,
            })
        }
        PushKind::Sse => {
            let mut conn = conn;
            let what = format!("event stream request to {addr}");
            let req = sse_request(connector, path);
            let resp = conn
                .exchange(&req, true, hs_deadline)
                .await
                .map_err(|e| e.into_error(what.clone(), timeout))?;
            let ctype = resp.header("content-type").unwrap_or("").to_string();
            if resp.status != 200 {
                return Err(Error::NotPush {
                    what,
                    detail: format!(
                        "the server answered {} instead of 200 with text/event-stream: not an event stream",
                        resp.status
                    ),
                });
            }
            if !ctype.to_ascii_lowercase().starts_with("text/event-stream") {
                let shown = if ctype.is_empty() { "none" } else { &ctype };
                return Err(Error::NotPush {
                    what,
                    detail: format!(
                        "Content-Type is {shown}, not text/event-stream: not an event stream"
                    ),
                });
            }
            let chunked = resp
                .header("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
            let server = resp.header("server").map(str::to_string);
            let (io, rest) = conn.into_parts();
            Ok(Opened {
                channel: Channel::Sse { io, rest, chunked },
                times,
                handshake: hs_start.elapsed(),
                status: resp.status,
                server,
            })
        }
    }
}

pub(super) fn sse_request(connector: &Connector, path: &str) -> Vec<u8> {
    // The prober's usual request, asking for an event stream instead.
    connector.request_accepting(
        "GET",
        Some(path),
        HttpVersion::Http11,
        &[
            ("Accept", "text/event-stream"),
            ("Cache-Control", "no-cache"),
        ],
    )
}

pub(super) fn ws_handshake_error(what: String, e: WsError) -> Error {
    match e {
        WsError::Http(resp) => Error::NotPush {
            what,
            detail: format!(
                "the server answered {} instead of 101 Switching Protocols: not a WebSocket endpoint",
                resp.status()
            ),
        },
        WsError::Io(source) if is_reset(&source) => Error::NoResponse {
            what,
            detail: "the server reset the connection without answering".into(),
        },
        WsError::Io(source) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::NoResponse {
                what,
                detail: "the server closed the connection without answering".into(),
            }
        }
        WsError::Io(source) => Error::Io { what, source },
        WsError::Protocol(ProtocolError::HandshakeIncomplete) => Error::NoResponse {
            what,
            detail: "the server closed the connection without answering".into(),
        },
        WsError::Protocol(ProtocolError::WrongHttpVersion) => Error::NotPush {
            what,
            detail: "the server answered with HTTP/1.0, which has no upgrade: not a WebSocket endpoint"
                .into(),
        },
        WsError::Tls(e) => Error::Tls {
            what,
            reason: e.to_string(),
        },
        other => Error::NotPush {
            what,
            detail: format!("not a WebSocket handshake answer ({other})"),
        },
    }
}
