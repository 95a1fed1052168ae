//! One connection's protocol state together with the input it has not consumed yet: everything
//! that must survive from one read to the next, whoever does the reading (the accept fast path,
//! the connection's task, the parking lot).
//!
//! The rule it keeps: a response never depends on how the client's bytes were cut into reads.
//! A session may only be dropped and started again ([`Session::resume`]) while
//! [`Session::is_idle`] says there is nothing to remember; [`Session::feed`] buffers whatever
//! part of a request has arrived, head or body, until the rest comes.

use super::proto::{Ctx, Outcome, Proto};

/// Protocol state plus unconsumed input.
#[derive(Debug, Default)]
pub struct Session {
    pub proto: Proto,
    /// Input received but not consumed: the start of a request head (or of a chunk line).
    pending: Vec<u8>,
    /// The last close left input unread (bytes sent after the request that closed).
    discarded: bool,
}

impl Session {
    /// A connection that already answered `served` requests and holds nothing else.
    pub fn resume(served: u64) -> Self {
        Self {
            proto: Proto::resume(served),
            pending: Vec::new(),
            discarded: false,
        }
    }

    /// Continue with input that was read beyond a push request.
    pub fn resume_with(served: u64, pending: Vec<u8>) -> Self {
        Self {
            proto: Proto::resume(served),
            pending,
            discarded: false,
        }
    }

    /// Responses sent on this connection.
    pub fn served(&self) -> u64 {
        self.proto.served
    }

    /// Nothing to remember: between requests with no input waiting. Only then may the session
    /// be dropped and resumed later from the served count alone.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.proto.between_requests()
    }

    /// Unconsumed input is waiting (call [`Session::feed`] with no new input to process it).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Hand the unconsumed input over (to a push channel that takes the connection).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// The request that closed the connection was followed by input that was not read.
    pub fn discarded_input(&self) -> bool {
        self.discarded
    }

    /// Free the input buffer's memory once it is empty (before going idle).
    pub fn shrink(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = Vec::new();
        }
    }

    /// Take `input` (just read; empty to re-run what is pending), answer every complete
    /// request in what has arrived so far, appending the responses to `out`, and keep the rest.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>, ctx: &Ctx<'_>) -> Outcome {
        if self.pending.is_empty() {
            let (used, outcome) = self.proto.process(input, out, ctx);
            if used < input.len() {
                if matches!(outcome, Outcome::Close(..)) {
                    self.discarded = true;
                } else {
                    self.pending.extend_from_slice(&input[used..]);
                }
            }
            outcome
        } else {
            self.pending.extend_from_slice(input);
            let (used, outcome) = self.proto.process(&self.pending, out, ctx);
            if matches!(outcome, Outcome::Close(..)) {
                self.discarded = used < self.pending.len();
                self.pending.clear();
            } else {
                self.pending.drain(..used);
            }
            outcome
        }
    }
}

/// What a connection's client saw, for comparing one way of cutting the input with another:
/// the responses in order (interim `100 Continue` left out, `Date` values blanked) and how the
/// connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    pub responses: Vec<u8>,
    /// The close reason and detail, or `None` while the connection stays open.
    pub closed: Option<(super::close::Reason, &'static str)>,
    /// Input was handed to a push channel at this many responses.
    pub pushed: bool,
    /// Requests answered (or taken by a push channel).
    pub served: u64,
}

/// Run `pieces` through a session as successive reads, the way the server does: a `/delay/`
/// finishes at once, an idle session is dropped and resumed between reads (as the accept fast
/// path and the parking lot do), and nothing is read after a close or a push hand-over.
pub fn transcript<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, ctx: &Ctx<'_>) -> Transcript {
    let mut s = Session::default();
    let mut raw = Vec::new();
    let mut t = Transcript {
        responses: Vec::new(),
        closed: None,
        pushed: false,
        served: 0,
    };
    'reads: for piece in pieces {
        if s.is_idle() {
            s = Session::resume(s.served());
        }
        let mut input = piece;
        loop {
            match s.feed(input, &mut raw, ctx) {
                Outcome::NeedMore => break,
                Outcome::Delay(_) => {
                    if let Some(r) = s.proto.finish_delayed(&mut raw, ctx) {
                        t.closed = Some((r, ""));
                        break 'reads;
                    }
                    if !s.has_pending() {
                        break;
                    }
                    input = &[];
                }
                Outcome::Close(r, d) => {
                    t.closed = Some((r, d));
                    break 'reads;
                }
                Outcome::Push => {
                    t.pushed = true;
                    break 'reads;
                }
            }
        }
    }
    t.served = s.served();
    t.responses = normalise(&raw);
    t
}

/// Drop interim `100 Continue` responses and blank `Date:` values.
fn normalise(raw: &[u8]) -> Vec<u8> {
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    const DATE: &[u8] = b"\r\nDate: ";
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(CONTINUE) {
            i += CONTINUE.len();
        } else if raw[i..].starts_with(DATE) {
            out.extend_from_slice(DATE);
            i += DATE.len();
            while i < raw.len() && raw[i] != b'\r' {
                i += 1;
            }
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::close::Reason;
    use crate::server::config::Config;
    use crate::server::stats::Stats;

    fn cfg() -> Config {
        Config {
            max_header_bytes: 1024,
            max_body_bytes: 1 << 20,
            ..Config::default()
        }
    }

    fn run(pieces: &[&[u8]], cfg: &Config) -> Transcript {
        let stats = Stats::default();
        let ctx = Ctx {
            cfg,
            stats: &stats,
            shutting_down: false,
        };
        transcript(pieces.iter().copied(), &ctx)
    }

    /// Requests of every framing, valid and malformed, each followed by a GET so that a
    /// body that was misread shows up as a wrong answer to the next request.
    fn corpus() -> Vec<Vec<u8>> {
        let get = b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let mut c: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            b"HEAD /bytes/5 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world".to_vec(),
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: v\r\n\r\n"
                .to_vec(),
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec(),
            b"GET http://example.test/status/202 HTTP/1.1\r\nHost: example.test\r\n\r\n".to_vec(),
            b"GET /delay/0 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            // Malformed: each must be rejected the same way however it is cut.
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"
                .to_vec(),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n"
                .to_vec(),
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\nHost: a\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n".to_vec(),
            b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ];
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "y".repeat(1100)
        );
        c.push(big.into_bytes());
        for r in &mut c {
            r.extend_from_slice(&get);
        }
        // HTTP/1.0 without keep-alive closes: nothing may be answered after it.
        c.push(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n".to_vec());
        c
    }

    #[test]
    fn every_split_point_gives_the_same_transcript() {
        let cfg = cfg();
        for req in corpus() {
            let whole = run(&[&req], &cfg);
            for cut in 1..req.len() {
                let split = run(&[&req[..cut], &req[cut..]], &cfg);
                assert_eq!(
                    split,
                    whole,
                    "cut at {cut} of {:?}",
                    String::from_utf8_lossy(&req)
                );
            }
            let bytes: Vec<&[u8]> = req.chunks(1).collect();
            assert_eq!(run(&bytes, &cfg), whole, "one byte at a time");
        }
    }

    #[test]
    fn random_segmentations_of_large_bodies_give_the_same_transcript() {
        let cfg = cfg();
        let body = vec![b'z'; 300_000];
        let mut cl = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        cl.extend_from_slice(&body);
        let mut chunked =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.chunks(7000) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for mut req in [cl, chunked] {
            req.extend_from_slice(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n");
            let whole = run(&[&req], &cfg);
            assert_eq!(whole.closed, Some((Reason::CloseEndpoint, "")));
            assert_eq!(whole.served, 2);
            for _ in 0..50 {
                let mut pieces = Vec::new();
                let mut at = 0;
                while at < req.len() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let n = 1 + usize::try_from(x % 20_000).unwrap_or(0);
                    let end = (at + n).min(req.len());
                    pieces.push(&req[at..end]);
                    at = end;
                }
                assert_eq!(run(&pieces, &cfg), whole);
            }
        }
    }

    /// Inputs the fuzz target found, where the first error seen used to depend on the cut:
    /// a bare LF before a bad request line, a space after a bad version, and a version that
    /// looks like `HTTP/2.1` at the end of a request line with too many spaces.
    #[test]
    fn errors_found_by_the_fuzzer_do_not_depend_on_the_cut() {
        let cfg = cfg();
        let cases: [&[u8]; 4] = [
            b"\n/",
            b"zE @A > ",
            b"EEot an HT\xf6d A q2 HTTP/2.1\r\nX: y\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        ];
        for req in cases {
            let whole = run(&[req], &cfg);
            for cut in 1..req.len() {
                let split = run(&[&req[..cut], &req[cut..]], &cfg);
                assert_eq!(split, whole, "{req:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_body_in_its_own_read_is_not_taken_for_a_request() {
        let cfg = cfg();
        let t = run(
            &[
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                b"hello",
            ],
            &cfg,
        );
        assert_eq!(t.closed, None);
        assert_eq!(t.served, 1);
        assert!(t.responses.starts_with(b"HTTP/1.1 200 OK"));
    }
}
