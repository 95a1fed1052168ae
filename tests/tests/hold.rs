//! `kaprobe hold` and `kaprobe defaults` against real sockets, real kernel probes and, as root,
//! a silently dead peer made with iptables inside network namespaces.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use kaprobe_tests::{
    fails, json_lines, kaprobe, kaprobe_bin, line_reader, require_root, run, stderr, wait_line,
    KillOnDrop, NsPair,
};
use serde_json::Value;

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn end_line(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|v| v["type"] == "end")
        .unwrap_or_else(|| panic!("no end line in {lines:?}"))
}

/// Spawn `kaprobe hold --listen ... --json` and return it with the bound address.
fn listen_hold(
    cmd: &mut std::process::Command,
) -> (KillOnDrop, std::sync::mpsc::Receiver<String>, String) {
    let mut child = KillOnDrop::spawn(cmd.stdin(Stdio::null()));
    let rx = line_reader(child.0.stdout.take().unwrap());
    let line = wait_line(&rx, Duration::from_secs(20), |l| {
        l.contains("\"listening\"")
    })
    .expect("listening line");
    let v: Value = serde_json::from_str(&line).unwrap();
    (child, rx, v["addr"].as_str().unwrap().to_string())
}

fn dead_peer(extra: &[&str]) -> (i32, Vec<Value>) {
    let ns = NsPair::new("hold");
    // the peer: an accepting socket in namespace b that never probes on its own
    let mut peer_cmd = ns.b.command(kaprobe_bin());
    peer_cmd.args([
        "hold",
        "--listen",
        &format!("{}:0", ns.b_addr),
        "--idle",
        "9h",
        "--json",
    ]);
    let (_peer, _peer_rx, addr) = listen_hold(&mut peer_cmd);
    let mut client_cmd = ns.a.command(kaprobe_bin());
    client_cmd
        .args([
            "hold",
            &addr,
            "--idle",
            "1s",
            "--interval",
            "1s",
            "--count",
            "3",
            "--json",
        ])
        .args(extra)
        .stdin(Stdio::null());
    let mut client = KillOnDrop::spawn(&mut client_cmd);
    let rx = line_reader(client.0.stdout.take().unwrap());
    let mut lines = Vec::new();
    let eff = wait_line(&rx, Duration::from_secs(20), |l| {
        l.contains("\"effective\"")
    })
    .expect("effective line");
    lines.push(serde_json::from_str(&eff).unwrap());
    // the peer goes silent: everything arriving in b is dropped, nothing answers
    ns.b.exec("iptables -A INPUT -j DROP");
    let end = wait_line(&rx, Duration::from_secs(20), |l| l.contains("\"end\""))
        .unwrap_or_else(|seen| panic!("no end line; saw {seen:?}"));
    lines.push(serde_json::from_str(&end).unwrap());
    let status = client.0.wait().unwrap();
    (status.code().unwrap_or(-1), lines)
}

#[test]
fn dead_peer_is_dropped_after_three_unanswered_probes_at_four_seconds() {
    require_root!();
    let (code, lines) = dead_peer(&[]);
    let end = end_line(&lines);
    assert_eq!(end["outcome"], "keepalive_timeout", "{end}");
    assert_eq!(code, 12, "{end}");
    assert_eq!(end["unanswered"], 3, "{end}");
    assert_eq!(end["probes_answered"], 0, "{end}");
    let silent = f(end, "silent_for");
    assert!(
        (silent - 4.0).abs() <= 0.3,
        "silent for {silent} s, expected 4 s +/- 0.3: {end}"
    );
    assert_eq!(f(end, "expected_silent_for"), 4.0, "{end}");
    assert_eq!(end["matches_config"], true, "{end}");
    eprintln!("measured dead-peer time: {silent:.3} s (expected 4 s)");
}

#[test]
fn user_timeout_wins_over_the_probe_count() {
    require_root!();
    let (code, lines) = dead_peer(&["--user-timeout", "2500ms"]);
    let eff = lines.iter().find(|v| v["type"] == "effective").unwrap();
    assert_eq!(f(eff, "user_timeout"), 2.5, "{eff}");
    let end = end_line(&lines);
    assert_eq!(end["outcome"], "user_timeout", "{end}");
    assert_eq!(code, 13, "{end}");
    let silent = f(end, "silent_for");
    // probes at 1 s and 2 s; the run at 3 s finds 3 s >= 2.5 s with probes out
    assert!(
        (silent - 3.0).abs() <= 0.3,
        "silent for {silent} s, expected 3 s: {end}"
    );
    assert!(
        silent < 3.7,
        "user timeout must end it before the count would (4 s)"
    );
    assert_eq!(end["matches_config"], true, "{end}");
}

fn hold_against(listener: &TcpListener, close: impl FnOnce(TcpStream)) -> (i32, Vec<Value>) {
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = KillOnDrop::spawn(kaprobe().args(["hold", &addr, "--json", "--idle", "60"]));
    let (conn, _) = listener.accept().unwrap();
    let rx = line_reader(child.0.stdout.take().unwrap());
    let first = wait_line(&rx, Duration::from_secs(20), |l| {
        l.contains("\"effective\"")
    })
    .expect("effective line");
    close(conn);
    let end = wait_line(&rx, Duration::from_secs(20), |l| l.contains("\"end\"")).expect("end line");
    let code = child.0.wait().unwrap().code().unwrap_or(-1);
    (
        code,
        vec![
            serde_json::from_str(&first).unwrap(),
            serde_json::from_str(&end).unwrap(),
        ],
    )
}

#[test]
fn peer_fin_is_reported_with_its_own_exit_status() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, lines) = hold_against(&l, drop);
    let end = end_line(&lines);
    assert_eq!(end["outcome"], "peer_fin", "{end}");
    assert_eq!(code, 10);
    assert_eq!(end["matches_config"], Value::Null);
}

#[test]
fn peer_rst_is_reported_with_its_own_exit_status() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, lines) = hold_against(&l, |c| {
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
    });
    let end = end_line(&lines);
    assert_eq!(end["outcome"], "peer_rst", "{end}");
    assert_eq!(code, 11);
}

fn server_side_probes(listen: &str) {
    let mut cmd = kaprobe();
    cmd.args([
        "hold",
        "--listen",
        listen,
        "--idle",
        "1s",
        "--interval",
        "1s",
        "--count",
        "3",
        "--duration",
        "2.6s",
        "--json",
    ]);
    let (mut child, rx, addr) = listen_hold(&mut cmd);
    let mut client = TcpStream::connect(&addr).unwrap();
    let lines: Vec<Value> = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(20)).ok())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    let code = child.0.wait().unwrap().code();
    assert_eq!(code, Some(0), "{lines:?}");
    let acc = lines
        .iter()
        .find(|v| v["type"] == "accepted")
        .expect("accepted");
    assert_eq!(acc["peer"], client.local_addr().unwrap().to_string());
    let eff = lines.iter().find(|v| v["type"] == "effective").unwrap();
    assert_eq!(eff["keepalive"], true);
    assert_eq!(
        (f(eff, "idle"), f(eff, "interval"), eff["count"].as_u64()),
        (1.0, 1.0, Some(3))
    );
    let end = end_line(&lines);
    assert_eq!(end["outcome"], "stopped");
    // probes at ~1 s and ~2 s, both answered by the client's kernel
    assert_eq!(end["probes_sent"], 2, "{lines:?}");
    assert_eq!(end["probes_answered"], 2, "{lines:?}");
    let sent: Vec<f64> = lines
        .iter()
        .filter(|v| v["event"] == "probe_sent")
        .map(|v| f(v, "at"))
        .collect();
    assert_eq!(sent.len(), 2);
    assert!((sent[1] - sent[0] - 1.0).abs() < 0.1, "interval {sent:?}");
    // the held side closes when it stops: the client sees EOF
    let mut buf = [0u8; 1];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(client.read(&mut buf).unwrap(), 0);
}

#[test]
fn server_side_probes_on_ipv4_accepted_socket_are_answered() {
    server_side_probes("127.0.0.1:0");
}

#[test]
fn server_side_probes_on_ipv6_accepted_socket_are_answered() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    server_side_probes("[::1]:0");
}

#[test]
fn client_options_read_back_on_ipv6() {
    let l = TcpListener::bind("[::1]:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let o = run(&[
        "hold",
        &addr,
        "--idle",
        "7",
        "--interval",
        "3",
        "--count",
        "5",
        "--user-timeout",
        "1m",
        "--duration",
        "0.2",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = json_lines(&o);
    let eff = lines.iter().find(|v| v["type"] == "effective").unwrap();
    assert_eq!(f(eff, "idle"), 7.0);
    assert_eq!(f(eff, "interval"), 3.0);
    assert_eq!(eff["count"], 5);
    assert_eq!(f(eff, "user_timeout"), 60.0);
    assert_eq!(
        f(eff, "dead_peer_after"),
        61.0,
        "first run at/after 60 s with a probe out"
    );
}

#[test]
fn bad_keepalive_values_name_flag_value_and_range() {
    // (flag and value, words the error must contain)
    let cases = [
        (
            "--idle 0",
            "--idle 0s is out of range: TCP_KEEPIDLE takes whole seconds in 1s..=32767s",
        ),
        ("--idle 32768", "--idle 32768s is out of range"),
        (
            "--interval 40000s",
            "TCP_KEEPINTVL takes whole seconds in 1s..=32767s",
        ),
        ("--interval 500ms", "sub-second values are not rounded"),
        (
            "--count 0",
            "--count 0 is out of range: TCP_KEEPCNT takes 1..=127 probes",
        ),
        ("--count 128", "--count 128 is out of range"),
        (
            "--user-timeout 1500us",
            "TCP_USER_TIMEOUT takes whole milliseconds",
        ),
        ("--user-timeout 50d", "0..=4294967295ms"),
    ];
    for (flag_value, words) in cases {
        let mut args = vec!["hold", "127.0.0.1:9"];
        args.extend(flag_value.split(' '));
        fails(&args, 2, words);
    }
}

#[test]
fn bad_durations_and_addresses_are_usage_errors() {
    let o = run(&["hold", "127.0.0.1:9", "--idle", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("'soon' is not a valid duration"),
        "{}",
        stderr(&o)
    );
    fails(&["hold", "localhost"], 2, "has no port: use HOST:PORT");
    fails(
        &["hold", "127.0.0.1:99999"],
        2,
        "port '99999' is not a number in 1..=65535",
    );
    fails(&["hold", "127.0.0.1:0"], 2, "port 0");
    fails(
        &["hold", "--listen", "nowhere"],
        2,
        "--listen 'nowhere' is not an address",
    );
}

#[test]
fn refused_unresolvable_and_unreachable_each_get_their_own_exit_status() {
    // a port that was just free: nothing listens
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fails(
        &["hold", &format!("127.0.0.1:{port}")],
        4,
        "connection refused",
    );
    fails(
        &["hold", "nonexistent.invalid:80"],
        3,
        "cannot resolve 'nonexistent.invalid'",
    );
}

#[test]
fn unreachable_and_permission_problems_have_their_own_exit_status() {
    require_root!();
    let ns = kaprobe_tests::Netns::new("unr");
    // no route at all inside a fresh namespace: the network is unreachable
    let o = ns
        .command(kaprobe_bin())
        .args(["hold", "10.200.250.1:80", "--connect-timeout", "2s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("unreachable"), "{}", stderr(&o));
    // binding a privileged port as an unprivileged user is refused
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(kaprobe_bin())
        .args(["hold", "--listen", "127.0.0.1:81"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("permission denied") || stderr(&o).contains("Permission denied"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("CAP_NET_BIND_SERVICE"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn defaults_match_the_kernel_and_explain_the_dead_peer_time() {
    let o = run(&["defaults", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = &json_lines(&o)[0];
    let read = |n: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{n}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (t, i, p) = (
        read("tcp_keepalive_time"),
        read("tcp_keepalive_intvl"),
        read("tcp_keepalive_probes"),
    );
    assert_eq!(f(v, "tcp_keepalive_time"), t);
    assert_eq!(f(v, "tcp_keepalive_intvl"), i);
    assert_eq!(f(v, "tcp_keepalive_probes"), p);
    assert_eq!(f(v, "tcp_retries2"), read("tcp_retries2"));
    assert_eq!(f(v, "dead_peer_after"), t + i * p);
    let human = run(&["defaults"]);
    // Prose wraps to the width (80 columns in a pipe): compare with line breaks undone.
    let out = kaprobe_tests::stdout(&human)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(out.contains("net.ipv4.tcp_keepalive_time"), "{out}");
    assert!(
        out.contains(&format!("({t}s idle + {p} probes x {i}s)")),
        "{out}"
    );
}

#[test]
fn defaults_in_a_namespace_with_linux_defaults_say_2h11m15s() {
    require_root!();
    let ns = kaprobe_tests::Netns::new("dflt");
    let o = ns.command(kaprobe_bin()).arg("defaults").output().unwrap();
    let out = kaprobe_tests::stdout(&o)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        out.contains(
            "a silently dead peer is noticed after 2h11m15s (7200s idle + 9 probes x 75s)"
        ),
        "{out}"
    );
}

#[test]
fn help_teaches_ranges_outcomes_and_examples() {
    let o = run(&["hold", "--help"]);
    assert!(o.status.success());
    // Help wraps to the width (80 columns in a pipe): compare with line breaks undone.
    let out = kaprobe_tests::stdout(&o)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for needle in [
        "TCP_KEEPIDLE), whole seconds",
        "1..=127",
        "Exit status tells the outcome",
        "12 ETIMEDOUT after the configured",
        "kaprobe hold --listen",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    let o = run(&["defaults", "--help"]);
    assert!(kaprobe_tests::stdout(&o).contains("SO_KEEPALIVE"));
}

/// `hold --listen` ends on Ctrl-C, SIGTERM or --duration while it still waits for its one
/// connection, saying so, with exit status 0.
#[test]
fn listen_stops_on_signals_and_duration_before_a_connection() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut child = kaprobe_tests::KillOnDrop::spawn(
            kaprobe_tests::kaprobe()
                .args(["hold", "--listen", "127.0.0.1:0"])
                .stdin(Stdio::null()),
        );
        let out = kaprobe_tests::line_reader(child.0.stdout.take().unwrap());
        kaprobe_tests::wait_line(&out, Duration::from_secs(20), |l| {
            l.contains("listening on")
        })
        .unwrap();
        let t = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.0.id().cast_signed(), sig) };
        let status = child.0.wait().unwrap();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(status.code(), Some(0), "signal {sig}");
        let rest: Vec<String> = out.iter().collect();
        assert!(
            rest.iter()
                .any(|l| l.contains("stopped (signal) before any connection")),
            "{rest:?}"
        );
    }
    let t = Instant::now();
    let o = kaprobe_tests::run(&[
        "hold",
        "--listen",
        "127.0.0.1:0",
        "--duration",
        "1s",
        "--json",
    ]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let lines = kaprobe_tests::json_lines(&o);
    let end = lines.last().unwrap();
    assert_eq!(end["type"], "end");
    assert_eq!(end["outcome"], "stopped");
    assert_eq!(end["connected"], false);
}

#[test]
fn data_the_peer_sends_right_at_connect_is_reported() {
    use std::io::Write;
    // A server that greets as soon as it accepts (as SMTP or SSH do), then stays quiet.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let greeter = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"220 hello\r\n").unwrap();
        // Keep the connection open until kaprobe lets go.
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    });
    let o = run(&["hold", &addr, "--duration", "1s", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    let bytes: u64 = lines
        .iter()
        .filter(|v| v["event"] == "data_received")
        .map(|v| v["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(bytes, 11, "{lines:?}");
    let end = end_line(&lines);
    assert_eq!(end["outcome"], "stopped", "{end}");
    greeter.join().unwrap();
}
