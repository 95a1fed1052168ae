//! A response never depends on how the request bytes were cut: every request of a corpus
//! (valid and malformed, bodies from 0 B to 1 MB) is sent to a real `kaprobe serve` whole,
//! split at every byte boundary, and in random segmentations with small gaps, on fresh and on
//! reused connections. The responses, whether the connection stays open, and the close reason
//! the server logs must equal the unsplit case.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kaprobe_tests::http1::{self, exchange, Case, Seen, Send};
use kaprobe_tests::{serve_json, Serve};

/// What one connection came to: what the client saw and what the server logged.
#[derive(Debug, PartialEq, Eq)]
struct Fate {
    seen: Seen,
    reason: String,
    detail: String,
}

/// Send `pieces` (after a warm-up request when `reuse`), close our side, and collect the
/// server's close event for this connection.
fn run(srv: &Serve, case: &Case, pieces: Vec<&[u8]>, gap: Duration, reuse: bool) -> Fate {
    let addr: SocketAddr = srv.socket_addr();
    let (seen, local) = exchange(
        addr,
        &Send {
            pieces,
            gap,
            reuse,
            head: case.head,
        },
    );
    let peer = format!("\"peer\":\"{local}\"");
    let ev = srv.json_line(&peer, Duration::from_secs(20), "close event");
    Fate {
        seen,
        reason: ev["reason"].as_str().unwrap_or("").to_string(),
        detail: ev["detail"].as_str().unwrap_or("").to_string(),
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    /// Cut `bytes` into 2..=max pieces at random places.
    fn cut<'a>(&mut self, bytes: &'a [u8], max: usize) -> Vec<&'a [u8]> {
        let n = 2 + self.below(max - 1);
        let mut at: Vec<usize> = (0..n - 1)
            .map(|_| 1 + self.below(bytes.len() - 1))
            .collect();
        at.sort_unstable();
        at.dedup();
        let mut pieces = Vec::new();
        let mut from = 0;
        for a in at {
            pieces.push(&bytes[from..a]);
            from = a;
        }
        pieces.push(&bytes[from..]);
        pieces
    }
}

fn server() -> Serve {
    serve_json(&[
        "--keepalive-timeout",
        "60s",
        "--header-timeout",
        "20s",
        "--max-requests",
        "0",
        "--max-header-bytes",
        "65536",
    ])
}

/// Every case of the small corpus, split in two at every byte boundary on fresh connections
/// (and at every third boundary on reused ones), with a 2 ms gap so that the pieces leave
/// as separate segments and usually reach separate reads.
#[test]
fn every_split_point_of_small_requests_gives_the_same_answer() {
    let srv = server();
    let gap = Duration::from_millis(2);
    let mut tried = 0;
    for case in http1::valid().into_iter().chain(http1::malformed()) {
        if case.bytes.len() > 400 {
            continue;
        }
        for reuse in [false, true] {
            let whole = run(&srv, &case, vec![&case.bytes], Duration::ZERO, reuse);
            let step = if reuse { 3 } else { 1 };
            for cut in (1..case.bytes.len()).step_by(step) {
                let (a, b) = case.bytes.split_at(cut);
                let split = run(&srv, &case, vec![a, b], gap, reuse);
                assert_eq!(
                    split, whole,
                    "{} (reuse {reuse}) cut at byte {cut}",
                    case.name
                );
                tried += 1;
            }
        }
    }
    eprintln!("{tried} split requests answered as their whole selves");
    assert!(tried > 1500, "{tried}");
}

/// Bodies from 100 KB to 1 MB (Content-Length and chunked) and an oversize head, cut at
/// random into up to 12 pieces with 0-3 ms gaps, on fresh and reused connections.
#[test]
fn random_segmentations_of_large_requests_give_the_same_answer() {
    let srv = server();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut cases: Vec<Case> = vec![
        large("post_100k", http1::post_length(100_000)),
        large("post_1m", http1::post_length(1_000_000)),
        large("chunked_300k", http1::post_chunked(300_000, 8192)),
        large("chunked_1m_in_3k", http1::post_chunked(1_000_000, 3000)),
    ];
    cases.extend(http1::valid());
    cases.extend(http1::malformed());
    let mut tried = 0;
    for case in &cases {
        for reuse in [false, true] {
            let whole = run(&srv, case, vec![&case.bytes], Duration::ZERO, reuse);
            if case.name.starts_with("post_") || case.name.starts_with("chunked_") {
                assert_eq!(whole.seen.statuses(), vec![200], "{}", case.name);
                assert!(!whole.seen.closed, "{}", case.name);
            }
            for _ in 0..4 {
                let pieces = rng.cut(&case.bytes, 12);
                let gap = Duration::from_millis(rng.below(4) as u64);
                let n = pieces.len();
                let split = run(&srv, case, pieces, gap, reuse);
                assert_eq!(split, whole, "{} (reuse {reuse}) in {n} pieces", case.name);
                tried += 1;
            }
        }
    }
    eprintln!("{tried} randomly segmented requests answered as their whole selves");
}

fn large(name: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        name,
        bytes,
        head: false,
    }
}

/// A Content-Length body that stops arriving gets 408 at --header-timeout, on a fresh
/// connection (its head alone in the first segment) and on a reused one; the log says
/// `header_timeout` with "request body stalled", not an idle timeout.
#[test]
fn a_stalled_body_gets_408_at_the_header_timeout() {
    let srv = serve_json(&["--header-timeout", "1s", "--keepalive-timeout", "4s"]);
    for reuse in [false, true] {
        let started = Instant::now();
        let (seen, local) = exchange(
            srv.socket_addr(),
            &Send {
                // Longer than what follows (3 bytes and the sentinel request, taken as body).
                pieces: vec![b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"],
                gap: Duration::ZERO,
                reuse,
                head: false,
            },
        );
        let took = started.elapsed();
        assert!(seen.closed, "{seen:?}");
        assert_eq!(seen.statuses(), vec![408], "reuse {reuse}: {seen:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
            "408 after {took:?}"
        );
        let ev = srv.json_line(
            &format!("\"peer\":\"{local}\""),
            Duration::from_secs(10),
            "close event",
        );
        assert_eq!(ev["reason"], "header_timeout", "{ev}");
        assert_eq!(ev["detail"], "request body stalled", "{ev}");
    }
}

/// `bad_requests` counts every 4xx the server decided itself (a malformed request, an unknown
/// path, a bad path argument, a stalled head), not the 4xx a client asked for.
#[test]
fn bad_requests_counts_the_4xx_the_server_decides() {
    let srv = serve_json(&["--header-timeout", "500ms"]);
    let addr = srv.socket_addr();
    let send = |bytes: &'static [u8]| {
        exchange(
            addr,
            &Send {
                pieces: vec![bytes],
                gap: Duration::ZERO,
                reuse: false,
                head: false,
            },
        )
        .0
        .statuses()
    };
    assert_eq!(send(b"GET /status/404 HTTP/1.1\r\nHost: a\r\n\r\n"), [404]);
    assert_eq!(send(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n"), [404]);
    assert_eq!(send(b"GET /delay/x HTTP/1.1\r\nHost: a\r\n\r\n"), [400]);
    assert_eq!(send(b"GET / HTTP/1.1\r\n\r\n"), [400]);
    // A head that never completes (no sentinel after it: it would complete the head).
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: a\r\nX: ").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = http1::read_response(&mut s, &mut Vec::new(), false).unwrap();
    assert_eq!(r.status, 408);
    let stats = std::process::Command::new("curl")
        .args(["-s", &format!("http://{addr}/_kaprobe/stats")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["bad_requests"], 4, "{v}");
}
