//! `kaprobe probe ws://...` and `kaprobe probe --sse URL` against `kaprobe serve` behind a
//! real nginx with `proxy_read_timeout 2s`: idle push channels die at about 2 s and the
//! prober says who cut them and what heartbeat keeps them alive; a 1 s heartbeat keeps both
//! alive for 10 s. Bad URLs, refused ports and servers that are no push channel get their
//! own message and exit code.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use kaprobe_tests::peers;

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use kaprobe_tests::{
    f64_at as f, fails, json_lines, kaprobe, require_tool, serve_quiet as serve, stderr, stdout,
};
use peers::{free_port, nginx, Peer};
use serde_json::Value;

/// nginx proxying WebSockets and event streams to `upstream`, cutting idle ones after 2 s.
fn nginx_2s(upstream: SocketAddr) -> Peer {
    let front = free_port();
    nginx(
        &format!(
            "  server {{ listen 127.0.0.1:{front};\n    location / {{ proxy_pass http://{upstream};\n      \
             proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      \
             proxy_set_header Connection \"upgrade\";\n      proxy_read_timeout 2s;\n      \
             proxy_buffering off; }} }}"
        ),
        front,
        None,
    )
}

/// Start `kaprobe ARGS` now; collect it later (so several probes run at once).
fn start(args: &[&str]) -> std::process::Child {
    kaprobe()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: std::process::Child, what: &str) -> Value {
    let o: Output = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{what}: {}{}", stdout(&o), stderr(&o));
    json_lines(&o).remove(0)
}

#[test]
fn idle_websocket_and_event_stream_through_nginx_die_at_about_2s_and_the_verdict_says_so() {
    require_tool!("nginx");
    let (_s, app) = serve(&[]);
    let ng = nginx_2s(app);
    let ws_url = format!("ws://127.0.0.1:{}/ws", ng.port);
    let sse_url = ng.url("/sse");
    let ws = start(&["probe", &ws_url, "--max-wait", "40s", "--json"]);
    let sse = start(&["probe", "--sse", &sse_url, "--max-wait", "40s", "--json"]);
    for (r, kind, noun) in [
        (finish(ws, "ws probe"), "websocket", "WebSockets"),
        (finish(sse, "sse probe"), "sse", "event streams"),
    ] {
        assert_eq!(r["kind"], kind, "{r}");
        assert!(r["server"].as_str().unwrap_or("").contains("nginx"), "{r}");
        let lived = f(&r, "/idle/lasted_s");
        assert!(
            (1.5..=4.0).contains(&lived),
            "idle {kind} lived {lived} s: {r}"
        );
        assert_eq!(r["idle"]["end"], "fin", "nginx cuts with a bare FIN: {r}");
        assert!(
            r["cut_by"].as_str().unwrap().contains("nginx"),
            "{}",
            r["cut_by"]
        );
        // The check connection with a heartbeat of about half the lifetime stayed up.
        assert_eq!(r["heartbeat"]["end"], "alive", "{r}");
        let h = f(&r, "/heartbeat_max_s");
        assert!(
            h > 0.0 && h <= lived * 2.0 / 3.0,
            "heartbeat {h} s for a {lived} s lifetime: {r}"
        );
        assert!(f(&r, "/heartbeat/lasted_s") >= 2.0 * lived, "{r}");
        let verdict = r["verdict"].as_str().unwrap();
        assert!(
            verdict.contains(&format!("cuts idle {noun} after {lived:.1}s")),
            "{verdict}"
        );
        let every = if h.fract() == 0.0 {
            format!("every {h:.0}s or less")
        } else {
            format!("every {h:.1}s or less")
        };
        assert!(verdict.contains(&every), "{verdict}");
    }
}

#[test]
fn one_second_heartbeat_keeps_websocket_and_event_stream_alive_for_10s_through_nginx() {
    require_tool!("nginx");
    let (_s, app) = serve(&[]);
    let ng = nginx_2s(app);
    let ws_url = format!("ws://127.0.0.1:{}/ws", ng.port);
    let sse_url = ng.url("/sse");
    let common = ["--heartbeat", "1s", "--hold", "10s", "--json"];
    let ws = start(&[&["probe", ws_url.as_str()][..], &common[..]].concat());
    let sse = start(&[&["probe", "--sse", sse_url.as_str()][..], &common[..]].concat());
    let ws = finish(ws, "ws probe");
    let sse = finish(sse, "sse probe");
    for r in [&ws, &sse] {
        assert!(
            r["idle"].is_null(),
            "--heartbeat watches one connection: {r}"
        );
        assert_eq!(r["heartbeat"]["end"], "alive", "{r}");
        let lasted = f(r, "/heartbeat/lasted_s");
        assert!((9.9..=11.0).contains(&lasted), "{r}");
        assert_eq!(f(r, "/heartbeat/heartbeat_s"), 1.0, "{r}");
        let verdict = r["verdict"].as_str().unwrap();
        assert!(verdict.starts_with("survived 10.0s with 1s "), "{verdict}");
    }
    // The heartbeats really flowed: pings answered through nginx, comment lines received.
    assert!(f(&ws, "/heartbeat/pongs_received") >= 8.0, "{ws}");
    assert!(f(&sse, "/heartbeat/heartbeats_received") >= 8.0, "{sse}");
}

#[test]
fn an_idle_websocket_straight_to_serve_outlives_the_hold_and_says_at_least() {
    let (_s, app) = serve(&[]);
    let o = kaprobe()
        .args(["probe", &format!("ws://{app}/ws"), "--hold", "1s", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json_lines(&o).remove(0);
    assert_eq!(r["idle"]["end"], "alive", "{r}");
    assert!(r["heartbeat"].is_null(), "no check after a survival: {r}");
    assert!(r["cut_by"].is_null(), "{r}");
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .starts_with("survived at least 1.0s idle"),
        "{}",
        r["verdict"]
    );
    // The table form says the same in words.
    let o = kaprobe()
        .args([
            "probe",
            "--sse",
            &format!("http://{app}/sse"),
            "--hold",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("still open"), "{out}");
    assert!(
        out.contains("verdict: survived at least 1.0s idle"),
        "{out}"
    );
}

#[test]
fn bad_urls_refused_ports_and_servers_without_push_channels_get_their_own_exit_codes() {
    let (_s, app) = serve(&[]);
    fails(&["probe", "ws://"], 2, "has no host");
    fails(&["probe", "ws://127.0.0.1:0/ws"], 2, "port '0'");
    fails(
        &["probe", "--sse", "ws://127.0.0.1/x"],
        2,
        "--sse takes an http",
    );
    fails(
        &["probe", "http://127.0.0.1:1/", "--heartbeat", "1s"],
        2,
        "--heartbeat and --hold are for push channels",
    );
    fails(
        &["probe", "ws://127.0.0.1:1/ws", "--heartbeat", "0"],
        2,
        "--heartbeat 0s is out of range",
    );
    fails(
        &["probe", "ws://127.0.0.1:1/ws", "--hold", "0.5"],
        2,
        "--hold 500ms is out of range",
    );
    let closed = free_port();
    fails(
        &["probe", &format!("ws://127.0.0.1:{closed}/ws")],
        4,
        "connection refused (nothing listens there)",
    );
    fails(
        &["probe", "--sse", &format!("http://127.0.0.1:{closed}/sse")],
        4,
        "connection refused (nothing listens there)",
    );
    // A plain HTTP page answers the upgrade with 200: not a WebSocket.
    fails(
        &["probe", &format!("ws://{app}/")],
        9,
        "instead of 101 Switching Protocols: not a WebSocket endpoint",
    );
    fails(
        &["probe", "--sse", &format!("http://{app}/")],
        9,
        "not text/event-stream",
    );
    // An HTTP/1.0 server cannot upgrade at all.
    let old = one_peer(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            .await;
    });
    fails(
        &["probe", &format!("ws://{old}/ws")],
        9,
        "HTTP/1.0, which has no upgrade: not a WebSocket endpoint",
    );
}

/// A one-connection peer on loopback, run on its own thread: `serve_one(stream)` handles the
/// first accepted connection.
fn one_peer<F, Fut>(serve_one: F) -> SocketAddr
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    peers::on_loopback(move |listener| async move {
        if let Ok((s, _)) = listener.accept().await {
            serve_one(s).await;
        }
    })
}

#[test]
fn a_close_frame_a_reset_and_a_clean_end_of_stream_are_told_apart() {
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    // A WebSocket server that says goodbye with 1001 after 1 s of silence.
    let polite = one_peer(|s| async move {
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let frame = CloseFrame {
            code: CloseCode::Away,
            reason: "idle for too long".into(),
        };
        let _ = ws.send(Message::Close(Some(frame))).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    // A WebSocket server that resets the connection after 1 s.
    let rude = one_peer(|s| async move {
        let ws = tokio_tungstenite::accept_async(s).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let tcp = ws.into_inner();
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(tcp);
    });
    // An event stream that sends one event, then ends the response cleanly after 1 s.
    let ending = one_peer(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
                  f\r\nid: 1\ndata: x\n\n\r\n",
            )
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = s.write_all(b"0\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    // Each peer takes one connection: --max-wait 2s leaves no time for a second (check) one.
    let polite_url = format!("ws://{polite}/");
    let rude_url = format!("ws://{rude}/");
    let ending_url = format!("http://{ending}/");
    let polite = start(&["probe", &polite_url, "--max-wait", "2s", "--json"]);
    let rude = start(&["probe", &rude_url, "--max-wait", "2s", "--json"]);
    let ending = start(&["probe", "--sse", &ending_url, "--max-wait", "2s", "--json"]);
    let (polite, rude, ending) = (
        finish(polite, "polite"),
        finish(rude, "rude"),
        finish(ending, "ending"),
    );
    assert_eq!(polite["idle"]["end"], "close_frame", "{polite}");
    assert_eq!(polite["idle"]["close_code"], 1001, "{polite}");
    assert_eq!(
        polite["idle"]["close_reason"], "idle for too long",
        "{polite}"
    );
    assert!(
        polite["verdict"].as_str().unwrap().starts_with(
            "the server (close frame, code 1001, \"idle for too long\") cuts idle WebSockets after 1.0s"
        ),
        "{}",
        polite["verdict"]
    );
    assert_eq!(rude["idle"]["end"], "rst", "{rude}");
    assert!(rude["cut_by"].as_str().unwrap().contains("RST"), "{rude}");
    assert_eq!(ending["idle"]["end"], "stream_end", "{ending}");
    assert_eq!(ending["idle"]["messages"], 1, "{ending}");
    assert!(
        ending["cut_by"]
            .as_str()
            .unwrap()
            .contains("ended the response"),
        "{ending}"
    );
    for r in [&polite, &rude, &ending] {
        let lived = f(r, "/idle/lasted_s");
        assert!((0.9..=1.8).contains(&lived), "{r}");
        // Not enough --max-wait left for a check: the heartbeat is derived, and it says so.
        assert!(r["heartbeat"].is_null(), "{r}");
        assert!(
            r["verdict"].as_str().unwrap().contains("not checked"),
            "{}",
            r["verdict"]
        );
    }
}

#[test]
fn wss_through_nginx_with_tls_is_probed_with_the_usual_tls_options() {
    require_tool!("nginx");
    let (_s, app) = serve(&[]);
    let certs = peers::TempDir::new("wss-certs");
    let (ca, cert, key) = kaprobe_tests::make_certs(&certs);
    let front = free_port();
    let _ng = nginx(
        &format!(
            "  server {{ listen 127.0.0.1:{front} ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n    \
             location / {{ proxy_pass http://{app}; proxy_http_version 1.1;\n      \
             proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";\n      \
             proxy_read_timeout 2s; }} }}"
        ),
        front,
        None,
    );
    let url = format!("wss://127.0.0.1:{front}/ws");
    let r = finish(
        start(&[
            "probe",
            &url,
            "--cacert",
            &ca,
            "--heartbeat",
            "500ms",
            "--hold",
            "3s",
            "--json",
        ]),
        "wss probe",
    );
    assert_eq!(r["status"], 101, "{r}");
    assert!(f(&r, "/tls_handshake_s") > 0.0, "{r}");
    assert_eq!(r["heartbeat"]["end"], "alive", "{r}");
    assert!(f(&r, "/heartbeat/pongs_received") >= 4.0, "{r}");
    // The certificate is not trusted without --cacert: a TLS error, exit 8.
    fails(&["probe", &url, "--hold", "1s"], 8, "TLS");
}

#[test]
fn server_heartbeats_on_an_idle_event_stream_are_counted_and_named_in_the_verdict() {
    let (_s, app) = serve(&["--sse-heartbeat", "300ms"]);
    let r = finish(
        start(&[
            "probe",
            "--sse",
            &format!("http://{app}/sse"),
            "--hold",
            "1500ms",
            "--json",
        ]),
        "sse probe",
    );
    assert_eq!(r["idle"]["end"], "alive", "{r}");
    assert!(f(&r, "/idle/heartbeats_received") >= 3.0, "{r}");
    assert!(f(&r, "/idle/longest_silence_s") < 1.0, "{r}");
    let verdict = r["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("survived at least 1.5s idle (the server sent "),
        "{verdict}"
    );
}
