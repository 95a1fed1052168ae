//! Any bytes, as any link type, through the frame parser and the flow tracker.
#![no_main]

use std::time::Duration;

use kaprobe_capture::{parse_frame, LinkType, Tracker, TrackerConfig};
use libfuzzer_sys::fuzz_target;

const LINKS: [LinkType; 8] = [
    LinkType::Ethernet,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::RawIp,
    LinkType::Ipv4,
    LinkType::Ipv6,
    LinkType::Null,
    LinkType::Loop,
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(sel) % LINKS.len()];
    let mut tracker = Tracker::new(TrackerConfig {
        max_flows: 4,
        ..TrackerConfig::default()
    });
    let mut out = Vec::new();
    // The input as one frame, then as a stream of frames split at every 0xff byte, so the
    // tracker sees sequences of packets.
    if let Ok(p) = parse_frame(link, rest) {
        tracker.process(1, Duration::ZERO, &p, &mut out);
    }
    for (i, chunk) in rest.split(|b| *b == 0xff).enumerate() {
        if let Ok(p) = parse_frame(link, chunk) {
            tracker.process(i as u64 + 2, Duration::from_millis(i as u64 * 300), &p, &mut out);
        }
    }
    tracker.finish(&mut out);
});
