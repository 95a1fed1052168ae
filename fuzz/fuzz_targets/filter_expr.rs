//! Fuzz the capture filter language of `kaprobe read FILE EXPR` / `watch IFACE EXPR`: any text
//! parses or is refused without a panic, and a program that compiled runs on any bytes
//! (the first line is the expression, the rest the packet).
#![no_main]

use kaprobe_capture::filter::Expression;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(text) = std::str::from_utf8(&data[..cut]) else {
        return;
    };
    if let Ok(e) = Expression::parse(text) {
        let packet = data.get(cut + 1..).unwrap_or_default();
        let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
        let _ = e.matches_ip(packet, len);
    }
});
