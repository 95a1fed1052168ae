//! How connections ended, from real captures: a server closing idle connections with FIN
//! and a client writing after it (a failed reuse, and the idle limit it brackets), a server
//! closing with RST, and, through `kaprobe middlebox --router`, a path that forgets idle
//! flows silently or resets them (a RST the peer did not send). Live through `watch` and
//! from the saved file through `read`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kaprobe_tests::{
    json_lines, kaprobe, kaprobe_bin, line_reader, require_root, require_tool, run, serve_quiet,
    stderr, wait_line, TempDir,
};
use serde_json::Value;

/// A client that makes one request per connection spec `idle:...` (seconds slept before the
/// second request on the same connection), then closes.
const CLIENT: &str = r#"
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
def ask(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return s.recv(4096)
for idle in sys.argv[2:]:
    s = socket.create_connection((host, int(port)))
    s.settimeout(3)
    ask(s)
    time.sleep(float(idle))
    try:
        ask(s)
    except OSError:
        pass
    time.sleep(0.2)
    s.close()
"#;

fn client(dir: &TempDir) -> String {
    dir.write("client.py", CLIENT).display().to_string()
}

/// The flows (by type) of `kaprobe read FILE --json`.
fn read_json(path: &Path) -> Vec<Value> {
    let o = run(&["read", path.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    json_lines(&o)
}

fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == t).collect()
}

fn secs(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {v}"))
}

#[test]
fn a_server_fin_then_a_client_write_is_a_failed_reuse_live_and_from_the_file() {
    require_root!();
    let (_s, addr) = serve_quiet(&["--keepalive-timeout", "1s", "--log", "off"]);
    let dir = TempDir::new("endings");
    let pcap = dir.path().join("fin.pcap");
    let watch_html = dir.path().join("watch.html");
    let port = addr.port().to_string();
    let mut watch = Command::new(kaprobe_bin())
        .args(["watch", "lo", "--port", &port, "--json", "--duration", "6s"])
        .arg("--write")
        .arg(&pcap)
        .arg("--html")
        .arg(&watch_html)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_reader(watch.stdout.take().unwrap());
    wait_line(&lines, Duration::from_secs(10), |l| l.contains("\"start\"")).unwrap();
    // One connection reused after 0.6s (fine), one after 1.5s: the server closed it at 1s.
    let o = Command::new("python3")
        .arg(client(&dir))
        .arg(addr.to_string())
        .args(["0.6", "1.5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(watch.wait().unwrap().success());
    let live: Vec<Value> = lines
        .try_iter()
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    let from_file = read_json(&pcap);
    for (what, all) in [("watch", &live), ("read", &from_file)] {
        let failed: Vec<&Value> = of_type(all, "flow")
            .into_iter()
            .filter(|f| f["reuse_failed"] == true)
            .collect();
        assert_eq!(failed.len(), 1, "{what}: {all:#?}");
        let f = failed[0];
        assert_eq!(f["end_by"], "server", "{what}: {f}");
        assert_eq!(f["end_how"], "fin", "{what}: {f}");
        assert!(
            (secs(f, "idle_before_end") - 1.0).abs() < 0.1,
            "{what}: {f}"
        );
        let reuse = &f["reuses"][0];
        assert_eq!(reuse["by"], "client", "{what}: {f}");
        assert_eq!(reuse["result"], "after_fin", "{what}: {f}");
        assert!((secs(reuse, "idle") - 1.5).abs() < 0.15, "{what}: {f}");
        assert!(
            f["verdict"]
                .as_str()
                .unwrap()
                .starts_with("server closed after"),
            "{what}: {f}"
        );
        // Across the two flows: the server's idle limit lies between 0.6s and 1.5s.
        let limits = of_type(all, "idle_limit");
        assert_eq!(limits.len(), 1, "{what}: {all:#?}");
        let l = limits[0];
        assert_eq!(l["server"], addr.to_string(), "{what}: {l}");
        assert_eq!(l["how"], "fin", "{what}: {l}");
        assert!((secs(l, "longest_ok") - 0.6).abs() < 0.1, "{what}: {l}");
        assert!(
            (secs(l, "shortest_failed") - 1.5).abs() < 0.15,
            "{what}: {l}"
        );
    }
    // In words, from the file.
    let text = String::from_utf8_lossy(&run(&["read", pcap.to_str().unwrap()]).stdout).into_owned();
    assert!(text.contains("idle limit of"), "{text}");
    // The pictures: read's from the file, watch's written on exit; both as the JSON says.
    let html = dir.path().join("read.html");
    let o = run(&[
        "read",
        pcap.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    picture_matches_the_json(&html, &from_file, "read");
    picture_matches_the_json(&watch_html, &from_file, "watch");
}

/// The page at `html`, drawn by headless Chromium: one lane per flow, the failed reuse and
/// each ending marked as the JSON says, the idle limit listed; a screenshot is saved as
/// target/kaprobe-{what}-report.png.
fn picture_matches_the_json(html: &Path, json: &[Value], what: &str) {
    require_tool!("chromium");
    let url = format!("file://{}", html.display());
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).into_owned();
    let flows = of_type(json, "flow");
    // The script drew one lane per flow and said so.
    assert_eq!(
        dom.matches("<g class=\"lane").count(),
        flows.len(),
        "lanes drawn:\n{dom}"
    );
    assert!(
        dom.contains(&format!("data-drawn=\"{}\"", flows.len())),
        "{dom}"
    );
    for f in &flows {
        let lane_start = dom
            .find(&format!(
                "data-client=\"{}\" data-server=\"{}\"",
                f["client"].as_str().unwrap(),
                f["server"].as_str().unwrap()
            ))
            .unwrap_or_else(|| panic!("no lane for {f}"));
        let lane = &dom[lane_start..];
        let lane = &lane[..lane.find("</g>").unwrap()];
        let how = f["end_how"].as_str().unwrap_or("open");
        assert!(lane.contains(&format!("data-how=\"{how}\"")), "{f}\n{lane}");
        if how != "open" {
            assert!(lane.contains(&format!("marker end {how}")), "{f}\n{lane}");
        }
        let failed = f["reuses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["result"] != "ok")
            .count();
        assert_eq!(
            lane.matches("marker reuse failed").count(),
            failed,
            "{f}\n{lane}"
        );
    }
    assert_eq!(
        dom.matches("class=\"limit\"").count(),
        of_type(json, "idle_limit").len(),
        "{dom}"
    );
    let shot = kaprobe_tests::workspace_root().join(format!("target/kaprobe-{what}-report.png"));
    let o = chromium(&[
        "--window-size=1100,260",
        &format!("--screenshot={}", shot.display()),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
}

#[test]
fn a_server_closing_idle_connections_with_rst_is_named() {
    require_root!();
    require_tool!("tcpdump");
    let (_s, addr) = serve_quiet(&[
        "--keepalive-timeout",
        "1s",
        "--close-style",
        "rst",
        "--log",
        "off",
    ]);
    let dir = TempDir::new("endings-rst");
    let pcap = dir.path().join("rst.pcap");
    let flows = capture_on_lo(&pcap, addr.port(), || {
        let o = Command::new("python3")
            .arg(client(&dir))
            .arg(addr.to_string())
            .arg("1.5")
            .output()
            .unwrap();
        assert!(o.status.success());
    });
    let f = of_type(&flows, "flow")
        .into_iter()
        .find(|f| f["end_how"] == "rst")
        .unwrap_or_else(|| panic!("no RST ending: {flows:#?}"))
        .clone();
    assert_eq!(f["end_by"], "server", "{f}");
    assert!((secs(&f, "idle_before_end") - 1.0).abs() < 0.1, "{f}");
}

/// Capture port `port` on lo with tcpdump while `work` runs; the file's `read --json`.
fn capture_on_lo(pcap: &Path, port: u16, work: impl FnOnce()) -> Vec<Value> {
    let mut td = Command::new("tcpdump")
        .args(["-i", "lo", "--immediate-mode", "-U", "-n", "-w"])
        .arg(pcap)
        .args(["tcp", "port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = line_reader(td.stderr.take().unwrap());
    wait_line(&err, Duration::from_secs(10), |l| {
        l.contains("listening on")
    })
    .unwrap();
    work();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(td.id().cast_signed(), libc::SIGINT) };
    td.wait().unwrap();
    read_json(pcap)
}

/// Through `kaprobe middlebox --router` (the router forgets flows idle 2s): a client that
/// writes after 3s of idle, captured in its own namespace. The file's `read --json`.
fn through_router(action: &str, tag: &str) -> Vec<Value> {
    let (_s, addr) = serve_quiet(&["--keepalive-timeout", "60s", "--log", "off"]);
    let dir = TempDir::new(tag);
    let pcap = dir.path().join("router.pcap");
    let script = format!(
        "tcpdump -i any --immediate-mode -U -n -w {pcap} tcp 2>{err} & td=$!; \
         until grep -q 'listening on' {err}; do sleep 0.05; done; \
         python3 {client} $KAPROBE_UPSTREAM 3; kill -INT $td; wait $td",
        pcap = pcap.display(),
        err = dir.path().join("tcpdump.err").display(),
        client = client(&dir),
    );
    let o = kaprobe()
        .args(["middlebox", "--router", "--upstream", &addr.to_string()])
        .args(["--idle", "2s", "--on-idle", action, "--log", "off"])
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_json(&pcap)
}

#[test]
fn a_path_that_forgets_idle_flows_silently_is_named() {
    require_root!();
    require_tool!("tcpdump");
    let all = through_router("silent", "endings-silent");
    let f = of_type(&all, "flow")
        .into_iter()
        .find(|f| f["reuse_failed"] == true)
        .unwrap_or_else(|| panic!("no failed reuse: {all:#?}"))
        .clone();
    assert_eq!(f["end_by"], "path", "{f}");
    assert_eq!(f["end_how"], "silent", "{f}");
    assert!((secs(&f, "idle_before_end") - 3.0).abs() < 0.15, "{f}");
    assert_eq!(f["reuses"][0]["result"], "unanswered", "{f}");
}

#[test]
fn a_reset_the_peer_did_not_send_is_the_paths() {
    require_root!();
    require_tool!("tcpdump");
    let all = through_router("rst", "endings-pathrst");
    let f = of_type(&all, "flow")
        .into_iter()
        .find(|f| f["end_how"] == "rst")
        .unwrap_or_else(|| panic!("no RST ending: {all:#?}"))
        .clone();
    assert_eq!(f["end_by"], "path", "{f}");
    assert!(f["end_evidence"].as_str().unwrap().contains("TTL"), "{f}");
    assert_eq!(f["reuses"][0]["result"], "reset", "{f}");
}
