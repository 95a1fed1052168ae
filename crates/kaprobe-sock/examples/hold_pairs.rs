//! Benchmark helper: open N loopback TCP connection pairs and hold them until stdin closes.
//!
//! `hold_pairs N [ADDR] [KEEPALIVE_SECS]` listens on ADDR (default 127.0.0.1:0), connects N
//! clients to it, accepts them all, sets keep-alive on every client (default idle 600 s, so
//! each shows a `keepalive` timer), prints `ready PORT SOCKETS` and waits for stdin to close.
//! Each pair costs two file descriptors; the soft fd limit is raised to the hard one.
//! Clients close with RST (SO_LINGER 0), so nothing lingers in TIME-WAIT afterwards.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .ok_or("usage: hold_pairs N [ADDR] [KEEPALIVE_SECS]")?
        .parse()?;
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()?;
    let idle: u64 = args.next().map_or(Ok(600), |s| s.parse())?;
    raise_fd_limit();

    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let acceptor = std::thread::spawn(move || -> std::io::Result<Vec<TcpStream>> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            v.push(listener.accept()?.0);
        }
        Ok(v)
    });
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(idle))
        .with_interval(Duration::from_secs(idle.clamp(1, 32767)))
        .with_retries(3);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(local)?;
        SockRef::from(&c).set_tcp_keepalive(&ka)?;
        // Close with RST when we exit: no 2N TIME-WAIT sockets left behind for a minute.
        SockRef::from(&c).set_linger(Some(Duration::ZERO))?;
        clients.push(c);
    }
    let servers = acceptor.join().map_err(|_| "accept thread panicked")??;
    println!("ready {} {}", local.port(), clients.len() + servers.len());
    // Hold until whoever started us closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop((clients, servers));
    Ok(())
}
