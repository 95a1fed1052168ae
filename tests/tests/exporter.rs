//! `kaprobe exporter`: scrapes of /probe against real `kaprobe serve` targets (results, one
//! probe per target shared by concurrent scrapes, the last result with its age when the
//! scrape timeout is shorter than the probe), bad queries, the output checked by promtool, and
//! a real Prometheus scraping it with the scrape config and alert rules from docs/metrics.md.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kaprobe_tests::{
    kaprobe, line_reader, promtool_lint, require_tool, serve_quiet, wait_line, workspace_root,
    KillOnDrop, TempDir,
};
use prometheus_parse::{Scrape, Value};

struct Exporter {
    _child: KillOnDrop,
    addr: SocketAddr,
}

fn exporter(args: &[&str]) -> Exporter {
    let mut child = KillOnDrop::spawn(
        kaprobe()
            .args(["exporter", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let err = line_reader(child.0.stderr.take().unwrap());
    let line = wait_line(&err, Duration::from_secs(10), |l| {
        l.contains("scrapes on http://")
    })
    .unwrap_or_else(|seen| panic!("exporter never listened: {seen:?}"));
    std::thread::spawn(move || while err.recv().is_ok() {});
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    Exporter {
        _child: child,
        addr,
    }
}

/// GET `path` with an optional scrape timeout header: (status line, body).
fn get(addr: SocketAddr, path: &str, scrape_timeout: Option<f64>) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let extra = scrape_timeout.map_or(String::new(), |t| {
        format!("X-Prometheus-Scrape-Timeout-Seconds: {t}\r\n")
    });
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn value(s: &Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn probe_path(target: &str) -> String {
    let enc: String = target
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/probe?target={enc}&max_wait=15s&connections=10")
}

#[test]
fn a_scrape_reports_the_measured_idle_timeout() {
    let (_serve, addr) = serve_quiet(&["--keepalive-timeout", "1s"]);
    let ex = exporter(&[]);
    let target = format!("http://{addr}/");
    let (status, body) = get(ex.addr, &probe_path(&target), Some(30.0));
    assert!(status.contains("200"), "{status}: {body}");
    promtool_lint(&body);
    let s = parse(&body);
    assert_eq!(
        value(&s, "kaprobe_probe_success", None),
        Some(1.0),
        "{body}"
    );
    assert_eq!(value(&s, "kaprobe_probe_running", None), Some(0.0));
    let t = value(&s, "kaprobe_probe_idle_timeout_seconds", None).expect("timeout");
    assert!((t - 1.0).abs() < 0.15, "idle timeout {t}");
    assert_eq!(
        value(&s, "kaprobe_probe_close_style", Some(("style", "fin"))),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "kaprobe_probe_close_style", Some(("style", "silent"))),
        Some(0.0)
    );
    assert_eq!(value(&s, "kaprobe_probe_reuse_failed", None), Some(0.0));
    assert!(value(&s, "kaprobe_probe_age_seconds", None).unwrap() < 1.0);
    assert!(value(&s, "kaprobe_probe_safe_idle_seconds", None).unwrap() < 1.0);
    assert_eq!(
        value(&s, "kaprobe_probe_http_status_code", None),
        Some(200.0)
    );
}

#[test]
fn concurrent_scrapes_share_one_probe_and_short_scrapes_get_the_last_result() {
    let (_serve, addr) = serve_quiet(&["--keepalive-timeout", "2s"]);
    let ex = exporter(&[]);
    let path = probe_path(&format!("http://{addr}/"));
    // Two scrapes with a 1 s timeout at once: the probe needs more than 2 s, so both get
    // "running" and no result, and only one probe started.
    let a = {
        let path = path.clone();
        let exa = ex.addr;
        std::thread::spawn(move || get(exa, &path, Some(1.0)))
    };
    let b = get(ex.addr, &path, Some(1.0));
    let a = a.join().unwrap();
    for (status, body) in [&a, &b] {
        assert!(status.contains("200"), "{status}");
        let s = parse(body);
        assert_eq!(
            value(&s, "kaprobe_probe_success", None),
            Some(0.0),
            "{body}"
        );
        assert_eq!(
            value(&s, "kaprobe_probe_running", None),
            Some(1.0),
            "{body}"
        );
        assert_eq!(
            value(&s, "kaprobe_probe_started_total", None),
            Some(1.0),
            "{body}"
        );
        assert_eq!(value(&s, "kaprobe_probe_idle_timeout_seconds", None), None);
        promtool_lint(body);
    }
    // A patient scrape waits for that same probe.
    let (_, body) = get(ex.addr, &path, Some(30.0));
    let s = parse(&body);
    assert_eq!(
        value(&s, "kaprobe_probe_success", None),
        Some(1.0),
        "{body}"
    );
    assert_eq!(value(&s, "kaprobe_probe_started_total", None), Some(1.0));
    let t = value(&s, "kaprobe_probe_idle_timeout_seconds", None).expect("timeout");
    assert!((t - 2.0).abs() < 0.15, "idle timeout {t}");
    // The next short scrape starts a second probe and is answered with the first's result
    // and its age.
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let (_, body) = get(ex.addr, &path, Some(1.0));
    let s = parse(&body);
    assert_eq!(
        value(&s, "kaprobe_probe_running", None),
        Some(1.0),
        "{body}"
    );
    assert_eq!(value(&s, "kaprobe_probe_success", None), Some(1.0));
    assert_eq!(value(&s, "kaprobe_probe_started_total", None), Some(2.0));
    let age = value(&s, "kaprobe_probe_age_seconds", None).unwrap();
    assert!(
        age >= 0.3 && age <= started.elapsed().as_secs_f64() + 0.1,
        "age {age}"
    );
    let (_, own) = get(ex.addr, "/metrics", None);
    let o = parse(&own);
    assert_eq!(value(&o, "kaprobe_exporter_scrapes_total", None), Some(4.0));
    assert_eq!(
        value(&o, "kaprobe_exporter_stale_answers_total", None),
        Some(1.0),
        "{own}"
    );
    assert_eq!(
        value(
            &o,
            "kaprobe_exporter_probes_total",
            Some(("result", "success"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&o, "kaprobe_exporter_probes_running", None),
        Some(1.0)
    );
    promtool_lint(&own);
}

#[test]
fn a_failed_probe_says_why_and_bad_queries_are_refused() {
    // A port nothing listens on.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let ex = exporter(&[]);
    let (status, body) = get(ex.addr, &probe_path(&format!("http://{dead}/")), Some(10.0));
    assert!(status.contains("200"), "{status}");
    let s = parse(&body);
    assert_eq!(value(&s, "kaprobe_probe_success", None), Some(0.0));
    assert_eq!(value(&s, "kaprobe_probe_running", None), Some(0.0));
    let err = s
        .samples
        .iter()
        .find(|x| x.metric == "kaprobe_probe_error_info")
        .and_then(|x| x.labels.get("error").map(str::to_owned))
        .unwrap_or_else(|| panic!("no error label: {body}"));
    assert!(err.contains("refused"), "{err}");
    promtool_lint(&body);
    for (path, says) in [
        ("/probe", "no target"),
        ("/probe?target=ftp%3A%2F%2Fx%2F", "ftp"),
        (
            "/probe?target=http%3A%2F%2F127.0.0.1%2F&max_wait=0s",
            "max_wait",
        ),
        ("/probe?target=%zz", "percent"),
    ] {
        let (status, body) = get(ex.addr, path, None);
        assert!(status.contains(" 400 "), "{path}: {status}");
        assert!(body.contains(says), "{path}: {body}");
        assert_eq!(body.lines().count(), 1, "{body}");
    }
    let (status, _) = get(ex.addr, "/nope", None);
    assert!(status.contains(" 404 "), "{status}");
}

#[test]
fn bad_flags_are_one_line_errors() {
    for (args, says) in [
        (&["--max-concurrent", "0"][..], "--max-concurrent 0"),
        (&["--max-wait", "0s"][..], "--max-wait"),
        (&["--listen", "nope"][..], "--listen 'nope'"),
        (&["--duration", "0s"][..], "--duration"),
    ] {
        kaprobe_tests::fails(&[&["exporter"][..], args].concat(), 2, says);
    }
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    kaprobe_tests::fails(&["exporter", "--listen", &addr], 1, "in use");
}

/// The documented scrape config, with the targets, the exporter's address and the intervals
/// of this test put in.
fn documented_config(target: &str, exporter: SocketAddr, rules: &std::path::Path) -> String {
    let doc = std::fs::read_to_string(workspace_root().join("docs/metrics.md")).unwrap();
    let block = doc
        .split("<!-- exporter-scrape-config -->")
        .nth(1)
        .and_then(|b| b.split("<!-- /exporter-scrape-config -->").next())
        .expect("the scrape config block in docs/metrics.md");
    let yaml = block
        .trim()
        .trim_start_matches("```yaml")
        .trim_end_matches("```");
    assert!(yaml.contains("replacement: 127.0.0.1:9435"), "{yaml}");
    let mut out = format!("rule_files: [\"{}\"]\n", rules.display());
    let mut in_targets = false;
    for line in yaml.lines() {
        let t = line.trim();
        if t == "- targets:" {
            in_targets = true;
            out.push_str(&format!("{line}\n          - {target}\n"));
            continue;
        }
        if in_targets && t.starts_with("- http") {
            continue;
        }
        in_targets = false;
        let line = line
            .replace("scrape_interval: 5m", "scrape_interval: 3s")
            .replace("scrape_timeout: 2m", "scrape_timeout: 3s")
            .replace("[\"150s\"]", "[\"15s\"]")
            .replace("127.0.0.1:9435", &exporter.to_string());
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn prometheus_scrapes_it_with_the_documented_config_and_rules() {
    require_tool!("prometheus");
    require_tool!("promtool");
    let (_serve, addr) = serve_quiet(&["--keepalive-timeout", "1s"]);
    let ex = exporter(&[]);
    let target = format!("http://{addr}/");
    let dir = TempDir::new("exporter-prom");
    let rules = workspace_root().join("docs/kaprobe-exporter-alerts.yml");
    let config = dir.write(
        "prometheus.yml",
        &documented_config(&target, ex.addr, &rules),
    );
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let web = SocketAddr::from(([127, 0, 0, 1], kaprobe_tests::free_port()));
    let _prom = KillOnDrop::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let query = "/api/v1/query?query=kaprobe_probe_idle_timeout_seconds";
    let deadline = Instant::now() + Duration::from_secs(40);
    let answer = loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never stored the idle timeout"
        );
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut s) = TcpStream::connect(web) else {
            continue;
        };
        let _ = write!(
            s,
            "GET {query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // chunked or not, the JSON object is in there
        let Some(start) = body.find('{') else {
            continue;
        };
        let Some(end) = body.rfind('}') else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body[start..=end]) else {
            continue;
        };
        if v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break v;
        }
    };
    let r = &answer["data"]["result"][0];
    assert_eq!(r["metric"]["instance"], target.as_str(), "{answer}");
    assert_eq!(r["metric"]["job"], "kaprobe-idle");
    let t: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
    assert!((t - 1.0).abs() < 0.15, "idle timeout {t}");
}
