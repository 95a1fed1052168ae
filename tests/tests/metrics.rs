//! Prometheus metrics: `kaprobe watch --metrics` scraped while a known keep-alive exchange
//! (and a silently dead peer) runs, `kaprobe serve --metrics` after requests and an idle
//! close, bad addresses, and the documented alert rules checked by promtool.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use kaprobe_tests::{
    in_netns, kaprobe, keepalive, line_reader, promtool_lint, require_root, require_tool, run,
    stderr, wait_for, wait_line, workspace_root, KillOnDrop, NsPair,
};
use prometheus_parse::{Scrape, Value};

/// GET `path` from `addr` over plain HTTP/1.1; the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("text/plain; version=0.0.4"),
        "exposition content type: {head}"
    );
    body.to_owned()
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of `name` (with `label=value` when given), panicking when it is missing.
fn value(s: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let hit = s
        .samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)));
    match hit.map(|x| &x.value) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        other => panic!("{name} {label:?}: {other:?}"),
    }
}

/// The metrics address a command printed on stderr (`... metrics on http://ADDR/metrics`).
fn metrics_addr(err: &Receiver<String>) -> SocketAddr {
    let line = wait_line(err, Duration::from_secs(20), |l| {
        l.contains("metrics on http://")
    })
    .unwrap_or_else(|seen| panic!("no metrics line on stderr: {seen:?}"));
    let url = line.split("http://").nth(1).unwrap();
    url.trim_end_matches("/metrics").parse().unwrap()
}

fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let names = lines[0].split_whitespace();
    let values = lines[1].split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| v.parse().unwrap())
}

#[test]
fn watch_metrics_count_the_probes_of_a_known_keepalive_exchange() {
    require_root!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = KillOnDrop::spawn(kaprobe().args([
        "watch",
        "lo",
        "--port",
        &port.to_string(),
        "--metrics",
        "127.0.0.1:0",
        "--json",
        "--duration",
        "60s",
    ]));
    let out = line_reader(child.0.stdout.take().unwrap());
    let err = line_reader(child.0.stderr.take().unwrap());
    let addr = metrics_addr(&err);
    wait_line(&out, Duration::from_secs(20), |l| l.contains("\"start\"")).unwrap();
    let kernel_before = tcp_ext("TCPKeepAlive");

    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    keepalive(&client, 1, 1, 3);
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).unwrap();
    // Three probes (at ~1, 2, 3 s of idle), each answered.
    let mut probes = 0;
    while probes < 3 {
        wait_line(&out, Duration::from_secs(10), |l| {
            l.contains("\"kind\":\"keepalive\"")
        })
        .unwrap_or_else(|seen| panic!("probe {} not seen: {seen:?}", probes + 1));
        probes += 1;
    }
    drop(client);
    drop(server);
    // The flow's summary (closed) is the last event the exchange produces.
    let flow = wait_line(&out, Duration::from_secs(10), |l| {
        l.contains("\"type\":\"flow\"")
    })
    .unwrap_or_else(|seen| panic!("no flow summary: {seen:?}"));
    // Probes are counted into the scrape within the next one-second publish.
    let text = wait_for("the probes in a scrape", Duration::from_secs(5), || {
        let t = http_get(addr, "/metrics");
        let s = parse(&t);
        let seen = value(&s, "kaprobe_watch_keepalive_probes_total", None);
        (seen >= 3.0 && value(&s, "kaprobe_watch_keepalive_acks_total", None) >= seen).then_some(t)
    });
    let s = parse(&text);
    let flow: serde_json::Value = serde_json::from_str(&flow).unwrap();
    let probes_in_flow = flow["keepalives"].as_u64().unwrap() as f64;
    let got = value(&s, "kaprobe_watch_keepalive_probes_total", None);
    assert_eq!(got, probes_in_flow, "{flow}\n{text}");
    assert!((3.0..=4.0).contains(&got), "{text}");
    assert_eq!(value(&s, "kaprobe_watch_keepalive_acks_total", None), got);
    let kernel_sent = tcp_ext("TCPKeepAlive") - kernel_before;
    assert!(
        kernel_sent as f64 >= got,
        "the kernel sent {kernel_sent} probes, the scrape says {got}"
    );
    assert_eq!(
        value(&s, "kaprobe_watch_unanswered_probes_total", None),
        0.0
    );
    assert_eq!(value(&s, "kaprobe_watch_dead_peers_total", None), 0.0);
    assert_eq!(value(&s, "kaprobe_watch_capture_drops_total", None), 0.0);
    assert_eq!(
        value(
            &s,
            "kaprobe_watch_flows_ended_total",
            Some(("outcome", "closed"))
        ),
        1.0,
        "{text}"
    );
    assert!(value(&s, "kaprobe_watch_packets_total", Some(("iface", "lo"))) >= 2.0 * got);
    // One first probe, after ~1 s of idle.
    let idle = s
        .samples
        .iter()
        .find(|x| x.metric == "kaprobe_watch_keepalive_idle_seconds")
        .unwrap();
    let Value::Histogram(buckets) = &idle.value else {
        panic!("{idle:?}")
    };
    let le = |b: f64| buckets.iter().find(|h| h.less_than == b).unwrap().count;
    assert_eq!(le(5.0), 1.0, "{buckets:?}");
    assert_eq!(le(f64::INFINITY), 1.0, "{buckets:?}");
    promtool_lint(&text);
}

#[test]
fn watch_metrics_count_a_peer_that_died_silently() {
    require_root!();
    require_tool!("iptables");
    let pair = NsPair::new("kpmet");
    let listener = pair.listen_b();
    let port = listener.local_addr().unwrap().port();
    let mut cmd = pair.watch_in_a(
        port,
        &["--json", "--duration", "60s", "--metrics", "127.0.0.1:0"],
    );
    let mut child = KillOnDrop::spawn(&mut cmd);
    let out = line_reader(child.0.stdout.take().unwrap());
    let err = line_reader(child.0.stderr.take().unwrap());
    let addr = metrics_addr(&err);
    wait_line(&out, Duration::from_secs(20), |l| l.contains("\"start\"")).unwrap();
    let _conn = pair.lose_peer(&listener);
    wait_line(&out, Duration::from_secs(10), |l| l.contains("peer_dead"))
        .unwrap_or_else(|seen| panic!("no peer_dead flow: {seen:?}"));
    let ns = pair.a.name.clone();
    let text = wait_for("the dead peer in a scrape", Duration::from_secs(5), || {
        let ns = ns.clone();
        let t = in_netns(&ns, move || http_get(addr, "/metrics"));
        (value(&parse(&t), "kaprobe_watch_keepalive_probes_total", None) >= 3.0).then_some(t)
    });
    let s = parse(&text);
    assert_eq!(
        value(&s, "kaprobe_watch_dead_peers_total", None),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&s, "kaprobe_watch_unanswered_probes_total", None),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(
            &s,
            "kaprobe_watch_flows_ended_total",
            Some(("outcome", "peer_dead"))
        ),
        1.0
    );
    assert_eq!(value(&s, "kaprobe_watch_keepalive_acks_total", None), 0.0);
    assert_eq!(value(&s, "kaprobe_watch_capture_drops_total", None), 0.0);
}

#[test]
fn serve_metrics_answer_on_their_own_address_with_close_reasons() {
    let mut child = KillOnDrop::spawn(kaprobe().args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--keepalive-timeout",
        "300ms",
        "--log",
        "off",
    ]));
    let err = line_reader(child.0.stderr.take().unwrap());
    let listen: SocketAddr = {
        let l = wait_line(&err, Duration::from_secs(20), |l| {
            l.contains("listening on")
        })
        .unwrap_or_else(|seen| panic!("serve did not start: {seen:?}"));
        l.rsplit("http://").next().unwrap().parse().unwrap()
    };
    let addr = metrics_addr(&err);
    assert_ne!(addr, listen);
    // Three requests on one connection, then the server's idle timeout closes it.
    let mut c = TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    for _ in 0..3 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
    }
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap(); // EOF: the idle close
    let text = wait_for("the idle close in a scrape", Duration::from_secs(5), || {
        let t = http_get(addr, "/metrics");
        let s = parse(&t);
        (value(
            &s,
            "kaprobe_connection_closes_total",
            Some(("reason", "idle_timeout")),
        ) >= 1.0)
            .then_some(t)
    });
    let s = parse(&text);
    assert_eq!(value(&s, "kaprobe_requests_total", None), 3.0, "{text}");
    assert_eq!(value(&s, "kaprobe_requests_reused_total", None), 2.0);
    // Scrapes are not traffic: one connection accepted, the test's.
    assert_eq!(value(&s, "kaprobe_connections_accepted_total", None), 1.0);
    assert_eq!(
        value(
            &s,
            "kaprobe_connection_closes_total",
            Some(("reason", "idle_timeout"))
        ),
        1.0
    );
    promtool_lint(&text);
    // Anything but /metrics is not served there (the root points to it).
    for (path, status) in [("/nope", "404"), ("/", "200")] {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut head = String::new();
        c.read_to_string(&mut head).unwrap();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {head}"
        );
    }
}

#[test]
fn bad_metrics_addresses_exit_2_naming_the_flag() {
    for (cmd, bad) in [
        ("watch", "nope"),
        ("watch", "127.0.0.1"),
        ("watch", "127.0.0.1:99999"),
        ("serve", "localhost"),
        ("serve", ":9464"),
    ] {
        let args: Vec<&str> = if cmd == "watch" {
            vec!["watch", "lo", "--metrics", bad]
        } else {
            vec!["serve", "--listen", "127.0.0.1:0", "--metrics", bad]
        };
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("--metrics") && e.contains("IP:PORT"),
            "{args:?}: {e}"
        );
    }
    // A well-formed address this host does not have (bind fails; nothing is sent).
    let o = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "10.200.255.1:9464",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--metrics 10.200.255.1:9464"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn documented_alert_rules_pass_promtool_and_match_the_docs() {
    let root = workspace_root();
    let rules = root.join("docs/kaprobe-alerts.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    assert!(
        doc.contains(text.trim()),
        "docs/metrics.md must show docs/kaprobe-alerts.yml verbatim"
    );
    for name in [
        "KaprobePeersDyingSilently",
        "KaprobeIdleTimeoutMismatch",
        "KaprobeCaptureDrops",
    ] {
        assert!(text.contains(name), "{name}");
    }
    require_tool!("promtool");
    let o = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Every metric the rules use is one kaprobe exports.
    for m in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if m.starts_with("kaprobe_") {
            assert!(doc.contains(&format!("`{m}")), "{m} is not documented");
        }
    }
}
