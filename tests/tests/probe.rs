//! `kaprobe probe` against real servers: nginx, haproxy, Apache, nginx with TLS, a router
//! namespace that forgets idle flows, and misbehaving peers for the error paths.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use kaprobe_tests::peers;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use kaprobe_tests::{
    f64_at as f, json_lines, kaprobe, probe_json, require_root, require_tool, stderr, str_at as s,
    RouterTriple,
};
use peers::{apache, free_port, haproxy, nginx, TempDir};

fn nginx_server(port: u16, keepalive: &str) -> String {
    format!(
        "  server {{ listen 127.0.0.1:{port}; keepalive_timeout {keepalive};\n    \
         location / {{ return 200 \"hello\\n\"; }}\n    \
         location = /.kaprobe-pipelining-check-4f1c {{ return 404; }} }}"
    )
}

#[test]
fn nginx_idle_close_is_timed_to_20ms_and_reported_as_fin() {
    require_tool!("nginx");
    let port = free_port();
    let _ng = nginx(&nginx_server(port, "3s"), port, None);
    let (r, wall) = probe_json(&[&format!("http://127.0.0.1:{port}/"), "--max-wait", "10s"]);
    assert_eq!(s(&r, "/idle/close_style"), "fin", "{r}");
    let t = f(&r, "/idle/timeout_s");
    assert!((t - 3.0).abs() <= 0.020, "observed {t} s, want 3 s ± 20 ms");
    assert!(
        r["advertised"]["timeout_s"].is_null(),
        "nginx without a 2nd value advertises nothing"
    );
    assert!(
        s(&r, "/verdict").contains(&format!("{t:.2}s with FIN")),
        "{}",
        r["verdict"]
    );
    assert!(
        (f(&r, "/safe_idle_s") - 2.7).abs() < 0.11,
        "{}",
        r["safe_idle_s"]
    );
    // The answer comes in about one ladder step after the timeout, never at --max-wait.
    assert!(wall < Duration::from_secs_f64(4.5), "took {wall:?}");
    // The other measurements of the same run: nginx's default keepalive_requests is 1000,
    // pipelined requests come back in order, HTTP/1.0 keep-alive is honoured.
    assert_eq!(r["max_requests"]["observed"], 1000, "{r}");
    assert_eq!(s(&r, "/max_requests/ended_by"), "connection_close_header");
    assert_eq!(s(&r, "/pipelining/result"), "in_order");
    assert_eq!(r["http10"]["keep_alive_honored"], true);
    assert_eq!(r["http10"]["plain_closes"], true);
    assert_eq!(r["tls"], false);
    assert!(r["tls_handshake_s"].is_null());
}

#[test]
fn nginx_lying_keep_alive_header_is_reported() {
    require_tool!("nginx");
    let port = free_port();
    // `keepalive_timeout 3s 9`: closes at 3 s, tells clients `Keep-Alive: timeout=9`.
    let _ng = nginx(&nginx_server(port, "3s 9"), port, None);
    let (r, _) = probe_json(&[&format!("http://127.0.0.1:{port}/"), "--max-wait", "10s"]);
    assert_eq!(f(&r, "/advertised/timeout_s"), 9.0);
    assert!((f(&r, "/idle/timeout_s") - 3.0).abs() <= 0.020);
    assert_eq!(r["advertised_true"]["timeout"], false, "{r}");
    let findings = r["findings"].to_string();
    assert!(findings.contains("lies"), "{findings}");
    assert!(findings.contains("timeout=9"), "{findings}");
    // The human table says it too.
    let o = kaprobe()
        .args([
            "probe",
            &format!("http://127.0.0.1:{port}/"),
            "--max-wait",
            "10s",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    // The measured time is printed to 10 ms: hold it to the same tolerance as the JSON above
    // (a wake-up a few ms late on a busy machine prints 3.01 s).
    let verdict = out
        .lines()
        .find_map(|l| l.strip_prefix("verdict: closes idle connections after "))
        .unwrap_or_else(|| panic!("no verdict line: {out}"));
    let (secs, rest) = verdict
        .split_once("s with FIN, advertises 9s")
        .unwrap_or_else(|| panic!("verdict: {verdict}"));
    let secs: f64 = secs
        .parse()
        .unwrap_or_else(|_| panic!("verdict: {verdict}"));
    assert!((secs - 3.0).abs() <= 0.020, "{out}");
    assert!(rest.is_empty() || rest.starts_with(';'), "{verdict}");
    assert!(
        out.contains("9.00s") && out.contains(&format!("{secs:.2}s ±")),
        "{out}"
    );
}

#[test]
fn haproxy_http_keep_alive_timeout_is_timed_to_20ms_and_reported_as_fin() {
    require_tool!("haproxy");
    let port = free_port();
    let _hp = haproxy(
        "  timeout http-keep-alive 2s",
        &format!(
            "frontend f\n  bind 127.0.0.1:{port}\n  http-request return status 200 content-type text/plain string \"ok\"\n"
        ),
        port,
    );
    let (r, wall) = probe_json(&[&format!("http://127.0.0.1:{port}/"), "--max-wait", "8s"]);
    assert_eq!(s(&r, "/idle/close_style"), "fin", "{r}");
    let t = f(&r, "/idle/timeout_s");
    assert!((t - 2.0).abs() <= 0.020, "observed {t} s, want 2 s ± 20 ms");
    assert!(wall < Duration::from_secs(3), "took {wall:?}");
    // Both paths answer 200, so pipelining order cannot be told apart: said so, not guessed.
    assert_eq!(s(&r, "/pipelining/result"), "in_order_unverified");
}

#[test]
fn apache_max_keepalive_requests_countdown_is_observed() {
    require_tool!("apache2");
    let port = free_port();
    let _ap = apache(port, 2, 100);
    let (r, _) = probe_json(&[
        &format!("http://127.0.0.1:{port}/index.html"),
        "--max-wait",
        "8s",
    ]);
    // Apache counts max=100..1 down and says Connection: close on response 101.
    assert_eq!(r["advertised"]["max"], 100, "{r}");
    assert_eq!(r["max_requests"]["observed"], 101, "{r}");
    assert_eq!(s(&r, "/max_requests/ended_by"), "connection_close_header");
    assert_eq!(r["max_requests"]["countdown_ok"], true);
    assert_eq!(r["advertised_true"]["max"], true);
    assert_eq!(f(&r, "/advertised/timeout_s"), 2.0);
    assert_eq!(r["advertised_true"]["timeout"], true);
    assert_eq!(s(&r, "/idle/close_style"), "fin");
    assert!((f(&r, "/idle/timeout_s") - 2.0).abs() <= 0.15, "{r}");
    // Apache's 404 for the unknown path makes the order check real.
    assert_eq!(s(&r, "/pipelining/result"), "in_order");
}

#[test]
fn silent_drop_through_a_conntrack_router_is_reported_as_silent() {
    require_root!();
    require_tool!("nginx");
    require_tool!("iptables");
    let net = RouterTriple::new("prsil");
    net.forget_idle_flows_after(3);
    // The server itself would keep connections for 60 s: the router forgets them at 3 s.
    let _ng = nginx(
        &format!(
            "  server {{ listen {}:80; keepalive_timeout 60s 60s; location / {{ return 200 \"hi\\n\"; }} }}",
            net.server_addr
        ),
        80,
        Some(&net.server),
    );
    let mut cmd = net.client.command(kaprobe_tests::kaprobe_bin());
    let t0 = Instant::now();
    let o = cmd
        .args([
            "probe",
            &format!("http://{}/", net.server_addr),
            "--max-wait",
            "10s",
            "--json",
        ])
        .output()
        .unwrap();
    let wall = t0.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json_lines(&o).remove(0);
    assert_eq!(s(&r, "/idle/close_style"), "silent", "{r}");
    let t = f(&r, "/idle/timeout_s");
    assert!(
        (t - 3.0).abs() <= 0.15,
        "observed {t} s, want 3 s ± 5%: {r}"
    );
    // The bracket lies around the router's 3 s (conntrack counts in 4 ms jiffies from the
    // last packet it forwarded, a few ms off the prober's clock).
    assert!(
        f(&r, "/idle/longest_alive_s") < 3.05 && f(&r, "/idle/first_dead_s") > 2.95,
        "{r}"
    );
    assert_eq!(r["idle"]["closes_seen"], 0);
    assert!(
        wall <= Duration::from_secs(6),
        "took {wall:?}, want at most 2x the timeout"
    );
    assert!(s(&r, "/verdict").contains("silently"), "{}", r["verdict"]);
    // The server's `Keep-Alive: timeout=60` was true: the path dropped the flow. No finding
    // may call the header a lie; one names the path.
    assert_eq!(f(&r, "/advertised/timeout_s"), 60.0, "{r}");
    let findings = r["findings"].to_string();
    assert!(!findings.contains("lies"), "{findings}");
    assert!(findings.contains("something on the path"), "{findings}");
}

#[test]
fn https_handshake_and_reused_request_are_timed_and_tls_errors_exit_8() {
    require_tool!("nginx");
    let certs = TempDir::new("certs");
    let (ca, cert, key) = kaprobe_tests::make_certs(&certs);
    let port = free_port();
    let _ng = nginx(
        &format!(
            "  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n    \
             keepalive_timeout 2s; location / {{ return 200 \"tls\\n\"; }} }}"
        ),
        port,
        None,
    );
    let url = format!("https://127.0.0.1:{port}/");
    let (r, _) = probe_json(&[&url, "--cacert", &ca, "--max-wait", "6s"]);
    assert_eq!(r["tls"], true);
    let hs = f(&r, "/tls_handshake_s");
    let reused = f(&r, "/reused_request_s");
    assert!(hs > 0.0 && reused > 0.0, "{r}");
    assert!(
        reused < hs + f(&r, "/first_request_s"),
        "a reused connection skips the handshake: {r}"
    );
    assert_eq!(s(&r, "/idle/close_style"), "fin");
    assert!((f(&r, "/idle/timeout_s") - 2.0).abs() <= 0.020, "{r}");
    assert!(
        r["findings"].to_string().contains("TLS"),
        "{}",
        r["findings"]
    );

    // Not trusted: exit 8 with a sentence about TLS.
    let o = kaprobe()
        .args(["probe", &url, "--max-wait", "5s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(8), "{}", stderr(&o));
    assert!(stderr(&o).contains("TLS"), "{}", stderr(&o));
    // --insecure still measures.
    let (r, _) = probe_json(&[&url, "--insecure", "--max-wait", "4s"]);
    assert_eq!(s(&r, "/idle/close_style"), "fin");
    // The reuse race over TLS: a reuse past the 2 s fails, before it works.
    let o = kaprobe()
        .args([
            "race",
            &url,
            "--cacert",
            &ca,
            "--idle",
            "2.1s",
            "--spread",
            "600ms",
            "--requests",
            "3",
            "--parallel",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let outcomes: Vec<String> = json_lines(&o)
        .iter()
        .filter(|l| l["type"] == "attempt")
        .map(|l| l["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes[0], "ok", "{outcomes:?}");
    assert!(outcomes[1] != "ok" && outcomes[2] != "ok", "{outcomes:?}");
    // A CA file that is not PEM: exit 7 (a file kaprobe cannot read) naming the file.
    let bogus = certs.write("bogus.pem", "not a certificate\n");
    let o = kaprobe()
        .args(["probe", &url, "--cacert", &bogus.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("bogus.pem"), "{}", stderr(&o));
}

/// A one-shot misbehaving server on loopback: reads the request, then does `act`.
fn bad_server(act: impl FnOnce(std::net::TcpStream) + Send + 'static) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            act(c);
        }
    });
    format!("http://{addr}/")
}

fn expect_exit(args: &[&str], code: i32, says: &str) -> Duration {
    let mut cmd = kaprobe();
    let t = Instant::now();
    let o = cmd.arg("probe").args(args).output().unwrap();
    let wall = t.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "probe {args:?}: {err}");
    assert!(err.starts_with("kaprobe: error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(says),
        "probe {args:?} should say {says:?}: {err}"
    );
    assert!(o.stdout.is_empty());
    wall
}

#[test]
fn bad_urls_and_flags_exit_2_naming_the_value() {
    expect_exit(&["not a url"], 2, "'not a url'");
    expect_exit(&["127.0.0.1:8080"], 2, "no scheme");
    expect_exit(&["ftp://127.0.0.1/"], 2, "unsupported scheme 'ftp'");
    expect_exit(&["http://127.0.0.1:99999/"], 2, "99999");
    expect_exit(&["http://127.0.0.1/", "--max-wait", "0s"], 2, "--max-wait");
    expect_exit(
        &["http://127.0.0.1/", "--connections", "1"],
        2,
        "--connections 1",
    );
    let o = kaprobe()
        .args(["probe", "http://x/", "--max-wait", "soon"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("soon"), "{}", stderr(&o));
}

#[test]
fn unresolvable_and_refused_exit_3_and_4() {
    expect_exit(&["http://nonexistent.invalid/"], 3, "nonexistent.invalid");
    let port = free_port();
    expect_exit(&[&format!("http://127.0.0.1:{port}/")], 4, "refused");
}

#[test]
fn a_server_that_never_answers_exits_5_within_max_wait() {
    let url = bad_server(|c| {
        std::thread::sleep(Duration::from_secs(6));
        drop(c);
    });
    let wall = expect_exit(&[&url, "--max-wait", "2s"], 5, "no answer");
    assert!(
        wall < Duration::from_secs(3),
        "took {wall:?} with --max-wait 2s"
    );
}

#[test]
fn garbage_cut_off_and_empty_answers_exit_9() {
    let url = bad_server(|mut c| {
        let _ = c.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
    });
    expect_exit(&[&url, "--max-wait", "5s"], 9, "not HTTP/1.x");
    let url = bad_server(|mut c| {
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
    });
    expect_exit(&[&url, "--max-wait", "5s"], 9, "mid-response");
    let url = bad_server(drop);
    expect_exit(
        &[&url, "--max-wait", "5s"],
        9,
        "closed the connection without answering",
    );
    // https to a plain-HTTP server: a TLS error.
    let url = bad_server(|mut c| {
        let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    let url = url.replace("http://", "https://");
    expect_exit(&[&url, "--max-wait", "5s", "--insecure"], 8, "TLS");
}

#[test]
fn haproxy_as_a_reverse_proxy_is_measured_on_its_own_client_side() {
    require_tool!("haproxy");
    require_tool!("nginx");
    // nginx behind would keep idle connections 60 s; haproxy in front closes its client side
    // after 2 s: a client sees haproxy's timeout, which is what probe must report.
    let app = free_port();
    let _ng = nginx(
        &format!(
            "  server {{ listen 127.0.0.1:{app}; keepalive_timeout 60s; location / {{ return 200 \"app\\n\"; }} }}"
        ),
        app,
        None,
    );
    let port = free_port();
    let _hp = haproxy(
        "  timeout http-keep-alive 2s",
        &format!(
            "frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  http-reuse safe\n  server app 127.0.0.1:{app}\n"
        ),
        port,
    );
    let (r, _) = probe_json(&[&format!("http://127.0.0.1:{port}/"), "--max-wait", "8s"]);
    assert_eq!(s(&r, "/idle/close_style"), "fin", "{r}");
    assert!((f(&r, "/idle/timeout_s") - 2.0).abs() <= 0.020, "{r}");
    assert!(
        s(&r, "/server").starts_with("nginx"),
        "answers come from nginx: {r}"
    );
}

/// `https://` (or `wss://`) against a plain-HTTP port names the URL to use instead, and
/// `race ws://` says race speaks HTTP only and points at `probe`.
#[test]
fn tls_against_plain_http_suggests_http_and_race_refuses_websocket_urls() {
    let (_srv, addr) = kaprobe_tests::serve_quiet(&[]);
    kaprobe_tests::fails(
        &["probe", &format!("https://{addr}/x")],
        8,
        &format!("the server answered in plain HTTP, not TLS: use http://{addr}/x"),
    );
    kaprobe_tests::fails(
        &["probe", &format!("wss://{addr}/ws")],
        8,
        &format!("use ws://{addr}/ws"),
    );
    kaprobe_tests::fails(
        &["race", &format!("https://{addr}/"), "--idle", "1s"],
        8,
        &format!("use http://{addr}/"),
    );
    kaprobe_tests::fails(
        &["race", &format!("ws://{addr}/ws"), "--idle", "1s"],
        2,
        "race speaks HTTP only",
    );
}

/// The pipelining check runs on a fresh connection; when the server's request limit cuts it
/// short and the server said so (`max`, `Connection: close`), the report explains it
/// instead of calling it a partial answer.
#[test]
fn pipelining_cut_by_a_request_limit_is_explained() {
    let (_srv, addr) =
        kaprobe_tests::serve_quiet(&["--max-requests", "3", "--keepalive-timeout", "1s"]);
    let o = kaprobe_tests::run(&["probe", &format!("http://{addr}/"), "--json"]);
    assert!(o.status.success(), "{}", kaprobe_tests::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pipelining"]["result"], "limited", "{}", v["pipelining"]);
    // Fresh connection: three of the four pipelined requests fit under the limit of three.
    assert_eq!(v["pipelining"]["answered"], 3, "{}", v["pipelining"]);
    let detail = v["pipelining"]["detail"].as_str().unwrap();
    assert!(detail.contains("3 requests per connection"), "{detail}");
    let findings = v["findings"].to_string();
    assert!(!findings.contains("pipelined"), "{findings}");

    kaprobe_tests::require_tool!("nginx");
    let port = kaprobe_tests::free_port();
    let ngx = kaprobe_tests::nginx(
        &format!(
            "  server {{\n    listen 127.0.0.1:{port};\n    keepalive_timeout 1s;\n    \
             keepalive_requests 2;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}"
        ),
        port,
        None,
    );
    let o = kaprobe_tests::run(&["probe", &ngx.url("/"), "--json"]);
    assert!(o.status.success(), "{}", kaprobe_tests::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pipelining"]["result"], "limited", "{}", v["pipelining"]);
    assert_eq!(v["pipelining"]["answered"], 2, "{}", v["pipelining"]);
    assert!(
        !v["findings"].to_string().contains("pipelined"),
        "{}",
        v["findings"]
    );
}
