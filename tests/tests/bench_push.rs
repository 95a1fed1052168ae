//! `kaprobe bench push`: polling, long polling, SSE and WebSocket against one `kaprobe serve`
//! (started by the command itself, or given with --url), bytes and latency per message.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::process::{Command, Stdio};
use std::time::Duration;

use kaprobe_tests::{
    json_lines, kaprobe, kaprobe_bin, line_reader, stderr, stdout, wait_line, KillOnDrop,
};
use serde_json::Value;

fn channel<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == name)
        .unwrap_or_else(|| panic!("no {name} in {r}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn a_small_run_delivers_every_message_on_every_channel_and_websocket_is_far_cheaper_than_polling() {
    let o = kaprobe()
        .args(["bench", "push", "--messages", "20", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json_lines(&o).remove(0);
    assert_eq!(r["messages"], 20, "{r}");
    for name in ["short_polling", "long_polling", "sse", "websocket"] {
        let c = channel(&r, name);
        assert_eq!(c["delivered"], 20, "{c}");
        assert_eq!(c["lost"], 0, "{c}");
        assert_eq!(c["duplicates"], 0, "{c}");
        assert!(
            num(c, "bytes_sent") > 0.0 && num(c, "bytes_received") > 0.0,
            "{c}"
        );
        assert!(num(c, "latency_p50_s") <= num(c, "latency_p99_s"), "{c}");
    }
    let ws = num(channel(&r, "websocket"), "bytes_per_message");
    let sse = num(channel(&r, "sse"), "bytes_per_message");
    let poll = num(channel(&r, "short_polling"), "bytes_per_message");
    let long = num(channel(&r, "long_polling"), "bytes_per_message");
    assert!(
        ws < poll / 5.0,
        "websocket {ws} B/message vs polling {poll}: {r}"
    );
    assert!(
        sse < poll / 5.0,
        "sse {sse} B/message vs polling {poll}: {r}"
    );
    assert!(ws < long && sse < long, "{r}");
    // A message is at least its own text on the wire.
    assert!(ws >= num(&r, "message_bytes"), "{r}");
    // One connection each for the push channels; polling makes a request per poll.
    assert_eq!(channel(&r, "websocket")["requests"], 1, "{r}");
    assert_eq!(channel(&r, "sse")["requests"], 1, "{r}");
    assert!(
        channel(&r, "short_polling")["requests"].as_u64().unwrap() >= 20,
        "{r}"
    );
}

#[test]
fn against_a_running_server_the_table_names_every_channel() {
    let mut child = KillOnDrop::spawn(
        Command::new(kaprobe_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null()),
    );
    let rx = line_reader(child.0.stderr.take().unwrap());
    let line = wait_line(&rx, Duration::from_secs(10), |l| {
        l.starts_with("kaprobe serve: listening on http://")
    })
    .unwrap();
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let url = line
        .trim()
        .trim_start_matches("kaprobe serve: listening on ");
    let o = kaprobe()
        .args([
            "bench",
            "push",
            "--url",
            url,
            "--messages",
            "5",
            "--rate",
            "20",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for words in [
        "short poll",
        "long poll",
        "SSE",
        "WebSocket",
        "B/msg",
        "p99",
        "the bytes of WebSocket per delivered message",
    ] {
        assert!(out.contains(words), "{words:?} missing in:\n{out}");
    }
}

#[test]
fn bad_flags_and_a_closed_port_get_their_exit_codes() {
    for (args, words) in [
        (&["--messages", "0"][..], "--messages 0 is out of range"),
        (&["--rate", "0"][..], "--rate 0 is out of range"),
        (
            &["--poll-interval", "1ms"][..],
            "--poll-interval 1ms is out of range",
        ),
        (&["--url", "ftp://x/"][..], "unsupported scheme"),
    ] {
        let o = kaprobe()
            .args(["bench", "push"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(words), "{args:?}: {}", stderr(&o));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = kaprobe()
        .args([
            "bench",
            "push",
            "--url",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("connection refused (nothing listens there)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_server_without_push_endpoints_is_told_so_with_exit_9() {
    // A plain HTTP server: every path, /ws and /publish included, is 404.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in listener.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0
                        || s.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n",
                        )
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    let o = kaprobe()
        .args([
            "bench",
            "push",
            "--url",
            &format!("http://{addr}"),
            "--messages",
            "3",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
}
