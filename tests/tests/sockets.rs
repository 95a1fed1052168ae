//! `kaprobe sockets` end to end: the real binary reading real loopback sockets through
//! sock_diag, compared with what the test's own sockets and the kernel's counters say.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kaprobe_tests::{
    in_netns, is_root, json_lines, kaprobe, kaprobe_bin, keepalive, require_root, require_tool,
    stderr, stdout, wait_for, Netns,
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

// ---- the habits of ss: -p, src/dst, -N, -K, -E, and a live table ----

/// `ss -tnH ARGS...` (optionally in a namespace): each socket as (local, peer, the rest).
fn ss_rows(netns: Option<&str>, args: &[&str]) -> Vec<(String, String, String)> {
    let mut cmd = Command::new("ss");
    if let Some(ns) = netns {
        cmd.args(["-N", ns]);
    }
    let o = cmd.args(["-tnH"]).args(args).output().unwrap();
    assert!(o.status.success(), "ss {args:?}: {}", stderr(&o));
    stdout(&o)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // State Recv-Q Send-Q Local Peer [Process]
            (f.len() >= 5).then(|| (f[3].to_string(), f[4].to_string(), f[5..].join(" ")))
        })
        .collect()
}

/// ss writes IPv6 addresses as `[::1]:443` and IPv4-mapped ones as `[::ffff:1.2.3.4]:5`,
/// like Rust's `SocketAddr`: compare them as parsed addresses.
fn addr_set(
    rows: impl IntoIterator<Item = (String, String)>,
) -> BTreeSet<(SocketAddr, SocketAddr)> {
    rows.into_iter()
        .map(|(l, p)| {
            // a listener's peer: `0.0.0.0:*`, `[::]:*`
            let (l, p) = (l.replace(":*", ":0"), p.replace(":*", ":0"));
            (
                l.parse().unwrap_or_else(|_| panic!("{l}")),
                p.parse().unwrap_or_else(|_| panic!("{p}")),
            )
        })
        .collect()
}

fn json_set(lines: &[Value]) -> BTreeSet<(SocketAddr, SocketAddr)> {
    addr_set(lines.iter().map(|v| {
        (
            v["local"].as_str().unwrap().to_string(),
            v["peer"].as_str().unwrap().to_string(),
        )
    }))
}

/// `users:(("name",pid=1,fd=3),...)` -> [(pid, name, fd)].
fn ss_users(s: &str) -> BTreeSet<(u64, String, u64)> {
    let mut out = BTreeSet::new();
    let Some(inner) = s.strip_prefix("users:(") else {
        return out;
    };
    for part in inner.split("),(") {
        let part = part.trim_start_matches('(').trim_end_matches(')');
        let Some((name, rest)) = part.strip_prefix('"').and_then(|p| p.split_once("\",")) else {
            continue;
        };
        let mut pid = 0;
        let mut fd = 0;
        for kv in rest.split(',') {
            if let Some(v) = kv.strip_prefix("pid=") {
                pid = v.parse().unwrap();
            }
            if let Some(v) = kv.strip_prefix("fd=") {
                fd = v.parse().unwrap();
            }
        }
        out.insert((pid, name.to_string(), fd));
    }
    out
}

fn json_users(v: &Value) -> BTreeSet<(u64, String, u64)> {
    v["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes in {v}"))
        .iter()
        .map(|o| {
            (
                o["pid"].as_u64().unwrap(),
                o["command"].as_str().unwrap().to_string(),
                o["fd"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn processes_are_the_pids_and_commands_ss_p_shows() {
    require_root!();
    require_tool!("ss");
    // The server side belongs to a kaprobe serve child, the client side to this test.
    let (_serve, addr) = kaprobe_tests::serve_quiet(&["--keepalive-timeout", "60s"]);
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let port = addr.port().to_string();
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let ours: BTreeSet<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    // A connection sits in the listener's queue, owned by no process, until serve's
    // accept() gives it a descriptor: wait until each of ours has an owner.
    let lines = wait_for(
        "the server accepted all three",
        Duration::from_secs(5),
        || {
            let v = sockets_json(kaprobe().args(["sockets", "-p", "--port", &port, "--json"]));
            let owned = v
                .iter()
                .filter(|s| {
                    let end = |k: &str| s[k].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                    let mine = end("local").is_some_and(|a| ours.contains(&a))
                        || end("peer").is_some_and(|a| ours.contains(&a));
                    mine && s["processes"].as_array().is_some_and(|p| !p.is_empty())
                })
                .count();
            (owned == 6).then_some(v)
        },
    );
    let ss = ss_rows(None, &["-p", &filter]);
    let mut compared = 0;
    for v in &lines {
        let local: SocketAddr = v["local"].as_str().unwrap().parse().unwrap();
        let peer: SocketAddr = v["peer"].as_str().unwrap().parse().unwrap();
        if !ours.contains(&local) && !ours.contains(&peer) {
            continue; // another test's connection to a reused port number
        }
        let row = ss
            .iter()
            .find(|(l, p, _)| {
                l.parse::<SocketAddr>().ok() == Some(local)
                    && p.parse::<SocketAddr>().ok() == Some(peer)
            })
            .unwrap_or_else(|| panic!("ss does not list {local} -> {peer}: {ss:?}"));
        let theirs = ss_users(&row.2);
        assert!(!theirs.is_empty(), "ss shows an owner: {row:?}");
        assert_eq!(json_users(v), theirs, "{local} -> {peer}");
        let me = u64::from(std::process::id());
        if ours.contains(&local) {
            assert!(
                theirs.iter().any(|(pid, _, _)| *pid == me),
                "client is ours: {theirs:?}"
            );
        } else {
            assert!(
                theirs.iter().any(|(_, c, _)| c == "kaprobe"),
                "server side is serve's: {theirs:?}"
            );
        }
        compared += 1;
    }
    assert_eq!(
        compared, 6,
        "three clients and their accepted sides: {lines:?}"
    );
    // The table shows them as PID/command.
    let o = kaprobe()
        .args(["sockets", "-p", "--port", &port])
        .env("COLUMNS", "200")
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains(&format!("{}/", std::process::id())),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("Process"), "{}", stdout(&o));
}

/// Listeners on the given loopback addresses, each with one client connected.
fn pairs_on(addrs: &[&str]) -> Vec<Pair> {
    addrs.iter().map(|a| Pair::new(a)).collect()
}

#[test]
fn dst_and_src_prefixes_select_the_same_sockets_as_ss() {
    require_tool!("ss");
    // Addresses no other test uses; 127.91.0.0/16 holds two of them, 127.92.0.1 is outside.
    let _pairs = pairs_on(&["127.91.0.1:0", "127.91.7.1:0", "127.92.0.1:0", "[::1]:0"]);
    let v6_port = _pairs[3].port();
    let port0 = _pairs[0].port();
    for (ours, theirs, expect) in [
        (
            vec!["--dst", "127.91.0.0/16"],
            "dst 127.91.0.0/16".to_string(),
            2,
        ),
        (
            vec!["--src", "127.91.0.0/16"],
            "src 127.91.0.0/16".to_string(),
            2,
        ),
        // a wider prefix that still holds only this test's addresses (others run alongside)
        (
            vec!["--dst", "127.90.0.0/15"],
            "dst 127.90.0.0/15".to_string(),
            2,
        ),
        (
            vec!["--dst", &format!("127.91.0.0/16:{port0}")],
            format!("dst 127.91.0.0/16:{port0}"),
            1,
        ),
        (vec!["--dst", "127.92.0.1"], "dst 127.92.0.1".to_string(), 1),
        (
            vec!["--dst", &format!("127.91.0.1:{port0}")],
            format!("dst 127.91.0.1:{port0}"),
            1,
        ),
        (
            vec!["--dst", &format!("[::1]:{v6_port}")],
            format!("dst [::1]:{v6_port}"),
            1,
        ),
    ] {
        let mut args = vec!["sockets", "--json"];
        args.extend(&ours);
        let k = json_set(&sockets_json(kaprobe().args(&args)));
        let words: Vec<&str> = theirs.split(' ').collect();
        let s = addr_set(ss_rows(None, &words).into_iter().map(|(l, p, _)| (l, p)));
        assert_eq!(k, s, "kaprobe {ours:?} vs ss {theirs}");
        assert_eq!(k.len(), expect, "{ours:?}: {k:?}");
    }
}

#[test]
fn bad_prefixes_are_one_line_errors_naming_the_value() {
    for (flag, bad, needle) in [
        ("--dst", "10.0.0.0/33", "/0../32"),
        ("--src", "fd00::/200", "/0../128"),
        ("--dst", "10.0.0.1:0", "1..=65535"),
        ("--dst", "example.com", "not an IPv4 or IPv6 address"),
    ] {
        let o = kaprobe().args(["sockets", flag, bad]).output().unwrap();
        failed_with(&o, 2, &[flag, bad, needle]);
    }
}

#[test]
fn netns_lists_what_ss_n_lists_in_a_namespace_the_test_made() {
    require_root!();
    require_tool!("ss");
    let ns = Netns::new("sockN");
    let pairs = in_netns(&ns.name, || pairs_on(&["127.0.0.1:0", "[::1]:0"]));
    let k =
        json_set(&sockets_json(kaprobe().args([
            "sockets", "--netns", &ns.name, "--state", "all", "--json",
        ])));
    let s = addr_set(
        ss_rows(Some(&ns.name), &["state", "all"])
            .into_iter()
            .map(|(l, p, _)| (l, p)),
    );
    assert_eq!(k, s);
    assert_eq!(k.len(), 6, "two listeners, two pairs: {k:?}");
    for p in &pairs {
        assert!(k.contains(&(
            p.client.local_addr().unwrap(),
            p.listener.local_addr().unwrap()
        )));
    }
    // Short flag as in ss, and a missing namespace is one line.
    let o = kaprobe()
        .args(["sockets", "-N", &ns.name])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kaprobe()
        .args(["sockets", "--netns", "kp-no-such-namespace"])
        .output()
        .unwrap();
    failed_with(&o, 2, &["--netns", "kp-no-such-namespace", "ip netns list"]);
}

/// Whether the peer of a killed socket sees a reset (and the survivor does not).
fn sees_reset(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[test]
fn kill_ends_exactly_what_ss_k_would_and_the_peer_sees_the_reset() {
    require_root!();
    require_tool!("ss");
    for (tool, base) in [("kaprobe", "127.93"), ("ss", "127.94")] {
        let target = format!("{base}.0.1");
        let mut pairs = pairs_on(&[
            &format!("{target}:0"),
            &format!("{target}:0"),
            &format!("{base}.0.2:0"),
        ]);
        let dst = format!("{target}/32");
        let would = addr_set(
            ss_rows(None, &["dst", &dst])
                .into_iter()
                .map(|(l, p, _)| (l, p)),
        );
        assert_eq!(would.len(), 2, "{would:?}");
        let killed = if tool == "kaprobe" {
            let o = kaprobe()
                .args(["sockets", "--kill", "--yes", "--dst", &dst, "--json"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            assert!(stderr(&o).contains("killed 2 sockets"), "{}", stderr(&o));
            let lines = json_lines(&o);
            assert!(lines.iter().all(|v| v["killed"] == true), "{lines:?}");
            json_set(&lines)
        } else {
            let o = Command::new("ss")
                .args(["-tnHK", "dst", &dst])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            addr_set(stdout(&o).lines().map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[3].to_string(), f[4].to_string())
            }))
        };
        assert_eq!(killed, would, "{tool} killed what ss selects");
        for (i, p) in pairs.iter_mut().enumerate() {
            assert_eq!(
                sees_reset(&mut p.server),
                i < 2,
                "{tool}: pair {i}'s server"
            );
        }
        // Nothing left to kill.
        let left = addr_set(
            ss_rows(None, &["dst", &dst])
                .into_iter()
                .map(|(l, p, _)| (l, p)),
        );
        assert!(left.is_empty(), "{tool}: {left:?}");
    }
}

#[test]
fn kill_without_any_filter_is_refused_unless_yes() {
    let o = kaprobe().args(["sockets", "--kill"]).output().unwrap();
    failed_with(&o, 2, &["--kill", "--yes"]);
    let o = kaprobe()
        .args(["sockets", "--kill", "--watch", "1s", "--port", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn events_report_the_closes_the_test_causes_with_how_they_ended() {
    require_root!();
    let dst = "127.95.0.1";
    let mut ev = kaprobe_tests::KillOnDrop::spawn(
        kaprobe().args(["sockets", "--events", "--json", "--dst", dst]),
    );
    let err = kaprobe_tests::line_reader(ev.0.stderr.take().unwrap());
    let out = kaprobe_tests::line_reader(ev.0.stdout.take().unwrap());
    kaprobe_tests::wait_line(&err, Duration::from_secs(10), |l| {
        l.contains("listening for closed")
    })
    .expect("events ready");
    // One orderly close and one abort (SO_LINGER 0: a RST), both from the client.
    let fin = Pair::new(&format!("{dst}:0"));
    let rst = Pair::new(&format!("{dst}:0"));
    let (fin_local, rst_local) = (
        fin.client.local_addr().unwrap(),
        rst.client.local_addr().unwrap(),
    );
    drop(fin.client);
    socket2::SockRef::from(&rst.client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(rst.client);
    let mut seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        let Ok(line) = out.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let v: Value = serde_json::from_str(&line).unwrap();
        let local: SocketAddr = v["local"].as_str().unwrap().parse().unwrap();
        assert!(
            v["peer"].as_str().unwrap().starts_with(dst),
            "only --dst {dst}: {v}"
        );
        assert!(v["time"].as_str().is_some() && v["family"] == "ipv4", "{v}");
        seen.insert(local, v);
    }
    assert_eq!(seen[&fin_local]["ended"], "closed", "{fin_local}: {seen:?}");
    assert!(
        seen[&fin_local]["bytes_acked"].as_u64().is_some(),
        "{seen:?}"
    );
    // The abort (tcp_disconnect) clears the local address and the peer's port, and the
    // counters with them: the socket is known by its local port.
    let rst = seen
        .values()
        .find(|v| {
            v["local"]
                .as_str()
                .unwrap()
                .ends_with(&format!(":{}", rst_local.port()))
        })
        .unwrap_or_else(|| panic!("{rst_local}: {seen:?}"));
    assert_eq!(rst["ended"], "aborted", "{rst}");
    assert!(
        rst["bytes_acked"].is_null(),
        "no counters after an abort: {rst}"
    );
}

#[test]
fn watch_refreshes_until_the_socket_is_gone() {
    let p = Pair::new("127.96.0.1:0");
    let port = p.port().to_string();
    let client = p.client.local_addr().unwrap();
    let mut w = kaprobe_tests::KillOnDrop::spawn(kaprobe().args([
        "sockets",
        "--watch",
        "200ms",
        "--json",
        "--port",
        &port,
        "--dst",
        "127.96.0.1",
    ]));
    let out = kaprobe_tests::line_reader(w.0.stdout.take().unwrap());
    let mut rounds_with = 0;
    let mut listed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while rounds_with < 2 && Instant::now() < deadline {
        let Ok(line) = out.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get("refresh").is_some() {
            if listed {
                assert_eq!(v["sockets"], 1, "{v}");
                rounds_with += 1;
            }
            listed = false;
        } else if v["local"] == client.to_string().as_str() {
            listed = true;
        }
    }
    assert_eq!(rounds_with, 2, "two refreshes listed the connection");
    drop(p);
    let empty = wait_for("a refresh without it", Duration::from_secs(10), || {
        let line = out.recv_timeout(Duration::from_millis(500)).ok()?;
        let v: Value = serde_json::from_str(&line).unwrap();
        (v.get("refresh").is_some() && v["sockets"] == 0).then_some(v)
    });
    assert!(empty["refresh"].as_str().is_some());
}

#[test]
fn events_in_a_namespace_tell_a_keepalive_timeout_from_a_close() {
    require_root!();
    require_tool!("iptables");
    let pair = kaprobe_tests::NsPair::new("ev");
    let mut ev = kaprobe_tests::KillOnDrop::spawn(kaprobe().args([
        "sockets",
        "--events",
        "--json",
        "--netns",
        &pair.a.name,
    ]));
    let err = kaprobe_tests::line_reader(ev.0.stderr.take().unwrap());
    let out = kaprobe_tests::line_reader(ev.0.stdout.take().unwrap());
    kaprobe_tests::wait_line(&err, Duration::from_secs(10), |l| {
        l.contains("listening for closed")
    })
    .expect("events ready");
    let listener = pair.listen_b();
    // Keep-alive 1s/1s/3 probes, then the peer drops everything: ETIMEDOUT.
    let (client, _server) = pair.lose_peer(&listener);
    let local = client.local_addr().unwrap();
    drop(client); // the kernel destroys the socket when its owner lets go
    let line = wait_for(
        "the keep-alive timeout reported",
        Duration::from_secs(10),
        || {
            let l = out.recv_timeout(Duration::from_millis(500)).ok()?;
            let v: Value = serde_json::from_str(&l).unwrap();
            (v["local"] == local.to_string().as_str()).then_some(v)
        },
    );
    assert_eq!(line["ended"], "keepalive_timeout", "{line}");
    assert_eq!(line["probes"], 3, "three probes went unanswered: {line}");
    assert_eq!(
        line["peer"],
        listener.local_addr().unwrap().to_string().as_str()
    );
}

#[test]
fn kill_asks_on_a_terminal_and_a_no_kills_nothing() {
    require_root!();
    require_tool!("script");
    let mut p = Pair::new("127.97.0.1:0");
    let dst = p.listener.local_addr().unwrap().to_string();
    // `script` gives kaprobe a terminal; the answer comes on it.
    let ask = |answer: &str| {
        let mut child = Command::new("script")
            .args(["-qec"])
            .arg(format!(
                "{} sockets --kill --dst {dst}",
                kaprobe_bin().display()
            ))
            .arg("/dev/null")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = ask("n\n");
    assert!(
        stdout(&o).contains("kill this socket? Each peer gets a RST. [y/N]"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("nothing killed"), "{}", stdout(&o));
    assert_eq!(o.status.code(), Some(1));
    assert!(!sees_reset(&mut p.server), "a no kills nothing");
    let o = ask("y\n");
    assert!(stdout(&o).contains("killed 1 socket"), "{}", stdout(&o));
    assert!(sees_reset(&mut p.server));
}
