//! How connections ended, from real captures: a server closing idle connections with FIN
//! and a client writing after it (a failed reuse, and the idle limit it brackets), a server
//! closing with RST, and, through `kaprobe middlebox --router`, a path that forgets idle
//! flows silently or resets them (a RST the peer did not send). The same over IPv6 (on ::1,
//! and through an IPv6 router in namespaces, where the hop limit tells the path's RST), and
//! the proxy-pool race through a real nginx and a real haproxy. Live through `watch` and
//! from the saved file through `read`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kaprobe_tests::peers::{free_port, haproxy, nginx};
use kaprobe_tests::{
    json_lines, kaprobe, kaprobe_bin, line_reader, race_json, require_root, require_tool, run,
    serve_quiet, sh, stderr, wait_line, KillOnDrop, Middlebox, Netns, TempDir,
};
use serde_json::Value;

/// A client that makes one request per connection spec `idle:...` (seconds slept before the
/// second request on the same connection), then closes.
const CLIENT: &str = r#"
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
host = host.strip("[]")
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

/// The one idle limit of `all`: the server at `addr` closing with FIN, bracketed by a reuse
/// that worked after 0.6 s and one that failed after 1.5 s.
fn fin_limit_between_06_and_15(all: &[Value], addr: SocketAddr, what: &str) {
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
        fin_limit_between_06_and_15(all, addr, what);
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

/// `kaprobe watch IFACE --port PORT --json --write PCAP` (inside `ns` when given) while
/// `work` runs; once a live line satisfies `done` (waited for up to 15 s), SIGINT ends it.
/// The live lines and the file's `read --json`.
fn watch_while(
    ns: Option<&Netns>,
    iface: &str,
    port: u16,
    pcap: &Path,
    done: impl Fn(&Value) -> bool,
    work: impl FnOnce(),
) -> (Vec<Value>, Vec<Value>) {
    let mut cmd = match ns {
        Some(ns) => ns.command(kaprobe_bin()),
        None => Command::new(kaprobe_bin()),
    };
    let mut watch = cmd
        .args([
            "watch",
            iface,
            "--port",
            &port.to_string(),
            "--json",
            "--write",
        ])
        .arg(pcap)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_reader(watch.stdout.take().unwrap());
    wait_line(&lines, Duration::from_secs(10), |l| l.contains("\"start\"")).unwrap();
    work();
    let mut live: Vec<Value> = Vec::new();
    let seen = wait_line(&lines, Duration::from_secs(15), |l| {
        serde_json::from_str(l).is_ok_and(|v| done(&v))
    });
    let (before, hit) = match seen {
        Ok(l) => (Vec::new(), Some(l)),
        Err(before) => (before, None),
    };
    // SAFETY: signalling our own child (`ip netns exec` execs kaprobe in its place).
    unsafe { libc::kill(watch.id().cast_signed(), libc::SIGINT) };
    assert!(watch.wait().unwrap().success());
    for l in before.into_iter().chain(hit).chain(lines.try_iter()) {
        if let Ok(v) = serde_json::from_str(&l) {
            live.push(v);
        }
    }
    let file = read_json(pcap);
    (live, file)
}

/// `kaprobe serve ARGS --listen ADDR` (in `ns` when given): the process and the address it
/// reports.
fn serve_on(ns: Option<&Netns>, listen: &str, args: &[&str]) -> (KillOnDrop, SocketAddr) {
    let mut cmd = match ns {
        Some(ns) => ns.command(kaprobe_bin()),
        None => Command::new(kaprobe_bin()),
    };
    let mut child = KillOnDrop::spawn(
        cmd.args(["serve", "--listen", listen, "--log", "off"])
            .args(args)
            .stdin(Stdio::null()),
    );
    let err = line_reader(child.0.stderr.take().unwrap());
    let line = wait_line(&err, Duration::from_secs(10), |l| {
        l.contains("listening on http://[")
    })
    .unwrap_or_else(|seen| panic!("serve never listened on {listen}: {seen:?}"));
    std::thread::spawn(move || while err.recv().is_ok() {});
    let addr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    (child, addr)
}

fn python_client(ns: Option<&Netns>, dir: &TempDir, addr: SocketAddr, idles: &[&str]) {
    let mut cmd = match ns {
        Some(ns) => ns.command(Path::new("python3")),
        None => Command::new("python3"),
    };
    let o = cmd
        .arg(client(dir))
        .arg(addr.to_string())
        .args(idles)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn over_ipv6_a_server_fin_then_a_client_write_is_a_failed_reuse() {
    require_root!();
    require_tool!("python3");
    let (_s, addr) = serve_on(None, "[::1]:0", &["--keepalive-timeout", "1s"]);
    assert!(addr.is_ipv6());
    let dir = TempDir::new("endings-v6fin");
    let pcap = dir.path().join("v6fin.pcap");
    let (live, from_file) = watch_while(
        None,
        "lo",
        addr.port(),
        &pcap,
        |v| v["reuse_failed"] == true,
        || python_client(None, &dir, addr, &["0.6", "1.5"]),
    );
    for (what, all) in [("watch", &live), ("read", &from_file)] {
        let flows = of_type(all, "flow");
        let failed: Vec<&&Value> = flows.iter().filter(|f| f["reuse_failed"] == true).collect();
        assert_eq!(failed.len(), 1, "{what}: {all:#?}");
        let f = failed[0];
        assert_eq!(f["server"], addr.to_string(), "{what}: {f}");
        assert_eq!(f["end_by"], "server", "{what}: {f}");
        assert_eq!(f["end_how"], "fin", "{what}: {f}");
        // The server's own RST answered the write: same hop limit, no path evidence.
        assert!(f["end_evidence"].is_null(), "{what}: {f}");
        assert!(
            (secs(f, "idle_before_end") - 1.0).abs() < 0.1,
            "{what}: {f}"
        );
        let reuse = &f["reuses"][0];
        assert_eq!(reuse["by"], "client", "{what}: {f}");
        assert_eq!(reuse["result"], "after_fin", "{what}: {f}");
        assert!((secs(reuse, "idle") - 1.5).abs() < 0.15, "{what}: {f}");
        let verdict = f["verdict"].as_str().unwrap();
        assert!(verdict.starts_with("server closed after"), "{what}: {f}");
        // kaprobe serve closes softly (half-close, drain): the write is acknowledged and
        // met only the FIN.
        assert!(
            verdict.contains(
                "and met the server's FIN: a pool kept the connection longer than the server's idle timeout"
            ),
            "{what}: {f}"
        );
        fin_limit_between_06_and_15(all, addr, what);
    }
}

#[test]
fn over_ipv6_a_server_closing_idle_connections_with_rst_is_named() {
    require_root!();
    require_tool!("python3");
    let (_s, addr) = serve_on(
        None,
        "[::1]:0",
        &["--keepalive-timeout", "1s", "--close-style", "rst"],
    );
    let dir = TempDir::new("endings-v6rst");
    let pcap = dir.path().join("v6rst.pcap");
    let (live, from_file) = watch_while(
        None,
        "lo",
        addr.port(),
        &pcap,
        |v| v["end_how"] == "rst",
        || python_client(None, &dir, addr, &["1.5"]),
    );
    for (what, all) in [("watch", &live), ("read", &from_file)] {
        let f = of_type(all, "flow")
            .into_iter()
            .find(|f| f["end_how"] == "rst")
            .unwrap_or_else(|| panic!("{what}: no RST ending: {all:#?}"));
        assert_eq!(f["server"], addr.to_string(), "{what}: {f}");
        assert_eq!(f["end_by"], "server", "{what}: {f}");
        assert!(f["end_evidence"].is_null(), "{what}: {f}");
        assert!(
            (secs(f, "idle_before_end") - 1.0).abs() < 0.1,
            "{what}: {f}"
        );
        // The client's write came after the RST had closed its socket: nothing was sent.
        assert_eq!(f["reuse_failed"], false, "{what}: {f}");
        assert!(
            f["verdict"]
                .as_str()
                .unwrap()
                .starts_with("server reset the connection after 1.0"),
            "{what}: {f}"
        );
    }
}

/// Three namespaces in a line over IPv6 (client fd00:203:1::2, router fd00:203:1::1 and
/// fd00:203:2::1, server fd00:203:2::2); the router's conntrack forgets established flows
/// idle 2 s and answers their later packets with a RST (ip6tables REJECT tcp-reset).
struct V6Line {
    client: Netns,
    _router: Netns,
    server: Netns,
}

impl V6Line {
    fn new() -> Self {
        let (c, r, s) = (Netns::new("v6c"), Netns::new("v6r"), Netns::new("v6s"));
        sh(&format!(
            "ip link add v6c netns {} type veth peer name v6r netns {}",
            c.name, r.name
        ));
        sh(&format!(
            "ip link add v6q netns {} type veth peer name v6s netns {}",
            r.name, s.name
        ));
        c.exec("ip link set v6c up && ip -6 addr add fd00:203:1::2/64 dev v6c nodad && ip -6 route add default via fd00:203:1::1");
        s.exec("ip link set v6s up && ip -6 addr add fd00:203:2::2/64 dev v6s nodad && ip -6 route add default via fd00:203:2::1");
        r.exec(
            "ip link set v6r up && ip link set v6q up && \
             ip -6 addr add fd00:203:1::1/64 dev v6r nodad && ip -6 addr add fd00:203:2::1/64 dev v6q nodad && \
             sysctl -qw net.ipv6.conf.all.forwarding=1 && \
             ip6tables -A FORWARD -m conntrack --ctstate INVALID -p tcp -j REJECT --reject-with tcp-reset && \
             sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0 && \
             sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=2",
        );
        Self {
            client: c,
            _router: r,
            server: s,
        }
    }
}

#[test]
fn over_ipv6_a_reset_the_peer_did_not_send_is_told_by_its_hop_limit() {
    require_root!();
    require_tool!("ip6tables");
    require_tool!("python3");
    let line = V6Line::new();
    let (_s, addr) = serve_on(
        Some(&line.server),
        "[fd00:203:2::2]:0",
        &["--keepalive-timeout", "60s"],
    );
    let dir = TempDir::new("endings-v6path");
    let pcap = dir.path().join("v6path.pcap");
    // The client writes after 3 s of idle; the router forgot the flow after 2 s.
    let (live, from_file) = watch_while(
        Some(&line.client),
        "v6c",
        addr.port(),
        &pcap,
        |v| v["end_how"] == "rst",
        || python_client(Some(&line.client), &dir, addr, &["3"]),
    );
    for (what, all) in [("watch", &live), ("read", &from_file)] {
        let f = of_type(all, "flow")
            .into_iter()
            .find(|f| f["end_how"] == "rst")
            .unwrap_or_else(|| panic!("{what}: no RST ending: {all:#?}"));
        assert_eq!(f["server"], addr.to_string(), "{what}: {f}");
        assert_eq!(f["end_by"], "path", "{what}: {f}");
        assert_eq!(
            f["end_evidence"], "the RST came with hop limit 64, the server's own segments with 63",
            "{what}: {f}"
        );
        assert_eq!(f["reuse_failed"], true, "{what}: {f}");
        assert_eq!(f["reuses"][0]["result"], "reset", "{what}: {f}");
        assert!(
            (secs(&f["reuses"][0], "idle") - 3.0).abs() < 0.15,
            "{what}: {f}"
        );
        assert!(
            f["verdict"]
                .as_str()
                .unwrap()
                .starts_with("a middlebox reset the connection"),
            "{what}: {f}"
        );
    }
}

/// The app's idle timeout and the latency each way between the proxy and the app in the
/// pool-race tests: the proxy's reuse fails when it writes between 0.9 s and 1.0 s of idle.
const APP_TIMEOUT: f64 = 1.0;
const LATENCY: f64 = 0.05;

enum Proxy {
    Nginx,
    Haproxy,
}

/// A proxy (nginx's upstream keep-alive pool, or haproxy with `http-reuse always`) in front
/// of `kaprobe serve --keepalive-timeout 1s`, reached through `kaprobe middlebox --latency
/// 50ms` (a long path, where the proxy can lose the reuse race); `kaprobe race` POSTs with
/// idle times from 0.85 s to 1.05 s. The proxy's upstream hop is watched live and saved:
/// the failed reuses and the idle limit must show in both.
fn pool_race(proxy: &Proxy, tag: &str) {
    let (_app, app) = serve_quiet(&["--keepalive-timeout", "1s", "--log", "off"]);
    let mb = Middlebox::start(&[
        "--upstream",
        &app.to_string(),
        "--idle",
        "1h",
        "--latency",
        "50ms",
    ]);
    let front = free_port();
    let _proxy = match proxy {
        Proxy::Nginx => nginx(
            &format!(
                "  upstream app {{ server {}; keepalive 4; keepalive_timeout 60s; }}\n  \
                 server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://app;\n    \
                   proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
                mb.addr
            ),
            front,
            None,
        ),
        Proxy::Haproxy => haproxy(
            "  timeout http-keep-alive 30s",
            &format!(
                "frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\nbackend b\n  http-reuse always\n  server app {}\n",
                mb.addr
            ),
            front,
        ),
    };
    let dir = TempDir::new(tag);
    let pcap = dir.path().join("pool.pcap");
    let url = format!("http://127.0.0.1:{front}/");
    let mut race_failed = 0;
    let (live, from_file) = watch_while(
        None,
        "lo",
        mb.addr.port(),
        &pcap,
        |v| v["reuse_failed"] == true,
        || {
            let (attempts, _, _) = race_json(&[
                &url,
                "--idle",
                "950ms",
                "--spread",
                "100ms",
                "--requests",
                "11",
                "--method",
                "POST",
            ]);
            race_failed = attempts.iter().filter(|a| a["outcome"] != "ok").count();
        },
    );
    assert!(race_failed >= 1, "the race never lost: no failure to find");
    let window = (APP_TIMEOUT - 2.0 * LATENCY - 0.08)..=(APP_TIMEOUT + 0.08);
    for (what, all) in [("watch", &live), ("read", &from_file)] {
        let failed: Vec<&Value> = of_type(all, "flow")
            .into_iter()
            .filter(|f| f["reuse_failed"] == true)
            .collect();
        // nginx: every failed POST was a failed reuse on its upstream hop (it may also have
        // retried one on a fresh connection, unseen by the client). haproxy can also fail a
        // request in the window that never shows as a failed reuse on this hop (seen once in
        // 10 runs on a loaded machine): at least one must show.
        let must = match proxy {
            Proxy::Nginx => race_failed,
            Proxy::Haproxy => 1,
        };
        assert!(
            failed.len() >= must,
            "{what}: {} failed reuses for {race_failed} failed requests: {:#?}",
            failed.len(),
            of_type(all, "flow")
                .iter()
                .map(|f| (&f["reuses"], &f["verdict"]))
                .collect::<Vec<_>>()
        );
        for f in &failed {
            assert_eq!(f["server"], mb.addr.to_string(), "{what}: {f}");
            assert_eq!(f["end_by"], "server", "{what}: {f}");
            assert_eq!(f["end_how"], "fin", "{what}: {f}");
            // The app closed after its timeout of silence (its FIN seen 50 ms later, as its
            // last reply was).
            assert!(
                (secs(f, "idle_before_end") - APP_TIMEOUT).abs() < 0.1,
                "{what}: {f}"
            );
            let r = f["reuses"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["result"] != "ok")
                .unwrap();
            assert_eq!(r["by"], "client", "{what}: {f}");
            assert!(window.contains(&secs(r, "idle")), "{what}: {f}");
            assert!(
                f["verdict"]
                    .as_str()
                    .unwrap()
                    .contains("a pool kept the connection longer than the server's idle timeout"),
                "{what}: {f}"
            );
        }
        let limits = of_type(all, "idle_limit");
        assert_eq!(limits.len(), 1, "{what}: {all:#?}");
        let l = limits[0];
        assert_eq!(l["server"], mb.addr.to_string(), "{what}: {l}");
        assert_eq!(l["how"], "fin", "{what}: {l}");
        // The bracket holds the app's timeout as the proxy meets it: reuses worked up to
        // about 0.9 s and failed from there to 1.0 s.
        let (ok, bad) = (secs(l, "longest_ok"), secs(l, "shortest_failed"));
        assert!((0.8..=APP_TIMEOUT + 0.08).contains(&ok), "{what}: {l}");
        assert!(window.contains(&bad), "{what}: {l}");
    }
    // In words, from the file.
    let text = String::from_utf8_lossy(&run(&["read", pcap.to_str().unwrap()]).stdout).into_owned();
    assert!(
        text.contains(&format!("idle limit of {}", mb.addr)),
        "{text}"
    );
}

#[test]
fn a_proxy_pool_reusing_past_the_apps_timeout_through_nginx_is_caught() {
    require_root!();
    require_tool!("nginx");
    pool_race(&Proxy::Nginx, "endings-nginx");
}

#[test]
fn a_proxy_pool_reusing_past_the_apps_timeout_through_haproxy_is_caught() {
    require_root!();
    require_tool!("haproxy");
    pool_race(&Proxy::Haproxy, "endings-haproxy");
}
