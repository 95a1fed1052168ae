//! `serve --control ADDR`: settings changed while the server runs, driven with curl, and
//! measured from outside with `kaprobe probe` and raw requests before and after the change.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use kaprobe_tests::{f64_at, free_port, require_tool, run, serve_json, stdout};

fn curl(args: &[&str]) -> (String, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_owned(), body.to_owned())
}

/// Two requests on one connection; the second response's head.
fn second_response_head(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if all.windows(4).filter(|w| w == b"\r\n\r\n").count() >= 2 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&all).to_string();
    text.match_indices("HTTP/1.1 ")
        .nth(1)
        .map(|(i, _)| text[i..].split("\r\n\r\n").next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("no second response in {text:?}"))
}

#[test]
fn settings_change_mid_run_and_the_server_behaves_as_told() {
    require_tool!("curl");
    let port = free_port();
    let control = format!("127.0.0.1:{port}");
    let srv = serve_json(&["--keepalive-timeout", "5s", "--control", &control]);
    let url = format!("http://{control}/config");

    let (code, body) = curl(&[&url]);
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["keepalive_timeout"], "5s");
    assert_eq!(v["close_style"], "fin");
    let head = second_response_head(&srv.addr);
    assert!(head.contains("Keep-Alive: timeout=5"), "{head}");

    // Flip: a 1 s timeout ending with RST, and 2 requests per connection.
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "--data",
        r#"{"keepalive_timeout":"1s","close_style":"rst","max_requests":2}"#,
        &url,
    ]);
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["keepalive_timeout"], "1s");
    assert_eq!(v["max_requests"], 2);
    // one line per setting, in the order GET /config lists them
    for setting in ["keepalive_timeout", "max_requests", "close_style"] {
        let line = srv.json_line(
            &format!("\"setting\":\"{setting}\""),
            Duration::from_secs(5),
            "a config change line",
        );
        assert_eq!(line["event"], "config");
    }

    let head = second_response_head(&srv.addr);
    assert!(head.contains("Connection: close"), "{head}");
    let o = run(&[
        "probe",
        &format!("http://{}/", srv.addr),
        "--json",
        "--max-wait",
        "15s",
        "--connections",
        "10",
    ]);
    assert!(o.status.success());
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let t = f64_at(&r, "/idle/timeout_s");
    assert!((t - 1.0).abs() < 0.15, "idle timeout after the change: {t}");
    assert_eq!(r["idle"]["close_style"], "rst", "{r}");
    assert_eq!(r["advertised"]["timeout_s"], 1.0);

    // A bad change is refused whole, in one line, and nothing changes.
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "--data",
        r#"{"max_requests":5,"keepalive_timeout":"2d"}"#,
        &url,
    ]);
    assert_eq!(code, "400", "{body}");
    assert!(
        body.contains("--keepalive-timeout 2d is out of range"),
        "{body}"
    );
    assert_eq!(body.trim().lines().count(), 1);
    let (_, body) = curl(&[&url]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["max_requests"], 2, "{v}");
    let (code, _) = curl(&["-X", "DELETE", &url]);
    assert_eq!(code, "405");
}

#[test]
fn control_is_off_unless_asked_and_a_busy_address_is_one_line() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    kaprobe_tests::fails(
        &["serve", "--listen", "127.0.0.1:0", "--control", &addr],
        1,
        &format!("--control {addr}: cannot listen there"),
    );
    let o = run(&["serve", "--listen", "127.0.0.1:0", "--control", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    let err = kaprobe_tests::stderr(&o);
    assert!(
        err.contains("--control") && err.contains("'nope' is not an address"),
        "{err}"
    );
}
