//! Open the one connection a hold needs: connect to the first address that answers, or
//! accept one connection on a listening socket.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::{Error, Result};

/// An open connection and its two ends.
pub struct Conn {
    pub sock: Socket,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

fn local_of(sock: &Socket, fallback: SocketAddr) -> SocketAddr {
    sock.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(fallback)
}

/// Connect to each address in turn until one answers; the error is the last failure,
/// naming its address.
pub fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<Conn> {
    let mut last = None;
    for &addr in addrs {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .map_err(|e| Error::io(format!("create a socket for {addr}"), e))?;
        match sock.connect_timeout(&SockAddr::from(addr), timeout) {
            Ok(()) => {
                let local = local_of(&sock, addr);
                return Ok(Conn {
                    sock,
                    local,
                    peer: addr,
                });
            }
            Err(e) => last = Some(Error::io(format!("connect to {addr}"), e)),
        }
    }
    Err(last.unwrap_or_else(|| Error::Parse {
        what: "connect".into(),
        detail: "no address to connect to".into(),
    }))
}

/// A bound, listening socket and the address it really got (port 0 picks one).
pub fn listen(addr: SocketAddr, backlog: i32) -> Result<(Socket, SocketAddr)> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(|e| Error::io(format!("create a socket for {addr}"), e))?;
    sock.set_reuse_address(true)
        .map_err(|e| Error::io(format!("set SO_REUSEADDR on {addr}"), e))?;
    sock.bind(&SockAddr::from(addr))
        .map_err(|e| Error::io(format!("listen on {addr}"), e))?;
    sock.listen(backlog)
        .map_err(|e| Error::io(format!("listen on {addr}"), e))?;
    let bound = local_of(&sock, addr);
    Ok((sock, bound))
}

/// Accept one connection on a listening socket.
pub fn accept(listener: &Socket, bound: SocketAddr) -> Result<Conn> {
    let (sock, peer) = listener
        .accept()
        .map_err(|e| Error::io(format!("accept on {bound}"), e))?;
    let peer = peer.as_socket().unwrap_or(bound);
    let local = local_of(&sock, bound);
    Ok(Conn { sock, local, peer })
}

/// Wait for one connection on a listening socket until `stop` is set or `deadline` passes
/// (`Ok(None)` then): a signal or a time limit ends the wait, not only a peer.
pub fn accept_until(
    listener: &Socket,
    bound: SocketAddr,
    stop: &std::sync::atomic::AtomicBool,
    deadline: Option<std::time::Instant>,
) -> Result<Option<Conn>> {
    use std::os::fd::AsRawFd;
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        let mut wait_ms: i32 = 50;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            wait_ms = wait_ms.min(i32::try_from(left.as_millis()).unwrap_or(50).max(1));
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, for a socket that outlives the call.
        let n = unsafe { libc::poll(&raw mut pfd, 1, wait_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io(format!("wait for a connection on {bound}"), e));
        }
        if n > 0 {
            return accept(listener, bound).map(Some);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_connect_accept_on_loopback() {
        let (l, bound) = listen("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        assert_ne!(bound.port(), 0);
        let c = connect(&[bound], Duration::from_secs(5)).unwrap();
        let a = accept(&l, bound).unwrap();
        assert_eq!(c.peer, bound);
        assert_eq!(a.peer, c.local);
    }

    #[test]
    fn accept_until_ends_at_the_stop_flag_and_the_deadline() {
        use std::sync::atomic::AtomicBool;
        use std::time::Instant;
        let (l, bound) = listen("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let stop = AtomicBool::new(true);
        assert!(accept_until(&l, bound, &stop, None).unwrap().is_none());
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        let r = accept_until(&l, bound, &stop, Some(t + Duration::from_millis(200))).unwrap();
        assert!(r.is_none());
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "{:?}",
            t.elapsed()
        );
        let c = connect(&[bound], Duration::from_secs(5)).unwrap();
        let a = accept_until(&l, bound, &stop, None).unwrap().unwrap();
        assert_eq!(a.peer, c.local);
    }

    #[test]
    fn connect_error_names_the_address() {
        let (l, bound) = listen("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        drop(l);
        let e = connect(&[bound], Duration::from_secs(5)).err().unwrap();
        assert!(
            e.to_string().starts_with(&format!("connect to {bound}")),
            "{e}"
        );
        assert_eq!(
            e.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }
}
