//! End-to-end tests of the push channels of `kaprobe serve`: WebSocket echo and rooms
//! (tokio-tungstenite as the client), event streams and polls over raw TCP, the SQLite store
//! across a restart, the RFC 6455 close codes for bad input, server pings, and nginx as a
//! reverse proxy whose read timeout cuts idle channels unless heartbeats keep them alive.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use kaprobe_tests::{require_tool, serve_json as serve, Serve as Server, TempDir};

/// What these tests ask of a running server.
trait ServerExt {
    fn close_event(&self, reason: &str) -> serde_json::Value;
    fn ws_url(&self, q: &str) -> String;
}

impl ServerExt for Server {
    /// The next close event with this reason (other close events are skipped).
    fn close_event(&self, reason: &str) -> serde_json::Value {
        let want = format!("\"reason\":\"{reason}\"");
        self.json_line(
            &want,
            Duration::from_secs(15),
            &format!("{reason} close event"),
        )
    }

    fn ws_url(&self, q: &str) -> String {
        format!("ws://{}/ws{q}", self.addr)
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// One HTTP/1.1 exchange on a new connection (`Connection: close`): the whole answer.
async fn http(addr: &str, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

async fn publish(addr: &str, room: &str, text: &str) -> u64 {
    let r = http(
        addr,
        &format!(
            "POST /publish?room={room} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        ),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
    assert_eq!(v["room"], room);
    v["id"].as_u64().unwrap()
}

async fn get(addr: &str, target: &str, extra: &str) -> String {
    http(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{extra}\r\n"),
    )
    .await
}

/// The next text message, within 5 s.
async fn next_text(c: &mut Ws) -> String {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .expect("a message within 5 s")
            .expect("the connection open")
            .unwrap();
        match m {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The next message (within 5 s) is a close frame with `code`.
async fn expect_close(c: &mut Ws, code: u16) {
    let m = tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match m {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), code),
        other => panic!("expected close {code}, got {other:?}"),
    }
}

/// Nothing but control frames arrives for `d`.
async fn silent_for(c: &mut Ws, d: Duration) {
    let end = tokio::time::Instant::now() + d;
    while let Ok(m) = tokio::time::timeout_at(end, c.next()).await {
        match m {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}

/// An event stream opened over raw TCP, read incrementally.
struct Sse {
    s: TcpStream,
    buf: String,
}

impl Sse {
    async fn open(addr: &str, target: &str, extra: &str) -> Self {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {target} HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        let mut me = Self {
            s,
            buf: String::new(),
        };
        me.until("\r\n\r\n").await;
        assert!(me.buf.starts_with("HTTP/1.1 200 "), "{}", me.buf);
        assert!(
            me.buf.contains("Content-Type: text/event-stream"),
            "{}",
            me.buf
        );
        me.buf = me.buf.split_once("\r\n\r\n").unwrap().1.to_string();
        me
    }

    /// Read until `pat` has been seen (panics after 5 s or at EOF).
    async fn until(&mut self, pat: &str) {
        let mut chunk = [0u8; 4096];
        while !self.buf.contains(pat) {
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {pat:?} within 5 s; got {:?}", self.buf))
                .unwrap();
            assert!(n > 0, "EOF before {pat:?}; got {:?}", self.buf);
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }

    /// `(id, data)` of the complete events read so far, comments skipped.
    fn events(&self) -> Vec<(u64, String)> {
        let mut v = Vec::new();
        for block in self.buf.split("\n\n") {
            let mut id = None;
            let mut data: Vec<&str> = Vec::new();
            for l in block.lines() {
                if let Some(i) = l.strip_prefix("id: ") {
                    id = i.parse().ok();
                } else if let Some(d) = l.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            if let Some(id) = id {
                v.push((id, data.join("\n")));
            }
        }
        v
    }
}

#[tokio::test]
async fn ws_without_room_echoes_text_and_binary() {
    let srv = serve(&[]);
    let mut c = ws(&srv.ws_url("")).await;
    c.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut c).await, "hello");
    c.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::binary(vec![0u8, 1, 2, 255]));
    // A client ping is answered.
    c.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::Pong(b"p".to_vec().into()));
    c.close(None).await.unwrap();
    let ev = srv.close_event("ws_client_close");
    assert_eq!(ev["requests"], 1);
}

#[tokio::test]
async fn push_connections_outlive_the_keepalive_timeout_and_are_counted() {
    let srv = serve(&["--keepalive-timeout", "1s"]);
    let mut c = ws(&srv.ws_url("?room=k")).await;
    let mut sse = Sse::open(&srv.addr, "/sse?room=k", "").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = get(&srv.addr, "/_kaprobe/stats", "").await;
    let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
    assert_eq!(
        (v["ws_open"].as_u64(), v["sse_open"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(v["closes"]["idle_timeout"], 0, "{v}");
    publish(&srv.addr, "k", "still open").await;
    assert_eq!(next_text(&mut c).await, "still open");
    sse.until("data: still open\n\n").await;
    let r = get(&srv.addr, "/metrics", "").await;
    assert!(r.contains("\nkaprobe_published_total 1\n"), "{r}");
    assert!(
        r.contains("kaprobe_connection_closes_total{reason=\"ws_pong_timeout\"} 0"),
        "{r}"
    );
}

#[tokio::test]
async fn room_broadcast_reaches_exactly_the_three_members() {
    let srv = serve(&[]);
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(ws(&srv.ws_url("?room=blue")).await);
    }
    let mut outsider = ws(&srv.ws_url("?room=red")).await;
    members[0].send(Message::text("to the room")).await.unwrap();
    for m in &mut members {
        assert_eq!(next_text(m).await, "to the room");
    }
    // /publish reaches the same three, and only them.
    let id = publish(&srv.addr, "blue", "published").await;
    assert_eq!(id, 2);
    for m in &mut members {
        assert_eq!(next_text(m).await, "published");
    }
    silent_for(&mut outsider, Duration::from_millis(500)).await;
    for m in &mut members {
        silent_for(m, Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn publish_reaches_ws_sse_and_poll() {
    let srv = serve(&[]);
    let mut c = ws(&srv.ws_url("?room=news")).await;
    let mut sse = Sse::open(&srv.addr, "/sse?room=news", "").await;
    let addr = srv.addr.clone();
    let long =
        tokio::spawn(async move { get(&addr, "/poll?room=news&since=0&wait=10s", "").await });
    // Let the long poll arrive (it answers at once if a message is already there, so the
    // order does not change what it returns).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(publish(&srv.addr, "news", "line one\nline two").await, 1);
    assert_eq!(next_text(&mut c).await, "line one\nline two");
    sse.until("\n\n").await;
    assert_eq!(sse.events(), [(1, "line one\nline two".to_string())]);
    assert!(
        sse.buf
            .starts_with("id: 1\ndata: line one\ndata: line two\n\n"),
        "{:?}",
        sse.buf
    );
    let r = long.await.unwrap();
    assert!(r.contains("Content-Type: application/json"), "{r}");
    let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"room":"news","messages":[{"id":1,"data":"line one\nline two"}],"last_id":1})
    );
}

#[tokio::test]
async fn sse_resume_with_last_event_id_replays_exactly_the_missed_events() {
    let srv = serve(&["--store-limit", "4"]);
    for i in 1..=3 {
        publish(&srv.addr, "r", &format!("m{i}")).await;
    }
    let mut a = Sse::open(&srv.addr, "/sse?room=r", "Last-Event-ID: 1\r\n").await;
    a.until("data: m3\n\n").await;
    assert_eq!(a.events(), [(2, "m2".into()), (3, "m3".into())]);
    // Live events follow the replay, with the next id.
    publish(&srv.addr, "r", "m4").await;
    a.until("data: m4\n\n").await;
    assert_eq!(a.events().last().unwrap(), &(4, "m4".to_string()));
    // The query form; and a resume older than the kept window says what it missed.
    for i in 5..=6 {
        publish(&srv.addr, "r", &format!("m{i}")).await;
    }
    let mut b = Sse::open(&srv.addr, "/sse?room=r&last_event_id=5", "").await;
    b.until("data: m6\n\n").await;
    assert_eq!(b.events(), [(6, "m6".into())]);
    let mut c = Sse::open(&srv.addr, "/sse?room=r", "Last-Event-ID: 0\r\n").await;
    c.until("data: m6\n\n").await;
    assert!(c.buf.starts_with(": missed ids 1..=2"), "{:?}", c.buf);
    let ids: Vec<u64> = c.events().iter().map(|e| e.0).collect();
    assert_eq!(ids, [3, 4, 5, 6]);
}

#[tokio::test]
async fn store_keeps_messages_and_ids_across_a_restart() {
    let dir = TempDir::new("push-store");
    let file = dir.path().join("push.sqlite");
    let f = file.to_str().unwrap();
    let mut srv = serve(&["--store", f, "--store-limit", "2"]);
    for i in 1..=5 {
        assert_eq!(publish(&srv.addr, "d", &format!("m{i}")).await, i);
    }
    srv.stop();
    let srv = serve(&["--store", f, "--store-limit", "2"]);
    // Ids continue after the restart.
    assert_eq!(publish(&srv.addr, "d", "m6").await, 6);
    // A resume older than the memory window is served from the file, in order.
    let mut s = Sse::open(&srv.addr, "/sse?room=d", "Last-Event-ID: 1\r\n").await;
    s.until("data: m6\n\n").await;
    assert!(!s.buf.contains("missed"), "{:?}", s.buf);
    let want: Vec<(u64, String)> = (2..=6).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(s.events(), want);
    let r = get(&srv.addr, "/poll?room=d&since=4", "").await;
    let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
    assert_eq!(v["last_id"], 6);
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    drop(srv);
}

#[tokio::test]
async fn a_large_publish_with_expect_continue_is_not_held_up() {
    require_tool!("curl");
    let srv = serve(&[]);
    // curl sends Expect: 100-continue for bodies over 1 KiB and waits up to 1 s for the 100.
    let text = "z".repeat(5000);
    let url = format!("http://{}/publish?room=big", srv.addr);
    let t0 = Instant::now();
    let o = Command::new("curl")
        .args(["-sf", "--data-binary", &text, &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"room":"big","id":1}));
    let r = get(&srv.addr, "/poll?room=big", "").await;
    assert!(body(&r).contains(&text), "{r}");
}

#[tokio::test]
async fn long_poll_waits_for_a_publish_and_short_poll_answers_at_once() {
    let srv = serve(&[]);
    let t0 = Instant::now();
    let r = get(&srv.addr, "/poll?room=p", "").await;
    assert!(t0.elapsed() < Duration::from_secs(1));
    let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
    assert_eq!(v, serde_json::json!({"room":"p","messages":[],"last_id":0}));
    // A long poll with nothing published answers empty after its wait.
    let t0 = Instant::now();
    let r = get(&srv.addr, "/poll?room=p&wait=600ms", "").await;
    let waited = t0.elapsed();
    assert!(
        (Duration::from_millis(550)..Duration::from_secs(3)).contains(&waited),
        "{waited:?}"
    );
    assert!(body(&r).contains("\"messages\":[]"), "{r}");
    // A long poll returns as soon as a message is published.
    let addr = srv.addr.clone();
    let t0 = Instant::now();
    let long = tokio::spawn(async move { get(&addr, "/poll?room=p&since=0&wait=30s", "").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&srv.addr, "p", "now").await;
    let r = long.await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(body(&r).contains("\"data\":\"now\""), "{r}");
    // Polls keep the connection alive for the next request.
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    s.write_all(b"GET /poll?room=p HTTP/1.1\r\nHost: a\r\n\r\nGET /poll?room=p&since=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
}

/// Open a WebSocket by hand: the handshake, then the raw stream.
async fn raw_ws(addr: &str, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    s
}

/// A client frame, masked unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![first];
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let len = u8::try_from(payload.len()).unwrap();
    assert!(len < 126);
    if masked {
        f.push(0x80 | len);
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        f.push(len);
        f.extend_from_slice(payload);
    }
    f
}

/// Read server frames until a close frame: its code and reason (ping frames skipped).
async fn read_close(s: &mut TcpStream) -> (u16, String) {
    loop {
        let mut h = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut h))
            .await
            .expect("a frame within 10 s")
            .unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
        let len = usize::from(h[1] & 0x7f);
        assert!(len < 126);
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await.unwrap();
        if h[0] & 0x0f == 0x8 {
            let code = u16::from_be_bytes([p[0], p[1]]);
            return (code, String::from_utf8_lossy(&p[2..]).into_owned());
        }
    }
}

#[tokio::test]
async fn malformed_frames_get_1002_and_the_room_keeps_working() {
    let srv = serve(&[]);
    let mut good = ws(&srv.ws_url("?room=m")).await;
    // An unmasked client frame.
    let mut bad = raw_ws(&srv.addr, "/ws?room=m").await;
    bad.write_all(&frame(0x81, b"hi", false)).await.unwrap();
    assert_eq!(read_close(&mut bad).await.0, 1002);
    let ev = srv.close_event("ws_protocol_error");
    assert_eq!(ev["detail"], "unmasked client frame");
    // A reserved opcode (0x3).
    let mut bad = raw_ws(&srv.addr, "/ws?room=m").await;
    bad.write_all(&frame(0x83, b"x", true)).await.unwrap();
    assert_eq!(read_close(&mut bad).await.0, 1002);
    let ev = srv.close_event("ws_protocol_error");
    assert_eq!(ev["detail"], "reserved opcode");
    // Invalid UTF-8 in a text frame: 1007.
    let mut bad = raw_ws(&srv.addr, "/ws?room=m").await;
    bad.write_all(&frame(0x81, &[0xff, 0xfe], true))
        .await
        .unwrap();
    assert_eq!(read_close(&mut bad).await.0, 1007);
    srv.close_event("ws_invalid_utf8");
    // The other member still works.
    good.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_text(&mut good).await, "still here");
}

#[tokio::test]
async fn oversized_messages_get_1009() {
    let srv = serve(&["--ws-max-message", "1024"]);
    let mut other = ws(&srv.ws_url("")).await;
    let mut c = ws(&srv.ws_url("")).await;
    let _ = c.send(Message::text("x".repeat(2000))).await;
    expect_close(&mut c, 1009).await;
    srv.close_event("ws_message_too_big");
    // Exactly at the limit is fine, on another connection.
    other.send(Message::text("y".repeat(1024))).await.unwrap();
    assert_eq!(next_text(&mut other).await.len(), 1024);
}

#[tokio::test]
async fn bad_handshakes_get_400_and_a_wrong_version_426() {
    let srv = serve(&[]);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let up = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    let cases = [
        (format!("{up}{v13}"), 400),
        (format!("{up}Sec-WebSocket-Key: abc\r\n{v13}"), 400),
        (format!("Connection: Upgrade\r\n{key}{v13}"), 400),
        (format!("Upgrade: websocket\r\n{key}{v13}"), 400),
        (format!("{up}{key}Sec-WebSocket-Version: 8\r\n"), 426),
    ];
    for (headers, status) in cases {
        let r = get(&srv.addr, "/ws", &headers).await;
        assert!(
            r.starts_with(&format!("HTTP/1.1 {status} ")),
            "{headers:?}: {r}"
        );
        if status == 426 {
            assert!(r.contains("Sec-WebSocket-Version: 13\r\n"), "{r}");
        }
    }
    let r = http(
        &srv.addr,
        &format!("POST /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n{up}{key}{v13}\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    let r = get(&srv.addr, "/sse?room=bad%20name", "").await;
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    // The server still serves WebSockets.
    let mut c = ws(&srv.ws_url("")).await;
    c.send(Message::text("ok")).await.unwrap();
    assert_eq!(next_text(&mut c).await, "ok");
}

#[tokio::test]
async fn unanswered_pings_close_with_1001_after_two_intervals() {
    let srv = serve(&["--ws-ping", "1s"]);
    let t0 = Instant::now();
    let mut s = raw_ws(&srv.addr, "/ws").await;
    // Read only: pings arrive, no pong goes back.
    let (code, reason) = read_close(&mut s).await;
    let after = t0.elapsed();
    assert_eq!((code, reason.as_str()), (1001, "pong timeout"));
    assert!(
        (Duration::from_millis(1800)..Duration::from_millis(3500)).contains(&after),
        "{after:?}"
    );
    srv.close_event("ws_pong_timeout");
    // A client that answers (tungstenite does) stays connected past several intervals.
    let mut c = ws(&srv.ws_url("?ping=300ms")).await;
    let mut pings = 0;
    let end = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(m) = tokio::time::timeout_at(end, c.next()).await {
        match m.unwrap().unwrap() {
            Message::Ping(_) => pings += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(pings >= 3, "{pings}");
    c.send(Message::text("alive")).await.unwrap();
    assert_eq!(next_text(&mut c).await, "alive");
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_and_ends_event_streams() {
    let mut srv = serve(&[]);
    let mut c = ws(&srv.ws_url("?room=s")).await;
    let mut sse = Sse::open(&srv.addr, "/sse?room=s", "").await;
    // Make sure both are being served before the signal.
    publish(&srv.addr, "s", "x").await;
    assert_eq!(next_text(&mut c).await, "x");
    sse.until("data: x\n\n").await;
    let stopper = tokio::task::spawn_blocking(move || {
        srv.stop();
        srv
    });
    expect_close(&mut c, 1001).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sse.s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let srv = stopper.await.unwrap();
    let mut reasons = Vec::new();
    while let Ok(l) = srv.out.recv_timeout(Duration::from_millis(200)) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        reasons.push(v["reason"].as_str().unwrap().to_string());
    }
    assert!(
        reasons.iter().filter(|r| *r == "shutdown").count() >= 2,
        "{reasons:?}"
    );
}

/// nginx in front of `upstream` with the WebSocket upgrade headers, unbuffered event
/// streams and the given read timeout.
fn nginx(upstream: &str, read_timeout: &str) -> kaprobe_tests::Peer {
    let port = kaprobe_tests::free_port();
    kaprobe_tests::nginx(
        &format!(
            "  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $http_connection;
      proxy_read_timeout {read_timeout};
      proxy_buffering off;
    }}
  }}"
        ),
        port,
        None,
    )
}

/// How long an idle WebSocket lives through the proxy (None: still open after `hold`).
async fn ws_lifetime(url: String, hold: Duration) -> Option<Duration> {
    let t0 = tokio::time::Instant::now();
    let mut c = ws(&url).await;
    let end = t0 + hold;
    loop {
        match tokio::time::timeout_at(end, c.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(_) => return Some(t0.elapsed()),
        }
    }
}

/// How long an idle event stream lives through the proxy (None: still open after `hold`),
/// and the heartbeats seen.
async fn sse_lifetime(addr: String, target: &str, hold: Duration) -> (Option<Duration>, usize) {
    let t0 = tokio::time::Instant::now();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let end = t0 + hold;
    let mut seen = String::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(end, s.read(&mut chunk)).await {
            Err(_) => return (None, seen.matches(": heartbeat").count()),
            Ok(Ok(0) | Err(_)) => return (Some(t0.elapsed()), seen.matches(": heartbeat").count()),
            Ok(Ok(n)) => seen.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_heartbeats_keep_idle_channels_open_and_silence_gets_them_cut() {
    require_tool!("nginx");
    let srv = serve(&[]);
    let proxy = nginx(&srv.addr, "2s");
    let a = proxy.addr();
    let hold = Duration::from_secs(10);
    // All four at once: with a 1 s heartbeat (ping / comment) and without.
    let ws_beat = tokio::spawn(ws_lifetime(format!("ws://{a}/ws?ping=1s"), hold));
    let ws_idle = tokio::spawn(ws_lifetime(format!("ws://{a}/ws"), hold));
    let sse_beat = tokio::spawn(sse_lifetime(a.clone(), "/sse?heartbeat=1s", hold));
    let sse_idle = tokio::spawn(sse_lifetime(a.clone(), "/sse", hold));
    let cut = Duration::from_millis(1500)..Duration::from_secs(4);
    let t = ws_idle.await.unwrap().expect("idle WebSocket cut by nginx");
    assert!(cut.contains(&t), "idle WebSocket cut after {t:?}");
    let (t, _) = sse_idle.await.unwrap();
    let t = t.expect("idle event stream cut by nginx");
    assert!(cut.contains(&t), "idle event stream cut after {t:?}");
    assert_eq!(ws_beat.await.unwrap(), None, "WebSocket with pings was cut");
    let (t, beats) = sse_beat.await.unwrap();
    assert_eq!(t, None, "event stream with heartbeats was cut");
    assert!(beats >= 8, "{beats} heartbeats in 10 s");
}

#[test]
fn bad_push_flags_name_the_flag_and_the_range() {
    let cases: [(&[&str], u8, &str); 4] = [
        (&["--ws-ping", "5ms"], 2, "--ws-ping"),
        (&["--sse-heartbeat", "2h"], 2, "--sse-heartbeat"),
        (
            &["--ws-max-message", "10"],
            2,
            "--ws-max-message 10 is out of range: use 125..=67108864",
        ),
        (
            &["--store", "/nonexistent-kaprobe-dir/x.sqlite"],
            7,
            "--store /nonexistent-kaprobe-dir/x.sqlite",
        ),
    ];
    for (args, code, msg) in cases {
        let mut full = vec!["serve", "--listen", "127.0.0.1:0"];
        full.extend_from_slice(args);
        let o = kaprobe_tests::run(&full);
        assert_eq!(o.status.code(), Some(i32::from(code)), "{args:?}");
        let err = kaprobe_tests::stderr(&o);
        assert!(err.contains(msg), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// The server's `/_kaprobe/stats` counters.
async fn push_stats(addr: &str) -> serde_json::Value {
    let r = get(addr, "/_kaprobe/stats", "").await;
    serde_json::from_str(body(&r)).unwrap()
}

/// A request for a room beyond `--max-rooms`: 503, the message, and the connection closed.
fn assert_room_limit(resp: &str, max: u32) {
    assert!(
        resp.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{resp}"
    );
    assert!(resp.contains("Connection: close\r\n"), "{resp}");
    assert!(resp.contains("Content-Type: text/plain\r\n"), "{resp}");
    assert_eq!(
        body(resp),
        format!("room limit reached (--max-rooms {max})\n"),
        "{resp}"
    );
}

#[tokio::test]
async fn empty_rooms_are_freed_as_their_clients_leave_so_200_rooms_fit_under_a_cap_of_50() {
    let srv = serve(&["--max-rooms", "50"]);
    let mut n = 0;
    for round in 0..5 {
        // 40 clients at once, each in a room of its own, then they leave one by one.
        let mut open = Vec::new();
        for i in 0..40 {
            open.push(ws(&srv.ws_url(&format!("?room=r{round}-{i}"))).await);
        }
        assert_eq!(push_stats(&srv.addr).await["rooms"], 40);
        for mut c in open {
            c.close(None).await.unwrap();
            // The room is released before the close is logged.
            srv.close_event("ws_client_close");
            n += 1;
        }
    }
    assert_eq!(n, 200);
    let st = push_stats(&srv.addr).await;
    assert_eq!(st["rooms"], 0, "{st}");
    assert_eq!(st["room_limit_refusals"], 0, "{st}");
}

#[tokio::test]
async fn at_the_room_cap_new_rooms_get_503_on_every_endpoint_and_old_rooms_keep_working() {
    let srv = serve(&["--max-rooms", "3"]);
    for room in ["a", "b", "c"] {
        assert_eq!(publish(&srv.addr, room, room).await, 1);
    }
    let a = &srv.addr;
    let r = http(
        a,
        "POST /publish?room=d HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    assert_room_limit(&r, 3);
    let r = get(a, "/ws?room=d", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n").await;
    assert_room_limit(&r, 3);
    assert_room_limit(&get(a, "/sse?room=d", "").await, 3);
    assert_room_limit(&get(a, "/poll?room=d&since=0", "").await, 3);
    for _ in 0..4 {
        assert_eq!(srv.close_event("room_limit")["ending"], "fin");
    }
    let st = push_stats(a).await;
    assert_eq!(st["rooms"], 3, "{st}");
    assert_eq!(st["room_limit_refusals"], 4, "{st}");
    assert_eq!(st["closes"]["room_limit"], 4, "{st}");
    let m = get(a, "/metrics", "").await;
    assert!(m.contains("\nkaprobe_push_rooms 3\n"), "{m}");
    assert!(
        m.contains("# TYPE kaprobe_push_room_limit_refusals_total counter\nkaprobe_push_room_limit_refusals_total 4\n"),
        "{m}"
    );
    // Rooms already there keep working at the cap: a WebSocket member of `a` gets a publish.
    let mut c = ws(&srv.ws_url("?room=a")).await;
    assert_eq!(publish(a, "a", "second").await, 2);
    assert_eq!(next_text(&mut c).await, "second");
    let r = get(a, "/poll?room=c&since=0", "").await;
    let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
    assert_eq!(v["messages"], serde_json::json!([{"id": 1, "data": "c"}]));
}

#[tokio::test]
async fn with_a_store_rooms_nobody_holds_make_way_and_come_back_with_their_ids() {
    let dir = TempDir::new("push-rooms");
    let file = dir.path().join("push.sqlite");
    let srv = serve(&["--store", file.to_str().unwrap(), "--max-rooms", "2"]);
    for room in ["a", "b", "c"] {
        assert_eq!(publish(&srv.addr, room, &format!("{room}1")).await, 1);
    }
    let st = push_stats(&srv.addr).await;
    assert_eq!(st["rooms"], 2, "{st}");
    // a was freed from memory to make way for c; it comes back from the file.
    let r = get(&srv.addr, "/poll?room=a&since=0", "").await;
    let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"room": "a", "messages": [{"id": 1, "data": "a1"}], "last_id": 1})
    );
    // Its ids continue, and so do b's after it too was freed.
    assert_eq!(publish(&srv.addr, "a", "a2").await, 2);
    assert_eq!(publish(&srv.addr, "b", "b2").await, 2);
    assert_eq!(publish(&srv.addr, "c", "c2").await, 2);
    // A room held by a client is not freed: with a and b held, a third room is refused.
    let _ha = ws(&srv.ws_url("?room=a")).await;
    let _hb = ws(&srv.ws_url("?room=b")).await;
    assert_room_limit(&get(&srv.addr, "/poll?room=c", "").await, 2);
    drop(srv);
}

#[test]
fn max_rooms_out_of_range_or_not_a_number_is_a_one_line_usage_error() {
    for v in ["0", "x", "1000001"] {
        let o = kaprobe_tests::run(&["serve", "--listen", "127.0.0.1:0", "--max-rooms", v]);
        assert_eq!(o.status.code(), Some(2), "{v}");
        let err = kaprobe_tests::stderr(&o);
        assert!(
            err.contains(&format!("--max-rooms {v}"))
                || err.contains(&format!("--max-rooms '{v}'")),
            "{err}"
        );
        assert!(err.contains("use 1..=1000000"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
