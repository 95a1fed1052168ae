//! The one `/metrics` responder of `watch`, `serve` and `middlebox`: a listener of its own
//! (scrapes never mix with the traffic under test), `GET /metrics` answered with the
//! Prometheus text, `/` with a pointer to it, other paths 404, other methods 405, every
//! answer `Connection: close`. The reading and answering is here once; `serve_blocking`
//! runs it on a thread, and an async server can feed [`answer`] itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The longest request head read before answering anyway.
pub const MAX_HEAD: usize = 8192;

/// Whether `head` holds a whole request head (CRLF CRLF, or bare LF LF), or enough bytes
/// that reading on is pointless.
#[must_use]
pub fn head_done(head: &[u8]) -> bool {
    head.len() > MAX_HEAD
        || head.windows(4).any(|w| w == b"\r\n\r\n")
        || head.windows(2).any(|w| w == b"\n\n")
}

/// The whole response to the request `head` (possibly cut short): status line, headers and,
/// except for HEAD, the body; `render` is called only for `/metrics`.
pub fn answer(head: &[u8], render: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, render()),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "kaprobe metrics: GET /metrics\n".to_owned(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "use GET /metrics\n".to_owned(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Answer scrapes on `listener` from a thread of its own, one connection at a time with
/// short timeouts, until the process exits.
pub fn serve_blocking(
    listener: TcpListener,
    render: impl Fn() -> String + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = answer_one(&mut c, &render);
        }
    })
}

fn answer_one(c: &mut TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head_done(&head) {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    c.write_all(&answer(&head, render))?;
    let _ = c.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_root_unknown_paths_and_methods() {
        let ok =
            String::from_utf8(answer(b"GET /metrics HTTP/1.1\r\n\r\n", || "m 1\n".into())).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(CONTENT_TYPE) && ok.ends_with("\r\n\r\nm 1\n"),
            "{ok}"
        );
        let head = String::from_utf8(answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", || "m 1\n".into()))
            .unwrap();
        assert!(
            head.contains("Content-Length: 4") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let none =
            String::from_utf8(answer(b"GET /x HTTP/1.1\r\n\r\n", || unreachable!())).unwrap();
        assert!(none.starts_with("HTTP/1.1 404"), "{none}");
        let post = String::from_utf8(answer(b"POST /metrics HTTP/1.1\r\n\r\n", || unreachable!()))
            .unwrap();
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        // Garbage and an empty head never panic.
        assert!(answer(b"\xff\xfe", String::new).starts_with(b"HTTP/1.1 405"));
        assert!(answer(b"", String::new).starts_with(b"HTTP/1.1 405"));
        assert!(head_done(b"GET / HTTP/1.0\n\n") && !head_done(b"GET / HTTP/1.0\r\n"));
    }
}
