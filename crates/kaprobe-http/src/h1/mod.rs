//! HTTP/1 wire format shared by the server and the clients: the chunked body decoder, the
//! request writer, response heads and the event-stream decoder. Pure functions and state
//! machines over bytes: no I/O, no clock, no panics.

mod chunked;
mod reject;
mod request;
mod response;
mod sse;

pub use chunked::Chunked;
pub(crate) use reject::bad;
pub use reject::Reject;
pub use request::{write_request, write_request_fields, USER_AGENT};
pub use response::{parse_response_head, ResponseHead};
pub use sse::{SseDecoder, SseItem};
