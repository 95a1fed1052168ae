//! HTTP/1 wire format shared by the server and the clients: the chunked body decoder, the
//! request writer, response heads and the event-stream decoder. Pure functions and state
//! machines over bytes: no I/O, no clock, no panics.

mod chunked;
mod request;
mod response;
mod sse;

pub use chunked::Chunked;
pub use request::{write_request, USER_AGENT};
pub use response::{parse_response_head, ResponseHead};
pub use sse::{SseDecoder, SseItem};

/// Why a request (or its body) was rejected: the status to answer with and a short reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub detail: &'static str,
}

pub(crate) const fn bad(detail: &'static str) -> Reject {
    Reject {
        status: 400,
        detail,
    }
}
