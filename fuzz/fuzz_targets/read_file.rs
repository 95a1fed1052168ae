//! Any bytes as a capture file (pcap or pcapng) through the file source and the analysis.
#![no_main]

use kaprobe_capture::{analyze, FileSource, Filter, TrackerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("kaprobe-fuzz-{}.pcap", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(mut src) = FileSource::open(&path) {
        let _ = analyze(&mut src, Filter::default(), TrackerConfig::default(), |_| {});
    }
});
