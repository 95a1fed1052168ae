//! The event-stream format (`text/event-stream`) as a client reads it: body bytes in, comments
//! and dispatched events out.

use super::chunked::Chunked;

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A comment line (`: heartbeat`), without the colon.
    Comment(String),
    /// A dispatched event: its `id` and its `data` lines joined with `\n`.
    Event { id: Option<String>, data: String },
}

/// Incremental decoder: (optionally chunked) HTTP body bytes in, SSE items out. Never panics
/// on any input; malformed chunk framing is an error.
#[derive(Debug)]
pub struct SseDecoder {
    chunk: Option<Chunked>,
    line: Vec<u8>,
    data: Option<String>,
    id: Option<String>,
}

/// Longest event-stream line accepted.
const MAX_LINE: usize = 1024 * 1024;

impl SseDecoder {
    /// `chunked`: the body uses `Transfer-Encoding: chunked`.
    pub fn new(chunked: bool) -> Self {
        Self {
            chunk: chunked.then(Chunked::new),
            line: Vec::new(),
            data: None,
            id: None,
        }
    }

    /// True once the last chunk (and trailers) of a chunked body arrived.
    pub fn ended(&self) -> bool {
        self.chunk.as_ref().is_some_and(Chunked::done)
    }

    /// Feed body bytes; returns the items they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseItem>, String> {
        let mut payload = Vec::new();
        match self.chunk.as_mut() {
            None => payload.extend_from_slice(bytes),
            Some(d) => {
                d.decode(bytes, u64::MAX, &mut payload)
                    .map_err(|e| format!("bad chunked body: {}", e.detail))?;
            }
        }
        let mut items = Vec::new();
        for &b in &payload {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&String::from_utf8_lossy(&line), &mut items);
            } else {
                if self.line.len() >= MAX_LINE {
                    return Err(format!(
                        "an event stream line is longer than {MAX_LINE} bytes"
                    ));
                }
                self.line.push(b);
            }
        }
        Ok(items)
    }

    fn line_done(&mut self, line: &str, items: &mut Vec<SseItem>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                items.push(SseItem::Event {
                    id: self.id.clone(),
                    data,
                });
            }
            return;
        }
        if let Some(c) = line.strip_prefix(':') {
            items.push(SseItem::Comment(c.trim_start().to_string()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match self.data.as_mut() {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "id" => self.id = Some(value.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunked: bool, parts: &[&[u8]]) -> (Vec<SseItem>, SseDecoder) {
        let mut d = SseDecoder::new(chunked);
        let mut out = Vec::new();
        for p in parts {
            out.extend(d.feed(p).unwrap());
        }
        (out, d)
    }

    #[test]
    fn sse_events_and_comments_are_split_across_reads() {
        let (items, d) = events(
            false,
            &[
                b"id: 1\ndata: a\nda",
                b"ta: b\n\n: heart",
                b"beat\n\nid:2\r\ndata:x\r\n\r\n",
            ],
        );
        assert_eq!(
            items,
            vec![
                SseItem::Event {
                    id: Some("1".into()),
                    data: "a\nb".into()
                },
                SseItem::Comment("heartbeat".into()),
                SseItem::Event {
                    id: Some("2".into()),
                    data: "x".into()
                },
            ]
        );
        assert!(!d.ended());
    }

    #[test]
    fn chunked_sse_is_decoded_and_its_clean_end_seen() {
        let body: &[u8] = b"d\r\n: heartbeat\n\n\r\n10;x=y\r\nid: 7\ndata: hi\n\n\r\n0\r\n\r\n";
        // Byte by byte: every split point works.
        let parts: Vec<&[u8]> = body.chunks(1).collect();
        let (items, d) = events(true, &parts);
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(
            items[1],
            SseItem::Event {
                id: Some("7".into()),
                data: "hi".into()
            }
        );
        assert!(d.ended());
    }

    #[test]
    fn broken_chunking_is_an_error_not_a_panic() {
        let mut d = SseDecoder::new(true);
        assert!(d.feed(b"zz\r\n").is_err());
        let mut d = SseDecoder::new(true);
        assert!(d.feed(b"2\r\nabX").is_err());
        // Arbitrary bytes never panic.
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..500 {
            let mut d = SseDecoder::new(x & 1 == 0);
            let mut bytes = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet: &[u8] = b"0123456789abcdef\r\n:;data id";
                bytes.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = d.feed(&bytes);
            x = x.wrapping_add(0x9e37_79b9);
        }
    }
}
