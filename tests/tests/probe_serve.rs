//! `kaprobe probe` and `kaprobe race` against the project's own server, `kaprobe serve`,
//! whose keep-alive behaviour is set exactly: RST closes, advertised timeouts that lie,
//! request limits, and an upstream behind an nginx pool.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use kaprobe_tests::peers;

use std::time::Duration;

use kaprobe_tests::{
    f64_at as f, json_lines, kaprobe, require_tool, serve_quiet as serve, stderr, Serve,
};
use peers::{pool_proxy, race_window};
use serde_json::Value;

fn probe(url: &str, max_wait: &str) -> Value {
    let o = kaprobe()
        .args(["probe", url, "--max-wait", max_wait, "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "probe {url}: {}", stderr(&o));
    json_lines(&o).remove(0)
}

#[test]
fn serve_closing_with_rst_is_reported_as_rst() {
    let (_s, addr) = serve(&["--keepalive-timeout", "2s", "--close-style", "rst"]);
    let r = probe(&format!("http://{addr}/"), "8s");
    assert_eq!(r["idle"]["close_style"], "rst", "{r}");
    let t = f(&r, "/idle/timeout_s");
    assert!((t - 2.0).abs() <= 0.020, "{r}");
    // The verdict names the time measured (to 10 ms), which may print as 2.01 s.
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .contains(&format!("{t:.2}s with RST")),
        "{}",
        r["verdict"]
    );
}

#[test]
fn serve_closing_with_fin_and_telling_the_truth_is_reported_true() {
    let (_s, addr) = serve(&["--keepalive-timeout", "2s", "--advertise", "always"]);
    let r = probe(&format!("http://{addr}/"), "8s");
    assert_eq!(r["idle"]["close_style"], "fin", "{r}");
    assert!((f(&r, "/idle/timeout_s") - 2.0).abs() <= 0.020, "{r}");
    assert_eq!(f(&r, "/advertised/timeout_s"), 2.0, "{r}");
    assert_eq!(r["advertised_true"]["timeout"], true, "{r}");
}

#[test]
fn serve_advertising_a_longer_timeout_than_it_keeps_is_caught_lying() {
    let (_s, addr) = serve(&[
        "--keepalive-timeout",
        "2s",
        "--advertise",
        "always",
        "--advertise-timeout",
        "10s",
    ]);
    let r = probe(&format!("http://{addr}/"), "8s");
    assert_eq!(f(&r, "/advertised/timeout_s"), 10.0, "{r}");
    assert!((f(&r, "/idle/timeout_s") - 2.0).abs() <= 0.020, "{r}");
    assert_eq!(r["advertised_true"]["timeout"], false, "{r}");
    assert!(
        r["findings"].to_string().contains("lies"),
        "{}",
        r["findings"]
    );
}

#[test]
fn serve_request_limit_is_counted() {
    let (_s, addr) = serve(&["--keepalive-timeout", "2s", "--max-requests", "7"]);
    let r = probe(&format!("http://{addr}/"), "8s");
    assert_eq!(r["max_requests"]["observed"], 7, "{r}");
    assert_eq!(
        r["max_requests"]["ended_by"], "connection_close_header",
        "{r}"
    );
}

/// nginx proxy with an upstream keep-alive pool (`pool_timeout`) in front of kaprobe serve
/// closing idle connections after 1 s, over a path with 250 ms each way.
fn nginx_pool_in_front_of_serve(pool_timeout: &str) -> (Serve, peers::Peer, String) {
    let (s, app) = serve(&["--keepalive-timeout", "1s"]);
    let (ng, url) = pool_proxy(app, Duration::from_millis(250), pool_timeout, "");
    (s, ng, url)
}

#[test]
fn nginx_pool_longer_than_serve_idle_timeout_gives_502s_in_the_window() {
    require_tool!("nginx");
    let (_s, _ng, url) = nginx_pool_in_front_of_serve("60s");
    let (attempts, summary) = race_window(&url);
    let failed: Vec<&Value> = attempts.iter().filter(|a| a["outcome"] != "ok").collect();
    assert!(
        !failed.is_empty(),
        "expected 502s in the window: {attempts:?}"
    );
    for a in failed {
        assert!(
            a["outcome"] == "bad_gateway" || a["outcome"] == "reset",
            "{a}"
        );
        let x = a["actual_idle_s"].as_f64().unwrap();
        assert!(
            (0.4..=1.1).contains(&x),
            "failure outside the window at {x}: {a}"
        );
    }
    assert!(summary["failures"].as_u64().unwrap() >= 1);
}

#[test]
fn nginx_pool_shorter_than_serve_idle_timeout_minus_rtt_gives_none() {
    require_tool!("nginx");
    let (_s, _ng, url) = nginx_pool_in_front_of_serve("300ms");
    let (attempts, summary) = race_window(&url);
    assert_eq!(attempts.len(), 9);
    assert!(
        attempts.iter().all(|a| a["outcome"] == "ok"),
        "{attempts:?}"
    );
    assert_eq!(summary["failures"], 0);
}
