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
    while !kaprobe_sock::scrape::head_done(&head) {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let out = kaprobe_sock::scrape::answer(&head, || sh.stats.prometheus());
    sock.write_all(&out).await?;
    sock.shutdown().await
}
