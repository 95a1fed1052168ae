//! How connections end: the reason, the way the server ended its side, and the event that
//! reports both.

use std::net::SocketAddr;
use std::time::Duration;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    IdleTimeout,
    MaxRequests,
    ClientCloseHeader,
    Http10,
    ClientFin,
    ClientRst,
    HeaderTimeout,
    BadRequest,
    Shutdown,
    CapEviction,
    /// `/close` asked for it.
    CloseEndpoint,
    /// Refused at the connection cap with no idle connection to evict.
    CapFull,
    /// The client stopped reading our response.
    SendTimeout,
    /// Another socket error.
    IoError,
    /// The WebSocket client sent a close frame.
    WsClientClose,
    /// The WebSocket client's TCP connection ended without a close frame.
    WsClientGone,
    /// No pong came back within one ping interval (close 1001).
    WsPongTimeout,
    /// A malformed frame (close 1002).
    WsProtocolError,
    /// A text message that is not UTF-8 (close 1007).
    WsInvalidUtf8,
    /// A message larger than --ws-max-message (close 1009).
    WsMessageTooBig,
    /// The event-stream client went away.
    SseClientGone,
    /// A push request for a new room was refused with 503 at --max-rooms.
    RoomLimit,
    /// `--keepalive-timeout 0`: every response says `Connection: close`.
    KeepAliveOff,
    /// HTTP/2: no stream open for --keepalive-timeout; the server sent GOAWAY.
    IdleGoaway,
    /// HTTP/2: --max-requests streams served; the server sent GOAWAY.
    MaxRequestsGoaway,
    /// HTTP/2: more PING strikes than --max-ping-strikes (GOAWAY ENHANCE_YOUR_CALM,
    /// debug data `too_many_pings`).
    TooManyPings,
    /// HTTP/2: a connection error (bad preface, malformed frame): GOAWAY with its code.
    ProtocolError,
    /// HTTP/2: the client sent GOAWAY.
    ClientGoaway,
    /// TLS: the handshake failed or did not finish within --header-timeout.
    TlsHandshake,
}

impl Reason {
    pub const ALL: [Reason; 29] = [
        Self::IdleTimeout,
        Self::MaxRequests,
        Self::ClientCloseHeader,
        Self::Http10,
        Self::ClientFin,
        Self::ClientRst,
        Self::HeaderTimeout,
        Self::BadRequest,
        Self::Shutdown,
        Self::CapEviction,
        Self::CloseEndpoint,
        Self::CapFull,
        Self::SendTimeout,
        Self::IoError,
        Self::WsClientClose,
        Self::WsClientGone,
        Self::WsPongTimeout,
        Self::WsProtocolError,
        Self::WsInvalidUtf8,
        Self::WsMessageTooBig,
        Self::SseClientGone,
        Self::RoomLimit,
        Self::KeepAliveOff,
        Self::IdleGoaway,
        Self::MaxRequestsGoaway,
        Self::TooManyPings,
        Self::ProtocolError,
        Self::ClientGoaway,
        Self::TlsHandshake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdleTimeout => "idle_timeout",
            Self::MaxRequests => "max_requests",
            Self::ClientCloseHeader => "client_close_header",
            Self::Http10 => "http10",
            Self::ClientFin => "client_fin",
            Self::ClientRst => "client_rst",
            Self::HeaderTimeout => "header_timeout",
            Self::BadRequest => "bad_request",
            Self::Shutdown => "shutdown",
            Self::CapEviction => "cap_eviction",
            Self::CloseEndpoint => "close_endpoint",
            Self::CapFull => "cap_full",
            Self::SendTimeout => "send_timeout",
            Self::IoError => "io_error",
            Self::WsClientClose => "ws_client_close",
            Self::WsClientGone => "ws_client_gone",
            Self::WsPongTimeout => "ws_pong_timeout",
            Self::WsProtocolError => "ws_protocol_error",
            Self::WsInvalidUtf8 => "ws_invalid_utf8",
            Self::WsMessageTooBig => "ws_message_too_big",
            Self::SseClientGone => "sse_client_gone",
            Self::RoomLimit => "room_limit",
            Self::KeepAliveOff => "keepalive_off",
            Self::IdleGoaway => "idle_goaway",
            Self::MaxRequestsGoaway => "max_requests_goaway",
            Self::TooManyPings => "too_many_pings",
            Self::ProtocolError => "protocol_error",
            Self::ClientGoaway => "client_goaway",
            Self::TlsHandshake => "tls_handshake",
        }
    }
}

/// How the server ended its side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// FIN after the last response, then a brief drain.
    Fin,
    /// RST (SO_LINGER 0).
    Rst,
    /// The peer had already gone; the socket was simply closed.
    PeerGone,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::PeerGone => "peer_gone",
        }
    }
}

/// One connection's end, reported as it happens.
#[derive(Debug, Clone)]
pub struct CloseEvent {
    pub peer: SocketAddr,
    pub reason: Reason,
    /// More about the reason (which rule a bad request broke), or empty.
    pub detail: &'static str,
    /// Responses sent on the connection.
    pub requests: u64,
    /// From accept to the close.
    pub lifetime: Duration,
    pub ending: Ending,
}

/// The close reason for a failed read or write: a reset by the client, or another error.
pub(crate) fn io_reason(e: &std::io::Error) -> Reason {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionAborted => Reason::ClientRst,
        _ => Reason::IoError,
    }
}
