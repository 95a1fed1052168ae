//! End-to-end tests of `kaprobe serve`: raw sockets for each keep-alive rule, curl reusing a
//! connection, nginx in front with an upstream keepalive pool, bad inputs, shutdown, timers.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kaprobe_tests::{
    kaprobe, line_reader, require_tool, serve_json as serve, wait_line, KillOnDrop, Serve as Server,
};

/// What these tests ask of a running server.
trait ServerExt {
    fn connect(&self) -> TcpStream;
    fn close_event(&self) -> serde_json::Value;
}

impl ServerExt for Server {
    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// The next close event on stdout.
    fn close_event(&self) -> serde_json::Value {
        self.json_line("\"close\"", Duration::from_secs(10), "close event")
    }
}

/// A parsed response: status, header fields (lower-case names), body.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read exactly one response (no 1xx) from a stream with a carry-over buffer.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_req: bool) -> Resp {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.trim().to_ascii_lowercase(), v.trim().to_string())
                })
                .collect();
            let len: usize = if head_req {
                0
            } else {
                headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap())
            };
            while buf.len() < end + 4 + len {
                read_more(s, buf);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Resp {
                status,
                headers,
                body,
            };
        }
        read_more(s, buf);
    }
}

fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 65536];
    let n = s.read(&mut chunk).unwrap();
    assert!(
        n > 0,
        "connection closed early; have {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

/// After the last response: the server's FIN (read returns 0).
fn expect_eof(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    assert_eq!(s.read(&mut b).unwrap(), 0, "expected the server to close");
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

#[test]
fn max_counts_down_per_response_and_the_last_closes() {
    let srv = serve(&["--max-requests", "3", "--keepalive-timeout", "7s"]);
    let mut s = srv.connect();
    let mut buf = Vec::new();
    for want in ["timeout=7, max=2", "timeout=7, max=1"] {
        s.write_all(get("/").as_bytes()).unwrap();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"ok\n");
        assert_eq!(r.header("keep-alive"), Some(want));
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    s.write_all(get("/").as_bytes()).unwrap();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("keep-alive"), None);
    expect_eof(&mut s);
    let ev = srv.close_event();
    assert_eq!(ev["reason"], "max_requests");
    assert_eq!(ev["requests"], 3);
    assert_eq!(ev["ending"], "fin");
    assert!(ev["lifetime"].as_f64().unwrap() >= 0.0);
    assert!(ev["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let srv = serve(&[]);
    let mut s = srv.connect();
    let mut all = String::new();
    for code in [201, 202, 203, 404, 200] {
        all.push_str(&get(&format!("/status/{code}")));
    }
    all.push_str("GET /close HTTP/1.1\r\nHost: t\r\n\r\n");
    // Split the pipeline at an awkward place to exercise partial heads.
    let (a, b) = all.split_at(50);
    s.write_all(a.as_bytes()).unwrap();
    s.write_all(b.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let codes: Vec<u16> = (0..6)
        .map(|_| read_response(&mut s, &mut buf, false).status)
        .collect();
    assert_eq!(codes, [201, 202, 203, 404, 200, 200]);
    expect_eof(&mut s);
    let ev = srv.close_event();
    assert_eq!(ev["reason"], "close_endpoint");
    assert_eq!(ev["requests"], 6);
}

#[test]
fn close_header_http10_and_advertise_modes() {
    let srv = serve(&["--advertise", "when-asked", "--advertise-timeout", "30s"]);
    let mut buf = Vec::new();
    // HTTP/1.1 with a token list containing close (any case): answered, then closed.
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: TE, Close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.header("connection"), Some("close"));
    expect_eof(&mut s);
    assert_eq!(srv.close_event()["reason"], "client_close_header");
    // HTTP/1.0 without keep-alive: closed after one response.
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.header("connection"), Some("close"));
    expect_eof(&mut s);
    assert_eq!(srv.close_event()["reason"], "http10");
    // HTTP/1.0 with keep-alive: echoed, advertised (asked), lying timeout announced.
    let mut s = srv.connect();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert!(r
            .header("keep-alive")
            .unwrap()
            .starts_with("timeout=30, max="));
    }
    // HTTP/1.1 that did not ask: no Keep-Alive header, no Connection header.
    s.write_all(get("/").as_bytes()).unwrap();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("connection"), None);
    s.shutdown(Shutdown::Write).unwrap();
    expect_eof(&mut s);
    let ev = srv.close_event();
    assert_eq!(ev["reason"], "client_fin");
    assert_eq!(ev["requests"], 3);
}

#[test]
fn bodies_are_read_so_the_connection_is_reused_and_head_has_no_body() {
    let srv = serve(&["--advertise", "never"]);
    let mut s = srv.connect();
    let mut buf = Vec::new();
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world")
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).status, 200);
    s.write_all(b"POST /status/201 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).status, 201);
    // Expect: 100-continue: the interim response comes before we send the body.
    s.write_all(b"PUT / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .unwrap();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        read_more(&mut s, &mut buf);
    }
    assert!(buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"));
    buf.drain(..25);
    s.write_all(b"body").unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).status, 200);
    // HEAD: the GET's Content-Length, no body; the next response follows directly.
    s.write_all(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut buf, true);
    assert_eq!(r.header("content-length"), Some("1000"));
    s.write_all(get("/bytes/5").as_bytes()).unwrap();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.body, b"xxxxx");
    s.write_all(get("/headers").as_bytes()).unwrap();
    let r = read_response(&mut s, &mut buf, false);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["headers"][0]["name"], "Host");
    drop(s);
    let ev = srv.close_event();
    assert_eq!(ev["reason"], "client_fin");
    assert_eq!(ev["requests"], 6);
}

#[test]
fn every_bad_input_gets_its_4xx_a_close_and_a_logged_reason() {
    let srv = serve(&["--max-header-bytes", "1024", "--max-body-bytes", "100"]);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3x\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: a\r\n  folded\r\n\r\n".to_vec(),
            400,
        ),
        (b"GET / HTTP/1.1\nHost: t\n\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: t\rX: y\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
                "a".repeat(2000)
            )
            .into_bytes(),
            431,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n".to_vec(),
            413,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n".to_vec(),
            413,
        ),
    ];
    for (input, want) in &cases {
        let mut s = srv.connect();
        s.write_all(input).unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(r.status, *want, "{:?}", String::from_utf8_lossy(input));
        assert_eq!(r.header("connection"), Some("close"));
        expect_eof(&mut s);
        let ev = srv.close_event();
        assert_eq!(ev["reason"], "bad_request", "{ev}");
        assert!(!ev["detail"].as_str().unwrap().is_empty());
    }
    // A client that vanishes mid-request gets nothing and is logged.
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    drop(s);
    let ev = srv.close_event();
    assert_eq!(ev["reason"], "client_fin");
    assert_eq!(ev["detail"], "mid-request");
    // ... and everyone else is still served.
    let mut s = srv.connect();
    s.write_all(get("/").as_bytes()).unwrap();
    assert_eq!(read_response(&mut s, &mut Vec::new(), false).status, 200);
}

/// Time from the end of a response until the server's close, as the client sees it.
fn idle_close(
    style: &str,
    timeout_ms: u64,
) -> (Duration, std::io::Result<usize>, serde_json::Value) {
    let t = format!("{timeout_ms}ms");
    let srv = serve(&["--keepalive-timeout", &t, "--close-style", style]);
    let mut s = srv.connect();
    s.write_all(get("/").as_bytes()).unwrap();
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf, false);
    let start = Instant::now();
    let mut b = [0u8; 16];
    let r = s.read(&mut b);
    (start.elapsed(), r, srv.close_event())
}

fn assert_precise(elapsed: Duration, timeout_ms: u64) {
    // The server aims at +/-0.5%; allow scheduling noise of a shared 2-core machine on top.
    let t = timeout_ms as f64 / 1000.0;
    let e = elapsed.as_secs_f64();
    assert!(
        (e - t).abs() <= t * 0.005 + 0.040,
        "idle close after {e:.4}s, timeout {t}s"
    );
}

#[test]
fn idle_close_by_fin_is_precise_and_reads_as_eof() {
    let (elapsed, r, ev) = idle_close("fin", 1500);
    assert_eq!(r.unwrap(), 0, "FIN reads as end of stream");
    assert_precise(elapsed, 1500);
    assert_eq!(ev["reason"], "idle_timeout");
    assert_eq!(ev["ending"], "fin");
}

#[test]
fn idle_close_by_rst_is_precise_and_reads_as_reset() {
    let (elapsed, r, ev) = idle_close("rst", 1500);
    assert_eq!(r.unwrap_err().kind(), ErrorKind::ConnectionReset);
    assert_precise(elapsed, 1500);
    assert_eq!(ev["reason"], "idle_timeout");
    assert_eq!(ev["ending"], "rst");
}

#[test]
fn slow_request_head_gets_408_at_the_header_timeout() {
    let srv = serve(&["--header-timeout", "700ms", "--keepalive-timeout", "30s"]);
    let mut s = srv.connect();
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new(), false);
    let e = start.elapsed();
    assert_eq!(r.status, 408);
    assert!(
        e >= Duration::from_millis(690) && e < Duration::from_millis(900),
        "{e:?}"
    );
    expect_eof(&mut s);
    assert_eq!(srv.close_event()["reason"], "header_timeout");
}

#[test]
fn curl_reuses_one_connection_until_the_last_response_closes_it() {
    require_tool!("curl");
    let srv = serve(&["--max-requests", "2"]);
    let url = format!("http://{}/", srv.addr);
    let o = Command::new("curl")
        .args(["-sv", &url, &url, &url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        err.matches("Re-using existing connection").count(),
        1,
        "{err}"
    );
    assert!(err.contains("left intact"), "{err}");
    assert!(err.contains("< Keep-Alive: timeout=5, max=1"), "{err}");
    assert!(err.contains("< Connection: close"), "{err}");
    // The second response closed the first connection, so curl opened a second one.
    assert!(err.contains("Connection #1"), "{err}");
    let ev = srv.close_event();
    assert_eq!(ev["reason"], "max_requests");
    assert_eq!(ev["requests"], 2);
}

#[test]
fn nginx_upstream_keepalive_pool_reuses_connections() {
    require_tool!("nginx");
    require_tool!("curl");
    let srv = serve(&["--keepalive-timeout", "30s", "--max-requests", "1000"]);
    let nginx_port = kaprobe_tests::free_port();
    let _nginx = kaprobe_tests::nginx(
        &format!(
            "  upstream kp {{ server {}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://kp; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}
  }}",
            srv.addr
        ),
        nginx_port,
        None,
    );
    let url = format!("http://127.0.0.1:{nginx_port}/");
    kaprobe_tests::wait_for("nginx to answer", Duration::from_secs(10), || {
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &url])
            .status()
            .ok()
            .filter(std::process::ExitStatus::success)
    });
    // Separate curl processes: each is a new client connection to nginx.
    for _ in 0..10 {
        let o = Command::new("curl").args(["-sf", &url]).output().unwrap();
        assert_eq!(o.stdout, b"ok\n");
    }
    let stats_url = format!("http://{}/_kaprobe/stats", srv.addr);
    let o = Command::new("curl")
        .args(["-sf", &stats_url])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // 11 proxied requests over (at most) a couple of upstream connections.
    assert!(v["requests_reused"].as_u64().unwrap() >= 9, "{v}");
    assert!(v["connections_accepted"].as_u64().unwrap() <= 3, "{v}");
    // Stopping kaprobe closes the pooled idle connection, logged as shutdown with its count.
    srv.signal(libc::SIGTERM);
    // (Skip the direct stats client's own close.)
    let ev = std::iter::repeat_with(|| srv.close_event())
        .find(|ev| ev["reason"] != "client_fin")
        .unwrap();
    assert_eq!(ev["reason"], "shutdown", "{ev}");
    assert!(ev["requests"].as_u64().unwrap() >= 10, "{ev}");
}

#[test]
fn graceful_shutdown_answers_requests_in_flight_and_closes_idle() {
    let srv = serve(&["--drain-timeout", "5s"]);
    let mut idle = srv.connect();
    let mut buf = Vec::new();
    idle.write_all(get("/").as_bytes()).unwrap();
    read_response(&mut idle, &mut buf, false);
    let busy: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = srv.connect();
            s.write_all(get("/delay/800ms").as_bytes()).unwrap();
            s
        })
        .collect();
    // Wait until the server has every delayed request in hand.
    kaprobe_tests::wait_for("6 connections open", Duration::from_secs(5), || {
        let mut s = srv.connect();
        s.write_all(b"GET /_kaprobe/stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, &mut Vec::new(), false);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        (v["connections_open"].as_u64() >= Some(7)).then_some(())
    });
    srv.signal(libc::SIGTERM);
    expect_eof(&mut idle);
    for mut s in busy {
        let r = read_response(&mut s, &mut Vec::new(), false);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"));
        expect_eof(&mut s);
    }
    let mut child = srv.child;
    let status = kaprobe_tests::wait_for("exit", Duration::from_secs(6), || {
        child.0.try_wait().unwrap()
    });
    assert!(status.success());
    let mut reasons = Vec::new();
    while let Ok(l) = srv.out.recv_timeout(Duration::from_secs(2)) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        reasons.push(v["reason"].as_str().unwrap().to_string());
    }
    assert_eq!(
        reasons.iter().filter(|r| *r == "shutdown").count(),
        6,
        "{reasons:?}"
    );
}

#[test]
fn connection_cap_evicts_the_oldest_idle_connection() {
    let srv = serve(&["--max-connections", "2"]);
    let mut buf = Vec::new();
    let mut a = srv.connect();
    a.write_all(get("/").as_bytes()).unwrap();
    read_response(&mut a, &mut buf, false);
    let mut b = srv.connect();
    b.write_all(get("/").as_bytes()).unwrap();
    read_response(&mut b, &mut buf, false);
    // The scenario needs both idle long enough to be parked (out of the runtime, 100 ms).
    std::thread::sleep(Duration::from_millis(250));
    let mut c = srv.connect();
    c.write_all(get("/").as_bytes()).unwrap();
    assert_eq!(read_response(&mut c, &mut buf, false).status, 200);
    expect_eof(&mut a);
    let ev = srv.close_event();
    assert_eq!(ev["reason"], "cap_eviction");
    assert_eq!(ev["requests"], 1);
    // b is still usable.
    b.write_all(get("/").as_bytes()).unwrap();
    assert_eq!(read_response(&mut b, &mut buf, false).status, 200);
}

#[test]
fn metrics_and_stats_count_requests_and_closes() {
    let srv = serve(&["--max-requests", "2"]);
    let mut s = srv.connect();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(get("/").as_bytes()).unwrap();
        read_response(&mut s, &mut buf, false);
    }
    expect_eof(&mut s);
    srv.close_event();
    let mut s = srv.connect();
    s.write_all(get("/metrics").as_bytes()).unwrap();
    let r = read_response(&mut s, &mut buf, false);
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("kaprobe_requests_total 3\n"), "{text}");
    assert!(text.contains("kaprobe_requests_reused_total 1\n"), "{text}");
    assert!(
        text.contains("kaprobe_connection_closes_total{reason=\"max_requests\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE kaprobe_connections_open gauge"));
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for args in [
        &["serve", "--keepalive-timeout", "soon"][..],
        &["serve", "--max-header-bytes", "10"],
        &["serve", "--close-style", "gently"],
        &["serve", "--listen", "nowhere"],
    ] {
        let o = kaprobe().args(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(args[1]), "{args:?}: {err}");
    }
}

#[test]
fn short_idle_timeout_uses_a_per_connection_timer_and_zero_disables_keep_alive() {
    // Below the 100 ms park delay each connection keeps its own timer.
    let srv = serve(&["--keepalive-timeout", "60ms"]);
    let mut s = srv.connect();
    s.write_all(get("/").as_bytes()).unwrap();
    let r = read_response(&mut s, &mut Vec::new(), false);
    // Under a second there is no honest whole-second timeout to announce: only max.
    assert_eq!(r.header("keep-alive"), Some("max=99"));
    let start = Instant::now();
    expect_eof(&mut s);
    let e = start.elapsed();
    assert!(
        e >= Duration::from_millis(55) && e < Duration::from_millis(200),
        "{e:?}"
    );
    assert_eq!(srv.close_event()["reason"], "idle_timeout");

    let srv = serve(&["--keepalive-timeout", "0"]);
    let mut s = srv.connect();
    s.write_all(get("/").as_bytes()).unwrap();
    let r = read_response(&mut s, &mut Vec::new(), false);
    assert_eq!(r.header("connection"), Some("close"));
    expect_eof(&mut s);
    assert_eq!(srv.close_event()["reason"], "keepalive_off");
}

#[test]
fn reuse_port_lets_two_servers_share_an_address() {
    let a = serve(&["--reuse-port"]);
    let mut cmd = kaprobe();
    cmd.args(["serve", "--listen", &a.addr, "--reuse-port"]);
    let mut b = KillOnDrop::spawn(&mut cmd);
    let err = line_reader(b.0.stderr.take().unwrap());
    let line = wait_line(&err, Duration::from_secs(30), |l| {
        l.contains("listening on")
    })
    .unwrap_or_else(|seen| panic!("second server did not bind: {seen:?}"));
    assert!(line.ends_with(&a.addr), "{line}");
    // Without the flag the address is taken: exit 1 naming the flag.
    let o = kaprobe()
        .args(["serve", "--listen", &a.addr])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--listen"));
}

#[test]
fn a_delayed_request_holds_back_the_pipelined_ones_behind_it() {
    let srv = serve(&[]);
    let mut s = srv.connect();
    let start = Instant::now();
    let all = format!(
        "{}{}{}",
        get("/delay/300ms"),
        get("/status/201"),
        get("/status/202")
    );
    s.write_all(all.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut s, &mut buf, false);
    assert_eq!(first.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(290));
    assert_eq!(read_response(&mut s, &mut buf, false).status, 201);
    assert_eq!(read_response(&mut s, &mut buf, false).status, 202);
}

#[test]
fn listens_on_several_addresses_including_ipv6_and_reports_each() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let mut cmd = kaprobe();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--listen", "[::1]:0"]);
    let mut child = KillOnDrop::spawn(&mut cmd);
    let err = line_reader(child.0.stderr.take().unwrap());
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let l = wait_line(&err, Duration::from_secs(60), |l| {
            l.contains("listening on")
        })
        .unwrap_or_else(|seen| panic!("no listening line: {seen:?}"));
        addrs.push(
            l.strip_prefix("kaprobe serve: listening on http://")
                .unwrap()
                .to_string(),
        );
    }
    assert!(
        addrs[0].starts_with("127.0.0.1:") && !addrs[0].ends_with(":0"),
        "{addrs:?}"
    );
    assert!(
        addrs[1].starts_with("[::1]:") && !addrs[1].ends_with(":0"),
        "{addrs:?}"
    );
    for a in &addrs {
        let mut s = TcpStream::connect(a.as_str()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(get("/").as_bytes()).unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new(), false).body, b"ok\n");
    }
}
