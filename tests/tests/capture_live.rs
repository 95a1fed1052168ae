//! Live capture against the real kernel: keep-alive probes on loopback seen by
//! `kaprobe watch lo`, a dead peer in a namespace pair, and a real tcpdump capture judged by
//! tshark.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use kaprobe_tests::{
    json_lines, kaprobe, keepalive, line_reader, require_root, require_tool, run, start_watch,
    stderr, wait_line, watch_rest, KillOnDrop, NsPair,
};
use serde_json::Value;

fn of_type<'a>(v: &'a [Value], t: &str) -> Vec<&'a Value> {
    v.iter().filter(|x| x["type"] == t).collect()
}

#[test]
fn watch_reports_kernel_probes_on_loopback_at_1s() {
    require_root!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let saved = std::env::temp_dir().join(format!("kaprobe-watch-{}.pcap", std::process::id()));
    let (mut child, rx) = start_watch(kaprobe().args([
        "watch",
        "lo",
        "--duration",
        "5s",
        "--json",
        "--port",
        &port.to_string(),
        "--write",
        saved.to_str().unwrap(),
    ]));
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    keepalive(&client, 1, 1, 5);
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    let events = watch_rest(&mut child, &rx);
    let probes: Vec<&Value> = of_type(&events, "packet")
        .into_iter()
        .filter(|p| p["kind"] == "keepalive")
        .collect();
    let acks = of_type(&events, "packet")
        .into_iter()
        .filter(|p| p["kind"] == "keepalive_ack")
        .count();
    assert!(
        probes.len() >= 3,
        "expected >= 3 probes in 5 s: {events:#?}"
    );
    assert!(
        acks + 1 >= probes.len(),
        "probes on loopback are answered: {events:#?}"
    );
    let client_addr = client.local_addr().unwrap().to_string();
    for p in &probes {
        assert_eq!(p["src"], client_addr.as_str(), "{p}");
        if let Some(gap) = p["since_prev_probe"].as_f64() {
            assert!(
                (gap - 1.0).abs() <= 0.1,
                "interval {gap} not 1.0 +/- 0.1: {p}"
            );
        }
    }
    let flows = of_type(&events, "flow");
    assert_eq!(flows.len(), 1, "{events:#?}");
    let f = flows[0];
    assert_eq!(f["prober_role"], "client", "{f}");
    assert_eq!(f["outcome"], "alive", "{f}");
    let interval = f["probe_interval"].as_f64().unwrap();
    assert!(
        (interval - 1.0).abs() <= 0.1,
        "probe_interval {interval}: {f}"
    );
    let idle = f["idle_before_first_probe"].as_f64().unwrap();
    assert!((idle - 1.0).abs() <= 0.1, "idle {idle}: {f}");
    assert!(f["config"].as_str().unwrap().starts_with("idle 1s"), "{f}");
    let stats = of_type(&events, "stats");
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0]["dropped"], 0);
    // --write saved every frame seen: reading it back finds the same probes.
    let o = run(&[
        "read",
        saved.to_str().unwrap(),
        "--json",
        "--port",
        &port.to_string(),
    ]);
    let _ = std::fs::remove_file(&saved);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = json_lines(&o);
    let last = again.last().unwrap();
    assert_eq!(last["keepalives"], probes.len() as u64, "{last}");
    assert_eq!(last["frames"], stats[0]["frames"], "{last}");
}

#[test]
fn dead_peer_in_a_namespace_shows_unanswered_probes_then_rst() {
    require_root!();
    require_tool!("iptables");
    let pair = NsPair::new("kpcap");
    let listener = pair.listen_b();
    let port = listener.local_addr().unwrap().port();
    let mut cmd = pair.watch_in_a(port, &["--duration", "7s", "--json"]);
    let (mut child, rx) = start_watch(&mut cmd);
    let _conn = pair.lose_peer(&listener);
    let events = watch_rest(&mut child, &rx);
    let probes: Vec<&Value> = of_type(&events, "packet")
        .into_iter()
        .filter(|p| p["kind"] == "keepalive")
        .collect();
    let unanswered: Vec<u64> = probes
        .iter()
        .map(|p| p["unanswered_before"].as_u64().unwrap())
        .collect();
    assert!(unanswered.ends_with(&[0, 1, 2]), "probes: {probes:#?}");
    let flows = of_type(&events, "flow");
    assert_eq!(flows.len(), 1, "{events:#?}");
    let f = flows[0];
    assert_eq!(f["outcome"], "peer_dead", "{f}");
    assert_eq!(f["unanswered_at_end"], 3, "{f}");
    assert_eq!(f["prober_role"], "client", "{f}");
    assert_eq!(f["inferred_count"], 3, "{f}");
    let interval = f["inferred_interval"].as_f64().unwrap();
    assert!((interval - 1.0).abs() <= 0.1, "{f}");
    assert!(f["config"].as_str().unwrap().contains("3 probes"), "{f}");
}

#[test]
fn tshark_agrees_on_a_real_loopback_capture_except_the_window_scale_case() {
    require_root!();
    require_tool!("tcpdump");
    require_tool!("tshark");
    let dir = std::env::temp_dir().join(format!("kaprobe-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lo.pcap");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut dump = KillOnDrop::spawn(
        Command::new("tcpdump")
            .args(["-U", "-n", "-i", "lo", "-w"])
            .arg(&file)
            .arg(format!("tcp port {port}"))
            .stdin(Stdio::null()),
    );
    let errs = line_reader(dump.0.stderr.take().unwrap());
    wait_line(&errs, Duration::from_secs(20), |l| {
        l.contains("listening on")
    })
    .expect("tcpdump did not start");
    // Connection 1 exchanges data; connection 2 never sends a byte, so the server's first
    // packet after its SYN-ACK is a keep-alive ACK (the case Wireshark misses).
    let mut c1 = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut s1, _) = listener.accept().unwrap();
    c1.write_all(b"data").unwrap();
    let mut buf = [0u8; 4];
    s1.read_exact(&mut buf).unwrap();
    s1.write_all(b"back").unwrap();
    c1.read_exact(&mut buf).unwrap();
    keepalive(&c1, 1, 1, 5);
    let c2 = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_s2, _) = listener.accept().unwrap();
    keepalive(&c2, 1, 1, 5);
    let c2_addr = c2.local_addr().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(3500));
    // SAFETY: SIGINT to our own child makes tcpdump flush and exit.
    unsafe { libc::kill(dump.0.id() as i32, libc::SIGINT) };
    dump.0.wait().unwrap();

    let o = run(&["read", file.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    let ours: Vec<(u64, String, String)> = lines
        .iter()
        .filter(|v| v["type"] == "packet")
        .map(|v| {
            (
                v["frame"].as_u64().unwrap(),
                v["kind"].as_str().unwrap().to_string(),
                v["dst"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let theirs = kaprobe_tests::tshark_keepalive_flags(&file);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        ours.iter().filter(|o| o.1 == "keepalive").count() >= 4,
        "{ours:?}"
    );
    // Every packet tshark flags, kaprobe flags the same way.
    for (n, k) in &theirs {
        assert!(
            ours.iter().any(|o| o.0 == *n && o.1 == *k),
            "tshark flags frame {n} as {k}, kaprobe does not: ours {ours:?}"
        );
    }
    // kaprobe's extra flags: only connection 2's first keep-alive ACK.
    let extra: Vec<_> = ours.iter().filter(|o| !theirs.contains_key(&o.0)).collect();
    assert_eq!(extra.len(), 1, "extra: {extra:?}, tshark: {theirs:?}");
    assert_eq!(extra[0].1, "keepalive_ack");
    assert_eq!(
        extra[0].2, c2_addr,
        "the extra ACK goes to connection 2's client"
    );
    let first_ack_to_c2 = ours
        .iter()
        .find(|o| o.1 == "keepalive_ack" && o.2 == c2_addr)
        .unwrap();
    assert_eq!(first_ack_to_c2.0, extra[0].0);
}

#[test]
fn library_loopback_capture_sees_probes_for_the_demo() {
    require_root!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cap = kaprobe_capture::LoopbackCapture::start(port, Duration::from_millis(2600)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    keepalive(&client, 1, 1, 5);
    let (_server, _) = listener.accept().unwrap();
    let events = cap.wait().unwrap();
    let probes = events
        .iter()
        .filter(|e| {
            matches!(e, kaprobe_capture::Event::Packet(p) if p.kind == kaprobe_capture::Kind::Keepalive)
        })
        .count();
    assert!(probes >= 2, "{events:#?}");
    assert!(events
        .iter()
        .any(|e| matches!(e, kaprobe_capture::Event::Flow(f) if f.keepalives as usize == probes)));
}

#[test]
fn ctrl_c_stops_watch_with_a_summary() {
    require_root!();
    let (mut child, rx) = start_watch(kaprobe().args(["watch", "lo", "--json", "--port", "9"]));
    // SAFETY: SIGINT to our own child, as Ctrl-C would send.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let events = watch_rest(&mut child, &rx);
    let stats = of_type(&events, "stats");
    assert_eq!(stats.len(), 1, "{events:#?}");
    assert!(stats[0]["elapsed"].as_f64().unwrap() < 10.0);
}
