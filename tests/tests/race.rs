//! `kaprobe race` against real servers: the reuse race seen directly against nginx, and
//! behind an nginx proxy whose upstream keep-alive pool outlives the upstream's own idle
//! timeout (502s in a window), and the same proxy with the timeouts ordered right (none).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use kaprobe_tests::peers;

use std::net::SocketAddr;
use std::time::Duration;

use kaprobe_tests::{kaprobe, race_json, require_tool};
use peers::{free_port, haproxy, latency_line, nginx, pool_proxy, race_window, RACE};
use serde_json::Value;

fn idle(a: &Value) -> f64 {
    a["actual_idle_s"].as_f64().unwrap()
}

/// The reuse window of the proxy tests (app idle timeout 1 s, 250 ms each way): every
/// failure has an idle time in it (the request reaches the app after it closed, idle >
/// 1 s - 2 x 250 ms, but the proxy has not yet seen the FIN, idle < 1 s; with slack for
/// timers), and short idles and idles past the window work.
fn failures_only_in_the_window(attempts: &[Value]) {
    for a in attempts {
        let x = idle(a);
        if a["outcome"] != "ok" {
            assert!(
                (0.4..=1.1).contains(&x),
                "failure outside the window at {x}: {a}"
            );
        }
        if !(0.45..=1.1).contains(&x) {
            assert_eq!(a["outcome"], "ok", "{a}");
        }
    }
}

#[test]
fn reusing_past_nginx_idle_timeout_fails_and_before_it_works() {
    require_tool!("nginx");
    let port = free_port();
    let _ng = nginx(
        &format!(
            "  server {{ listen 127.0.0.1:{port}; keepalive_timeout 2s; location / {{ return 200 \"x\\n\"; }} }}"
        ),
        port,
        None,
    );
    let url = format!("http://127.0.0.1:{port}/");
    let (attempts, bins, summary) = race_json(&[
        &url,
        "--idle",
        "2s",
        "--spread",
        "500ms",
        "--requests",
        "11",
        "--parallel",
        "11",
    ]);
    assert_eq!(attempts.len(), 11);
    assert_eq!(bins.len(), 11, "one bin per attempt up to 12 attempts");
    for a in &attempts {
        let x = idle(a);
        let outcome = a["outcome"].as_str().unwrap();
        if x < 1.95 {
            assert_eq!(outcome, "ok", "idle {x}: {a}");
        } else if x > 2.05 {
            assert!(
                outcome == "empty_reply" || outcome == "reset",
                "idle {x}: {a}"
            );
        }
    }
    let failures = summary["failures"].as_u64().unwrap();
    assert!((4..=6).contains(&failures), "{summary}");
    let first = summary["first_failure_idle_s"].as_f64().unwrap();
    assert!((1.95..=2.15).contains(&first), "{summary}");
    // The terminal table shows the same run with its bar plot.
    let o = kaprobe()
        .args([
            "race",
            &url,
            "--idle",
            "2s",
            "--spread",
            "500ms",
            "--requests",
            "3",
            "--parallel",
            "3",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    // 2.0 s is exactly nginx's timeout: that reuse may go either way.
    assert!(
        out.contains("1.500s")
            && out.contains('#')
            && (out.contains("verdict: 2 of 3") || out.contains("verdict: 1 of 3")),
        "{out}"
    );
}

/// nginx proxy (upstream keep-alive pool with `pool_timeout`) in front of an nginx app whose
/// idle timeout is 1 s, reached over a path with `delay` each way.
fn proxied(pool_timeout: &str, delay: Duration) -> (peers::Peer, String) {
    let app = free_port();
    pool_proxy(
        SocketAddr::from(([127, 0, 0, 1], app)),
        delay,
        pool_timeout,
        &format!(
            "\n  server {{ listen 127.0.0.1:{app}; keepalive_timeout 1s; location / {{ return 200 \"app\\n\"; }} }}"
        ),
    )
}

#[test]
fn proxy_pool_outliving_the_upstream_idle_timeout_gives_502s_in_a_window() {
    require_tool!("nginx");
    // Pool keeps idle upstream connections 60 s; the app closes them after 1 s; the path
    // between them takes 250 ms each way, so the app's FIN reaches the proxy late.
    let (_ng, url) = proxied("60s", Duration::from_millis(250));
    let (attempts, summary) = race_window(&url);
    let failed: Vec<&Value> = attempts.iter().filter(|a| a["outcome"] != "ok").collect();
    assert!(
        !failed.is_empty(),
        "expected 502s in the window: {attempts:?}"
    );
    for a in &failed {
        assert_eq!(a["outcome"], "bad_gateway", "{a}");
        assert_eq!(a["status"], 502, "{a}");
    }
    failures_only_in_the_window(&attempts);
    assert!(
        summary["verdict"]
            .as_str()
            .unwrap()
            .contains("reuses failed"),
        "{summary}"
    );
}

#[test]
fn proxy_pool_timeout_below_the_upstream_minus_the_round_trip_gives_no_failures() {
    require_tool!("nginx");
    // Same app and path, but the pool drops idle upstream connections after 300 ms: before
    // the app's 1 s minus the 500 ms round trip.
    let (_ng, url) = proxied("300ms", Duration::from_millis(250));
    let (attempts, summary) = race_window(&url);
    assert_eq!(attempts.len(), 9);
    for a in &attempts {
        assert_eq!(a["outcome"], "ok", "{a}");
    }
    assert_eq!(summary["failures"], 0);
    assert!(
        summary["verdict"]
            .as_str()
            .unwrap()
            .starts_with("no failures"),
        "{summary}"
    );
}

#[test]
fn haproxy_reusing_a_closed_upstream_connection_drops_even_a_get_in_the_window() {
    require_tool!("haproxy");
    require_tool!("nginx");
    // haproxy with `http-reuse always` keeps idle server connections; the app closes them
    // after 1 s, 250 ms away. In the window haproxy sends the request on the dead connection
    // and, with no response to relay, closes the client's connection: an empty reply, even
    // for a GET.
    let app = free_port();
    let _ng = nginx(
        &format!(
            "  server {{ listen 127.0.0.1:{app}; keepalive_timeout 1s; location / {{ return 200 \"app\\n\"; }} }}"
        ),
        app,
        None,
    );
    let line = latency_line(
        SocketAddr::from(([127, 0, 0, 1], app)),
        Duration::from_millis(250),
    );
    let port = free_port();
    let _hp = haproxy(
        "  timeout http-keep-alive 30s",
        &format!(
            "frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  http-reuse always\n  server app {line}\n"
        ),
        port,
    );
    let url = format!("http://127.0.0.1:{port}/");
    // The same race as the pool tests, but as GETs: RACE without its `--method POST`.
    let (attempts, _, summary) = race_json(&[&[url.as_str()][..], &RACE[..6]].concat());
    let failed: Vec<&Value> = attempts.iter().filter(|a| a["outcome"] != "ok").collect();
    assert!(
        failed.len() >= 2,
        "expected failures in the window: {attempts:?}"
    );
    for a in &failed {
        assert!(
            ["empty_reply", "reset", "bad_gateway"].contains(&a["outcome"].as_str().unwrap()),
            "{a}"
        );
    }
    failures_only_in_the_window(&attempts);
    assert_eq!(summary["method"], "GET");
}
