//! `probe` and `race` take curl's request options (`-H`, `-X`, `--data`, `--resolve`,
//! `--connect-to`): the same options given to curl and to kaprobe must put the same request
//! on the wire. A recording HTTP server on loopback keeps every request it receives; the
//! first request of each run is compared field by field with curl's.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kaprobe_tests::{json_lines, kaprobe, require_tool, stderr, stdout, TempDir};
use serde_json::Value;

/// One request as the server read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    line: String,
    /// (lower-case name, value), in order.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A keep-alive HTTP/1.1 server that records every request and answers `200 ok`, closing a
/// connection after 1 s of idle (advertised) or after an HTTP/1.0 request without
/// keep-alive.
struct Recorder {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Recorded>>>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim_end().to_string();
    let mut fields = Vec::new();
    loop {
        let mut f = String::new();
        if r.read_line(&mut f).ok()? == 0 {
            return None;
        }
        let f = f.trim_end_matches(['\r', '\n']);
        if f.is_empty() {
            break;
        }
        let (n, v) = f.split_once(':')?;
        fields.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = fields
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Recorded { line, fields, body })
}

impl Recorder {
    fn start(bind: &str) -> Self {
        let l = TcpListener::bind(bind).unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = Arc::clone(&got);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    while let Some(req) = read_request(&mut r) {
                        let http10 = req.line.ends_with("HTTP/1.0");
                        let ka = req.fields.iter().any(|(n, v)| {
                            n == "connection" && v.eq_ignore_ascii_case("keep-alive")
                        });
                        g.lock().unwrap().push(req);
                        let close = http10 && !ka;
                        let head = if close {
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        } else {
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=1\r\n\r\nok"
                        };
                        if w.write_all(head.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, got }
    }

    fn first(&self) -> Recorded {
        self.got
            .lock()
            .unwrap()
            .first()
            .cloned()
            .expect("the server got a request")
    }
}

fn curl(args: &[&str], url: &str) {
    let o = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(o.status.success(), "curl {args:?}: {}", stderr(&o));
}

fn race(args: &[&str], url: &str) -> Vec<Value> {
    let o = kaprobe()
        .args(["race", url, "--idle", "0s", "--requests", "1", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "race {args:?}: {}", stderr(&o));
    json_lines(&o)
}

fn probe(args: &[&str], url: &str) -> Value {
    let o = kaprobe()
        .args([
            "probe",
            url,
            "--max-wait",
            "5s",
            "--connections",
            "4",
            "--json",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "probe {args:?}: {}", stderr(&o));
    json_lines(&o).remove(0)
}

/// kaprobe asks for keep-alive explicitly (`Connection: keep-alive`, as browsers do); curl
/// leaves it to HTTP/1.1's default. Everything else must match.
fn without_connection(mut r: Recorded) -> Recorded {
    r.fields.retain(|(n, _)| n != "connection");
    r
}

fn same(a: Recorded, b: Recorded, what: &str) {
    let (mut a, mut b) = (without_connection(a), without_connection(b));
    assert_eq!(a.line, b.line, "{what}: request line");
    assert_eq!(a.body, b.body, "{what}: body");
    // curl and kaprobe may order Content-Type and Content-Length differently; the set of
    // fields (with repeats) must be the same.
    a.fields.sort();
    b.fields.sort();
    assert_eq!(a.fields, b.fields, "{what}: header fields");
}

#[test]
fn the_same_options_put_the_same_request_on_the_wire_as_curl() {
    require_tool!("curl");
    let dir = TempDir::new("curl-data");
    let file = dir.write("body.txt", "{\"a\": 1,\r\n \"b\": 2}\n");
    let at_file = format!("@{}", file.display());
    let cases: Vec<Vec<&str>> = vec![
        // Host picks the upstream behind an ingress; Accept: drops curl's/kaprobe's Accept.
        vec![
            "-H",
            "Host: api.internal",
            "-H",
            "X-Trace: abc 1",
            "-H",
            "User-Agent: t/1",
            "-H",
            "Accept:",
        ],
        vec!["-X", "PUT", "--data", "a=1&b=2", "-H", "User-Agent: t/1"],
        vec![
            "--data",
            &at_file,
            "-H",
            "Content-Type: application/json",
            "-H",
            "user-agent: t/1",
        ],
        vec!["--data-binary", &at_file, "-H", "User-Agent: t/1"],
        vec![
            "-X",
            "DELETE",
            "-H",
            "X-Empty;",
            "-H",
            "User-Agent: t/1",
            "-H",
            "X-Two: 1",
            "-H",
            "X-Two: 2",
        ],
    ];
    for (i, args) in cases.iter().enumerate() {
        let path = format!("/case/{i}?q=1");
        let c = Recorder::start("127.0.0.1:0");
        curl(args, &format!("http://{}{path}", c.addr));
        let k = Recorder::start("127.0.0.1:0");
        race(args, &format!("http://{}{path}", k.addr));
        let (mut cr, kr) = (c.first(), k.first());
        // The Host header names each recorder's own port unless -H replaced it.
        for (n, v) in &mut cr.fields {
            if n == "host" && v.starts_with("127.0.0.1:") {
                *v = k.addr.to_string();
            }
        }
        same(cr.clone(), kr, &format!("race {args:?}"));
        if i < 2 {
            let p = Recorder::start("127.0.0.1:0");
            let report = probe(args, &format!("http://{}{path}", p.addr));
            assert_eq!(report["status"], 200, "{report}");
            let mut want = cr;
            for (n, v) in &mut want.fields {
                if n == "host" && v.starts_with("127.0.0.1:") {
                    *v = p.addr.to_string();
                }
            }
            same(want, p.first(), &format!("probe {args:?}"));
        }
    }
}

#[test]
fn resolve_and_connect_to_reach_the_same_pinned_address_as_curl() {
    require_tool!("curl");
    // URLs name `localhost` (never looked up off this machine) on a port where nothing
    // listens; only the pin leads to the recorder, on an address localhost is not.
    for bind in ["127.0.0.2:0", "[::1]:0"] {
        let ip = if bind.starts_with('[') {
            "[::1]"
        } else {
            "127.0.0.2"
        };
        for how in ["resolve", "connect-to"] {
            // One recorder for both: the same port, so the same Host header.
            let r = Recorder::start(bind);
            let port = r.addr.port();
            let (url, pin) = if how == "resolve" {
                (
                    format!("http://localhost:{port}/pinned"),
                    format!("localhost:{port}:{ip}"),
                )
            } else {
                (
                    "http://localhost:1/pinned".to_string(),
                    format!("localhost:1:{ip}:{port}"),
                )
            };
            let flag = format!("--{how}");
            let args = ["-H", "User-Agent: t/1", flag.as_str(), pin.as_str()];
            curl(&args, &url);
            let c = r.first();
            let lines = race(&args, &url);
            let summary = lines.last().unwrap();
            assert_eq!(summary["address"], r.addr.to_string(), "{summary}");
            let k = r
                .got
                .lock()
                .unwrap()
                .get(1)
                .cloned()
                .expect("kaprobe's request");
            let host = k
                .fields
                .iter()
                .find(|(n, _)| n == "host")
                .unwrap()
                .1
                .clone();
            assert_eq!(
                host,
                url.trim_start_matches("http://")
                    .trim_end_matches("/pinned")
            );
            same(c, k, &format!("--{how} to {bind}"));
        }
    }
}

fn failed_with(args: &[&str], needles: &[&str]) {
    let o = kaprobe().args(args).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} missing from {err}");
    }
    assert!(stdout(&o).is_empty());
}

#[test]
fn bad_request_options_are_one_line_errors_naming_the_value() {
    let url = "http://127.0.0.1:1/";
    for cmd in ["probe", "race"] {
        let base = |extra: &[&'static str]| -> Vec<&'static str> {
            let mut v = vec![cmd, url];
            if cmd == "race" {
                v.extend(["--idle", "1s"]);
            }
            v.extend(extra);
            v
        };
        failed_with(
            &base(&["-H", "Bad Name: x"]),
            &["-H", "Bad Name", "not a header name"],
        );
        failed_with(&base(&["-H", "NoColon"]), &["-H", "'Name: value'"]);
        failed_with(&base(&["-H", "Content-Length: 3"]), &["kaprobe sets"]);
        failed_with(&base(&["-X", "GE T"]), &["-X", "GE T", "one word"]);
        failed_with(
            &base(&["--resolve", "h:80"]),
            &["--resolve", "h:80", "HOST:PORT:ADDR"],
        );
        failed_with(
            &base(&["--resolve", "h:80:nope"]),
            &["--resolve", "not an IP address"],
        );
        failed_with(
            &base(&["--connect-to", "a:1:b"]),
            &["--connect-to", "HOST:PORT:HOST2:PORT2"],
        );
        failed_with(
            &base(&["--connect-to", "a:1:b:0"]),
            &["--connect-to", "1..=65535"],
        );
        failed_with(
            &base(&["--data", "@/nonexistent/kaprobe-body"]),
            &["--data", "/nonexistent/kaprobe-body"],
        );
    }
    failed_with(&["probe", url, "-X", "HEAD"], &["-X HEAD"]);
    // A value parser's error is clap's (with its usage hint): exit 2, naming the choices.
    let o = kaprobe()
        .args(["probe", url, "--max-wait", "aws-nbl"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    for n in ["--max-wait", "aws-nbl", "aws-nlb", "cloud"] {
        assert!(stderr(&o).contains(n), "{n}: {}", stderr(&o));
    }
}

#[test]
fn still_open_at_max_wait_says_which_known_limits_were_not_ruled_out() {
    let (_serve, addr) = kaprobe_tests::serve_quiet(&["--keepalive-timeout", "60s"]);
    let o = kaprobe()
        .args([
            "probe",
            &format!("http://{addr}/"),
            "--max-wait",
            "3s",
            "--connections",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = &json_lines(&o)[0];
    assert_eq!(r["idle"]["close_style"], "open_at_max_wait", "{r}");
    let names: Vec<&str> = r["not_ruled_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    for n in [
        "aws-alb",
        "azure-lb",
        "aws-nlb",
        "aws-nat-gateway",
        "gcp-lb",
    ] {
        assert!(names.contains(&n), "{n} not in {names:?}");
    }
    let v = r["verdict"].as_str().unwrap();
    assert!(
        v.contains("NOT a clean bill of health") && v.contains("--max-wait cloud"),
        "{v}"
    );
    assert!(v.contains("aws-nlb 350s"), "{v}");
}
