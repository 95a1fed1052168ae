//! Real peers for the probe and race tests: haproxy and Apache started from a private temp
//! dir with a config the test writes, killed and cleaned up on drop (nginx, the temp dir and
//! the port helpers live in `kaprobe_tests` and are re-exported here). Also a latency
//! line (a TCP relay that delays every byte and every close by a fixed time) standing in for
//! a long network path, since `tc netem` is not available on these machines.
//!
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use crate::KillOnDrop;
pub use crate::{free_port, nginx, wait_listening, which, Peer, TempDir};

/// haproxy in the foreground with the given sections after a small `global`/`defaults`.
pub fn haproxy(defaults: &str, body: &str, port: u16) -> Peer {
    let dir = TempDir::new("haproxy");
    let conf = format!(
        "global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n{defaults}\n{body}\n"
    );
    let conf_path = dir.write("haproxy.cfg", &conf);
    let mut cmd = Command::new(which("haproxy"));
    cmd.arg("-f").arg(&conf_path).arg("-db");
    let mut child = KillOnDrop::spawn(&mut cmd);
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &mut child,
        &conf_path,
    );
    Peer { child, dir, port }
}

/// Apache (event MPM) serving `index.html`, with the given keep-alive settings.
pub fn apache(port: u16, keepalive_timeout_secs: u32, max_keepalive_requests: u32) -> Peer {
    let dir = TempDir::new("apache");
    std::fs::create_dir_all(dir.path().join("htdocs")).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(dir.path().join("htdocs"))
        .status()
        .unwrap();
    dir.write("htdocs/index.html", "hello from apache\n");
    let d = dir.path().display().to_string();
    let conf = format!(
        "ServerRoot {d}\n\
         LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n\
         LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n\
         Listen 127.0.0.1:{port}\nServerName localhost\nPidFile {d}/httpd.pid\n\
         ErrorLog {d}/error.log\nDefaultRuntimeDir {d}\nMutex file:{d} default\n\
         User nobody\nGroup nogroup\nDocumentRoot {d}/htdocs\n\
         KeepAlive On\nKeepAliveTimeout {keepalive_timeout_secs}\n\
         MaxKeepAliveRequests {max_keepalive_requests}\n\
         <Directory {d}/htdocs>\n  Require all granted\n</Directory>\n"
    );
    let conf_path = dir.write("httpd.conf", &conf);
    let mut cmd = Command::new(which("apache2"));
    cmd.arg("-f").arg(&conf_path).args(["-D", "FOREGROUND"]);
    let mut child = KillOnDrop::spawn(&mut cmd);
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &mut child,
        &dir.path().join("error.log"),
    );
    Peer { child, dir, port }
}

/// nginx as a proxy on a free port whose upstream keep-alive pool (4 connections, each kept
/// idle up to `pool_timeout`) reaches `upstream` through a latency line of `delay` each way.
/// `more` is added to the `http` body (say, the upstream itself as another server block).
/// Returns the proxy and its URL.
pub fn pool_proxy(
    upstream: SocketAddr,
    delay: Duration,
    pool_timeout: &str,
    more: &str,
) -> (Peer, String) {
    let line = latency_line(upstream, delay);
    let front = free_port();
    let ng = nginx(
        &format!(
            "  upstream app {{ server {line}; keepalive 4; keepalive_timeout {pool_timeout}; }}\n  \
             server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://app;\n    \
               proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}{more}"
        ),
        front,
        None,
    );
    (ng, format!("http://127.0.0.1:{front}/"))
}

/// The race both pool tests run: 9 POSTs whose idle times spread over 800 ms +- 400 ms.
pub const RACE: [&str; 8] = [
    "--idle",
    "800ms",
    "--spread",
    "400ms",
    "--requests",
    "9",
    "--method",
    "POST",
];

/// `kaprobe race URL` with [`RACE`]: its attempts and its summary.
pub fn race_window(url: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut args = vec![url];
    args.extend(RACE);
    let (attempts, _, summary) = crate::race_json(&args);
    (attempts, summary)
}

/// A latency line on loopback: accepts on an ephemeral port and relays each connection to
/// `upstream`, delivering every chunk and every close `delay` after it arrived, in both
/// directions, like a long network path. A reset on one side becomes a reset on the other.
/// Runs on its own thread until the test process ends.
pub fn latency_line(upstream: SocketAddr, delay: Duration) -> SocketAddr {
    on_loopback(move |listener| async move {
        loop {
            let Ok((down, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                // Closes after a reset go out as RSTs (SO_LINGER 0).
                let _ = socket2::SockRef::from(&down).set_linger(Some(Duration::ZERO));
                let _ = socket2::SockRef::from(&up).set_linger(Some(Duration::ZERO));
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let a = direction(dr, uw, delay);
                let b = direction(ur, dw, delay);
                tokio::pin!(a, b);
                let (mut a_done, mut b_done) = (false, false);
                while !(a_done && b_done) {
                    let reset = tokio::select! {
                        r = &mut a, if !a_done => { a_done = true; r }
                        r = &mut b, if !b_done => { b_done = true; r }
                    };
                    if reset {
                        break;
                    }
                }
            });
        }
    })
}

/// Bind an ephemeral port on 127.0.0.1 and run `run(listener)` on a current-thread tokio
/// runtime on its own thread (until it returns or the test process ends); the address.
pub fn on_loopback<F, Fut>(run: F) -> SocketAddr
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            run(tokio::net::TcpListener::from_std(listener).unwrap()).await;
        });
    });
    addr
}

/// How one direction of the relay ended.
enum End {
    Fin,
    Reset,
}

type Item = (tokio::time::Instant, Result<Vec<u8>, End>);

/// Relay one direction with a delay; true when it ended in a reset (then the caller drops
/// both connections, which resets them).
async fn direction(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Item>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let item = match r.read(&mut buf).await {
                Ok(0) => Err(End::Fin),
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(_) => Err(End::Reset),
            };
            let end = item.is_err();
            if tx
                .send((tokio::time::Instant::now() + delay, item))
                .is_err()
                || end
            {
                // Keep the read half open until the writer is done.
                std::future::pending::<()>().await;
            }
        }
    };
    let writer = async move {
        while let Some((due, item)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match item {
                Ok(bytes) => {
                    if w.write_all(&bytes).await.is_err() {
                        return true;
                    }
                }
                Err(End::Fin) => {
                    let _ = w.shutdown().await;
                    return false;
                }
                Err(End::Reset) => return true,
            }
        }
        false
    };
    tokio::select! {
        reset = writer => reset,
        () = reader => false,
    }
}
