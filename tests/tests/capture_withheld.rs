//! `watch` with per-flow state in the kernel (the default: quiet flows' routine segments are
//! withheld and counted there) against `watch --every-packet` on the same traffic, at the
//! same time: real sockets in a namespace, chatty connections, idle gaps with kernel
//! keep-alives, reuses after idle, closes by either side, a reset, IPv4 and IPv6. Every flow
//! must come out the same, and the kernel must really have withheld packets.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use kaprobe_tests::{
    in_netns, kaprobe_bin, keepalive, require_root, start_watch, watch_rest, KillOnDrop, Netns,
    TempDir,
};
use serde_json::Value;

fn watch_json(
    ns: &Netns,
    extra: &[&str],
    html: &std::path::Path,
) -> (KillOnDrop, Receiver<String>) {
    let mut cmd = ns.command(kaprobe_bin());
    cmd.args(["watch", "lo", "--json", "--duration", "12s", "--html"])
        .arg(html)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    start_watch(&mut cmd)
}

/// An echo server on `addr`: each connection in its own thread. With `close_after` the
/// server closes a connection that has been silent that long (a keep-alive timeout).
fn echo_server(addr: &str, close_after: Option<Duration>) -> SocketAddr {
    let l = TcpListener::bind(addr).unwrap();
    let at = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                c.set_read_timeout(close_after).unwrap();
                let mut buf = [0u8; 4096];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    at
}

/// A client writing into a server that reads nothing for 2 s: its window closes and the
/// client's kernel sends zero-window probes; then the server drains it and both close.
fn stalled_receiver() -> std::thread::JoinHandle<()> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let mut buf = vec![0u8; 1 << 16];
        while c.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    std::thread::spawn(move || {
        let mut c = TcpStream::connect(at).unwrap();
        let r = socket2::SockRef::from(&c);
        r.set_send_buffer_size(64 << 10).unwrap();
        let chunk = vec![b'z'; 64 << 10];
        for _ in 0..64 {
            c.write_all(&chunk).unwrap();
        }
        drop(c);
        server.join().unwrap();
    })
}

/// Send `n` bytes and read the echo.
fn ping(s: &mut TcpStream, n: usize) {
    let mut back = vec![0u8; n];
    if n <= 4096 {
        s.write_all(&back).unwrap();
        s.read_exact(&mut back).unwrap();
        return;
    }
    // More than the buffers hold: write while reading the echo.
    let mut w = s.try_clone().unwrap();
    let out = std::thread::spawn(move || w.write_all(&vec![b'k'; n]).unwrap());
    s.read_exact(&mut back).unwrap();
    out.join().unwrap();
}

/// Chat on every stream: `n` bytes each `every`, for `dur`.
fn chat(conns: &mut [TcpStream], n: usize, every: Duration, dur: Duration) {
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let t = Instant::now();
        for s in conns.iter_mut() {
            ping(s, n);
        }
        std::thread::sleep(every.saturating_sub(t.elapsed()));
    }
}

fn traffic() {
    let v4 = echo_server("127.0.0.1:0", None);
    let v6 = echo_server("[::1]:0", None);
    let closing = echo_server("127.0.0.1:0", Some(Duration::from_millis(1500)));
    let mut conns: Vec<TcpStream> = (0..10)
        .map(|i| TcpStream::connect(if i < 8 { v4 } else { v6 }).unwrap())
        .collect();
    for s in &conns[..6] {
        keepalive(s, 1, 1, 3);
    }
    let mut doomed: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(closing).unwrap())
        .collect();
    // Busy: small messages every 100 ms (longer than the capture ring's 50 ms block
    // timeout, so watch has read a flow's last exchange before the next one and can ask the
    // kernel to withhold), for long enough that it does (the closing server's two first: it
    // closes them 1.5 s after their last message).
    let every = Duration::from_millis(100);
    chat(&mut doomed, 100, every, Duration::from_millis(300));
    chat(&mut conns, 200, every, Duration::from_millis(2500));
    // Back to back on four (packets still in the ring when watch asks), and a bulk
    // transfer both ways on another.
    for _ in 0..400 {
        for s in &mut conns[2..6] {
            ping(s, 100);
        }
    }
    ping(&mut conns[6], 4 << 20);
    // A receiver that stops reading: zero-window probes, during the idle time below.
    let stalled = stalled_receiver();
    // Idle: keep-alive probes on six of them; the closing server gave up on its two.
    std::thread::sleep(Duration::from_millis(2300));
    stalled.join().unwrap();
    // Reuse after idle on half, then more chatter.
    chat(&mut conns[..5], 50, every, Duration::from_millis(800));
    // The closed connections written to: a failed reuse (RST).
    for s in &mut doomed {
        let _ = s.write_all(b"late");
        let mut b = [0u8; 4];
        let _ = s.read(&mut b);
    }
    // Closes: clients of two, a reset of one, the rest stay open.
    conns[0].shutdown(Shutdown::Both).unwrap();
    conns[8].shutdown(Shutdown::Both).unwrap();
    let r = socket2::SockRef::from(&conns[1]);
    r.set_linger(Some(Duration::ZERO)).unwrap();
    drop(conns.remove(1));
    std::thread::sleep(Duration::from_millis(300));
}

/// What must agree per flow: counts and kinds exactly, durations to within 10 ms (the
/// kernel stamps a withheld segment when its filter runs, the ring when the packet arrives).
fn flows(events: &[Value]) -> BTreeMap<String, &Value> {
    events
        .iter()
        .filter(|e| e["type"] == "flow")
        .map(|f| (format!("{} {}", f["client"], f["server"]), f))
        .collect()
}

fn same_flow(a: &Value, b: &Value) {
    for k in [
        "packets",
        "keepalives",
        "answered",
        "unanswered",
        "zero_window_probes",
        "prober",
        "prober_role",
        "outcome",
        "unanswered_at_end",
        "end_by",
        "end_how",
        "reuse_failed",
        "config",
    ] {
        assert_eq!(a[k], b[k], "{k}: withheld {a}\nevery packet {b}");
    }
    for k in [
        "idle_before_first_probe",
        "probe_interval",
        "idle_before_end",
    ] {
        match (a[k].as_f64(), b[k].as_f64()) {
            (Some(x), Some(y)) => assert!((x - y).abs() < 0.01, "{k}: {a}\n{b}"),
            (x, y) => assert_eq!(x, y, "{k}: {a}\n{b}"),
        }
    }
    let (ra, rb) = (
        a["reuses"].as_array().unwrap(),
        b["reuses"].as_array().unwrap(),
    );
    assert_eq!(ra.len(), rb.len(), "reuses: {a}\n{b}");
    for (x, y) in ra.iter().zip(rb) {
        assert_eq!(x["by"], y["by"]);
        assert_eq!(x["result"], y["result"], "{a}\n{b}");
        assert!((x["idle"].as_f64().unwrap() - y["idle"].as_f64().unwrap()).abs() < 0.01);
    }
}

#[test]
fn withholding_in_the_kernel_changes_no_result() {
    require_root!();
    let ns = Netns::new("wh");
    let dir = TempDir::new("withheld");
    let (mut a, ra) = watch_json(&ns, &[], &dir.path().join("a.html"));
    let (mut b, rb) = watch_json(&ns, &["--every-packet"], &dir.path().join("b.html"));
    in_netns(&ns.name, traffic);
    let (ea, eb) = (watch_rest(&mut a, &ra), watch_rest(&mut b, &rb));
    let (fa, fb) = (flows(&ea), flows(&eb));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "the same flows"
    );
    // Flows with probes or an ending worth telling: the six that idled with keep-alive on,
    // one of them reset, and the two the server closed and the client wrote to.
    assert!(fa.len() >= 8, "{:#?}", fa.keys());
    for (k, x) in &fa {
        same_flow(x, fb[k]);
    }
    // The probes and their answers, packet by packet.
    let probes = |ev: &[Value]| {
        let mut v: Vec<String> = ev
            .iter()
            .filter(|e| e["type"] == "packet")
            .map(|e| format!("{} {} {} {}", e["kind"], e["src"], e["seq"], e["ack"]))
            .collect();
        v.sort();
        v
    };
    assert_eq!(probes(&ea), probes(&eb));
    assert!(probes(&ea).len() >= 12, "keep-alives on six idle flows");
    assert!(
        probes(&ea)
            .iter()
            .any(|p| p.starts_with("\"zero_window_probe\"")),
        "zero-window probes: {:#?}",
        probes(&ea)
    );
    let stats = |ev: &[Value]| ev.iter().find(|e| e["type"] == "stats").cloned().unwrap();
    let (sa, sb) = (stats(&ea), stats(&eb));
    assert_eq!(sa["tcp_packets"], sb["tcp_packets"], "{sa}\n{sb}");
    assert_eq!(sa["keepalives"], sb["keepalives"]);
    assert_eq!(sa["dropped"], 0);
    assert_eq!(sb["withheld"], 0);
    let (withheld, all) = (
        sa["withheld"].as_u64().unwrap(),
        sa["tcp_packets"].as_u64().unwrap(),
    );
    eprintln!("withheld {withheld} of {all} TCP packets");
    assert!(
        withheld * 2 > all,
        "the kernel withheld most of the chatter: {withheld} of {all}"
    );
}
