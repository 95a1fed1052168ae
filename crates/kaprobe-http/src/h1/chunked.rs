//! The chunked transfer coding (RFC 9112 section 7.1), decoded incrementally: for request
//! bodies in the server and for response bodies in the prober and the bench.

use super::reject::{bad, Reject};

/// Incremental decoder of a chunked body (RFC 9112 section 7.1). Strict: every line ends in
/// CRLF, chunk data must be followed by CRLF, sizes are bare hex. Never panics on any input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    line: u32,
    /// Data bytes seen so far.
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Longest chunk extension or trailer section accepted.
const MAX_CHUNK_LINE: u32 = 8192;

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    pub const fn new() -> Self {
        Self {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            line: 0,
            total: 0,
        }
    }

    /// Data bytes read so far (`total` also counts the rest of the chunk being read).
    pub fn received(&self) -> u64 {
        match self.state {
            ChunkState::Data => self.total - self.size,
            _ => self.total,
        }
    }

    /// True once the last chunk and trailer section have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consume bytes from `buf`, discarding the data, and return how many were used (it
    /// stops at the end of the body).
    ///
    /// # Errors
    /// A 400 for a bad chunk size, extension, line ending or trailer; 413 past `max_body`.
    pub fn feed(&mut self, buf: &[u8], max_body: u64) -> Result<usize, Reject> {
        self.run(buf, max_body, |_| {})
    }

    /// As [`Chunked::feed`], appending the chunk data to `out`.
    ///
    /// # Errors
    /// As [`Chunked::feed`].
    pub fn decode(
        &mut self,
        buf: &[u8],
        max_body: u64,
        out: &mut Vec<u8>,
    ) -> Result<usize, Reject> {
        self.run(buf, max_body, |d| out.extend_from_slice(d))
    }

    fn run(
        &mut self,
        buf: &[u8],
        max_body: u64,
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, Reject> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(bad("chunk size too large"));
                        }
                        let d = match b {
                            b'0'..=b'9' => b - b'0',
                            b'a'..=b'f' => b - b'a' + 10,
                            _ => b - b'A' + 10,
                        };
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.state = ChunkState::Ext;
                        self.line = 0;
                    }
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(bad("bad chunk size")),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => return Err(bad("bare LF in chunk extension")),
                    _ => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return Err(bad("chunk extension too long"));
                        }
                    }
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(bad("bare CR after chunk size"));
                    }
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                        self.line = 0;
                    } else {
                        self.total = self.total.saturating_add(self.size);
                        if self.total > max_body {
                            return Err(Reject {
                                status: 413,
                                detail: "chunked body larger than --max-body-bytes",
                            });
                        }
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    let avail = (buf.len() - i) as u64;
                    let take = avail.min(self.size);
                    self.size -= take;
                    // take <= avail fits in usize.
                    let end = i + usize::try_from(take).unwrap_or(0);
                    data(&buf[i..end]);
                    i = end;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(bad("chunk data longer than its size"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(bad("bare CR after chunk data"));
                    }
                    self.state = ChunkState::Size;
                    self.digits = 0;
                    self.size = 0;
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => return Err(bad("bare LF in trailer section")),
                    _ => {
                        self.state = ChunkState::TrailerLine;
                        self.line += 1;
                    }
                },
                ChunkState::TrailerLine => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' => return Err(bad("bare LF in trailer section")),
                    _ => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return Err(Reject {
                                status: 431,
                                detail: "trailer section too large",
                            });
                        }
                    }
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(bad("bare CR in trailer section"));
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(bad("bare CR at end of chunked body"));
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
                ChunkState::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so failures replay.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> usize {
            usize::try_from(self.next() % n).unwrap_or(0)
        }
    }

    /// Encode `data` as a chunked body in pieces of the given sizes, with an extension on
    /// some size lines and a trailer field.
    fn encode(data: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let n = (1 + rng.below(40)).min(data.len() - at);
            out.extend_from_slice(format!("{n:x}").as_bytes());
            if rng.next().is_multiple_of(4) {
                out.extend_from_slice(b";name=value");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&data[at..at + n]);
            out.extend_from_slice(b"\r\n");
            at += n;
        }
        out.extend_from_slice(b"0\r\n");
        if rng.next().is_multiple_of(2) {
            out.extend_from_slice(b"Trailer-Field: x\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Decode `body` fed in `pieces` (cut points); returns the data and the bytes used.
    fn decode_split(body: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize), Reject> {
        let mut dec = Chunked::new();
        let mut out = Vec::new();
        let mut used = 0;
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&body.len())) {
            // A decoder only sees what it has not consumed yet, as a reader would keep it.
            let n = dec.decode(&body[from.max(used)..to.max(used)], u64::MAX, &mut out)?;
            used = from.max(used) + n;
            from = to;
            if dec.done() {
                break;
            }
        }
        assert!(dec.done(), "not done after {used} of {} bytes", body.len());
        assert_eq!(dec.total, out.len() as u64);
        assert_eq!(dec.received(), dec.total);
        Ok((out, used))
    }

    #[test]
    fn any_split_of_a_chunked_body_decodes_to_the_same_bytes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let len = rng.below(300);
            let data: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
            let mut body = encode(&data, &mut rng);
            let body_len = body.len();
            // What follows the body (a pipelined request) is left alone.
            body.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut cuts: Vec<usize> = (0..rng.below(12))
                .map(|_| rng.below(body_len as u64 + 1))
                .collect();
            cuts.sort_unstable();
            let (got, used) = decode_split(&body, &cuts).expect("valid body");
            assert_eq!(got, data, "round {round}, cuts {cuts:?}");
            assert_eq!(used, body_len, "round {round}");
        }
        // Every single cut point, and byte by byte.
        let body = b"4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\n";
        for cut in 0..=body.len() {
            assert_eq!(decode_split(body, &[cut]).unwrap().0, b"wikipedia");
        }
        let all: Vec<usize> = (1..body.len()).collect();
        assert_eq!(
            decode_split(body, &all).unwrap(),
            (b"wikipedia".to_vec(), body.len())
        );
    }

    #[test]
    fn missing_crlf_after_chunk_data_is_an_error() {
        for body in [
            &b"2\r\nabX\r\n0\r\n\r\n"[..],
            b"2\r\nab0\r\n\r\n",
            b"2\r\nab\rX0\r\n\r\n",
            b"2\r\nab\n0\r\n\r\n",
        ] {
            for cut in 0..=body.len() {
                let r = decode_split(body, &[cut]);
                assert_eq!(r.map_err(|e| e.status), Err(400), "{body:?} cut at {cut}");
            }
        }
        let mut dec = Chunked::new();
        assert_eq!(
            dec.feed(b"2\r\nabX", u64::MAX).unwrap_err().detail,
            "chunk data longer than its size"
        );
    }

    #[test]
    fn bad_sizes_and_limits_are_refused() {
        let err = |b: &[u8], max: u64| Chunked::new().feed(b, max).unwrap_err();
        assert_eq!(err(b"zz\r\n", 100).detail, "bad chunk size");
        assert_eq!(err(b"\r\n", 100).detail, "bad chunk size");
        assert_eq!(
            err(b"1000000000000000\r\n", u64::MAX).detail,
            "chunk size too large"
        );
        assert_eq!(err(b"5\n", 100).detail, "bad chunk size");
        assert_eq!(err(b"5\rX", 100).detail, "bare CR after chunk size");
        assert_eq!(err(b"65\r\n", 100).status, 413);
        assert_eq!(
            err(b"0\r\nT: v\n", 100).detail,
            "bare LF in trailer section"
        );
    }

    #[test]
    fn received_counts_the_data_as_it_arrives() {
        let mut dec = Chunked::new();
        let mut out = Vec::new();
        assert_eq!(dec.decode(b"a\r\nabc", u64::MAX, &mut out).unwrap(), 6);
        assert_eq!((dec.total, dec.received(), out.len()), (10, 3, 3));
        assert!(!dec.done());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let alphabet: &[u8] = b"0123456789abcdefABCDEF\r\n;= \tT:x";
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..rng.below(80))
                .map(|_| alphabet[rng.below(alphabet.len() as u64)])
                .collect();
            let mut dec = Chunked::new();
            let mut out = Vec::new();
            if let Ok(n) = dec.decode(&bytes, 1 << 20, &mut out) {
                assert!(n <= bytes.len() && out.len() <= n);
            }
        }
    }
}
