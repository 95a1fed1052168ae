//! Every command into a closed pipe (`kaprobe demo | head -1`): no panic, no error text, exit
//! status 0 (documented in README.md), and nothing left running. The reader end is closed
//! before the command writes anything, so its first line meets EPIPE.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kaprobe_tests::{is_root, kaprobe, serve_quiet, TempDir};

/// Run `kaprobe ARGS` with its stdout a pipe whose read end is already closed; wait up to
/// `limit`; return stderr. Panics unless it exits 0 without a panic or error message.
fn into_closed_pipe(args: &[&str], limit: Duration) -> String {
    let mut child = kaprobe()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("kaprobe {args:?} still running after {limit:?} into a closed pipe");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe") && !err.contains("error:"),
        "kaprobe {args:?} into a closed pipe: {err}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "kaprobe {args:?}: {status:?}: {err}"
    );
    err
}

#[test]
fn quick_commands_end_quietly_into_a_closed_pipe() {
    let t = Duration::from_secs(30);
    for args in [
        &["defaults"][..],
        &["defaults", "--json"],
        &["sockets"],
        &["sockets", "--json"],
        &["completions", "bash"],
        &["man"],
        &["--help"],
        &["demo", "--help"],
    ] {
        into_closed_pipe(args, t);
    }
}

#[test]
fn read_ends_quietly_into_a_closed_pipe() {
    use kaprobe_capture::scenario::{all, frame_for};
    use kaprobe_capture::{LinkType, PcapWriter};
    let dir = TempDir::new("pipes-read");
    let path = dir.path().join("k.pcap");
    let sc = all()
        .into_iter()
        .find(|s| s.name == "linux_keepalive_answered")
        .unwrap();
    let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut w = PcapWriter::new(f, LinkType::Ethernet, 65_535).unwrap();
    for fr in &sc.frames {
        let data = frame_for(LinkType::Ethernet, &fr.ip, false);
        w.write(fr.ts, &data, data.len() as u32).unwrap();
    }
    w.flush().unwrap();
    let p = path.to_str().unwrap();
    into_closed_pipe(&["read", p], Duration::from_secs(30));
    into_closed_pipe(&["read", p, "--json"], Duration::from_secs(30));
}

#[test]
fn network_commands_end_quietly_into_a_closed_pipe() {
    let (_srv, addr) = serve_quiet(&["--keepalive-timeout", "1s"]);
    let a = addr.to_string();
    let http = format!("http://{addr}/");
    let ws = format!("ws://{addr}/ws");
    let sse = format!("http://{addr}/sse?room=pipes");
    let t = Duration::from_secs(60);
    for args in [
        &["hold", &a, "--duration", "2s"][..],
        &["hold", &a, "--duration", "2s", "--json"],
        &["probe", &http, "--max-wait", "20s"],
        &["probe", &http, "--max-wait", "20s", "--json"],
        &["probe", &ws, "--heartbeat", "500ms", "--hold", "1s"],
        &[
            "probe",
            &ws,
            "--heartbeat",
            "500ms",
            "--hold",
            "1s",
            "--json",
        ],
        &[
            "probe",
            "--sse",
            &sse,
            "--heartbeat",
            "500ms",
            "--hold",
            "1s",
        ],
        &["race", &http, "--idle", "200ms", "--requests", "3"],
        &[
            "race",
            &http,
            "--idle",
            "200ms",
            "--requests",
            "3",
            "--json",
        ],
        &["bench", "push", "--messages", "3", "--rate", "20"],
    ] {
        into_closed_pipe(args, t);
    }
}

/// `serve` and `middlebox` keep working when their close log has no reader (a server must
/// not die with its log pipe), and stop cleanly on SIGTERM.
#[test]
fn servers_with_a_closed_log_pipe_keep_serving() {
    let (_up, up) = serve_quiet(&["--log", "off"]);
    let up = up.to_string();
    let commands: [&[&str]; 2] = [
        &["serve", "--listen", "127.0.0.1:0", "--log", "json"],
        &[
            "middlebox",
            "--upstream",
            &up,
            "--idle",
            "1s",
            "--log",
            "json",
        ],
    ];
    for args in commands {
        let mut child = kaprobe()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let err = kaprobe_tests::line_reader(child.stderr.take().unwrap());
        let line = kaprobe_tests::wait_line(&err, Duration::from_secs(30), |l| {
            l.contains("listening on ")
        })
        .unwrap();
        // `... listening on http://ADDR` or `... listening on ADDR -> UPSTREAM (...)`.
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .trim_start_matches("http://")
            .to_string();
        for _ in 0..3 {
            let o = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://{addr}/"))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "{args:?}");
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}");
        let rest: Vec<String> = err.try_iter().collect();
        assert!(!rest.iter().any(|l| l.contains("panicked")), "{rest:?}");
    }
}

/// As root: `demo` (with its namespace part) and `watch` end quietly too, and the demo's
/// network namespace is gone afterwards.
#[test]
fn root_commands_end_quietly_into_a_closed_pipe() {
    if !is_root() {
        assert!(!kaprobe_tests::in_ci(), "CI runs as root");
        eprintln!("skipped: needs root");
        return;
    }
    let before = kaprobe_tests::sh("ip netns list");
    into_closed_pipe(&["demo"], Duration::from_secs(60));
    into_closed_pipe(
        &["watch", "lo", "--duration", "2s"],
        Duration::from_secs(30),
    );
    into_closed_pipe(
        &["watch", "lo", "--duration", "2s", "--json"],
        Duration::from_secs(30),
    );
    let after = kaprobe_tests::sh("ip netns list");
    assert_eq!(before, after, "namespaces left behind");
}
