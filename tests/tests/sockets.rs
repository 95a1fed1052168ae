//! `kaprobe sockets` end to end: the real binary reading real loopback sockets through
//! sock_diag, compared with what the test's own sockets and the kernel's counters say.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kaprobe_tests::{
    in_netns, is_root, json_lines, kaprobe, kaprobe_bin, keepalive, stderr, stdout, wait_for, Netns,
};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

/// A listener, a client connected to it and the accepted server side.
struct Pair {
    listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
}

impl Pair {
    fn new(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        Self {
            listener,
            client,
            server,
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }
}

/// The JSON line whose `local` is `addr`, if any.
fn find(lines: &[Value], addr: SocketAddr) -> Option<Value> {
    lines
        .iter()
        .find(|v| v["local"].as_str() == Some(addr.to_string().as_str()))
        .cloned()
}

fn sockets_json(cmd: &mut Command) -> Vec<Value> {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "kaprobe sockets failed: {}", stderr(&o));
    json_lines(&o)
}

#[test]
fn pairs_on_ipv4_and_ipv6_loopback_are_listed_by_port_with_addresses_and_state() {
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let p = Pair::new(addr);
        let port = p.port().to_string();
        // other tests running in parallel may use the same port number on another loopback
        // address: count only this pair's sockets
        let listener = p.listener.local_addr().unwrap().to_string();
        let mine = |v: Vec<Value>| -> Vec<Value> {
            v.into_iter()
                .filter(|v| v["local"] == listener.as_str() || v["peer"] == listener.as_str())
                .collect()
        };
        let lines = mine(sockets_json(
            kaprobe().args(["sockets", "--port", &port, "--json"]),
        ));
        assert_eq!(
            lines.len(),
            2,
            "client and server, listener not by default: {lines:?}"
        );
        let family = if addr.starts_with('[') {
            "ipv6"
        } else {
            "ipv4"
        };
        let c = find(&lines, p.client.local_addr().unwrap()).expect("client listed");
        assert_eq!(c["peer"], p.listener.local_addr().unwrap().to_string());
        assert_eq!(c["state"], "ESTAB");
        assert_eq!(c["family"], family);
        assert_eq!(c["timer"], "none", "no keep-alive, nothing in flight");
        assert_eq!(c["probes"], 0);
        assert!(c["inode"].as_u64().unwrap() > 0);
        assert!(c["last_ack_age"].as_f64().unwrap() < 30.0);
        let s = find(&lines, p.server.local_addr().unwrap()).expect("server listed");
        assert_eq!(s["peer"], p.client.local_addr().unwrap().to_string());
        assert_eq!(s["state"], "ESTAB");

        let all =
            mine(sockets_json(kaprobe().args([
                "sockets", "--port", &port, "--state", "all", "--json",
            ])));
        assert_eq!(all.len(), 3, "{all:?}");
        let listen =
            mine(sockets_json(kaprobe().args([
                "sockets", "--port", &port, "--state", "listen", "--json",
            ])));
        assert_eq!(listen.len(), 1, "{listen:?}");
        assert_eq!(
            listen[0]["local"],
            p.listener.local_addr().unwrap().to_string()
        );
        assert_eq!(listen[0]["state"], "LISTEN");
        assert!(
            listen[0]["last_ack_age"].is_null(),
            "a listener has no last ACK"
        );

        // The table names the same sockets (wide enough for every column: in a pipe
        // without COLUMNS it fits 80 columns by leaving out Inode, UID and Last ACK).
        let o = kaprobe()
            .args(["sockets", "--port", &port])
            .env("COLUMNS", "200")
            .output()
            .unwrap();
        assert!(o.status.success());
        let table = stdout(&o);
        assert!(
            table.contains("Last ACK") && table.contains("ESTAB"),
            "{table}"
        );
        assert!(
            table.contains(&p.client.local_addr().unwrap().to_string()),
            "{table}"
        );
        assert!(
            table.contains(&p.server.local_addr().unwrap().to_string()),
            "{table}"
        );
        let ours = table
            .lines()
            .filter(|l| l.contains("ESTAB") && l.contains(&listener))
            .count();
        assert_eq!(ours, 2, "client and server rows: {table}");
    }
}

/// `TcpExtTCPKeepAlive` from /proc/net/netstat text: keep-alive probes sent.
fn keepalive_counter(netstat: &str) -> u64 {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next().unwrap();
    let values = lines.next().unwrap();
    let i = names
        .split_whitespace()
        .position(|n| n == "TCPKeepAlive")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Open a pair on 127.0.0.1 inside `ns` (from a thread that enters it: sockets belong to
/// the namespace they were created in, whichever thread uses them later).
fn pair_in(ns: &Netns) -> Pair {
    in_netns(&ns.name, || Pair::new("127.0.0.1:0"))
}

#[test]
fn keepalive_timer_shows_and_answered_probes_reset_the_last_ack() {
    kaprobe_bin(); // built before the clock starts
                   // As root, in a fresh namespace: the probe counter is this pair's alone.
    let ns = is_root().then(|| Netns::new("sock"));
    let p = match &ns {
        Some(ns) => pair_in(ns),
        None => {
            eprintln!("not root: using the host's loopback; probe counter checked as >=");
            Pair::new("127.0.0.1:0")
        }
    };
    let port = p.port().to_string();
    let sockets = || -> Vec<Value> {
        let mut cmd = match &ns {
            Some(ns) => ns.command(kaprobe_bin()),
            None => Command::new(kaprobe_bin()),
        };
        sockets_json(cmd.args(["sockets", "--port", &port, "--json"]))
    };
    let counter = || -> u64 {
        let text = match &ns {
            Some(ns) => ns.exec("cat /proc/net/netstat"),
            None => std::fs::read_to_string("/proc/net/netstat").unwrap(),
        };
        keepalive_counter(&text)
    };
    let before = counter();
    keepalive(&p.client, 1, 1, 3);
    let armed = Instant::now();
    let client = p.client.local_addr().unwrap();
    let server = p.server.local_addr().unwrap();

    let first = sockets();
    let c = find(&first, client).expect("client listed");
    assert_eq!(c["timer"], "keepalive", "{c}");
    let exp = c["expires"].as_f64().unwrap();
    assert!(
        exp > 0.0 && exp <= 1.0,
        "keep-alive fires within the 1 s idle time: {c}"
    );
    let s = find(&first, server).expect("server listed");
    assert_eq!(s["timer"], "none", "the server side has no keep-alive: {s}");

    // Sample until the kernel has sent 3 probes: each is answered, so the socket stays
    // ESTAB with no unanswered probe and its last-ACK age keeps falling back.
    let mut samples: Vec<(f64, u64, String, f64)> = Vec::new();
    let sent = wait_for("3 keep-alive probes sent", Duration::from_secs(15), || {
        let c = find(&sockets(), client).expect("client still listed");
        assert_eq!(c["state"], "ESTAB", "{c}");
        assert_eq!(c["timer"], "keepalive", "{c}");
        samples.push((
            c["last_ack_age"].as_f64().unwrap(),
            c["probes"].as_u64().unwrap(),
            c.to_string(),
            armed.elapsed().as_secs_f64(),
        ));
        let n = counter() - before;
        (n >= 3).then_some(n)
    });
    let took = armed.elapsed();
    if ns.is_some() {
        assert_eq!(sent, 3, "only this pair probes in its namespace");
    }
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "3 probes at 1, 2 and 3 s after arming, seen after {took:?}"
    );
    let max_age = samples.iter().map(|s| s.0).fold(0.0, f64::max);
    assert!(
        max_age < 1.3,
        "last ACK never older than the 1 s interval (+ slack): {max_age}"
    );
    // When was the last ACK heard, as of each sample? Answers to the probes at ~1 s and
    // ~2 s show up as distinct instants, however unevenly a busy machine lets us sample.
    let mut heard: Vec<f64> = samples
        .iter()
        .map(|s| s.3 - s.0)
        .filter(|&t| t > 0.5)
        .collect();
    heard.sort_by(f64::total_cmp);
    heard.dedup_by(|a, b| (*a - *b).abs() < 0.5);
    assert!(
        heard.len() >= 2,
        "the last-ACK age fell back after each answer (answers heard at {heard:?}): {samples:?}"
    );
    let unanswered = samples.iter().filter(|s| s.1 > 0).count();
    assert!(
        unanswered * 10 <= samples.len() && samples.iter().all(|s| s.1 <= 1),
        "probes are answered at once on loopback: {samples:?}"
    );
}

#[test]
fn time_wait_socket_shows_its_timer_only_when_asked_for() {
    let p = Pair::new("127.0.0.1:0");
    let port = p.port().to_string();
    let client = p.client.local_addr().unwrap();
    let Pair {
        listener: _listener,
        client: c,
        server: mut s,
    } = p;
    drop(c); // the active closer ends in TIME-WAIT
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "server sees the FIN");
    drop(s);
    let tw = wait_for("client in TIME-WAIT", Duration::from_secs(5), || {
        let lines = sockets_json(kaprobe().args([
            "sockets",
            "--port",
            &port,
            "--state",
            "time-wait",
            "--json",
        ]));
        find(&lines, client)
    });
    assert_eq!(tw["state"], "TIME-WAIT");
    assert_eq!(tw["timer"], "timewait");
    let exp = tw["expires"].as_f64().unwrap();
    assert!(
        exp > 0.0 && exp <= 60.0,
        "TIME-WAIT lasts 60 s on Linux: {tw}"
    );
    assert!(tw["probes"].is_null(), "no tcp_info for TIME-WAIT: {tw}");
    let default = sockets_json(kaprobe().args(["sockets", "--port", &port, "--json"]));
    assert!(
        find(&default, client).is_none(),
        "TIME-WAIT is not listed by default, as in ss"
    );
}

#[test]
fn zero_window_shows_the_persist_timer() {
    // A listener with a tiny receive buffer whose accepted side never reads.
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.set_recv_buffer_size(4096).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(8).unwrap();
    let laddr = l.local_addr().unwrap().as_socket().unwrap();
    let mut client = TcpStream::connect(laddr).unwrap();
    let (_server, _) = l.accept().unwrap();
    client.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0usize;
    wait_for(
        "the client's send buffer to fill",
        Duration::from_secs(5),
        || match client.write(&chunk) {
            Ok(n) => {
                written += n;
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(()),
            Err(e) => panic!("write: {e}"),
        },
    );
    let caddr = client.local_addr().unwrap();
    let port = laddr.port().to_string();
    let c = wait_for("the persist timer", Duration::from_secs(10), || {
        let lines = sockets_json(kaprobe().args(["sockets", "--port", &port, "--json"]));
        find(&lines, caddr).filter(|c| c["timer"] == "persist")
    });
    assert_eq!(c["state"], "ESTAB");
    assert!(
        c["send_q"].as_u64().unwrap() > 0,
        "data waits for the window: {c}"
    );
    assert!(c["expires"].as_f64().unwrap() > 0.0, "{c}");
    assert!(written > 0);
}

#[test]
fn unacknowledged_data_shows_the_retransmit_timer_counting() {
    kaprobe_tests::require_root!();
    kaprobe_tests::require_tool!("iptables");
    let ns = Netns::new("sockrt");
    let mut p = pair_in(&ns);
    let port = p.port();
    // The server's side of the namespace's loopback now drops everything sent to it.
    ns.exec(&format!("iptables -A INPUT -p tcp --dport {port} -j DROP"));
    p.client.write_all(b"hello?").unwrap();
    let client = p.client.local_addr().unwrap();
    let port = port.to_string();
    let c = wait_for("two retransmissions", Duration::from_secs(10), || {
        let lines = sockets_json(
            ns.command(kaprobe_bin())
                .args(["sockets", "--port", &port, "--json"]),
        );
        let c = find(&lines, client).expect("client listed");
        assert_eq!(c["state"], "ESTAB", "{c}");
        (c["timer"] == "on" && c["retrans"].as_u64().unwrap() >= 2).then_some(c)
    });
    assert!(
        c["send_q"].as_u64().unwrap() >= 6,
        "the unacknowledged bytes: {c}"
    );
    assert!(c["expires"].as_f64().unwrap() > 0.0, "{c}");
    assert!(
        c["last_ack_age"].as_f64().unwrap() >= 0.2,
        "no ACK since the data went out: {c}"
    );
}

fn failed_with(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} missing from: {err}");
    }
    assert!(stdout(o).is_empty());
}

#[test]
fn bad_state_names_are_rejected_listing_the_valid_ones() {
    for bad in ["estab", "established,bogus", ""] {
        let o = kaprobe()
            .args(["sockets", "--state", bad])
            .output()
            .unwrap();
        failed_with(
            &o,
            2,
            &[
                "--state",
                "established",
                "time-wait",
                "close-wait",
                "listen",
            ],
        );
    }
    let o = kaprobe()
        .args(["sockets", "--state", "estab"])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("\"estab\""), "{}", stderr(&o));
}

#[test]
fn bad_ports_are_rejected_naming_the_range() {
    for bad in ["0", "65536", "99999999999", "-1", "http"] {
        let o = kaprobe().args(["sockets", "--port", bad]).output().unwrap();
        failed_with(&o, 2, &["--port", bad, "1..=65535"]);
    }
}
