//! Fuzz the HTTP request parser and the connection state machine of `kaprobe serve`: no input
//! may panic, and a connection's responses and fate never depend on how its bytes were cut
//! into reads (the session is fed the same bytes whole and in a random segmentation, and
//! dropped and resumed between reads whenever it is idle, as the server does).
#![no_main]

use kaprobe_http::server::parse::{parse_head, Chunked};
use kaprobe_http::server::proto::Ctx;
use kaprobe_http::server::session::transcript;
use kaprobe_http::server::{Config, Stats};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_head(data);
    let _ = Chunked::new().feed(data, 1 << 16);

    // The first 8 bytes seed the cut points; the rest is what the client sends.
    let (seed, input) = data.split_at(data.len().min(8));
    let mut x = seed
        .iter()
        .fold(0x9e37_79b9_7f4a_7c15_u64, |a, b| a.rotate_left(8) ^ u64::from(*b))
        | 1;
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < input.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Mostly tiny pieces, now and then a large one.
        let n = if x & 7 == 0 { (x >> 8) % 512 } else { (x >> 8) % 8 };
        let end = (at + 1 + usize::try_from(n).unwrap_or(0)).min(input.len());
        pieces.push(&input[at..end]);
        at = end;
    }

    let cfg = Config {
        max_header_bytes: 512,
        max_body_bytes: 256,
        ..Config::default()
    };
    let stats = Stats::default();
    let ctx = Ctx {
        cfg: &cfg,
        stats: &stats,
        shutting_down: false,
    };
    let whole = transcript([input], &ctx);
    let cut = transcript(pieces.iter().copied(), &ctx);
    assert_eq!(whole, cut, "{} pieces", pieces.len());
});
