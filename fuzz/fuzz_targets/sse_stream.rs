//! Fuzz the event-stream decoder of `kaprobe probe --sse` and `bench push` (chunked and plain
//! bodies): no input may panic, however it is split across reads.
#![no_main]

use kaprobe_http::h1::{Chunked, SseDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for chunked in [false, true] {
        let mut d = SseDecoder::new(chunked);
        if d.feed(&data[..split]).is_ok() {
            let _ = d.feed(&data[split..]);
        }
        let _ = d.ended();
    }
    let mut c = Chunked::new();
    let mut out = Vec::new();
    if let Ok(used) = c.decode(data, u64::MAX, &mut out) {
        assert!(used <= data.len() && out.len() <= used);
    }
});
