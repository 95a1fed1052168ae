//! HTTP/2 frames as they cross the wire (RFC 9113 section 4), for watching what the `h2` crate
//! does not show: when a GOAWAY or a PING arrived, with which error code and last stream id, and
//! how many PINGs a peer sends. The server and the prober both use it.
//!
//! - [`Scanner`] turns a byte stream cut anywhere into frame summaries, keeping only the few
//!   payload bytes a summary needs (a frame of any size costs a fixed amount of memory);
//! - [`Tap`] wraps a connection's I/O and reports the frames read and written, with their time;
//! - the writers ([`goaway`], [`ping`], [`settings`], [`frame`]) build raw frames for tests and
//!   for the rare reply the `h2` crate cannot send itself.
//!
//! Pure state machines over bytes except [`Tap`]; no panics on any input.

mod tap;

pub use tap::{Dir, Tap, TapEvent};

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The default and smallest SETTINGS_MAX_FRAME_SIZE (RFC 9113 section 6.5.2).
pub const DEFAULT_MAX_FRAME: u32 = 16_384;

/// Frame types (RFC 9113 section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    /// A type this version does not define; RFC 9113 section 4.1 says to ignore it.
    Unknown(u8),
}

impl Kind {
    pub fn from_u8(t: u8) -> Kind {
        match t {
            0 => Kind::Data,
            1 => Kind::Headers,
            2 => Kind::Priority,
            3 => Kind::RstStream,
            4 => Kind::Settings,
            5 => Kind::PushPromise,
            6 => Kind::Ping,
            7 => Kind::GoAway,
            8 => Kind::WindowUpdate,
            9 => Kind::Continuation,
            other => Kind::Unknown(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Kind::Data => 0,
            Kind::Headers => 1,
            Kind::Priority => 2,
            Kind::RstStream => 3,
            Kind::Settings => 4,
            Kind::PushPromise => 5,
            Kind::Ping => 6,
            Kind::GoAway => 7,
            Kind::WindowUpdate => 8,
            Kind::Continuation => 9,
            Kind::Unknown(t) => t,
        }
    }
}

/// Flags (RFC 9113 section 6).
pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;

/// The 9-byte frame header (RFC 9113 section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub kind: Kind,
    pub flags: u8,
    /// The stream identifier, reserved bit cleared.
    pub stream: u32,
}

impl Head {
    pub fn parse(b: &[u8; 9]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: Kind::from_u8(b[3]),
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// The name of an HTTP/2 error code (RFC 9113 section 7), as the RFC spells it.
pub fn error_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "UNKNOWN_ERROR",
    }
}

/// SETTINGS identifiers (RFC 9113 section 6.5.2).
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// Most debug data kept from a GOAWAY; the rest is counted, not kept.
pub const GOAWAY_DEBUG_KEPT: usize = 256;
/// Most SETTINGS parameters kept from one frame (the RFC sets no limit; six are defined).
pub const SETTINGS_KEPT: usize = 32;

/// What a frame said, as far as idle-connection behaviour goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        len: u32,
        end_stream: bool,
    },
    Headers {
        stream: u32,
        end_stream: bool,
    },
    RstStream {
        stream: u32,
        code: u32,
    },
    Settings {
        ack: bool,
        /// Identifier and value, in the order sent (at most [`SETTINGS_KEPT`]).
        params: Vec<(u16, u32)>,
    },
    Ping {
        ack: bool,
        opaque: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: u32,
        /// The first [`GOAWAY_DEBUG_KEPT`] bytes of the debug data.
        debug: Vec<u8>,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    /// PRIORITY, PUSH_PROMISE, CONTINUATION and unknown types: only the header.
    Other(Head),
    /// A frame whose fixed-size payload has the wrong length (RFC 9113 calls this a
    /// FRAME_SIZE_ERROR): the header and what was wrong.
    Malformed {
        head: Head,
        what: &'static str,
    },
}

impl Frame {
    /// The frame's stream identifier (0 for the connection).
    pub fn stream(&self) -> u32 {
        match self {
            Frame::Data { stream, .. }
            | Frame::Headers { stream, .. }
            | Frame::RstStream { stream, .. }
            | Frame::WindowUpdate { stream, .. } => *stream,
            Frame::Other(h) | Frame::Malformed { head: h, .. } => h.stream,
            Frame::Settings { .. } | Frame::Ping { .. } | Frame::GoAway { .. } => 0,
        }
    }
}

/// Where the scanner is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Matching the client preface; the count of bytes matched so far.
    Preface(usize),
    /// Collecting the 9-byte frame header.
    Head,
    /// Inside a payload: the header, and how many payload bytes are still to come.
    Payload(Head, u32),
    /// The stream is not HTTP/2 (a bad preface): nothing more is read.
    Lost,
}

/// Turns bytes, cut anywhere, into [`Frame`]s. One per direction of a connection.
#[derive(Clone, Debug)]
pub struct Scanner {
    state: State,
    head: [u8; 9],
    head_len: usize,
    /// The payload bytes kept for the current frame (only what its summary needs).
    keep: Vec<u8>,
    keep_cap: usize,
    /// Total bytes fed.
    pub bytes: u64,
}

impl Scanner {
    /// For the bytes a client sends: they start with the connection preface.
    pub fn client_to_server() -> Scanner {
        Scanner::new(State::Preface(0))
    }

    /// For the bytes a server sends: frames from the first byte.
    pub fn server_to_client() -> Scanner {
        Scanner::new(State::Head)
    }

    fn new(state: State) -> Scanner {
        Scanner {
            state,
            head: [0; 9],
            head_len: 0,
            keep: Vec::new(),
            keep_cap: 0,
            bytes: 0,
        }
    }

    /// True once the client preface did not match: the peer is not speaking HTTP/2.
    pub fn lost(&self) -> bool {
        self.state == State::Lost
    }

    /// True between frames: every byte fed so far belongs to a complete frame (or to the
    /// preface). A raw frame may be written into the stream only here.
    pub fn at_frame_boundary(&self) -> bool {
        match self.state {
            State::Head => self.head_len == 0,
            State::Preface(seen) => seen == 0,
            State::Payload(..) | State::Lost => false,
        }
    }

    /// Feed the next bytes of the stream; complete frames are appended to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Frame>) {
        self.bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            match self.state {
                State::Lost => return,
                State::Preface(seen) => {
                    let want = &PREFACE[seen..];
                    let n = want.len().min(bytes.len());
                    if bytes[..n] != want[..n] {
                        self.state = State::Lost;
                        return;
                    }
                    bytes = &bytes[n..];
                    self.state = if seen + n == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Head => {
                    let n = (9 - self.head_len).min(bytes.len());
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                    self.head_len += n;
                    bytes = &bytes[n..];
                    if self.head_len == 9 {
                        self.head_len = 0;
                        let head = Head::parse(&self.head);
                        self.keep.clear();
                        self.keep_cap = keep_for(head);
                        if head.len == 0 {
                            out.push(summarise(head, &self.keep));
                        } else {
                            self.state = State::Payload(head, head.len);
                        }
                    }
                }
                State::Payload(head, left) => {
                    let n = (left as usize).min(bytes.len());
                    let room = self.keep_cap.saturating_sub(self.keep.len()).min(n);
                    self.keep.extend_from_slice(&bytes[..room]);
                    bytes = &bytes[n..];
                    let left = left - n as u32;
                    if left == 0 {
                        out.push(summarise(head, &self.keep));
                        self.state = State::Head;
                    } else {
                        self.state = State::Payload(head, left);
                    }
                }
            }
        }
    }
}

/// How many payload bytes a frame's summary needs.
fn keep_for(head: Head) -> usize {
    let len = head.len as usize;
    match head.kind {
        // Pad length (1) is all DATA needs to report its length; the length is in the head.
        Kind::RstStream | Kind::WindowUpdate => 4.min(len),
        Kind::Ping => 8.min(len),
        Kind::GoAway => (8 + GOAWAY_DEBUG_KEPT).min(len),
        Kind::Settings => (6 * SETTINGS_KEPT).min(len),
        _ => 0,
    }
}

fn be32(b: &[u8]) -> u32 {
    match b {
        [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

fn summarise(head: Head, keep: &[u8]) -> Frame {
    let bad = |what| Frame::Malformed { head, what };
    match head.kind {
        Kind::Data => Frame::Data {
            stream: head.stream,
            len: head.len,
            end_stream: head.flags & FLAG_END_STREAM != 0,
        },
        Kind::Headers => Frame::Headers {
            stream: head.stream,
            end_stream: head.flags & FLAG_END_STREAM != 0,
        },
        Kind::RstStream if head.len != 4 => bad("RST_STREAM payload is not 4 bytes"),
        Kind::RstStream => Frame::RstStream {
            stream: head.stream,
            code: be32(keep),
        },
        Kind::Settings if !head.len.is_multiple_of(6) => {
            bad("SETTINGS payload is not a multiple of 6")
        }
        Kind::Settings if head.flags & FLAG_ACK != 0 && head.len != 0 => {
            bad("SETTINGS ACK with a payload")
        }
        Kind::Settings => Frame::Settings {
            ack: head.flags & FLAG_ACK != 0,
            params: keep
                .chunks_exact(6)
                .map(|p| (u16::from_be_bytes([p[0], p[1]]), be32(&p[2..])))
                .collect(),
        },
        Kind::Ping if head.len != 8 => bad("PING payload is not 8 bytes"),
        Kind::Ping => {
            let mut opaque = [0u8; 8];
            opaque.copy_from_slice(&keep[..8.min(keep.len())]);
            Frame::Ping {
                ack: head.flags & FLAG_ACK != 0,
                opaque,
            }
        }
        Kind::GoAway if head.len < 8 => bad("GOAWAY payload is shorter than 8 bytes"),
        Kind::GoAway => Frame::GoAway {
            last_stream: be32(keep) & 0x7fff_ffff,
            code: be32(keep.get(4..).unwrap_or_default()),
            debug: keep.get(8..).unwrap_or_default().to_vec(),
        },
        Kind::WindowUpdate if head.len != 4 => bad("WINDOW_UPDATE payload is not 4 bytes"),
        Kind::WindowUpdate => Frame::WindowUpdate {
            stream: head.stream,
            increment: be32(keep) & 0x7fff_ffff,
        },
        _ => Frame::Other(head),
    }
}

/// A raw frame: header and payload (RFC 9113 section 4.1). The payload is not checked, so
/// tests can build malformed frames with it.
pub fn frame(kind: Kind, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).min(0x00ff_ffff);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind.as_u8());
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GOAWAY frame (RFC 9113 section 6.8).
pub fn goaway(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + debug.len());
    p.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(debug);
    frame(Kind::GoAway, 0, 0, &p)
}

/// A PING frame (RFC 9113 section 6.7).
pub fn ping(ack: bool, opaque: [u8; 8]) -> Vec<u8> {
    frame(Kind::Ping, if ack { FLAG_ACK } else { 0 }, 0, &opaque)
}

/// A SETTINGS frame (RFC 9113 section 6.5); an empty list with `ack` is the acknowledgement.
pub fn settings(ack: bool, params: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(6 * params.len());
    for (id, value) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&value.to_be_bytes());
    }
    frame(Kind::Settings, if ack { FLAG_ACK } else { 0 }, 0, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = PREFACE.to_vec();
        b.extend(settings(false, &[(SETTINGS_MAX_CONCURRENT_STREAMS, 100)]));
        b.extend(settings(true, &[]));
        b.extend(ping(false, *b"12345678"));
        b.extend(frame(Kind::Headers, FLAG_END_HEADERS, 1, &[0x82, 0x86]));
        b.extend(frame(Kind::Data, FLAG_END_STREAM, 1, &vec![7u8; 40_000]));
        b.extend(frame(Kind::WindowUpdate, 0, 0, &[0, 1, 0, 0]));
        b.extend(frame(Kind::RstStream, 0, 3, &8u32.to_be_bytes()));
        b.extend(frame(Kind::Unknown(0xfa), 0, 0, b"ignored"));
        b.extend(frame(Kind::Ping, 0, 0, b"short"));
        b.extend(goaway(1, 0xb, &[b'x'; 1000]));
        b
    }

    fn expected() -> Vec<Frame> {
        vec![
            Frame::Settings {
                ack: false,
                params: vec![(SETTINGS_MAX_CONCURRENT_STREAMS, 100)],
            },
            Frame::Settings {
                ack: true,
                params: vec![],
            },
            Frame::Ping {
                ack: false,
                opaque: *b"12345678",
            },
            Frame::Headers {
                stream: 1,
                end_stream: false,
            },
            Frame::Data {
                stream: 1,
                len: 40_000,
                end_stream: true,
            },
            Frame::WindowUpdate {
                stream: 0,
                increment: 65536,
            },
            Frame::RstStream { stream: 3, code: 8 },
            Frame::Other(Head {
                len: 7,
                kind: Kind::Unknown(0xfa),
                flags: 0,
                stream: 0,
            }),
            Frame::Malformed {
                head: Head {
                    len: 5,
                    kind: Kind::Ping,
                    flags: 0,
                    stream: 0,
                },
                what: "PING payload is not 8 bytes",
            },
            Frame::GoAway {
                last_stream: 1,
                code: 0xb,
                debug: vec![b'x'; GOAWAY_DEBUG_KEPT],
            },
        ]
    }

    #[test]
    fn whole_stream() {
        let mut s = Scanner::client_to_server();
        let mut out = Vec::new();
        s.feed(&sample(), &mut out);
        assert_eq!(out, expected());
        assert!(!s.lost());
    }

    #[test]
    fn every_cut_and_random_segmentation_give_the_same_frames() {
        let bytes = sample();
        // every single cut point in the first 200 bytes (preface, settings, ping, headers)
        for cut in 0..200 {
            let mut s = Scanner::client_to_server();
            let mut out = Vec::new();
            s.feed(&bytes[..cut], &mut out);
            s.feed(&bytes[cut..], &mut out);
            assert_eq!(out, expected(), "cut at {cut}");
        }
        // pseudo-random segmentations of the whole stream
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            let mut s = Scanner::client_to_server();
            let mut out = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = (x % 64 + 1) as usize;
                let n = n.min(rest.len());
                s.feed(&rest[..n], &mut out);
                rest = &rest[n..];
            }
            assert_eq!(out, expected());
        }
    }

    #[test]
    fn a_bad_preface_is_lost_not_a_panic() {
        let mut s = Scanner::client_to_server();
        let mut out = Vec::new();
        s.feed(b"GET / HTTP/1.1\r\n\r\n", &mut out);
        assert!(s.lost());
        assert!(out.is_empty());
        s.feed(&ping(false, [0; 8]), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn server_side_has_no_preface() {
        let mut s = Scanner::server_to_client();
        let mut out = Vec::new();
        s.feed(&goaway(0x8000_0005, 0, b""), &mut out);
        assert_eq!(
            out,
            vec![Frame::GoAway {
                last_stream: 5,
                code: 0,
                debug: vec![]
            }]
        );
    }

    #[test]
    fn frame_boundaries_are_seen_under_any_cut() {
        let bytes = sample();
        let mut ends = vec![0usize];
        let mut at = PREFACE.len();
        ends.push(at);
        while at < bytes.len() {
            let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
            at += 9 + len;
            ends.push(at);
        }
        for cut in 0..=bytes.len().min(400) {
            let mut s = Scanner::client_to_server();
            s.feed(&bytes[..cut], &mut Vec::new());
            assert_eq!(s.at_frame_boundary(), ends.contains(&cut), "cut at {cut}");
        }
    }

    #[test]
    fn error_names() {
        assert_eq!(error_name(0xb), "ENHANCE_YOUR_CALM");
        assert_eq!(error_name(0), "NO_ERROR");
        assert_eq!(error_name(0x77), "UNKNOWN_ERROR");
    }
}
