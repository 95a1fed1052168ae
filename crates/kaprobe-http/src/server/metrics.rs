//! `serve --metrics ADDR`: the `/metrics` text on a listener of its own, so scrapes neither
//! mix with the traffic under test nor count as its connections.

use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::shared::Shared;

/// Accept scrapes on `listener` for the server's life; each is answered by its own task.
pub(crate) async fn serve(listener: std::net::TcpListener, sh: Rc<Shared>) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((sock, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let sh = sh.clone();
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(sock, &sh)).await;
        });
    }
}

async fn answer(mut sock: tokio::net::TcpStream, sh: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            sh.stats.prometheus(),
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
    );
    if method != "HEAD" {
        out.push_str(&body);
    }
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}
