//! One wording per OS error, whichever command meets it, and no library's own text
//! (`(os error 111)`, `Need more bytes`) in what a user reads.

use kaprobe_tests::{free_port, run, stderr, TempDir};
use std::net::TcpListener;

/// `args` fails and its stderr contains `words`, and none of the raw forms.
fn says(args: &[&str], words: &str) {
    let o = run(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded: {err}");
    assert!(err.contains(words), "{args:?}: want {words:?} in:\n{err}");
    for raw in [
        "os error",
        "Need more bytes",
        "Connection refused",
        "No such file",
    ] {
        assert!(!err.contains(raw), "{args:?}: raw text {raw:?} in:\n{err}");
    }
}

#[test]
fn a_refused_connection_reads_the_same_in_every_command() {
    let port = free_port();
    let hp = format!("127.0.0.1:{port}");
    let http = format!("http://{hp}/");
    let refused = "connection refused (nothing listens there)";
    says(&["hold", &hp], refused);
    says(&["probe", &http], refused);
    says(&["probe", &format!("ws://{hp}/ws")], refused);
    says(&["probe", "--sse", &format!("http://{hp}/sse")], refused);
    says(&["race", &http, "--idle", "1s", "--requests", "1"], refused);
    says(
        &["bench", "push", "--url", &http, "--messages", "1"],
        refused,
    );
}

#[test]
fn a_busy_address_reads_the_same_in_every_command() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let in_use = "address already in use (something else listens there)";
    says(&["serve", "--listen", &addr], in_use);
    says(&["hold", "--listen", &addr], in_use);
    says(&["watch", "lo", "--metrics", &addr], in_use);
}

#[test]
fn files_that_cannot_be_read_say_why_in_kaprobes_words() {
    let dir = TempDir::new("os-errors");
    let missing = dir.path().join("missing.pcap");
    says(
        &["read", missing.to_str().unwrap()],
        "no such file or directory",
    );
    says(&["read", dir.path().to_str().unwrap()], "is a directory");
    // Capture files cut inside their first header: said plainly, not by the pcap reader.
    let pcap = dir.write_bytes("cut.pcap", &[0xd4, 0xc3, 0xb2, 0xa1, 0x02, 0x00, 0x04]);
    says(
        &["read", pcap.to_str().unwrap()],
        "the pcap file header (24 bytes) is cut short",
    );
    let ng = dir.write_bytes("cut.pcapng", &[0x0a, 0x0d, 0x0d, 0x0a, 0x1c, 0x00]);
    says(
        &["read", ng.to_str().unwrap()],
        "the pcapng section header block is cut short",
    );
}
