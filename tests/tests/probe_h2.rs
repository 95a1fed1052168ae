//! `kaprobe probe` and `kaprobe race` over HTTP/2 against real peers: nginx with `http2`
//! (h2c and TLS with ALPN), Python gRPC servers (grpcio) with keep-alive enforcement, idle
//! and age limits, and small HTTP/2 servers written here with Python's `h2` package for the
//! endings nginx does not have (GOAWAY then RST, bare FIN or RST, PINGs counted as activity,
//! REFUSED_STREAM); an HTTP/1.1-only server and bad input for the errors.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use kaprobe_tests::peers;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use kaprobe_tests::{
    f64_at as f, kaprobe, probe_json, race_json, require_tool, stderr, str_at as s, KillOnDrop,
};
use peers::{free_port, nginx, TempDir};

/// Skip (loudly; in CI fail) unless python3 can import `module`.
fn python_has(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !kaprobe_tests::in_ci(),
            "CI must have the Python module {module} installed"
        );
        eprintln!("skipped: needs python3 with {module}");
    }
    ok
}

/// A Python server from `script` (written to a temp dir) started with `args`; it prints
/// "ready" once listening. Killed on drop.
struct PyServer {
    _child: KillOnDrop,
    _dir: TempDir,
    port: u16,
}

fn py_server(script: &str, args: &[&str]) -> PyServer {
    let dir = TempDir::new("py-h2");
    let path = dir.write("server.py", script);
    let port = free_port();
    // stderr to a file: a server that logs every refused PING must never block on a pipe
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut child = KillOnDrop(
        Command::new("python3")
            .arg(&path)
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    if !line.starts_with("ready") {
        let _ = child.0.kill();
        let err = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        panic!("python server {args:?} did not start: {line} {err}");
    }
    PyServer {
        _child: child,
        _dir: dir,
        port,
    }
}

/// A gRPC server (grpcio) with the health service reporting SERVING, its channel
/// arguments given as JSON.
const GRPC_SERVER: &str = r#"
import sys, json
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
opts = json.loads(sys.argv[2])
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=list(opts.items()))
h = health.HealthServicer()
h.set("", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
"#;

/// A small h2c server (Python `h2`): answers every request `200 ok`, and after IDLE seconds
/// without any frame from the client (PINGs count) ends the connection by MODE:
/// `goaway_fin`, `goaway_rst` (GOAWAY, then SO_LINGER 0), `bare_fin`, `bare_rst`,
/// `refuse` (no GOAWAY, the connection stays open, every later stream gets RST_STREAM
/// REFUSED_STREAM) or `silent` (open, but nothing read is ever answered again, as when a
/// middlebox forgets the flow).
const H2_SERVER: &str = r#"
import asyncio, socket, struct, sys
import h2.config, h2.connection, h2.events, h2.errors
PORT, MODE, IDLE = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])

async def handle(reader, writer):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    await writer.drain()
    loop = asyncio.get_running_loop()
    last = loop.time()
    expired = False
    try:
        while True:
            timeout = None if expired else max(0.0, last + IDLE - loop.time())
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout)
            except asyncio.TimeoutError:
                if MODE in ("refuse", "silent"):
                    expired = True
                    continue
                sock = writer.get_extra_info("socket")
                if MODE.startswith("goaway"):
                    conn.close_connection(error_code=0)
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    await asyncio.sleep(0.05)
                if MODE.endswith("rst"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
                return
            if not data:
                writer.close()
                return
            if expired and MODE == "silent":
                continue
            last = loop.time()
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    if expired:
                        conn.reset_stream(ev.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
                    else:
                        conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "3"), ("server", "py-h2")])
                        conn.send_data(ev.stream_id, b"ok\n", end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
    except Exception:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

fn nginx_h2(port: u16, listen: &str, more: &str) -> peers::Peer {
    nginx(
        &format!(
            "  server {{ listen 127.0.0.1:{port} {listen}; {more}\n    \
             location / {{ return 200 \"hello\\n\"; }} }}"
        ),
        port,
        None,
    )
}

#[test]
fn nginx_h2c_idle_goaway_is_timed_to_20ms_and_keepalive_requests_counted() {
    require_tool!("nginx");
    let port = free_port();
    let _ng = nginx_h2(port, "http2", "keepalive_timeout 1s; keepalive_requests 3;");
    let url = format!("h2c://127.0.0.1:{port}/");
    let (r, wall) = probe_json(&[&url, "--max-wait", "6s"]);
    assert_eq!(s(&r, "/protocol"), "h2c");
    assert_eq!(r["status"], 200);
    assert_eq!(s(&r, "/idle/close_style"), "goaway_then_fin", "{r}");
    let t = f(&r, "/idle/timeout_s");
    assert!((t - 1.0).abs() <= 0.020, "observed {t} s, want 1 s ± 20 ms");
    let h = &r["http2"];
    assert_eq!(h["goaway_seen"], true);
    assert_eq!(h["goaway_error"], "NO_ERROR");
    assert_eq!(
        h["goaway_last_stream_id"], 1,
        "one request on the idle connection"
    );
    assert_eq!(h["goaway_phases"], "single");
    // nginx's http2_max_concurrent_streams defaults to 128
    assert_eq!(h["max_concurrent_streams"], 128, "{h}");
    assert_eq!(h["requests_before_goaway"], 3, "{h}");
    assert_eq!(h["requests_ended_by"], "goaway");
    assert!(f(&r, "/http2/ping_rtt_s") > 0.0);
    // What PINGs do is nginx's business; the check must come to an answer that fits the
    // timeout either way.
    let lasted = f(&r, "/http2/ping/lasted_s");
    match s(&r, "/http2/ping/outcome") {
        "closed_at_idle" => {
            assert_eq!(h["ping_keeps_alive"], false);
            assert!((lasted - 1.0).abs() < 0.05, "{h}");
        }
        "kept_alive" => {
            assert_eq!(h["ping_keeps_alive"], true);
            assert!(lasted >= 1.2, "{h}");
        }
        other => panic!("ping outcome {other}: {h}"),
    }
    assert!((f(&r, "/safe_idle_s") - 0.9).abs() < 0.11, "{r}");
    assert!(wall < Duration::from_secs(5), "took {wall:?}");

    // The table says the same in 80 columns.
    let o = kaprobe()
        .args(["probe", &url, "--max-wait", "6s"])
        .env("COLUMNS", "80")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    for l in out.lines() {
        assert!(l.chars().count() <= 80, "line over 80 columns: {l:?}");
    }
    assert!(out.contains("GOAWAY then FIN"), "{out}");
    assert!(out.contains("3, then GOAWAY"), "{out}");
    assert!(
        out.contains("verdict: ends idle HTTP/2 connections after"),
        "{out}"
    );
}

#[test]
fn nginx_h2_over_tls_selects_h2_by_alpn_and_a_server_without_it_is_refused() {
    require_tool!("nginx");
    let certs = TempDir::new("certs");
    let (ca, cert, key) = kaprobe_tests::make_certs(&certs);
    let (p2, p1) = (free_port(), free_port());
    let tls = format!("ssl_certificate {cert}; ssl_certificate_key {key}; keepalive_timeout 1s;");
    let _h2 = nginx_h2(p2, "ssl http2", &tls);
    let _h1 = nginx_h2(p1, "ssl", &tls);
    let (r, _) = probe_json(&[
        "--http2",
        &format!("https://127.0.0.1:{p2}/"),
        "--cacert",
        &ca,
        "--max-wait",
        "5s",
    ]);
    assert_eq!(s(&r, "/protocol"), "h2");
    assert_eq!(r["tls"], true);
    assert!(f(&r, "/tls_handshake_s") > 0.0);
    assert_eq!(s(&r, "/idle/close_style"), "goaway_then_fin", "{r}");
    assert!((f(&r, "/idle/timeout_s") - 1.0).abs() <= 0.020, "{r}");
    assert_eq!(r["http2"]["goaway_error"], "NO_ERROR");
    // The race over TLS: a stream opened after the idle GOAWAY is above its last stream id.
    let (attempts, _, summary) = race_json(&[
        "--http2",
        &format!("https://127.0.0.1:{p2}/"),
        "--cacert",
        &ca,
        "--idle",
        "1.15s",
        "--spread",
        "0s",
        "--requests",
        "1",
    ]);
    assert_eq!(summary["protocol"], "h2");
    assert_eq!(attempts[0]["outcome"], "unprocessed", "{attempts:?}");
    assert_eq!(attempts[0]["after_goaway"], true);

    // TLS without h2 in ALPN: a one-line error, exit 9 (not HTTP/2).
    let o = kaprobe()
        .args([
            "probe",
            "--http2",
            &format!("https://127.0.0.1:{p1}/"),
            "--cacert",
            &ca,
        ])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(9), "{e}");
    assert!(
        e.contains("will not speak HTTP/2") && e.contains("ALPN"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // Nothing listening: exit 4.
    let o = kaprobe()
        .args(["probe", "--http2", "https://127.0.0.1:1/"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}

#[test]
fn http1_only_server_and_bad_input_are_clear_errors() {
    require_tool!("nginx");
    let port = free_port();
    let _ng = nginx_h2(port, "", "");
    let o = kaprobe()
        .args(["probe", &format!("h2c://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(9), "{e}");
    assert!(
        e.contains("answered in HTTP/1.x") && e.contains("prior knowledge"),
        "{e}"
    );
    let o = kaprobe()
        .args(["race", &format!("h2c://127.0.0.1:{port}/"), "--idle", "1s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
    // plain text where TLS was expected: names h2c://
    let o = kaprobe()
        .args(["probe", "--http2", &format!("https://127.0.0.1:{port}/x")])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(8), "{e}");
    assert!(e.contains(&format!("h2c://127.0.0.1:{port}/x")), "{e}");
    for (args, words) in [
        (vec!["probe", "h2c://127.0.0.1:99999/"], "1..=65535"),
        (vec!["probe", "h2c://"], "no host"),
        (vec!["probe", "h2d://127.0.0.1/"], "h2c://"),
        (vec!["probe", "--http2", "ws://127.0.0.1:1/"], "not ws://"),
        (
            vec!["probe", "h2c://127.0.0.1:1/", "--ping-every", "1ms"],
            "--ping-every 1ms is out of range: use 10ms..=1h",
        ),
        (
            vec!["probe", "http://127.0.0.1:1/", "--ping-every", "1s"],
            "--ping-every is for HTTP/2",
        ),
        (
            vec!["probe", "h2c://127.0.0.1:1/", "--sse"],
            "push channels",
        ),
        (
            vec!["probe", "h2c://127.0.0.1:1/", "--connections", "1"],
            "--connections 1 is out of range",
        ),
    ] {
        let o = kaprobe().args(&args).output().unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(words), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
    }
    // nothing listening: exit 4
    let o = kaprobe()
        .args(["probe", "h2c://127.0.0.1:1/"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}

#[test]
fn grpc_ping_policy_is_found_within_10_percent() {
    if !python_has("grpc") || !python_has("grpc_health") {
        return;
    }
    let srv = py_server(
        GRPC_SERVER,
        &[
            r#"{"grpc.http2.min_ping_interval_without_data_ms": 300, "grpc.http2.max_ping_strikes": 2, "grpc.keepalive_permit_without_calls": 1}"#,
        ],
    );
    let (r, wall) = probe_json(&[
        "--grpc",
        &format!("h2c://127.0.0.1:{}", srv.port),
        "--max-wait",
        "4s",
    ]);
    let g = &r["grpc"];
    assert_eq!(g["grpc_status"], 0, "{g}");
    assert_eq!(g["serving"], "SERVING", "{g}");
    assert_eq!(g["path"], "/grpc.health.v1.Health/Check");
    let p = &g["ping_policy"];
    assert_eq!(p["result"], "found", "{p}");
    assert_eq!(p["max_ping_strikes"], 2, "{p}");
    assert_eq!(p["goaway_debug"], "too_many_pings", "{p}");
    let m = f(&r, "/grpc/ping_policy/min_ping_interval_s");
    assert!(
        (m - 0.3).abs() <= 0.03,
        "min ping interval {m} s, want 300 ms ± 10%: {p}"
    );
    // the bracket holds the setting, and is narrow
    assert!(
        f(&r, "/grpc/ping_policy/largest_rejected_s") < 0.3 + 0.01,
        "{p}"
    );
    assert!(
        f(&r, "/grpc/ping_policy/smallest_accepted_s") >= 0.3 - 0.01,
        "{p}"
    );
    assert!(
        f(&r, "/grpc/ping_policy/min_ping_interval_error_s") <= 0.02,
        "{p}"
    );
    // A8: clients never go under 10 s
    assert_eq!(f(&r, "/grpc/ping_policy/safe_keepalive_time_s"), 10.0);
    assert!(f(&r, "/grpc/ping_policy/search_s") <= f(&r, "/grpc/ping_policy/budget_s") + 0.5);
    assert!(wall < Duration::from_secs(6), "took {wall:?}: {r}");
}

#[test]
fn grpc_idle_and_age_limits_end_with_goaway_and_pings_do_not_count() {
    if !python_has("grpc") || !python_has("grpc_health") {
        return;
    }
    let idle = py_server(GRPC_SERVER, &[r#"{"grpc.max_connection_idle_ms": 1000}"#]);
    let age = py_server(
        GRPC_SERVER,
        &[r#"{"grpc.max_connection_age_ms": 1000, "grpc.max_connection_age_grace_ms": 500}"#],
    );
    let age_url = format!("h2c://127.0.0.1:{}", age.port);
    let age_run =
        std::thread::spawn(move || probe_json(&["--grpc", &age_url, "--max-wait", "4s"]).0);
    let (r, _) = probe_json(&[
        "--grpc",
        &format!("h2c://127.0.0.1:{}", idle.port),
        "--max-wait",
        "8s",
    ]);
    assert!(s(&r, "/idle/close_style").starts_with("goaway_then"), "{r}");
    let t = f(&r, "/idle/timeout_s");
    // grpc-core checks the idle limit on a coarse timer: the GOAWAY comes 1 s to ~2 s in
    assert!((0.95..=2.6).contains(&t), "idle GOAWAY after {t} s: {r}");
    assert_eq!(r["http2"]["goaway_seen"], true);
    // max_connection_idle counts calls, not PINGs (gRPC proposal A9)
    assert_eq!(r["http2"]["ping_keeps_alive"], false, "{}", r["http2"]);
    // default policy: no pings without a call (permit_without_calls false): nothing passes
    assert_eq!(
        r["grpc"]["ping_policy"]["result"], "longer_than_tested",
        "{}",
        r["grpc"]
    );

    let r = age_run.join().unwrap();
    let h = &r["http2"];
    assert_eq!(h["goaway_phases"], "two_phase", "{h}");
    assert_eq!(h["goaways"][0]["last_stream_id"], 2_147_483_647u32, "{h}");
    assert!(
        h["goaways"][1]["last_stream_id"].as_u64().unwrap() < 2_147_483_647,
        "{h}"
    );
    assert_eq!(h["goaway_error"], "NO_ERROR");
    assert!(s(&r, "/verdict").contains("two phases"), "{}", r["verdict"]);
}

#[test]
fn h2_endings_nginx_lacks_are_told_apart_and_counted_pings_keep_alive() {
    if !python_has("h2") {
        return;
    }
    let runs: Vec<_> = [
        ("goaway_rst", "goaway_then_rst"),
        ("bare_fin", "fin"),
        ("bare_rst", "rst"),
        ("goaway_fin", "goaway_then_fin"),
        ("silent", "silent"),
    ]
    .into_iter()
    .map(|(mode, want)| {
        std::thread::spawn(move || {
            let srv = py_server(H2_SERVER, &[mode, "1"]);
            let url = format!("h2c://127.0.0.1:{}/", srv.port);
            let (r, _) = probe_json(&[&url, "--max-wait", "5s", "--ping-every", "300ms"]);
            (mode, want, r)
        })
    })
    .collect();
    for run in runs {
        let (mode, want, r) = run.join().unwrap();
        assert_eq!(s(&r, "/idle/close_style"), want, "{mode}: {r}");
        let t = f(&r, "/idle/timeout_s");
        if mode == "silent" {
            // found by new streams on reused connections: bracketed, no end ever seen
            let (alive, dead) = (f(&r, "/idle/longest_alive_s"), f(&r, "/idle/first_dead_s"));
            assert!(alive < dead && dead - alive < 0.1, "{r}");
            assert!((0.9..=1.05).contains(&t), "silent after {t} s: {r}");
            assert_eq!(r["idle"]["on_reuse"], "no_answer");
            assert_eq!(r["idle"]["closes_seen"], 0);
            assert!(s(&r, "/verdict").contains("silently"), "{}", r["verdict"]);
        } else {
            assert!((t - 1.0).abs() <= 0.030, "{mode}: idle end after {t} s");
        }
        assert_eq!(r["server"], "py-h2");
        // this server resets its idle timer on every frame: PINGs keep it open
        assert_eq!(
            r["http2"]["ping_keeps_alive"], true,
            "{mode}: {}",
            r["http2"]
        );
        assert!(f(&r, "/http2/ping/lasted_s") >= 1.2, "{mode}");
        assert_eq!(
            r["http2"]["goaway_seen"],
            want.starts_with("goaway"),
            "{mode}"
        );
        if want == "fin" || want == "rst" {
            assert!(
                r["findings"].to_string().contains("no GOAWAY"),
                "{mode}: {}",
                r["findings"]
            );
        }
    }
}

#[test]
fn race_over_h2_counts_streams_after_goaway_and_refused_streams() {
    require_tool!("nginx");
    if !python_has("h2") {
        return;
    }
    let port = free_port();
    let _ng = nginx_h2(port, "http2", "keepalive_timeout 1s;");
    let refuse = py_server(H2_SERVER, &["refuse", "1"]);
    let refuse_url = format!("h2c://127.0.0.1:{}/", refuse.port);
    let other = std::thread::spawn(move || {
        race_json(&[
            &refuse_url,
            "--idle",
            "1s",
            "--spread",
            "300ms",
            "--requests",
            "7",
            "--parallel",
            "7",
        ])
    });
    let (attempts, bins, summary) = race_json(&[
        &format!("h2c://127.0.0.1:{port}/"),
        "--idle",
        "1s",
        "--spread",
        "300ms",
        "--requests",
        "7",
        "--parallel",
        "7",
    ]);
    assert_eq!(attempts.len(), 7);
    assert_eq!(summary["protocol"], "h2c");
    for a in &attempts {
        let idle = f(a, "/actual_idle_s");
        if idle < 0.95 {
            assert_eq!(a["outcome"], "ok", "{a}");
            assert_eq!(a["after_goaway"], false, "{a}");
        } else if idle > 1.05 {
            // nginx sent GOAWAY (last stream id 1) and FIN: the stream is above it
            assert_eq!(a["outcome"], "unprocessed", "{a}");
            assert_eq!(a["after_goaway"], true, "{a}");
        }
    }
    let late = attempts
        .iter()
        .filter(|a| a["after_goaway"] == true)
        .count();
    assert!(late >= 2, "{attempts:?}");
    assert_eq!(summary["after_goaway"], late);
    assert_eq!(summary["failures"], summary["retry_safe"], "{summary}");
    assert!(
        (f(&summary, "/goaway_idle_s") - 1.0).abs() < 0.03,
        "{summary}"
    );
    let binned: u64 = bins
        .iter()
        .map(|b| b["after_goaway"].as_u64().unwrap())
        .sum();
    assert_eq!(binned as usize, late);

    // No GOAWAY, streams refused one by one after the idle limit.
    let (attempts, _, summary) = other.join().unwrap();
    for a in &attempts {
        let idle = f(a, "/actual_idle_s");
        if idle < 0.95 {
            assert_eq!(a["outcome"], "ok", "{a}");
        } else if idle > 1.05 {
            assert_eq!(a["outcome"], "refused_stream", "{a}");
            assert_eq!(a["after_goaway"], false, "{a}");
        }
    }
    assert!(summary["retry_safe"].as_u64().unwrap() >= 2, "{summary}");
    assert!(
        s(&summary, "/verdict").contains("safe to retry"),
        "{}",
        summary["verdict"]
    );
}
