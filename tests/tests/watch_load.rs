//! `kaprobe watch` on busy interfaces: the kernel filter keeps non-TCP floods out of the
//! capture, and a headers-only capture (the default snap length) still classifies probes
//! and carries each segment's true payload length (from the IP header) into --write files.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use kaprobe_capture::{parse_frame, FileSource, Next, PacketSource};
use kaprobe_tests::{
    json_lines, kaprobe, keepalive, line_reader, require_root, run, wait_line, KillOnDrop,
};
use serde_json::Value;

/// Packets received on `lo` so far (the kernel's own count).
fn lo_rx_packets() -> u64 {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("lo:"))
        .unwrap();
    let fields: Vec<&str> = line.split(':').nth(1).unwrap().split_whitespace().collect();
    fields[1].parse().unwrap()
}

/// Wait for watch's JSON output to end; the lines.
fn finish(mut child: KillOnDrop, rx: &std::sync::mpsc::Receiver<String>) -> Vec<Value> {
    let status = child.0.wait().unwrap();
    assert!(status.success(), "watch exited with {status}");
    rx.iter()
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn kernel_filter_keeps_a_udp_flood_out_of_watch() {
    require_root!();
    let mut child =
        KillOnDrop::spawn(kaprobe().args(["watch", "lo", "--json", "--duration", "3s"]));
    let rx = line_reader(child.0.stdout.take().unwrap());
    wait_line(&rx, Duration::from_secs(20), |l| l.contains("\"start\"")).unwrap();
    let before = lo_rx_packets();
    let sink4 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink6 = UdpSocket::bind("[::1]:0").unwrap();
    let tx4 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx6 = UdpSocket::bind("[::1]:0").unwrap();
    let payload = [0x5au8; 64];
    const N: u64 = 20_000;
    for i in 0..N {
        // Nobody reads the sinks: the datagrams still cross lo (and are counted) before the
        // full receive buffer drops them.
        if i % 4 == 0 {
            let _ = tx6.send_to(&payload, sink6.local_addr().unwrap());
        } else {
            let _ = tx4.send_to(&payload, sink4.local_addr().unwrap());
        }
    }
    let sent = lo_rx_packets() - before;
    assert!(sent >= N, "lo counted only {sent} packets");
    let lines = finish(child, &rx);
    let stats = lines.last().unwrap();
    assert_eq!(stats["type"], "stats", "{stats}");
    // Other tests may run TCP over lo meanwhile; no UDP may reach the capture.
    let not_tcp = stats["skipped_by_reason"]["not TCP"].as_u64().unwrap_or(0);
    assert!(not_tcp < 50, "UDP reached user space: {stats}");
    let frames = stats["frames"].as_u64().unwrap();
    let tcp = stats["tcp_packets"].as_u64().unwrap();
    assert!(frames - tcp < 50, "{stats}");
    assert!(
        frames < N / 2,
        "watch read {frames} frames of a {N}-datagram UDP flood"
    );
    assert_eq!(stats["dropped"], 0, "{stats}");
}

#[test]
fn headers_only_capture_keeps_payload_lengths_and_classifies_probes() {
    require_root!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let file = std::env::temp_dir().join(format!("kaprobe-snap-{}.pcap", std::process::id()));
    let mut child = KillOnDrop::spawn(kaprobe().args([
        "watch",
        "lo",
        "--port",
        &port.to_string(),
        "--json",
        "--duration",
        "30s",
        "--write",
        file.to_str().unwrap(),
    ]));
    let rx = line_reader(child.0.stdout.take().unwrap());
    wait_line(&rx, Duration::from_secs(20), |l| l.contains("\"start\"")).unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    keepalive(&client, 1, 1, 3);
    let (mut server, _) = listener.accept().unwrap();
    // Payload-carrying segments much longer than the snap length, both ways.
    client.write_all(&[7u8; 3000]).unwrap();
    let mut got = vec![0u8; 3000];
    server.read_exact(&mut got).unwrap();
    server.write_all(&[9u8; 5000]).unwrap();
    let mut got = vec![0u8; 5000];
    client.read_exact(&mut got).unwrap();
    for n in 1..=2 {
        wait_line(&rx, Duration::from_secs(10), |l| {
            l.contains("\"kind\":\"keepalive\"")
        })
        .unwrap_or_else(|seen| panic!("probe {n} not seen: {seen:?}"));
    }
    drop(client);
    drop(server);
    wait_line(&rx, Duration::from_secs(10), |l| {
        l.contains("\"type\":\"flow\"")
    })
    .unwrap();
    // SIGTERM: watch stops, flushes the file and prints its stats.
    let pid = libc::pid_t::try_from(child.0.id()).unwrap();
    // SAFETY: kill(2) on our own, unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let lines = finish(child, &rx);
    let stats = lines.last().unwrap();
    assert_eq!(stats["dropped"], 0, "{stats}");
    let probes = stats["keepalives"].as_u64().unwrap();
    assert!(probes >= 2, "{stats}");

    // The file: every record cut to the default 160 bytes, payload lengths intact.
    let mut src = FileSource::open(&file).unwrap();
    let (mut up, mut down, mut cut) = (0u64, 0u64, 0u64);
    while let Next::Frame(f) = src.next_frame().unwrap() {
        assert!(f.data.len() <= 160, "{} bytes captured", f.data.len());
        if (f.orig_len as usize) > f.data.len() {
            cut += 1;
        }
        let p = parse_frame(f.link.unwrap(), f.data).unwrap();
        if p.dst_port == port {
            up += u64::from(p.payload_len);
        } else {
            down += u64::from(p.payload_len);
        }
    }
    assert!(cut >= 2, "no record was cut by the snap length");
    assert_eq!(up, 3000, "client payload bytes from IP lengths");
    assert_eq!(down, 5000, "server payload bytes from IP lengths");
    // Reading the truncated file classifies the same probes as the live run.
    let o = run(&["read", file.to_str().unwrap(), "--json"]);
    let read = json_lines(&o);
    let rstats = read.last().unwrap();
    assert_eq!(rstats["keepalives"], probes, "{rstats}");
    assert_eq!(
        rstats["keepalive_acks"], stats["keepalive_acks"],
        "{rstats}"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn summary_reports_kernel_drops_even_when_there_are_none() {
    require_root!();
    let o = run(&["watch", "lo", "--port", "9", "--duration", "1s"]);
    assert!(o.status.success(), "{}", kaprobe_tests::stderr(&o));
    let out = kaprobe_tests::stdout(&o);
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("0 dropped by the kernel"), "{out}");
    assert!(
        !kaprobe_tests::stderr(&o).contains("warning"),
        "no drops, no warning: {}",
        kaprobe_tests::stderr(&o)
    );
}
