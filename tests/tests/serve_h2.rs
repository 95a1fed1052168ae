//! `kaprobe serve --http2` against real HTTP/2 peers: curl (h2c prior knowledge and ALPN h2
//! over TLS), Python's `h2` library, nginx proxying with `grpc_pass` (h2c to its upstream), and
//! a raw-socket client that reads every frame with `h2wire::Scanner` to judge what was really
//! sent: the idle GOAWAY (single and two-phase, last stream id, its time), the GOAWAY after
//! --max-requests, SETTINGS_MAX_CONCURRENT_STREAMS, the PING policy, and the connection
//! errors RFC 9113 asks for on a bad preface and malformed frames.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use kaprobe_http::h2wire::{self, Frame, Kind, Scanner};
use kaprobe_tests::{
    free_port, kaprobe, line_reader, nginx, require_tool, wait_line, KillOnDrop, TempDir,
};

/// A running `kaprobe serve --log json --listen 127.0.0.1:0 ARGS` (plain or TLS).
struct Server {
    child: KillOnDrop,
    addr: SocketAddr,
    out: Receiver<String>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = KillOnDrop::spawn(
            kaprobe()
                .args(["serve", "--log", "json", "--listen", "127.0.0.1:0"])
                .args(args)
                .stdin(Stdio::null()),
        );
        let err = line_reader(child.0.stderr.take().unwrap());
        let out = line_reader(child.0.stdout.take().unwrap());
        let line = wait_line(&err, Duration::from_secs(30), |l| {
            l.starts_with("kaprobe serve: listening on ")
        })
        .unwrap_or_else(|seen| panic!("serve {args:?} did not listen: {seen:?}"));
        std::thread::spawn(move || while err.recv().is_ok() {});
        let addr = line.rsplit("://").next().unwrap().trim().parse().unwrap();
        Server { child, addr, out }
    }

    /// The next close line whose reason is `reason` (others are skipped).
    fn close(&self, reason: &str, within: Duration) -> serde_json::Value {
        let pat = format!("\"reason\":\"{reason}\"");
        let l = wait_line(&self.out, within, |l| l.contains(&pat))
            .unwrap_or_else(|seen| panic!("no {reason} close: {seen:?}"));
        serde_json::from_str(&l).unwrap()
    }
}

/// A raw HTTP/2 client: writes frames by hand, reads every frame the server sends with its
/// arrival time, answers SETTINGS (and PINGs, when `pong`), and notes the end of input.
struct Raw {
    s: TcpStream,
    scan: Scanner,
    queue: std::collections::VecDeque<(Instant, Frame)>,
    eof: Option<Instant>,
    pong: bool,
    /// Every frame seen, in order.
    seen: Vec<Frame>,
}

/// A GOAWAY seen: when, last stream id, error code, debug data.
type Goaway = (Instant, u32, u32, Vec<u8>);

/// A HEADERS block for `GET path` (HPACK: static-table :method GET and :scheme http, literal
/// :path and :authority without indexing).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    for (index, value) in [(4u8, path), (1, "localhost")] {
        assert!(value.len() < 127);
        b.push(index);
        b.push(u8::try_from(value.len()).unwrap());
        b.extend_from_slice(value.as_bytes());
    }
    b
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut r = Raw {
            s,
            scan: Scanner::server_to_client(),
            queue: std::collections::VecDeque::new(),
            eof: None,
            pong: true,
            seen: Vec::new(),
        };
        let mut hello = h2wire::PREFACE.to_vec();
        hello.extend(h2wire::settings(false, &[]));
        r.send(&hello);
        r
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn get(&mut self, stream: u32, path: &str) {
        let f = h2wire::frame(
            Kind::Headers,
            h2wire::FLAG_END_HEADERS | h2wire::FLAG_END_STREAM,
            stream,
            &get_block(path),
        );
        self.send(&f);
    }

    /// The next frame, or `None` at end of input or at `deadline`.
    fn next(&mut self, deadline: Instant) -> Option<(Instant, Frame)> {
        let mut buf = [0u8; 16384];
        loop {
            if let Some(f) = self.queue.pop_front() {
                self.seen.push(f.1.clone());
                match &f.1 {
                    Frame::Settings { ack: false, .. } => self.send(&h2wire::settings(true, &[])),
                    Frame::Ping { ack: false, opaque } if self.pong => {
                        let o = *opaque;
                        self.send(&h2wire::ping(true, o));
                    }
                    _ => {}
                }
                return Some(f);
            }
            if self.eof.is_some() {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            match self.s.read(&mut buf) {
                Ok(0) => self.eof = Some(Instant::now()),
                Ok(n) => {
                    let at = Instant::now();
                    let mut frames = Vec::new();
                    self.scan.feed(&buf[..n], &mut frames);
                    self.queue.extend(frames.into_iter().map(|f| (at, f)));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                // A reset ends the input too.
                Err(_) => self.eof = Some(Instant::now()),
            }
        }
    }

    /// Read until `stream` ends (HEADERS or DATA with END_STREAM); its time.
    fn response_end(&mut self, stream: u32) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some((at, f)) = self.next(deadline) {
            match f {
                Frame::Headers {
                    stream: s,
                    end_stream: true,
                }
                | Frame::Data {
                    stream: s,
                    end_stream: true,
                    ..
                } if s == stream => return at,
                _ => {}
            }
        }
        panic!("stream {stream} never ended; seen {:?}", self.seen);
    }

    /// Every GOAWAY until end of input (or `within`), with its time, and the time of the end.
    fn goaways_until_eof(&mut self, within: Duration) -> (Vec<Goaway>, Option<Instant>) {
        let deadline = Instant::now() + within;
        let mut g = Vec::new();
        while let Some((at, f)) = self.next(deadline) {
            if let Frame::GoAway {
                last_stream,
                code,
                debug,
            } = f
            {
                g.push((at, last_stream, code, debug));
            }
        }
        (g, self.eof)
    }
}

const NO_ERROR: u32 = 0;
const PROTOCOL_ERROR: u32 = 1;
const FRAME_SIZE_ERROR: u32 = 6;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const MAX_STREAM: u32 = 0x7fff_ffff;

/// `t` within [want - 20 ms, want + 700 ms] (a loaded 2-core machine wakes late, never early).
fn about(what: &str, t: Duration, want: Duration) {
    assert!(
        t + Duration::from_millis(20) >= want && t <= want + Duration::from_millis(700),
        "{what}: {t:?}, expected about {want:?}"
    );
}

#[test]
fn idle_goaway_single_is_one_goaway_with_the_last_stream_then_fin_at_the_timeout() {
    let srv = Server::start(&["--http2", "--keepalive-timeout", "1s"]);
    let mut c = Raw::connect(srv.addr);
    c.get(1, "/");
    c.response_end(1);
    c.get(3, "/status/204");
    let end = c.response_end(3);
    let (g, eof) = c.goaways_until_eof(Duration::from_secs(5));
    assert_eq!(g.len(), 1, "one GOAWAY: {:?}", c.seen);
    let (at, last, code, _) = &g[0];
    assert_eq!((*last, *code), (3, NO_ERROR));
    about(
        "GOAWAY after the last stream",
        at.duration_since(end),
        Duration::from_secs(1),
    );
    let eof = eof.expect("the server closed");
    assert!(eof.duration_since(*at) < Duration::from_millis(500));
    let ev = srv.close("idle_goaway", Duration::from_secs(5));
    assert_eq!(ev["requests"], 2);
    assert_eq!(ev["ending"], "fin");
    // The counters, asked over HTTP/1.1 on the same port.
    let stats = stats_h1(srv.addr);
    assert_eq!(stats["closes"]["idle_goaway"], 1, "{stats}");
    assert_eq!(stats["h2_goaways_sent"], 1, "{stats}");
    assert_eq!(stats["h2_connections"], 1, "{stats}");
    assert_eq!(
        stats["requests"], 3,
        "two streams and this request: {stats}"
    );
}

/// `/_kaprobe/stats` asked with a plain HTTP/1.1 request.
fn stats_h1(addr: SocketAddr) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /_kaprobe/stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[test]
fn idle_goaway_two_phase_is_max_id_then_ping_then_the_last_stream() {
    let srv = Server::start(&[
        "--http2",
        "--keepalive-timeout",
        "1s",
        "--goaway-style",
        "two-phase",
    ]);
    // One client answers the PING, one does not (the final GOAWAY then comes after the grace).
    let run = |pong: bool| {
        let mut c = Raw::connect(srv.addr);
        c.pong = pong;
        c.get(1, "/");
        let end = c.response_end(1);
        let (g, eof) = c.goaways_until_eof(Duration::from_secs(6));
        (end, g, eof, c.seen)
    };
    let answered = std::thread::scope(|s| {
        let silent = s.spawn(|| run(false));
        let answered = run(true);
        let (end, g, eof, seen) = silent.join().unwrap();
        assert_eq!(g.len(), 2, "{seen:?}");
        assert_eq!((g[0].1, g[0].2), (MAX_STREAM, NO_ERROR));
        assert_eq!((g[1].1, g[1].2), (1, NO_ERROR));
        about(
            "first GOAWAY",
            g[0].0.duration_since(end),
            Duration::from_secs(1),
        );
        about(
            "final GOAWAY without a PING answer",
            g[1].0.duration_since(g[0].0),
            Duration::from_secs(1),
        );
        assert!(eof.is_some());
        answered
    });
    let (end, g, eof, seen) = answered;
    assert_eq!(g.len(), 2, "{seen:?}");
    assert_eq!((g[0].1, g[0].2), (MAX_STREAM, NO_ERROR));
    assert_eq!((g[1].1, g[1].2), (1, NO_ERROR));
    about(
        "first GOAWAY",
        g[0].0.duration_since(end),
        Duration::from_secs(1),
    );
    assert!(
        g[1].0.duration_since(g[0].0) < Duration::from_millis(900),
        "the PING answer brings the final GOAWAY before the 1s grace"
    );
    // The PING sits between the two GOAWAYs.
    let pos = |pred: &dyn Fn(&Frame) -> bool| seen.iter().position(pred).unwrap();
    let first =
        pos(&|f| matches!(f, Frame::GoAway { last_stream, .. } if *last_stream == MAX_STREAM));
    let ping = pos(&|f| matches!(f, Frame::Ping { ack: false, .. }));
    let last = pos(&|f| matches!(f, Frame::GoAway { last_stream: 1, .. }));
    assert!(first < ping && ping < last, "{seen:?}");
    assert!(eof.is_some());
    srv.close("idle_goaway", Duration::from_secs(5));
    srv.close("idle_goaway", Duration::from_secs(5));
}

#[test]
fn max_requests_gets_goaway_after_the_nth_stream_and_settings_carry_max_concurrent_streams() {
    let srv = Server::start(&[
        "--http2",
        "--keepalive-timeout",
        "10s",
        "--max-requests",
        "3",
        "--max-concurrent-streams",
        "7",
    ]);
    let mut c = Raw::connect(srv.addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    let settings = loop {
        match c.next(deadline) {
            Some((_, Frame::Settings { ack: false, params })) => break params,
            Some(_) => {}
            None => panic!("no SETTINGS: {:?}", c.seen),
        }
    };
    assert!(
        settings.contains(&(h2wire::SETTINGS_MAX_CONCURRENT_STREAMS, 7)),
        "{settings:?}"
    );
    for id in [1, 3, 5] {
        c.get(id, "/");
        c.response_end(id);
    }
    let t = Instant::now();
    let (g, eof) = c.goaways_until_eof(Duration::from_secs(5));
    assert_eq!(g.len(), 1, "{:?}", c.seen);
    assert_eq!((g[0].1, g[0].2), (5, NO_ERROR));
    assert!(
        g[0].0.duration_since(t) < Duration::from_secs(2),
        "not the idle timeout"
    );
    assert!(eof.is_some());
    let ev = srv.close("max_requests_goaway", Duration::from_secs(5));
    assert_eq!(ev["requests"], 3);
}

#[test]
fn pinging_too_often_gets_enhance_your_calm_too_many_pings_and_slower_pings_do_not() {
    let srv = Server::start(&[
        "--http2",
        "--keepalive-timeout",
        "20s",
        "--min-ping-interval",
        "800ms",
        "--max-ping-strikes",
        "2",
    ]);
    let ping_every = |gap: Duration, pings: usize| {
        let mut c = Raw::connect(srv.addr);
        c.get(1, "/");
        c.response_end(1);
        let mut calm = None;
        for i in 0..pings {
            // Each PING waits for its answer, then `gap` more, so the server sees them at
            // least `gap` apart however late this machine runs.
            let opaque = [u8::try_from(i).unwrap(); 8];
            c.send(&h2wire::ping(false, opaque));
            let answer = Instant::now() + Duration::from_secs(5);
            let mut pause = None;
            // Up to the answer, then for the pause (a GOAWAY may follow the answer).
            while let Some((_, f)) = c.next(pause.unwrap_or(answer)) {
                match f {
                    Frame::GoAway {
                        last_stream,
                        code,
                        debug,
                    } => calm = Some((i, last_stream, code, debug)),
                    Frame::Ping {
                        ack: true,
                        opaque: o,
                    } if o == opaque => {
                        pause = Some(Instant::now() + gap);
                    }
                    _ => {}
                }
            }
            if calm.is_some() || c.eof.is_some() {
                // read on to the end of the connection
                c.goaways_until_eof(Duration::from_secs(5));
                break;
            }
        }
        (calm, c.eof.is_some())
    };
    let (fast, slow) = std::thread::scope(|s| {
        let slow = s.spawn(|| ping_every(Duration::from_millis(1000), 4));
        (
            ping_every(Duration::from_millis(50), 10),
            slow.join().unwrap(),
        )
    });
    // Pings 2, 3 and 4 come too soon: the third strike is one more than 2.
    let (at, last, code, debug) = fast.0.expect("GOAWAY for pinging every 50ms");
    assert_eq!(at, 3, "after the fourth PING");
    assert_eq!((last, code), (1, ENHANCE_YOUR_CALM));
    assert_eq!(debug, b"too_many_pings");
    assert!(fast.1, "then the connection closes");
    assert_eq!(slow, (None, false), "pinging every second is fine");
    srv.close("too_many_pings", Duration::from_secs(5));
    let stats = stats_h1(srv.addr);
    assert_eq!(stats["h2_ping_strikes"], 3, "{stats}");
    assert_eq!(stats["h2_pings"], 8, "4 + 4: {stats}");
    assert_eq!(stats["closes"]["too_many_pings"], 1, "{stats}");
}

#[test]
fn pings_while_a_stream_is_open_are_not_strikes() {
    let srv = Server::start(&[
        "--http2",
        "--min-ping-interval",
        "1s",
        "--max-ping-strikes",
        "1",
    ]);
    let mut c = Raw::connect(srv.addr);
    c.get(1, "/delay/800ms");
    for i in 0..6u8 {
        c.send(&h2wire::ping(false, [i; 8]));
        std::thread::sleep(Duration::from_millis(50));
    }
    c.response_end(1);
    assert!(
        !c.seen.iter().any(|f| matches!(f, Frame::GoAway { .. })),
        "{:?}",
        c.seen
    );
}

#[test]
fn a_client_goaway_is_logged_as_client_goaway_with_its_code() {
    let srv = Server::start(&["--http2", "--keepalive-timeout", "30s"]);
    for (code, detail) in [(NO_ERROR, ""), (ENHANCE_YOUR_CALM, "ENHANCE_YOUR_CALM")] {
        let mut c = Raw::connect(srv.addr);
        c.get(1, "/");
        c.response_end(1);
        c.send(&h2wire::goaway(0, code, b"bye"));
        c.s.shutdown(std::net::Shutdown::Write).unwrap();
        let ev = srv.close("client_goaway", Duration::from_secs(5));
        assert_eq!(ev["detail"], detail, "{ev}");
        assert_eq!(ev["requests"], 1);
    }
}

/// Send `bad` on its own connection: a GOAWAY with `code` must come back, then the end, while
/// `good` (another connection) keeps being answered.
fn connection_error(srv: &Server, good: &mut Raw, next_id: &mut u32, bad: &[u8], code: u32) {
    let mut c = Raw::connect(srv.addr);
    // Let the handshake finish before the bad frame (the preface case sends its own bytes).
    c.send(bad);
    let (g, eof) = c.goaways_until_eof(Duration::from_secs(5));
    assert_eq!(g.len(), 1, "{:?}", c.seen);
    assert_eq!(g[0].2, code, "{:?}", c.seen);
    assert!(eof.is_some());
    good.get(*next_id, "/status/202");
    good.response_end(*next_id);
    *next_id += 2;
}

#[test]
fn malformed_frames_and_a_bad_preface_get_rfc_9113_connection_errors_and_others_keep_working() {
    let srv = Server::start(&["--http2", "--keepalive-timeout", "30s"]);
    let mut good = Raw::connect(srv.addr);
    let mut id = 1;
    good.get(id, "/");
    good.response_end(id);
    id += 2;
    connection_error(
        &srv,
        &mut good,
        &mut id,
        &h2wire::frame(Kind::Ping, 0, 0, b"1234567"),
        FRAME_SIZE_ERROR,
    );
    connection_error(
        &srv,
        &mut good,
        &mut id,
        &h2wire::frame(Kind::Settings, 0, 0, b"12345"),
        FRAME_SIZE_ERROR,
    );
    // Larger than the default SETTINGS_MAX_FRAME_SIZE the server did not raise.
    let big = vec![0u8; h2wire::DEFAULT_MAX_FRAME as usize + 1];
    connection_error(
        &srv,
        &mut good,
        &mut id,
        &h2wire::frame(Kind::Data, 0, 1, &big),
        FRAME_SIZE_ERROR,
    );
    // A PING on a stream is a PROTOCOL_ERROR (RFC 9113 section 6.7).
    connection_error(
        &srv,
        &mut good,
        &mut id,
        &h2wire::frame(Kind::Ping, 0, 1, b"12345678"),
        PROTOCOL_ERROR,
    );
    for _ in 0..4 {
        srv.close("protocol_error", Duration::from_secs(5));
    }
    // A preface that starts right and goes wrong: GOAWAY PROTOCOL_ERROR from the server.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let mut frames = Vec::new();
    Scanner::server_to_client().feed(&got, &mut frames);
    let g: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::GoAway { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(g, vec![PROTOCOL_ERROR], "{frames:?}");
    let ev = srv.close("protocol_error", Duration::from_secs(5));
    assert_eq!(ev["detail"], "bad connection preface");
    good.get(id, "/");
    good.response_end(id);
}

/// Run curl, returning (stdout, `%{http_version}`), asserting it succeeded.
fn curl(args: &[&str]) -> (String, String) {
    let o = Command::new("curl")
        .args(["-sS", "-w", "\\n%{http_version}"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, version) = s.rsplit_once('\n').unwrap();
    (body.to_string(), version.to_string())
}

#[test]
fn curl_h2c_prior_knowledge_and_http1_share_the_plain_port() {
    require_tool!("curl");
    let srv = Server::start(&["--http2"]);
    let url = |p: &str| format!("http://{}{p}", srv.addr);
    let pk = "--http2-prior-knowledge";
    assert_eq!(curl(&[pk, &url("/")]), ("ok\n".into(), "2".into()));
    assert_eq!(curl(&[&url("/")]), ("ok\n".into(), "1.1".into()));
    assert_eq!(curl(&[pk, &url("/status/201")]).0, "Created\n");
    assert_eq!(curl(&[pk, &url("/bytes/100000")]).0.len(), 100_000);
    let (h, _) = curl(&[pk, "-H", "X-Test: 42", &url("/headers")]);
    assert!(h.contains("\"x-test\"") && h.contains("\"42\""), "{h}");
    let (head, v) = curl(&[pk, "-I", &url("/bytes/10")]);
    assert_eq!(v, "2");
    assert!(head.contains("content-length: 10"), "{head}");
    let dir = TempDir::new("h2post");
    let body = dir.write("body", &"y".repeat(200_000));
    let at_body = format!("@{}", body.display());
    let (post, _) = curl(&[pk, "--data-binary", &at_body, &url("/")]);
    assert_eq!(post, "ok\n");
    // An HTTP/1.1 upgrade request is answered as HTTP/1.1 (h2c upgrade is not offered).
    assert_eq!(curl(&["--http2", &url("/")]), ("ok\n".into(), "1.1".into()));
    let (m, _) = curl(&[pk, &url("/metrics")]);
    assert!(m.contains("kaprobe_h2_connections_total "), "{m}");
}

#[test]
fn curl_over_tls_gets_h2_by_alpn_and_http11_clients_keep_working() {
    require_tool!("curl");
    let dir = TempDir::new("h2tls");
    let (ca, cert, key) = kaprobe_tests::make_certs(&dir);
    let srv = Server::start(&["--http2", "--tls-cert", &cert, "--tls-key", &key]);
    let url = format!("https://127.0.0.1:{}/status/203", srv.addr.port());
    let v2 = curl(&["--cacert", &ca, "--http2", &url]);
    assert_eq!(v2, ("Non-Authoritative Information\n".into(), "2".into()));
    let v1 = curl(&["--cacert", &ca, "--http1.1", &url]);
    assert_eq!(v1.1, "1.1");
    assert_eq!(v1.0, v2.0);
    // Without --http2 the server offers only http/1.1.
    let plain = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let url = format!("https://127.0.0.1:{}/", plain.addr.port());
    assert_eq!(
        curl(&["--cacert", &ca, "--http2", &url]),
        ("ok\n".into(), "1.1".into())
    );
    // A client that is not TLS at all is logged as a failed handshake.
    let mut s = TcpStream::connect(plain.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    plain.close("tls_handshake", Duration::from_secs(5));
}

const PY_CLIENT: &str = r#"
import json, socket, ssl, sys, time
import h2.connection, h2.config, h2.events, h2.exceptions
host, port, tls, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tls", sys.argv[4]
sock = socket.create_connection((host, port))
if tls:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(sock, server_hostname="localhost")
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
out = {"answers": [], "goaways": []}
def request(path):
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "https" if tls else "http"), (":authority", "localhost")], end_stream=True)
    sock.sendall(conn.data_to_send())
    status, body = None, b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("closed mid-stream")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                status = dict(ev.headers)[b":status"].decode()
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                sock.sendall(conn.data_to_send())
                out["answers"].append([path, status, body.decode()])
                return time.monotonic()
        sock.sendall(conn.data_to_send())
request("/")
end = request("/status/201")
sock.settimeout(10)
buf = b""
while True:
    try:
        data = sock.recv(65536)
    except (ConnectionResetError, socket.timeout, ssl.SSLError):
        break
    if not data:
        out["closed_after_s"] = time.monotonic() - end
        break
    if "library_error" in out:
        continue
    # one frame at a time, so a library error on one frame does not hide the frames before it
    buf += data
    events = []
    while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
        n = 9 + int.from_bytes(buf[:3], "big")
        frame, buf = buf[:n], buf[n:]
        try:
            events += conn.receive_data(frame)
        except h2.exceptions.ProtocolError as e:
            # python-h2 takes the first GOAWAY as the end and refuses the PING after it
            out["library_error"] = type(e).__name__
            break
    for ev in events:
        if isinstance(ev, h2.events.ConnectionTerminated):
            out["goaways"].append({"after_s": time.monotonic() - end, "last_stream_id": ev.last_stream_id, "error_code": int(ev.error_code)})
    pending = conn.data_to_send()
    if pending:
        try:
            sock.sendall(pending)
        except OSError:
            pass
print(json.dumps(out))
"#;

fn python_h2(addr: SocketAddr, tls: bool, ca: &str) -> serde_json::Value {
    let o = Command::new("python3")
        .args(["-c", PY_CLIENT, "127.0.0.1", &addr.port().to_string()])
        .arg(if tls { "tls" } else { "plain" })
        .arg(ca)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn have_python_h2() -> bool {
    Command::new("python3")
        .args(["-c", "import h2.connection"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn python_h2_client_is_answered_and_sees_the_idle_goaway_at_the_timeout_plain_and_tls() {
    if !have_python_h2() {
        assert!(
            !kaprobe_tests::in_ci(),
            "CI must have Python's h2 installed"
        );
        eprintln!("skipped: needs python3 -m pip install h2");
        return;
    }
    let dir = TempDir::new("h2py");
    let (ca, cert, key) = kaprobe_tests::make_certs(&dir);
    let plain = Server::start(&["--http2", "--keepalive-timeout", "1500ms"]);
    let tls = Server::start(&[
        "--http2",
        "--keepalive-timeout",
        "1s",
        "--goaway-style",
        "two-phase",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let (p, t) = std::thread::scope(|s| {
        let p = s.spawn(|| python_h2(plain.addr, false, &ca));
        (p.join().unwrap(), python_h2(tls.addr, true, &ca))
    });
    for (r, timeout) in [(&p, 1.5), (&t, 1.0)] {
        let answers = r["answers"].as_array().unwrap();
        assert_eq!(answers[0], serde_json::json!(["/", "200", "ok\n"]), "{r}");
        assert_eq!(
            answers[1],
            serde_json::json!(["/status/201", "201", "Created\n"]),
            "{r}"
        );
        let g = r["goaways"].as_array().unwrap();
        let first = g[0]["after_s"].as_f64().unwrap();
        about(
            "python sees GOAWAY",
            Duration::from_secs_f64(first),
            Duration::from_secs_f64(timeout),
        );
        assert_eq!(g[0]["error_code"], 0, "{r}");
        assert!(r["closed_after_s"].as_f64().is_some(), "then FIN: {r}");
    }
    // single: one GOAWAY with the last stream, then FIN
    assert_eq!(p["goaways"].as_array().unwrap().len(), 1, "{p}");
    assert_eq!(p["goaways"][0]["last_stream_id"], 3, "{p}");
    about(
        "FIN after the single GOAWAY",
        Duration::from_secs_f64(p["closed_after_s"].as_f64().unwrap()),
        Duration::from_millis(1500),
    );
    // two-phase: 2^31-1 first. python-h2 (4.x) takes that GOAWAY as the end of the
    // connection and answers the PING after it with its own GOAWAY PROTOCOL_ERROR, on which
    // the server closes at once; a client that answers the PING gets the final GOAWAY.
    assert_eq!(t["goaways"][0]["last_stream_id"], MAX_STREAM, "{t}");
    let g = t["goaways"].as_array().unwrap();
    if g.len() == 2 {
        assert_eq!(g[1]["last_stream_id"], 3, "{t}");
    } else {
        assert!(t["library_error"].is_string(), "{t}");
    }
    about(
        "FIN after the two-phase GOAWAY",
        Duration::from_secs_f64(t["closed_after_s"].as_f64().unwrap()),
        Duration::from_secs(1),
    );
    plain.close("idle_goaway", Duration::from_secs(5));
    let ev = tls.close("idle_goaway", Duration::from_secs(5));
    if g.len() != 2 {
        assert_eq!(ev["detail"], "client answered with GOAWAY", "{ev}");
    }
}

#[test]
fn nginx_grpc_pass_speaks_h2c_to_serve_and_is_answered() {
    require_tool!("nginx");
    require_tool!("curl");
    let srv = Server::start(&["--http2", "--keepalive-timeout", "30s"]);
    let port = free_port();
    let _ng = nginx(
        &format!(
            "  upstream up {{ server {}; keepalive 4; }}\n  \
             server {{ listen 127.0.0.1:{port}; location / {{ grpc_pass grpc://up; }} }}",
            srv.addr
        ),
        port,
        None,
    );
    for path in ["/", "/status/201", "/bytes/5000"] {
        let o = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
            ])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        let want = match path {
            "/" => "200 3",
            "/status/201" => "201 8",
            _ => "200 5000",
        };
        assert_eq!(s, want, "{path}");
    }
    let (m, v) = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{}/_kaprobe/stats", srv.addr),
    ]);
    assert_eq!(v, "2");
    let stats: serde_json::Value = serde_json::from_str(&m).unwrap();
    // nginx's requests arrived over HTTP/2 (plus this one), on a kept-alive connection.
    assert!(stats["h2_connections"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["requests_reused"].as_u64().unwrap() >= 2, "{stats}");
}

#[test]
fn bad_tls_files_and_out_of_range_http2_flags_are_one_line_errors() {
    let dir = TempDir::new("h2bad");
    let junk = dir.write("junk.pem", "not pem\n").display().to_string();
    let o = kaprobe()
        .args(["serve", "--listen", "127.0.0.1:0", "--http2"])
        .args(["--tls-cert", &junk, "--tls-key", &junk])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--tls-cert") && err.contains("junk.pem"),
        "{err}"
    );
    kaprobe_tests::fails(
        &["serve", "--max-ping-strikes", "5000"],
        2,
        "--max-ping-strikes 5000 is out of range: use 0..=1000",
    );
    kaprobe_tests::fails(
        &["serve", "--min-ping-interval", "0.0001"],
        2,
        "--min-ping-interval 100us is out of range",
    );
    let o = kaprobe()
        .args(["serve", "--tls-cert", &junk])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tls-key"));
}

#[test]
fn a_shared_plain_port_tells_h2c_from_http1_however_late_and_cut_the_first_bytes_come() {
    let srv = Server::start(&["--http2", "--keepalive-timeout", "5s"]);
    let pause = Duration::from_millis(150);
    std::thread::scope(|s| {
        // HTTP/2: nothing at first, then the preface one byte, two bytes, and the rest.
        let h2 = s.spawn(|| {
            let mut c = Raw {
                s: TcpStream::connect(srv.addr).unwrap(),
                scan: Scanner::server_to_client(),
                queue: std::collections::VecDeque::new(),
                eof: None,
                pong: true,
                seen: Vec::new(),
            };
            std::thread::sleep(pause);
            let mut hello = h2wire::PREFACE.to_vec();
            hello.extend(h2wire::settings(false, &[]));
            for piece in [&hello[..1], &hello[1..3], &hello[3..]] {
                c.send(piece);
                std::thread::sleep(pause);
            }
            c.get(1, "/status/202");
            c.response_end(1);
        });
        // HTTP/1.1: nothing at first, then a request cut after its first byte.
        let mut h1 = TcpStream::connect(srv.addr).unwrap();
        std::thread::sleep(pause);
        h1.write_all(b"G").unwrap();
        std::thread::sleep(pause);
        h1.write_all(b"ET /status/201 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        h1.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        h1.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 201 Created\r\n"), "{answer}");
        h2.join().unwrap();
    });
}

const PY_GRPC: &str = r#"
import grpc, sys, time
opts = [("grpc.keepalive_time_ms", 100), ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_time_between_pings_ms", 100)]
ch = grpc.insecure_channel("127.0.0.1:" + sys.argv[1], options=opts)
call = ch.unary_unary("/kaprobe.Test/Ping", request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    call(b"", timeout=5)
except grpc.RpcError as e:
    print(e.code().name, flush=True)
time.sleep(float(sys.argv[2]))
"#;

/// A real gRPC channel (Python grpcio, gRPC core) whose keep-alive pings, once a second
/// (gRPC core's own floor), come faster than the server's 2 s: gRPC core reports the GOAWAY
/// it gets as `ENHANCE_YOUR_CALM` with debug data `too_many_pings`, as from a gRPC server.
#[test]
fn a_grpc_channel_pinging_too_often_is_told_too_many_pings() {
    let have = Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            !kaprobe_tests::in_ci(),
            "CI must have Python's grpcio installed"
        );
        eprintln!("skipped: needs python3 -m pip install grpcio");
        return;
    }
    let srv = Server::start(&[
        "--http2",
        "--keepalive-timeout",
        "30s",
        "--min-ping-interval",
        "2s",
        "--max-ping-strikes",
        "2",
    ]);
    let o = Command::new("python3")
        .args(["-c", PY_GRPC, &srv.addr.port().to_string(), "5"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    // The server is not a gRPC service: the call itself ends UNIMPLEMENTED (HTTP 404).
    assert_eq!(out.trim(), "UNIMPLEMENTED", "{out}{err}");
    assert!(
        err.contains("ENHANCE_YOUR_CALM") && err.contains("too_many_pings"),
        "{err}"
    );
    let ev = srv.close("too_many_pings", Duration::from_secs(5));
    assert_eq!(ev["ending"], "fin");
}

#[test]
fn close_endpoint_and_sigterm_end_http2_connections_with_goaway() {
    let srv = Server::start(&["--http2", "--keepalive-timeout", "30s"]);
    let mut c = Raw::connect(srv.addr);
    c.get(1, "/");
    c.response_end(1);
    c.get(3, "/close");
    c.response_end(3);
    let (g, eof) = c.goaways_until_eof(Duration::from_secs(5));
    assert_eq!(g.len(), 1, "{:?}", c.seen);
    assert_eq!((g[0].1, g[0].2), (3, NO_ERROR));
    assert!(eof.is_some());
    assert_eq!(
        srv.close("close_endpoint", Duration::from_secs(5))["requests"],
        2
    );
    // SIGTERM: an idle HTTP/2 connection is told to go away, then the server exits.
    let mut idle = Raw::connect(srv.addr);
    idle.get(1, "/");
    idle.response_end(1);
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(srv.child.0.id().cast_signed(), libc::SIGTERM) };
    let (g, eof) = idle.goaways_until_eof(Duration::from_secs(5));
    assert_eq!(g.len(), 1, "{:?}", idle.seen);
    assert_eq!((g[0].1, g[0].2), (1, NO_ERROR));
    assert!(eof.is_some());
    srv.close("shutdown", Duration::from_secs(5));
}

/// The line of h2load's summary that starts with `what` ("requests:", "status codes:").
fn h2load_line(out: &str, what: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no '{what}' in h2load's output: {out}"))
        .to_string()
}

#[test]
fn h2load_and_nghttp_many_streams_and_small_windows_are_all_answered() {
    require_tool!("h2load");
    require_tool!("nghttp");
    // h2load (nghttp2) does not reconnect after GOAWAY: no request limit here.
    let srv = Server::start(&["--http2", "--max-requests", "0"]);
    let o = Command::new("h2load")
        .args(["-n", "3000", "-c", "6", "-m", "16"])
        .arg(format!("http://{}/bytes/3000", srv.addr))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "h2load: {out}");
    assert!(
        h2load_line(&out, "requests:").contains("3000 succeeded, 0 failed, 0 errored"),
        "{out}"
    );
    assert!(
        h2load_line(&out, "status codes:").starts_with("status codes: 3000 2xx"),
        "{out}"
    );
    // 64 KiB stream and connection windows (-w 16 -W 16): a 1 MB body needs the server to
    // wait for WINDOW_UPDATEs, and every byte arrives.
    let o = Command::new("nghttp")
        .args(["-w", "16", "-W", "16"])
        .arg(format!("http://{}/bytes/1000000", srv.addr))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nghttp: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout.len(), 1_000_000);
    assert!(o.stdout.iter().all(|&b| b != 0), "the body has no holes");
}
