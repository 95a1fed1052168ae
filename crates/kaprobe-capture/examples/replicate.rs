//! Benchmark helper: make a large capture from a small one. Every IPv4 TCP frame of IN
//! (pcap, Ethernet or raw IP) is written COPIES times to OUT, copy k with both addresses
//! moved to 127.(1 + k / 256).(k % 256).(last octet), so every copy's 4-tuples are unique,
//! and checksums fixed. Other frames are copied once.
//!
//! ```text
//! replicate IN OUT COPIES
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufWriter;
use std::time::Duration;

use kaprobe_capture::craft::rewrite_ipv4;
use kaprobe_capture::{FileSource, LinkType, Next, PacketSource, PcapWriter};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(args.len() == 4, "usage: replicate IN OUT COPIES");
    let copies: u32 = args[3].parse().expect("COPIES is a number");
    let mut src = FileSource::open(&args[1]).unwrap();
    let out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&args[2]).unwrap());
    let mut w: Option<PcapWriter<_>> = None;
    let mut out = Some(out);
    let mut buf = Vec::new();
    let (mut read, mut written) = (0u64, 0u64);
    while let Next::Frame(f) = src.next_frame().unwrap() {
        read += 1;
        let link = f.link.unwrap_or(LinkType::Ethernet);
        if w.is_none() {
            w = Some(PcapWriter::new(out.take().unwrap(), link, 65_535).unwrap());
        }
        let w = w.as_mut().unwrap();
        let off = match link {
            LinkType::Ethernet => 14,
            LinkType::RawIp | LinkType::Ipv4 => 0,
            LinkType::LinuxSll => 16,
            LinkType::LinuxSll2 => 20,
            _ => usize::MAX,
        };
        let ipv4_tcp =
            f.data.len() > off.saturating_add(20) && f.data[off] >> 4 == 4 && f.data[off + 9] == 6;
        if !ipv4_tcp {
            w.write(f.ts, f.data, f.orig_len).unwrap();
            written += 1;
            continue;
        }
        let (s4, d4) = (f.data[off + 15], f.data[off + 19]);
        for k in 0..copies {
            buf.clear();
            buf.extend_from_slice(f.data);
            let (hi, lo) = ((1 + k / 256) as u8, (k % 256) as u8);
            rewrite_ipv4(&mut buf, off, [127, hi, lo, s4], [127, hi, lo, d4]);
            let ts = f.ts + Duration::from_nanos(u64::from(k));
            w.write(ts, &buf, f.orig_len).unwrap();
            written += 1;
        }
    }
    if let Some(w) = w.as_mut() {
        w.flush().unwrap();
    }
    eprintln!("read {read} frames, wrote {written}");
}
