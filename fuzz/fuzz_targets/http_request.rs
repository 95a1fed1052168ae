//! Fuzz the HTTP request parser and the connection state machine of `kaprobe serve`:
//! no input may panic, and the state machine never claims to consume more than it was given.
#![no_main]

use kaprobe_http::server::parse::{parse_head, Chunked};
use kaprobe_http::server::proto::{Ctx, Proto};
use kaprobe_http::server::{Config, Stats};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_head(data);
    let _ = Chunked::new().feed(data, 1 << 16);

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
    // Feed the input in two pieces split at the first byte's value, as a socket might.
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut p = Proto::default();
    let mut out = Vec::new();
    let mut pending = data[..split].to_vec();
    let (n, _) = p.process(&pending, &mut out, &ctx);
    assert!(n <= pending.len());
    pending.drain(..n);
    pending.extend_from_slice(&data[split..]);
    let (n, _) = p.process(&pending, &mut out, &ctx);
    assert!(n <= pending.len());
});
