//! The CLI's output pinned by snapshots (insta): help texts, `read` tables and JSON on
//! generated captures, error messages for bad input, and the shape of `defaults --json`.
//!
//! Output is made deterministic: 80 columns, no colour, UTC, and anything that varies
//! (elapsed times, rates, paths, system values) redacted by hand. After a deliberate
//! change, review with `INSTA_UPDATE=always cargo test -p kaprobe-tests --test snapshots`
//! and `git diff tests/tests/snapshots/`; under CI=true insta never writes snapshots.

use std::path::PathBuf;
use std::process::{Command, Output};

use kaprobe_capture::scenario::{all, frame_for};
use kaprobe_capture::{LinkType, PcapWriter};
use kaprobe_tests::{kaprobe, stderr, stdout};

/// kaprobe with a fixed environment: 80 columns, no colour, UTC.
fn cmd() -> Command {
    let mut c = kaprobe();
    c.env("COLUMNS", "80")
        .env("NO_COLOR", "1")
        .env("TZ", "UTC")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .stdin(std::process::Stdio::null());
    c
}

fn run(args: &[&str]) -> Output {
    cmd().args(args).output().unwrap()
}

/// A built-in capture scenario written as a pcap file with the capture crate's writer.
fn fixture(name: &str) -> PathBuf {
    let sc = all().into_iter().find(|s| s.name == name).unwrap();
    let path = dir().join(format!("{name}.pcap"));
    let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut w = PcapWriter::new(f, LinkType::Ethernet, 65_535).unwrap();
    for fr in &sc.frames {
        let data = frame_for(LinkType::Ethernet, &fr.ip, false);
        w.write(fr.ts, &data, data.len() as u32).unwrap();
    }
    w.flush().unwrap();
    path
}

/// This test process's scratch directory (its path is redacted from snapshots).
fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kaprobe-snap-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Replace what follows `marker` up to the next `end` with `with`, everywhere.
fn redact_after(text: &str, marker: &str, end: &[char], with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        let after = i + marker.len();
        out.push_str(&rest[..after]);
        out.push_str(with);
        let tail = &rest[after..];
        let stop = tail.find(end).unwrap_or(tail.len());
        rest = &tail[stop..];
    }
    out.push_str(rest);
    out
}

/// The run's timing in read's totals: `in 0.00s (12345 frames/s)`.
fn redact_timing(text: &str) -> String {
    let t = redact_after(text, ") in ", &[' '], "[secs]");
    redact_after(&t, "] (", &[')'], "[rate] frames/s")
}

#[test]
fn help_texts() {
    for &c in kaprobe_tests::COMMANDS {
        let mut args: Vec<&str> = c.split_whitespace().collect();
        args.push("--help");
        let o = run(&args);
        assert!(o.status.success(), "{c} --help: {}", stderr(&o));
        let name = if c.is_empty() {
            "top".to_string()
        } else {
            c.replace(' ', "_")
        };
        insta::assert_snapshot!(format!("help_{name}"), stdout(&o));
    }
}

#[test]
fn read_tables_on_generated_captures() {
    for sc in [
        "dead_peer",
        "linux_keepalive_answered",
        "server_side_keepalive_ipv6",
    ] {
        let path = fixture(sc);
        let o = run(&["read", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        insta::assert_snapshot!(format!("read_{sc}"), redact_timing(&stdout(&o)));
    }
    let path = fixture("linux_zero_window_probe");
    let o = run(&["read", path.to_str().unwrap(), "--packets"]);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!(
        "read_linux_zero_window_probe_packets",
        redact_timing(&stdout(&o))
    );
    // A terminal-wide table when COLUMNS allows it.
    let o = cmd()
        .env("COLUMNS", "200")
        .args(["read", fixture("dead_peer").to_str().unwrap()])
        .output()
        .unwrap();
    insta::assert_snapshot!("read_dead_peer_200_columns", redact_timing(&stdout(&o)));
}

#[test]
fn read_json_on_a_generated_capture() {
    let path = fixture("dead_peer");
    let o = run(&["read", path.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = redact_after(&stdout(&o), "\"elapsed\":", &[',', '}'], "\"[secs]\"");
    insta::assert_snapshot!("read_dead_peer_json", text);
}

/// `exit N` and stderr, with temporary paths replaced.
fn error_of(args: &[&str]) -> String {
    let o = run(args);
    let d = dir();
    let d = d.to_str().unwrap();
    format!(
        "$ kaprobe {}\nexit {}\n{}",
        args.join(" ").replace(d, "[dir]"),
        o.status.code().unwrap_or(-1),
        stderr(&o).replace(d, "[dir]")
    )
}

#[test]
fn error_messages_for_bad_input() {
    let garbage = dir().join("notes.txt");
    std::fs::write(&garbage, "not a capture").unwrap();
    let garbage = garbage.to_str().unwrap().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["hold", "127.0.0.1:1", "--idle", "0"],
        vec!["hold", "127.0.0.1:1", "--count", "200"],
        vec!["hold", "nohost"],
        vec!["probe", "ftp://example.invalid/"],
        vec!["probe", "http://"],
        vec!["probe", "http://127.0.0.1:1/", "--connections", "1"],
        vec!["probe", "http://127.0.0.1:1/", "--max-wait", "0s"],
        vec!["race", "http://127.0.0.1:1/", "--idle", "2h"],
        vec!["serve", "--listen", "nonsense"],
        vec!["serve", "--ws-ping", "5ms"],
        vec!["probe", "ws://127.0.0.1:1/ws", "--heartbeat", "0s"],
        vec!["probe", "--sse", "ws://127.0.0.1:1/ws"],
        vec!["bench", "push", "--messages", "0"],
        vec!["sockets", "--port", "70000"],
        vec!["read", "/nonexistent/missing.pcap"],
        vec!["read", &garbage],
        vec!["read", "x.pcap", "--port", "0"],
        vec!["read", "x.pcap", "--max-flows", "0"],
        vec!["watch", "lo", "--duration", "0s"],
        vec!["--color", "sometimes", "defaults"],
        vec!["completions", "tcsh"],
        vec!["man", "--out", "/nonexistent/dir"],
        vec!["nosuchcommand"],
    ];
    let all: Vec<String> = cases.iter().map(|a| error_of(a)).collect();
    insta::assert_snapshot!("errors", all.join("\n"));
}

/// The keys of `defaults --json` and the type of each value (the values are this
/// machine's settings).
#[test]
fn defaults_json_shape() {
    let o = run(&["defaults", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let shape: Vec<String> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = match v {
                serde_json::Value::Number(n) if n.is_u64() => "integer",
                serde_json::Value::Number(_) => "float",
                serde_json::Value::String(_) => "string",
                serde_json::Value::Bool(_) => "bool",
                serde_json::Value::Null => "null",
                _ => "other",
            };
            format!("{k}: {t}")
        })
        .collect();
    insta::assert_snapshot!("defaults_json_shape", shape.join("\n"));
}
