//! Real clients against `kaprobe serve`, sending bodies the way they do: curl (100 KB and
//! 1 MB bodies, `Expect: 100-continue`, chunked), Python's http.client and urllib3 with pooled
//! keep-alive, nginx as a reverse proxy streaming bodies (`proxy_request_buffering off`), and
//! wrk with a POST script. Every request must be answered 200.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::process::Command;

use kaprobe_tests::{free_port, nginx, require_tool, serve_quiet, TempDir};

fn body_file(dir: &TempDir, name: &str, n: usize) -> String {
    let text: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    dir.write(name, &text).display().to_string()
}

/// Run curl with `args`; the `%{http_code}` values it wrote, one per transfer.
fn curl(args: &[&str]) -> Vec<String> {
    let o = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}\\n"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn curl_posts_of_100k_and_1m_are_all_answered_200() {
    require_tool!("curl");
    let (_srv, addr) = serve_quiet(&["--max-requests", "0"]);
    let dir = TempDir::new("curl-bodies");
    let url = format!("http://{addr}/");
    for (name, n) in [("100k", 100_000), ("1m", 1_000_000)] {
        let f = format!("@{}", body_file(&dir, name, n));
        // 20 on fresh connections: curl sends the head, waits for 100 Continue (or up to 1 s),
        // then the body, in many segments.
        for i in 0..20 {
            assert_eq!(curl(&["--data-binary", &f, &url]), ["200"], "{name} #{i}");
        }
        // 20 on one reused connection, half of them chunked.
        let mut args: Vec<&str> = Vec::new();
        for i in 0..20 {
            if i > 0 {
                // --next starts a new transfer with fresh options, on the same connection.
                args.extend(["--next", "-sS", "-o", "/dev/null", "-w", "%{http_code}\\n"]);
            }
            args.extend(["--data-binary", &f]);
            if i % 2 == 1 {
                args.extend(["-H", "Transfer-Encoding: chunked"]);
            }
            args.push(&url);
        }
        let codes = curl(&args);
        assert_eq!(codes.len(), 20, "{codes:?}");
        assert!(codes.iter().all(|c| c == "200"), "{name}: {codes:?}");
    }
    // Absolute-form target, as a client talking to a proxy sends it.
    let target = format!("http://{addr}/status/202");
    assert_eq!(curl(&["--request-target", &target, &url]), ["202"]);
}

const PYTHON: &str = r#"
import http.client, sys, json
host, port = sys.argv[1], int(sys.argv[2])
codes = []
c = http.client.HTTPConnection(host, port, timeout=20)
for i in range(40):
    body = b"p" * (i * 5000)
    if i % 3 == 0:
        c.request("POST", "/", body=iter([body[:len(body)//2], body[len(body)//2:]]),
                  encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    elif i % 3 == 1:
        c.request("PUT", "/", body=body, headers={"Expect": "100-continue"})
    else:
        c.request("POST", "/", body=body)
    r = c.getresponse(); r.read(); codes.append(r.status)
import urllib3
pool = urllib3.HTTPConnectionPool(host, port, maxsize=2, block=True, retries=False)
for i in range(40):
    r = pool.request("POST", "/", body=b"u" * (i * 7000))
    codes.append(r.status)
r = pool.request("GET", "/_kaprobe/stats")
print(json.dumps({"codes": codes, "stats": json.loads(r.data)}))
"#;

#[test]
fn python_http_client_and_urllib3_pools_are_answered_200_on_reused_connections() {
    require_tool!("python3");
    let have_urllib3 = Command::new("python3")
        .args(["-c", "import urllib3"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_urllib3 {
        assert!(
            !kaprobe_tests::in_ci(),
            "urllib3 missing in CI (scripts/test installs it)"
        );
        eprintln!("skipped: needs the Python module urllib3");
        return;
    }
    let (_srv, addr) = serve_quiet(&["--max-requests", "0"]);
    let o = Command::new("python3")
        .args([
            "-c",
            PYTHON,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let codes = v["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 80);
    assert!(codes.iter().all(|c| c == 200), "{codes:?}");
    // Pooled keep-alive really reused: 81 requests on at most 3 connections.
    let conns = v["stats"]["connections_accepted"].as_u64().unwrap();
    assert!(conns <= 3, "{}", v["stats"]);
    assert!(v["stats"]["requests_reused"].as_u64().unwrap() >= 78);
}

#[test]
fn nginx_streaming_request_bodies_upstream_gets_200s() {
    require_tool!("nginx");
    require_tool!("curl");
    let (srv, addr) = serve_quiet(&["--max-requests", "0"]);
    let port = free_port();
    let _ngx = nginx(
        &format!(
            "  upstream app {{ server {addr}; keepalive 4; }}\n  server {{\n    \
             listen 127.0.0.1:{port};\n    client_max_body_size 20m;\n    location / {{\n      \
             proxy_pass http://app;\n      proxy_http_version 1.1;\n      \
             proxy_set_header Connection \"\";\n      proxy_request_buffering off;\n    }}\n  }}"
        ),
        port,
        None,
    );
    let dir = TempDir::new("nginx-bodies");
    let url = format!("http://127.0.0.1:{port}/");
    for (name, n) in [("small", 3000), ("100k", 100_000), ("1m", 1_000_000)] {
        let f = format!("@{}", body_file(&dir, name, n));
        for chunked in [false, true] {
            for i in 0..5 {
                let mut args = vec!["--data-binary", &f];
                if chunked {
                    args.extend(["-H", "Transfer-Encoding: chunked"]);
                }
                // Throttled, so nginx passes the body on in pieces as it arrives.
                args.extend(["--limit-rate", "2M", &url]);
                assert_eq!(curl(&args), ["200"], "{name} chunked {chunked} #{i}");
            }
        }
    }
    drop(srv);
}

#[test]
fn wrk_posting_bodies_gets_no_errors() {
    require_tool!("wrk");
    let (_srv, addr) = serve_quiet(&["--max-requests", "0", "--log", "off"]);
    let dir = TempDir::new("wrk-post");
    let script = dir.write(
        "post.lua",
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"w\", 20000)\n\
         wrk.headers[\"Content-Type\"] = \"text/plain\"\n\
         done = function(summary, latency, requests)\n  \
         io.write(string.format(\"RESULT %d %d %d %d %d\\n\", summary.requests, \
         summary.errors.status, summary.errors.read, summary.errors.connect, summary.errors.timeout))\nend\n",
    );
    let o = Command::new("wrk")
        .args(["-t1", "-c8", "-d2s", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line: {out}"));
    let n: Vec<u64> = line[7..].split(' ').map(|x| x.parse().unwrap()).collect();
    assert!(n[0] > 500, "only {} requests: {out}", n[0]);
    assert_eq!(
        &n[1..],
        &[0, 0, 0, 0],
        "status/read/connect/timeout errors: {out}"
    );
}
