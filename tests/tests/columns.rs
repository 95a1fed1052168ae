//! Output fits the width it is given: 80 columns in a pipe, `COLUMNS` when set. Tables and
//! prose wrap between words, never inside a value (`?heartbeat=1.0s`, `0.80-0.84s`, an
//! address, a row of dots), and every line fits.

use kaprobe_tests::{kaprobe, serve_quiet, stdout};
use std::net::SocketAddr;

/// Run kaprobe in a pipe with `COLUMNS` set (or unset: 80 columns) and return stdout.
fn at_width(columns: Option<usize>, args: &[&str]) -> String {
    let mut c = kaprobe();
    c.args(args).env_remove("COLUMNS");
    if let Some(w) = columns {
        c.env("COLUMNS", w.to_string());
    }
    let o = c.output().expect("run kaprobe");
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

/// Every line of `out` is at most `width` characters wide.
fn fits(out: &str, width: usize, what: &str) {
    for line in out.lines() {
        assert!(
            line.chars().count() <= width,
            "{what}: a line is {} wide, more than {width}:\n{line}\n{out}",
            line.chars().count()
        );
    }
}

/// The table cells of `out`'s data rows (lines starting with a border).
fn cells(line: &str) -> Vec<String> {
    line.trim_matches('│')
        .split(['┆', '│'])
        .map(|c| c.trim().to_string())
        .collect()
}

fn server() -> (kaprobe_tests::Serve, SocketAddr) {
    serve_quiet(&["--keepalive-timeout", "1s"])
}

#[test]
fn probe_tables_and_verdicts_fit() {
    let (_s, addr) = server();
    for w in [None, Some(60), Some(100)] {
        let width = w.unwrap_or(80);
        let http = format!("http://{addr}/");
        let out = at_width(w, &["probe", &http]);
        fits(&out, width, "probe http");
        assert!(
            out.contains("verdict: closes idle connections after"),
            "{out}"
        );

        let ws = format!("ws://{addr}/ws");
        let out = at_width(w, &["probe", &ws, "--hold", "1s"]);
        fits(&out, width, "probe ws");
        assert!(
            out.contains("verdict: survived at least 1.0s idle"),
            "{out}"
        );

        let sse = format!("http://{addr}/sse");
        let out = at_width(
            w,
            &["probe", "--sse", &sse, "--heartbeat", "1s", "--hold", "1s"],
        );
        fits(&out, width, "probe --sse");
        // The heartbeat parameter is one value: never split between lines.
        assert!(
            out.lines()
                .any(|l| cells(l).iter().any(|c| c == "?heartbeat=1.0s")),
            "{out}"
        );
    }
}

#[test]
fn race_keeps_each_idle_range_and_bar_on_one_line() {
    let (_s, addr) = server();
    let url = format!("http://{addr}/");
    for w in [None, Some(60), Some(120)] {
        let width = w.unwrap_or(80);
        let out = at_width(
            w,
            &[
                "race",
                &url,
                "--idle",
                "1s",
                "--spread",
                "200ms",
                "--requests",
                "60",
                "--parallel",
                "30",
            ],
        );
        fits(&out, width, "race");
        // The range really tested, in the first sentence (which may wrap).
        let first = out.split('┌').next().unwrap_or("").replace("\n  ", " ");
        assert!(
            first.contains("60 GET reuses after 0.80s to 1.20s of idle"),
            "{out}"
        );
        if width < 80 {
            // Too narrow for nine columns: one record per bin, values still whole.
            assert_eq!(out.matches("0.80-0.84s").count(), 1, "{out}");
            continue;
        }
        // 60 attempts in 10 bins: ten rows, each with its whole range and its whole bar.
        let rows: Vec<Vec<String>> = out
            .lines()
            .map(cells)
            .filter(|c| {
                c.first()
                    .is_some_and(|c| c.starts_with("0.") || c.starts_with("1."))
            })
            .collect();
        assert_eq!(rows.len(), 10, "{out}");
        let bar_len = rows[0][8].len();
        for r in &rows {
            let (from, to) = r[0]
                .trim_end_matches('s')
                .split_once('-')
                .unwrap_or_else(|| panic!("not a range: {r:?}\n{out}"));
            let (from, to): (f64, f64) = (from.parse().unwrap(), to.parse().unwrap());
            assert!(to > from && (to - from - 0.04).abs() < 0.006, "{r:?}");
            assert_eq!(r.len(), 9, "{r:?}");
            assert!(
                !r[8].is_empty() && r[8].chars().all(|c| c == '#' || c == '.'),
                "{r:?}"
            );
            assert_eq!(
                r[8].len(),
                bar_len,
                "every bin has 6 tries: equal bars\n{out}"
            );
        }
    }
}

#[test]
fn defaults_table_honours_columns() {
    for w in [None, Some(50), Some(200)] {
        let width = w.unwrap_or(80);
        let out = at_width(w, &["defaults"]);
        fits(&out, width, "defaults");
        // Values stay whole in their cells.
        assert!(
            out.lines().any(|l| cells(l)
                .iter()
                .any(|c| c.ends_with('s') && c.trim_end_matches('s').parse::<u64>().is_ok())),
            "{out}"
        );
    }
}

#[test]
fn sockets_fit_any_width_without_splitting_an_address() {
    // One connection of our own to look for.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (_s, _) = l.accept().unwrap();
    let (local, peer) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
    let port = local.port().to_string();
    for w in [None, Some(40), Some(50), Some(60), Some(200)] {
        let width = w.unwrap_or(80);
        let out = at_width(w, &["sockets", "--port", &port]);
        fits(&out, width, "sockets");
        // Both addresses whole on one line, whatever the layout.
        assert!(
            out.lines()
                .any(|l| l.contains(&local.to_string()) && l.contains(&peer.to_string())),
            "{width}:\n{out}"
        );
    }
}
